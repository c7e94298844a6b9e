"""Socket helpers of the v2 server's loop and workers (non-blocking reads, blocking
sends with a backstop timeout, closing, body buffers)."""

from __future__ import annotations

import contextlib
import ctypes
import socket
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["HEAD_READ", "SOCKET_TIMEOUT_S", "Closed", "body_buffer", "recv", "recv_into", "send",
           "shut"]

SOCKET_TIMEOUT_S = 30.0  # backstop for one blocking send; the phase deadlines are in _v2conns
_ONE_WRITE = 64 * 1024  # a body up to this size leaves with its head in one send
_READ = 65536
HEAD_READ = 8192  # a request head's read: its body's bytes go straight into the body buffer
_ALIGN = 64
_T = TypeVar("_T")


def body_buffer(length: int, header_length: int | None) -> bytearray | memoryview:
    """Room for a body of ``length`` bytes. With a binary tail (after ``header_length``
    bytes of JSON) the tail starts 64-byte aligned: its tensors are numpy views of it, and
    an unaligned float32 input cost the runtime a copy (the old server copied every tail)."""
    if header_length is None or not 0 < header_length < length:
        return bytearray(length)
    raw = bytearray(length + _ALIGN)
    # (numpy's .ctypes.data made a ctypes object per request: 5 % of a worker's Python time)
    address = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    shift = -(address + header_length) % _ALIGN
    return memoryview(raw)[shift:shift + length]


class Closed(Exception):
    """The peer closed its side (or the socket failed): forget the connection."""


def recv(sock: Any, size: int = _READ) -> bytes | None:
    """What the socket has now, up to ``size`` bytes (None: nothing yet); Closed at
    end-of-file or an error."""
    data: bytes | None = _attempt(lambda: sock.recv(size))
    if data is not None and not data:
        raise Closed
    return data


def recv_into(sock: Any, view: memoryview) -> int | None:
    """Bytes read into ``view`` now (None: nothing yet); Closed at end-of-file or an error."""
    count: int | None = _attempt(lambda: sock.recv_into(view))
    if count == 0:
        raise Closed
    return count


def _attempt(read: Callable[[], _T]) -> _T | None:
    """One non-blocking read: None when the socket has nothing yet."""
    try:
        return read()
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        if _want(exc):
            return None
        raise Closed from exc


def _want(exc: OSError) -> bool:
    """Whether a TLS socket only needs more bytes (SSLWantRead/WriteError)."""
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


def send(sock: Any, head: bytes, body: bytes) -> None:
    """Head and body, blocking up to SOCKET_TIMEOUT_S per send (worker thread). A small
    answer on a plain socket is tried at once without switching the socket to blocking
    and back (syscalls on every answer); what it did not take is sent blocking."""
    if len(body) <= _ONE_WRITE and type(sock) is socket.socket:  # not TLS: no partial records
        data = head + body
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        head, body = data[sent:], b""
    sock.settimeout(SOCKET_TIMEOUT_S)
    try:
        if len(body) <= _ONE_WRITE:
            sock.sendall(head + body)
        else:  # a large body is not copied to join it
            sock.sendall(head)
            sock.sendall(body)
    finally:
        sock.settimeout(0.0)


def shut(sock: Any) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)  # the plain socket's, also under TLS
    with contextlib.suppress(OSError):
        sock.close()
