"""Cloud-fallback latency, all in one run on this machine (ratios matter, not absolutes).

Measures, for a fixture model (default cnn) (fp32 ONNX, onnxruntime) answered in-process:

- ``local``: ``Model.predict_all`` alone (the baseline);
- ``fallback_local``: ``FallbackModel.answer`` when the policy keeps the answer local
  (the wrapper's own cost: the confidence measure and bookkeeping);
- ``fallback_cloud``: every answer escalated to ``edgeship cloud serve`` on loopback
  (local inference + a v2 round trip with binary tensors);
- ``cloud_down_breaker_open``: the cloud process is killed and the breaker is open, every
  answer is ``local-degraded`` (the issue's target: under 5 ms added);
- ``cloud_down_first_failures``: the answers that still try the dead endpoint before the
  breaker opens (a refused connection on loopback);
- ``agent_*``: the local, cloud and breaker-open paths again, through a running
  ``edgeship agent run`` (a signed release of the same model, ``[fallback]`` configured)
  asked over its v2 API with binary tensors on a keep-alive connection;
- ``cloud_client`` / ``tritonclient_cloud``: edgeship's ``CloudClient.infer`` and
  tritonclient.http against the same server (cloud round trip only, no local inference).

Usage: ``python hw-bench/bench_fallback.py [--model cnn] [--n 400] [--no-agent]
[-o hw-bench/results/fallback.json]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(HERE))

from _common import print_machine, print_table, quick, timed, write_result  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"cloud did not start on port {port}")


def run(n: int, deadline_ms: float, name: str = "cnn") -> dict[str, Any]:
    import tritonclient.http as triton
    from edgeship.sdk import CircuitBreaker, CloudClient, FallbackModel, FallbackPolicy, Model

    model = Model.load(FIXTURES / f"{name}.onnx", threads=1)
    x = {"input": np.load(FIXTURES / f"{name}_eval.npz")["input"][:1].astype(np.float32)}
    port = _free_port()
    cloud_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeship",
            "cloud",
            "serve",
            str(FIXTURES / f"{name}.onnx"),
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, Any] = {}
    try:
        _wait_for(port)
        url = f"http://127.0.0.1:{port}"
        cloud = CloudClient(url, name, deadline_ms=deadline_ms)
        breaker = CircuitBreaker(failures=3, window_s=60, cooldown_s=3600)
        keep_local = FallbackModel(model, cloud, FallbackPolicy(low_confidence=True, threshold=0.0))
        escalate = FallbackModel(
            model, cloud, FallbackPolicy(low_confidence=True, threshold=1.0), breaker
        )
        assert escalate.answer(x).source == "cloud"
        results["local"] = timed(lambda: model.predict_all(x), n)
        results["fallback_local"] = timed(lambda: keep_local.answer(x), n)
        results["fallback_cloud"] = timed(lambda: escalate.answer(x), n)
        results["cloud_client"] = timed(lambda: cloud.infer(x), n)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        inp = triton.InferInput("input", list(x["input"].shape), "FP32")
        inp.set_data_from_numpy(x["input"])
        results["tritonclient_cloud"] = timed(lambda: client.infer(name, [inp]), n)
        client.close()
    finally:
        cloud_proc.terminate()
        cloud_proc.wait(timeout=10)
    first = [escalate.answer(x) for _ in range(breaker.failures)]
    failing_ms = [a.latency_ms for a in first]
    assert breaker.state == "open" and {a.source for a in first} == {"local-degraded"}
    results["cloud_down_first_failures"] = {
        "n": len(failing_ms),
        "max_ms": round(max(failing_ms), 4),
    }
    results["cloud_down_breaker_open"] = timed(lambda: escalate.answer(x), n)
    assert escalate.answer(x).source == "local-degraded"
    return results


# ---------------------------------------------------------------------------- through the agent


def _release(tmp: Path, name: str) -> tuple[Path, Path]:
    """A signed v1.0.0 release of the fixture (golden from onnxruntime) and its root.pub."""
    import onnxruntime as ort
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release

    KeyDir(tmp / "keys").init()
    x = np.load(FIXTURES / f"{name}_eval.npz")["input"][:1].astype(np.float32)
    y = ort.InferenceSession(str(FIXTURES / f"{name}.onnx")).run(None, {"input": x})[0]
    np.savez(tmp / "golden.npz", input=x, output=y, atol=np.float32(1e-3))
    out = tmp / "rel"
    Release.build(FIXTURES / f"{name}.onnx", version="1.0.0", keydir=tmp / "keys", out=out,
                  golden=tmp / "golden.npz", model_name=name)  # fmt: skip
    return out, tmp / "keys" / "root.pub"


def _start_agent(tmp: Path, name: str, rel: Path, root: Path, cloud_port: int, confidence: float):
    port = _free_port()
    cfg = tmp / f"agent-{port}.toml"
    cfg.write_text(
        f'device_id = "bench"\nfleet = "bench"\ndata_dir = "{tmp / f"data-{port}"}"\n'
        f'root_key = "{root}"\n[broker]\nurl = "mqtt://127.0.0.1:{_free_port()}"\n'
        f'[model]\nname = "{name}"\nthreads = 1\ninitial = "{rel}"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        f'[fallback]\nurl = "http://127.0.0.1:{cloud_port}"\ndeadline_ms = 300\n'
        f'policy = ["no_model", "on_error", "low_confidence"]\nconfidence = {confidence}\n'
        "failures = 3\ncooldown_s = 3600\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "agent", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    end = time.monotonic() + 60
    while time.monotonic() < end:  # serving v1 locally, not only "ready" thanks to the cloud
        conn.request("GET", f"/v2/models/{name}")
        if json.loads(conn.getresponse().read()).get("versions") == ["1.0.0"]:
            return proc, conn
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("agent never served v1.0.0")


def _agent_ask(conn: http.client.HTTPConnection, name: str, x: dict[str, np.ndarray]) -> str:
    from edgeship.sdk.serving._v2 import HEADER_LENGTH, decode_response, encode_request

    body, headers = encode_request(x)
    conn.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
    reply = conn.getresponse()
    data = reply.read()
    length = reply.headers.get(HEADER_LENGTH)
    return str(decode_response(data, int(length) if length else None).parameters["source"])


def run_agent(n: int, name: str) -> dict[str, Any]:
    """The same three paths through a running agent's v2 API (binary tensors, keep-alive)."""
    x = {"input": np.load(FIXTURES / f"{name}_eval.npz")["input"][:1].astype(np.float32)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rel, root = _release(tmp, name)
        cloud_port = _free_port()
        cloud_proc = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "cloud", "serve", str(FIXTURES / f"{name}.onnx"),
             "--port", str(cloud_port), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        agents = []
        try:
            _wait_for(cloud_port)
            keep = _start_agent(tmp, name, rel, root, cloud_port, 0.0)
            agents.append(keep[0])
            escalate = _start_agent(tmp, name, rel, root, cloud_port, 1.0)
            agents.append(escalate[0])
            assert _agent_ask(keep[1], name, x) == "local"
            assert _agent_ask(escalate[1], name, x) == "cloud"
            results["agent_local"] = timed(lambda: _agent_ask(keep[1], name, x), n)
            results["agent_cloud"] = timed(lambda: _agent_ask(escalate[1], name, x), n)
            cloud_proc.terminate()
            cloud_proc.wait(timeout=10)
            sources = [_agent_ask(escalate[1], name, x) for _ in range(3)]
            assert sources == ["local-degraded"] * 3
            results["agent_cloud_down_breaker_open"] = timed(
                lambda: _agent_ask(escalate[1], name, x), n
            )
        finally:
            cloud_proc.kill()
            for proc in agents:
                proc.terminate()
                proc.wait(timeout=10)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    local, cloud, down = (
        results[k] for k in ("local", "fallback_cloud", "cloud_down_breaker_open")
    )
    wrapped = results["fallback_local"]
    summary = {
        "added_when_cloud_down_p50_ms": round(down["p50_ms"] - local["p50_ms"], 4),
        "added_when_cloud_down_p99_ms": round(down["p99_ms"] - local["p99_ms"], 4),
        "target_added_when_down_ms": 5.0,
        "wrapper_overhead_p50_ms": round(wrapped["p50_ms"] - local["p50_ms"], 4),
        "cloud_vs_local_p50_ratio": round(cloud["p50_ms"] / local["p50_ms"], 2),
        "cloud_vs_local_p99_ratio": round(cloud["p99_ms"] / local["p99_ms"], 2),
        "down_vs_local_p50_ratio": round(down["p50_ms"] / local["p50_ms"], 2),
        "edgeship_client_vs_tritonclient_p50_ratio": round(
            results["cloud_client"]["p50_ms"] / results["tritonclient_cloud"]["p50_ms"], 2
        ),
    }
    if "agent_local" in results:
        a_local, a_cloud = results["agent_local"], results["agent_cloud"]
        a_down = results["agent_cloud_down_breaker_open"]
        summary.update({
            "agent_added_when_cloud_down_p50_ms": round(a_down["p50_ms"] - a_local["p50_ms"], 4),
            "agent_added_when_cloud_down_p99_ms": round(a_down["p99_ms"] - a_local["p99_ms"], 4),
            "agent_cloud_vs_local_p50_ratio": round(a_cloud["p50_ms"] / a_local["p50_ms"], 2),
            "agent_down_vs_local_p50_ratio": round(a_down["p50_ms"] / a_local["p50_ms"], 2),
        })  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100 if quick() else 400)
    parser.add_argument("--model", choices=["cnn", "mlp", "mobilenet"], default="cnn")
    parser.add_argument("--deadline-ms", type=float, default=300)
    parser.add_argument("--no-agent", action="store_true", help="Skip the agent measurements.")
    args = parser.parse_args()
    print_machine()
    results = run(args.n, args.deadline_ms, args.model)
    if not args.no_agent:
        results.update(run_agent(args.n, args.model))
    summary = summarize(results)
    print_table([{"path": k, **v} for k, v in results.items()],
                ["path", "n", "p50_ms", "p99_ms", "mean_ms", "max_ms"],
                title=f"answer latency, {args.model}, deadline {args.deadline_ms:g} ms")
    print_table([{"measure": k, "value": v} for k, v in summary.items()], title="summary")
    write_result("fallback", {
        "model": f"tests/fixtures/{args.model}.onnx (fp32, onnxruntime, 1 thread), batch 1",
        "deadline_ms": args.deadline_ms,
        "results": results,
        "summary": summary,
    })


if __name__ == "__main__":
    main()
