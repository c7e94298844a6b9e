"""Staged rollouts as pure logic: canary group, growing waves, abort on failure rate.

The shape is the one AWS IoT Jobs calls a rollout config with an abort config: a small
canary group first, then waves that reach a growing share of the fleet; each wave waits
until its devices report an outcome (or a timeout) and the rollout halts by itself once
the failure rate of the devices decided so far passes a threshold.

Nothing here does I/O. :func:`step` takes the recorded :class:`Rollout`, the latest
device statuses (the retained JSON of ``edgeship/<fleet>/<device>/status``) and ``now``,
and returns the new rollout plus the devices to offer the release to now. The shell
(:mod:`edgeship.sdk.fleet._rollout_run`) publishes the offers *before* it records the new
state, and re-offers the open wave after a restart (offers are retained and idempotent
on the device), so a crash never leaves a wave recorded as offered but never sent.

A *shadow* rollout (``mode="shadow"``: the offer asks devices to run the release beside
the active model) is the same machine with another success: the device reports
``shadowing`` that version (outcome ``shadowing``). It is recorded under its own key, so
promoting the release afterwards (a normal rollout of it) starts a new record.
:func:`discard_targets` / :func:`discard_verdict` are the pure half of ``fleet discard``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

from edgeship._errors import ConfigError

__all__ = [
    "DONE_OUTCOMES",
    "FAILED_OUTCOMES",
    "Rollout",
    "RolloutPolicy",
    "Wave",
    "classify",
    "discard_payload",
    "discard_targets",
    "discard_verdict",
    "open_wave_devices",
    "parse_percent",
    "parse_waves",
    "plan_waves",
    "resume",
    "rollout_key",
    "shadow_ended",
    "shadowing_devices",
    "start_rollout",
    "step",
]

# outcome of one device for this rollout
PENDING, UPDATING = "pending", "updating"  # not offered yet / offered, no verdict yet
COMMITTED, ROLLED_BACK, FAILED, TIMEOUT = "committed", "rolled-back", "failed", "timeout"
SHADOWING = "shadowing"  # a shadow rollout's success: the release runs beside the active one
DONE_OUTCOMES = (COMMITTED, SHADOWING, ROLLED_BACK, FAILED, TIMEOUT)
SUCCESS_OUTCOMES = (COMMITTED, SHADOWING)
MODES = ("active", "shadow")
_BUSY = ("downloading", "downloaded", "verifying", "installing", "health-checking")
_BROKEN_SHADOW = ("crashed", "failed")  # shadow states in which it compares nothing
FAILED_OUTCOMES = (ROLLED_BACK, FAILED, TIMEOUT)
MAX_DEVICES = 1_000_000
MAX_WAVES = 100


def parse_percent(text: str | float, what: str = "percentage") -> float:
    """``"10%"``, ``"10"`` or ``0.1`` -> 0.1 (a share in (0, 1])."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not a percentage like 10%") from exc
    if not raw.endswith("%") and value > 1:  # "25" means 25 %
        value /= 100
    if not 0 <= value <= 1:
        raise ConfigError(f"{what}: {text!r} is not between 0% and 100%")
    return value


