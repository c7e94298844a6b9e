"""The shell around the rollout planner: MQTT in and out, the fleet database for memory.

:func:`run_rollout` takes the rollout's lease (:class:`~edgeship.sdk.fleet._fleetlease.Lease`:
one worker drives a rollout; another stands by and takes over once the holder's heartbeat
stops), watches the fleet's retained statuses (:class:`FleetWatcher`) and asks
:func:`edgeship.sdk.fleet._rollout.step` what to do. Each wave decision is one
transaction (:meth:`FleetDB.decide`: re-read under a row lock, lease checked, the offers
recorded as ``due``); then the signed offer is published (retained, QoS 1, acknowledged
by the broker) and the offers are marked ``sent``. A worker that starts or takes over
publishes the open wave's ``due`` offers only to devices whose retained offer is not
this release's, so a kill at any instant neither loses an offer nor sends one twice.

``mode="shadow"`` offers the release to run beside the active model (``fleet push
--shadow``); ``fleet promote`` is a normal rollout of the same release whose default
devices are the ones running it as their shadow. :func:`discard_shadow` publishes the
retained ``shadow-discard`` message and waits for the devices to confirm.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet._fleetdb import Decision, FleetDB
from edgeship.sdk.fleet._fleetlease import Lease
from edgeship.sdk.fleet._fleetstatus import FleetWatcher
from edgeship.sdk.fleet._rollout import (
    Rollout,
    RolloutPolicy,
    discard_payload,
    discard_targets,
    discard_verdict,
    open_wave_devices,
    resume,
    rollout_key,
    shadow_ended,
    start_rollout,
    step,
)
from edgeship.sdk.fleet._rollout_control import retry_failed, wave_attempt
from edgeship.sdk.release._release import Release
from edgeship.sdk.transport._mqtt import Message, MqttEdge, parse_broker_url, topics

from edgeship._errors import InputError, TransportError

__all__ = ["discard_shadow", "publish_offers", "retained_offers", "run_rollout"]

DeviceChooser = Callable[[Mapping[str, Mapping[str, Any]], str], list[str]]


def publish_offers(edge: MqttEdge, fleet: str, payload: bytes, devices: Sequence[str], *,
                   timeout: float | None = None) -> None:
    """Publish ``payload`` retained on each device's offer topic; wait for every PUBACK
    (``timeout``: 30 s plus 10 ms per device: the broker acknowledges a wave of ten
    thousand while it delivers them)."""
    timeout = 30.0 + 0.01 * len(devices) if timeout is None else timeout
    infos = []
    for dev in devices:
        info = edge.publish(topics(fleet, dev).offer, payload, retain=True)
        if info is None:
            raise TransportError(f"lost the broker while offering to {dev}")
        infos.append((dev, info))
    deadline = time.monotonic() + timeout
    for dev, info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise TransportError(f"the broker did not acknowledge the offer to {dev}")


def run_rollout(*, broker_url: str, fleet: str, reldir: str | Path, db: FleetDB,
                policy: RolloutPolicy, devices: Sequence[str] | None = None,
                max_failure_rate: float | None = None, wave_timeout_s: float | None = None,
                wait: bool = True, username: str = "", password: str = "",
                on_update: Callable[[Rollout], None] | None = None, poll_s: float = 0.25,
                clock: Callable[[], float] = time.time, mode: str = "active",
                choose: DeviceChooser | None = None, lease_s: float = 15.0,
                standby: bool | None = None, retry_failed: bool = False,
                on_standby: Callable[[str, float], None] | None = None,
                ongoing: bool = False, install_window: str = "") -> Rollout:
    """Start or resume the rollout of ``reldir`` to ``fleet``; see the module docstring.

    ``policy`` shapes a new rollout; a recorded one keeps its waves and takes only a
    given ``max_failure_rate`` / ``wave_timeout_s``. Without ``wait`` it looks once
    (takes in the verdicts, offers the next wave if the last one is done) and returns; with ``wait`` it returns once the rollout completed, halted or was
    cancelled (a paused one is waited out). ``choose(statuses, version)`` picks the
    devices of a new rollout when none are named (default: every device with a status).

    The worker holds the rollout's lease (``lease_s`` to live, renewed by a heartbeat)
    while it runs; held by another worker, it stands by until that lease expires when
    ``standby`` (default: ``wait``), else it refuses. ``retry_failed`` offers the release
    again to the devices that failed or timed out (a last wave ``retry N``). An
    ``ongoing`` rollout does not complete: once its waves are done it offers the release
    to every device that reports a status later (waves ``joined N``), until cancelled.
    ``install_window`` ("02:00-04:00", device-local) goes into the offer: devices download
    now and install inside the window (give a ``wave_timeout_s`` that covers the wait).
    """
    release = Release.load(reldir)
    manifest = release.manifest
    offer = release.offer()
    payload = replace(offer, mode=mode, install_window=install_window).to_bytes()
    host, port, _ = parse_broker_url(broker_url)
    ident = Ident(broker=f"{host}:{port}", fleet=fleet, model=manifest.model,
                  version=manifest.version, reldir=str(Path(reldir).resolve()),
                  release_id=hashlib.sha256(
                      json.dumps(release.manifest_envelope, sort_keys=True).encode()
                  ).hexdigest()[:16], mode=mode)
    key = rollout_key(ident.broker, ident.fleet, ident.model, ident.version, ident.release_id,
                      mode)
    lease = Lease(db, key, ttl_s=lease_s).acquire(
        standby=wait if standby is None else standby, on_wait=on_standby)
    with lease:
        run = _Run(db=db, lease=lease, ident=ident, payload=payload, broker_url=broker_url,
                   username=username, password=password)
        return run.go(devices=devices, policy=policy, max_failure_rate=max_failure_rate,
                      wave_timeout_s=wave_timeout_s, wait=wait, on_update=on_update,
                      poll_s=poll_s, clock=clock, choose=choose, retry=retry_failed,
                      ongoing=ongoing)


@dataclass(frozen=True, kw_only=True)
class Ident:
    """Which rollout: this signed release, to this fleet, on this broker."""

    broker: str
    fleet: str
    model: str
    version: str
    reldir: str
    release_id: str
    mode: str = "active"


@dataclass(kw_only=True)
class _Run:
    """One worker driving one rollout while it holds the lease."""

    db: FleetDB
    lease: Lease
    ident: Ident
    payload: bytes
    broker_url: str
    username: str
    password: str

    @property
    def key(self) -> str:
        key: str = self.lease.key
        return key

    def go(self, *, devices: Sequence[str] | None, policy: RolloutPolicy,
           max_failure_rate: float | None, wave_timeout_s: float | None, wait: bool,
           on_update: Callable[[Rollout], None] | None, poll_s: float,
           clock: Callable[[], float], choose: DeviceChooser | None, retry: bool,
           ongoing: bool = False) -> Rollout:
        watcher = FleetWatcher(self.broker_url, self.ident.fleet, username=self.username,
                               password=self.password, telemetry=False).start()
        try:
            watcher.settle()
            rollout = _load_or_start(self.db, watcher, self.ident, devices=devices,
                                     policy=policy, now=clock(),
                                     max_failure_rate=max_failure_rate,
                                     wave_timeout_s=wave_timeout_s, choose=choose,
                                     taken_from=self.lease.previous, ongoing=ongoing)
            if retry:
                rollout = self.db.change(self.key, lambda r: retry_failed(r, clock()),
                                         "retry-failed")
            self._recover(watcher, rollout)
            return self._drive(rollout, watcher, wait=wait, on_update=on_update,
                               poll_s=poll_s, clock=clock)
        finally:
            watcher.stop()

    def _recover(self, watcher: FleetWatcher, rollout: Rollout) -> None:
        """Offers of the open wave that were decided but maybe never published (the last
        worker died between its decision and the broker's acknowledgement): publish those
        whose device's retained offer is not this release's, so none is offered twice."""
        i = rollout.current
        if rollout.status != "running" or i == len(rollout.waves):
            return
        attempt = wave_attempt(rollout.waves[i])
        sent = self.db.offered(self.key, attempt)
        due = [d for d in open_wave_devices(rollout) if sent.get(d) != "sent"]
        if not due:
            return
        if attempt == 0:
            retained = retained_offers(self.broker_url, self.ident.fleet, due,
                                       username=self.username, password=self.password)
            missing = [d for d in due if retained.get(d) != self.payload]
        else:  # a retry repeats an offer the device still holds: only a new publish counts
            missing = due
        publish_offers(watcher.edge, self.ident.fleet, self.payload, missing)
        self.db.mark_sent(self.key, attempt, due, holder=self.lease.holder)

    def _drive(self, rollout: Rollout, watcher: FleetWatcher, *, wait: bool,
               on_update: Callable[[Rollout], None] | None, poll_s: float,
               clock: Callable[[], float]) -> Rollout:
        """Look at the fleet's statuses until the rollout is done.

        A look takes in only the devices that reported since the last one (``step``'s
        ``only``), so it costs what happened, not the fleet's size. What a look decides
        (an offer, a wave closed, the rollout completed, halted, or paused or cancelled
        by an operator) is one transaction at once; verdicts alone go into the database
        every ``record_s`` (a worker that takes over reads them again from the retained
        statuses), as do the devices' statuses."""
        n = max(1, len(rollout.outcomes))
        record_s = max(2.0, n / 1000)  # one write of the whole record: seldom for big fleets
        watcher.track("observe")
        watcher.track("record")
        view, decided = rollout, rollout  # what the statuses say / what the database holds
        seen, next_look, next_record, full, first = -1, 0.0, 0.0, True, True
        while True:
            self.lease.check()
            if watcher.changes == seen and time.monotonic() < next_look:
                time.sleep(poll_s)  # no status came in: only timeouts and operators change
                continue  # things, so a full look once a second is enough for those
            seen, next_look = watcher.changes, time.monotonic() + 1.0
            recording = time.monotonic() >= next_record
            changed = watcher.take("observe")  # before raw(): a status that comes in
            to_record = watcher.take("record") if recording else set()  # between is seen
            statuses = watcher.raw()  # now and looked at again next time
            if recording and first:  # every device's status once, then what changed
                to_record, first = set(statuses), False
            now = clock()
            local, offer = step(view, statuses, now, only=None if full else changed)
            full = False
            if recording:  # the fleet's last statuses, in the database
                next_record = time.monotonic() + record_s
                self.db.record_devices(self.ident.fleet, {
                    d: statuses[d] for d in to_record if d in statuses})
            moved = offer or local.status != view.status or local.current != view.current \
                or self.db.status_of(self.key) != decided.status
            if moved or (local is not decided and (recording or not wait)):
                decided, offer = self._decide(watcher, statuses, now)
                view, full = decided, True  # a fresh record: look at every device again
            else:
                view = local
            if on_update is not None:
                on_update(view)
            done = decided.status not in ("running", "paused")
            if done or not wait:  # without --wait: one look, one decision (devices
                return decided  # that commit at once must not carry it past a pause)
            if not offer:
                time.sleep(poll_s)

    def _decide(self, watcher: FleetWatcher, statuses: Mapping[str, Mapping[str, Any]],
                now: float) -> tuple[Rollout, list[str]]:
        """One wave decision in one transaction, then the offers it made, published."""

        def decide(current: Rollout) -> Decision:
            new, offer = step(current, statuses, now)
            wave = new.waves[min(new.current, len(new.waves) - 1)]
            event = "offered" if offer else (new.status if new.status != current.status
                                             else None)
            detail = {"wave": wave.name, "devices": offer, "reason": new.reason} \
                if event else None
            return new, offer, event, detail

        rollout, offer, attempt = self.db.decide(self.key, self.lease.holder,
                                                 self.lease.ttl_s, decide)
        if offer:
            publish_offers(watcher.edge, self.ident.fleet, self.payload, offer)
            self.db.mark_sent(self.key, attempt, offer, holder=self.lease.holder)
        return rollout, offer


def _load_or_start(db: FleetDB, watcher: FleetWatcher, ident: Ident, *,
                   devices: Sequence[str] | None, policy: RolloutPolicy, now: float,
                   max_failure_rate: float | None, wave_timeout_s: float | None,
                   choose: DeviceChooser | None = None, taken_from: str = "",
                   ongoing: bool = False) -> Rollout:
    recorded = db.load(rollout_key(ident.broker, ident.fleet, ident.model, ident.version,
                                   ident.release_id, ident.mode))
    wanted = list(devices) if devices else \
        (choose(watcher.raw(), ident.version) if choose is not None else None)
    if recorded is not None and recorded.status == "completed" and wanted \
            and set(wanted) - set(recorded.outcomes):
        recorded = None  # done before; now new devices are named: a new rollout
    if recorded is not None and shadow_ended(recorded, watcher.raw()):
        recorded = None  # the shadow was discarded since: pushing it again offers it again
    if recorded is not None and recorded.status == "cancelled":
        recorded = None  # pushing a cancelled rollout's release again starts it over
    if recorded is not None and recorded.status == "paused":
        return recorded  # an operator paused it: only `fleet resume` goes on
    if recorded is not None:
        rollout = resume(replace(recorded, ongoing=recorded.ongoing or ongoing),
                         max_failure_rate=max_failure_rate, wave_timeout_s=wave_timeout_s,
                         max_concurrent=policy.max_concurrent or None, now=now)
        db.save(rollout, event="resumed", detail={"was": recorded.status, "from": taken_from,
                                                  "policy": rollout.policy.to_dict()})
        return rollout
    if choose is not None and not wanted:
        raise InputError(f"no device of fleet {ident.fleet!r} runs {ident.version} as its "
                         "shadow (one that crashed or failed to load is promoted only where "
                         "named); name the devices with --devices ID,...")
    targets = wanted or sorted(watcher.statuses())
    if not targets:
        raise InputError(f"no devices of fleet {ident.fleet!r} report a status; name them with "
                         "--devices ID,...")
    rollout = start_rollout(fleet=ident.fleet, model=ident.model, version=ident.version,
                            reldir=ident.reldir, devices=targets, policy=policy, now=now,
                            release_id=ident.release_id, broker=ident.broker, mode=ident.mode,
                            ongoing=ongoing)
    db.create(rollout, {"devices": len(targets), "waves": [len(w.devices) for w in rollout.waves]})
    return rollout



def retained_offers(broker_url: str, fleet: str, devices: Sequence[str], *, username: str = "",
                    password: str = "", timeout: float = 10.0) -> dict[str, bytes]:
    """The offers the broker keeps (retained) for ``devices``: device -> payload."""
    wanted, found = set(devices), {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(msg: Message) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 5 and parts[2] in wanted and msg.payload:
            with lock:
                found[parts[2]] = msg.payload
        last[0] = time.monotonic()

    edge = MqttEdge(broker_url, client_id=f"edgeship-offers-{os.getpid()}-{id(wanted) & 0xffff:x}",
                    subscriptions=[f"edgeship/{fleet}/+/ota/offer"], on_message=on_message,
                    username=username, password=password, subscribe_qos=0)
    edge.start()
    try:
        if not edge.wait_connected(timeout):
            raise TransportError(f"cannot reach the broker at {broker_url} within {timeout:g}s")
        last[0] = time.monotonic()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and time.monotonic() - last[0] < 0.5:
            time.sleep(0.05)
        with lock:
            return dict(found)
    finally:
        edge.stop()


def discard_shadow(*, broker_url: str, fleet: str, version: str,
                   devices: Sequence[str] | None = None, timeout: float = 60.0,
                   username: str = "", password: str = "", poll_s: float = 0.2
                   ) -> dict[str, str]:
    """Publish ``shadow-discard`` for ``version`` (retained) on each device's offer topic
    and wait up to ``timeout`` s for their verdicts: device -> ``discarded``,
    ``no-shadow`` or ``pending`` (no confirmation in time; 0 = do not wait)."""
    watcher = FleetWatcher(broker_url, fleet, username=username, password=password,
                           telemetry=False).start()
    try:
        watcher.settle()
        targets = list(dict.fromkeys(devices)) if devices else \
            discard_targets(watcher.raw(), version)
        if not targets:
            raise InputError(f"no device of fleet {fleet!r} runs or installs {version} as a "
                             "shadow; name the devices with --devices ID,...")
        publish_offers(watcher.edge, fleet, discard_payload(version), targets)
        deadline = time.monotonic() + timeout
        while True:
            statuses = watcher.raw()
            verdicts = {d: discard_verdict(statuses.get(d), version) or "pending"
                        for d in targets}
            if "pending" not in verdicts.values() or time.monotonic() >= deadline:
                return verdicts
            time.sleep(poll_s)
    finally:
        watcher.stop()
