"""The output scale of a LayerNormalization's ``rstd`` step chosen so that LiteRT's int8
RSQRT and onnxruntime's DQ -> Sqrt -> Reciprocal -> Q give the same integer for every
int8 input.

LiteRT's RSQRT kernel computes 1/sqrt in fixed point (an integer ``2^20 / sqrt(q - z)``,
then a requantizing multiply); onnxruntime computes it in float32. Near a half the two
land one step apart: 1 % of the rstd values of PP-OCRv4's recognizer, and each such step
rescales a whole token row after it. The input has only 256 codes, so both kernels are
simply run on all of them (LiteRT on a one-op model, onnxruntime on a small graph) for
candidate output scales ``s / (1 + k STEP)``, and the first on which they agree is kept
(a move of < 2 % of the scale, where the calibrated range has room).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ._tie_search import first_agreeing_scale, run_litert_int8, run_probe

STEP = 2.0**-12
MAX_TRIES = 64
BATCH = 16
CODES = np.arange(-128, 128, dtype=np.int64)


def match_rstd(params: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """``params`` (converter/_layernorm.py: node -> step -> [scale, zero point]) with each
    ``rstd`` scale moved to one on which both runtimes agree (unchanged when none is)."""
    out = {}
    for node, steps in params.items():
        s_in, z_in = steps["variance_eps"]
        s_out, z_out = steps["rstd"]
        chosen = agreeing_rstd_scale(float(s_in), int(z_in), float(s_out), int(z_out))
        out[node] = {**steps, "rstd": [chosen if chosen is not None else s_out, z_out]}
    return out


@lru_cache(maxsize=256)
def agreeing_rstd_scale(s_in: float, z_in: int, s_out: float, z_out: int) -> float | None:
    positive = z_in < CODES  # the codes of real values > 0 (a variance plus eps)

    def agrees(scale: float, ort: np.ndarray) -> bool:
        return np.array_equal(ort[positive], litert_rsqrt(s_in, z_in, scale, z_out)[positive])

    return first_agreeing_scale(s_out, STEP, MAX_TRIES, BATCH,
                                lambda scales: onnxruntime_rsqrt(s_in, z_in, scales, z_out), agrees)


def litert_rsqrt(s_in: float, z_in: int, s_out: float, z_out: int) -> np.ndarray:
    """LiteRT's int8 RSQRT of every int8 code (a one-op model, default interpreter)."""
    from ._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor

    graph = FbGraph()
    x = graph.add_tensor(FbTensor("x", (256,), "int8", quant=FbQuant([s_in], [z_in])))
    y = graph.add_tensor(FbTensor("y", (256,), "int8", quant=FbQuant([s_out], [z_out])))
    graph.add_op(FbOp("RSQRT", 2, [x], [y]))
    graph.inputs, graph.outputs = [x], [y]
    return run_litert_int8(graph, CODES)


def onnxruntime_rsqrt(s_in: float, z_in: int, scales: list[float], z_out: int) -> list[np.ndarray]:
    """onnxruntime's DQ -> Sqrt -> Reciprocal -> Q of every int8 code, per output scale
    (uint8 = int8 + 128, as the converter stores activations)."""
    inits = [numpy_helper.from_array(np.array(s_in, np.float32), "x_s"),
             numpy_helper.from_array(np.array(z_in + 128, np.uint8), "x_z"),
             numpy_helper.from_array(np.array(z_out + 128, np.uint8), "y_z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xd"]),
             helper.make_node("Sqrt", ["xd"], ["sd"])]
    outputs = []
    for k, scale in enumerate(scales):
        inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"y_s{k}"))
        nodes += [helper.make_node("Reciprocal", ["sd"], [f"r{k}"]),
                  helper.make_node("QuantizeLinear", [f"r{k}", f"y_s{k}", "y_z"], [f"y{k}"])]
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.UINT8, [256]))
    graph = helper.make_graph(nodes, "rsqrt", [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])],
                              outputs, inits)
    return [o.astype(np.int64) - 128 for o in run_probe(graph, {"x": (CODES + 128).astype(np.uint8)})]
