"""``CloudClient``: ask an Open Inference Protocol v2 endpoint, never past a deadline.

The client speaks HTTP/1.1 over a plain (or TLS) socket itself, because the standard
clients only bound each socket operation: a peer that drips one byte per second keeps
``http.client`` busy forever. Here every connect, send and receive gets the time that is
left of one total deadline, so :meth:`CloudClient.infer` returns or raises by
``deadline_ms`` (plus the time to decode what arrived).

Every failure -- refused, reset, TLS error, timeout, a non-2xx status, malformed JSON, a
missing output, a wrong number of rows, or a shape other than ``expected_outputs`` -- is a :class:`~edgeship.TransportError`. A 4xx answer
is a :class:`CloudRejectedError` (a subclass): the cloud is up but refused this input, so a
circuit breaker should not count it. Idle keep-alive connections are pooled; a request
that fails on a reused connection before any byte came back is retried once on a fresh
one (if time is left), since the peer may have closed it while idle.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from edgeship.sdk.serving._v2 import (
    DEFAULT_MAX_REQUEST_BYTES,
    HEADER_LENGTH,
    InferResponse,
    ModelMetadata,
    decode_response,
    encode_request,
    parse_header_length,
)

from edgeship._errors import ConfigError, TransportError

__all__ = ["CloudClient", "CloudRejectedError", "check_outputs", "tls_context"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_POOL = 4


class CloudRejectedError(TransportError):
    """The endpoint answered 4xx: it is reachable but refused this request."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def tls_context(
    *, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext:
    """A client TLS context: trust ``ca`` (else the system store), present ``cert``/``key``
    for mutual TLS. Raises :class:`ConfigError` naming the file that cannot be used."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"fallback.ca: cannot load {ca}: {exc}") from exc
    if cert:
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"fallback.cert/key: cannot load {cert}: {exc}") from exc
    return context


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TransportError("cloud deadline exceeded")
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.at


class CloudClient:
    """A v2 client for one model with a hard per-call deadline (see module docstring)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        deadline_ms: float = 300,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        binary: bool = True,
        max_response_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        expected_outputs: Sequence[Any] = (),
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"cloud url must be http(s)://host[:port], not {url!r}")
        self.url = url
        self.model = model
        self.deadline_ms = deadline_ms
        self.binary = binary
        self.max_response_bytes = max_response_bytes
        self.expected_outputs = tuple(expected_outputs)  # specs with .name and .shape (-1 = any)
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._ssl = ssl_context or (ssl.create_default_context() if self._tls else None)
        self._headers = dict(headers or {})
        self._pool: list[socket.socket] = []
        self._lock = threading.Lock()

    # -- public calls

    def infer(
        self, inputs: Mapping[str, np.ndarray], *, deadline_ms: float | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs of the cloud model for ``inputs``; :class:`TransportError` on any failure."""
        return self.request(inputs, deadline_ms=deadline_ms).outputs

    def request(
        self, inputs: Mapping[str, np.ndarray], *, deadline_ms: float | None = None,
        max_response_bytes: int | None = None,
    ) -> InferResponse:
        """Like :meth:`infer` but with the response's model version and parameters.

        ``max_response_bytes`` lowers the client's bound for this answer (what the
        expected outputs can take); the answer is read *and decoded* within the deadline:
        one that is bigger is refused as its header arrives, one decoded too late raises."""
        deadline = _Deadline((self.deadline_ms if deadline_ms is None else deadline_ms) / 1000)
        limit = min(self.max_response_bytes, max_response_bytes or self.max_response_bytes)
        body, headers = encode_request(inputs, binary=self.binary)
        path = f"/v2/models/{quote(self.model, safe='')}/infer"
        status, reply_headers, reply = self._exchange("POST", path, body, headers, deadline,
                                                      limit)
        _check_status(status, reply)
        deadline.left()  # read in time; decoding must be too
        response = decode_response(
            reply,
            parse_header_length(reply_headers.get(HEADER_LENGTH.lower()), TransportError),
            max_bytes=limit,
        )
        del reply
        if deadline.expired():
            raise TransportError("cloud deadline exceeded (decoding the answer)")
        _check_rows(inputs, response.outputs)
        check_outputs(response.outputs, self.expected_outputs)
        return response

    def metadata(self, *, deadline_ms: float | None = None) -> ModelMetadata:
        """The model's v2 metadata document."""
        import json

        deadline = _Deadline((self.deadline_ms if deadline_ms is None else deadline_ms) / 1000)
        path = f"/v2/models/{quote(self.model, safe='')}"
        status, _, reply = self._exchange("GET", path, b"", {}, deadline)
        _check_status(status, reply)
        try:
            return ModelMetadata.from_dict(json.loads(reply))
        except ValueError as exc:
            raise TransportError(f"cloud metadata is not JSON: {exc}") from None

    def ready(self, *, deadline_ms: float | None = None) -> bool:
        """True when ``/v2/models/<model>/ready`` answers 200 in time."""
        deadline = _Deadline((self.deadline_ms if deadline_ms is None else deadline_ms) / 1000)
        try:
            path = f"/v2/models/{quote(self.model, safe='')}/ready"
            return self._exchange("GET", path, b"", {}, deadline)[0] == 200
        except TransportError:
            return False

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            pool, self._pool = self._pool, []
        for sock in pool:
            sock.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP/1.1 on a socket

    def _exchange(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], deadline: _Deadline,
        limit: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        head = self._head(method, self._prefix + path, len(body), headers)
        for attempt in (0, 1):
            sock, reused = self._checkout(deadline)
            got_bytes = [False]
            try:
                sock.settimeout(deadline.left())
                sock.sendall(head + body)
                status, reply_headers, reply, keep = self._read(
                    sock, deadline, got_bytes, limit or self.max_response_bytes)
            except (OSError, TransportError) as exc:
                sock.close()
                if attempt == 0 and reused and not got_bytes[0] and _time_left(deadline):
                    continue  # the idle connection had been closed by the peer
                raise _transport(exc) from exc
            self._checkin(sock, keep)
            return status, reply_headers, reply
        raise AssertionError("unreachable")

    def _head(self, method: str, path: str, length: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{k}: {v}" for k, v in {**self._headers, **headers}.items()]
        lines += [f"Content-Length: {length}", "Connection: keep-alive", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def _checkout(self, deadline: _Deadline) -> tuple[socket.socket, bool]:
        with self._lock:
            if self._pool:
                return self._pool.pop(), True
        try:
            sock = _connect(self._host, self._port, deadline)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock.settimeout(deadline.left())
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except (OSError, TransportError) as exc:
            raise _transport(exc) from exc
        return sock, False

    def _checkin(self, sock: socket.socket, keep: bool) -> None:
        with self._lock:
            if keep and len(self._pool) < _MAX_POOL:
                self._pool.append(sock)
                return
        sock.close()

    def _read(
        self, sock: socket.socket, deadline: _Deadline, got_bytes: list[bool], limit: int
    ) -> tuple[int, dict[str, str], bytes, bool]:
        reader = _Reader(sock, deadline, limit + _MAX_HEADER_BYTES, got_bytes)
        status, headers = _parse_head(reader.until(b"\r\n\r\n", _MAX_HEADER_BYTES))
        keep = headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, headers, reader.chunked(limit), keep
        length_text = headers.get("content-length")
        if length_text is None:
            return status, headers, reader.rest(limit), False
        try:
            length = int(length_text)
        except ValueError:
            raise TransportError(f"bad Content-Length {length_text[:40]!r}") from None
        if not 0 <= length <= limit:
            raise TransportError(f"response of {length} bytes exceeds the limit of {limit}")
        return status, headers, reader.exactly(length), keep


class _Reader:
    """Buffered reads from a socket, each bounded by what is left of the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, limit: int, got: list[bool]):
        self.sock, self.deadline, self.limit, self.got = sock, deadline, limit, got
        # a bytearray grows in place: ``bytes +=`` copied the whole answer on every 256 KiB
        # read (an 18 MB answer: ~650 MB copied)
        self.buf = bytearray()
        self.total = 0

    def _fill(self) -> bool:
        self.sock.settimeout(self.deadline.left())
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise TransportError("cloud deadline exceeded") from None
        if not data:
            return False
        self.got[0] = True
        self.total += len(data)
        if self.total > self.limit:
            raise TransportError("response exceeds the size limit")
        self.buf += data
        return True

    def until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > limit or not self._fill():
                raise TransportError("connection closed or header too long before a response")
        head, _, self.buf = self.buf.partition(marker)
        return bytes(head)

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise TransportError(f"connection closed after {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def rest(self, limit: int) -> bytes:
        while self._fill():
            if len(self.buf) > limit:
                raise TransportError("response exceeds the size limit")
        return bytes(self.buf)

    def chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.until(b"\r\n", 1024).split(b";")[0].strip()
            try:
                n = int(line, 16)
            except ValueError:
                raise TransportError(f"bad chunk size {line[:20]!r}") from None
            if n == 0:
                self.until(b"\r\n", _MAX_HEADER_BYTES)  # (empty) trailer
                return b"".join(parts)
            size += n
            if size > limit:
                raise TransportError("response exceeds the size limit")
            parts.append(self.exactly(n))
            self.exactly(2)


_DNS_TTL_S = 60.0  # resolved addresses are reused this long
_DNS_FAIL_TTL_S = 5.0  # a failed lookup is not retried for this long
_dns_lock = threading.Lock()
_dns_cache: dict[tuple[str, int], tuple[float, list[Any] | OSError]] = {}
_dns_pending: dict[tuple[str, int], threading.Event] = {}


def _lookup(key: tuple[str, int]) -> None:
    try:
        result: list[Any] | OSError = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
        ttl = _DNS_TTL_S
    except OSError as exc:
        result, ttl = exc, _DNS_FAIL_TTL_S
    with _dns_lock:
        _dns_cache[key] = (time.monotonic() + ttl, result)
        _dns_pending.pop(key).set()


def _resolve(host: str, port: int, deadline: _Deadline) -> list[Any]:
    """getaddrinfo bounded by the deadline: it has no timeout of its own, and a dead DNS
    server can block it for many seconds. The lookup runs in a thread and is cached."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not an address literal
    key = (host, port)
    event: threading.Event | None = None
    with _dns_lock:
        cached = _dns_cache.get(key)
        if cached is None or cached[0] < time.monotonic():
            cached, event = None, _dns_pending.get(key)
            if event is None:
                event = _dns_pending[key] = threading.Event()
                threading.Thread(target=_lookup, args=(key,), daemon=True).start()
    if cached is None:
        assert event is not None
        if not event.wait(deadline.left()):
            raise TransportError(f"DNS lookup of {host!r} did not finish before the deadline")
        with _dns_lock:
            cached = _dns_cache[key]
    if isinstance(cached[1], OSError):
        raise TransportError(f"cannot resolve {host!r}: {cached[1]}")
    return cached[1]


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """Try each address in turn, all within one deadline (create_connection gives each
    address the whole timeout)."""
    error: OSError | None = None
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
            return sock
        except (OSError, TransportError) as exc:
            sock.close()
            if isinstance(exc, TransportError):
                raise
            error = exc
    raise error or TransportError(f"no address for {host!r}")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise TransportError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return int(fields[1]), headers


def _check_status(status: int, body: bytes) -> None:
    if 200 <= status < 300:
        return
    text = body[:300].decode(errors="replace")
    if 400 <= status < 500:
        raise CloudRejectedError(status, f"cloud rejected the request ({status}): {text}")
    raise TransportError(f"cloud answered {status}: {text}")


def _check_rows(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Every output must have as many rows as the inputs (v2 models here are batch-major)."""
    rows = {np.shape(a)[0] for a in inputs.values() if np.ndim(a)}
    if len(rows) != 1:
        return
    (n,) = rows
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != n:
            raise TransportError(
                f"cloud output {name!r} has shape {list(array.shape)} for {n} input row(s)"
            )


def check_outputs(outputs: Mapping[str, np.ndarray], specs: Sequence[Any]) -> None:
    """Each spec'd output must be there with the same rank and non-batch dimensions,
    and float outputs must be finite; else :class:`TransportError`."""
    for spec in specs:
        got = outputs.get(spec.name)
        if got is None:
            raise TransportError(f"cloud answer lacks output {spec.name!r}")
        want = tuple(spec.shape)
        fits = got.ndim == len(want) and all(
            w in (-1, g) for w, g in zip(want[1:], got.shape[1:], strict=True)
        )
        if not fits:
            raise TransportError(
                f"cloud output {spec.name!r} has shape {list(got.shape)}, expected {list(want)}"
            )
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise TransportError(f"cloud output {name!r} holds NaN or Inf")


def _time_left(deadline: _Deadline) -> bool:
    try:
        deadline.left()
    except TransportError:
        return False
    return True


def _transport(exc: BaseException) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError | socket.timeout):
        return TransportError("cloud deadline exceeded")
    if isinstance(exc, ssl.SSLError):
        return TransportError(f"TLS error talking to the cloud: {exc}")
    return TransportError(f"cloud unreachable: {exc.__class__.__name__}: {exc}")
