"""The shell around the rollout planner: MQTT in and out, SQLite for memory.

:func:`run_rollout` watches the fleet's retained statuses (:class:`FleetWatcher`), asks
:func:`edgeship.sdk.fleet._rollout.step` what to do, publishes the signed offer (retained,
QoS 1, acknowledged by the broker) to the devices of a wave, and then records the new
state in :class:`FleetDB`. Publishing before recording, and re-offering the open wave on
every start, mean a kill at any instant at worst repeats an offer, which a device
ignores (it already has that job, or that version).

``mode="shadow"`` offers the release to run beside the active model (``fleet push
--shadow``); ``fleet promote`` is a normal rollout of the same release whose default
devices are the ones running it as their shadow. :func:`discard_shadow` publishes the
retained ``shadow-discard`` message and waits for the devices to confirm.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet._fleetdb import FleetDB
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
from edgeship.sdk.fleet._rollout_flags import Flag, RolloutFlags
from edgeship.sdk.fleet._sqlengine import engine_of
from edgeship.sdk.release._release import Release
from edgeship.sdk.transport._mqtt import MqttEdge, parse_broker_url, topics

from edgeship._errors import InputError, TransportError

__all__ = ["discard_shadow", "publish_offers", "record_cancel", "run_rollout"]

DeviceChooser = Callable[[Mapping[str, Mapping[str, Any]], str], list[str]]


def publish_offers(edge: MqttEdge, fleet: str, payload: bytes, devices: Sequence[str], *,
                   timeout: float = 30.0) -> None:
    """Publish ``payload`` retained on each device's offer topic; wait for every PUBACK."""
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
                choose: DeviceChooser | None = None) -> Rollout:
    """Start or resume the rollout of ``reldir`` to ``fleet``; see the module docstring.

    ``policy`` shapes a new rollout; a recorded one keeps its waves and takes only a
    given ``max_failure_rate`` / ``wave_timeout_s``. Without ``wait`` it goes as far as
    it can without waiting for devices (offers the next wave if the last one is done)
    and returns; with ``wait`` it returns once the rollout completed or halted.
    ``choose(statuses, version)`` picks the devices of a new rollout when none are named
    (default: every device with a status).
    """
    release = Release.load(reldir)
    manifest = release.manifest
    offer = release.offer()
    payload = (offer if mode == "active" else replace(offer, mode=mode)).to_bytes()
    host, port, _ = parse_broker_url(broker_url)
    ident = Ident(broker=f"{host}:{port}", fleet=fleet, model=manifest.model,
                  version=manifest.version, reldir=str(Path(reldir).resolve()),
                  release_id=hashlib.sha256(
                      json.dumps(release.manifest_envelope, sort_keys=True).encode()
                  ).hexdigest()[:16], mode=mode)
    key = rollout_key(ident.broker, ident.fleet, ident.model, ident.version, ident.release_id,
                      mode)
    with db.lock(key):
        return _run_locked(db, ident, payload, broker_url=broker_url, username=username,
                           password=password, devices=devices, policy=policy,
                           max_failure_rate=max_failure_rate, wave_timeout_s=wave_timeout_s,
                           wait=wait, on_update=on_update, poll_s=poll_s, clock=clock,
                           choose=choose)


def _run_locked(db: FleetDB, ident: Ident, payload: bytes, *, broker_url: str, username: str,
                password: str, devices: Sequence[str] | None, policy: RolloutPolicy,
                max_failure_rate: float | None, wave_timeout_s: float | None, wait: bool,
                on_update: Callable[[Rollout], None] | None, poll_s: float,
                clock: Callable[[], float], choose: DeviceChooser | None) -> Rollout:
    fleet = ident.fleet
    watcher = FleetWatcher(broker_url, fleet, username=username, password=password,
                           telemetry=False).start()
    try:
        watcher.settle()
        rollout = _load_or_start(db, watcher, ident, devices=devices, policy=policy, now=clock(),
                                 max_failure_rate=max_failure_rate, wave_timeout_s=wave_timeout_s,
                                 choose=choose)
        reoffer = open_wave_devices(rollout)
        if reoffer:  # the last run may have died between recording and publishing
            publish_offers(watcher.edge, fleet, payload, reoffer)
        return _drive(rollout, watcher, db, payload, wait=wait, on_update=on_update,
                      poll_s=poll_s, clock=clock)
    finally:
        watcher.stop()


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


