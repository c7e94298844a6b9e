"""The device agent, all in one run on this machine (compare the ratios, not absolutes).

- ``latency``: the agent's local v2 API (``AgentClient``, binary tensors, keep-alive) vs
  in-process ``Model.predict`` on the same model, p50/p99 and the p50 overhead
  (target: under 1 ms). Fixtures ``mlp`` (tiny input, pure overhead) and ``mobilenet``.
- ``footprint``: RSS and start-up time to the first answer of ``edgeship agent run``
  (a restart with the model installed: the normal device boot) vs a bare Python process
  that only imports numpy, the runtime, paho-mqtt and cryptography, loads the same model
  and answers once (targets: RSS within 1.3x, first answer under 1 s); for mobilenet as
  fp32 ONNX (onnxruntime) and as the INT8 TFLite ``edgeship convert`` makes (LiteRT).
- ``update``: wall time of an OTA update of mobilenet (~1 MB) to a version whose every
  weight changed (a ~1 MB delta) over a loopback mosquitto with ``edgeship fleet serve``:
  push -> committed, split into download / verify + install / health check + switch.
- ``serving`` (issue 16): req/s and p50/p99 at concurrency 1/8/64, binary and JSON
  tensors, of the mobilenet agent against peers started here on the same model and
  thread count (``_peers.py``: a minimal FastAPI/uvicorn v2 endpoint, MLServer; JSON only)
  and in-process onnxruntime as the floor (c=1), in interleaved rounds (median); start to
  first answer (median of 7 interleaved starts each) and RSS against a bare runtime process answering
  over HTTP. Then the floor of any server here (``_floor.py``, ~7 s): a C server and a Python
  one answering the agent's own answer bytes without inference, and Python + onnxruntime
  without HTTP/v2 work, each as a ratio to the in-process floor (what the machine allows).
- ``attacks`` (issue 16, on the mlp agent): a normal client's p50/p99 while 200 slowloris
  connections are open (target: p99 under 100 ms, no failure), and the agent's peak RSS
  growth under 8 concurrent ~15 MiB JSON requests (bounded by ``[api] max_inflight_bytes``).
- ``startup`` (issue 16): only ``serving``'s start to first answer against the bare HTTP
  process (``--starts N`` interleaved starts each, median; default 7), without the
  serving runs (so without their RSS comparison).

The issue's targets are printed as ratios measured in this run (``targets`` in the JSON).

Usage: ``python hw-bench/bench_agent.py [--only serving,attacks,...] [--rounds N] [--starts N]
[-o DIR]``;
writes ``agent.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from _common import (  # noqa: E402
    convert_mobilenet_tflite,
    print_machine,
    print_table,
    quick,
    timed,
    write_result,
)

FIXTURES = ROOT / "tests" / "fixtures"

BARE = """
import sys, time, numpy as np, onnxruntime as ort, paho.mqtt.client
import cryptography.hazmat.primitives.asymmetric.ed25519
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
s.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)})
print("ready", flush=True)
time.sleep(30)
"""


BARE_LITERT = """
import sys, time, numpy as np, paho.mqtt.client
import cryptography.hazmat.primitives.asymmetric.ed25519
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1])
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
print("ready", flush=True)
time.sleep(30)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def bare_process(model: Path, script: str) -> dict[str, float]:
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script, str(model)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    first = time.perf_counter() - began
    time.sleep(0.3)
    rss = rss_mb(proc.pid)
    proc.kill()
    proc.wait()
    return {"first_answer_s": round(first, 3), "rss_mb": rss}


