"""The v2 server's concurrency-1 path (issue 16, session 8): a worker that answered waits for
the connection's next request polling without sleeping for a bounded time, then asleep until
its linger ends; small answers leave in one non-blocking send; a lone worker's count goes
back to zero when its client leaves."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

import numpy as np
from edgeship.sdk.serving._v2 import encode_request
from edgeship.sdk.serving._v2loop import _ready
from edgeship.sdk.serving._v2server import serve
from edgeship.sdk.serving._v2sock import send
from test_v2_loop import Echo  # doubles its input x [1, 4] FP32


def _poller(sock: socket.socket) -> Any:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return poller


def test_ready_sees_bytes_that_are_there_already() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"x")
        now = time.monotonic()
        assert _ready(_poller(a), now + 60, now + 60)


def test_ready_gives_up_at_its_deadline_not_before() -> None:
    a, b = socket.socketpair()
    with a, b:
        began = time.monotonic()
        assert not _ready(_poller(a), began + 0.01, began + 0.05)
        assert time.monotonic() - began >= 0.049  # spun 10 ms, then slept the rest


def test_ready_wakes_for_bytes_that_come_while_it_sleeps() -> None:
    a, b = socket.socketpair()
    with a, b:
        timer = threading.Timer(0.05, b.sendall, args=(b"x",))
        timer.start()
        began = time.monotonic()
        try:
            assert _ready(_poller(a), began, began + 60)  # no spin: asleep in poll
        finally:
            timer.join()
        assert time.monotonic() - began < 60


def test_a_small_answer_the_socket_takes_in_part_is_sent_whole() -> None:
    """The first, non-blocking send takes what fits in a small send buffer; the rest goes
    blocking while the reader drains."""
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        a.setblocking(False)
        head, body = b"HEAD\r\n\r\n", bytes(range(256)) * 240  # 61 440 bytes
        got = bytearray()

        def drain() -> None:
            while len(got) < len(head) + len(body):
                chunk = b.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        send(a, head, body)
        reader.join(timeout=60)
        assert bytes(got) == head + body
        assert a.gettimeout() == 0.0  # left non-blocking for the loop


def test_a_lone_worker_is_idle_again_once_its_client_left() -> None:
    body, headers = encode_request({"x": np.ones((1, 4), np.float32)}, binary=True)
    head = ["POST /v2/models/m/infer HTTP/1.1", "Host: t", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head + [f"{k}: {v}" for k, v in headers.items()]) + "\r\n\r\n"
               ).encode() + body
    with serve(Echo(), max_request_bytes=1 << 20, spin_s=0.0005).start() as srv:
        with socket.create_connection((srv.host, srv.port), timeout=30) as sock:
            for _ in range(20):  # keep-alive, one at a time: the worker lingers and spins
                sock.sendall(request)
                reply = b""
                while b"\r\n\r\n" not in reply:
                    chunk = sock.recv(65536)
                    assert chunk, "closed early"
                    reply += chunk
                head_part, _, rest = reply.partition(b"\r\n\r\n")
                assert head_part.startswith(b"HTTP/1.1 200"), head_part
                length = int(next(line.split(b":")[1] for line in head_part.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += sock.recv(65536)
        deadline = time.monotonic() + 30
        while srv._loop._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv._loop._busy == 0
