"""Op-by-op lowering cases on QDQ models written by hand (onnx.helper) in the converter's
contract: standalone Relu/Clip, layout changes around Reshape, channel Softmax, padded
pools, constants in Add/Mul, int8 graph edges, and the cases TFLite cannot express.
Each model runs in onnxruntime and, written as TFLite, in LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._quantize import _tie_exact_scale, ties_round_to_even
from edgeship.converter._tflite import write_tflite
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

from edgeship import UnsupportedOpError

RNG = np.random.default_rng(11)
OUT_SCALE = 0.05


class QdqBuilder:
    """Float ops between QuantizeLinear/DequantizeLinear pairs, weights as int8 + DQ."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def qdq(self, name: str, scale: float = 0.05, zp: int = 0, out: str | None = None) -> str:
        s = self._const(f"{name}_s", np.array(scale, np.float32))
        z = self._const(f"{name}_z", np.array(zp, np.int8))
        self.nodes.append(helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_q"]))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [out or f"{name}_dq"]))
        return out or f"{name}_dq"

    def weight(self, name: str, w: np.ndarray, axis: int | None = 0) -> tuple[str, np.ndarray]:
        if axis is None:
            scales = np.array([np.abs(w).max() / 127], np.float32)
            q = np.round(w / scales[0])
        else:
            scales = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127).astype(np.float32)
            q = np.round(w / scales.reshape(-1, *[1] * (w.ndim - 1)))
        self._const(f"{name}_q", q.astype(np.int8))
        self._const(f"{name}_s", scales if axis is not None else np.array(scales[0], np.float32))
        zeros = np.zeros_like(scales, np.int8) if axis is not None else np.array(0, np.int8)
        self._const(f"{name}_z", zeros)
        attrs = {"axis": axis} if axis is not None else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                                           [name], **attrs))
        return name, scales

    def conv(self, x: str, x_scale: float, cin: int, cout: int, out: str, **attrs: object) -> str:
        w, scales = self.weight(f"{out}_w", RNG.normal(size=(cout, cin, 3, 3)).astype(np.float32) * 0.3)
        bias = self._const(f"{out}_b_q", RNG.integers(-500, 500, cout).astype(np.int32))
        self._const(f"{out}_b_s", (scales * x_scale).astype(np.float32))
        self._const(f"{out}_b_z", np.zeros(cout, np.int32))
        self.nodes.append(helper.make_node("DequantizeLinear", [bias, f"{out}_b_s", f"{out}_b_z"],
                                           [f"{out}_b"], axis=0))
        self.nodes.append(helper.make_node("Conv", [x, w, f"{out}_b"], [out], kernel_shape=[3, 3], **attrs))
        return out

    def op(self, op_type: str, inputs: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{out}", **attrs))
        return out

    def save(self, path: Path, x_shape: list[int], *, x_type: int = TensorProto.FLOAT,
             y_type: int = TensorProto.FLOAT) -> Path:
        graph = helper.make_graph(self.nodes, path.stem,
                                  [helper.make_tensor_value_info("x", x_type, x_shape)],
                                  [helper.make_tensor_value_info("y", y_type, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, path)  # onnxruntime checks it when it loads
        return path


def _compare(path: Path, tmp: Path, x: np.ndarray, *, max_steps: float = 1.0) -> dict[str, int]:
    info = write_tflite(path, tmp / "m.tflite")
    ref = Model.load(path).predict(x)
    got = Model.load(tmp / "m.tflite").predict(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= max_steps * OUT_SCALE * 1.001
    return info.op_counts


def test_standalone_relu_clip_and_channel_softmax(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    c = b.qdq(b.conv(x, 0.04, 3, 6, "c", pads=[1, 1, 1, 1]), 0.08)
    r = b.qdq(b.op("Relu", [c], "r"), 0.04, -128)
    lo = b._const("lo", np.array(0.0, np.float32))
    hi = b._const("hi", np.array(6.0, np.float32))
    k = b.qdq(b.op("Clip", [r, lo, hi], "k"), 6 / 255, -128)
    b.qdq(b.op("Softmax", [k], "s", axis=1), 1 / 256, -128, out="y")
    path = b.save(tmp_path / "act.onnx", [1, 3, 8, 8])
    x_val = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    info = write_tflite(path, tmp_path / "act.tflite")
    assert info.op_counts["RELU"] == 1 and info.op_counts["RELU6"] == 1
    # softmax over channels runs in NHWC on the last axis: one transpose in, one out
    assert info.op_counts["TRANSPOSE"] == 2 and info.op_counts["SOFTMAX"] == 1
    ref = Model.load(path).predict(x_val)
    got = Model.load(tmp_path / "act.tflite").predict(x_val)
    assert np.abs(got - ref).max() <= 2 / 256 + 1e-6


def test_reshape_to_4d_then_conv_and_padded_pools(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    shape = b._const("shape", np.array([1, 2, 8, 8], np.int64))
    r = b.qdq(b.op("Reshape", [x, shape], "r"), 0.04)  # logical NCHW -> conv wants NHWC
    c = b.qdq(b.conv(r, 0.04, 2, 4, "c", pads=[1, 1, 1, 1]), 0.1, -128)
    a = b.qdq(b.op("AveragePool", [c], "a", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                   count_include_pad=1), 0.1, -128)
    m = b.qdq(b.op("MaxPool", [a], "m", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]), 0.1, -128)
    g = b.qdq(b.op("GlobalAveragePool", [m], "g"), 0.1, -128)
    b.qdq(b.op("Flatten", [g], "f"), 0.1, -128, out="y")
    path = b.save(tmp_path / "pools.onnx", [1, 128])
    ops = _compare(path, tmp_path, RNG.normal(size=(6, 128)).astype(np.float32), max_steps=1.0)
    assert ops["PAD"] == 2  # count_include_pad=1 and MaxPool's explicit pads: PAD + VALID
    assert ops["AVERAGE_POOL_2D"] == 1 and ops["MAX_POOL_2D"] == 1
    assert ops["MEAN"] == 1  # GlobalAveragePool: MEAN over H, W (rounds halfway to even)


def test_halfway_scale_search() -> None:
    # the mobilenet fixture's pooled scale: onnxruntime's float32 multiplier s / (s * 36)
    # is one ulp under 1/36, so a halfway average just under k + 0.5 rounds down
    assert not ties_round_to_even(0.111721470952034, 36, -2)
    moved = _tie_exact_scale(0.111721470952034, 36, -2)
    assert moved is not None and ties_round_to_even(moved, 36, -2)
    assert abs(moved / 0.111721470952034 - 1) < 1e-6
    assert ties_round_to_even(0.111721470952034, 64, -2)  # a power of two divides exactly


def test_global_average_pool_halfway_averages_match_onnxruntime(tmp_path: Path) -> None:
    """Through the converter: a 6x6 GlobalAveragePool fed int8 values whose channel sums
    are exactly halfway between two averages gives the same int8 in onnxruntime and in
    LiteRT: the pooled scale is moved off the input's (converter/_pool_ties.py), so each
    half lands a little away from zero and both round it there."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["y"], name="flat")], "gap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "gap.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.normal(size=(16, 32, 6, 6)).astype(np.float32) * 3)
    convert(tmp_path / "gap.onnx", tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    int8 = onnx.load(tmp_path / "out" / "model.int8.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    scale, zp = float(inits["x_s"]), int(inits["x_z"]) - 128  # stored as uint8 = int8 + 128
    assert ties_round_to_even(scale, 36, zp)
    q = RNG.integers(-128 - zp + 36, 127 - zp - 36, size=(24, 32, 36))  # q - zero point
    q[..., 0] += 18 - q.sum(-1) % 36  # every channel sum is exactly halfway
    x = (scale * q.astype(np.float32)).reshape(24, 32, 6, 6)
    ref = Model.load(tmp_path / "out" / "model.int8.onnx").predict(x)
    got = Model.load(tmp_path / "out" / "model.int8.tflite").predict(x)
    average = q.sum(-1) / 36
    expected = np.sign(average) * np.floor(np.abs(average) + 0.5)  # halves away from zero
    assert np.abs(ref / scale - expected).max() < 1e-3
    np.testing.assert_array_equal(got, ref)


def test_constants_in_add_and_mul(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    c = b.qdq(b.conv(x, 0.04, 3, 4, "c", pads=[1, 1, 1, 1]), 0.08)
    b._const("k_q", np.array([[[10]], [[-20]], [[30]], [[40]]], np.int8))  # [4,1,1]
    b._const("k_s", np.array(0.02, np.float32))
    b._const("k_z", np.array(0, np.int8))
    b.nodes.append(helper.make_node("DequantizeLinear", ["k_q", "k_s", "k_z"], ["k"]))
    a = b.qdq(b.op("Add", [c, "k"], "a"), 0.08)
    b.qdq(b.op("Mul", [a, "k"], "mm"), OUT_SCALE, out="y")
    path = b.save(tmp_path / "consts.onnx", [1, 3, 6, 6])
    ops = _compare(path, tmp_path, RNG.normal(size=(4, 3, 6, 6)).astype(np.float32), max_steps=2.0)
    assert ops["ADD"] == 1 and ops["MUL"] == 1


def test_int8_graph_edges_and_per_tensor_matmul(tmp_path: Path) -> None:
    """A model converted with io="int8": int8 input straight into DequantizeLinear, the
    output taken from a QuantizeLinear."""
    b = QdqBuilder()
    b._const("x_s", np.array(0.05, np.float32))
    b._const("x_z", np.array(3, np.int8))
    b.nodes.append(helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["x_dq"]))
    w, _ = b.weight("w", RNG.normal(size=(16, 5)).astype(np.float32), axis=None)
    mm = b.op("MatMul", ["x_dq", w], "mm")
    b._const("y_s", np.array(0.1, np.float32))
    b._const("y_z", np.array(-4, np.int8))
    b.nodes.append(helper.make_node("QuantizeLinear", [mm, "y_s", "y_z"], ["y"]))
    path = b.save(tmp_path / "io8.onnx", [1, 16], x_type=TensorProto.INT8, y_type=TensorProto.INT8)
    info = write_tflite(path, tmp_path / "io8.tflite", io="int8")
    assert info.inputs[0] == {"name": "x", "shape": [1, 16], "dtype": "int8", "scale": pytest.approx(0.05),
                              "zero_point": 3}
    assert info.op_counts == {"FULLY_CONNECTED": 1}
    ref = Model.load(path)  # onnxruntime: Model reads the int8 edges' Q/DQ parameters
    assert (ref.inputs[0].dtype, ref.outputs[0].dtype) == ("float32", "float32")
    x = (RNG.integers(-128, 128, size=(5, 16)).astype(np.float32) - 3) * 0.05  # on the grid
    got = Model.load(tmp_path / "io8.tflite").predict(x)
    assert np.abs(got - ref.predict(x)).max() <= 0.1 * 1.001


def test_ops_tflite_cannot_express(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04, 3)  # ceil_mode pads past the input: exact only at zero point -128
    b.qdq(b.op("MaxPool", [x], "m", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 0.04, 3, out="y")
    path = b.save(tmp_path / "ceil.onnx", [1, 2, 5, 5])
    with pytest.raises(UnsupportedOpError, match=r"MaxPool at node 'MaxPool_m'.*ceil_mode"):
        write_tflite(path, tmp_path / "ceil.tflite")
    assert not (tmp_path / "ceil.tflite").exists()

    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    lo = b._const("lo", np.array(-0.5, np.float32))
    b.qdq(b.op("Clip", [x, lo], "k"), 0.04, out="y")
    path = b.save(tmp_path / "clip.onnx", [1, 8])
    with pytest.raises(UnsupportedOpError, match=r"Clip at node 'Clip_k': Clip\(-0.5, inf\)"):
        write_tflite(path, tmp_path / "clip.tflite")


def test_unnamed_node_is_named_by_its_output(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    b.nodes.append(helper.make_node("Exp", [x], ["t"]))  # exporters often leave names empty
    b.qdq("t", 0.05, out="y")
    path = b.save(tmp_path / "exp.onnx", [1, 8])
    with pytest.raises(UnsupportedOpError, match=r"Exp at node '\(unnamed, output t\)'"):
        write_tflite(path, tmp_path / "exp.tflite")


def test_per_channel_matmul_weights_on_the_input_axis_are_refused(tmp_path: Path) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    w, _ = b.weight("w", RNG.normal(size=(16, 5)).astype(np.float32), axis=0)  # [K, N], axis K
    b.qdq(b.op("MatMul", [x, w], "mm"), OUT_SCALE, out="y")
    path = b.save(tmp_path / "mm.onnx", [1, 16])
    with pytest.raises(UnsupportedOpError, match="MatMul at node 'MatMul_mm': per-channel weights"):
        write_tflite(path, tmp_path / "mm.tflite")
