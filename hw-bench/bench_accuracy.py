"""Accuracy-step ablation (issue 15): each of edgeship's accuracy steps on and off, on the
fixture models and the rescaled MLP (tests/fixtures/rescaled_mlp.py).

    python hw-bench/bench_accuracy.py

Per model and configuration: fp32 and INT8 eval accuracy of the QDQ ONNX (onnxruntime)
and of the TFLite (LiteRT), top-1 agreement and output SQNR on the whole eval set, and
the conversion time. Writes results/accuracy.json. The real-model half of the ablation is
``hw-bench/bench_realworld.py`` with ``EDGESHIP_BENCH_CONVERT_ARGS`` (see the README).
"""

from __future__ import annotations

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
CONFIGS: dict[str, dict[str, bool]] = {
    "none": {"equalize": False, "bias_correction": False},
    "cle": {"equalize": True, "bias_correction": False},
    "bc": {"equalize": False, "bias_correction": True},
    "cle+bc": {"equalize": True, "bias_correction": True},
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

    data = "mlp" if name == "mlp_rescaled" else name
    model = FIX / f"{name}.onnx"
    if name == "mlp_rescaled":
        model = rescaled_mlp(FIX / "mlp.onnx", tmp / "mlp_rescaled.onnx")
    out = tmp / f"{name}-{config}"
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
    }


def main() -> None:
    print_machine()
    with tempfile.TemporaryDirectory() as d:
        rows = [bench(m, c, Path(d)) for m in MODELS for c in CONFIGS]
    print_table(rows, title="accuracy steps on/off (eval set; SQNR of the QDQ ONNX output)")
    write_result("accuracy", {"rows": rows, "command": "python hw-bench/bench_accuracy.py"})


if __name__ == "__main__":
    main()
