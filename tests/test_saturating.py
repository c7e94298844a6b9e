"""A YOLOv8-style head: Concat(box logits about -2..6, class logits down to about -20)
then Split back into the box part (an output) and the class part (a Sigmoid). The class
logits below sigmoid's saturation are not told apart by the Sigmoid's int8 output, so the
group spans what its readers see (converter/_saturating.py): a finer step for the boxes
and the scores. Real onnxruntime and LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, _plan, convert
from edgeship.converter._saturating import SATURATED
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper


def _f32(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _head(path: Path) -> Path:
    rng = np.random.default_rng(5)
    inits = [_f32("w1", rng.normal(size=(8, 3, 3, 3)) * 0.5), _f32("b1", np.zeros(8)),
             _f32("wb", rng.normal(size=(4, 8, 1, 1)) * 0.6), _f32("bb", [2, 2, 1, 1]),
             _f32("wc", rng.normal(size=(2, 8, 1, 1)) * 2.0), _f32("bc", [-12, -6]),
             numpy_helper.from_array(np.array([4, 2], np.int64), "parts")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["f"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Conv", ["fr", "wb", "bb"], ["box"]),
        helper.make_node("Conv", ["fr", "wc", "bc"], ["cls"]),
        helper.make_node("Concat", ["box", "cls"], ["det"], axis=1),
        helper.make_node("Split", ["det", "parts"], ["box_out", "cls_logits"], axis=1),
        helper.make_node("Sigmoid", ["cls_logits"], ["score"]),
    ]
    outputs = [helper.make_tensor_value_info("box_out", TensorProto.FLOAT, [1, 4, 8, 8]),
               helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2, 8, 8])]
    graph = helper.make_graph(
        nodes, "v8head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _run(model_path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    runs = [sess.run(None, {"x": x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[j] for r in runs]) for j in range(2)]


def _convert(tmp_path: Path) -> tuple[Path, Path, Any, np.ndarray]:
    model = _head(tmp_path / "head.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (24, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    report = convert(model, tmp_path / "calib.npz", out,
                     ConvertOptions(formats=("onnx", "tflite"), learned_rounding=False))
    return model, out, report, x[:8]  # calibration samples: inside the ranges


def _class_logits_low(model: Path, x: np.ndarray) -> float:
    m = onnx.load(str(model))
    m.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return min(float(sess.run(["cls"], {"x": x[i : i + 1]})[0].min()) for i in range(len(x)))


def _scale(out: Path) -> float:
    import json

    return float(json.loads((out / "quant_params.json").read_text())["activations"]["det"][0])


def test_the_group_spans_what_the_sigmoid_tells_apart(tmp_path: Path) -> None:
    model, out, _, x = _convert(tmp_path)
    box32, score32 = _run(model, x)
    assert _class_logits_low(model, x) < -2 * SATURATED  # the class logits reach far below
    hi = max(float(box32.max()), 0.0)
    step = _scale(out)
    assert step == pytest.approx((hi + SATURATED) / 255, rel=0.05)  # not (hi + 20) / 255
    box8, score8 = _run(out / "model.int8.onnx", x)
    assert np.abs(box8 - box32).max() < 4 * step
    # a score: sigmoid's slope (1/4 at most) times two logit steps, plus its output step
    assert np.abs(score8 - score32).max() < 0.25 * 2 * step + 1 / 256
    lite = Model.load(out / "model.int8.tflite").predict_all({"x": x})
    assert np.abs(lite["box_out"] - box8).max() < 1.01 * step  # one step at most apart
    assert np.abs(lite["score"] - score8).max() < 1.5 / 256

def test_control_the_full_union_is_twice_as_coarse(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without reading the readers, the class logits' -20 sets the step: the box error
    grows with it."""
    monkeypatch.setattr(_plan, "read_ranges",
                        lambda graph, rules, quantized, group_of, ranges:
                        {t: ranges.get(t, (0.0, 0.0)) for t in quantized})
    model, out, _, x = _convert(tmp_path)
    box32, _ = _run(model, x)
    step = _scale(out)
    assert step > 1.5 * (max(float(box32.max()), 0.0) + SATURATED) / 255
