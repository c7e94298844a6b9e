"""Edge TPU compatibility check on real TFLite flatbuffers: a model the writer makes is
fully mappable; float, over-rank and unsupported ops cut the graph where the compiler would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter._edgetpu import EdgeTpuReport, check_edgetpu
from edgeship.converter._tflite import build_tflite
from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor, serialize
from onnx import TensorProto, helper, numpy_helper

from edgeship import InputError

Q = FbQuant([0.05], [0])


def _fc(g: FbGraph, x: int, name: str, n: int = 4) -> int:
    w = g.add_tensor(FbTensor(f"{name}/w", (n, 4), "int8", quant=FbQuant([0.01], [0])),
                     np.ones((n, 4), np.int8))
    b = g.add_tensor(FbTensor(f"{name}/b", (n,), "int32", quant=FbQuant([0.0005], [0])),
                     np.zeros(n, np.int32))
    y = g.add_tensor(FbTensor(name, (1, n), "int8", quant=Q))
    g.add_op(FbOp("FULLY_CONNECTED", 4, [x, w, b], [y], ("FullyConnectedOptions", {})))
    return y


def _float_in_the_middle() -> bytes:
    """int8 FC -> DEQUANTIZE -> float -> QUANTIZE -> int8 FC -> SOFTMAX."""
    g = FbGraph()
    x = g.add_tensor(FbTensor("x", (1, 4), "int8", quant=Q))
    h = _fc(g, x, "h")
    f = g.add_tensor(FbTensor("h/float", (1, 4), "float32"))
    g.add_op(FbOp("DEQUANTIZE", 2, [h], [f]))
    q = g.add_tensor(FbTensor("h/int8", (1, 4), "int8", quant=Q))
    g.add_op(FbOp("QUANTIZE", 1, [f], [q]))
    y = _fc(g, q, "y")
    p = g.add_tensor(FbTensor("p", (1, 4), "int8", quant=FbQuant([1 / 256], [-128])))
    g.add_op(FbOp("SOFTMAX", 2, [y], [p], ("SoftmaxOptions", {"Beta": 1.0})))
    g.inputs, g.outputs = [x], [p]
    return serialize(g)


def test_writer_output_is_fully_mappable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 128, size=(8, 3, 3, 3)).astype(np.int8), "w_q")
    scales = numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_s")
    zeros = numpy_helper.from_array(np.zeros(8, np.int8), "w_z")
    act = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
           numpy_helper.from_array(np.array(0, np.int8), "z"),
           numpy_helper.from_array(np.array(0.1, np.float32), "s2"),
           numpy_helper.from_array(np.array(-128, np.int8), "z2")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s2", "z2"], ["c_q"]),
        helper.make_node("DequantizeLinear", ["c_q", "s2", "z2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [w, scales, zeros, *act])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for io, edges in (("float", 2), ("int8", 0)):
        data, _, _ = build_tflite(model, io=io)
        report = check_edgetpu(data)
        assert report.fully_mappable and report.cut is None and not report.cpu_ops
        assert len(report.edge_ops) == edges
        assert report.verdict.startswith("Fully mappable: all 3 ops")  # TRANSPOSE x2, CONV_2D
        assert report.op_versions["CONV_2D"] == 3


def test_float_op_cuts_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(_float_in_the_middle())
    report = check_edgetpu(path)
    assert not report.fully_mappable
    assert report.cut is not None and (report.cut.index, report.cut.op) == (1, "DEQUANTIZE")
    assert "not in the Edge TPU's supported ops" in report.cut.reasons[0]
    assert [o.op for o in report.cpu_ops] == ["DEQUANTIZE", "QUANTIZE", "FULLY_CONNECTED", "SOFTMAX"]
    # supported ops after the cut run on the CPU anyway, and the report says why
    assert report.cpu_ops[2].reasons == ("after the graph cut at op #1 (DEQUANTIZE)",)
    assert "float32, not 8-bit" in report.cpu_ops[1].reasons[0]
    assert report.ops_on_tpu == 1 and report.ops_total == 5
    assert "cut at op #1 DEQUANTIZE" in report.verdict
    as_dict = report.to_dict()
    assert as_dict["cut"]["op"] == "DEQUANTIZE" and len(as_dict["cpu_ops"]) == 4


def test_rank_softmax_and_unsupported_op_rules() -> None:
    g = FbGraph()
    x = g.add_tensor(FbTensor("x", (2, 3, 4, 5, 6), "int8", quant=Q))  # 5-D, all > 1
    r = g.add_tensor(FbTensor("r", (2, 360), "int8", quant=Q))
    g.add_op(FbOp("RESHAPE", 1, [x, g.add_tensor(FbTensor("s", (2,), "int32"), np.array([2, 360], np.int32))], [r]))
    p = g.add_tensor(FbTensor("p", (2, 360), "int8", quant=FbQuant([1 / 256], [-128])))
    g.add_op(FbOp("SOFTMAX", 2, [r], [p], ("SoftmaxOptions", {"Beta": 1.0})))
    e = g.add_tensor(FbTensor("e", (2, 360), "int8", quant=Q))
    g.add_op(FbOp("EXP", 2, [p], [e]))
    g.inputs, g.outputs = [x], [e]
    report: EdgeTpuReport = check_edgetpu(serialize(g))
    assert report.cut is not None and report.cut.op == "RESHAPE"
    assert "more than 3 dimensions > 1" in report.cut.reasons[0]
    reasons = {o.op: o.reasons for o in report.cpu_ops}
    assert "only a 1-D input" in reasons["SOFTMAX"][0]
    assert reasons["EXP"] == ("EXP is not in the Edge TPU's supported ops",)


def test_not_a_tflite_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a TFLite flatbuffer"):
        check_edgetpu(b"\x00" * 16)
    with pytest.raises(InputError, match="cannot read"):
        check_edgetpu(tmp_path / "missing.tflite")
    onnx_file = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), onnx_file)
    with pytest.raises(InputError, match="not a TFLite flatbuffer"):
        check_edgetpu(onnx_file)


def test_dynamic_shape_cuts_the_graph() -> None:
    g = FbGraph()
    x = g.add_tensor(FbTensor("x", (1, 4), "int8", quant=Q, signature=(-1, 4)))
    y = _fc(g, x, "y")
    g.inputs, g.outputs = [x], [y]
    report = check_edgetpu(serialize(g))
    assert report.cut is not None and report.cut.op == "FULLY_CONNECTED"
    assert report.cut.reasons == ("tensor 'x' has a dynamic shape",)
