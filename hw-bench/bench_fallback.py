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
- ``cloud_client`` / ``tritonclient_cloud``: edgeship's ``CloudClient.infer`` and
  tritonclient.http against the same server (cloud round trip only, no local inference).

Usage: ``python hw-bench/bench_fallback.py [--model cnn] [--n 400] [-o hw-bench/results/fallback.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


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


def _timed(fn: Callable[[], Any], n: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    arr = np.array(samples)
    return {
        "n": n,
        "p50_ms": round(float(np.percentile(arr, 50)), 4),
        "p99_ms": round(float(np.percentile(arr, 99)), 4),
        "mean_ms": round(float(arr.mean()), 4),
    }


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
        results["local"] = _timed(lambda: model.predict_all(x), n)
        results["fallback_local"] = _timed(lambda: keep_local.answer(x), n)
        results["fallback_cloud"] = _timed(lambda: escalate.answer(x), n)
        results["cloud_client"] = _timed(lambda: cloud.infer(x), n)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        inp = triton.InferInput("input", list(x["input"].shape), "FP32")
        inp.set_data_from_numpy(x["input"])
        results["tritonclient_cloud"] = _timed(lambda: client.infer(name, [inp]), n)
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
    results["cloud_down_breaker_open"] = _timed(lambda: escalate.answer(x), n)
    assert escalate.answer(x).source == "local-degraded"
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    local, cloud, down = (
        results[k] for k in ("local", "fallback_cloud", "cloud_down_breaker_open")
    )
    wrapped = results["fallback_local"]
    return {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--model", choices=["cnn", "mlp", "mobilenet"], default="cnn")
    parser.add_argument("--deadline-ms", type=float, default=300)
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "hw-bench/results/fallback.json"
    )
    args = parser.parse_args()
    results = run(args.n, args.deadline_ms, args.model)
    doc = {
        "bench": "fallback",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": f"tests/fixtures/{args.model}.onnx (fp32, onnxruntime, 1 thread), batch 1",
        "deadline_ms": args.deadline_ms,
        "results": results,
        "summary": summarize(results),
    }
    _atomic_write(args.output, json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary"], indent=2))


if __name__ == "__main__":
    main()
