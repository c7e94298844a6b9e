"""The v2 server's selector loop and HTTP head parser (issue 16, session 7): waiting
connections hold no thread, requests read on one connection are answered in order, the
head parser refuses what it cannot read with the right status, binary tails are aligned."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from edgeship.sdk.serving._v2 import ModelMetadata, TensorSpec, encode_request
from edgeship.sdk.serving._v2http import StatusError, head_end, parse_head
from edgeship.sdk.serving._v2server import V2Service, serve
from edgeship.sdk.serving._v2sock import body_buffer


class Echo(V2Service):
    """Doubles its input ``x`` [1, 4] FP32."""

    def metadata(self, name: str) -> ModelMetadata | None:
        spec = TensorSpec(name="x", datatype="FP32", shape=(1, 4))
        return ModelMetadata(name=name, versions=("1",), platform="test", inputs=(spec,),
                             outputs=())

    def infer(self, name: str, inputs: dict[str, np.ndarray]
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"y": inputs["x"] * 2}, {"source": "local", "version": "1"}


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with serve(Echo(), max_request_bytes=1 << 20).start() as srv:
        yield srv


def _infer_request(value: float, *, binary: bool = False, extra: str = "") -> bytes:
    body, headers = encode_request({"x": np.full((1, 4), value, np.float32)}, binary=binary)
    head = ["POST /v2/models/m/infer HTTP/1.1", "Host: t", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if extra:
        head.append(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read ``count`` answers (status, body) from ``sock``."""
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status = int(head[9:12])
        if status == 100:
            continue
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(data) < length:
            data += sock.recv(65536)
        out.append((status, data[:length]))
        data = data[length:]
    return out


def test_head_parser_reads_what_the_server_needs() -> None:
    head = parse_head(b"POST /v2/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
                      b"X-Api-Key: k\r\nExpect: 100-continue\r\n\r\n")
    assert (head.method, head.target, head.length) == ("POST", "/v2/x?a=1", 12)
    assert head.headers["x-api-key"] == "k" and head.keep_alive and head.expect_continue
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
    assert parse_head(b"GET / HTTP/1.1\nHost: h\n\n").headers == {"host": "h"}  # bare LF
    assert head_end(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nrest") == 27
    assert head_end(b"GET / HTTP/1.1\r\nHost: h\r\n") == -1


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / SPDY/1\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
])
def test_head_parser_refuses_with_the_right_status(raw: bytes, status: int) -> None:
    with pytest.raises(StatusError) as caught:
        parse_head(raw)
    assert caught.value.status == status


@pytest.mark.parametrize(("raw", "status"), [
    (b"PUT /v2 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\n\r\n", 411),
    (b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431),
])
def test_refused_heads_get_one_json_line_and_a_close(server: Any, raw: bytes, status: int) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert int(head[9:12]) == status, reply[:200]
    assert b"Connection: close" in head
    assert "\n" not in json.loads(body)["error"]


def test_pipelined_requests_are_answered_in_order(server: Any) -> None:
    """Three requests in one send (JSON, binary, JSON) on one connection: three answers,
    in order, each with its own values."""
    raw = _infer_request(1.0) + _infer_request(2.0, binary=True) + _infer_request(3.0)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(raw)
        got = _answers(sock, 3)
    assert [s for s, _ in got] == [200, 200, 200]
    assert json.loads(got[0][1])["outputs"][0]["data"] == [2.0] * 4
    assert b'"binary_data_size":16' in got[1][1] and got[1][1].endswith(
        np.full(4, 4.0, np.float32).tobytes())
    assert json.loads(got[2][1])["outputs"][0]["data"] == [6.0] * 4


def test_expect_100_continue_gets_its_interim_answer(server: Any) -> None:
    raw = _infer_request(5.0, extra="Expect: 100-continue")
    head, _, body = raw.partition(b"\r\n\r\n")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        [(status, reply)] = _answers(sock, 1)
    assert status == 200 and json.loads(reply)["outputs"][0]["data"] == [10.0] * 4


def test_a_body_sent_a_byte_at_a_time_is_read_without_a_thread(server: Any) -> None:
    raw = _infer_request(0.5)
    before = threading.active_count()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        for i in range(0, len(raw), 7):
            sock.sendall(raw[i:i + 7])
            time.sleep(0.001)
        assert threading.active_count() == before
        [(status, reply)] = _answers(sock, 1)
    assert status == 200 and json.loads(reply)["outputs"][0]["data"] == [1.0] * 4


def test_200_slowloris_connections_hold_no_thread_each() -> None:
    """The old server started a thread per connection: 200 slow heads were 200 threads.
    Now they are entries in one selector: the thread count does not move, and a normal
    request is answered at once."""
    with serve(Echo(), max_connections=256, limits=None).start() as srv:
        before = threading.active_count()
        slow = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(200)]
        try:
            for sock in slow:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
            time.sleep(0.3)
            during = threading.active_count()
            start = time.monotonic()
            with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
                sock.sendall(_infer_request(1.0))
                [(status, _)] = _answers(sock, 1)
            took = time.monotonic() - start
        finally:
            for sock in slow:
                sock.close()
    print(f"threads: {before} before, {during} with 200 slow heads; answer in {took * 1000:.1f} ms")
    assert during == before
    assert status == 200 and took < 1.0


def test_binary_tails_are_64_byte_aligned() -> None:
    for header_length in (1, 61, 181, 4095):
        body = body_buffer(header_length + 4000, header_length)
        tail = np.frombuffer(body, np.uint8)[header_length:]
        assert tail.ctypes.data % 64 == 0 and len(body) == header_length + 4000
    assert isinstance(body_buffer(100, None), bytearray)


def test_a_body_that_arrives_after_the_linger_is_read_whole(server: Any) -> None:
    """The next request's head and part of its body come with the first: the worker
    that answered reads them while it lingers, then hands the connection back to the
    loop mid-body; the rest, 50 ms later, completes that same request."""
    first, second = _infer_request(1.0), _infer_request(2.0, binary=True)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(first + second[:-10])
        [(status, reply)] = _answers(sock, 1)
        assert status == 200 and json.loads(reply)["outputs"][0]["data"] == [2.0] * 4
        time.sleep(0.05)
        sock.sendall(second[-10:])
        [(status, reply)] = _answers(sock, 1)
    assert status == 200 and reply.endswith(np.full(4, 4.0, np.float32).tobytes())
