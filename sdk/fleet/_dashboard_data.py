"""What the dashboard's pages show, as pure functions over statuses, rollouts and releases.

:func:`device_rows` filters, sorts and pages the devices table on the server (the page
never holds more than one page of a 10 000-device fleet); :func:`rollout_view` counts a
rollout's devices per phase and wave; :func:`scan_releases` reads the release directories
the dashboard was given (``--releases DIR``: a release directory, or a directory of them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet._fleetstatus import DeviceStatus
from edgeship.sdk.fleet._rollout import DONE_OUTCOMES, FAILED_OUTCOMES, Rollout

__all__ = ["DeviceQuery", "DeviceRow", "ReleaseView", "RolloutView", "device_rows",
           "rollout_view", "scan_releases"]

PAGE_SIZE = 50
SORT_KEYS = ("device", "version", "state", "last_seen", "drift", "agreement", "fallback",
             "p50", "p99")
FILTERS = ("all", "alerts", "failed", "updating", "shadow")
_BUSY = ("downloading", "verifying", "installing", "health-checking")


@dataclass(frozen=True, kw_only=True)
class DeviceRow:
    """One line of the devices table."""

    device: str
    version: str
    state: str
    progress: float | None  # 0..1 while downloading
    target: str | None
    last_seen: float | None
    drift_alert: bool | None
    drift_psi: float | None
    drift_worst: str
    shadow: str
    agreement: float | None
    fallback_share: float | None
    p50_ms: float | None
    p99_ms: float | None
    error: str


@dataclass(frozen=True, kw_only=True)
class DeviceQuery:
    """Filter text, a filter, a sort key and direction, a page (from the URL)."""

    q: str = ""
    only: str = "all"
    sort: str = "device"
    desc: bool = False
    page: int = 1

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DeviceQuery:
        sort = params.get("sort", "device")
        only = params.get("only", "all")
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        return cls(q=params.get("q", "")[:100], only=only if only in FILTERS else "all",
                   sort=sort if sort in SORT_KEYS else "device", desc=params.get("dir") == "desc",
                   page=page)


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def make_row(status: DeviceStatus, figures: Any | None) -> DeviceRow:
    """The table line of one device (``figures``: its newest heartbeat figures)."""
    progress = None
    p = status.progress
    if status.state == "downloading" and p:
        chunks, total = _number(p.get("chunks")), _number(p.get("of"))
        progress = min(1.0, chunks / total) if chunks is not None and total else None
    drift = status.drift or {}
    shadow = status.shadow or {}
    alert = drift.get("alert")
    return DeviceRow(device=status.device, version=status.version or "-", state=status.state,
                     progress=progress, target=status.target, last_seen=status.last_seen,
                     drift_alert=alert if isinstance(alert, bool) else None,
                     drift_psi=_number(drift.get("max_psi")),
                     drift_worst=str(drift.get("worst") or "")[:40],
                     shadow=status.shadow_text(), agreement=_number(shadow.get("agreement")),
                     fallback_share=getattr(figures, "fallback_share", None),
                     p50_ms=getattr(figures, "p50_ms", None),
                     p99_ms=getattr(figures, "p99_ms", None), error=(status.error or "")[:200])


def _drift(status: DeviceStatus) -> Mapping[str, Any]:
    return status.drift or {}


def _keep(status: DeviceStatus, query: DeviceQuery) -> bool:
    if query.only == "alerts" and _drift(status).get("alert") is not True:
        return False
    if query.only == "failed" and status.state not in ("failed", "rolled-back"):
        return False
    if query.only == "updating" and status.state not in _BUSY:
        return False
    if query.only == "shadow" and not (status.shadow and status.shadow.get("version")):
        return False
    q = query.q.lower()
    return not q or any(q in text.lower() for text in (
        status.device, status.version or "-", status.state, str(_drift(status).get("worst") or "")))


# sort keys read from the status and figures directly: a table line is made only for the
# devices of the page shown (making 10 000 of them took most of a page's time)
_SORTS: dict[str, Callable[[DeviceStatus, Any], Any]] = {
    "device": lambda s, f: s.device, "version": lambda s, f: s.version or "-",
    "state": lambda s, f: s.state, "last_seen": lambda s, f: _number(s.last_seen),
    "drift": lambda s, f: _number(_drift(s).get("max_psi")),
    "agreement": lambda s, f: _number((s.shadow or {}).get("agreement")),
    "fallback": lambda s, f: getattr(f, "fallback_share", None),
    "p50": lambda s, f: getattr(f, "p50_ms", None), "p99": lambda s, f: getattr(f, "p99_ms", None),
}


def device_rows(statuses: Mapping[str, DeviceStatus], figures: Mapping[str, Any],
                query: DeviceQuery, page_size: int = PAGE_SIZE
                ) -> tuple[list[DeviceRow], int, int]:
    """One page of the filtered, sorted table; the number of matching devices and pages.
    Devices without a value for the sort key come last either way."""
    key = _SORTS[query.sort]
    have: list[tuple[Any, str]] = []
    missing: list[str] = []
    for dev, status in statuses.items():
        if not _keep(status, query):
            continue
        value = key(status, figures.get(dev))
        if value is None:
            missing.append(dev)
        else:
            have.append((value, dev))
    have.sort(reverse=query.desc)
    ordered = [dev for _, dev in have] + sorted(missing)
    pages = max(1, math.ceil(len(ordered) / page_size))
    page = min(query.page, pages)
    shown = ordered[(page - 1) * page_size: page * page_size]
    return [make_row(statuses[d], figures.get(d)) for d in shown], len(ordered), pages


@dataclass(frozen=True, kw_only=True)
class WaveView:
    """One wave: planned (canary, wave N), ``retry N`` (``fleet push --retry-failed``) or
    ``joined N`` (devices that joined an ``--ongoing`` rollout)."""

    name: str
    kind: str  # planned | retry | joined
    devices: int
    counts: Mapping[str, int]
    done: int
    failed: int
    state: str  # waiting | running | paused | stopped | closed


@dataclass(frozen=True, kw_only=True)
class RolloutView:
    """A rollout as the rollouts page shows it."""

    key: str
    fleet: str
    model: str
    version: str
    mode: str
    status: str  # running | paused | halted | completed | cancelled (the fleet's own)
    reason: str  # why it is paused, halted or cancelled (and by whom)
    ongoing: bool
    failure_rate: float
    limit: float
    counts: Mapping[str, int]
    waves: Sequence[WaveView]
    devices: int
    done: int
    updated: float
    errors: Mapping[str, str] = field(default_factory=dict)


def _wave_kind(name: str) -> str:
    first = name.split(" ", 1)[0]
    return first if first in ("retry", "joined") else "planned"


def rollout_view(rollout: Rollout, updated: float) -> RolloutView:
    """Counts per phase, overall and per wave, with the rollout's recorded status."""
    waves = []
    for w in rollout.waves:
        outcomes = [rollout.outcomes.get(d, "pending") for d in w.devices]
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o] = counts.get(o, 0) + 1
        phase = "closed" if w.closed_at else "waiting" if not w.offered_at else \
            rollout.status if rollout.status in ("running", "paused") else "stopped"
        waves.append(WaveView(name=w.name, kind=_wave_kind(w.name), devices=len(w.devices),
                              counts=counts,
                              done=sum(o in DONE_OUTCOMES for o in outcomes),
                              failed=sum(o in FAILED_OUTCOMES for o in outcomes), state=phase))
    return RolloutView(key=rollout.key, fleet=rollout.fleet, model=rollout.model,
                       version=rollout.version, mode=rollout.mode, status=rollout.status,
                       reason=rollout.reason, ongoing=rollout.ongoing,
                       failure_rate=rollout.failure_rate(),
                       limit=rollout.policy.max_failure_rate, counts=rollout.counts(),
                       waves=waves, devices=len(rollout.outcomes),
                       done=sum(w.done for w in waves), updated=updated,
                       errors=dict(rollout.errors))