def make_release_chain(tmp: Path) -> tuple[Path, Path, Path]:
    """mobilenet v1.0.0, and v1.1.0 with every weight changed (a delta near the model size)."""
    import onnx
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release
    from onnx import numpy_helper

    keys = tmp / "keys"
    KeyDir(keys).init()
    model = onnx.load(str(FIXTURES / "mobilenet.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 16:
            init.CopyFrom(numpy_helper.from_array(
                (arr * (1 + 0.5 * rng.standard_normal(arr.shape))).astype(np.float32), init.name))
    (tmp / "v2").mkdir()
    onnx.save(model, str(tmp / "v2" / "mobilenet.onnx"))
    v1 = tmp / "rel-1.0.0"
    v2 = tmp / "rel-1.1.0"
    Release.build(FIXTURES / "mobilenet.onnx", version="1.0.0", keydir=keys, out=v1,
                  model_name="model")
    Release.build(tmp / "v2" / "mobilenet.onnx", version="1.1.0", keydir=keys, out=v2,
                  bases=[v1], model_name="model")
    return keys / "root.pub", v1, v2


def start_agent(cfg: Path, port: int) -> tuple[Any, float]:
    """Start ``edgeship agent run``; seconds from exec to the first 200 answer."""
    from edgeship.sdk.serving._client import AgentClient
    from test_agent_support import AgentProc, served_version  # noqa: F401

    agent = AgentProc(cfg, port)
    began = time.perf_counter()
    agent.start(wait=False)
    client = AgentClient(agent.url, timeout=2)
    x = None
    while True:
        try:
            if x is None:
                meta = client.metadata()
                if not meta.versions:
                    raise RuntimeError("no model yet")
                x = np.zeros([max(d, 1) for d in meta.inputs[0].shape], np.float32)
            client.predict(x)
            break
        except Exception:
            if time.perf_counter() - began > 60:
                raise
            time.sleep(0.005)
    client.close()
    return agent, time.perf_counter() - began


def latency_rows(name: str, model_path: Path, url: str, n: int) -> dict[str, Any]:
    from edgeship.sdk.runtime._model import Model
    from edgeship.sdk.serving._client import AgentClient

    model = Model.load(model_path, threads=1)
    spec = model.inputs[0]
    x = np.random.default_rng(1).standard_normal([max(d, 1) for d in spec.shape]).astype(np.float32)
    client = AgentClient(url)
    np.testing.assert_allclose(client.predict(x), model.predict(x), rtol=1e-4, atol=1e-5)
    local = timed(lambda: model.predict(x), n)
    api = timed(lambda: client.predict(x), n)
    client.close()
    return {"model": name, "input_bytes": int(x.nbytes), "inprocess_p50_ms": local["p50_ms"],
            "inprocess_p99_ms": local["p99_ms"], "api_p50_ms": api["p50_ms"],
            "api_p99_ms": api["p99_ms"],
            "p50_overhead_ms": round(api["p50_ms"] - local["p50_ms"], 4)}


def update_run(broker_url: str, device: str, v2: Path) -> dict[str, Any]:
    from edgeship.sdk.fleet._release_server import push_offer
    from test_agent_support import Watcher

    watch = Watcher(broker_url)
    began = time.time()
    push_offer(broker_url, "t", v2, [device])
    watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.1.0", device=device,
               timeout=120)
    wall = time.time() - began
    stamps: dict[str, float] = {}
    for s in watch.history:
        if s.get("target") == "1.1.0" and s["device"] == device:
            stamps.setdefault(s["state"], s["ts"])
    watch.close()
    delta = sum(p.stat().st_size for p in (v2 / "deltas").iterdir())
    return {"delta_bytes": delta, "artifact_bytes": (v2 / "mobilenet.onnx").stat().st_size,
            "push_to_committed_s": round(wall, 3),
            "download_s": round(stamps["verifying"] - stamps["downloading"], 3),
            "verify_install_s": round(stamps["health-checking"] - stamps["verifying"], 3),
            "health_switch_s": round(stamps["committed"] - stamps["health-checking"], 3)}


def single_release(tmp: Path, artifact: Path) -> tuple[Path, Path]:
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release

    tmp.mkdir(parents=True, exist_ok=True)
    KeyDir(tmp / "keys").init()
    Release.build(artifact, version="1.0.0", keydir=tmp / "keys", out=tmp / "rel",
                  model_name="model")
    return tmp / "keys" / "root.pub", tmp / "rel"


def footprint_run(label: str, tmp: Path, broker_url: str, artifact: Path, bare_script: str,
                  release: tuple[Path, Path] | None = None) -> tuple[dict[str, Any], Any]:
    """RSS and time to first answer: agent restart vs a bare process with the same runtime."""
    from conftest import free_port
    from test_agent_support import write_config

    tmp.mkdir(parents=True, exist_ok=True)
    root, rel = release or single_release(tmp, artifact)
    port = free_port()
    cfg = write_config(tmp, broker_url=broker_url, port=port, root_pub=root, initial=rel,
                       chunk_size=64 * 1024, device=f"dev-{label}")
    agent, first_boot = start_agent(cfg, port)  # first boot: verify + health-check + install
    agent.terminate()
    agent, restart = start_agent(cfg, port)  # the normal boot
    time.sleep(0.5)
    row: dict[str, Any] = {"runtime": label, "agent_first_answer_s": round(restart, 3),
                           "agent_first_boot_with_install_s": round(first_boot, 3),
                           "agent_rss_mb": rss_mb(agent.proc.pid)}
    bare = bare_process(artifact, bare_script)
    row.update({"bare_first_answer_s": bare["first_answer_s"], "bare_rss_mb": bare["rss_mb"]})
    row["rss_ratio"] = round(row["agent_rss_mb"] / bare["rss_mb"], 3)
    row["first_answer_ratio"] = round(restart / bare["first_answer_s"], 3)
    return row, agent


def attack_rows(agent: Any) -> list[dict[str, Any]]:
    """Issue 16's attacks on a running agent (see _attacks.py)."""
    from _attacks import inflight_rss_run, slowloris_run

    x = np.random.default_rng(0).random((1, 30)).astype(np.float32)  # the mlp's input
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30],
                                   "data": x.ravel().tolist()}]}).encode()
    slow = slowloris_run(agent.port, body, seconds=5.0 if quick() else 15.0)
    rss = inflight_rss_run(agent.proc.pid, agent.port)
    return [{"attack": "200 slowloris connections", **slow},
            {"attack": "8 concurrent 15 MiB JSON requests", **rss}]


