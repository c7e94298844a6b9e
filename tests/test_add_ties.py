"""Add: onnxruntime and LiteRT must give the same int8 sum for every pair of int8 inputs
(converter/_add_ties.py). onnxruntime adds in float32, LiteRT's XNNPACK in integers with
20-bit multipliers; a sum within ~1e-5 of a half came out one step apart (ddddocr's YOLOX
detector: one value in 10^6 of its residual Adds, enough to move detections after its
SiLU and Sigmoid layers). Sub the same (XNNPACK negates b's multiplier): a LayerNorm's
``x - mean`` in PP-OCRv4's recognizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._add_ties import GRID_A, GRID_B, onnxruntime_add, xnnpack_add
from onnx import TensorProto, helper, numpy_helper

SHAPE = [1, 256, 256]


def _add_model(path: Path, op: str = "Add") -> Path:
    nodes = [helper.make_node(op, ["a", "b"], ["s"], name="add"),
             helper.make_node("Flatten", ["s"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "add", [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE)
                                             for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _ints(path: Path, name: str) -> tuple[float, int]:
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    return float(inits[f"{name}_s"]), int(inits[f"{name}_z"]) - 128  # stored as uint8


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_add_sums_alike_in_onnxruntime_and_litert_for_every_input_pair(tmp_path: Path, op: str) -> None:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)  # calibrated scales with two pairs apart before
    np.savez(tmp_path / "calib.npz", a=(rng.normal(size=(8, *SHAPE[1:])) * 2.1).astype(np.float32),
             b=(rng.normal(size=(8, *SHAPE[1:])) * 1.3 + 0.4).astype(np.float32))
    convert(_add_model(tmp_path / "add.onnx", op), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    int8 = tmp_path / "out" / "model.int8.onnx"
    (sa, za), (sb, zb), (ss, zs) = _ints(int8, "a"), _ints(int8, "b"), _ints(int8, "s")
    feed = {"a": ((GRID_A - za) * np.float32(sa)).astype(np.float32).reshape(SHAPE),
            "b": ((GRID_B - zb) * np.float32(sb)).astype(np.float32).reshape(SHAPE)}
    ref = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    interp = Interpreter(model_path=str(tmp_path / "out" / "model.int8.tflite"))
    interp.allocate_tensors()
    for detail in interp.get_input_details():
        interp.set_tensor(detail["index"], feed[detail["name"]])
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_array_equal(got.reshape(-1), ref.reshape(-1))  # every pair, same integer
    # and the emulated XNNPACK sum is what LiteRT computed, on the chosen scale
    sums = xnnpack_add(GRID_A, GRID_B, sa, za, sb, zb, ss, zs, subtract=op == "Sub")
    assert np.array_equal(sums, onnxruntime_add(sa, za, sb, zb, [ss], zs, op)[0])
