"""Layers kept float by ``--max-drop`` in TFLite (converter/_tflite_float_layers.py): a
float Conv (plain and depthwise), Gemm and MatMul run as float ops between DEQUANTIZE and
QUANTIZE; LiteRT runs the file and agrees with onnxruntime on the QDQ ONNX."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import _calibrate
from edgeship.converter._evaluate import run_all, session
from edgeship.converter._ir import Graph
from edgeship.converter._optimize import optimize
from edgeship.converter._plan import make_plan
from edgeship.converter._quantize import build_qdq
from edgeship.converter._tflite import write_tflite

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from conftest import run_cli  # noqa: E402
from onnx_graphs import litert_rows  # noqa: E402
from rescaled_mlp import rescaled_mlp  # noqa: E402


def test_float_convs_run_in_litert_and_agree_with_the_onnx(tmp_path: Path) -> None:
    graph = Graph.from_model(onnx.load(FIX / "cnn.onnx"))
    optimize(graph)
    calib = dict(np.load(FIX / "cnn_calib.npz"))
    stats = _calibrate.collect(graph, calib, histograms=False).stats
    ranges = _calibrate.ranges(stats, "minmax", 99.999)
    convs = [n for n in graph.nodes if n.op_type == "Conv"][:2]  # a plain and a depthwise
    assert any(a.name == "group" and a.i > 1 for a in convs[1].attribute)
    acts = [c.name for n in convs for c in graph.consumers[n.output[0]] if c.op_type in ("Relu", "Clip")]
    keep = {name: "kept float by --max-drop (test)" for name in [n.name for n in convs] + acts}
    plan = make_plan(graph, ranges, keep_float=keep)
    qmodel = build_qdq(graph, plan, io="float")[0]
    onnx.save(qmodel, tmp_path / "m.onnx")
    info = write_tflite(tmp_path / "m.onnx", tmp_path / "m.tflite")
    assert info.op_counts.get("CONV_2D", 0) >= 2 and "DEPTHWISE_CONV_2D" in info.op_counts
    x = np.load(FIX / "cnn_eval.npz")["input"][:40].astype(np.float32)
    ref = run_all(session(qmodel), {"input": x}, [qmodel.graph.output[0].name])[0].reshape(len(x), -1)
    got = litert_rows(tmp_path / "m.tflite", x)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.95
    step = float(np.max(np.abs(ref))) / 127
    assert np.max(np.abs(ref - got)) <= 3 * step  # within a few int8 steps of the output


def test_max_drop_writes_a_tflite_with_the_float_layers(tmp_path: Path) -> None:
    """The rescaled MLP without equalization needs float layers under --max-drop 1: the
    TFLite is written (it was ONNX only, exit 2) and LiteRT agrees with the ONNX."""
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    out = tmp_path / "out"
    done = run_cli(model, "--calib", FIX / "mlp_calib.npz", "-o", out, "--eval",
                   FIX / "mlp_eval.npz", "--no-equalize", "--max-drop", "1", "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    mixed = report.get("mixed_precision") or report["extra"]["mixed_precision"]
    assert mixed["met"] and mixed["kept_float"]
    assert "FULLY_CONNECTED" in report["tflite"]["op_counts"]
    assert report["edgetpu"]["cpu_ops"]  # the float island runs on the CPU, and says so
    x = np.load(FIX / "mlp_eval.npz")["input"].astype(np.float32)
    q = onnx.load(out / "model.int8.onnx")
    ref = run_all(session(q), {"input": x}, [q.graph.output[0].name])[0].reshape(len(x), -1)
    got = litert_rows(out / "model.int8.tflite", x)
    assert np.mean((ref > 0.5) == (got > 0.5)) >= 0.99
    assert np.max(np.abs(ref - got)) <= 2.0 / 255
