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
- ``attacks`` (issue 16, on the mlp agent): a normal client's p50/p99 while 200 slowloris
  connections are open (target: p99 under 100 ms, no failure), and the agent's peak RSS
  growth under 8 concurrent ~15 MiB JSON requests (bounded by ``[api] max_inflight_bytes``).

Usage: ``python hw-bench/bench_agent.py [-o DIR]``; writes ``agent.json``.
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


def main() -> None:
    import argparse

    from edgeship._cli.broker import LocalBroker

    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args()
    n = 200 if quick() else 2000
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    broker = LocalBroker().start()  # what `edgeship broker` runs (TCP_NODELAY on)
    root, v1, v2 = make_release_chain(tmp)
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                               broker.url, "--releases", str(v1), str(v2)],
                              stderr=subprocess.DEVNULL)
    agents: list[Any] = []
    try:
        ort_row, agent = footprint_run("onnxruntime", tmp / "ort", broker.url,
                                       FIXTURES / "mobilenet.onnx", BARE, release=(root, v1))
        agents.append(agent)
        rows = [latency_rows("mobilenet fp32 onnx", FIXTURES / "mobilenet.onnx", agent.url,
                             n // 4)]
        update = update_run(broker.url, "dev-onnxruntime", v2)
        tflite = convert_mobilenet_tflite(tmp)
        lite_row, lite_agent = footprint_run("litert", tmp / "litert", broker.url, tflite,
                                             BARE_LITERT)
        agents.append(lite_agent)
        rows.append(latency_rows("mobilenet int8 tflite", tflite, lite_agent.url, n // 4))
        mlp_root, mlp_rel = single_release(tmp / "mlp", FIXTURES / "mlp.onnx")
        _, mlp_agent = footprint_run("mlp", tmp / "mlp", broker.url, FIXTURES / "mlp.onnx",
                                     BARE, release=(mlp_root, mlp_rel))
        agents.append(mlp_agent)
        rows.insert(0, latency_rows("mlp fp32 onnx", FIXTURES / "mlp.onnx", mlp_agent.url, n))
        attacks = attack_rows(mlp_agent)
    finally:
        for a in agents:
            a.terminate()
        server.terminate()
        server.wait()
        broker.stop()
    footprint = [ort_row, lite_row]
    print_machine()
    print_table(rows, title="local API vs in-process Model.predict (ms)")
    print_table(footprint, title="agent footprint vs bare runtime process (mobilenet)")
    print_table([update], title="OTA update of mobilenet over loopback MQTT")
    print_table(attacks, title="local API under attack (mlp agent)")
    # "footprint" stays the onnxruntime row (what the plot reads); every runtime is listed too
    path = write_result("agent", {"latency": rows, "footprint": ort_row,
                                  "footprint_by_runtime": footprint, "update": update,
                                  "attacks": attacks},
                        out_dir=args.out)
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
