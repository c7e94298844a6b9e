"""The fleet as its devices report it: the retained ``edgeship/<fleet>/+/status`` topics.

:class:`DeviceStatus` parses one status message (the JSON the agent's OTA core writes:
``device, state, version, target, progress, error, ts``, and the compact ``shadow``
figures and ``drift`` verdict the daemon merges in) with a size limit and keeps unknown
keys; :func:`summarize` is the pure aggregation behind ``edgeship fleet
status``. :class:`FleetWatcher` is one MQTT session subscribed to every device's status
(and telemetry, for "last seen") that keeps the newest message per device;
:func:`collect_status` reads the retained messages once and returns.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeship.sdk.transport._mqtt import Message, MqttEdge

from edgeship._errors import TransportError

__all__ = ["DeviceStatus", "FleetWatcher", "collect_status", "merge_recorded", "summarize"]

MAX_STATUS_BYTES = 16 * 1024
MAX_DEVICES = 100_000


@dataclass(frozen=True, kw_only=True)
class DeviceStatus:
    """One device's last retained status, plus when anything was last heard from it."""

    device: str
    state: str = "unknown"
    version: str | None = None
    target: str | None = None
    error: str | None = None
    progress: Mapping[str, Any] | None = None
    ts: float | None = None  # the device's own clock, from its status
    last_seen: float | None = None  # newest of status ts and telemetry ts
    shadow: Mapping[str, Any] | None = None  # {"version", "agreement", "compared", ...}
    drift: Mapping[str, Any] | None = None  # {"alert", "max_psi", "max_ks", "worst", ...}
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, device: str, payload: bytes) -> DeviceStatus | None:
        """None for an empty (cleared) or unusable message."""
        if not payload:
            return None
        if len(payload) > MAX_STATUS_BYTES:  # still a device of the fleet: show it
            return cls(device=device, error=f"status of {len(payload)} bytes is over the "
                                            f"limit of {MAX_STATUS_BYTES}; not read")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        return cls.from_dict({**doc, "device": device})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceStatus:
        known = ("device", "state", "version", "target", "error", "progress", "ts", "last_seen",
                 "shadow", "drift")
        ts = d.get("ts") if isinstance(d.get("ts"), (int, float)) else None
        progress = d.get("progress") if isinstance(d.get("progress"), dict) else None
        return cls(device=str(d["device"]), state=str(d.get("state") or "unknown"),
                   version=_text(d.get("version")), target=_text(d.get("target")),
                   error=_text(d.get("error")), progress=progress, ts=ts,
                   last_seen=d.get("last_seen", ts),
                   shadow=d.get("shadow") if isinstance(d.get("shadow"), dict) else None,
                   drift=d.get("drift") if isinstance(d.get("drift"), dict) else None,
                   extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "device": self.device, "state": self.state, "version": self.version,
                "target": self.target, "error": self.error, "progress": self.progress,
                "ts": self.ts, "last_seen": self.last_seen, "shadow": self.shadow,
                "drift": self.drift}

    def shadow_text(self) -> str:
        """``1.1.0 97.5% of 400`` (agreement of the compared requests; ``, N errors`` when
        the shadow failed on some), or ``-``."""
        s = self.shadow
        if not s or not s.get("version"):
            return "-"
        agreement, compared = _number(s.get("agreement")), _number(s.get("compared"))
        text = str(s["version"])[:40]
        if agreement is not None:
            text += f" {agreement:.1%}"
        if compared is not None:
            text += f" of {compared:.0f}"
        errors = _number(s.get("errors"))
        if errors:  # e.g. a shadow that takes other inputs: it compares nothing, never idle
            text += f", {errors:.0f} errors"
        if s.get("state") not in (None, "running"):
            text += f" ({str(s['state'])[:20]})"
        return text

    def drift_text(self) -> str:
        """``ALERT psi 0.31 f3`` / ``ok psi 0.02``, or ``-`` without a drift verdict."""
        d = self.drift
        if not d:
            return "-"
        psi = _number(d.get("max_psi"))
        text = "ALERT" if d.get("alert") is True else "ok"
        if psi is not None:
            text += f" psi {psi:.2f}"
        if d.get("worst"):  # "" before any sample
            text += f" {str(d['worst'])[:24]}"
        return text

    def state_text(self) -> str:
        """The state as a table shows it (with chunk progress while downloading)."""
        p = self.progress
        if self.state == "downloading" and p:
            return f"downloading {p.get('chunks', '?')}/{p.get('of', '?')}"
        if self.state == "downloaded":  # complete, installs inside its maintenance window
            window = self.extra.get("window")
            return f"downloaded, waiting for window {str(window)[:20]}" if window else \
                "downloaded, waiting for window"
        return self.state


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:500]


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and value == value else None


