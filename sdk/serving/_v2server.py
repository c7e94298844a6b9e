"""A small Open Inference Protocol v2 HTTP server on the standard library.

Both the agent's local API and ``edgeship cloud serve`` are built on it: a
``http.server.ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive,
``TCP_NODELAY``) with a fixed v2 route table and a few extra routes, so start-up costs
milliseconds and no web framework is imported.

Why this and not uvicorn (issue 16, ``hw-bench/bench_http_stack.py``, results/
http_stack.json: the agent's own service on mobilenet, 1 runtime thread, median of
interleaved rounds on a 2-core machine shared with other jobs): against uvicorn + httptools
with a raw ASGI app over the same dispatcher (inference on the loop / in the pool) it
answered binary tensors at 1217 vs 934 / 829 req/s at concurrency 1, 1127 vs 692 / 996 at
8, 1007 vs 880 / 949 at 64 (0 connection errors each); JSON tensors 136 vs 206 / 298 at 1
(an earlier run: 350 vs 228 / 209; decoding dominates and the order flips between runs
here), 307 vs 147 / 254 at 8, 244 vs 116 / 281 at 64. It imports in 40-90 ms / 144
modules vs 140-300 ms / 260, same RSS (82 MB). uvicorn's asyncio shrugs off slowloris by
itself but has no header deadline, per-peer bound or bytes-in-flight budget; here those are
_v2conns: a normal client under 200 slowloris connections got p99 59-84 ms.

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
is closed to make room, 503 only when all are working (one thread each; see _v2conns);
a request whose decoding cost does not fit ``max_inflight_bytes`` in 10 s -> 503.
With ``api_key`` set every route except ``/v2/health/*`` needs
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (else 401).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socketserver
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from edgeship.sdk.serving._memory import keep_large_blocks_mapped, trim
from edgeship.sdk.serving._v2 import (
    DEFAULT_MAX_REQUEST_BYTES,
    HEADER_LENGTH,
    InferRequest,
    ModelMetadata,
    decode_request,
    encode_response,
    parse_header_length,
    validate_inputs,
)
from edgeship.sdk.serving._v2conns import ByteBudget, Connections, Limits, request_cost

from edgeship._errors import (
    EdgeshipError,
    InferenceError,
    InputError,
    ModelLoadError,
    TransportError,
)

__all__ = [
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

_LOGGER = "edgeship.v2"


@functools.cache
def _log() -> logging.Logger:
    """The server's logger. logging is imported on first use, not with this module (it is
    ~1 % of an agent's start to its first answer, which logs nothing here)."""
    import logging

    return logging.getLogger(_LOGGER)


def _debug() -> bool:
    """Whether debug lines are wanted (on every answer: no import, no lock when logging was
    never imported, for then no one can have configured it)."""
    logging = sys.modules.get("logging")
    return logging is not None and _log().isEnabledFor(logging.DEBUG)

if TYPE_CHECKING:  # ssl itself only with TLS: its import is ~5 % of the agent's start
    import logging
    import ssl

_TRIM_AFTER = 1 << 20  # a request or answer this large: the heaps are trimmed after it
_ONE_WRITE = 64 * 1024  # a body up to this size leaves with its headers in one write

