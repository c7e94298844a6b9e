"""Chains of int8 elementwise ops written as one 256-entry table for OpenVINO
(converter/_openvino_lut.py): the same numbers bit for bit, in onnxruntime (op by op) and
in OpenVINO; chains that are not a function of one byte are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter._openvino_lut import int8_tables
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
SHAPE = [1, 8, 6, 10]


def _chain_model(*, per_channel: bool = False, leak: bool = False, signed: bool = False
                 ) -> onnx.ModelProto:
    """x -> Q -> [Mul a, Add b, hardswish (Add 3, Q clips at 0..6, Mul by x), Mul c], each
    rounded to uint8 -> DQ -> Conv 1x1 -> y: PP-LCNet's block after a convolution.
    ``per_channel``: the first Mul's constant has one value per channel (not a table);
    ``leak``: an inner tensor is also a graph output (the chain cannot be cut out);
    ``signed``: int8 tensors (zero points shifted by -128) instead of uint8."""
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def qdq(src: str, name: str, scale: float, zero: int) -> str:
        zero_point = np.array(zero - 128, np.int8) if signed else np.array(zero, np.uint8)
        s, z = const(f"{name}_s", np.array(scale, np.float32)), const(f"{name}_z", zero_point)
        nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{name}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [f"{name}_dq"]))
        return f"{name}_dq"

    x = qdq("x", "x", 0.05, 128)
    a = np.full((1, 8, 1, 1), 1.3, np.float32) * (np.arange(1, 9, dtype=np.float32).reshape(1, 8, 1, 1)
                                                  if per_channel else 1)
    nodes.append(helper.make_node("Mul", [x, const("a", a if per_channel else np.array(1.3, np.float32))], ["m"]))
    m = qdq("m", "m", 0.06, 120)
    nodes.append(helper.make_node("Add", [m, const("b", np.array(0.4, np.float32))], ["ad"]))
    ad = qdq("ad", "ad", 0.06, 110)
    nodes.append(helper.make_node("Add", [ad, const("three", np.array(3.0, np.float32))], ["g"]))
    g = qdq("g", "g", 6.0 / 255, 0)
    nodes.append(helper.make_node("Mul", [ad, g], ["hs0"]))
    nodes.append(helper.make_node("Div", ["hs0", const("six", np.array(6.0, np.float32))], ["hs"]))
    hs = qdq("hs", "hs", 0.04, 20)
    nodes.append(helper.make_node("Mul", [hs, const("c", np.array(0.9, np.float32))], ["e"]))
    e = qdq("e", "e", 0.035, 25)
    w = np.random.default_rng(0).integers(-60, 60, (4, 8, 1, 1)).astype(np.int8)
    nodes.append(helper.make_node("DequantizeLinear", [const("w", w), const("w_s", np.array(0.01, np.float32))], ["w_dq"]))
    nodes.append(helper.make_node("Conv", [e, "w_dq"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 10])]
    if leak:
        outputs.append(helper.make_tensor_value_info("m_q", TensorProto.INT8 if signed else TensorProto.UINT8,
                                                     SHAPE))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


@pytest.mark.parametrize("signed", [False, True])
def test_a_chain_becomes_one_table_with_the_same_numbers(tmp_path: Path, signed: bool) -> None:
    """The table, in onnxruntime and in OpenVINO's IR (which indexes with the 8-bit
    codes themselves, an int8 code counting from the table's end when negative)."""
    from edgeship.converter._openvino_ir import IrChoice, write_ir

    generic = _chain_model(signed=signed)
    table = onnx.ModelProto.FromString(generic.SerializeToString())
    assert int8_tables(table.graph) == 1
    ops = [n.op_type for n in table.graph.node]
    assert "Gather" in ops and "Mul" not in ops and "Div" not in ops
    assert {"a", "b", "three", "six", "c"}.isdisjoint(i.name for i in table.graph.initializer)
    onnx.checker.check_model(table)
    # every input code, and more: the chain's whole domain is covered
    x = np.random.default_rng(1).uniform(-8, 8, (16, *SHAPE[1:])).astype(np.float32)
    for i in range(len(x)):
        assert np.array_equal(_ort(generic, x[i:i + 1]), _ort(table, x[i:i + 1]))
    onnx.save(table, str(tmp_path / "t.onnx"))
    xml = write_ir(tmp_path / "t.onnx", tmp_path / "t.xml", IrChoice(fused=True, amx=True))
    ir = ov.Core().read_model(str(xml))
    gather = next(op for op in ir.get_ordered_ops() if op.get_type_name() == "Gather")
    assert gather.input_value(1).get_element_type().get_type_name() == ("i8" if signed else "u8")
    onnx.save(generic, str(tmp_path / "g.onnx"))
    before, compiled = (ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                        for m in (str(tmp_path / "g.onnx"), ir))
    kinds, was = ({op.get_rt_info()["layerType"].astype(str): op.get_rt_info()["primitiveType"].astype(str)
                   for op in c.get_runtime_model().get_ordered_ops()} for c in (compiled, before))
    assert "Gather" in kinds
    # the conv after it keeps its kernel (int8 on uint8 input; OpenVINO's own choice,
    # f32, on an int8 input with a zero point)
    assert kinds["Convolution"] == was["Convolution"] and kinds["Convolution"].endswith(
        "f32" if signed else "I8")
    for i in range(4):
        np.testing.assert_allclose(compiled(x[i:i + 1])[0], _ort(generic, x[i:i + 1]), atol=1e-5)


@pytest.mark.parametrize("kind", ["per_channel", "leak"])
def test_a_chain_that_is_not_a_function_of_one_byte_is_left(kind: str) -> None:
    model = _chain_model(**{kind: True})
    before = [n.op_type for n in model.graph.node]
    count = int8_tables(model.graph)
    after = [n.op_type for n in model.graph.node]
    if kind == "per_channel":  # the per-channel Mul stays; the rest after it is a chain
        assert after.count("Mul") >= 1 and "Mul" in before
        assert count == 1 and after.count("Gather") == 1
    else:  # the leaked tensor splits it: what follows it still is one
        assert "m_q" in {o for n in model.graph.node for o in n.output}
        assert count == 1
    x = np.random.default_rng(2).uniform(-8, 8, (1, *SHAPE[1:])).astype(np.float32)
    assert np.array_equal(_ort(_chain_model(**{kind: True}), x), _ort(model, x))
