"""Issue 16, defects 4 and 3: the local API of a real agent process against hostile input
and hostile connections. Bad input is a 400 with one line that says what was wrong (never
a 500); the bytes the API holds are bounded; idle and slowloris connections cannot lock a
normal client out."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from test_agent_support import (
    AgentProc,
    make_keys,
    make_release,
    peak_rss_mb,
    slowloris,
    write_config,
)

BIG = 10**20


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory,
          shared_mosquitto: Mosquitto) -> Iterator[AgentProc]:
    tmp = tmp_path_factory.mktemp("api-limits")
    keys = make_keys(tmp)
    rel = make_release(tmp, keys, "1.0.0")
    port = free_port()
    cfg = write_config(tmp, broker_url=shared_mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=rel, fleet="limits")
    proc = AgentProc(cfg, port).start()
    proc.wait_ready()
    yield proc
    proc.terminate()


def _post(port: int, body: bytes, headers: dict[str, str] | None = None,
          timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tensor(**fields: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", **fields}]}).encode()


def _binary(shape: list[int]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    return header, {"Inference-Header-Content-Length": str(len(header))}


BAD: dict[str, tuple[bytes, dict[str, str]]] = {
    "json_shape_0_1e20": (_tensor(shape=[0, BIG], data=[]), {}),
    "binary_shape_0_2e62": _binary([0, 2**62]),
    "nested_100000": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}),
    "int_5000_digits": (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], '
                        b'"data": [' + b"9" * 5000 + b"]}]}", {}),
    "shape_5000_digits": (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, '
                          + b"9" * 5000 + b'], "data": []}]}', {}),
    "data_nested_deep": (_tensor(shape=[1, 64], data=json.loads("[" * 500 + "]" * 500)), {}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_400(case: str, agent: AgentProc) -> None:
    body, headers = BAD[case]
    status, reply = _post(agent.port, body, headers)
    assert status == 400, (case, status, reply[:300])
    error = json.loads(reply)["error"]
    assert "\n" not in error and 0 < len(error) <= 300, error
    status, _ = _post(agent.port, _tensor(shape=[1, 64], data=[0.0] * 64))
    assert status == 200  # and the agent still answers


def _in_threads(work: Callable[[], None], count: int) -> None:
    """Run ``work`` in ``count`` threads at once and wait for all of them."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_bytes_in_flight_bound_the_memory(tmp_path: Path, shared_mosquitto: Mosquitto) -> None:
    """Eight 15 MiB JSON float bodies at once: decoded together they cost several hundred
    MB; with max_inflight_bytes = 64 MiB they are decoded one at a time (each answered),
    and the peak RSS grows by less than that budget (a large "data" array is parsed a
    slice at a time: body + array + one slice, ~29 MB; parsed whole: +71 MB)."""
    keys = make_keys(tmp_path)
    rel = make_release(tmp_path, keys, "1.0.0")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=shared_mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=rel, fleet="inflight")
    cfg.write_text(cfg.read_text().replace("[api]\n", "[api]\nmax_inflight_bytes = 67108864\n"))
    proc = AgentProc(cfg, port).start()
    rows = 12_000  # 12 000 x 64 distinct floats ~ 15 MiB of JSON
    data = np.random.default_rng(0).random(rows * 64).tolist()
    body = _tensor(shape=[rows, 64], data=data)
    assert 14 * 2**20 < len(body) < 16 * 2**20
    try:
        proc.wait_ready()
        assert proc.proc is not None
        before = peak_rss_mb(proc.proc.pid)
        results: list[int] = []
        _in_threads(lambda: results.append(_post(port, body, timeout=60)[0]), 8)
        grown = peak_rss_mb(proc.proc.pid) - before
    finally:
        proc.terminate()
    print(f"peak RSS grew by {grown:.0f} MB for 8 concurrent 15 MiB JSON bodies")
    assert results == [400] * 8  # decoded, then refused: the model takes [1, 64]
    assert grown < 64 * 2**20 / 1e6, grown  # within max_inflight_bytes; all at once: ~250 MB


def _answer_times(port: int, seconds: float) -> tuple[list[float], list[int]]:
    """A normal client's answers (a fresh connection each, 5 a second) for ``seconds``."""
    body = _tensor(shape=[1, 64], data=[0.0] * 64)
    took: list[float] = []
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        statuses.append(_post(port, body, timeout=5)[0])
        took.append(time.monotonic() - start)
        time.sleep(0.2)
    return sorted(took), statuses