def parse_waves(text: str) -> tuple[float, ...]:
    """``"10%,50%,100%"`` -> (0.1, 0.5, 1.0): cumulative shares, growing, ending at 100 %."""
    shares = tuple(parse_percent(p, "--waves") for p in text.split(",") if p.strip())
    if not shares or len(shares) > MAX_WAVES:
        raise ConfigError(f"--waves: give 1..{MAX_WAVES} shares like 10%,50%,100%")
    if any(b <= a for a, b in pairwise(shares)) or shares[0] <= 0:
        raise ConfigError(f"--waves: shares must grow: {text!r}")
    if shares[-1] < 1:
        shares = (*shares, 1.0)  # a rollout that completes reaches every device
    return shares


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    """How a rollout grows and when it stops; the last two may change when resuming."""

    canary: float = 0.0  # share of the fleet in the canary group (at least one device if > 0)
    waves: tuple[float, ...] = (1.0,)  # cumulative shares after the canary
    max_failure_rate: float = 1.0  # halt when failed / decided devices passes this
    wave_timeout_s: float = 600.0  # a device with no verdict by then counts as failed
    max_concurrent: int = 0  # devices updating at once (offered, no verdict yet); 0 = all

    def __post_init__(self) -> None:
        if not 0 <= self.canary <= 1:
            raise ConfigError("--canary must be between 0% and 100%")
        if not self.waves or self.waves[-1] != 1.0:
            raise ConfigError("--waves must end at 100%")
        if not 0 <= self.max_failure_rate <= 1:
            raise ConfigError("--max-failure-rate must be between 0 and 1")
        if not self.wave_timeout_s > 0:
            raise ConfigError("--wave-timeout must be positive")
        if self.max_concurrent < 0:
            raise ConfigError("--max-concurrent must be 0 (no limit) or more")

    def to_dict(self) -> dict[str, Any]:
        return {"canary": self.canary, "waves": list(self.waves),
                "max_failure_rate": self.max_failure_rate, "wave_timeout_s": self.wave_timeout_s,
                "max_concurrent": self.max_concurrent}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutPolicy:
        return cls(canary=float(d["canary"]), waves=tuple(float(w) for w in d["waves"]),
                   max_failure_rate=float(d["max_failure_rate"]),
                   wave_timeout_s=float(d["wave_timeout_s"]),
                   max_concurrent=int(d.get("max_concurrent", 0)))


def plan_waves(devices: Sequence[str], canary: float, waves: Sequence[float]) -> list[list[str]]:
    """Split ``devices`` (in order) into the canary group and the growing waves.

    Wave sizes come from cumulative shares, rounded up so no wave is empty while devices
    remain; empty groups are dropped.
    """
    n = len(devices)
    cuts: list[int] = []
    if canary > 0 and n:
        cuts.append(max(1, math.ceil(n * canary - 1e-9)))
    for share in waves:
        cuts.append(min(n, max(cuts[-1] + 1 if cuts else 1, math.ceil(n * share - 1e-9))))
    groups, start = [], 0
    for cut in cuts:
        if cut > start:
            groups.append(list(devices[start:cut]))
            start = cut
    return groups


@dataclass(frozen=True, kw_only=True)
class Wave:
    name: str  # "canary", "wave 1", ...
    devices: tuple[str, ...]
    offered_at: float | None = None
    closed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "devices": list(self.devices), "offered_at": self.offered_at,
                "closed_at": self.closed_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wave:
        return cls(name=d["name"], devices=tuple(d["devices"]), offered_at=d.get("offered_at"),
                   closed_at=d.get("closed_at"))


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """The whole recorded state of one rollout of ``version`` to a fleet."""

    fleet: str
    model: str
    version: str
    reldir: str
    policy: RolloutPolicy
    waves: tuple[Wave, ...]
    outcomes: Mapping[str, str] = field(default_factory=dict)  # device -> outcome
    errors: Mapping[str, str] = field(default_factory=dict)  # device -> last error
    status: str = "running"  # running | halted | completed | paused | cancelled
    reason: str = ""  # why it halted
    created_at: float = 0.0
    updated_at: float = 0.0
    release_id: str = ""  # sha256 prefix of the signed manifest: a re-signed release is new
    broker: str = ""  # host:port; the same fleet name on another broker is another fleet
    mode: str = "active"  # "shadow": devices run the release beside the active model
    ongoing: bool = False  # after the last wave, offer it to devices that join ("joined N")
    # when each device was offered, where it differs from its wave's offered_at (a wave
    # offered a few devices at a time under --max-concurrent, or re-timed by a resume)
    offer_times: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"rollout mode {self.mode!r} is not one of {MODES}")

    @property
    def key(self) -> str:
        """The rollout's key in the state database (broker, fleet, model, version, release,
        mode)."""
        return rollout_key(self.broker, self.fleet, self.model, self.version, self.release_id,
                           self.mode)

    @property
    def current(self) -> int:
        """Index of the first wave not yet closed (== len(waves) when all are)."""
        return next((i for i, w in enumerate(self.waves) if w.closed_at is None), len(self.waves))

    def counts(self) -> dict[str, int]:
        """How many devices are in each outcome (pending, updating, committed, failed ...)."""
        out = {o: 0 for o in (PENDING, UPDATING, *DONE_OUTCOMES)}
        out.update(Counter(self.outcomes.values()))  # counted in C: thousands, often
        return out

    def failure_rate(self) -> float:
        """Failed devices over decided ones (0.0 before any is decided)."""
        c = self.counts()
        decided = sum(c[o] for o in DONE_OUTCOMES)
        return sum(c[o] for o in FAILED_OUTCOMES) / decided if decided else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "model": self.model, "version": self.version,
                "reldir": self.reldir, "policy": self.policy.to_dict(),
                "waves": [w.to_dict() for w in self.waves], "outcomes": dict(self.outcomes),
                "errors": dict(self.errors), "status": self.status, "reason": self.reason,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "release_id": self.release_id, "broker": self.broker, "mode": self.mode,
                "ongoing": self.ongoing, "offer_times": dict(self.offer_times)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rollout:
        return cls(fleet=d["fleet"], model=d["model"], version=d["version"], reldir=d["reldir"],
                   policy=RolloutPolicy.from_dict(d["policy"]),
                   waves=tuple(Wave.from_dict(w) for w in d["waves"]),
                   outcomes=dict(d["outcomes"]), errors=dict(d.get("errors", {})),
                   status=d["status"], reason=d.get("reason", ""),
                   created_at=float(d.get("created_at", 0)), updated_at=float(d.get("updated_at", 0)),
                   release_id=d.get("release_id", ""), broker=d.get("broker", ""),
                   mode=d.get("mode", "active"), ongoing=bool(d.get("ongoing", False)),
                   offer_times={str(k): float(v)
                                for k, v in dict(d.get("offer_times", {})).items()})


