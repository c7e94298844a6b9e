"""Runtime latency of one model in its three forms, in one run on this machine:
fp32 ONNX and int8 ONNX in onnxruntime, int8 TFLite in LiteRT (XNNPACK, the default).

For every fixture model (tests/fixtures) it runs ``edgeship convert`` (the CLI, as a user
would) to get model.int8.onnx and model.int8.tflite, then times single-sample inference
of each form with the runtime's own API (no edgeship wrapper in the timed loop) at 1 and
2 threads, and reports p50 latency, the ratios to fp32 ONNX, size and eval accuracy.
Numbers from a shared machine are noisy: read the ratios within one run.

Usage: ``python hw-bench/bench_runtimes.py [--models cnn,mlp,mobilenet] [--n 300]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, quick, timed, write_result

FIXTURES = ROOT / "tests" / "fixtures"


def convert(name: str, out: Path) -> Path:
    cmd = [sys.executable, "-m", "edgeship", "convert", str(FIXTURES / f"{name}.onnx"),
           "--calib", str(FIXTURES / f"{name}_calib.npz"), "-o", str(out),
           "--format", "onnx,tflite"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def litert_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, labels: np.ndarray) -> float:
    y = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    pred = (y[:, 0] > 0.5).astype(int) if y.shape[1] == 1 else y.argmax(1)
    return round(float(np.mean(pred == labels)) * 100.0, 2)


def bench_model(name: str, work: Path, n: int, threads: tuple[int, ...]) -> list[dict[str, Any]]:
    out = convert(name, work / name)
    forms = {
        "fp32_onnx": (FIXTURES / f"{name}.onnx", ort_runner),
        "int8_onnx": (out / "model.int8.onnx", ort_runner),
        "int8_tflite": (out / "model.int8.tflite", litert_runner),
    }
    ev = np.load(FIXTURES / f"{name}_eval.npz")
    x = ev[next(k for k in ev.files if k != "label")].astype(np.float32)
    labels = ev["label"]
    rows = []
    for t in threads:
        runners = {form: make(path, t) for form, (path, make) in forms.items()}
        sample = x[:1]
        lat = {form: timed(lambda r=run, s=sample: r(s), n=n, warmup=max(10, n // 10))
               for form, run in runners.items()}
        base = lat["fp32_onnx"]["p50_ms"]
        row: dict[str, Any] = {"model": name, "threads": t}
        for form in forms:
            row[f"{form}_p50_ms"] = lat[form]["p50_ms"]
        for form in ("int8_onnx", "int8_tflite"):
            row[f"{form}_ratio"] = round(lat[form]["p50_ms"] / base, 3)
        if t == threads[0]:
            for form, (path, _) in forms.items():
                row[f"{form}_bytes"] = path.stat().st_size
                row[f"{form}_acc"] = accuracy(runners[form], x, labels)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp,mobilenet")
    parser.add_argument("--n", type=int, default=60 if quick() else 400)
    args = parser.parse_args(argv)
    print_machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-rt-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), Path(tmp), args.n, (1,) if quick() else (1, 2))
    cols = ["model", "threads", "fp32_onnx_p50_ms", "int8_onnx_p50_ms", "int8_tflite_p50_ms",
            "int8_onnx_ratio", "int8_tflite_ratio"]
    print_table(rows, cols, title="latency, batch 1, p50 (ratio = / fp32 ONNX)")
    size_cols = ["model", "fp32_onnx_bytes", "int8_onnx_bytes", "int8_tflite_bytes",
                 "fp32_onnx_acc", "int8_onnx_acc", "int8_tflite_acc"]
    print_table([r for r in rows if "fp32_onnx_bytes" in r], size_cols, title="size and eval accuracy (%)")
    write_result("runtimes", {"n": args.n, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
