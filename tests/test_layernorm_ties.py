"""LayerNorm steps whose int8 results onnxruntime and LiteRT rounded apart at a tie
(converter/_mean_ties.py, converter/_layernorm_ties.py). Each test takes the parameters of
PP-OCRv4's first LayerNorm as converted before the fix (the values that turned LiteRT's
strings into others on 128 eval lines), shows the two real runtimes disagree on some input
there, and agree on every input with the scale chosen now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor
from edgeship.converter._tie_search import run_litert_int8, run_probe
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import save_one_io_model

WIDTH = 120  # the LayerNorm's channels
X = (0.02977205067873001, -119)  # its input
MEAN = (0.005920858588069677, -128)
SQUARED = (0.16216714680194855, -128)
VARIANCE = (0.008778456598520279, -128)
SCALED = (0.018859921023249626, -60)
BETA_SCALE = 0.0034575816243886948
BETA_CODES = (-127, -100, -99, -91, -85, -83, -73, -67, -65, -64, -60, -59, -56, -54, -53, -52, -50, -43, -39,
              -38, -37, -35, -32, -27, -24, -21, -20, -17, -12, -10, -7, -6, -5, -4, -3, 0, 2, 4, 5, 6, 7, 8,
              12, 13, 14, 17, 18, 20, 21, 22, 23, 24, 25, 26, 29, 31, 32, 33, 34, 35, 38, 39, 41, 42, 43, 44,
              46, 47, 48, 49, 50, 55, 57, 60, 63, 64, 67, 71, 72, 79, 86, 87, 104)
OUTPUT = (0.01882782205939293, -50)


def _every_sum(n: int, zero: int) -> np.ndarray:
    """Rows of ``n`` int8 codes whose sums of (q - zero) take every possible value."""
    sums = np.arange(n * (-128 - zero), n * (127 - zero) + 1)
    base = np.floor_divide(sums, n)
    return base[:, None] + (np.arange(n)[None, :] < (sums - base * n)[:, None]) + zero


def _means(rows: np.ndarray, x: tuple[float, int], y: tuple[float, int]) -> tuple[np.ndarray, np.ndarray]:
    """(LiteRT's MEAN, onnxruntime's DQ -> ReduceMean -> Q) over the last axis of ``rows``."""
    shape = (1, *rows.shape)
    graph = FbGraph()
    xt = graph.add_tensor(FbTensor("x", shape, "int8", quant=FbQuant([x[0]], [x[1]])))
    axes = graph.add_tensor(FbTensor("axes", (1,), "int32"), np.array([2], np.int32))
    yt = graph.add_tensor(FbTensor("y", (*shape[:2], 1), "int8", quant=FbQuant([y[0]], [y[1]])))
    graph.add_op(FbOp("MEAN", 2, [xt, axes], [yt], ("ReducerOptions", {"KeepDims": True})))
    graph.inputs, graph.outputs = [xt], [yt]
    lite = run_litert_int8(graph, rows[None]).reshape(-1)
    inits = [numpy_helper.from_array(np.array(x[0], np.float32), "x_s"),
             numpy_helper.from_array(np.array(x[1] + 128, np.uint8), "x_z"),
             numpy_helper.from_array(np.array(y[0], np.float32), "y_s"),
             numpy_helper.from_array(np.array(y[1] + 128, np.uint8), "y_z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xd"]),
             helper.make_node("ReduceMean", ["xd"], ["m"], axes=[-1], keepdims=1),
             helper.make_node("QuantizeLinear", ["m", "y_s", "y_z"], ["y"])]
    onnx_graph = helper.make_graph(nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                                   [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    ort = run_probe(onnx_graph, {"x": (rows[None] + 128).astype(np.uint8)})[0].reshape(-1).astype(np.int64) - 128
    return lite, ort


def test_layernorm_means_get_a_scale_with_no_mean_at_a_half() -> None:
    from edgeship.converter._mean_ties import MARGIN, half_distance, tie_free_mean_scale

    for source, step in ((X, MEAN), (SQUARED, VARIANCE)):
        rows = _every_sum(WIDTH, source[1])
        lite, ort = _means(rows, source, step)
        assert (lite != ort).sum() >= 1  # a sum at a half, rounded apart
        chosen = tie_free_mean_scale(source[0], source[1], WIDTH, step[0])
        assert step[0] < chosen < step[0] * 1.001
        assert half_distance(source[0], source[1], WIDTH, chosen) >= MARGIN
        lite, ort = _means(rows, source, (chosen, step[1]))
        assert np.array_equal(lite, ort)


def _litert_const_add(x: tuple[float, int], codes: np.ndarray, scale: float, y: tuple[float, int]) -> np.ndarray:
    """LiteRT's ADD(x, int8 constant) on every int8 x against every constant code (XNNPACK)."""
    shape = (1, 256, codes.size)
    graph = FbGraph()
    xt = graph.add_tensor(FbTensor("x", shape, "int8", quant=FbQuant([x[0]], [x[1]])))
    ct = graph.add_tensor(FbTensor("c", (codes.size,), "int8", quant=FbQuant([scale], [0])), codes.astype(np.int8))
    yt = graph.add_tensor(FbTensor("y", shape, "int8", quant=FbQuant([y[0]], [y[1]])))
    graph.add_op(FbOp("ADD", 2, [xt, ct], [yt], ("AddOptions", {"FusedActivationFunction": 0})))
    graph.inputs, graph.outputs = [xt], [yt]
    grid = np.repeat(np.arange(-128, 128)[:, None], codes.size, axis=1)
    return run_litert_int8(graph, grid[None]).reshape(256, codes.size)


