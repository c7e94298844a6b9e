"""What arrives from the broker's thread, before the agent's loop sees it (split from
``_daemon``): a bounded inbox, and the broker's connection health as log lines.

A flood on the device's topics must cost neither memory nor the loop's time: the inbox
holds at most ``MAX_PENDING_EVENTS`` messages and ``MAX_PENDING_BYTES`` of payload; what
does not fit is dropped and reported (a chunk is asked for again, a retained offer comes
back). A broker that cannot be reached is logged at once, then at 1, 2, 4 ... 300 s.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeship.agent import _ota as ota
from edgeship.agent._ratelimit import Backoff

__all__ = ["MAX_PENDING_BYTES", "MAX_PENDING_EVENTS", "BrokerHealth", "Inbox"]

MAX_PENDING_EVENTS = 1000  # messages waiting for the loop ...
MAX_PENDING_BYTES = 64 * 1024 * 1024  # ... and their bytes (an offer may be 4 MiB)


class Inbox:
    """Events for the loop; ``put_message`` never blocks and never grows without bound."""

    def __init__(self, on_dropped: Callable[[ota.Rejected], None]) -> None:
        self._queue: queue.Queue[ota.Event] = queue.Queue(maxsize=MAX_PENDING_EVENTS)
        self._bytes, self._lock = 0, threading.Lock()
        self._on_dropped = on_dropped
        self.last_taken: ota.Event | None = None  # the event the loop is handling

    def put(self, event: ota.Event) -> None:
        """A control event (connected): waits for room rather than being lost."""
        self._queue.put(event)

    def put_message(self, event: ota.Event, topic: str) -> None:
        size = _size(event)
        with self._lock:
            room = self._bytes + size <= MAX_PENDING_BYTES
            if room:
                self._bytes += size
        if room:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                self._release(size)
        self._on_dropped(ota.Rejected(topic, "inbox full (flood)", size))

    def get(self, timeout: float) -> ota.Event | None:
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            self.last_taken = None
            return None
        self._release(_size(event))
        self.last_taken = event
        return event

    def _release(self, size: int) -> None:
        with self._lock:
            self._bytes -= size


def _size(event: ota.Event) -> int:
    return len(getattr(event, "raw", b""))


class BrokerHealth:
    """Log lines about the broker connection, from paho's thread."""

    def __init__(self, url: str, log: Callable[..., None]) -> None:
        self.url, self._log = url, log
        self._backoff = Backoff(first_s=1.0, max_s=300.0)
        self._down_since: float | None = None

    def connected(self) -> None:
        if self._down_since is not None:
            self._log("broker_connected", url=self.url,
                      down_s=round(time.monotonic() - self._down_since, 1))
        self._backoff.reset()
        self._down_since = None

    def connect_failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if self._backoff.due(now):
            self._log("broker_unreachable", level="warning", url=self.url, reason=reason,
                      down_s=round(now - self._down_since, 1),
                      attempts_since_last_line=self._backoff.take_suppressed() + 1)

    def disconnected(self, reason: Any) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._log("broker_disconnected", level="warning", url=self.url, reason=str(reason))