def rollout_key(broker: str, fleet: str, model: str, version: str, release_id: str,
                mode: str = "active") -> str:
    key = f"{broker}|{fleet}/{model}/{version}@{release_id}"
    return key if mode == "active" else f"{key}#{mode}"


def start_rollout(*, fleet: str, model: str, version: str, reldir: str, devices: Sequence[str],
                  policy: RolloutPolicy, now: float, release_id: str = "", broker: str = "",
                  mode: str = "active", ongoing: bool = False) -> Rollout:
    unique = list(dict.fromkeys(devices))
    if not unique:
        raise ConfigError("no devices to update (name them with --devices, or none report status)")
    if len(unique) > MAX_DEVICES:
        raise ConfigError(f"{len(unique)} devices is over the limit of {MAX_DEVICES}")
    groups = plan_waves(unique, policy.canary, policy.waves)
    names = ["canary" if policy.canary > 0 and i == 0 else "" for i in range(len(groups))]
    first = 0 if policy.canary > 0 else 1
    waves = tuple(Wave(name=n or f"wave {i + first}", devices=tuple(g))
                  for i, (n, g) in enumerate(zip(names, groups, strict=True)))
    return Rollout(fleet=fleet, model=model, version=version, reldir=reldir, policy=policy,
                   waves=waves, outcomes=dict.fromkeys(unique, PENDING), created_at=now,
                   updated_at=now, release_id=release_id, broker=broker, mode=mode,
                   ongoing=ongoing)


def classify(status: Mapping[str, Any] | None, version: str, offered_at: float,
             skew_s: float = 5.0, mode: str = "active") -> str | None:
    """This rollout's verdict from one device status, or None when there is none yet.

    The agent reports ``{"state", "version" (active), "target" (version tried), "error",
    "ts"}``; a retained status from before the offer must not count, so a verdict needs
    the target to be ours, or (for an offer the device refused before it named a target)
    a timestamp after the offer.
    """
    if not status:
        return None
    state, active, target = status.get("state"), status.get("version"), status.get("target")
    if mode == "shadow" and (_shadow_version(status) == version
                             or (state == SHADOWING and target == version)):
        # the shadow runs whatever the phase says: a later refused offer leaves "failed"
        # beside it, and the device ignores a repeat of the offer it already shadows
        return SHADOWING
    if state == COMMITTED and active == version:
        return COMMITTED
    if state in (ROLLED_BACK, FAILED):
        ts = status.get("ts")
        fresh = isinstance(ts, (int, float)) and ts >= offered_at - skew_s
        if target == version and (fresh or state == ROLLED_BACK):
            return str(state)
        if state == FAILED and fresh and target is None:
            return FAILED  # an offer refused before it could name a version (malformed)
    if active == version and state not in _BUSY:
        return COMMITTED  # already running this version (nothing to shadow either)
    return None


def _shadow_version(status: Mapping[str, Any]) -> str | None:
    shadow = status.get("shadow")
    return str(shadow.get("version")) if isinstance(shadow, Mapping) else None


