"""HTTP/1.1 request heads and response heads for the v2 server, pure (no sockets).

A small strict parser instead of ``http.server``'s (which parses every request's headers
with the ``email`` package: ~50 us of the ~0.1 ms the old server spent per request).
It reads only what the server needs: the request line, ``name: value`` header lines
(names case-insensitive, values latin-1), and from them the body's length, keep-alive and
``Expect: 100-continue``. Anything it cannot read is a :class:`StatusError` with the status
to answer (400, 411, 431, 501, 505), after which the connection is closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from edgeship._errors import EdgeshipError

__all__ = ["MAX_HEAD_BYTES", "Head", "StatusError", "head_end", "parse_head", "response_head"]

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together (http.server: 64 KiB a line)
MAX_HEADERS = 100  # as http.server
METHODS = frozenset({"GET", "POST", "DELETE"})  # the v2 routes and the extra ones


class StatusError(EdgeshipError):
    """Answered with a given HTTP status (400, 404, 503 ...): raised by a service, and by
    the head parser for a head it cannot serve (the connection is then closed)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request head."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    length: int  # of the body (0 without Content-Length)
    keep_alive: bool
    expect_continue: bool


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """The index just after the blank line ending a head in ``buf`` (-1: not there yet).
    ``start``: where to begin looking (bytes already searched, less 3)."""
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0:
        return end + 4
    end = buf.find(b"\n\n", start)  # bare LF line ends, as http.server accepts
    return end + 2 if end >= 0 else -1


def parse_head(raw: bytes) -> Head:
    """Parse a complete request head (request line, headers, the blank line)."""
    lines = raw.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise StatusError(400, f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    if not version.startswith("HTTP/") or version[5:] not in ("1.0", "1.1"):
        if version[5:6].isdigit() and version[5:6] >= "2":
            raise StatusError(505, f"HTTP version {version[5:][:10]} is not supported")
        raise StatusError(400, f"bad HTTP version {version[:20]!r}")
    headers: dict[str, str] = {}
    lengths = set()
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise StatusError(400, "folded header lines are not supported")
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            raise StatusError(400, f"bad header line {line[:80]!r}")
        key = name.lower()
        headers[key] = value.strip()
        if key == "content-length":
            lengths.add(value.strip())
    if len(headers) > MAX_HEADERS:
        raise StatusError(431, f"more than {MAX_HEADERS} headers")
    if method not in METHODS:
        raise StatusError(501, f"unsupported method {method[:20]!r}")
    if "transfer-encoding" in headers:
        raise StatusError(411, "chunked bodies are not supported: send Content-Length")
    return Head(method=method, target=target, headers=headers, length=_length(lengths),
                keep_alive=_keep_alive(version, headers.get("connection", "")),
                expect_continue=headers.get("expect", "").lower() == "100-continue")


def _length(values: set[str]) -> int:
    if len(values) > 1:
        raise StatusError(400, "conflicting Content-Length headers")
    if not values:
        return 0
    (text,) = values
    if not text.isdigit() or not text.isascii():  # no sign, no spaces, no "1_000"
        raise StatusError(400, "bad Content-Length")
    return int(text)


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip() for t in connection.lower().split(",")}
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


_date = (0, "")  # (second, its Date header value): formatdate costs ~5 us


def _http_date() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def response_head(status: int, *, content_type: str, length: int, server: str,
                  headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    """Status line and headers of an answer, ending in the blank line."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", f"Server: {server}",
             f"Date: {_http_date()}", f"Content-Type: {content_type}",
             f"Content-Length: {length}"]
    if headers:
        lines.extend(f"{key}: {value}" for key, value in headers.items())
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