def test_idle_and_slowloris_connections_do_not_starve_a_client(agent: AgentProc) -> None:
    """64 idle connections and 200 slowloris ones (a header byte a second, reconnecting
    when closed) for ~8 s: a normal client still gets every answer, none of them waiting
    for the attackers' connections (a starved client waited up to 60 s; one whose SYN the
    full listen backlog dropped, 1 s for its retry). The bound is 1 s above the slowest of
    its answers without the attack, measured here first: what the machine's load costs is
    the same in both (the 100 ms target is measured in hw-bench)."""
    port = agent.port
    baseline, statuses = _answer_times(port, 2.0)
    assert statuses == [200] * len(statuses), statuses
    idle = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(64)]
    try:
        with slowloris(port, 200):
            latencies, statuses = _answer_times(port, 8.0)
    finally:
        for sock in idle:
            sock.close()
    print(f"normal client under 64 idle + 200 slowloris: {len(latencies)} answers, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
          f" (without: p50 {baseline[len(baseline) // 2] * 1000:.1f} ms, max "
          f"{baseline[-1] * 1000:.1f} ms)")
    assert statuses == [200] * len(statuses), statuses
    assert latencies[len(latencies) // 2] < 0.25  # typically a few ms
    assert latencies[-1] < 1.0 + baseline[-1]


def test_slowloris_connections_hold_no_thread_of_the_agent(agent: AgentProc) -> None:
    """200 slowloris connections: the old server ran a thread for each (up to its 128
    connections); the selector loop parks them all, so the agent's thread count stays."""
    assert agent.proc is not None
    tasks = Path(f"/proc/{agent.proc.pid}/task")
    before = len(list(tasks.iterdir()))
    with slowloris(agent.port, 200):
        time.sleep(2.5)
        during = len(list(tasks.iterdir()))
        status, _ = _post(agent.port, _tensor(shape=[1, 64], data=[0.0] * 64))
    print(f"agent threads: {before} before, {during} with 200 slowloris connections")
    assert status == 200
    assert during <= before + 3, (before, during)  # (a thread the daemon may start meanwhile)


def test_a_burst_of_connects_is_queued_not_dropped(agent: AgentProc) -> None:
    """64 clients connecting at once (the listen backlog was 5: each waited ~1 s for a
    SYN retry): every one is answered, quickly."""
    results: list[tuple[int, float]] = []
    gate = threading.Barrier(64)

    def one() -> None:
        gate.wait()
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        try:
            conn.request("GET", "/v2/health/live")
            results.append((conn.getresponse().status, time.monotonic() - start))
        finally:
            conn.close()

    _in_threads(one, 64)
    assert [s for s, _ in results] == [200] * 64
    slowest = max(t for _, t in results)
    print(f"burst of 64 connects: slowest answer {slowest * 1000:.0f} ms")
    assert slowest < 0.9


def test_64_keep_alive_clients_of_one_host_are_all_served(agent: AgentProc) -> None:
    """The per-peer bound (64 by default) leaves 64 concurrent keep-alive clients of one
    host alone: no connection of theirs is closed between requests, no error."""
    body = _tensor(shape=[1, 64], data=[0.0] * 64)
    errors: list[str] = []
    gate = threading.Barrier(64)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        try:
            gate.wait()
            for _ in range(10):
                conn.request("POST", "/v2/models/model/infer", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(str(resp.status))
                time.sleep(0.05)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    _in_threads(client, 64)
    assert not errors, errors[:5]


def test_choose_victim_per_peer_and_in_total() -> None:
    from edgeship.sdk.serving._v2conns import REFUSE, Conn, Limits, choose_victim

    limits = Limits(max_connections=4, max_per_peer=2)
    a1 = Conn(1, "a", None, "waiting", since=1.0)
    a2 = Conn(2, "a", None, "working", since=0.5)
    b3 = Conn(3, "b", None, "waiting", since=0.1)
    assert choose_victim([a1, b3], "a", limits) is None  # room
    assert choose_victim([a1, a2, b3], "a", limits) == 1  # a's own waiting one, not b's
    assert choose_victim([a2, Conn(4, "a", None, "working")], "a", limits) == REFUSE
    full = [a1, a2, b3, Conn(5, "c", None, "reading", since=0.0)]
    assert choose_victim(full, "d", limits) == 3  # the longest waiting of all


def test_a_connection_waits_since_it_was_admitted_not_since_its_thread_started() -> None:
    """Threads of two idle connections may start in either order: the first admitted stays
    the longest waiting (CI evicted the second one when its thread ran first)."""
    from edgeship.sdk.serving._v2conns import Connections, Limits

    conns = Connections(Limits(max_connections=2, max_per_peer=2))
    socks = [socket.socket() for _ in range(3)]
    try:
        first = conns.admit(socks[0], "p")
        second = conns.admit(socks[1], "p")
        assert first is not None and second is not None
        time.sleep(0.01)
        conns.phase(second, "waiting")  # the second's thread reached its read first
        conns.phase(first, "waiting")
        assert conns.admit(socks[2], "p") is not None
        remaining = {c.id for c in conns._conns.values()}
        assert first not in remaining and second in remaining
    finally:
        conns.close()
        for sock in socks:
            sock.close()
