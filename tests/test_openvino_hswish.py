"""Hardswish blocks on a convolution's output written as one HardSwish for OpenVINO
(converter/_openvino_hswish.py): OpenVINO then runs it inside the int8 convolution, the
outputs stay within the skipped roundings of the QDQ form's, and a block whose constants
are not hardswish's, or whose inner tensor something else reads, is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter._openvino_hswish import hardswish_blocks
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
STEP = 0.05  # the convolution output's quantization step


def _block_model(three: float = 3.0, extra_reader: bool = False) -> onnx.ModelProto:
    """x [1,3,8,8] -> Q/DQ -> Conv 3x3 (int8 weights) -> Q/DQ -> Add(three) -> Q (uint8,
    6/255, clips at 6) -> DQ (1/255) -> Mul by the conv's DQ -> Q/DQ -> y, as the
    converter writes MobileNetV3's hardswish."""
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def qdq(src: str, scale: float, zero: int = 128) -> str:
        s, z = const(f"{src}_s", np.array(scale, np.float32)), const(f"{src}_z", np.array(zero, np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{src}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", s, z], [f"{src}_dq"]))
        return f"{src}_dq"

    weights = np.random.default_rng(0).integers(-90, 90, (8, 3, 3, 3)).astype(np.int8)
    nodes.append(helper.make_node("DequantizeLinear", [const("w", weights), const("w_s", np.array(0.004, np.float32))],
                                  ["w_dq"]))
    nodes.append(helper.make_node("Conv", [qdq("x", 0.03), "w_dq"], ["c"], pads=[1, 1, 1, 1], name="conv"))
    x = qdq("c", STEP)
    nodes.append(helper.make_node("DequantizeLinear", [const("three", np.array(127, np.uint8)),
                                                       const("three_s", np.array(three / 127, np.float32))], ["three_dq"]))
    nodes.append(helper.make_node("Add", [x, "three_dq"], ["g"], name="add"))
    zero = const("g_z", np.array(0, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", ["g", const("g_qs", np.array(6 / 255, np.float32)), zero], ["g_q"]))
    nodes.append(helper.make_node("DequantizeLinear", ["g_q", const("g_ds", np.array(1 / 255, np.float32)), zero], ["g_dq"]))
    nodes.append(helper.make_node("Mul", [x, "g_dq"], ["h"], name="mul"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])]
    if extra_reader:  # the conv's rounded output is also a model output
        nodes.append(helper.make_node("Identity", [x], ["c_out"]))
        outputs.append(helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [1, 8, 8, 8]))
    nodes.append(helper.make_node("Identity", [qdq("h", 0.04)], ["y"]))
    graph = helper.make_graph(nodes, "hswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_hardswish_block_becomes_a_post_op_of_the_int8_convolution(tmp_path: Path) -> None:
    model = _block_model()
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert hardswish_blocks(rewritten.graph) == 1
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "HardSwish" in ops and "Add" not in ops and "Mul" not in ops
    assert not {"g_qs", "g_ds", "three"} & {i.name for i in rewritten.graph.initializer}
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    expected, got = _ort(model, x), _ort(rewritten, x)
    assert np.abs(got - expected).max() <= 2 * STEP  # the two skipped roundings, one output step
    assert np.abs(got).max() > 10 * STEP  # not a trivially small output
    onnx.save(rewritten, str(tmp_path / "hswish.onnx"))
    compiled = ov.Core().compile_model(str(tmp_path / "hswish.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        for name in info["originalLayersNames"].astype(str).split(","):
            layers[name] = (info["layerType"].astype(str), info["runtimePrecision"].astype(str))
    assert layers["mul_hardswish"] == layers["conv"] and layers["conv"] == ("Convolution", "u8")
    result = compiled.create_infer_request().infer({0: x})
    assert np.abs(np.asarray(result[compiled.output(0)]) - got).max() <= 2 * 0.04


@pytest.mark.parametrize("change", ["not three", "read elsewhere"])
def test_a_block_that_is_not_hardswish_is_left_alone(change: str) -> None:
    model = _block_model(three=2.0) if change == "not three" else _block_model(extra_reader=True)
    before = model.SerializeToString()
    assert hardswish_blocks(model.graph) == 0
    assert model.SerializeToString() == before
