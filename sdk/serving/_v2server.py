"""A small Open Inference Protocol v2 HTTP server on the standard library.

Both the agent's local API and ``edgeship cloud serve`` are built on it: one selector loop
that owns every connection and a few worker threads that answer (:mod:`._v2loop`; HTTP/1.1
keep-alive, ``TCP_NODELAY``, a small strict head parser in :mod:`._v2http`), a fixed v2
route table and a few extra routes (:mod:`._v2routes`), so start-up costs milliseconds and
no web framework is imported. Until session 7 it was ``http.server`` with a thread per
connection (a slowloris connection was a thread; 200 of them, 128 threads).

Where a binary request's time went (sessions 7-8, mobilenet, c=1, the bench's raw-socket
keep-alive client; medians of CPU time, measured under load, so ratios only): onnxruntime
0.24 ms in-process back to back, 0.31 ms inside the server; reading the 110 KB body ~0.07
ms; the HTTP layer, v2 codec and dispatch ~0.05 ms with hot caches (parse 4 us, body buffer
5, dispatch 34: decode 6, checks 7, encode 3, metrics 2, ...) and ~0.15 ms as served; the
client ~0.06-0.07 ms of its own CPU per request (sending 110 KB over loopback included).
The gap between the hot and the served figures is the idle CPU: this KVM guest halts a CPU
the moment it idles (cpuidle haltpoll with guest_halt_poll_ns=0), and code that runs after
a sleep runs slower (onnxruntime after a 50 us sleep +50 us, after 300 us +80 us; spinning
300 us instead, +4 us). On the idle machine a request took longer than under load (p50
0.68 vs 0.57 ms). Hence the worker's bounded busy poll (:mod:`._v2loop`, ``SPIN_S``).
Session 9 (``perf sched``): at concurrency 1 the kernel runs the client on the server's
core (a socket wakes its reader "sync"), so client and worker take turns on one core and
each starts with caches the other filled: every Python step then costs 3-5x its warm
time. A C server answering the same bytes without inference turns around in ~0.02 ms, a
Python one running the model with no HTTP/v2 work in ~0.33 ms (0.72x the in-process
floor); the agent's head parse, decode and checks of a request like the one before are
reused (:mod:`._v2layout`).

Why this and not uvicorn (issue 16, ``hw-bench/bench_http_stack.py``, results/
http_stack.json, session 6, before the loop: the agent's own service on mobilenet, 1
runtime thread, median of interleaved rounds on a 2-core machine shared with other jobs):
against uvicorn + httptools
with a raw ASGI app over the same dispatcher (inference on the loop / in the pool) it
answered binary tensors at 1217 vs 934 / 829 req/s at concurrency 1, 1127 vs 692 / 996 at
8, 1007 vs 880 / 949 at 64 (0 connection errors each); JSON tensors 136 vs 206 / 298 at 1
(an earlier run: 350 vs 228 / 209; decoding dominates and the order flips between runs
here), 307 vs 147 / 254 at 8, 244 vs 116 / 281 at 64. It imports in 40-90 ms / 144
modules vs 140-300 ms / 260, same RSS (82 MB). uvicorn's asyncio shrugs off slowloris by
itself but has no header deadline, per-peer bound or bytes-in-flight budget; here those are
_v2conns: a normal client under 200 slowloris connections got p99 59-84 ms.
Session 8, the selector loop (busy polling as the agent runs it) against the same two,
``bench_http_stack.py --only stacks --rounds 2 --seconds 1.5``, load ~8: binary 1182 vs
481 / 710 req/s at 1 (p50 0.54 vs 0.80 / 0.96 ms), 1045 vs 829 / 983 at 8, 1407 vs 1015 /
756 at 64; JSON 200 vs 110 / 268 at 1, 359 vs 110 / 428 at 8, 410 vs 160 / 261 at 64; 0
connection errors each; import 71 vs 175 / 181 ms (144 vs 269 modules); p99 under 200
slowloris connections 18.6 vs 22.9 / 31.9 ms. The loop stays: ahead in 4 of 6 cells
plus start and defences (the pool's JSON at 1 and 8 is within this machine's swing).

The contract. A server subclasses :class:`V2Service` and overrides:

- ``live() -> bool`` and ``ready() -> bool``: ``/v2/health/live`` and ``/v2/health/ready``
  answer 200 or 503.
- ``metadata(name) -> ModelMetadata | None``: ``GET /v2/models/<name>``; ``None`` -> 404.
  Its ``inputs`` (when not empty) are used to validate every infer request before
  ``infer`` sees it (names, datatypes, fixed dimensions -> 400); its ``versions`` decide
  which ``/versions/<v>/`` URLs exist.
- ``model_ready(name) -> bool``: ``GET /v2/models/<name>/ready`` (default: ``ready()``).
- ``infer(name, inputs) -> (outputs, parameters)``: numpy in, numpy out; ``parameters``
  lands in the response (edgeship puts ``source`` and ``version`` there; ``version`` also
  becomes ``model_version``). Called from many threads at once.
- ``routes() -> list[Route]``: extra exact-path routes such as ``GET /metrics``.

Errors raised by a service map to HTTP status codes with a JSON body ``{"error": "..."}``:
:class:`StatusError` -> its ``status``; ``InputError`` / ``InferenceError`` -> 400;
``TransportError`` (an upstream such as the cloud is away) and ``ModelLoadError`` (no model
to answer with) -> 503; anything else -> 500
(message logged, never the traceback on the wire). A body larger than
``max_request_bytes`` -> 413 before it is read; a body without ``Content-Length`` -> 411;
more than ``max_connections`` open connections: the one waiting longest for a request
is closed to make room, 503 only when all are working (see _v2conns);
a request whose decoding cost does not fit ``max_inflight_bytes`` in 10 s -> 503.
With ``api_key`` set every route except ``/v2/health/*`` needs
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (else 401).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from edgeship.sdk.serving._memory import keep_large_blocks_mapped
from edgeship.sdk.serving._v2 import DEFAULT_MAX_REQUEST_BYTES
from edgeship.sdk.serving._v2conns import ByteBudget, Connections, Limits, request_cost
from edgeship.sdk.serving._v2http import Head
from edgeship.sdk.serving._v2loop import SPIN_S, Loop
from edgeship.sdk.serving._v2routes import (
    _REQUEST_ID,
    Request,
    Response,
    Route,
    StatusError,
    V2Service,
    _Dispatcher,
    current_request_id,
)

from edgeship._errors import TransportError

if TYPE_CHECKING:  # ssl itself only with TLS: its import is ~5 % of the agent's start
    import ssl

__all__ = [
    "SPIN_S",
    "ByteBudget",
    "Request",
    "Response",
    "Route",
    "StatusError",
    "V2Server",
    "V2Service",
    "current_request_id",
    "request_cost",
    "serve",
]

_ = (_REQUEST_ID, _Dispatcher)  # re-exported for the tests and hw-bench/_stack_server.py

# listen backlog: a burst of connects is queued, not reset. Deeper than max_connections:
# 200 slowloris peers that reconnect when evicted do so in bursts of ~140 connects; at
# 128 the kernel dropped SYNs in them (ListenOverflows), and a normal client caught in
# one waited for its 1 s SYN retry. Pending handshakes cost only kernel memory.
_BACKLOG = 1024


def default_workers() -> int:
    """Workers answering requests: inference with the runtime's own threads, so a few
    more than cores keep every core busy while others send and decode (4 at least, so a
    slow cloud fallback does not hold the only ones)."""
    return min(max(4, 2 * (os.cpu_count() or 1)), 16)


class V2Server:
    """A running (or ready to run) v2 HTTP server around a :class:`V2Service`."""

    def __init__(self, listener: socket.socket, loop: Loop, conns: Connections,
                 tls: bool) -> None:
        self._listener, self._loop, self._conns, self._tls = listener, loop, conns, tls
        self._address = listener.getsockname()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._address[0])

    @property
    def port(self) -> int:
        return int(self._address[1])

    def working(self) -> int:
        """Requests being decoded, answered or sent right now."""
        return self._conns.working()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called from another one."""
        self._loop.run()

    def start(self) -> V2Server:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="v2-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, wait for the serving loop, release the port."""
        if self._closed:
            return
        self._closed = True
        self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._conns.close()
        self._listener.close()

    def __enter__(self) -> V2Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    service: V2Service,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_connections: int = 128,
    api_key: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_inflight_bytes: int | None = None,
    limits: Limits | None = None,
    workers: int | None = None,
    spin_s: float = 0.0,
) -> V2Server:
    """Bind a v2 server (port 0 = any free port); call ``start()`` or ``serve_forever()``.

    ``max_inflight_bytes`` bounds the memory all requests in flight may cost together
    (:func:`request_cost`; default: what two requests of the largest size cost); a request
    that does not fit waits up to 10 s, then gets 503. ``limits`` (:class:`Limits`: per
    peer, header and body deadlines) defend the connections; ``max_connections`` is its
    total. ``workers``: threads answering requests (default :func:`default_workers`).
    ``spin_s``: how long a worker that answered, alone, busy-polls its connection for the
    next request before it sleeps (:data:`~._v2loop.SPIN_S` for a server that is a process
    of its own, as the agent's; 0, the default, when clients may share its interpreter).

    With ``ssl_context`` (server side; ``verify_mode=CERT_REQUIRED`` for mutual TLS) the
    server speaks https; handshakes run in the loop without blocking it.
    Raises :class:`TransportError` if the address cannot be bound. Large bodies' memory
    goes back to the system when freed (:func:`~._memory.keep_large_blocks_mapped`).
    """
    keep_large_blocks_mapped()
    listener = _bind(host, port)
    dispatcher = _Dispatcher(service, max_request_bytes=max_request_bytes, api_key=api_key)
    conns = Connections(replace(limits or Limits(), max_connections=max_connections))
    budget = ByteBudget(max_inflight_bytes or 2 * request_cost(max_request_bytes, None))

    def handle(head: Head, body: bytearray | memoryview) -> Response:
        return dispatcher.dispatch(head.method, head.target, head.headers, body)

    loop = Loop(listener, handle=handle, conns=conns, budget=budget, budget_wait_s=10.0,
                max_request_bytes=max_request_bytes, workers=workers or default_workers(),
                server=f"{service.server_name}/{service.server_version}",
                ssl_context=ssl_context, spin_s=spin_s)
    return V2Server(listener, loop, conns, tls=ssl_context is not None)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (no reverse DNS lookup of the address, unlike http.server: a
    resolver call at every start waits for DNS timeouts on a device whose network is down)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        # IPv4 first, as http.server bound "localhost" (AF_INET)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        listener = socket.socket(infos[0][0], socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        if sys.platform != "win32":
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(infos[0][4])
        listener.listen(_BACKLOG)
    except OSError as exc:
        listener.close()
        raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
    return listener