def shadowing_devices(statuses: Mapping[str, Mapping[str, Any]], version: str) -> list[str]:
    """Devices that run ``version`` as their shadow (whom ``fleet promote`` offers it to).

    Not those whose shadow crashed or failed to load: the comparison that promoting
    rests on never ran there (the operator can still name them with ``--devices``)."""
    return sorted(d for d, s in statuses.items() if _shadow_version(s) == version
                  and (s.get("shadow") or {}).get("state") not in _BROKEN_SHADOW)


def shadow_ended(rollout: Rollout, statuses: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a completed shadow rollout no longer describes the fleet: a device it
    counted as ``shadowing`` now reports neither that shadow, nor that version active,
    nor an install of it (e.g. after ``fleet discard``). Pushing the release as a shadow
    again must then offer it again, not report the old rollout as done."""
    if rollout.mode != "shadow" or rollout.status != "completed":
        return False
    for dev, outcome in rollout.outcomes.items():
        status = statuses.get(dev)
        if outcome != SHADOWING or not status:
            continue
        installing = status.get("target") == rollout.version and status.get("state") in _BUSY
        if rollout.version not in (_shadow_version(status), status.get("version")) \
                and not installing:
            return True
    return False


def discard_payload(version: str) -> bytes:
    """The retained message that ends a shadow on a device's offer topic."""
    import json

    return json.dumps({"type": "shadow-discard", "version": version}, sort_keys=True).encode()


def discard_targets(statuses: Mapping[str, Mapping[str, Any]], version: str) -> list[str]:
    """Devices whose shadow is ``version``, or that are installing it (maybe as a shadow)."""
    return sorted(d for d, s in statuses.items()
                  if _shadow_version(s) == version
                  or (s.get("target") == version and s.get("state") in (*_BUSY, SHADOWING)))


def discard_verdict(status: Mapping[str, Any] | None, version: str) -> str | None:
    """``discarded`` once the device confirms, ``no-shadow`` when it has no shadow of
    ``version`` to drop (it ignores the message), None while that is not known yet."""
    if not status:
        return None
    state, target = status.get("state"), status.get("target")
    if state == "shadow-discarded" and target == version:
        return "discarded"
    if _shadow_version(status) == version or (target == version and state in _BUSY):
        return None
    return "no-shadow"


def step(rollout: Rollout, statuses: Mapping[str, Mapping[str, Any]], now: float, *,
         only: Collection[str] | None = None) -> tuple[Rollout, list[str]]:
    """Take in the latest statuses; return the new rollout and the devices to offer now.

    A paused rollout still takes in verdicts (devices already offered go on) but opens,
    times out and halts nothing. ``only``: the devices whose status changed since the
    step that made ``rollout`` (a watcher with thousands of devices looks several times
    a second); the others' verdicts are not looked at again. Nothing changes without
    something happening: the result is ``rollout`` itself then."""
    if rollout.status == "paused":
        return _observe(rollout, statuses, now, only), []
    if rollout.status != "running":
        return rollout, []
    rollout = _observe(rollout, statuses, now, only)
    rollout = _close_timed_out(rollout, now)
    if _over_threshold(rollout):
        return _halt(rollout, now), []
    i = rollout.current
    if i == len(rollout.waves) and rollout.ongoing:
        joined = _joined(rollout, statuses, now)
        return (step(joined, statuses, now) if joined is not rollout else (rollout, []))
    if i == len(rollout.waves):
        return replace(rollout, status="completed", updated_at=now), []
    wave = rollout.waves[i]
    if wave.offered_at is None:
        rollout = _open(rollout, i, now)
    rollout, more = _fill(rollout, i, now)
    if more:
        return rollout, more
    # devices updating are all in the open wave (a wave closes once all are done), so
    # while any is, it stays open: no need to walk thousands of devices to see it
    if rollout.counts()[UPDATING] == 0 and \
            all(rollout.outcomes[d] in DONE_OUTCOMES for d in wave.devices):
        rollout = _close(rollout, i, now)
        return step(rollout, statuses, now, only=only)
    return rollout, []


def _joined(rollout: Rollout, statuses: Mapping[str, Mapping[str, Any]], now: float
            ) -> Rollout:
    """An ongoing rollout whose waves are done: devices that reported since, and are not
    in it, become a wave of their own (``joined N``); those already on the version count
    as committed without an offer. The same rollout when nobody joined."""
    new = sorted(d for d in statuses if d not in rollout.outcomes)
    new = new[:max(0, MAX_DEVICES - len(rollout.outcomes))]
    if not new:
        return rollout
    there = [d for d in new if classify(statuses[d], rollout.version, now,
                                        mode=rollout.mode) in SUCCESS_OUTCOMES]
    outcomes = {**rollout.outcomes, **dict.fromkeys(there, COMMITTED), **{
        d: PENDING for d in new if d not in there}}
    waves = rollout.waves
    if len(there) < len(new):
        n = 1 + sum(1 for w in waves if w.name.startswith("joined "))
        waves = (*waves, Wave(name=f"joined {n}", devices=tuple(d for d in new
                                                                if d not in there)))
    return replace(rollout, waves=waves, outcomes=outcomes, updated_at=now)


_OFFERED: list[tuple[Any, Any, dict[str, float]]] = []  # the last _offered_at, by identity


def _offered_at(rollout: Rollout) -> dict[str, float]:
    """When each offered device was offered (a device retried in a later wave: its latest
    offer). Built again only when the waves or offer times changed (same objects: same
    answer; steps that only take in verdicts keep both)."""
    for waves, times, found in _OFFERED:
        if waves is rollout.waves and times is rollout.offer_times:
            return found
    offered_at: dict[str, float] = {}
    for wave in rollout.waves:
        if wave.offered_at is not None:
            offered_at.update(dict.fromkeys(wave.devices, wave.offered_at))
    offered_at.update({d: t for d, t in rollout.offer_times.items() if d in offered_at})
    _OFFERED[:] = [(rollout.waves, rollout.offer_times, offered_at)]
    return offered_at


def _observe(rollout: Rollout, statuses: Mapping[str, Mapping[str, Any]], now: float,
             only: Collection[str] | None = None) -> Rollout:
    offered_at = _offered_at(rollout)
    looked = offered_at.items() if only is None else \
        [(d, offered_at[d]) for d in only if d in offered_at]
    outcomes: dict[str, str] | None = None
    errors: dict[str, str] = {}
    for dev, since in looked:
        outcome = rollout.outcomes[dev]
        if outcome == PENDING:
            continue  # queued under --max-concurrent: not offered yet
        status = statuses.get(dev)
        verdict = classify(status, rollout.version, since, mode=rollout.mode)
        if verdict is None or verdict == outcome:
            continue
        if outcome in SUCCESS_OUTCOMES:
            continue  # a device that succeeded stays counted as a success
        if outcomes is None:  # copied once, at the first verdict that changes
            outcomes, errors = dict(rollout.outcomes), dict(rollout.errors)
        outcomes[dev] = verdict
        if status and status.get("error"):
            errors[dev] = str(status["error"])[:500]
    if outcomes is None:
        return rollout
    return replace(rollout, outcomes=outcomes, errors=errors, updated_at=now)


def _close_timed_out(rollout: Rollout, now: float) -> Rollout:
    i = rollout.current
    if i == len(rollout.waves):
        return rollout
    wave = rollout.waves[i]
    limit = rollout.policy.wave_timeout_s
    if wave.offered_at is None or now - wave.offered_at < limit:
        return rollout  # no device of it was offered before the wave opened
    late = [d for d in wave.devices if rollout.outcomes[d] == UPDATING
            and now - rollout.offer_times.get(d, wave.offered_at) >= limit]
    if not late:
        return rollout
    outcomes, errors = dict(rollout.outcomes), dict(rollout.errors)
    for dev in late:
        outcomes[dev] = TIMEOUT
        errors.setdefault(dev, f"no verdict within {limit:g}s")
    return replace(rollout, outcomes=outcomes, errors=errors, updated_at=now)


def _over_threshold(rollout: Rollout) -> bool:
    """Past the threshold now, or bound to be at the end of the open wave whatever happens.

    The second form halts early without waiting for the rest of a wave when its
    failures alone already decide it; a single early failure with many devices still
    out does not.
    """
    limit = rollout.policy.max_failure_rate
    c = rollout.counts()
    failed = sum(c[o] for o in FAILED_OUTCOMES)
    if failed == 0:
        return False
    offered = sum(1 for w in rollout.waves if w.offered_at is not None for d in w.devices
                  if rollout.outcomes[d] != PENDING)
    decided = sum(c[o] for o in DONE_OUTCOMES)
    if offered == 0 or failed == 0:
        return False
    open_wave = rollout.current < len(rollout.waves) and \
        rollout.waves[rollout.current].offered_at is not None
    if not open_wave:
        return failed / decided > limit
    return failed / offered > limit


def _halt(rollout: Rollout, now: float) -> Rollout:
    c = rollout.counts()
    failed = sum(c[o] for o in FAILED_OUTCOMES)
    decided = sum(c[o] for o in DONE_OUTCOMES)
    reason = (f"failure rate {failed}/{decided} = {rollout.failure_rate():.0%} passed the limit "
              f"of {rollout.policy.max_failure_rate:.0%}; {c[PENDING]} devices left untouched")
    return replace(rollout, status="halted", reason=reason, updated_at=now)


def _open(rollout: Rollout, i: int, now: float) -> Rollout:
    waves = list(rollout.waves)
    waves[i] = replace(waves[i], offered_at=now)
    return replace(rollout, waves=tuple(waves), updated_at=now)


def _fill(rollout: Rollout, i: int, now: float) -> tuple[Rollout, list[str]]:
    """Offer the open wave's queued devices, as many as ``max_concurrent`` leaves room
    for (devices offered and still without a verdict count against it)."""
    wave = rollout.waves[i]
    if rollout.counts()[PENDING] == 0:
        return rollout, []
    queued = [d for d in wave.devices if rollout.outcomes[d] == PENDING]
    if not queued:
        return rollout, []
    cap = rollout.policy.max_concurrent
    if cap:
        busy = sum(1 for o in rollout.outcomes.values() if o == UPDATING)
        queued = queued[:max(0, cap - busy)]
        if not queued:
            return rollout, []
    outcomes = {**rollout.outcomes, **dict.fromkeys(queued, UPDATING)}
    times = dict(rollout.offer_times)
    if cap or wave.offered_at != now:
        times.update(dict.fromkeys(queued, now))
    return replace(rollout, outcomes=outcomes, offer_times=times, updated_at=now), queued


def _close(rollout: Rollout, i: int, now: float) -> Rollout:
    waves = list(rollout.waves)
    waves[i] = replace(waves[i], closed_at=now)
    return replace(rollout, waves=tuple(waves), updated_at=now)


def resume(rollout: Rollout, *, max_failure_rate: float | None = None,
           wave_timeout_s: float | None = None, max_concurrent: int | None = None,
           now: float) -> Rollout:
    """Continue a recorded rollout, optionally under a new threshold or wave timeout.

    A halted rollout runs again (it halts again at once if still over the threshold);
    the open wave gets a fresh timeout, since the time the rollout stood still is not
    the devices' fault.
    """
    policy = rollout.policy
    if max_failure_rate is not None:
        policy = replace(policy, max_failure_rate=max_failure_rate)
    if wave_timeout_s is not None:
        policy = replace(policy, wave_timeout_s=wave_timeout_s)
    if max_concurrent is not None:
        policy = replace(policy, max_concurrent=max_concurrent)
    if rollout.status == "completed":
        return replace(rollout, policy=policy)
    waves = list(rollout.waves)
    outcomes = dict(rollout.outcomes)
    times = dict(rollout.offer_times)
    i = rollout.current
    if i < len(waves) and waves[i].offered_at is not None:
        waves[i] = replace(waves[i], offered_at=now)
        for dev in waves[i].devices:  # timed out while we stood still: wait for them again
            if outcomes[dev] == TIMEOUT:
                outcomes[dev] = UPDATING
            if dev in times and outcomes[dev] == UPDATING:
                times[dev] = now
    return replace(rollout, policy=policy, waves=tuple(waves), outcomes=outcomes,
                   offer_times=times, status="running", reason="", updated_at=now)


def open_wave_devices(rollout: Rollout) -> list[str]:
    """Devices of the offered, still open wave that were offered (not those still queued
    under ``max_concurrent``): re-offered after a restart if their offer is missing."""
    i = rollout.current
    if i == len(rollout.waves) or rollout.waves[i].offered_at is None:
        return []
    return [d for d in rollout.waves[i].devices if rollout.outcomes[d] != PENDING]
