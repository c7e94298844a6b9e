"""Telemetry and device history kept in the fleet database, bounded by age.

The dashboard (:mod:`edgeship.sdk.fleet._dashboard`) records what the devices say over
MQTT so a device page can show it over time:

- ``device_samples``: one row per heartbeat (latency p50/p99, fallback share, drift PSI
  and alert, shadow agreement), the figures the charts draw;
- ``device_events``: what changed (the active version, an update that failed or rolled
  back with its reason, a drift alert raised or cleared);
- ``dashboard_actions``: who did what from the dashboard, and when.

Rows older than the retention are pruned (:meth:`History.prune`). The tables sit beside
the rollout records in the same database but in their own module, written once through
the fleet database's :class:`~edgeship.sdk.fleet._fleetsql.Engine` (``FleetDB.db``), so
the same code serves a SQLite and a PostgreSQL fleet database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeship.sdk.fleet._fleetsql import Engine

__all__ = ["Action", "DeviceEvent", "History", "Sample", "changes", "sample_from_telemetry"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS device_samples (fleet TEXT NOT NULL, device TEXT NOT NULL, "
    "ts DOUBLE PRECISION NOT NULL, version TEXT, p50_ms DOUBLE PRECISION, "
    "p99_ms DOUBLE PRECISION, fallback_share DOUBLE PRECISION, drift_psi DOUBLE PRECISION, "
    "drift_alert INTEGER, shadow_agreement DOUBLE PRECISION)",
    # unique: two dashboards on one database record a heartbeat once
    "CREATE UNIQUE INDEX IF NOT EXISTS device_samples_by_device "
    "ON device_samples (fleet, device, ts)",
    "CREATE TABLE IF NOT EXISTS device_events (fleet TEXT NOT NULL, device TEXT NOT NULL, "
    "ts DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, version TEXT, detail TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS device_events_by_device "
    "ON device_events (fleet, device, ts, kind)",
    "CREATE TABLE IF NOT EXISTS dashboard_actions (ts DOUBLE PRECISION NOT NULL, "
    "who TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL)",
)
MAX_ROWS_READ = 5000  # a chart of one device never needs more points than this


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One heartbeat's figures (None where the device did not report it)."""

    device: str
    ts: float
    version: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    fallback_share: float | None = None
    drift_psi: float | None = None
    drift_alert: bool | None = None
    shadow_agreement: float | None = None

    def row(self, fleet: str) -> tuple[Any, ...]:
        alert = None if self.drift_alert is None else int(self.drift_alert)
        return (fleet, self.device, self.ts, self.version, self.p50_ms, self.p99_ms,
                self.fallback_share, self.drift_psi, alert, self.shadow_agreement)


@dataclass(frozen=True, kw_only=True)
class DeviceEvent:
    """Something that changed on a device: ``kind`` is version, failed, rolled-back,
    drift-alert or drift-cleared; ``detail`` says from what, or why."""

    device: str
    ts: float
    kind: str
    version: str | None = None
    detail: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Action:
    """One dashboard action: who asked for what on which target, and how it went."""

    ts: float
    who: str
    action: str
    target: str
    result: str


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def fallback_share(fallback: Any) -> float | None:
    """Share of the answers that did not come from the local model (cloud or refused),
    from the fallback's counters in a heartbeat; None without any answer."""
    answers = fallback.get("answers") if isinstance(fallback, Mapping) else None
    if not isinstance(answers, Mapping):
        return None
    counts = {str(k): _number(v) or 0.0 for k, v in answers.items()}
    total = sum(counts.values())
    return None if total <= 0 else 1.0 - counts.get("local", 0.0) / total


