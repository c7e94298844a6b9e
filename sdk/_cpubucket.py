"""A CPU token bucket: ``fraction`` seconds of CPU per second of wall time, with one
second's worth of burst. Pure arithmetic on the times it is given; the agent's shadow
worker skips samples until the returned time, a training step sleeps until it."""

from __future__ import annotations

__all__ = ["CpuBucket"]


class CpuBucket:
    """Token bucket over CPU seconds; ``now`` is any monotonic wall clock."""

    def __init__(self, fraction: float, now: float) -> None:
        self.fraction = fraction
        self.cap = fraction * 1.0  # one second of burst
        self.tokens = self.cap
        self.last = now

    def spend(self, cpu: float, now: float) -> float:
        """Spend ``cpu`` seconds; the time from which new work fits the budget again."""
        self.tokens = min(self.cap, self.tokens + (now - self.last) * self.fraction) - cpu
        self.last = now
        return now if self.tokens >= 0 else now + (-self.tokens) / self.fraction