# the id of the infer request being answered on this thread (see V2Service.assign_ids)
_REQUEST_ID: ContextVar[str | None] = ContextVar("edgeship_v2_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the infer request this thread is answering (None outside one): what a
    service's taps use to find an answer again by the id its client got."""
    return _REQUEST_ID.get()


_SOCKET_TIMEOUT_S = 30.0  # backstop for one read or write; the phase deadlines are in _v2conns
_BUSY_BODY = b'{"error":"too many open connections"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class StatusError(EdgeshipError):
    """Raised by a service to answer with a given HTTP status (404, 503 ...)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, kw_only=True)
class Request:
    """What an extra route handler gets."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, kw_only=True)
class Response:
    """What a route handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status=status, body=json.dumps(doc, separators=(",", ":")).encode())


@dataclass(frozen=True, kw_only=True)
class Route:
    """An extra route, matched on the exact method and path."""

    method: str
    path: str
    handler: Callable[[Request], Response]


class V2Service:
    """Base of a v2 server; see the module docstring for what to override."""

    server_name = "edgeship"
    server_version = "0.1.0"
    # give an answer whose request carried no "id" one (a client can then refer to it,
    # e.g. to post a label for it); off: the answer has an id only when the request had one
    assign_ids = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def metadata(self, name: str) -> ModelMetadata | None:
        raise NotImplementedError

    def model_ready(self, name: str) -> bool:
        return self.ready()

    def infer(
        self, name: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def routes(self) -> list[Route]:
        return []


# ---------------------------------------------------------------------------- dispatch


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, StatusError):
        return exc.status
    if isinstance(exc, InputError | InferenceError):
        return 400
    if isinstance(exc, TransportError | ModelLoadError):
        return 503
    return 500


def _model_path(parts: list[str]) -> tuple[str, str | None, str] | None:
    """Split ``models/<name>[/versions/<v>][/ready|/infer]`` into (name, version, action)."""
    if len(parts) < 2 or parts[0] != "models":
        return None
    name, rest = parts[1], parts[2:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer")):
        return None
    return name, version, rest[0] if rest else "metadata"


class _Dispatcher:
    """Pure routing: (method, path, headers, body) -> Response, no sockets."""

    def __init__(self, service: V2Service, *, max_request_bytes: int, api_key: str | None):
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.api_key = api_key
        self.extra = {(r.method, r.path): r.handler for r in service.routes()}

    def authorized(self, path: str, headers: dict[str, str]) -> bool:
        if not self.api_key or path.startswith("/v2/health/"):
            return True
        auth = headers.get("authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        import hmac

        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        if not self.authorized(url.path, headers):
            return Response(
                status=401,
                body=b'{"error":"missing or wrong API key"}',
                headers={"WWW-Authenticate": "Bearer"},
            )
        extra = self.extra.get((method, url.path))
        try:
            if extra is not None:
                return extra(
                    Request(
                        method=method, path=url.path, query=url.query, headers=headers, body=body
                    )
                )
            return self._v2(method, url.path, headers, body)
        except Exception as exc:
            status = _status_of(exc)
            if status == 500:
                _log().error("internal error on %s %s: %r", method, url.path, exc)
            return Response.json({"error": str(exc) or type(exc).__name__}, status)

    def _v2(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if not parts or parts[0] != "v2":
            raise StatusError(404, f"no route {path}")
        parts = parts[1:]
        if method == "GET" and not parts:
            return Response.json(
                {
                    "name": self.service.server_name,
                    "version": self.service.server_version,
                    "extensions": ["binary_tensor_data"],
                }
            )
        if method == "GET" and parts[:1] == ["health"] and len(parts) == 2:
            check = {"live": self.service.live, "ready": self.service.ready}.get(parts[1])
            if check is None:
                raise StatusError(404, f"no route {path}")
            return Response(status=200 if check() else 503)
        target = _model_path(parts)
        if target is None:
            raise StatusError(404, f"no route {path}")
        name, version, action = target
        if method not in ("GET", "POST") or (method == "POST") != (action == "infer"):
            raise StatusError(405, f"{method} is not allowed on {path}")
        meta = self._metadata(name, version)
        if action == "metadata":
            return Response.json(meta.to_dict())
        if action == "ready":
            return Response(status=200 if self.service.model_ready(name) else 503)
        return self._infer(meta, headers, body)

    def _metadata(self, name: str, version: str | None) -> ModelMetadata:
        meta = self.service.metadata(name)
        if meta is None:
            raise StatusError(404, f"unknown model {name!r}")
        if version is not None and version not in meta.versions:
            raise StatusError(404, f"model {name!r} has no version {version!r}")
        return meta

    def _infer(self, meta: ModelMetadata, headers: dict[str, str], body: bytes) -> Response:
        if headers.get("content-encoding", "identity") != "identity":
            raise StatusError(415, "compressed request bodies are not supported")
        request = decode_request(
            body,
            parse_header_length(headers.get(HEADER_LENGTH.lower())),
            max_bytes=self.max_request_bytes,
        )
        inputs = validate_inputs(request.inputs, meta.inputs) if meta.inputs else request.inputs
        if request.id is None and self.service.assign_ids:  # (dataclasses.replace: 3x slower)
            request = InferRequest(inputs=request.inputs, outputs=request.outputs,
                                   binary_output=request.binary_output,
                                   id=os.urandom(16).hex(), parameters=request.parameters)
        token = _REQUEST_ID.set(request.id)
        try:
            outputs, params = self.service.infer(meta.name, inputs)
        finally:
            _REQUEST_ID.reset(token)
        version = str(params.get("version") or (meta.versions[-1] if meta.versions else ""))
        payload, extra_headers = encode_response(
            outputs, request, model_name=meta.name, model_version=version, parameters=params
        )
        return Response(
            body=payload,
            content_type=extra_headers.pop("Content-Type"),
            headers=extra_headers,
        )


# ---------------------------------------------------------------------------- sockets


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall
    timeout = _SOCKET_TIMEOUT_S
    server: _Server

    def handle_one_request(self) -> None:
        self.server.conns.phase(self.server.conn_id(), "waiting")  # idle or headers: deadline
        super().handle_one_request()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:  # extra routes only (the v2 routes refuse it: 405)
        self._handle()

    def _handle(self) -> None:
        dispatcher = self.server.dispatcher
        headers = {k.lower(): v for k, v in self.headers.items()}
        held = self._reserve(headers)
        if held is None:
            self.close_connection = True  # its body stays unread
            self._send(Response.json({"error": "busy: too many request bytes in flight, "
                                      "retry later"}, 503))
            return
        try:
            self.server.conns.phase(self.server.conn_id(), "reading")
            body, error = self._read_body(headers, dispatcher.max_request_bytes)
            self.server.conns.phase(self.server.conn_id(), "working")
            response = error or dispatcher.dispatch(self.command, self.path, headers, body)
            large = max(len(body), len(response.body)) >= _TRIM_AFTER
            del body
            self._send(response)
            del response
        finally:
            self.server.budget.release(held)
        if large:  # what the heaps kept of a large request or answer goes back (issue 16)
            trim()

    def _reserve(self, headers: dict[str, str]) -> int | None:
        """Hold the memory this request may cost before its body is read (0 for none)."""
        try:
            length = max(int(headers.get("content-length", "0")), 0)
            header_length = int(headers[HEADER_LENGTH.lower()]) \
                if HEADER_LENGTH.lower() in headers else None
        except ValueError:
            return 0  # refused by _read_body / decode_request, unread
        if length == 0 or length > self.server.dispatcher.max_request_bytes:
            return 0
        held: int | None = self.server.budget.acquire(request_cost(length, header_length),
                                                      self.server.budget_wait_s)
        return held

    def _read_body(self, headers: dict[str, str], limit: int) -> tuple[bytes, Response | None]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            return b"", Response.json({"error": "chunked bodies are not supported"}, 411)
        length_text = headers.get("content-length")
        if length_text is None:
            if self.command == "POST":
                return b"", Response.json({"error": "Content-Length is required"}, 411)
            return b"", None
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return b"", Response.json({"error": "bad Content-Length"}, 400)
        if length > limit:
            self.close_connection = True  # the unread body would poison the connection
            return b"", Response.json(
                {"error": f"body of {length} bytes exceeds the limit of {limit} bytes"}, 413
            )
        return self.rfile.read(length), None

    def _send(self, response: Response) -> None:
        """Status line, headers and a small body in one write (one segment, one wake-up
        of the client; send_response + end_headers + write took two and formatted a log
        line per request even with logging off)."""
        if _debug():
            self.log_request(response.status, len(response.body))
        lines = [f"{self.protocol_version} {response.status} {_reason(response.status)}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}"]
        for key, value in response.headers.items():
            lines.append(f"{key}: {value}")
            if key.lower() == "connection" and value.lower() == "close":
                self.close_connection = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if len(response.body) <= _ONE_WRITE:
            self.wfile.write(head + response.body)
        else:  # a large body is not copied to join it
            self.wfile.write(head)
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        if _debug():
            _log().debug("%s %s", self.address_string(), format % args)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # listen backlog: a burst of connects is queued, not reset. Deeper than max_connections:
    # 200 slowloris peers that reconnect when evicted do so in bursts of ~140 connects; at
    # 128 the kernel dropped SYNs in them (ListenOverflows), and a normal client caught in
    # one waited for its 1 s SYN retry. Pending handshakes cost only kernel memory.
    request_queue_size = 1024
    dispatcher: _Dispatcher
    conns: Connections  # open connections, their phases and deadlines (one thread each)
    _local: threading.local
    budget: ByteBudget  # memory of the requests in flight
    budget_wait_s: float = 10.0  # how long a request waits for room before a 503

    def server_bind(self) -> None:
        """Bind as http.server does, without its reverse DNS lookup of the listen address
        (``socket.getfqdn``: a resolver call at every start, which waits for DNS timeouts
        on a device whose network is down; its answer only names the server in CGI)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        conn_id = self.conns.admit(request, str(client_address[0]))
        if conn_id is None:  # every connection is busy working: refuse, never queue forever
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve_connection, args=(request, client_address, conn_id),
                         name="v2-conn", daemon=True).start()

    def _serve_connection(self, request: Any, client_address: Any, conn_id: int) -> None:
        self._local.conn_id = conn_id
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.conns.leave(conn_id)
            self.shutdown_request(request)

    def conn_id(self) -> int:
        """The connection the calling thread serves."""
        return int(self._local.conn_id)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that vanished mid-answer is routine; never print a traceback
        _log().debug("connection from %s ended with an error", client_address, exc_info=True)