def sample_from_telemetry(device: str, beat: Mapping[str, Any], now: float) -> Sample:
    """The figures of one heartbeat (the agent's ``telemetry`` JSON); ``now`` when the
    beat carries no time of its own."""
    latency, drift, shadow = (_mapping(beat.get(k)) for k in ("latency", "drift", "shadow"))
    alert = drift.get("alert")
    version = beat.get("version")
    return Sample(device=device, ts=_number(beat.get("ts")) or now,
                  version=None if version is None else str(version)[:64],
                  p50_ms=_number(latency.get("p50_ms")), p99_ms=_number(latency.get("p99_ms")),
                  fallback_share=fallback_share(beat.get("fallback")),
                  drift_psi=_number(drift.get("max_psi")),
                  drift_alert=alert if isinstance(alert, bool) else None,
                  shadow_agreement=_number(shadow.get("agreement")))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class History:
    """The history tables in a fleet database (``History(FleetDB(url).db)``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.create(_SCHEMA)

    def record(self, fleet: str, samples: Iterable[Sample], events: Iterable[DeviceEvent]
               ) -> None:
        """Store heartbeats and events (one transaction)."""
        sample_rows = [s.row(fleet) for s in samples]
        event_rows = [(fleet, e.device, e.ts, e.kind, e.version, json.dumps(dict(e.detail)))
                      for e in events]
        if not sample_rows and not event_rows:
            return
        with self.engine.transaction() as db:
            db.executemany(
                "INSERT INTO device_samples(fleet, device, ts, version, p50_ms, p99_ms, "
                "fallback_share, drift_psi, drift_alert, shadow_agreement) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", sample_rows)
            db.executemany(
                "INSERT INTO device_events(fleet, device, ts, kind, version, detail) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", event_rows)

    def samples(self, fleet: str, device: str, since: float = 0.0) -> list[Sample]:
        """The device's heartbeats since ``since``, oldest first (the newest
        :data:`MAX_ROWS_READ`)."""
        rows = self.engine.execute(
            "SELECT ts, version, p50_ms, p99_ms, fallback_share, drift_psi, drift_alert, "
            "shadow_agreement FROM device_samples WHERE fleet = ? AND device = ? AND ts >= ? "
            f"ORDER BY ts DESC LIMIT {MAX_ROWS_READ}", (fleet, device, since))
        return [Sample(device=device, ts=float(r[0]), version=r[1], p50_ms=r[2], p99_ms=r[3],
                       fallback_share=r[4], drift_psi=r[5],
                       drift_alert=None if r[6] is None else bool(r[6]), shadow_agreement=r[7])
                for r in reversed(rows)]

    def events(self, fleet: str, device: str, limit: int = 200) -> list[DeviceEvent]:
        """The device's events, newest first."""
        rows = self.engine.execute(
            "SELECT ts, kind, version, detail FROM device_events WHERE fleet = ? AND device = ? "
            f"ORDER BY ts DESC LIMIT {int(limit)}", (fleet, device))
        return [DeviceEvent(device=device, ts=float(ts), kind=str(kind), version=version,
                            detail=json.loads(detail)) for ts, kind, version, detail in rows]

    def log_action(self, action: Action) -> None:
        """Append a dashboard action to the audit log."""
        self.engine.execute("INSERT INTO dashboard_actions(ts, who, action, target, result) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (action.ts, action.who, action.action, action.target, action.result))

    def actions(self, limit: int = 50) -> list[Action]:
        """The newest dashboard actions, newest first."""
        rows = self.engine.execute("SELECT ts, who, action, target, result FROM "
                                   f"dashboard_actions ORDER BY ts DESC LIMIT {int(limit)}")
        return [Action(ts=float(r[0]), who=r[1], action=r[2], target=r[3], result=r[4])
                for r in rows]

    def prune(self, older_than: float) -> int:
        """Forget samples and events from before ``older_than`` (the audit log of actions
        is kept); the number of rows removed."""
        return sum(self.engine.rowcount(f"DELETE FROM {table} WHERE ts < ?", (older_than,))
                   for table in ("device_samples", "device_events"))


def changes(device: str, before: Mapping[str, Any] | None, after: Mapping[str, Any],
            now: float) -> list[DeviceEvent]:
    """The events between two statuses of one device (pure): a new active version, an
    update that failed or rolled back (with the device's reason), a drift alert raised or
    cleared."""
    out: list[DeviceEvent] = []
    ts = _number(after.get("ts")) or now
    old = before or {}
    version = after.get("version")
    if version is not None and old.get("version") != version:
        out.append(DeviceEvent(device=device, ts=ts, kind="version", version=str(version),
                               detail={"from": old.get("version")}))
    state = after.get("state")
    if state in ("failed", "rolled-back") and (old.get("state") != state
                                               or old.get("target") != after.get("target")):
        out.append(DeviceEvent(device=device, ts=ts, kind=str(state),
                               version=None if after.get("target") is None
                               else str(after.get("target")),
                               detail={"error": str(after.get("error") or "")[:500]}))
    alert = (after.get("drift") or {}).get("alert") if isinstance(after.get("drift"), Mapping) \
        else None
    was = (old.get("drift") or {}).get("alert") if isinstance(old.get("drift"), Mapping) else None
    if isinstance(alert, bool) and alert != bool(was) and (alert or was is not None):
        drift = after["drift"]
        out.append(DeviceEvent(device=device, ts=now,  # the status's ts is the OTA core's
                               kind="drift-alert" if alert else "drift-cleared",
                               version=None if version is None else str(version),
                               detail={"worst": drift.get("worst"),
                                       "max_psi": _number(drift.get("max_psi"))}))
    return out
