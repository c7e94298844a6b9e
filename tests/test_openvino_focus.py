"""YOLOX's Focus stem (four stride-2 Slice pairs and a Concat) written as Reshape ->
Transpose -> Reshape for OpenVINO (converter/_openvino_focus.py): the same numbers bit for
bit in onnxruntime and OpenVINO, no Slice left; a block whose inner rounding is not a
no-op, or whose blocks come in another order, is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter._openvino_focus import focus_as_transpose
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
YOLOX_ORDER = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (h offset, w offset) per concat input


def _focus_model(order: list[tuple[int, int]] = YOLOX_ORDER, inner_scale: float = 0.05) -> onnx.ModelProto:
    """x [1,3,8,12] -> Q/DQ (uint8, scale 0.05) -> per block Slice(H) -> Q/DQ -> Slice(W)
    -> Q/DQ -> Concat -> Q/DQ -> Conv 1x1 -> y, as the converter writes YOLOX's stem."""
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def qdq(src: str, scale: float) -> str:
        s, z = const(f"{src}_s", np.array(scale, np.float32)), const(f"{src}_z", np.array(128, np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{src}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", s, z], [f"{src}_dq"]))
        return f"{src}_dq"

    x = qdq("x", 0.05)
    end, step = const("end", np.array([2**63 - 1], np.int64)), const("step", np.array([2], np.int64))
    parts = []
    for k, (h, w) in enumerate(order):
        rows = f"rows{k}"
        nodes.append(helper.make_node("Slice", [x, const(f"h{k}", np.array([h], np.int64)), end,
                                                const(f"ah{k}", np.array([2], np.int64)), step], [rows]))
        cols = f"cols{k}"
        nodes.append(helper.make_node("Slice", [qdq(rows, inner_scale), const(f"w{k}", np.array([w], np.int64)),
                                                end, const(f"aw{k}", np.array([3], np.int64)), step], [cols]))
        parts.append(qdq(cols, 0.05))
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
    weights = np.random.default_rng(0).integers(-60, 60, (5, 12, 1, 1)).astype(np.int8)
    nodes.append(helper.make_node("DequantizeLinear", [const("wt", weights), const("wt_s", np.array(0.01, np.float32))],
                                  ["wt_dq"]))
    nodes.append(helper.make_node("Conv", [qdq("cat", 0.05), "wt_dq"], ["y"]))
    graph = helper.make_graph(nodes, "focus", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_the_focus_stem_becomes_one_transpose_with_the_same_numbers(tmp_path: Path) -> None:
    model = _focus_model()
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert focus_as_transpose(rewritten.graph) == 1
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Slice" not in ops and "Concat" not in ops and ops.count("Transpose") == 1
    assert not {"end", "step", "h0", "aw3"} & {i.name for i in rewritten.graph.initializer}  # freed constants
    x = np.random.default_rng(1).uniform(-7, 7, (1, 3, 8, 12)).astype(np.float32)
    expected = _run_ort(model, x)
    assert np.array_equal(_run_ort(rewritten, x), expected)
    # OpenVINO: the same bits from both forms (its float rescale differs from
    # onnxruntime's in the last place, so each runtime is compared with itself)
    assert np.array_equal(_run_ov(rewritten, x, tmp_path / "focus.onnx"), _run_ov(model, x, tmp_path / "slices.onnx"))


def _run_ov(model: onnx.ModelProto, x: np.ndarray, path: Path) -> np.ndarray:
    onnx.save(model, str(path))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({"x": x})[compiled.output(0)])


@pytest.mark.parametrize("kind", ["inner rounding", "block order"])
def test_a_block_that_is_not_a_plain_focus_is_left(kind: str) -> None:
    model = _focus_model(inner_scale=0.1) if kind == "inner rounding" else \
        _focus_model(order=[(1, 1), (0, 0), (1, 0), (0, 1)])
    before = model.SerializeToString()
    assert focus_as_transpose(model.graph) == 0
    assert model.SerializeToString() == before
