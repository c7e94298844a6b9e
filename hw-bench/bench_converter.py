"""Converter benchmark: edgeship vs onnxruntime.quantization.quantize_static (QDQ,
per-channel, int8 activations and weights, MinMax) on the same models and calibration
data, in one run.

    python hw-bench/bench_converter.py            # full run
    EDGESHIP_BENCH_QUICK=1 python hw-bench/bench_converter.py

Prints, per fixture model: accuracy (fp32, ort-int8, edgeship-int8) on its eval set,
size of each int8 model vs fp32, edgeship/ort conversion time and int8 latency ratios
(single sample, one thread), and a second table comparing edgeship's calibration
methods (what chose the default). Writes results/converter.json.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    ort_quantize_static,
    print_machine,
    print_table,
    quick,
    timed,
    write_result,
)

FIX = ROOT / "tests" / "fixtures"
MODELS = ("cnn", "mlp", "mobilenet")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = _session(path)
    name = sess.get_inputs()[0].name
    hits = 0
    for i in range(len(x)):
        p = sess.run(None, {name: x[i : i + 1]})[0].reshape(-1)
        pred = int(p[0] > 0.5) if p.size == 1 else int(p.argmax())
        hits += pred == int(y[i])
    return 100.0 * hits / len(x)


def latency_ms(path: Path, x: np.ndarray, n: int) -> float:
    sess = _session(path)
    name = sess.get_inputs()[0].name
    return timed(lambda: sess.run(None, {name: x[:1]}), n)["p50_ms"]


def ort_quantize(model: Path, calib: np.ndarray, out: Path) -> None:
    ort_quantize_static(model, out, [{"input": calib[i : i + 1]} for i in range(len(calib))])


def edgeship_quantize(model: Path, calib_path: Path, out: Path, method: str = "minmax",
                      eval_path: Path | None = None) -> Path:
    from edgeship.converter import ConvertOptions, convert

    opts = ConvertOptions(formats=("onnx",), calibration=method)
    convert(model, calib_path, out, opts, eval_path=eval_path)
    return out / "model.int8.onnx"


def median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, tmp: Path, repeats: int, lat_n: int) -> dict[str, Any]:
    model, calib_path = FIX / f"{name}.onnx", FIX / f"{name}_calib.npz"
    calib = np.load(calib_path)["input"]
    ev = np.load(FIX / f"{name}_eval.npz")
    x, y = ev["input"], ev["label"]
    ort_out, es_dir = tmp / f"{name}.ort.onnx", tmp / f"{name}.edgeship"
    ort_quantize(model, calib, ort_out)  # warm-up: imports, caches
    edgeship_quantize(model, calib_path, es_dir)
    t_ort = median_seconds(lambda: ort_quantize(model, calib, ort_out), repeats)
    t_es = median_seconds(lambda: edgeship_quantize(model, calib_path, es_dir), repeats)
    es_out = es_dir / "model.int8.onnx"
    fp32 = model.stat().st_size
    row = {
        "model": name,
        "fp32_acc": accuracy(model, x, y),
        "ort_int8_acc": accuracy(ort_out, x, y),
        "edgeship_int8_acc": accuracy(es_out, x, y),
        "ort_size_ratio": ort_out.stat().st_size / fp32,
        "edgeship_size_ratio": es_out.stat().st_size / fp32,
        "ort_convert_s": t_ort,
        "edgeship_convert_s": t_es,
        "convert_time_ratio": t_es / t_ort,
        "ort_int8_ms": latency_ms(ort_out, x, lat_n),
        "edgeship_int8_ms": latency_ms(es_out, x, lat_n),
        "eval_samples": len(x),
    }
    row["int8_latency_ratio"] = row["edgeship_int8_ms"] / row["ort_int8_ms"]
    row["targets_met"] = (
        row["edgeship_int8_acc"] >= row["ort_int8_acc"] - 0.2
        and row["edgeship_int8_acc"] >= row["fp32_acc"] - 0.5
        and row["convert_time_ratio"] <= 2.0
        and (name != "mobilenet" or row["edgeship_size_ratio"] <= 0.27)
    )
    return row


def bench_methods(name: str, tmp: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    for method in ("minmax", "percentile", "mse"):
        out = edgeship_quantize(FIX / f"{name}.onnx", FIX / f"{name}_calib.npz", tmp / f"{name}.{method}",
                                method, eval_path=FIX / f"{name}_eval.npz")
        report = json.loads((out.parent / "report.json").read_text())
        row[f"{method}_acc"] = report["eval"]["int8_accuracy"]
        row[f"{method}_agree"] = report["eval"]["agreement"]
        row[f"{method}_sqnr_db"] = report["eval"]["output_sqnr_db"]
    return row


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static warns on every call
    repeats, lat_n = (1, 50) if quick() else (5, 300)
    print_machine()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [bench_model(m, tmp, repeats, lat_n) for m in MODELS]
        methods = [bench_methods(m, tmp) for m in MODELS]
    print_table(rows, columns=["model", "fp32_acc", "ort_int8_acc", "edgeship_int8_acc", "ort_size_ratio",
                               "edgeship_size_ratio", "convert_time_ratio", "int8_latency_ratio", "targets_met"],
                title="edgeship vs onnxruntime quantize_static (QDQ, per-channel, int8)")
    print_table(rows, columns=["model", "ort_convert_s", "edgeship_convert_s", "ort_int8_ms", "edgeship_int8_ms",
                               "eval_samples"], title="absolute times")
    print_table(methods, title="edgeship calibration methods (eval accuracy %, top-1 agreement %, output SQNR dB on the eval set)")
    write_result("converter", {"rows": rows, "calibration_methods": methods,
                               "command": "python hw-bench/bench_converter.py"})


if __name__ == "__main__":
    main()