def summarize(statuses: Mapping[str, DeviceStatus]) -> dict[str, Any]:
    """Devices per version, per state and per shadow version; drift alerts."""
    versions = Counter(s.version or "none" for s in statuses.values())
    states = Counter(s.state for s in statuses.values())
    shadows = Counter(str(s.shadow["version"]) for s in statuses.values()
                      if s.shadow and s.shadow.get("version"))
    alerts = sum(1 for s in statuses.values() if s.drift and s.drift.get("alert") is True)
    return {"devices": len(statuses), "versions": dict(versions.most_common()),
            "states": dict(states.most_common()), "shadows": dict(shadows.most_common()),
            "drift_alerts": alerts}


def merge_recorded(live: Mapping[str, DeviceStatus], recorded: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, DeviceStatus]:
    """The broker's statuses, completed from the fleet database: a device the broker no
    longer has a status for is shown as recorded (``source: database``), and ``last_seen``
    is the newest of both (the database holds heartbeats the retained topics do not)."""
    out: dict[str, DeviceStatus] = {}
    for dev, doc in recorded.items():
        status = live.get(dev)
        seen = doc.get("last_seen")
        if status is None:
            out[dev] = DeviceStatus.from_dict({**doc, "device": dev, "source": "database"})
        elif isinstance(seen, (int, float)) and (status.last_seen is None
                                                 or seen > status.last_seen):
            out[dev] = DeviceStatus.from_dict({**status.to_dict(), "last_seen": seen})
    for dev, status in live.items():
        out.setdefault(dev, status)
    return out


