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
from edgeship.converter._tie_search import run_probe
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import save_one_io_model

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


def _bias_model(path: Path, width: int, seed: int) -> Path:
    """MatMul of a 3-D tensor and Add of a bias vector (a transformer's linear layer as
    exported: not a Gemm), so the Add has a constant operand."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(size=(width, width)) * 0.3, "bias": rng.normal(size=width) * 0.5,
             "w2": rng.normal(size=(width, 8)) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "bias"], ["hb"], name="bias_add"),
             helper.make_node("MatMul", ["hb", "w2"], ["y"])]
    return save_one_io_model(path, nodes, inits, [1, 16, width], opset=17, name="bias")


@pytest.mark.parametrize("seed", [2, 4])  # fixtures with a pair apart before (seeds 0-11 tried)
def test_add_of_a_constant_gets_a_scale_both_runtimes_round_alike(tmp_path: Path, seed: int) -> None:
    """The Add of the bias: LiteRT's ADD (XNNPACK) with the file's int8 constant and
    onnxruntime's DQ + DQ(constant) -> Q give the same code for every int8 input and every
    constant code (this fixture's calibrated scale had a pair apart before)."""
    from edgeship.converter import ConvertOptions, convert
    from edgeship.converter._add_ties import const_probe

    width = 64
    x = np.random.default_rng(seed).normal(size=(16, 16, width)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    convert(_bias_model(tmp_path / "m.onnx", width, seed), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    model = onnx.load(tmp_path / "out" / "model.int8.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    add = next(n for n in model.graph.node if n.name == "bias_add")
    x_name, c_name = (i.removesuffix("_dq") for i in add.input)
    sx, zx = float(inits[f"{x_name}_s"]), int(inits[f"{x_name}_z"]) - 128
    so, zo = float(inits["hb_s"]), int(inits["hb_z"]) - 128
    codes = np.unique(inits[f"{c_name}_q"].astype(np.int64) - 128)
    sc = float(inits[f"{c_name}_s"])
    grid = np.repeat(np.arange(-128, 128)[:, None], codes.size, axis=1)
    ort = run_probe(const_probe(sx, zx, codes, sc, [so], zo), {"x": (grid + 128).astype(np.uint8)})[0]
    lite = _litert_add_const(grid, (sx, zx), codes, sc, (so, zo))
    assert np.array_equal(ort.astype(np.int64) - 128, lite)


def _litert_add_const(grid: np.ndarray, x: tuple[float, int], codes: np.ndarray, sc: float,
                      y: tuple[float, int]) -> np.ndarray:
    from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor, serialize
    from edgeship.sdk.runtime._runtime_litert import interpreter_module

    graph = FbGraph()
    xt = graph.add_tensor(FbTensor("x", grid.shape, "int8", quant=FbQuant([x[0]], [x[1]])))
    ct = graph.add_tensor(FbTensor("c", (codes.size,), "int8", quant=FbQuant([sc], [0])), codes.astype(np.int8))
    yt = graph.add_tensor(FbTensor("y", grid.shape, "int8", quant=FbQuant([y[0]], [y[1]])))
    graph.add_op(FbOp("ADD", 2, [xt, ct], [yt], ("AddOptions", {"FusedActivationFunction": 0})))
    graph.inputs, graph.outputs = [xt], [yt]
    interp = interpreter_module().Interpreter(model_content=serialize(graph), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], grid.astype(np.int8))
    interp.invoke()
    out: np.ndarray = interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.int64)
    return out
