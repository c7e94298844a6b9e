"""The dashboard's live half: one MQTT session on the fleet's status and telemetry topics,
the fleet database watched for rollout changes, and history written as it comes.

:class:`LiveFleet` keeps the newest status and heartbeat figures of every device in
memory (the devices table is served from here, so 10 000 devices cost no query). It
starts from the fleet database's ``devices`` table (devices whose retained status the
broker lost are still listed, as in ``fleet status``) and queues heartbeats and status
changes for a recorder thread that writes them once a second (one transaction, not one
per message): the history tables, and the changed devices' status and "last seen" back
into ``devices``, as ``fleet record`` does. It prunes history older than the retention
and bumps :attr:`LiveFleet.version` whenever something a page shows has changed, which
the server-sent event streams wait on.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.fleet._fleetstatus import (
    MAX_DEVICES,
    MAX_STATUS_BYTES,
    DeviceStatus,
    merge_recorded,
)
from edgeship.sdk.fleet._history import (
    DeviceEvent,
    History,
    Sample,
    changes,
    sample_from_telemetry,
)
from edgeship.sdk.transport._mqtt import Message, MqttEdge

from edgeship._errors import TransportError

__all__ = ["Figures", "LiveFleet", "Store"]


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The newest heartbeat figures of one device (latency from the last beat that had
    requests)."""

    ts: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    fallback_share: float | None = None


class Store:
    """The fleet database for the dashboard's threads: a few connections, each used by one
    thread at a time (the HTTP server runs a thread per request, and one connection is
    one transaction at a time), kept open between requests."""

    MAX_IDLE = 4

    def __init__(self, url: str | Path | None) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._idle = [self._open()]  # a database that cannot be opened fails at start

    def _open(self) -> tuple[FleetDB, History]:
        db = FleetDB(self.url)
        try:
            return db, History(db.db)
        except BaseException:
            db.close()
            raise

    @contextlib.contextmanager
    def use(self) -> Iterator[tuple[FleetDB, History]]:
        """``with store.use() as (db, history)``: a connection for this thread alone."""
        with self._lock:
            got = self._idle.pop() if self._idle else None
        if got is None:
            got = self._open()
        try:
            yield got
        except BaseException:
            got[0].close()  # in an unknown state (a lost server, a failed statement)
            raise
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(got)
                return
        got[0].close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for db, _ in idle:
            db.close()