class FleetWatcher:
    """Keeps the newest status of every device of ``fleet`` (one MQTT session)."""

    def __init__(self, broker_url: str, fleet: str, *, username: str = "", password: str = "",
                 telemetry: bool = True, client_id: str | None = None) -> None:
        self.fleet = fleet
        self._lock = threading.Lock()
        self._statuses: dict[str, DeviceStatus] = {}
        self._seen: dict[str, float] = {}
        # raw(): each device's dict, built once per status; readers parse one at a time
        self._raw: dict[str, dict[str, Any]] = {}
        self._reading = threading.Lock()
        self._tracked: dict[str, set[str]] = {}  # name -> devices changed since take(name)
        # statuses not parsed yet: a device reports several phases between two looks,
        # only its newest is read
        self._pending: dict[str, bytes] = {}
        self.last_message = time.monotonic()
        self.changes = 0  # messages taken in so far (a reader skips work when unchanged)
        subs = [f"edgeship/{fleet}/+/status"]
        if telemetry:
            subs.append(f"edgeship/{fleet}/+/telemetry")
        self.edge = MqttEdge(broker_url, client_id=client_id or f"edgeship-watch-{os.getpid()}"
                             f"-{id(self) & 0xffff:x}", subscriptions=subs,
                             on_message=self._on_message, username=username, password=password,
                             subscribe_qos=0,  # QoS 1: only ~1000 retained statuses
                             mqtt311=True)  # reads and offers: no MQTT 5 property needed

    def start(self, timeout: float = 10.0) -> FleetWatcher:
        """Connect and subscribe; a broker not reached within ``timeout`` s is a TransportError."""
        self.edge.start()
        if not self.edge.wait_connected(timeout):
            self.edge.stop()
            raise TransportError(f"cannot reach the broker at {self.edge.host}:{self.edge.port}"
                                 f" (or it refused us) within {timeout:g}s")
        self.last_message = time.monotonic()  # retained messages follow the SUBACK
        return self

    def stop(self) -> None:
        """Disconnect from the broker."""
        self.edge.stop()

    def settle(self, quiet: float = 0.3, limit: float = 3.0) -> None:
        """Wait until the retained messages stopped arriving (quiet for ``quiet`` s)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet:
            time.sleep(0.05)

    def statuses(self) -> dict[str, DeviceStatus]:
        """The latest status of every device seen, by device id (last seen from telemetry too)."""
        with self._reading:
            self._parse_pending()
            out = dict(self._statuses)
        with self._lock:
            seen = dict(self._seen)
        for dev, ts in seen.items():
            s = out.get(dev)
            if s is not None and (s.last_seen is None or ts > s.last_seen):
                out[dev] = DeviceStatus.from_dict({**s.to_dict(), "last_seen": ts})
        return out

    def raw(self) -> dict[str, dict[str, Any]]:
        """Status dicts as the devices sent them (what the rollout planner reads). Each
        device's dict is built once per status it sends (the planner looks at thousands
        of devices several times a second); treat them as read-only."""
        with self._reading:
            self._parse_pending()
            out = dict(self._raw)
        with self._lock:
            seen = dict(self._seen) if self._seen else {}
        for dev, ts in seen.items():
            s = out.get(dev)
            last = s.get("last_seen") if s is not None else None
            if s is not None and (last is None or ts > last):
                out[dev] = {**s, "last_seen": ts}
        return out

    def _parse_pending(self) -> None:
        """Read the statuses that came in since (one reader at a time: ``_reading``),
        outside the lock the MQTT thread takes for every message."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for device, payload in pending.items():
            status = DeviceStatus.from_payload(device, payload)
            if status is None:
                self._statuses.pop(device, None)  # a cleared retained status
                self._raw.pop(device, None)
            else:
                self._statuses[device] = status
                self._raw[device] = status.to_dict()

    def track(self, name: str) -> None:
        """Start collecting the devices that report, for :meth:`take` (``name``: one reader)."""
        with self._lock:
            self._tracked.setdefault(name, set())

    def take(self, name: str) -> set[str]:
        """The devices whose status or telemetry came in since the last ``take(name)``."""
        with self._lock:
            out = self._tracked.get(name, set())
            self._tracked[name] = set()
        return out

    def _on_message(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[0] != "edgeship" or parts[1] != self.fleet:
            return
        device, kind = parts[2], parts[3]
        self.last_message = time.monotonic()
        with self._lock:
            self.changes += 1
            if device not in self._pending and device not in self._statuses and \
                    len(self._statuses) + len(self._pending) >= MAX_DEVICES:
                return
            for changed in self._tracked.values():
                changed.add(device)
            if kind == "status":
                self._pending[device] = msg.payload
            elif kind == "telemetry":
                ts = _telemetry_ts(msg.payload)
                if ts is not None:
                    self._seen[device] = max(ts, self._seen.get(device, 0.0))


def _telemetry_ts(payload: bytes) -> float | None:
    if len(payload) > MAX_STATUS_BYTES:
        return None
    try:
        ts = json.loads(payload).get("ts")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return float(ts) if isinstance(ts, (int, float)) else None


def collect_status(broker_url: str, fleet: str, *, username: str = "", password: str = "",
                   timeout: float = 10.0, quiet: float = 0.3) -> dict[str, DeviceStatus]:
    """Read the retained statuses of ``fleet`` once."""
    watcher = FleetWatcher(broker_url, fleet, username=username, password=password,
                           telemetry=False).start(timeout)
    try:
        watcher.settle(quiet=quiet)
        return watcher.statuses()
    finally:
        watcher.stop()
