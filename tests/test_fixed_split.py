"""A YOLOX-style head: Concat(box offsets and log sizes, Sigmoid objectness, Sigmoid class
score) whose ranges are close enough to stay int8. The Sigmoid outputs keep their fixed
1/256 parameters and the Concat requantizes them into its own calibrated ones, instead of
the whole group taking the Sigmoid's [0, 1) and clamping every box value. Real onnxruntime
and LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, _plan, convert
from edgeship.converter._fixed_split import Split, split_fixed_inputs
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

CELLS = 64  # 8 x 8 grid cells


def _f32(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _yolox_head(path: Path) -> Path:
    """Conv features -> raw box regression (4 channels, about -3..3), Sigmoid objectness
    and class score -> Concat -> Reshape, as YOLOX ends each level."""
    rng = np.random.default_rng(11)
    inits = [_f32("w1", rng.normal(size=(8, 3, 3, 3)) * 0.5), _f32("b1", np.zeros(8)),
             _f32("wb", rng.normal(size=(4, 8, 1, 1)) * 0.4), _f32("bb", [-0.5, 0.5, -1, 1]),
             _f32("wo", rng.normal(size=(1, 8, 1, 1)) * 0.8),
             _f32("wc", rng.normal(size=(1, 8, 1, 1)) * 0.8),
             numpy_helper.from_array(np.array([1, 6, CELLS], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["f"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Conv", ["fr", "wb", "bb"], ["box"]),
        helper.make_node("Conv", ["fr", "wo"], ["ol"]),
        helper.make_node("Sigmoid", ["ol"], ["obj"]),
        helper.make_node("Conv", ["fr", "wc"], ["cl"]),
        helper.make_node("Sigmoid", ["cl"], ["cls"]),
        helper.make_node("Concat", ["box", "obj", "cls"], ["det"], axis=1),
        helper.make_node("Reshape", ["det", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "yolox", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, CELLS])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _data(path: Path, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0, 1, (n, 3, 16, 16)).astype(np.float32)
    np.savez(path, x=x)
    return x


def _run(model_path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def _convert(tmp_path: Path) -> tuple[Path, Path, Any, np.ndarray]:
    model = _yolox_head(tmp_path / "head.onnx")
    _data(tmp_path / "calib.npz", 24, 1)
    ev = _data(tmp_path / "eval.npz", 8, 1)  # calibration samples: inside the ranges
    out = tmp_path / "out"
    report = convert(model, tmp_path / "calib.npz", out,
                     ConvertOptions(formats=("onnx", "tflite"), learned_rounding=False))
    return model, out, report, ev


def _box_range(fp32: np.ndarray) -> float:
    return float(fp32[:, :4].max() - min(fp32[:, :4].min(), 0.0))


def test_boxes_and_scores_both_keep_int8_steps(tmp_path: Path) -> None:
    model, out, report, ev = _convert(tmp_path)
    assert not report.float_ops  # ranges under 16x apart: no float tail, all int8
    fp32, int8 = _run(model, ev), _run(out / "model.int8.onnx", ev)
    assert fp32[:, :4].min() < -0.5 and fp32[:, :4].max() > 1.5  # boxes outside [0, 1)
    step = _box_range(fp32) / 255  # the Concat's own scale, from the boxes' range
    assert np.abs(fp32[:, :4] - int8[:, :4]).max() < 4 * step
    assert np.abs(fp32[:, 4:] - int8[:, 4:]).max() < 2 * step  # a score: at most ~1 step


def test_control_one_group_clamps_the_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the split the Sigmoid's fixed [0, 1) is the whole Concat's: boxes clamp."""

    def no_split(graph, rules, quantized, ranges, group_with):  # type: ignore[no-untyped-def]
        empty: Split = frozenset()
        return empty, group_with(empty)

    monkeypatch.setattr(_plan, "split_fixed_inputs", no_split)
    model, out, _, ev = _convert(tmp_path)
    fp32, int8 = _run(model, ev), _run(out / "model.int8.onnx", ev)
    assert int8[:, :4].min() >= 0.0 and int8[:, :4].max() < 1.0
    assert np.abs(fp32[:, :4] - int8[:, :4]).max() > 0.5


def test_tflite_requantizes_the_scores_like_onnx(tmp_path: Path) -> None:
    model, out, report, ev = _convert(tmp_path)
    counts = report.tflite["op_counts"]
    assert counts.get("QUANTIZE", 0) >= 2  # objectness and class score into the Concat's
    assert counts.get("DEQUANTIZE", 0) <= 1  # the float output only: no float tail
    onnx_y = _run(out / "model.int8.onnx", ev)
    lite_y = Model.load(out / "model.int8.tflite").predict(ev)
    step = _box_range(_run(model, ev)) / 255
    diff = np.abs(lite_y - onnx_y) / step
    assert diff[:, :4].max() < 0.01  # boxes: the same integers
    # scores: LiteRT's requantization rounds some one step apart (converter/_fixed_split.py)
    assert diff[:, 4:].max() < 1.5 and np.mean(diff[:, 4:] > 0.5) < 0.3


def test_split_leaves_a_sigmoid_only_concat_alone() -> None:
    """Two Sigmoid outputs concatenated fit the fixed parameters: nothing is split."""
    from edgeship.converter._ir import Graph

    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="sa"),
             helper.make_node("Sigmoid", ["x"], ["b"], name="sb"),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1, name="cat")]
    graph = helper.make_graph(
        nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "ab"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ranges = {"x": (-4.0, 4.0), "a": (0.02, 0.98), "b": (0.02, 0.98), "y": (0.02, 0.98)}
    plan = _plan.make_plan(Graph.from_model(model), ranges)
    assert len({plan.group_of[t] for t in ("a", "b", "y")}) == 1
    assert plan.params["y"] == _plan.QParams(1 / 256, -128)
    wide = dict(ranges, y=(-2.0, 2.0))  # another input would widen it: then split
    split, group_of = split_fixed_inputs(
        Graph.from_model(model), plan.rules, plan.quantized, wide,
        lambda s: _plan._groups(Graph.from_model(model), plan.rules, {}, plan.quantized, s))
    assert split == {("cat", "a"), ("cat", "b")} and group_of["y"] not in (group_of["a"], group_of["b"])
