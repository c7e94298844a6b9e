"""A CPU budget for a device's training step, kept by the step itself.

The agent's shadow worker is held to ``cpu_budget`` cores of wall time by a token bucket
(its feeder skips samples while over); a training step has no samples to skip, so it
pauses instead: between two pieces of work (one example's features, one minibatch) it
sleeps until the CPU it used fits ``fraction`` of one core since it started, with one
second's worth of burst. ``nice`` still orders it behind the answers; the budget bounds
how much of the device it takes even when the device is otherwise idle (heat, battery).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CpuBudget:
    """``fraction`` seconds of this process's CPU per second of wall time, on average."""

    def __init__(self, fraction: float, *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0.0 < fraction <= 64.0:
            raise ValueError(f"a CPU budget is a fraction of a core in (0, 64], not {fraction}")
        self.fraction = fraction
        self._clock, self._cpu, self._sleep = clock, cpu, sleep
        self._tokens = fraction  # one second of burst
        self._last, self._last_cpu = clock(), cpu()
        self.slept = 0.0  # seconds paused so far (reported with the round's metrics)

    def pace(self) -> None:
        """Account the CPU used since the last call; sleep while over the budget."""
        now, used = self._clock(), self._cpu()
        self._tokens = min(self.fraction, self._tokens + (now - self._last) * self.fraction)
        self._tokens -= used - self._last_cpu
        self._last, self._last_cpu = now, used
        if self._tokens < 0:
            pause = -self._tokens / self.fraction
            self._sleep(pause)
            self.slept += pause


def unlimited() -> None:
    """The pace of a step without a budget."""
