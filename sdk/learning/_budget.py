"""A CPU budget for a device's training step, kept by the step itself.

The agent's shadow worker is held to ``cpu_budget`` cores of wall time by a token bucket
(sdk/_cpubucket.py; its feeder skips samples while over); a training step uses the same
bucket but has no samples to skip, so it pauses instead: between two pieces of work (one
example's features, one minibatch) it sleeps until the CPU it used fits ``fraction`` of
one core, with one second's worth of burst. ``nice`` still orders it behind the answers; the budget bounds
how much of the device it takes even when the device is otherwise idle (heat, battery).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgeship.sdk._cpubucket import CpuBucket


class CpuBudget:
    """``fraction`` seconds of this process's CPU per second of wall time, on average."""

    def __init__(self, fraction: float, *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0.0 < fraction <= 64.0:
            raise ValueError(f"a CPU budget is a fraction of a core in (0, 64], not {fraction}")
        self.fraction = fraction
        self._clock, self._cpu, self._sleep = clock, cpu, sleep
        self._bucket = CpuBucket(fraction, clock())
        self._last_cpu = cpu()
        self.slept = 0.0  # seconds paused so far (reported with the round's metrics)

    def pace(self) -> None:
        """Account the CPU used since the last call; sleep while over the budget."""
        now, used = self._clock(), self._cpu()
        resume = self._bucket.spend(used - self._last_cpu, now)
        self._last_cpu = used
        if resume > now:
            self._sleep(resume - now)
            self.slept += resume - now


def unlimited() -> None:
    """The pace of a step without a budget."""
