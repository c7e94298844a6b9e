"""``--max-drop`` (converter/_mixed.py, _mixed_probe.py): tensor groups ranked by the noise
each causes, the fewest most sensitive kept float until the drop holds; exit 3 with OUT/
written when it cannot."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from conftest import run_cli  # noqa: E402
from rescaled_mlp import rescaled_mlp  # noqa: E402


def _convert(args: list[str], fmt: str = "onnx") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgeship", "convert", *args, "--format", fmt, "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_max_drop_keeps_sensitive_layers_float(tmp_path: Path) -> None:
    """The rescaled MLP without equalization loses ~60 points; --max-drop 1 keeps the
    layers that cause it float and lands within 1 point."""
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    out = tmp_path / "out"
    done = _convert(
        [
            str(model),
            "--calib",
            str(FIX / "mlp_calib.npz"),
            "-o",
            str(out),
            "--eval",
            str(FIX / "mlp_eval.npz"),
            "--no-equalize",
            "--max-drop",
            "1",
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    mixed = (
        report["mixed_precision"]
        if "mixed_precision" in report
        else report["extra"]["mixed_precision"]
    )
    assert mixed["met"] and mixed["drop_all_int8"] > 30 and mixed["drop"] <= 1.0
    assert mixed["kept_float"] and mixed["ranking"][0]["node"] == mixed["kept_float"][0]
    assert mixed["float_nodes"] >= len(mixed["kept_float"]) and mixed["int8_nodes"] >= 1
    assert report["eval"]["int8_accuracy"] >= report["eval"]["fp32_accuracy"] - 1.0
    floats = {f["node"] for f in report["float_ops"] if "--max-drop" in f["reason"]}
    assert set(mixed["kept_float"]) <= floats
    page = (out / "report.html").read_text()  # the ranking and what was kept, in the page
    assert "<h2>Mixed precision (--max-drop 1)</h2>" in page
    assert all(html.escape(node) in page for node in mixed["kept_float"])
    assert f"mixed precision ({len(mixed['kept_float'])} float)" in page


def test_unreachable_target_exits_3_with_out_written(tmp_path: Path) -> None:
    """Nothing that may go float (near-tied logits through a HardSwish, which has an int8
    TFLite kernel but no float lowering, and a TFLite is asked for): exit 3, one line, OUT/."""
    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["y"], name="hswish")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 1)) * 50 + 60 + rng.normal(size=(64, 4)) * 0.01).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    done = _convert(
        [
            str(tmp_path / "m.onnx"),
            "--calib",
            str(tmp_path / "calib.npz"),
            "-o",
            str(out),
            "--max-drop",
            "0.5",
        ],
        fmt="onnx,tflite",
    )
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and "--max-drop 0.5" in done.stderr
    assert (out / "model.int8.onnx").exists() and (out / "report.json").exists()


def test_summary_ends_with_the_verdict(tmp_path: Path) -> None:
    done = run_cli(FIX / "cnn.onnx", "--calib", FIX / "cnn_calib.npz", "-o", tmp_path / "o",
                   "--eval", FIX / "cnn_eval.npz", "--format", "onnx", "--max-drop", "0.5")
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: accuracy ")
    assert "target --max-drop 0.5 points of accuracy on --eval (400 samples): met at " in last
    assert " of " in last and " nodes kept float" in last
    # the guard measured equalization and kept the plain cnn (no gain on calibration samples)
    assert last.endswith("steps: learned rounding, minmax ranges")  # the default steps
    page = (tmp_path / "o" / "report.html").read_text()
    assert page.rstrip().endswith(f'<p id="verdict">{html.escape(last)}</p></body></html>')
