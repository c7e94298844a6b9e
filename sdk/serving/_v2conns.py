"""Who may hold a connection of the v2 server, and for how long (starvation defence).

Connections are a scarce resource: 64 idle TCP connections, or 200 "slowloris" peers
sending a header byte a second, used to lock every other client out for up to 60 s (when
the server ran a thread per connection; its selector loop, :mod:`._v2loop`, holds no
thread for a waiting connection, but sockets and memory still count). Here each
connection is in one phase:

- ``waiting``: for (the rest of) a request line and headers; a deadline of
  ``header_timeout_s`` covers idle keep-alive and a slow header alike;
- ``reading``: the body, with a deadline of ``body_timeout_s``;
- ``working``: decoding, inference, the answer: no deadline, never evicted.

A reaper shuts down connections past their deadline (the loop then sees end-of-file). When a new connection would go over
``max_connections``, or over ``max_per_peer`` for its address, the *waiting* connection
that has waited longest (of that peer, for the per-peer bound) is closed to make room: a
normal client whose request arrives at once is served, while connections that send
nothing useful evict each other. Only when every connection is working is the new one
refused (503). :func:`choose_victim` is that decision, pure.

Memory is the other resource: :class:`ByteBudget` bounds what the requests in flight may
cost together (:func:`request_cost`), so 64 connections of 16 MiB JSON cannot hold GBs.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteBudget", "Conn", "Connections", "Limits", "choose_victim", "request_cost"]

REFUSE = -1
_NEVER = float("inf")


@dataclass(frozen=True)
class Limits:
    # the agent's [api] defaults: 64 keep-alive clients of one host (measured at c=64: with
    # 32 per peer they evicted each other, 282 connection errors in 4 s)
    max_connections: int = 128
    max_per_peer: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


@dataclass
class Conn:
    id: int
    peer: str
    sock: Any
    phase: str = "waiting"
    since: float = 0.0  # when the current phase began
    deadline: float = 0.0


def choose_victim(conns: list[Conn], peer: str, limits: Limits) -> int | None:
    """For a new connection from ``peer``: None (room), a connection id to close first,
    or REFUSE when every connection in the way is working."""
    mine = [c for c in conns if c.peer == peer]
    if len(mine) >= limits.max_per_peer:
        return _longest_waiting(mine)
    if len(conns) >= limits.max_connections:
        return _longest_waiting(conns)
    return None


def _longest_waiting(conns: list[Conn]) -> int:
    waiting = [c for c in conns if c.phase == "waiting"]
    return min(waiting, key=lambda c: c.since).id if waiting else REFUSE


class Connections:
    """The open connections of one server (accept thread, connection threads, reaper)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._conns: dict[int, Conn] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = threading.Event()
        self.evicted = 0  # connections closed to make room, or past their deadline
        threading.Thread(target=self._reap, name="v2-reaper", daemon=True).start()

    def admit(self, sock: Any, peer: str) -> int | None:
        """Register a new connection (closing a waiting one if needed); None: refused."""
        with self._lock:
            victim = choose_victim(list(self._conns.values()), peer, self.limits)
            if victim == REFUSE:
                return None
            if victim is not None:
                self._close(self._conns.pop(victim))
            conn = Conn(id=next(self._ids), peer=peer, sock=sock)
            self._enter(conn, "waiting")
            self._conns[conn.id] = conn
            return conn.id

    def phase(self, conn_id: int, phase: str) -> None:
        with self._lock:
            conn = self._conns.get(conn_id)
            # staying in a phase keeps its start: a connection's thread enters "waiting"
            # after admit() did, and restarting the clock there let a later connection look
            # older than one its thread had not reached yet (the wrong one was evicted)
            if conn is not None and conn.phase != phase:
                self._enter(conn, phase)

    def leave(self, conn_id: int) -> None:
        with self._lock:
            self._conns.pop(conn_id, None)

    def working(self) -> int:
        """Connections decoding, inferring or answering right now."""
        with self._lock:
            return sum(c.phase == "working" for c in self._conns.values())

    def close(self) -> None:
        self._closed.set()

    def _enter(self, conn: Conn, phase: str) -> None:
        now = time.monotonic()
        conn.phase, conn.since = phase, now
        conn.deadline = now + self.limits.header_timeout_s if phase == "waiting" else \
            now + self.limits.body_timeout_s if phase == "reading" else _NEVER

    def _close(self, conn: Conn) -> None:
        """Wake the connection's thread: its blocked read returns end-of-file."""
        self.evicted += 1
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # also under TLS

    def _reap(self) -> None:
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._conns.values() if c.deadline < now]
                for conn in late:
                    self._close(self._conns.pop(conn.id))


# what a request body costs in memory while it is decoded and answered, per body byte:
# JSON numbers parsed whole become Python floats in lists, then an array (a 16 MiB JSON
# body held ~200 MB before orjson, +56 MB with it); a large flat "data" array is parsed a
# slice at a time (_v2json: body + array + a slice, ~1.8x), but nested lists or NaN still
# go whole, so JSON is charged as the worse; a binary tail is the body, its array, output
JSON_COST, BINARY_COST = 16, 3


def request_cost(length: int, header_length: int | None) -> int:
    """Bytes of memory a body of ``length`` bytes may hold (``header_length``: the JSON
    part of a binary-tensor request)."""
    json_part = length if header_length is None else min(max(header_length, 0), length)
    return json_part * JSON_COST + (length - json_part) * BINARY_COST


class ByteBudget:
    """Bytes of requests in flight across all connections: a request waits for its cost
    (at most the whole budget, so one request always fits) or is refused."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def acquire(self, cost: int, timeout: float) -> int | None:
        """The cost held (capped at the limit), or None when it did not fit in time."""
        cost = min(cost, self.limit)
        with self._cond:
            if self.used + cost > self.limit and (timeout <= 0 or not self._cond.wait_for(
                    lambda: self.used + cost <= self.limit, timeout)):
                return None
            self.used += cost
        return cost

    def release(self, cost: int) -> None:
        with self._cond:
            self.used -= cost
            self._cond.notify_all()  # (the server's loop polls instead: it never waits here)