class V2Server:
    """A running (or ready to run) v2 HTTP server around a :class:`V2Service`."""

    def __init__(self, httpd: _Server) -> None:
        self._httpd = httpd
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def working(self) -> int:
        """Requests being decoded, answered or sent right now."""
        return self._httpd.conns.working()

    @property
    def url(self) -> str:
        ssl = sys.modules.get("ssl")  # a TLS socket means ssl was imported
        tls = ssl is not None and isinstance(self._httpd.socket, ssl.SSLSocket)
        scheme = "https" if tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called from another one."""
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> V2Server:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="v2-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, wait for the serving loop, release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.conns.close()
        self._httpd.server_close()

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
) -> V2Server:
    """Bind a v2 server (port 0 = any free port); call ``start()`` or ``serve_forever()``.

    ``max_inflight_bytes`` bounds the memory all requests in flight may cost together
    (:func:`request_cost`; default: what two requests of the largest size cost); a request
    that does not fit waits up to 10 s, then gets 503. ``limits`` (:class:`Limits`: per
    peer, header and body deadlines) defend the connections; ``max_connections`` is its
    total.

    With ``ssl_context`` (server side; ``verify_mode=CERT_REQUIRED`` for mutual TLS) the
    server speaks https; the handshake runs in the connection's thread, not the accept loop.
    Raises :class:`TransportError` if the address cannot be bound. Large bodies' memory
    goes back to the system when freed (:func:`~._memory.keep_large_blocks_mapped`).
    """
    keep_large_blocks_mapped()
    try:
        httpd = _Server((host, port), _Handler)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    httpd.dispatcher = _Dispatcher(service, max_request_bytes=max_request_bytes, api_key=api_key)
    httpd.conns = Connections(replace(limits or Limits(), max_connections=max_connections))
    httpd._local = threading.local()
    httpd.budget = ByteBudget(max_inflight_bytes or 2 * request_cost(max_request_bytes, None))
    return V2Server(httpd)
