"""A detector's output tail: Concat(boxes in pixels, scores in 0..1) stays float so that
neither drowns the other, in the INT8 ONNX and in the TFLite (DEQUANTIZE -> float
CONCATENATION), while a mid-network Concat keeps int8. Real onnxruntime and LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, _tail, check_edgetpu, convert
from edgeship.converter._tflite_float import FLOAT_RULES
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(5)
CELLS = 64  # 8 x 8 grid cells
BOX_SCALE = 320.0  # boxes in pixels of a 320 image


def _f32(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i64(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _head(path: Path, *, after_concat: list[onnx.NodeProto] | None = None,
          out_shape: list[int] | None = None) -> Path:
    """Conv features -> boxes (sigmoid x 320, pixels) and class scores (sigmoid) ->
    Reshape -> Concat on the channel axis, as a YOLO head ends."""
    inits = [_f32("w1", RNG.normal(size=(8, 3, 3, 3)) * 0.4), _f32("b1", np.zeros(8)),
             _f32("wb", RNG.normal(size=(4, 8, 1, 1)) * 0.4),
             _f32("wc", RNG.normal(size=(3, 8, 1, 1)) * 0.6), _f32("pixels", [BOX_SCALE]),
             _i64("shape_b", [1, 4, CELLS]), _i64("shape_c", [1, 3, CELLS])]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["f"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Conv", ["fr", "wb"], ["bx"]),
        helper.make_node("Sigmoid", ["bx"], ["bs"]),
        helper.make_node("Mul", ["bs", "pixels"], ["boxes4"]),
        helper.make_node("Reshape", ["boxes4", "shape_b"], ["boxes"]),
        helper.make_node("Conv", ["fr", "wc"], ["cl"]),
        helper.make_node("Sigmoid", ["cl"], ["cs"]),
        helper.make_node("Reshape", ["cs", "shape_c"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["det" if after_concat else "y"], axis=1),
        *(after_concat or []),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or [1, 7, CELLS])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _data(path: Path, n: int, seed: int) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(seed).uniform(0, 1, (n, 3, 16, 16)).astype(np.float32)
    np.savez(path, x=x)
    return path, x


def _run(model_path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def _convert(tmp_path: Path, model: Path, **opts: object) -> tuple[Path, object, np.ndarray]:
    calib, _ = _data(tmp_path / "calib.npz", 24, 1)
    _, ev = _data(tmp_path / "eval.npz", 8, 2)
    out = tmp_path / "out"
    opts.setdefault("formats", ("onnx", "tflite"))
    report = convert(model, calib, out, ConvertOptions(**opts))  # type: ignore[arg-type]
    return out, report, ev


def _score_error(fp32: np.ndarray, int8: np.ndarray) -> float:
    return float(np.abs(fp32[:, 4:] - int8[:, 4:]).max())


def test_scores_survive_next_to_pixel_boxes(tmp_path: Path) -> None:
    model = _head(tmp_path / "head.onnx")
    out, report, ev = _convert(tmp_path, model)
    fp32, int8 = _run(model, ev), _run(out / "model.int8.onnx", ev)
    floats = {f["node"]: f["reason"] for f in report.float_ops}
    concat = next(n for n in floats if n.startswith("Concat"))
    assert "output tail kept in float" in floats[concat]
    assert _score_error(fp32, int8) < 0.02  # scores keep their own 1/256 steps
    assert np.abs(fp32[:, :4] - int8[:, :4]).max() < 3.0  # pixels: a few 320/255 steps


def test_without_the_tail_one_scale_drowns_the_scores(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with the rule off, Concat shares one set of int8 parameters: the
    boxes' range (the Sigmoid's scores are requantized into it, converter/_fixed_split.py)
    rounds every score to 0 or one 320/255 step."""
    monkeypatch.setattr(_tail, "MAX_RANGE_RATIO", float("inf"))
    model = _head(tmp_path / "head.onnx")
    out, report, ev = _convert(tmp_path, model)
    assert not report.float_ops, report.float_ops
    fp32, int8 = _run(model, ev), _run(out / "model.int8.onnx", ev)
    box_error = np.abs(fp32[:, :4] - int8[:, :4]).max() / BOX_SCALE
    assert max(box_error, _score_error(fp32, int8)) > 0.3


def test_tflite_tail_agrees_with_the_int8_onnx(tmp_path: Path) -> None:
    model = _head(tmp_path / "head.onnx")
    out, report, ev = _convert(tmp_path, model)
    assert report.tflite and "skipped" not in report.tflite
    assert report.tflite["op_counts"]["DEQUANTIZE"] == 2  # boxes and scores, once each
    onnx_y = _run(out / "model.int8.onnx", ev)
    lite = Model.load(out / "model.int8.tflite")
    lite_y = lite.predict(ev)
    assert lite_y.dtype == np.float32
    box_step = BOX_SCALE / 255
    assert np.abs(lite_y[:, :4] - onnx_y[:, :4]).max() <= box_step * 1.01
    assert np.abs(lite_y[:, 4:] - onnx_y[:, 4:]).max() <= 1 / 256 + 1e-6
    edgetpu = check_edgetpu(out / "model.int8.tflite")
    assert edgetpu.cut is not None and edgetpu.cut.op == "DEQUANTIZE"


def test_ops_after_the_concat_stay_float_too(tmp_path: Path) -> None:
    after = [helper.make_node("Transpose", ["det"], ["y"], perm=[0, 2, 1])]
    model = _head(tmp_path / "head.onnx", after_concat=after, out_shape=[1, CELLS, 7])
    out, report, ev = _convert(tmp_path, model, io="int8")
    ops = {f["op"] for f in report.float_ops}
    assert ops == {"Concat", "Transpose"}
    assert report.tflite["inputs"][0]["dtype"] == "int8"
    assert report.tflite["outputs"][0]["dtype"] == "float32"  # int8 cannot hold this output
    fp32 = _run(model, ev)
    lite_y = Model.load(out / "model.int8.tflite").predict(ev)  # the SDK quantizes x
    assert np.abs(fp32[:, :, 4:] - lite_y[:, :, 4:]).max() < 0.02


def test_a_mid_network_concat_keeps_int8(tmp_path: Path) -> None:
    """Ranges far apart, but a Conv follows: float there would cost the whole network."""
    after = [helper.make_node("Unsqueeze", ["det", "axes"], ["det4"]),
             helper.make_node("Conv", ["det4", "wm"], ["y"])]
    model = _head(tmp_path / "head.onnx", after_concat=after, out_shape=[1, 2, 1, CELLS])
    m = onnx.load(model)
    m.graph.initializer.extend([_i64("axes", [2]), _f32("wm", RNG.normal(size=(2, 7, 1, 1)))])
    onnx.save(m, model)
    _, report, _ = _convert(tmp_path, model, formats=("onnx",))
    assert not [f for f in report.float_ops if f["op"] == "Concat"]


def test_every_float_tail_op_has_a_float_lowering() -> None:
    for op in ("Concat", "Reshape", "Transpose", "Mul", "Add", "Sub", "Div", "Sigmoid"):
        assert op in FLOAT_RULES