def test_layernorm_output_add_of_beta_gets_a_scale_both_runtimes_round_alike() -> None:
    from edgeship.converter._add_ties import agreeing_const_scale, const_probe

    codes = np.array(BETA_CODES)
    grid = np.repeat(np.arange(-128, 128)[:, None], codes.size, axis=1)

    def ort(scale: float) -> np.ndarray:
        probe = const_probe(SCALED[0], SCALED[1], codes, BETA_SCALE, [scale], OUTPUT[1], const_int8=True)
        return run_probe(probe, {"x": (grid + 128).astype(np.uint8)})[0].astype(np.int64) - 128

    before = _litert_const_add(SCALED, codes, BETA_SCALE, OUTPUT) != ort(OUTPUT[0])
    assert before.sum() >= 1
    chosen = agreeing_const_scale(SCALED[0], SCALED[1], BETA_CODES, BETA_SCALE, OUTPUT[0], OUTPUT[1],
                                  const_int8=True)
    assert chosen is not None and chosen != OUTPUT[0] and abs(chosen / OUTPUT[0] - 1) < 1e-3
    assert np.array_equal(_litert_const_add(SCALED, codes, BETA_SCALE, (chosen, OUTPUT[1])), ort(chosen))


def _ln_model(path: Path, width: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(size=(width, width)) * 0.3, "gamma": rng.uniform(0.5, 1.5, width),
             "beta": rng.normal(size=width) * 0.2, "w2": rng.normal(size=(width, 16)) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"])]
    return save_one_io_model(path, nodes, inits, [1, 24, width], opset=17, name="ln")


def _apart(written: Path) -> dict[str, int]:
    """Per step of the written LayerNorm chain: on how many of all its possible inputs
    LiteRT's kernel (the TFLite file's op, run alone) and onnxruntime's (the chain's nodes)
    give different codes."""
    model = onnx.load(written)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def qp(name: str) -> tuple[float, int]:
        return float(inits[f"{name}_s"]), int(inits[f"{name}_z"]) - 128

    width = int(inits["n/beta_q"].size)
    apart = {}
    for source, step in (("x", "mean"), ("squared", "variance")):  # x: the MatMul output "h"
        src = qp("h") if source == "x" else qp(f"n/{source}")
        lite, ort = _means(_every_sum(width, src[1]), src, qp(f"n/{step}"))
        apart[step] = int((lite != ort).sum())
    for step, source, const in (("n/variance_eps", "n/variance", "n/eps"), ("n", "n/scaled", "n/beta")):
        codes = np.unique(inits[f"{const}_q"].astype(np.int64))
        grid = np.repeat(np.arange(-128, 128)[:, None], codes.size, axis=1)
        x, y, scale = qp(source), qp(step), float(inits[f"{const}_s"])
        from edgeship.converter._add_ties import const_probe

        probe = const_probe(x[0], x[1], codes, scale, [y[0]], y[1], const_int8=True)
        ort_codes = run_probe(probe, {"x": (grid + 128).astype(np.uint8)})[0].astype(np.int64) - 128
        apart[step] = int((_litert_const_add(x, codes, scale, y) != ort_codes).sum())
    return apart


@pytest.mark.parametrize("seed", [14, 27])  # before: the output Add 2 codes apart / the variance 1
def test_converted_layernorm_steps_agree_on_every_input(tmp_path: Path, seed: int) -> None:
    """A converted LayerNorm: each step the TFLite file computes gives onnxruntime's codes
    for every input it can get. The two fixtures' calibrated scales put the output
    Add(scaled, beta) (seed 14) and the variance MEAN (seed 27) on ties before."""
    from edgeship.converter import ConvertOptions, convert

    width = 120
    x = (np.random.default_rng(seed).normal(size=(16, 24, width)) * 2).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    convert(_ln_model(tmp_path / "ln.onnx", width, seed), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    assert _apart(tmp_path / "out" / "model.int8.onnx") == {"mean": 0, "variance": 0, "n/variance_eps": 0, "n": 0}
