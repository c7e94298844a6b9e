"""The v2 server's sockets: one selector loop owns every connection, a few workers answer.

Issue 16. The old server ran a thread per connection (``http.server``): 200 slowloris
connections were 200 threads, each woken per header byte, and a normal client's p99 under
them was 117-128 ms on an idle 2-core machine. Here a connection that is waiting for a
request (idle keep-alive, a slow head, a slow body, a TLS handshake) is only an entry in
one ``selectors`` loop; no thread is spent on it. When a request is complete (head parsed
by :mod:`._v2http`, body in memory) the connection goes to a worker, which dispatches,
sends the answer and gives the connection back to the loop. Every defence of
:mod:`._v2conns` stays: the phases and their deadlines (its reaper shuts a late socket
down; the loop then sees end-of-file), the per-peer and total bounds with eviction of the
longest-waiting connection, 503 when every connection is working, the bytes-in-flight
budget (a request that does not fit is parked, unwatched, and refused after
``budget_wait_s``), 413 / 411 / 400 before a body is read.

A worker that sent an answer and has nothing else queued keeps watching that connection
for ``LINGER_S`` itself and serves its next request directly: a keep-alive client asking
again at once (the common case at concurrency 1) then costs no hand-over to the loop and
back (two thread switches and two ``epoll_ctl``: measured ~0.1 ms per request).

For its first ``spin_s`` of that wait (``SPIN_S`` in the agent and ``cloud serve``), a
worker that is the only one answering polls the socket without sleeping (busy polling, as
onnxruntime's own threads spin after their work). Sleeping costs more than the wait
itself (session 8, this 2-core KVM guest, whose idle CPU halts at once): onnxruntime
called right after a 50 us sleep took ~50 us longer than back to back (0.29 vs 0.24 ms,
0.32 ms after 300 us; spinning 300 us instead: 0.245), the caches and the halted CPU's
wake-up are what the in-process floor never pays. The spin is bounded (at most
``spin_s`` of one core per answer, then the worker sleeps in poll as before) and skipped
while other requests are in flight, so it only spends a core that would otherwise idle.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeship.sdk.serving._v2conns import ByteBudget, Connections, request_cost
from edgeship.sdk.serving._v2http import (
    MAX_HEAD_BYTES,
    Head,
    StatusError,
    head_end,
    parse_head,
    response_head,
)
from edgeship.sdk.serving._v2routes import Response, _log
from edgeship.sdk.serving._v2sock import (
    HEAD_READ,
    Closed,
    body_buffer,
    recv,
    recv_into,
    send,
    shut,
)

if TYPE_CHECKING:
    import ssl

__all__ = ["Loop"]

LINGER_S = 0.002  # how long a worker waits for the next request on the connection it answered
SPIN_S = 0.0005  # of which it busy-polls this long when no other request is in flight
# (the agent and `cloud serve`, processes of their own, ask for it; the default is 0: a
# client thread in the same process would wait for the interpreter lock while it spins)
_TRIM_AFTER = 1 << 20  # a request or answer this large: the heaps are trimmed after it
_BUSY_BODY = b'{"error":"too many open connections"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_LISTEN, _WAKE = object(), object()

# what advancing a connection's request came to
_MORE, _READY, _PARK, _GONE = range(4)


class _Conn:
    """One connection and the request it is reading."""

    __slots__ = (
        "body",
        "buf",
        "got",
        "handshaking",
        "head",
        "held",
        "id",
        "parked_at",
        "scanned",
        "sock",
        "tls",
        "watched",
    )

    def __init__(self, sock: Any, conn_id: int, tls: bool) -> None:
        self.sock, self.id, self.tls = sock, conn_id, tls
        self.buf = bytearray()  # bytes of the next request head (and what follows it)
        self.scanned = 0  # bytes of buf already searched for the end of a head
        self.head: Head | None = None
        self.body: bytearray | memoryview | None = None
        self.got = 0  # bytes of the body read
        self.held = 0  # bytes of the budget this request holds
        self.parked_at = 0.0  # when it began to wait for the budget
        self.handshaking = tls
        self.watched = 0  # selector events it is registered for (0: not registered)


class Loop:
    """The selector loop and worker pool of one server (see the module docstring)."""

    def __init__(self, listener: socket.socket, *,
                 handle: Callable[[Head, bytearray | memoryview], Response],
                 conns: Connections, budget: ByteBudget, budget_wait_s: float,
                 max_request_bytes: int, server: str, workers: int,
                 ssl_context: ssl.SSLContext | None = None, spin_s: float = 0.0) -> None:
        self.listener, self.handle, self.conns, self.budget = listener, handle, conns, budget
        self.budget_wait_s, self.max_request_bytes = budget_wait_s, max_request_bytes
        self.server, self.ssl_context, self.spin_s = server, ssl_context, spin_s
        listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, _LISTEN)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._returned: collections.deque[_Conn] = collections.deque()  # from the workers
        self._parked: collections.deque[_Conn] = collections.deque()  # waiting for budget
        self._open: dict[int, _Conn] = {}  # every connection the loop knows
        self._jobs: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._busy = 0  # workers serving a connection (only one: its linger may spin)
        self._last_head: tuple[bytes, Head] | None = None  # the last head parsed, as read
        self._busy_lock = threading.Lock()
        self._stop = self._running = False
        self._done = threading.Event()
        self._workers = [threading.Thread(target=self._work, name="v2-worker", daemon=True)
                         for _ in range(max(workers, 1))]
        for worker in self._workers:
            worker.start()

    # ------------------------------------------------------------------ the loop thread
    def run(self) -> None:
        """Serve until :meth:`stop`."""
        self._done.clear()
        self._running = True
        try:
            while not self._stop:
                for key, _ in self.sel.select(0.01 if self._parked else 0.25):
                    if key.data is _LISTEN:
                        self._accept()
                    elif key.data is _WAKE:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._guarded(self._readable, key.data)
                while self._returned:
                    self._guarded(self._resume, self._returned.popleft())
                if self._parked:
                    self._retry_parked()
        finally:
            self._close_all()
            self._done.set()

    def _guarded(self, work: Callable[[_Conn], None], conn: _Conn) -> None:
        """One connection's turn; an error ends that connection, never the loop."""
        try:
            work(conn)
        except Exception:
            _log().debug("connection ended with an error", exc_info=True)
            self._finish(conn)

    def stop(self, timeout: float = 5.0) -> None:
        """End :meth:`run` (from another thread) and the workers; close every connection."""
        self._stop = True
        if self._running:
            self._wake()
            self._done.wait(timeout)
        else:
            self._close_all()
        for _ in self._workers:
            self._jobs.put(None)

    def _accept(self) -> None:
        for _ in range(128):  # a burst of connects, without starving the rest
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: what is queued waits for the next round
                _log().debug("accept failed", exc_info=True)
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
            conn_id = self.conns.admit(sock, str(address[0]))
            if conn_id is None:  # every connection is busy working: refuse, never queue
                with contextlib.suppress(OSError):
                    if self.ssl_context is None:
                        sock.send(BUSY)
                shut(sock)
                continue
            conn = _Conn(sock, conn_id, self.ssl_context is not None)
            self._open[conn_id] = conn
            self._watch(conn, selectors.EVENT_READ)

    def _readable(self, conn: _Conn) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        self._step(conn, self._advance(conn))

    def _step(self, conn: _Conn, outcome: int) -> None:
        """Act on what advancing ``conn`` came to (loop thread)."""
        if outcome == _READY:
            self._unwatch(conn)
            self.conns.phase(conn.id, "working")
            self._jobs.put(conn)
        elif outcome == _PARK:
            self._unwatch(conn)
            conn.parked_at = time.monotonic()
            self._parked.append(conn)
        elif outcome == _GONE:
            self._finish(conn)  # closed by the peer, or refused
        else:
            self._watch(conn, selectors.EVENT_READ)

    def _handshake(self, conn: _Conn) -> None:
        import ssl

        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError):  # includes SSLError: a bad or missing client cert
            self._finish(conn)
            return
        conn.handshaking = False
        self._step(conn, self._advance(conn))  # the request may be in with the handshake

    def _resume(self, conn: _Conn) -> None:
        """A connection back from a worker: its next request may be in already."""
        if conn.id not in self._open:
            return
        if conn.head is not None and conn.body is None:  # a lingering worker parked it
            self._step(conn, _PARK)
        elif conn.head is None and not conn.buf and not (conn.tls and conn.sock.pending()):
            self._watch(conn, selectors.EVENT_READ)
        else:  # the next request's head, or part of its body, is in already
            self._step(conn, self._advance(conn))

    def _retry_parked(self) -> None:
        now = time.monotonic()
        for _ in range(len(self._parked)):
            conn = self._parked.popleft()
            if conn.id not in self._open:
                continue
            outcome = self._reserve(conn)
            if outcome == _PARK and now - conn.parked_at < self.budget_wait_s:
                self._parked.append(conn)
            elif outcome == _PARK:
                self._refuse(conn, 503, "busy: too many request bytes in flight, retry later")
                self._finish(conn)
            else:
                self._step(conn, self._advance(conn) if outcome == _MORE else outcome)

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.watched == events:
            return
        if conn.watched:
            self.sel.modify(conn.sock, events, conn)
        else:
            self.sel.register(conn.sock, events, conn)
        conn.watched = events

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watched:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(conn.sock)
            conn.watched = 0

    def _close_all(self) -> None:
        for conn in list(self._open.values()):
            if conn.watched or conn in self._parked:
                self._finish(conn)
        self._parked.clear()
        with contextlib.suppress(OSError):
            self.sel.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # ------------------------------------------------------ reading a request (any thread)
    def _advance(self, conn: _Conn) -> int:
        """Read what the socket has for ``conn``'s request, without blocking."""
        try:
            if conn.head is None:
                outcome = self._read_head(conn)
                return self._after_head(conn) if outcome == _READY else outcome
            return self._read_body(conn)
        except Closed:
            return _GONE

    def _read_head(self, conn: _Conn) -> int:
        """_READY once ``conn.head`` is parsed, _MORE, or _GONE (refused)."""
        while True:
            buf = conn.buf
            if buf and buf[0] in b"\r\n":  # blank lines between requests are skipped
                del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
                conn.scanned = 0
            end = head_end(buf, max(conn.scanned - 3, 0)) if buf else -1
            if end > MAX_HEAD_BYTES or (end < 0 and len(buf) > MAX_HEAD_BYTES):
                return self._refuse(conn, 431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            if end >= 0:
                break
            conn.scanned = len(buf)
            data = recv(conn.sock, HEAD_READ)
            if data is None:
                return _MORE
            buf += data
        raw = bytes(buf[:end])
        last = self._last_head
        if last is not None and last[0] == raw:  # a client asking again sends the same head
            head = last[1]  # (a Head is immutable; parsing it again cost ~15 us as served)
        else:
            try:
                head = parse_head(raw)
            except StatusError as exc:
                return self._refuse(conn, exc.status, str(exc))
            self._last_head = (raw, head)
        del buf[:end]
        conn.scanned = 0
        conn.head = head
        return _READY

    def _after_head(self, conn: _Conn) -> int:
        head = conn.head
        assert head is not None
        if head.method == "POST" and "content-length" not in head.headers:
            return self._refuse(conn, 411, "Content-Length is required")
        if head.length > self.max_request_bytes:
            return self._refuse(conn, 413, f"body of {head.length} bytes exceeds the limit of "
                                f"{self.max_request_bytes} bytes")
        if head.length == 0:
            conn.body = bytearray()
            return _READY
        outcome = self._reserve(conn)
        return self._read_body(conn) if outcome == _MORE else outcome

    def _reserve(self, conn: _Conn) -> int:
        """Hold the memory the request's body may cost before reading it (or park it)."""
        head = conn.head
        assert head is not None
        try:
            split = head.headers.get("inference-header-content-length")
            header_length = int(split) if split is not None else None
        except ValueError:
            header_length = None  # refused by decode_request, after the body
        held = self.budget.acquire(request_cost(head.length, header_length), 0)
        if held is None:
            return _PARK
        conn.held = held
        self.conns.phase(conn.id, "reading")
        if head.expect_continue:
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = conn.body = body_buffer(head.length, header_length)
        take = min(len(conn.buf), head.length)
        with memoryview(conn.buf) as read:  # (a slice of the bytearray would be a copy)
            body[:take] = read[:take]
        del conn.buf[:take]
        conn.got = take
        return _MORE

    def _read_body(self, conn: _Conn) -> int:
        body = conn.body
        assert body is not None
        view = memoryview(body)
        try:
            while conn.got < len(body):
                n = recv_into(conn.sock, view[conn.got:])
                if n is None:
                    return _MORE
                conn.got += n
        finally:
            view.release()
        return _READY

    def _refuse(self, conn: _Conn, status: int, message: str) -> int:
        """Answer ``status`` before the body is read; _GONE: the caller closes (an unread
        body would poison the connection)."""
        body = Response.json({"error": message}, status).body
        head = response_head(status, content_type="application/json", length=len(body),
                             server=self.server, close=True)
        with contextlib.suppress(OSError, ValueError):
            conn.sock.send(head + body)
        return _GONE

    def _finish(self, conn: _Conn) -> None:
        """Close ``conn`` for good (any thread; a worker's connection is never watched, so
        only the loop unwatches here)."""
        if conn.watched:
            self._unwatch(conn)
        self._open.pop(conn.id, None)
        self.conns.leave(conn.id)
        self._release(conn)
        shut(conn.sock)

    def _release(self, conn: _Conn) -> None:
        """Give back the budget ``conn``'s request holds."""
        if conn.held:
            self.budget.release(conn.held)
            conn.held = 0

    # -------------------------------------------------------------------- the workers
    def _work(self) -> None:
        while True:
            conn = self._jobs.get()
            if conn is None:
                return
            with self._busy_lock:
                self._busy += 1
            try:
                self._serve(conn)
            except Exception:  # a client that vanished mid-answer is routine
                _log().debug("connection ended with an error", exc_info=True)
                self._finish(conn)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _serve(self, conn: _Conn) -> None:
        """Answer ``conn``'s request; then its next ones while they come at once."""
        while True:
            keep = self._answer(conn)
            if not keep or self._stop:
                self._finish(conn)
                return
            self.conns.phase(conn.id, "waiting")
            outcome = self._linger(conn) if self._jobs.empty() else _MORE
            if self._stop:
                self._finish(conn)
                return
            if outcome == _READY:
                self.conns.phase(conn.id, "working")
                continue
            if outcome == _GONE:
                self._finish(conn)
            else:
                self._returned.append(conn)  # the loop watches it (or parks it) again
                self._wake()
            return

    def _linger(self, conn: _Conn) -> int:
        """Wait up to LINGER_S for the next request on ``conn`` and read it (worker); the
        first ``spin_s`` without sleeping when no other request is in flight."""
        now = time.monotonic()
        deadline = now + LINGER_S
        spin_until = now + self.spin_s if self._busy == 1 and not self._parked else now
        first = True
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        while True:
            if not (first and (conn.buf or (conn.tls and conn.sock.pending()))) \
                    and not _ready(poller, spin_until, deadline):
                return _MORE
            first = False
            outcome = self._advance(conn)
            if outcome != _MORE:
                return outcome

    def _answer(self, conn: _Conn) -> bool:
        """Dispatch, send, release; whether the connection stays open."""
        head, body = conn.head, conn.body
        assert head is not None and body is not None
        conn.head = conn.body = None
        try:
            response = self.handle(head, body)
            large = max(len(body), len(response.body)) >= _TRIM_AFTER
            del body
            close = not head.keep_alive
            for key, value in response.headers.items():
                if key.lower() == "connection" and value.lower() == "close":
                    close = True
            out = response_head(response.status, content_type=response.content_type,
                                length=len(response.body), server=self.server,
                                headers=response.headers,
                                close=close and "Connection" not in response.headers)
            send(conn.sock, out, response.body)
            del response
        finally:
            self._release(conn)
        if large:  # what the heaps kept of a large request or answer goes back (issue 16)
            from edgeship.sdk.serving._memory import trim

            trim()
        return not close


def _ready(poller: select.poll, spin_until: float, deadline: float) -> bool:
    """Whether the polled socket became readable by ``deadline``: polled without sleeping
    until ``spin_until``, then asleep in poll (see SPIN_S). Each turn of the spin yields the
    CPU to whatever else is ready to run on it (the client on a one- or two-core device,
    another process): the spin only takes time no one else wants."""
    while not poller.poll(0):
        now = time.monotonic()
        if now >= spin_until:
            left = deadline - now
            return left > 0 and bool(poller.poll(left * 1000))
        _yield()
    return True


_yield = getattr(os, "sched_yield", lambda: None)  # (not on Windows or macOS)
