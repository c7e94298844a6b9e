"""Float islands for any op a ``--max-drop`` tensor group holds (converter/_tflite_float_more.py):
MaxPool with pads, AveragePool, GlobalAveragePool, MatMul of an N-D input by a constant
and of two activations, Slice and Split run as float TFLite ops between int8 neighbours;
LiteRT agrees with onnxruntime on the QDQ ONNX, and the kept ops really are float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import _calibrate
from edgeship.converter._evaluate import run_all, session
from edgeship.converter._ir import Graph
from edgeship.converter._plan import make_plan
from edgeship.converter._quantize import build_qdq
from edgeship.converter._tflite import write_tflite
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import litert_rows


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 4, 3, 3)).astype(np.float32) * 0.3, "w")
    wm = numpy_helper.from_array(rng.normal(size=(5, 7)).astype(np.float32) * 0.5, "wm")
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["mp"], name="maxpool", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["mp"], ["ap"], name="avgpool", kernel_shape=[2, 2],
                         strides=[1, 1]),
        helper.make_node("Split", ["ap", "sizes"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Reshape", ["s1", "shape3"], ["r3"], name="reshape"),
        helper.make_node("MatMul", ["r3", "wm"], ["mm"], name="matmul_const"),
        helper.make_node("Transpose", ["r3"], ["r3t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["r3t", "r3"], ["gram"], name="matmul_acts"),
        helper.make_node("Slice", ["mm", "st", "en", "ax"], ["sl"], name="slice"),
        helper.make_node("GlobalAveragePool", ["s2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["g"], name="flat"),
        helper.make_node("Flatten", ["sl"], ["f1"], name="flat1"),
        helper.make_node("Flatten", ["gram"], ["f2"], name="flat2"),
        helper.make_node("Concat", ["g", "f1", "f2"], ["y"], name="concat", axis=1),
    ]
    inits = [w, wm, i64("sizes", [3, 3]), i64("shape3", [1, 15, 5]),
             i64("st", [1]), i64("en", [6]), i64("ax", [2])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)



def test_float_island_ops_run_in_litert_and_agree_with_the_onnx(tmp_path: Path) -> None:
    graph = Graph.from_model(_model())
    x = np.random.default_rng(1).normal(size=(24, 1, 4, 12, 12)).astype(np.float32)
    calib = {"x": x[:16, 0]}
    stats = _calibrate.collect(graph, calib, histograms=False).stats
    ranges = _calibrate.ranges(stats, "minmax", 99.999)
    floated = ["maxpool", "avgpool", "split", "reshape", "matmul_const", "transpose",
               "matmul_acts", "slice", "gap"]
    keep = {name: "kept float by --max-drop (test)" for name in floated}
    plan = make_plan(graph, ranges, keep_float=keep)
    assert "conv" in plan.rules and {"c", "gap", "sl"} <= set(plan.quantized)  # int8 around it
    qmodel = build_qdq(graph, plan, io="float")[0]
    onnx.save(qmodel, tmp_path / "m.onnx")
    info = write_tflite(tmp_path / "m.onnx", tmp_path / "m.tflite")
    for op in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "SPLIT_V", "BATCH_MATMUL",
               "FULLY_CONNECTED", "STRIDED_SLICE", "PADV2"):
        assert op in info.op_counts, (op, info.op_counts)
    _assert_float_ops(tmp_path / "m.tflite", ("MAX_POOL_2D", "BATCH_MATMUL", "STRIDED_SLICE"))
    feeds = {"x": x[16:, 0]}
    ref = run_all(session(qmodel), feeds, [qmodel.graph.output[0].name])[0].reshape(8, -1)
    got = litert_rows(tmp_path / "m.tflite", x[16:, 0])
    step = float(np.max(np.abs(ref))) / 127
    assert np.max(np.abs(ref - got)) <= 2 * step  # the same model, up to an output step


def _assert_float_ops(path: Path, opcodes: tuple[str, ...]) -> None:
    """Each of ``opcodes`` reads a float32 tensor in the written file."""
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    seen = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name in opcodes:
            assert graph.Tensors(op.Inputs(0)).Type() == tflite.TensorType.FLOAT32, name
            seen.add(name)
    assert seen == set(opcodes)