def _median_rows(runs: dict[tuple[str, str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    import statistics

    rows = []
    for (peer, kind, c), got in runs.items():
        rows.append({"peer": peer, "tensors": kind, "c": c,
                     "req_s": round(statistics.median(r["req_s"] for r in got), 1),
                     "p50_ms": statistics.median(r["p50_ms"] or 0 for r in got),
                     "p99_ms": statistics.median(r["p99_ms"] or 0 for r in got),
                     "conn_errors": sum(r["conn_errors"] for r in got),
                     "non_200": sum(r.get("non_200", 0) for r in got)})
    return sorted(rows, key=lambda r: (r["tensors"], r["c"], r["peer"]))


def inprocess_floor(model: Path, x: np.ndarray, seconds: float) -> dict[str, Any]:
    """onnxruntime called in this process (1 thread, like every peer): answers per second."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feed)
    took = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        began = time.perf_counter()
        session.run(None, feed)
        took.append(time.perf_counter() - began)
    ms = np.array(took) * 1000
    return {"c": 1, "req_s": round(len(took) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "conn_errors": 0}


STARTS = 7  # starts of the agent and of the bare HTTP process (3 were noise at load 12-14: 1.2-1.33)


def serving_run(agent: Any, model: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """The agent's API against FastAPI, MLServer and the in-process floor (see the top)."""
    from _load import http_request, run_load
    from _peers import Peer
    from edgeship.sdk.serving._v2 import encode_request

    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    path = "/v2/models/model/infer"
    reqs = {kind: http_request(path, *encode_request({"input": x}, binary=kind == "binary"))
            for kind in ("binary", "json")}
    ports = {"agent": agent.port}
    peers, skipped = [], {}
    for kind in ("fastapi", "mlserver"):
        peer = Peer(kind, model)
        try:
            peers.append(peer.start(reqs["json"]))
            ports[kind] = peer.port
        except Exception as exc:  # MLServer is an optional install
            peer.close()
            skipped[kind] = f"{type(exc).__name__}: {exc}"
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    try:
        for port in ports.values():  # warm-up
            run_load(port, reqs["json"], concurrency=1, seconds=0.3)
        for _ in range(rounds):
            for kind in ("binary", "json"):
                if kind == "binary":
                    runs.setdefault(("in-process", kind, 1), []).append(
                        inprocess_floor(model, x, seconds))
                for c in (1, 8, 64):
                    for name, port in ports.items():
                        if name == "mlserver" and kind == "binary":
                            continue  # MLServer's REST API has no binary tensors
                        runs.setdefault((name, kind, c), []).append(
                            run_load(port, reqs[kind], concurrency=c, seconds=seconds))
        floor = floor_run(agent.port, reqs["binary"], model, seconds, runs)
        bare = Peer("bare", model).start(reqs["binary"])  # more starts: main(), interleaved
        peers.append(bare)
        time.sleep(0.3)
        bare_row = {"first_answer_s": round(bare.first_answer_s, 3),
                    "rss_mb": rss_mb(bare.proc.pid)}  # type: ignore[union-attr]
        peer_rss = {p.kind: rss_mb(p.proc.pid) for p in peers if p.proc is not None}
    finally:
        for peer in peers:
            peer.close()
    return {"rows": _median_rows(runs), "skipped": skipped, "bare_http": bare_row, "floor": floor,
            "peer_rss_mb": peer_rss, "agent_rss_mb": rss_mb(agent.proc.pid),
            "request": reqs["binary"]}


def floor_run(port: int, request: bytes, model: Path, seconds: float,
              runs: dict[tuple[str, str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The floor of any server here (``_floor.py``), answering with the agent's own answer
    bytes, each against this run's in-process floor; ``implied``: the C floor's round trip
    plus the in-process call (< 10 s)."""
    import statistics

    from _floor import floor_rows, raw_answer

    inprocess = statistics.median(r["req_s"] for r in runs[("in-process", "binary", 1)])
    agent = statistics.median(r["req_s"] for r in runs[("agent", "binary", 1)])
    rows = floor_rows(request, raw_answer(port, request), model, min(seconds, 1.5))
    for row in rows:
        row["x_inprocess"] = round(row["req_s"] / inprocess, 3)
    c_floor = next((r for r in rows if r["peer"].startswith("floor: C")), None)
    if c_floor is not None:
        implied = 1 / (1 / c_floor["req_s"] + 1 / inprocess)
        rows.append({"peer": "implied: C floor round trip + in-process call", "tensors": "binary",
                     "c": 1, "req_s": round(implied, 1), "x_inprocess": round(implied / inprocess, 3)})
    rows.append({"peer": "agent (this run)", "tensors": "binary", "c": 1, "req_s": agent,
                 "x_inprocess": round(agent / inprocess, 3)})
    return rows


def startup_only(model: Path) -> dict[str, Any]:
    """``--only startup``: the request and the bare process's first start, as serving_run
    leaves them (the interleaved starts follow in main)."""
    from _load import http_request
    from _peers import Peer
    from edgeship.sdk.serving._v2 import encode_request

    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    request = http_request("/v2/models/model/infer", *encode_request({"input": x}, binary=True))
    bare = Peer("bare", model).start(request)
    try:
        time.sleep(0.3)
        row = {"first_answer_s": round(bare.first_answer_s, 3),
               "rss_mb": rss_mb(bare.proc.pid)}  # type: ignore[union-attr]
    finally:
        bare.close()
    return {"rows": [], "skipped": {}, "bare_http": row, "peer_rss_mb": {}, "request": request}


def agent_first_answer(cfg: Path, port: int, request: bytes) -> tuple[Any, float]:
    """Restart the agent (model installed): seconds from exec to its first 200 answer to
    ``request`` (polled like the bare process)."""
    from _peers import wait_answer
    from test_agent_support import AgentProc

    agent = AgentProc(cfg, port)
    began = time.perf_counter()
    agent.start(wait=False)
    return agent, wait_answer(port, request, began, agent.proc)


def _row(rows: list[dict[str, Any]], peer: str, kind: str, c: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["peer"], r["tensors"], r["c"]) == (peer, kind, c)), None)


def targets(serving: dict[str, Any] | None, attacks: list[dict[str, Any]] | None,
            inflight_limit_mb: float) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured in this run."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "goal": goal, "met": ok})

    if serving:
        rows = serving["rows"]
        agent_json, fast_json = _row(rows, "agent", "json", 1), _row(rows, "fastapi", "json", 1)
        agent_bin, floor = _row(rows, "agent", "binary", 1), _row(rows, "in-process", "binary", 1)
        if agent_json and fast_json:
            ratio = agent_json["req_s"] / fast_json["req_s"]
            add("JSON req/s c=1, agent / FastAPI", ratio, ">= 1", ratio >= 1)
        if agent_bin and floor:
            ratio = agent_bin["req_s"] / floor["req_s"]
            add("binary req/s c=1, agent / in-process", ratio, ">= 0.7", ratio >= 0.7)
        if rows:
            errors = sum(r["conn_errors"] for r in rows if r["peer"] == "agent" and r["c"] == 64)
            add("agent connection errors at c=64", errors, "0", errors == 0)
        first = serving.get("first_answer_ratio")
        if first is not None:
            add("start to first answer, agent / bare HTTP process", first, "<= 1.3", first <= 1.3)
        if serving["rows"]:  # (after the serving runs; a fresh start is not comparable)
            rss = serving["agent_rss_mb"] / serving["bare_http"]["rss_mb"]
            add("RSS, agent / bare HTTP process", rss, "<= 1.2", rss <= 1.2)
    for row in attacks or []:
        if "slowloris_peers" in row:
            add("normal client p99 under 200 slowloris (ms)", row["p99_ms"], "< 100",
                row["p99_ms"] < 100 and row["failed"] == 0)
        if "peak_rss_growth_mb" in row:
            add("peak RSS growth, 8 x 15 MiB JSON (MB) vs max_inflight_bytes",
                row["peak_rss_growth_mb"], f"<= {inflight_limit_mb:.0f}",
                row["peak_rss_growth_mb"] <= inflight_limit_mb)
    return out


def main() -> None:
    import argparse
    import statistics

    from _peers import Peer

    from edgeship._cli.broker import LocalBroker

    sections = ("latency", "footprint", "update", "serving", "attacks", "startup")
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--out", type=Path, default=None)
    parser.add_argument("--only", default=",".join(sections),
                        help=f"comma-separated sections: {', '.join(sections)}")
    parser.add_argument("--rounds", type=int, default=2 if quick() else 3)
    parser.add_argument("--seconds", type=float, default=1.5 if quick() else 3.0)
    parser.add_argument("--starts", type=int, default=STARTS,
                        help="interleaved starts of the agent and the bare HTTP process")
    args = parser.parse_args()
    only = set(args.only.split(","))
    n = 200 if quick() else 2000
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    broker = LocalBroker().start()  # what `edgeship broker` runs (TCP_NODELAY on)
    root, v1, v2 = make_release_chain(tmp)
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                               broker.url, "--releases", str(v1), str(v2)],
                              stderr=subprocess.DEVNULL)
    agents: list[Any] = []
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    rows: list[dict[str, Any]] = []
    footprint: list[dict[str, Any]] = []
    serving = attacks = update = None
    try:
        ort_row, agent = footprint_run("onnxruntime", tmp / "ort", broker.url,
                                       FIXTURES / "mobilenet.onnx", BARE, release=(root, v1))
        agents.append(agent)
        footprint.append(ort_row)
        if "latency" in only:
            rows.append(latency_rows("mobilenet fp32 onnx", FIXTURES / "mobilenet.onnx",
                                     agent.url, n // 4))
        if "serving" in only or "startup" in only:
            if "serving" in only:
                serving = serving_run(agent, FIXTURES / "mobilenet.onnx", args.rounds,
                                      args.seconds)
            else:  # start to first answer only (RSS needs the serving runs: not compared)
                serving = startup_only(FIXTURES / "mobilenet.onnx")
            agent.terminate()
            agents.remove(agent)
            request, firsts = serving.pop("request"), []
            bare = serving["bare_http"]
            bare_firsts = [bare["first_answer_s"]]
            for n in range(args.starts):  # one start is noise here: medians of interleaved
                if n:
                    peer = Peer("bare", FIXTURES / "mobilenet.onnx").start(request)
                    bare_firsts.append(round(peer.first_answer_s, 3))
                    peer.close()
                agent, first = agent_first_answer(agent.config, agent.port, request)
                firsts.append(first)
                if n < args.starts - 1:
                    agent.terminate()
            agents.append(agent)
            time.sleep(0.5)
            first, bare_first = statistics.median(firsts), statistics.median(bare_firsts)
            bare.update(first_answer_s=round(bare_first, 3), first_answer_runs_s=bare_firsts)
            serving["agent_first_answer_runs_s"] = [round(f, 3) for f in firsts]
            serving["agent_first_answer_s"] = round(first, 3)
            serving["agent_rss_mb"] = rss_mb(agent.proc.pid)
            serving["first_answer_ratio"] = round(first / bare_first, 3)
        if "update" in only:
            update = update_run(broker.url, "dev-onnxruntime", v2)
        if "footprint" in only or "latency" in only:
            tflite = convert_mobilenet_tflite(tmp)
            lite_row, lite_agent = footprint_run("litert", tmp / "litert", broker.url, tflite,
                                                 BARE_LITERT)
            agents.append(lite_agent)
            footprint.append(lite_row)
            if "latency" in only:
                rows.append(latency_rows("mobilenet int8 tflite", tflite, lite_agent.url, n // 4))
        if "attacks" in only or "latency" in only:
            mlp_root, mlp_rel = single_release(tmp / "mlp", FIXTURES / "mlp.onnx")
            _, mlp_agent = footprint_run("mlp", tmp / "mlp", broker.url, FIXTURES / "mlp.onnx",
                                         BARE, release=(mlp_root, mlp_rel))
            agents.append(mlp_agent)
            if "latency" in only:
                rows.insert(0, latency_rows("mlp fp32 onnx", FIXTURES / "mlp.onnx",
                                            mlp_agent.url, n))
            if "attacks" in only:
                attacks = attack_rows(mlp_agent)
    finally:
        for a in agents:
            a.terminate()
        server.terminate()
        server.wait()
        broker.stop()
    print_machine()
    print(f"load average at start: {result['load_average_at_start']} (2 cores shared with "
          "other workers: compare the ratios of this run, not absolutes)")
    if rows:
        print_table(rows, title="local API vs in-process Model.predict (ms)")
        result["latency"] = rows
    if "footprint" in only:
        print_table(footprint, title="agent footprint vs bare runtime process (mobilenet)")
        # "footprint" stays the onnxruntime row (what the plot reads); every runtime too
        result.update(footprint=footprint[0], footprint_by_runtime=footprint)
    if update:
        print_table([update], title="OTA update of mobilenet over loopback MQTT")
        result["update"] = update
    if serving:
        if serving["rows"]:
            print_table(serving["rows"], title=f"serving mobilenet, median of {args.rounds} "
                        "interleaved rounds (threads = 1 everywhere)")
        if serving.get("floor"):
            print_table(serving["floor"], title="the floor of any server here: c=1 binary, the "
                        "same client, request and answer bytes (x_inprocess: / in-process req/s)")
        if serving["skipped"]:
            print(f"skipped peers: {serving['skipped']}")
        print_table([{"process": "agent", "first_answer_s": serving["agent_first_answer_s"],
                      "rss_mb": serving["agent_rss_mb"],
                      "first_answer_runs_s": serving["agent_first_answer_runs_s"]},
                     {"process": "bare runtime + http.server", **serving["bare_http"]},
                     *({"process": k, "rss_mb": v} for k, v in serving["peer_rss_mb"].items()
                       if k != "bare")],
                    title="start to first answer and RSS")
        result["serving"] = serving
    if attacks:
        print_table(attacks, title="local API under attack (mlp agent)")
        result["attacks"] = attacks
    goals = targets(serving, attacks, inflight_limit_mb=64 * 2**20 / 1e6)
    if goals:
        print_table(goals, title="issue 16 targets (ratios of this run)")
        result["targets"] = goals
    path = write_result("agent", result, out_dir=args.out)
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # a pip-installed agent runs from compiled bytecode; with PYTHONDONTWRITEBYTECODE set
    # (as on the machine this was written on) every agent start compiled its ~130 modules
    # again (0.47 s of a 1.9 s start), which no device pays: the first boot writes them
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    main()
