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


def _keep(row: DeviceRow, query: DeviceQuery) -> bool:
    if query.only == "alerts" and row.drift_alert is not True:
        return False
    if query.only == "failed" and row.state not in ("failed", "rolled-back"):
        return False
    if query.only == "updating" and row.state not in _BUSY:
        return False
    if query.only == "shadow" and row.shadow == "-":
        return False
    q = query.q.lower()
    return not q or any(q in text.lower() for text in (row.device, row.version, row.state,
                                                        row.drift_worst))


_SORTS: dict[str, Callable[[DeviceRow], Any]] = {
    "device": lambda r: r.device, "version": lambda r: r.version, "state": lambda r: r.state,
    "last_seen": lambda r: r.last_seen, "drift": lambda r: r.drift_psi,
    "agreement": lambda r: r.agreement, "fallback": lambda r: r.fallback_share,
    "p50": lambda r: r.p50_ms, "p99": lambda r: r.p99_ms,
}


def device_rows(statuses: Mapping[str, DeviceStatus], figures: Mapping[str, Any],
                query: DeviceQuery, page_size: int = PAGE_SIZE
                ) -> tuple[list[DeviceRow], int, int]:
    """One page of the filtered, sorted table; the number of matching devices and pages.
    Devices without a value for the sort key come last either way."""
    rows = [make_row(s, figures.get(d)) for d, s in statuses.items()]
    rows = [r for r in rows if _keep(r, query)]
    key = _SORTS[query.sort]
    have = [r for r in rows if key(r) is not None]
    missing = sorted((r for r in rows if key(r) is None), key=lambda r: r.device)
    have.sort(key=lambda r: (key(r), r.device), reverse=query.desc)
    ordered = have + missing
    pages = max(1, math.ceil(len(ordered) / page_size))
    page = min(query.page, pages)
    return ordered[(page - 1) * page_size: page * page_size], len(ordered), pages


@dataclass(frozen=True, kw_only=True)
class WaveView:
    name: str
    devices: int
    counts: Mapping[str, int]
    done: int
    failed: int
    state: str  # waiting | running | closed


@dataclass(frozen=True, kw_only=True)
class RolloutView:
    """A rollout as the rollouts page shows it."""

    key: str
    fleet: str
    model: str
    version: str
    mode: str
    status: str  # running | paused | halted | completed
    reason: str
    failure_rate: float
    limit: float
    counts: Mapping[str, int]
    waves: Sequence[WaveView]
    devices: int
    done: int
    updated: float
    control: str | None = None
    control_who: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)


def rollout_view(rollout: Rollout, updated: float, control: Any | None = None) -> RolloutView:
    """Counts per phase, overall and per wave; ``control``: a pause or cancel asked for."""
    waves = []
    for w in rollout.waves:
        outcomes = [rollout.outcomes.get(d, "pending") for d in w.devices]
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o] = counts.get(o, 0) + 1
        phase = "closed" if w.closed_at else "waiting" if not w.offered_at else \
            "running" if rollout.status == "running" else "stopped"
        waves.append(WaveView(name=w.name, devices=len(w.devices), counts=counts,
                              done=sum(o in DONE_OUTCOMES for o in outcomes),
                              failed=sum(o in FAILED_OUTCOMES for o in outcomes), state=phase))
    status = rollout.status
    state: str | None = getattr(control, "state", None)
    if status == "running" and state == "paused":
        status = "paused"
    return RolloutView(key=rollout.key, fleet=rollout.fleet, model=rollout.model,
                       version=rollout.version, mode=rollout.mode, status=status,
                       reason=rollout.reason, failure_rate=rollout.failure_rate(),
                       limit=rollout.policy.max_failure_rate, counts=rollout.counts(),
                       waves=waves, devices=len(rollout.outcomes),
                       done=sum(w.done for w in waves), updated=updated, control=state,
                       control_who=getattr(control, "who", None), errors=dict(rollout.errors))


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