@dataclass(frozen=True, kw_only=True)
class ReleaseView:
    """One release directory: what its manifest says (not verified here: devices and
    ``fleet push`` verify it)."""

    path: str
    model: str = ""
    version: str = ""
    size: int = 0
    fmt: str = ""
    deltas: Sequence[tuple[str, int]] = ()  # (base version, bytes)
    keyid: str = ""
    created: str = ""
    expires: str = ""
    expired: bool = False
    encrypted: bool = False
    profile: bool = False
    golden: bool = False
    error: str = ""


def _release_dirs(roots: Sequence[str | Path], limit: int) -> list[Path]:
    found: list[Path] = []
    for root in map(Path, roots):
        if (root / "manifest.json").is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p.parent for p in root.glob("*/manifest.json"))[:limit])
    return found[:limit]


def scan_releases(roots: Sequence[str | Path], now: float, limit: int = 500
                  ) -> list[ReleaseView]:
    """The releases in ``roots``, newest version first; an unreadable one says why."""
    from edgeship.sdk.release._keys import parse_time
    from edgeship.sdk.release._release import Release

    from edgeship._errors import EdgeshipError

    out = []
    for path in _release_dirs(roots, limit):
        try:
            m = Release.load(path).manifest
        except EdgeshipError as exc:
            out.append(ReleaseView(path=str(path), error=str(exc)[:200]))
            continue
        expires = parse_time(m.expires, "manifest.expires")
        out.append(ReleaseView(
            path=str(path), model=m.model, version=m.version, size=m.artifact.size,
            fmt=m.artifact.format, deltas=tuple((d.base_version, d.size) for d in m.deltas),
            keyid=m.keyid, created=m.created, expires=m.expires,
            expired=_timestamp(expires) < now, encrypted=m.encryption is not None,
            profile=m.profile is not None, golden=m.golden is not None))
    return sorted(out, key=lambda r: (r.model, _version_key(r.version), r.path), reverse=True)


def _timestamp(value: Any) -> float:
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return ()