def _load_or_start(db: FleetDB, watcher: FleetWatcher, ident: Ident, *,
                   devices: Sequence[str] | None, policy: RolloutPolicy, now: float,
                   max_failure_rate: float | None, wave_timeout_s: float | None,
                   choose: DeviceChooser | None = None) -> Rollout:
    recorded = db.load(rollout_key(ident.broker, ident.fleet, ident.model, ident.version,
                                   ident.release_id, ident.mode))
    wanted = list(devices) if devices else \
        (choose(watcher.raw(), ident.version) if choose is not None else None)
    if recorded is not None and recorded.status == "completed" and wanted \
            and set(wanted) - set(recorded.outcomes):
        recorded = None  # done before; now new devices are named: a new rollout
    if recorded is not None and shadow_ended(recorded, watcher.raw()):
        recorded = None  # the shadow was discarded since: pushing it again offers it again
    if recorded is not None:
        rollout = resume(recorded, max_failure_rate=max_failure_rate,
                         wave_timeout_s=wave_timeout_s, now=now)
        db.save(rollout, event="resumed", detail={"was": recorded.status,
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
                            release_id=ident.release_id, broker=ident.broker, mode=ident.mode)
    db.save(rollout, event="created", detail={"devices": len(targets),
                                              "waves": [len(w.devices) for w in rollout.waves]})
    return rollout


def _drive(rollout: Rollout, watcher: FleetWatcher, db: FleetDB, payload: bytes, *, wait: bool,
           on_update: Callable[[Rollout], None] | None, poll_s: float,
           clock: Callable[[], float]) -> Rollout:
    flags = RolloutFlags(engine_of(db))
    paused = False
    while True:
        control = flags.get(rollout.key)
        if control is not None and control.state == "cancelled":
            return _cancel(rollout, db, flags, control, clock())
        if control is not None and control.state == "paused":
            if not paused:
                db.save(rollout, event="paused", detail={"who": control.who})
            paused = True
            if on_update is not None:
                on_update(rollout)
            if not wait:
                return rollout
            time.sleep(poll_s)
            continue
        if paused:  # the open wave waited for the operator, not for its devices
            paused, rollout = False, resume(rollout, now=clock())
            db.save(rollout, event="unpaused", detail={})
        new, offer = step(rollout, watcher.raw(), clock())
        if offer:
            publish_offers(watcher.edge, rollout.fleet, payload, offer)
        if new != rollout:
            wave = new.waves[min(new.current, len(new.waves) - 1)]
            event = "offered" if offer else (new.status if new.status != rollout.status
                                             else None)
            db.save(new, event=event, detail={"wave": wave.name, "devices": offer,
                                              "reason": new.reason} if event else None)
        rollout = new
        if on_update is not None:
            on_update(rollout)
        if rollout.status != "running" or (not wait and not offer):
            return rollout
        if not offer:
            time.sleep(poll_s)


def _cancel(rollout: Rollout, db: FleetDB, flags: RolloutFlags, control: Flag,
            now: float) -> Rollout:
    """Record a cancelled rollout as halted and consume its flag."""
    halted = record_cancel(db, rollout, control.who, asked=control.ts, now=now)
    flags.set(rollout.key, None, control.who)
    return halted


def record_cancel(db: FleetDB, rollout: Rollout, who: str, *, asked: float, now: float
                  ) -> Rollout:
    """Record ``rollout`` as halted, "cancelled by WHO at TIME" (a re-run of the push
    resumes it like any halted rollout). Only the holder of the rollout's lock may."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(asked))
    halted = replace(rollout, status="halted", updated_at=now,
                     reason=f"cancelled by {who} at {when}")
    db.save(halted, event="halted", detail={"reason": halted.reason, "who": who})
    return halted


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
