"""What an operator does to a recorded rollout, as pure functions: pause, cancel, resume
and retry the failed devices; and :func:`operate`, the one way pause / resume / cancel
reach the fleet database (``fleet pause|resume|cancel`` and the dashboard's buttons).

:func:`operate` changes the record in the fleet database in one transaction
(:meth:`FleetDB.change`); the worker driving the rollout reads the record in every wave
decision, so it stops offering at once and goes on after a resume. A cancelled rollout
offers nothing more (devices already offered keep their offer and may still install
it); pushing the same release again starts a new rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from edgeship.sdk.fleet._rollout import FAILED, PENDING, TIMEOUT, Rollout, Wave
from edgeship.sdk.fleet._rollout import resume as _resume

from edgeship._errors import ConfigError

if TYPE_CHECKING:
    from edgeship.sdk.fleet._fleetdb import FleetDB

__all__ = ["CONTROLS", "FINAL", "RETRY_OUTCOMES", "cancel", "operate", "pause", "resume",
           "retry_failed", "wave_attempt"]

FINAL = ("completed", "cancelled")
# a device that rolled back ignores the same release for good (its health check failed
# there); failed downloads / refusals and devices that timed out may succeed on a retry
RETRY_OUTCOMES = (FAILED, TIMEOUT)


def pause(rollout: Rollout, now: float, by: str = "the operator") -> Rollout:
    """Stop offering waves; devices already offered go on with their update (pausing
    twice is harmless). ``by``, who asked, goes into the rollout's reason."""
    if rollout.status in FINAL:
        raise ConfigError(f"rollout is {rollout.status}; nothing to pause")
    return replace(rollout, status="paused", reason=f"paused by {by}", updated_at=now)


def resume(rollout: Rollout, now: float, by: str = "the operator") -> Rollout:
    """Go on with a paused or halted rollout (its open wave gets a fresh timeout)."""
    del by  # a running rollout has no reason to show
    if rollout.status in FINAL:
        raise ConfigError(f"rollout is {rollout.status}; nothing to resume")
    return _resume(rollout, now=now)


def cancel(rollout: Rollout, now: float, by: str = "the operator") -> Rollout:
    """Offer nothing more, for good."""
    if rollout.status in FINAL:
        raise ConfigError(f"rollout is already {rollout.status}")
    left = sum(1 for o in rollout.outcomes.values() if o == PENDING)
    return replace(rollout, status="cancelled", updated_at=now,
                   reason=f"cancelled by {by}; {left} devices never offered")


# action -> (the change, the event recorded with it)
CONTROLS: dict[str, tuple[Callable[[Rollout, float, str], Rollout], str]] = {
    "pause": (pause, "paused"), "resume": (resume, "resumed"), "cancel": (cancel, "cancelled")}


def operate(db: FleetDB, key: str, action: str, *, by: str = "the operator",
            now: float | None = None) -> Rollout:
    """Pause, resume or cancel rollout ``key`` in the fleet database (one transaction; the
    worker driving it follows within its next decision). The changed rollout."""
    if action not in CONTROLS:
        raise ConfigError(f"unknown rollout action {action!r}; one of {', '.join(CONTROLS)}")
    change, event = CONTROLS[action]
    when = time.time() if now is None else now
    return db.change(key, lambda r: change(r, when, by), event, by=by)


def retry_failed(rollout: Rollout, now: float) -> Rollout:
    """A new last wave ``retry N`` with the devices that failed or timed out; the rollout
    runs again. Nothing to retry is an error (so a script notices)."""
    if rollout.status == "cancelled":
        raise ConfigError("the rollout was cancelled; push the release again instead")
    devices = tuple(d for d, o in rollout.outcomes.items() if o in RETRY_OUTCOMES)
    if not devices:
        raise ConfigError("no device failed or timed out in this rollout: nothing to retry "
                          "(devices that rolled back need a new release)")
    n = 1 + sum(1 for w in rollout.waves if w.name.startswith("retry "))
    outcomes = {**rollout.outcomes, **dict.fromkeys(devices, PENDING)}
    errors = {d: e for d, e in rollout.errors.items() if d not in devices}
    return replace(rollout, waves=(*rollout.waves, Wave(name=f"retry {n}", devices=devices)),
                   outcomes=outcomes, errors=errors, status="running", reason="",
                   updated_at=now)


def wave_attempt(wave: Wave) -> int:
    """0 for the planned waves; N for ``retry N`` (offers are counted per attempt)."""
    if wave.name.startswith("retry "):
        try:
            return int(wave.name.split()[1])
        except (IndexError, ValueError):
            return 0
    return 0