class LiveFleet:
    """Every device's newest status and figures, recorded to history as they arrive."""

    def __init__(self, broker_url: str, fleet: str, store: Store, *, username: str = "",
                 password: str = "", retention_s: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.fleet, self.store, self.retention_s, self.clock = fleet, store, retention_s, clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.statuses: dict[str, DeviceStatus] = {}
        self.figures: dict[str, Figures] = {}
        self._samples: list[Sample] = []
        self._events: list[DeviceEvent] = []
        self._dirty: set[str] = set()  # devices whose status or last_seen the database lacks
        self.version = 0
        self._stop = threading.Event()
        self._rollouts_mark: tuple[Any, ...] = ()
        self._thread = threading.Thread(target=self._recorder, name="dashboard-recorder",
                                        daemon=True)
        self.edge = MqttEdge(broker_url, client_id=f"edgeship-dashboard-{os.getpid()}-"
                             f"{id(self) & 0xffff:x}",
                             subscriptions=[f"edgeship/{fleet}/+/status",
                                            f"edgeship/{fleet}/+/telemetry"],
                             on_message=self._on_message, username=username,
                             password=password, subscribe_qos=0)

    def start(self, timeout: float = 10.0) -> LiveFleet:
        """Start from the devices recorded in the fleet database (``fleet record``, ``fleet
        push``, another dashboard), connect to the broker (a TransportError after ``timeout``
        s) and start recording."""
        with self.store.use() as (db, _):
            recorded = db.devices(self.fleet)
        with self._lock:
            self.statuses = merge_recorded(self.statuses, recorded)
        self.edge.start()
        if not self.edge.wait_connected(timeout):
            self.edge.stop()
            raise TransportError(f"cannot reach the broker at {self.edge.host}:{self.edge.port}"
                                 f" (or it refused us) within {timeout:g}s")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Leave the broker and stop recording (what is queued is written first)."""
        self._stop.set()
        self.edge.stop()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- what the pages read ------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, DeviceStatus], dict[str, Figures]]:
        """Copies of every device's status and heartbeat figures."""
        with self._lock:
            return dict(self.statuses), dict(self.figures)

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until :attr:`version` passes ``seen`` (or ``timeout``); the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen or self._stop.is_set(),
                                   timeout=timeout)
            return self.version

    def touch(self) -> None:
        """Something a page shows changed (an action was taken)."""
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    # -- MQTT -----------------------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[1] != self.fleet:
            return
        device, kind = parts[2], parts[3]
        now = self.clock()
        with self._changed:
            if device not in self.statuses and len(self.statuses) >= MAX_DEVICES:
                return
            if kind == "status":
                self._status(device, msg.payload, now)
            elif kind == "telemetry":
                self._telemetry(device, msg.payload, now)
            self.version += 1
            self._changed.notify_all()

    def _status(self, device: str, payload: bytes, now: float) -> None:
        status = DeviceStatus.from_payload(device, payload)
        old = self.statuses.get(device)
        if status is None:
            self.statuses.pop(device, None)
            self._dirty.discard(device)
            return
        seen = max(filter(None, (status.last_seen, old.last_seen if old else None)),
                   default=None)
        self.statuses[device] = DeviceStatus.from_dict({**status.to_dict(), "last_seen": seen})
        self._dirty.add(device)
        self._events.extend(changes(device, old.to_dict() if old else None, status.to_dict(),
                                    now))

    def _telemetry(self, device: str, payload: bytes, now: float) -> None:
        if len(payload) > MAX_STATUS_BYTES * 4:
            return
        try:
            beat = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return
        if not isinstance(beat, dict):
            return
        sample = sample_from_telemetry(device, beat, now)
        self._samples.append(sample)
        old = self.figures.get(device)
        has_latency = sample.p50_ms is not None
        keep = old or Figures(ts=sample.ts)
        self.figures[device] = Figures(
            ts=sample.ts, p50_ms=sample.p50_ms if has_latency else keep.p50_ms,
            p99_ms=sample.p99_ms if has_latency else keep.p99_ms,
            fallback_share=keep.fallback_share if sample.fallback_share is None
            else sample.fallback_share)
        status = self.statuses.get(device)
        if status is not None and (status.last_seen or 0) < sample.ts:
            self.statuses[device] = DeviceStatus.from_dict({**status.to_dict(),
                                                            "last_seen": sample.ts})
            self._dirty.add(device)

    # -- the recorder thread --------------------------------------------------------------------
    def _recorder(self) -> None:
        next_prune = 0.0
        stopping = False
        while not stopping:
            stopping = self._stop.wait(0.5)
            with self._lock:
                samples, self._samples = self._samples, []
                events, self._events = self._events, []
                dirty, self._dirty = self._dirty, set()
                changed = [self.statuses[d] for d in dirty if d in self.statuses]
            devices = {s.device: _recordable(s) for s in changed}  # outside the lock
            try:
                with self.store.use() as (db, history):
                    history.record(self.fleet, samples, events)
                    db.record_devices(self.fleet, devices)
                    if time.monotonic() >= next_prune:
                        history.prune(self.clock() - self.retention_s)
                        next_prune = time.monotonic() + 3600
                    mark = self._rollout_mark(db)
            except Exception as exc:  # a locked or full database: keep serving what we have
                _warn(f"history not recorded: {exc}")
                continue
            if mark != self._rollouts_mark:
                self._rollouts_mark = mark
                self.touch()

    def _rollout_mark(self, db: FleetDB) -> tuple[Any, ...]:
        """Changes when a rollout is recorded or changed (a wave, a pause, a cancel)."""
        (row,) = db.db.execute("SELECT COUNT(*), MAX(updated) FROM rollouts WHERE fleet = ?",
                               (self.fleet,))
        return tuple(row)


def _recordable(status: DeviceStatus) -> dict[str, Any]:
    """A status as the fleet's ``devices`` table keeps it (what the device said)."""
    return {k: v for k, v in status.to_dict().items() if k != "source"}


def _warn(text: str) -> None:
    import sys

    print(f"edgeship dashboard: {text}", file=sys.stderr, flush=True)
