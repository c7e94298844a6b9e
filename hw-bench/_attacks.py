"""The agent's local API under attack (issue 16), for bench_agent.py: what a normal client
sees while 200 slowloris connections are open, and the agent's RSS under 8 concurrent
16 MiB JSON requests. Loopback only; each run bounded in count and time. The slowloris
attacker is the one tests/test_agent_api_limits.py runs (tests/test_agent_support.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import numpy as np
from test_agent_support import peak_rss_mb, slowloris  # tests/ is on sys.path (bench_agent.py)


def _post(port: int, body: bytes, timeout: float = 30.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v2/models/model/infer", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def slowloris_run(port: int, body: bytes, *, peers: int = 200, seconds: float = 10.0
                  ) -> dict[str, Any]:
    """A normal client's answers (a fresh connection each, 5 a second) while ``peers``
    connections send a header byte a second and reconnect when closed.
    Target: p99 under 100 ms."""
    took, failed = [], 0
    with slowloris(port, peers):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            try:
                failed += _post(port, body, timeout=10) != 200
            except OSError:
                failed += 1
            took.append((time.monotonic() - start) * 1000)
            time.sleep(0.2)
    ms = np.array(took)
    return {"slowloris_peers": peers, "answers": len(took), "failed": failed,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


def inflight_rss_run(pid: int, port: int, *, requests: int = 8,
                     mib: int = 15) -> dict[str, Any]:
    """Peak RSS growth of the agent while ``requests`` JSON bodies of ``mib`` MiB arrive at
    once (the agent's [api] max_inflight_bytes bounds it; default 64 MiB)."""
    rows = mib * 2**20 // (64 * 20)
    data = np.random.default_rng(0).random(rows * 64).tolist()
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 64],
                                   "data": data}]}).encode()
    before = peak_rss_mb(pid)
    codes: list[int] = []
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: codes.append(_post(port, body)))
               for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": requests, "body_mib": round(len(body) / 2**20, 1),
            "statuses": sorted(set(codes)), "seconds": round(time.monotonic() - start, 2),
            "peak_rss_growth_mb": round(peak_rss_mb(pid) - before, 1)}
