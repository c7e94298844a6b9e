"""An LSTM (a CRNN recognizer's) stays float and becomes an unrolled float island in the
TFLite model: LiteRT agrees with onnxruntime's INT8 ONNX, and every call starts from the
initial state (no state carried between invokes). Real onnxruntime and LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, FormatsNotWritten, check_edgetpu, convert
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(3)
STEPS, FEAT, HIDDEN = 12, 8, 6


def _f32(name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.normal(size=shape) * scale).astype(np.float32), name)


def _crnn(path: Path, direction: str = "bidirectional", *, read_state: bool = False) -> Path:
    """Conv features [1, F, 1, T] -> [T, 1, F] -> LSTM -> [T, D*H] -> Gemm, as a CRNN."""
    dirs = 2 if direction == "bidirectional" else 1
    inits = [
        _f32("wc", (FEAT, 1, 1, 3)), _f32("bc", (FEAT,)),
        _f32("W", (dirs, 4 * HIDDEN, FEAT)), _f32("R", (dirs, 4 * HIDDEN, HIDDEN)),
        _f32("B", (dirs, 8 * HIDDEN), 0.1), _f32("h0", (dirs, 1, HIDDEN), 0.2),
        numpy_helper.from_array(np.array([STEPS, 1, FEAT], np.int64), "seq_shape"),
        numpy_helper.from_array(np.array([STEPS, dirs * HIDDEN], np.int64), "y_shape"),
        _f32("wo", (5, dirs * HIDDEN)), _f32("bo", (5,), 0.1),
    ]
    outputs = ["y", "yh"] if read_state else ["y"]
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["f"], pads=[0, 1, 0, 1]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Transpose", ["fr"], ["ft"], perm=[3, 0, 1, 2]),  # [T, 1, F, 1]
        helper.make_node("Reshape", ["ft", "seq_shape"], ["seq"]),
        helper.make_node("LSTM", ["seq", "W", "R", "B", "", "h0"], ["ys", "yh_raw"],
                         hidden_size=HIDDEN, direction=direction, name="rnn"),
        helper.make_node("Transpose", ["ys"], ["yt"], perm=[0, 2, 1, 3]),  # [T, 1, D, H]
        helper.make_node("Reshape", ["yt", "y_shape"], ["y2"]),
        helper.make_node("Gemm", ["y2", "wo", "bo"], ["y"], transB=1),
    ]
    if read_state:
        nodes.append(helper.make_node("Relu", ["yh_raw"], ["yh"]))
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, STEPS])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _convert(tmp_path: Path, model: Path) -> tuple[Path, object, np.ndarray]:
    x = RNG.uniform(-1, 1, (24, 1, 1, STEPS)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    out = tmp_path / "out"
    report = convert(model, tmp_path / "calib.npz", out, ConvertOptions(formats=("onnx", "tflite")))
    return out, report, x[16:]


@pytest.mark.parametrize("direction", ["bidirectional", "forward", "reverse"])
def test_lstm_is_a_float_island_that_agrees_with_onnxruntime(tmp_path: Path, direction: str) -> None:
    out, report, ev = _convert(tmp_path, _crnn(tmp_path / "m.onnx", direction))
    assert [f["op"] for f in report.float_ops] == ["LSTM"]
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    step = report.tflite["outputs"][0]["scale"]
    lite = Model.load(out / "model.int8.tflite")
    for i in range(len(ev)):  # one call after another: no state may carry over
        want = sess.run(None, {"x": ev[i : i + 1]})[0]
        got = lite.predict(ev[i : i + 1])
        assert np.abs(got - want).max() <= step * 1.01, i
    assert report.tflite["op_counts"]["DEQUANTIZE"] >= 1
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in report.tflite["op_counts"]  # stateful kernel
    cpu = check_edgetpu(out / "model.int8.tflite").cpu_ops
    assert "DEQUANTIZE" in {op.op for op in cpu}  # the float island runs on the CPU


def test_lstm_whose_final_state_is_read_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FormatsNotWritten, match=r"LSTM at node 'rnn'.*Y_h, Y_c"):
        _convert(tmp_path, _crnn(tmp_path / "m.onnx", read_state=True))
