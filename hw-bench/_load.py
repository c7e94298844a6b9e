"""A keep-alive HTTP load generator for bench_agent.py: ``concurrency`` clients, each one
connection sending the same pre-built request again and again, for a fixed time.

Raw sockets, not http.client: the client parses only the status line and Content-Length,
so on a 2-core machine it takes as little CPU from the server under test as it can, and
every peer is measured through the same client. A connection the server closes or resets
is counted as an error and reopened (so "connection errors" at c=64 is what a real client
would see).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """One keep-alive POST as bytes on the wire."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: socket.socket, pending: bytearray) -> int:
    """Read one response (status line, headers, Content-Length body); its status code."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError("closed by the server mid-body")
        body += chunk
    pending[:] = body[length:]
    return status


class _Client(threading.Thread):
    def __init__(self, port: int, request: bytes, start: threading.Event, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.request, self.go, self.stop = port, request, start, stop
        self.took: list[float] = []
        self.errors = self.bad_status = 0

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            self.errors += 1
            return None

    def run(self) -> None:
        sock = self._connect()
        pending = bytearray()
        self.go.wait()
        while not self.stop.is_set():
            if sock is None:
                time.sleep(0.01)
                sock, pending = self._connect(), bytearray()
                continue
            began = time.perf_counter()
            try:
                sock.sendall(self.request)
                status = _read_response(sock, pending)
            except (OSError, ValueError):
                self.errors += 1
                sock.close()
                sock = None
                continue
            self.took.append(time.perf_counter() - began)
            self.bad_status += status != 200
        if sock is not None:
            sock.close()


def run_load(port: int, request: bytes, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Req/s, p50/p99 (ms), connection errors and non-200 answers of ``concurrency``
    keep-alive clients sending ``request`` for ``seconds``."""
    go, stop = threading.Event(), threading.Event()
    clients = [_Client(port, request, go, stop) for _ in range(concurrency)]
    for client in clients:
        client.start()
    time.sleep(0.2)  # connections open before the clock starts
    began = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for client in clients:
        client.join(timeout=30)
    wall = time.perf_counter() - began
    took = np.array([t for c in clients for t in c.took]) * 1000
    return {"c": concurrency, "req_s": round(len(took) / wall, 1),
            "p50_ms": round(float(np.percentile(took, 50)), 2) if len(took) else None,
            "p99_ms": round(float(np.percentile(took, 99)), 2) if len(took) else None,
            "conn_errors": sum(c.errors for c in clients),
            "non_200": sum(c.bad_status for c in clients)}
