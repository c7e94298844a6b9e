"""The dashboard's HTML: server-rendered pages (every device-supplied text escaped) and
line charts drawn as inline SVG on the server, so the page needs no chart library and
no asset from the network."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from edgeship.sdk.fleet._dashboard_data import (
    SORT_KEYS,
    DeviceQuery,
    DeviceRow,
    ReleaseView,
    RolloutView,
)
from edgeship.sdk.fleet._history import Action, DeviceEvent, Sample

__all__ = ["device_page", "devices_page", "layout", "line_chart", "releases_page",
           "rollouts_page"]

_COLUMNS = (("device", "device"), ("version", "version"), ("state", "phase"),
            ("last_seen", "last seen"), ("drift", "drift"), ("agreement", "shadow"),
            ("fallback", "fallback"), ("p50", "p50 ms"), ("p99", "p99 ms"))


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = max(0.0, now - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 \
        else f"{s / 3600:.0f}h ago"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def layout(*, title: str, active: str, fleet: str, body: str, who: str | None,
           actions: bool, csrf: str, message: str = "", can_sign_in: bool | None = None
           ) -> str:
    """The whole page around ``body`` (the part live updates replace)."""
    nav = "".join(f'<a href="{href}" class="{"on" if name == active else ""}">{label}</a>'
                  for name, href, label in (("devices", "/", "Devices"),
                                            ("rollouts", "/rollouts", "Rollouts"),
                                            ("releases", "/releases", "Releases")))
    if who:
        user = f'<span id="who">signed in as {_e(who)}</span>'
    elif not (actions if can_sign_in is None else can_sign_in):
        user = '<span class="muted">read-only (actions off)</span>'
    else:
        user = ('<form method="post" action="/login" class="login">'
                f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
                '<input name="who" placeholder="your name" size="10">'
                '<input name="token" type="password" placeholder="dashboard token" size="14">'
                '<button id="login">sign in</button></form>')
    flash = f'<p id="flash" class="flash">{_e(message)}</p>' if message else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)} · edgeship fleet {_e(fleet)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head><body>'
        f'<header><b>edgeship</b> fleet <b id="fleet">{_e(fleet)}</b><nav>{nav}</nav>'
        f'<span id="live" class="live" title="live updates">&#9679; live</span>{user}</header>'
        f'{flash}<main id="main">{body}</main></body></html>')


def _sort_link(query: DeviceQuery, key: str, label: str) -> str:
    desc = query.sort == key and not query.desc
    params = {"q": query.q, "only": query.only, "sort": key, "dir": "desc" if desc else "asc"}
    mark = (" &#9660;" if query.desc else " &#9650;") if query.sort == key else ""
    return f'<a href="/?{_e(urlencode(params))}" data-sort="{key}">{label}{mark}</a>'


def _phase(row: DeviceRow) -> str:
    cls = "bad" if row.state in ("failed", "rolled-back") else \
        "busy" if row.progress is not None or row.state in ("verifying", "installing",
                                                             "health-checking") else ""
    bar = ""
    if row.progress is not None:
        bar = f'<progress max="1" value="{row.progress:.3f}"></progress>'
    target = f" &rarr; {_e(row.target)}" if row.target and row.target != row.version else ""
    title = f' title="{_e(row.error)}"' if row.error else ""
    return f'<span class="phase {cls}"{title}>{_e(row.state)}{target}</span>{bar}'


def _drift(row: DeviceRow) -> str:
    if row.drift_alert is None:
        return "-"
    psi = "" if row.drift_psi is None else f" psi {row.drift_psi:.2f}"
    label = "ALERT" if row.drift_alert else "ok"
    worst = f" <i>{_e(row.drift_worst)}</i>" if row.drift_worst else ""
    return f'<span class="{"bad" if row.drift_alert else "ok"}">{label}{psi}</span>{worst}'


def devices_page(rows: Sequence[DeviceRow], total: int, pages: int, query: DeviceQuery,
                 summary: Mapping[str, Any], now: float) -> str:
    versions = ", ".join(f"{_e(v)}: {n}" for v, n in summary["versions"].items()) or "none"
    filters = "".join(f'<option value="{f}"{" selected" if f == query.only else ""}>{f}</option>'
                      for f in ("all", "alerts", "failed", "updating", "shadow"))
    head = "".join(f"<th>{_sort_link(query, k, label)}</th>" for k, label in _COLUMNS
                   if k in SORT_KEYS)
    body = []
    for r in rows:
        body.append(
            f'<tr data-device="{_e(r.device)}"><td><a href="/device/{_e(quote(r.device, safe=""))}">'
            f"{_e(r.device)}</a></td><td class=version>{_e(r.version)}</td>"
            f"<td class=phase>{_phase(r)}</td><td>{_ago(r.last_seen, now)}</td>"
            f"<td class=drift>{_drift(r)}</td><td>{_e(r.shadow)}</td>"
            f"<td>{_pct(r.fallback_share)}</td><td>{_ms(r.p50_ms)}</td><td>{_ms(r.p99_ms)}</td>"
            "</tr>")
    page = min(query.page, pages)
    nav = []
    for label, target in (("&laquo; prev", page - 1), ("next &raquo;", page + 1)):
        if 1 <= target <= pages:
            params = {"q": query.q, "only": query.only, "sort": query.sort,
                      "dir": "desc" if query.desc else "asc", "page": target}
            nav.append(f'<a href="/?{_e(urlencode(params))}">{label}</a>')
    return (
        f'<section class="summary"><span id="count">{summary["devices"]}</span> devices · '
        f'versions {versions} · <span class="{"bad" if summary["drift_alerts"] else ""}">'
        f'{summary["drift_alerts"]} drift alert(s)</span></section>'
        '<form class="filter" method="get" action="/">'
        f'<input name="q" id="q" value="{_e(query.q)}" placeholder="filter: id, version, '
        f'phase, feature"><select name="only" id="only">{filters}</select>'
        f'<input type="hidden" name="sort" value="{_e(query.sort)}">'
        f'<input type="hidden" name="dir" value="{"desc" if query.desc else "asc"}">'
        "<button>filter</button></form>"
        f'<table id="devices"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        f'</table><p class="pager">{total} matching · page {page} of {pages} '
        f'{" ".join(nav)}</p>')


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *,
               unit: str = "", limit: float | None = None, width: int = 640,
               height: int = 160) -> str:
    """An inline SVG line chart of ``series`` ((label, [(time, value)])) on one time axis;
    ``limit`` draws a dashed threshold line."""
    points = [p for _, s in series for p in s]
    if not points:
        return f'<figure class="chart"><figcaption>{_e(title)}</figcaption><p class=muted>' \
               "no data yet</p></figure>"
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    values = [p[1] for p in points] + ([limit] if limit is not None else [])
    top = max(values) * 1.1 or 1.0
    pad, w, h = 36, width - 46, height - 30

    def x(t: float) -> float:
        return pad + (t - t0) / ((t1 - t0) or 1.0) * w

    def y(v: float) -> float:
        return 8 + h - v / top * h

    parts = [f'<line x1="{pad}" y1="{8 + h}" x2="{pad + w}" y2="{8 + h}" class="axis"/>',
             f'<text x="2" y="14" class="tick">{top:.3g}</text>',
             f'<text x="2" y="{8 + h}" class="tick">0</text>',
             f'<text x="{pad}" y="{height - 4}" class="tick">{_e(_when(t0)[11:])}</text>',
             f'<text x="{pad + w - 50}" y="{height - 4}" class="tick">{_e(_when(t1)[11:])}</text>']
    if limit is not None:
        parts.append(f'<line x1="{pad}" y1="{y(limit):.1f}" x2="{pad + w}" y2="{y(limit):.1f}" '
                     'class="limit"/>')
    legend = []
    for i, (label, s) in enumerate(series):
        if not s:
            continue
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s)
        parts.append(f'<polyline points="{path}" class="s{i}"/>')
        if len(s) <= 60:  # a single beat is a point, not an invisible line
            parts.extend(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" class="s{i}"/>'
                         for t, v in s)
        legend.append(f'<span class="s{i}">&#9644; {_e(label)}</span>')
    return (f'<figure class="chart"><figcaption>{_e(title)} {_e(unit)} {" ".join(legend)}'
            f'</figcaption><svg viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}">{"".join(parts)}</svg>'
            "</figure>")


def _series(samples: Sequence[Sample], attr: str) -> list[tuple[float, float]]:
    return [(s.ts, float(v)) for s in samples if (v := getattr(s, attr)) is not None]


def device_page(row: DeviceRow | None, device: str, samples: Sequence[Sample],
                events: Sequence[DeviceEvent], outcomes: Sequence[tuple[str, str, str]],
                now: float) -> str:
    if row is None:
        head = f"<h1>{_e(device)}</h1><p class=muted>no status from this device now</p>"
    else:
        head = (f'<h1>{_e(device)}</h1><dl class="facts"><dt>version</dt><dd id="version">'
                f"{_e(row.version)}</dd><dt>phase</dt><dd>{_phase(row)}</dd><dt>last seen</dt>"
                f"<dd>{_ago(row.last_seen, now)}</dd><dt>drift</dt><dd>{_drift(row)}</dd>"
                f"<dt>shadow</dt><dd>{_e(row.shadow)}</dd><dt>fallback</dt>"
                f"<dd>{_pct(row.fallback_share)}</dd><dt>last error</dt><dd>{_e(row.error or '-')}"
                "</dd></dl>")
    charts = (line_chart("latency", [("p50", _series(samples, "p50_ms")),
                                     ("p99", _series(samples, "p99_ms"))], unit="ms")
              + line_chart("drift (largest PSI; dashed: the agent's default alert level)",
                           [("psi", _series(samples, "drift_psi"))], limit=0.2)
              + line_chart("shadow agreement and fallback share",
                           [("agreement", _series(samples, "shadow_agreement")),
                            ("fallback", _series(samples, "fallback_share"))]))
    ev = "".join(f"<tr class={_e(e.kind)}><td>{_when(e.ts)}</td><td>{_e(e.kind)}</td>"
                 f"<td>{_e(e.version or '-')}</td><td>{_e(_detail(e))}</td></tr>" for e in events)
    outs = "".join(f"<tr><td>{_e(v)}</td><td>{_e(o)}</td><td>{_e(err)}</td></tr>"
                   for v, o, err in outcomes)
    return (f'{head}<section class="charts">{charts}</section><h2>History</h2>'
            '<table id="events"><thead><tr><th>when</th><th>what</th><th>version</th>'
            f"<th>detail</th></tr></thead><tbody>{ev or '<tr><td colspan=4>nothing yet</td></tr>'}"
            "</tbody></table><h2>Rollouts</h2><table><thead><tr><th>version</th><th>outcome"
            f"</th><th>reason</th></tr></thead><tbody>{outs}</tbody></table>")


def _detail(e: DeviceEvent) -> str:
    d = e.detail
    if e.kind == "version":
        return f"from {d.get('from') or 'nothing'}"
    if e.kind in ("failed", "rolled-back"):
        return str(d.get("error") or "")
    psi = d.get("max_psi")
    return f"worst {d.get('worst') or '-'}" + (f", psi {psi:.2f}" if psi is not None else "")


def _action(name: str, fields: Mapping[str, str], csrf: str, label: str) -> str:
    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">'
                     for k, v in {**fields, "action": name, "csrf": csrf}.items())
    return (f'<form method="post" action="/action" class="act">{hidden}'
            f'<button data-action="{name}">{label}</button></form>')


def rollouts_page(views: Sequence[RolloutView], actions: bool, csrf: str,
                  log: Sequence[Action], now: float) -> str:
    cards = []
    for v in views:
        rows = "".join(
            f'<tr class="wave {_e(w.kind)} {_e(w.state)}"><td>{_e(w.name)}</td>'
            f"<td>{w.devices}</td><td>{_e(w.state)}</td>"
            f'<td><progress max="{max(1, w.devices)}" value="{w.done}"></progress> '
            f"{w.done}/{w.devices}</td><td>"
            + ", ".join(f"{_e(k)} {n}" for k, n in sorted(w.counts.items()))
            + "</td></tr>" for w in v.waves)
        over = v.failure_rate > v.limit
        buttons = ""
        if actions and v.status in ("running", "paused", "halted"):
            go_on = "pause" if v.status == "running" else "resume"
            buttons = (_action(go_on, {"key": v.key}, csrf, go_on)
                       + _action("cancel", {"key": v.key}, csrf, "cancel"))
        tone = "muted" if v.status in ("paused", "cancelled") else "bad"  # asked for
        reason = f'<p class="reason {tone}">{_e(v.status)}: {_e(v.reason)}</p>' \
            if v.reason else ""
        cards.append(
            f'<article class="rollout {_e(v.status)}" data-key="{_e(v.key)}" '
            f'data-version="{_e(v.version)}"><h2>{_e(v.model)} {_e(v.version)}'
            f'{" (shadow)" if v.mode == "shadow" else ""}'
            f'{" (ongoing)" if v.ongoing else ""} <span class="status">'
            f"{_e(v.status)}</span></h2>"
            f'<p><progress max="{max(1, v.devices)}" value="{v.done}"></progress> '
            f'<span class="done">{v.done}</span>/{v.devices} decided · '
            f'<span class="committed">{v.counts.get("committed", 0)}</span> committed · '
            f'failure rate <span class="{"bad" if over else ""}">{v.failure_rate:.0%}</span> '
            f"(limit {v.limit:.0%}) · updated {_ago(v.updated, now)}</p>{reason}"
            "<table><thead><tr><th>wave</th><th>devices</th><th>state</th><th>progress</th>"
            f"<th>per phase</th></tr></thead><tbody>{rows}</tbody></table>{buttons}</article>")
    audit = "".join(f"<tr><td>{_when(a.ts)}</td><td>{_e(a.who)}</td><td>{_e(a.action)}</td>"
                    f"<td>{_e(a.target)}</td><td>{_e(a.result)}</td></tr>" for a in log)
    return ("".join(cards) or "<p class=muted>no rollouts recorded in this database</p>") + (
        '<h2>Actions</h2><table id="audit"><thead><tr><th>when</th><th>who</th><th>action</th>'
        f"<th>target</th><th>result</th></tr></thead><tbody>{audit}</tbody></table>"
        if log else "")


def releases_page(releases: Sequence[ReleaseView], shadows: Mapping[str, tuple[int, float | None]],
                  actions: bool, csrf: str) -> str:
    rows = []
    for r in releases:
        if r.error:
            rows.append(f"<tr><td colspan=9>{_e(r.path)}: {_e(r.error)}</td></tr>")
            continue
        deltas = ", ".join(f"from {_e(b)}: {_size(n)}" for b, n in r.deltas) or "-"
        rows.append(
            f'<tr data-version="{_e(r.version)}"><td>{_e(r.model)}</td><td>{_e(r.version)}</td>'
            f"<td>{_size(r.size)} {_e(r.fmt)}</td><td>{deltas}</td><td><code>{_e(r.keyid[:16])}"
            f'</code></td><td class="{"bad" if r.expired else ""}">{_e(r.expires)}</td>'
            f"<td>{'yes' if r.encrypted else 'no'}</td><td>{'yes' if r.profile else 'no'}</td>"
            f"<td title=\"{_e(r.path)}\">{_e(Path(r.path).name)}</td></tr>")
    shadow_rows = []
    for version, (n, agreement) in sorted(shadows.items()):
        buttons = (_action("promote", {"version": version}, csrf, "promote")
                   + _action("discard", {"version": version}, csrf, "discard")) if actions else ""
        shadow_rows.append(f'<tr data-shadow="{_e(version)}"><td>{_e(version)}</td><td>{n}</td>'
                           f"<td>{_pct(agreement)}</td><td>{buttons}</td></tr>")
    shadows_html = ("<h2>Shadows</h2><table id=shadows><thead><tr><th>version</th><th>devices"
                    "</th><th>mean agreement</th><th></th></tr></thead><tbody>"
                    f"{''.join(shadow_rows)}</tbody></table>") if shadow_rows else ""
    return ('<table id="releases"><thead><tr><th>model</th><th>version</th><th>size</th>'
            "<th>deltas</th><th>key id</th><th>expires</th><th>encrypted</th><th>profile</th>"
            f"<th>directory</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + ("" if releases else "<p class=muted>no release directories given "
                                   "(--releases DIR)</p>") + shadows_html)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"
