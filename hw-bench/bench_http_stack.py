"""Which HTTP stack serves the agent's v2 API (issue 16), and how many runtime threads.

- ``stacks``: edgeship's hand-written server (``socketserver``, one thread per connection,
  the issue-16 defences) against uvicorn + httptools with a raw ASGI app over the same
  dispatcher (``uvicorn``: inference on the event loop; ``uvicorn-pool``: in the thread
  pool), each serving the agent's own ``AgentService`` on mobilenet. Import time and
  module count of the stack, RSS after warm-up, time to listening; req/s and p50/p99 at
  concurrency 1/8/64 for binary and JSON tensors, in interleaved rounds (median of the
  rounds: the machine is shared); a normal client under 200 slowloris connections.
- ``threads``: ``[model] threads`` 1 vs 2 on 1 core (``taskset -c 0``) and 2 cores
  (``taskset -c 0,1``): in-process ``Model.predict`` p50 and the API's binary req/s at
  concurrency 1 and 8 (the server pinned, the client not). 4 cores do not exist here.

Usage: ``python hw-bench/bench_http_stack.py [--rounds N] [--seconds S] [-o DIR]``;
writes ``http_stack.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from _common import print_machine, print_table, quick, write_result  # noqa: E402
from _load import http_request, run_load  # noqa: E402

MODEL = ROOT / "tests" / "fixtures" / "mobilenet.onnx"
SHAPE = (1, 3, 96, 96)
STACKS = ("socketserver", "uvicorn", "uvicorn-pool")
IMPORTS = {"socketserver": "http.server,socketserver",
           "uvicorn": "uvicorn,httptools,uvicorn.protocols.http.httptools_impl,"
                      "uvicorn.loops.asyncio,uvicorn.lifespan.off",
           "uvicorn-pool": "uvicorn,httptools,uvicorn.protocols.http.httptools_impl,"
                           "uvicorn.loops.asyncio,uvicorn.lifespan.off"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def free_port() -> int:
    from conftest import free_port as pick

    return int(pick())


class Server:
    def __init__(self, stack: str, threads: int = 1, cores: str | None = None) -> None:
        self.stack, self.port = stack, free_port()
        argv = [sys.executable, str(HERE / "_stack_server.py"), stack, str(MODEL),
                str(self.port), str(threads)]
        if cores:
            argv = ["taskset", "-c", cores, *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", line
        self.ready_s = float(line[1])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def import_ms(modules: str, runs: int = 5) -> dict[str, Any]:
    code = ("import time,sys;t=time.perf_counter()\n"
            f"for n in {modules!r}.split(','): __import__(n)\n"
            "print((time.perf_counter()-t)*1000, len(sys.modules))")
    took, count = [], 0
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        took.append(float(out[0]))
        count = int(out[1])
    return {"import_ms": round(statistics.median(took), 1), "modules_after": count}


def requests() -> dict[str, bytes]:
    from edgeship.sdk.serving._v2 import encode_request

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    path = "/v2/models/model/infer"
    return {kind: http_request(path, *encode_request({"input": x}, binary=kind == "binary"))
            for kind in ("binary", "json")}


def stack_rows(rounds: int, seconds: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from _attacks import slowloris_run

    reqs = requests()
    servers = {s: Server(s) for s in STACKS}
    try:
        for server in servers.values():  # warm-up
            run_load(server.port, reqs["binary"], concurrency=1, seconds=0.5)
        foot = [{"stack": s, **import_ms(IMPORTS[s]), "listening_s": srv.ready_s,
                 "rss_mb": rss_mb(srv.proc.pid)} for s, srv in servers.items()]
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for kind in ("binary", "json"):
                for c in (1, 8, 64):
                    for s, srv in servers.items():
                        runs.setdefault((s, kind, c), []).append(
                            run_load(srv.port, reqs[kind], concurrency=c, seconds=seconds))
        rows = []
        for (s, kind, c), got in runs.items():
            rows.append({"stack": s, "tensors": kind, "c": c,
                         "req_s": statistics.median(r["req_s"] for r in got),
                         "p50_ms": statistics.median(r["p50_ms"] or 0 for r in got),
                         "p99_ms": statistics.median(r["p99_ms"] or 0 for r in got),
                         "conn_errors": sum(r["conn_errors"] for r in got),
                         "non_200": sum(r["non_200"] for r in got)})
        body = reqs["json"].partition(b"\r\n\r\n")[2]
        for row in foot:
            slow = slowloris_run(servers[row["stack"]].port, body,
                                 seconds=4.0 if quick() else 10.0)
            row.update({f"slowloris_{k}": v for k, v in slow.items()
                        if k in ("failed", "p50_ms", "p99_ms", "max_ms")})
            row["rss_after_mb"] = rss_mb(servers[row["stack"]].proc.pid)
    finally:
        for server in servers.values():
            server.close()
    return foot, sorted(rows, key=lambda r: (r["tensors"], r["c"], r["stack"]))


INPROCESS = """
import sys, time, numpy as np
from edgeship.sdk.runtime._model import Model
m = Model.load(sys.argv[1], threads=int(sys.argv[2]))
x = np.random.default_rng(0).standard_normal(m.inputs[0].shape).astype(np.float32)
for _ in range(20): m.predict(x)
took = []
end = time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    t = time.perf_counter(); m.predict(x); took.append(time.perf_counter() - t)
print(len(took) / float(sys.argv[3]), 1000 * sorted(took)[len(took) // 2])
"""


def thread_rows(seconds: float) -> list[dict[str, Any]]:
    reqs = requests()
    rows = []
    for cores in ("0", "0,1"):
        for threads in (1, 2):
            out = subprocess.run(["taskset", "-c", cores, sys.executable, "-c", INPROCESS,
                                  str(MODEL), str(threads), str(seconds)],
                                 capture_output=True, text=True, check=True).stdout.split()
            row: dict[str, Any] = {"cores": len(cores.split(",")), "threads": threads,
                                   "inprocess_per_s": round(float(out[0]), 1),
                                   "inprocess_p50_ms": round(float(out[1]), 3)}
            server = Server("socketserver", threads=threads, cores=cores)
            try:
                run_load(server.port, reqs["binary"], concurrency=1, seconds=0.5)
                for c in (1, 8):
                    got = run_load(server.port, reqs["binary"], concurrency=c, seconds=seconds)
                    row[f"api_c{c}_req_s"] = got["req_s"]
            finally:
                server.close()
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2 if quick() else 3)
    parser.add_argument("--seconds", type=float, default=1.5 if quick() else 3.0)
    parser.add_argument("--only", choices=("stacks", "threads"), default=None)
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"load": os.getloadavg()}
    if args.only != "threads":
        foot, rows = stack_rows(args.rounds, args.seconds)
        print_table(foot, title="HTTP stack footprint and 200 slowloris connections")
        print_table(rows, title=f"HTTP stack load, median of {args.rounds} interleaved rounds")
        result.update(footprint=foot, load_rows=rows)
    if args.only != "stacks":
        threads = thread_rows(args.seconds)
        print_table(threads, title="[model] threads on 1 and 2 cores (mobilenet, binary)")
        result["threads"] = threads
    print_machine()
    print(f"load average at start: {result['load']}")
    print(json.dumps({"written": str(write_result("http_stack", result, out_dir=args.out))}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    time.sleep(0)
    main()
