"""Log lines that a flood or an outage cannot multiply (pure: times in, decisions out).

A broker that is down, or a peer that floods a topic with garbage, would otherwise write
a line per attempt or per message until the disk is full. :class:`Backoff` lets the first
line out at once, then one after 1 s, 2 s, 4 s ... up to ``max_s``, and counts what it held
back so the next line can say how many there were. :class:`TokenBucket` is for floods of
messages: ``rate`` lines a second on average, bursts of ``burst``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff", "TokenBucket"]


@dataclass
class Backoff:
    """One kind of repeated line; :meth:`due` says whether to write it now."""

    first_s: float = 1.0
    max_s: float = 300.0
    _next: float = 0.0
    _gap: float = 0.0
    suppressed: int = 0  # lines held back since the last one written

    def due(self, now: float) -> bool:
        if now < self._next:
            self.suppressed += 1
            return False
        self._gap = self.first_s if self._gap == 0.0 else min(self.max_s, self._gap * 2)
        self._next = now + self._gap
        return True

    def take_suppressed(self) -> int:
        """How many lines were held back since the last written one (and reset it)."""
        count, self.suppressed = self.suppressed, 0
        return count

    def reset(self) -> None:
        """The condition ended (the broker is back): the next occurrence logs at once."""
        self._next, self._gap, self.suppressed = 0.0, 0.0, 0


@dataclass
class TokenBucket:
    """At most ``burst`` lines at once and ``rate`` a second after that."""

    rate: float = 2.0
    burst: float = 10.0
    _tokens: float = -1.0
    _last: float = 0.0
    suppressed: int = 0

    def due(self, now: float) -> bool:
        if self._tokens < 0:
            self._tokens = self.burst
        else:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        return True

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count
