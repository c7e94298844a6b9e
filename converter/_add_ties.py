"""Add (and Sub) output scales for which onnxruntime and LiteRT compute the same int8 sum
for every pair of int8 inputs.

The two runtimes compute ``(a - za) * sa / so + (b - zb) * sb / so + zo`` differently:
onnxruntime's QLinearAdd (MLAS) in float32, rounding half to even; LiteRT's default
delegate (XNNPACK's qs8 add) in integers, with each ratio ``s / so`` rounded to a 20-bit
multiplier, ``acc = bias + a * ma + b * mb`` and a rounding shift (halves up). A sum that
lies within ~1e-5 of a half (the multipliers' rounding) lands on different sides: one or
two of the 65 536 input pairs for a typical set of scales, ~one value in 10^6 of a YOLOX
detector's residual Adds (ddddocr), which its SiLU chains and Sigmoid heads turn into
detections that differ.

For each quantized Add of two int8 operands, the output scale is moved by at most
``MAX_TRIES * STEP`` (relative, < 1e-3) to the first candidate for which every one of the
65 536 pairs gives the same integer in both: onnxruntime is run (one small session per
batch of candidates), XNNPACK's arithmetic is computed exactly (:func:`xnnpack_add`; the
test checks it against LiteRT). Readers that keep the Add output's parameters follow it
(as for the pools, converter/_pool_ties.py); a reader with its own group requantizes
back exactly, since ``|q - z| * 1e-3 < 1/2``. The TFLite builtin kernel without XNNPACK
(``left_shift`` 20, 31-bit multipliers) is not what this matches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._ir import Graph
from ._plan import Plan, QParams
from ._pool_ties import _set_downstream
from ._tie_search import first_agreeing_scale, run_probe

STEP = 2.0**-16  # relative move of the output scale between two candidates
MAX_TRIES = 64  # 64 * STEP ~ 1e-3: a reader with its own parameters still requantizes exactly
BATCH = 16  # candidates per onnxruntime session
_Q = np.arange(-128, 128, dtype=np.int64)
GRID_A, GRID_B = (g.ravel() for g in np.meshgrid(_Q, _Q))  # every pair of int8 inputs


def tie_free_add_scales(graph: Graph, plan: Plan) -> int:
    """Move each quantized two-activation Add's output scale to one both runtimes round
    alike on every input pair (updates ``plan.params``; idempotent). Returns how many
    moved."""
    moved = 0
    for node in graph.nodes:
        if node.op_type not in ("Add", "Sub") or not plan.is_quantized_node(node) or len(node.input) != 2:
            continue
        y = node.output[0]
        if y in graph.output_names or y not in plan.params:
            continue
        if any(i not in plan.params for i in node.input):
            # a constant operand: its parameters are the builder's. Searching these like
            # the LayerNorm's beta Add (agreeing_const_scale; one of PP-OCRv4's MatMul +
            # bias Adds had one pair apart, no string changed) cost its ONNX one of 128
            # eval lines (38.28 -> 37.5 %, same SQNR): left as calibrated for now
            continue
        a, b, out = plan.params[node.input[0]], plan.params[node.input[1]], plan.params[y]
        scale = agreeing_scale(a.scale, a.zero_point, b.scale, b.zero_point, out.scale, out.zero_point,
                               node.op_type)
        if scale is not None and scale != out.scale:
            _set_downstream(graph, plan, y, out, QParams(scale, out.zero_point))
            moved += 1
    return moved


@lru_cache(maxsize=1024)
def agreeing_const_scale(sx: float, zx: int, codes: tuple[int, ...], sc: float, so: float, zo: int,
                         op: str = "Add", *, const_first: bool = False, const_int8: bool = False) -> float | None:
    """The first float32 output scale ``so / (1 + k STEP)`` on which onnxruntime and XNNPACK
    give the same code for ``x op c`` (``c op x`` with ``const_first``) for every int8 x and
    every constant code in ``codes`` (zero point 0, scale ``sc``); None if none of
    MAX_TRIES does. onnxruntime runs the form the file has: the constant stored as uint8 =
    int8 + 128 (the QDQ builder's constant operands) or int8 (``const_int8``: the
    LayerNorm chain's gamma/beta/eps, converter/_layernorm_qdq.py, which uses this)."""
    const = np.array(codes, np.int64)
    grid_x = np.repeat(_Q[:, None], const.size, axis=1)
    grid_c = np.broadcast_to(const[None, :], grid_x.shape)
    a, b = (grid_c, grid_x) if const_first else (grid_x, grid_c)
    (sa, za), (sb, zb) = ((sc, 0), (sx, zx)) if const_first else ((sx, zx), (sc, 0))

    def agrees(scale: float, ort: np.ndarray) -> bool:
        return np.array_equal(ort, xnnpack_add(a, b, sa, za, sb, zb, scale, zo, subtract=op == "Sub"))

    def onnxruntime_codes(scales: list[float]) -> list[np.ndarray]:
        probe = const_probe(sx, zx, const, sc, scales, zo, op, const_first=const_first, const_int8=const_int8)
        return [o.astype(np.int64) - 128 for o in run_probe(probe, {"x": (grid_x + 128).astype(np.uint8)})]

    return first_agreeing_scale(so, STEP, MAX_TRIES, BATCH, onnxruntime_codes, agrees)


def const_probe(sx: float, zx: int, const: np.ndarray, sc: float, scales: list[float], zo: int,
                op: str = "Add", *, const_first: bool = False, const_int8: bool = False) -> onnx.GraphProto:
    """DQ(x uint8 [256, K]) op DQ(constant [K]) -> Q(uint8), one DQ pair per output scale
    (as each node of the file has its own)."""
    shape = [256, int(const.size)]
    stored = (const.astype(np.int8), np.array(0, np.int8)) if const_int8 else \
        ((const + 128).astype(np.uint8), np.array(128, np.uint8))
    inits = [_scalar("x_s", sx, np.float32), _scalar("x_z", zx + 128, np.uint8),
             numpy_helper.from_array(stored[0], "c_q"), _scalar("c_s", sc, np.float32),
             numpy_helper.from_array(stored[1], "c_z"), _scalar("y_z", zo + 128, np.uint8)]
    nodes, outputs = [], []
    for k, scale in enumerate(scales):
        inits.append(_scalar(f"y_s{k}", scale, np.float32))
        operands = [f"c{k}", f"x{k}"] if const_first else [f"x{k}", f"c{k}"]
        nodes += [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], [f"x{k}"]),
                  helper.make_node("DequantizeLinear", ["c_q", "c_s", "c_z"], [f"c{k}"]),
                  helper.make_node(op, operands, [f"s{k}"]),
                  helper.make_node("QuantizeLinear", [f"s{k}", f"y_s{k}", "y_z"], [f"y{k}"])]
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.UINT8, shape))
    return helper.make_graph(nodes, "const_add_ties", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                             outputs, inits)


@lru_cache(maxsize=4096)
def agreeing_scale(sa: float, za: int, sb: float, zb: int, so: float, zo: int, op: str = "Add") -> float | None:
    """The first float32 output scale ``so / (1 + k STEP)``, k = 0, 1, ..., for which
    onnxruntime and XNNPACK agree on all 65 536 input pairs of ``op`` (Add or Sub); None
    if none of MAX_TRIES does."""
    def agrees(scale: float, ort: np.ndarray) -> bool:
        return np.array_equal(ort, xnnpack_add(GRID_A, GRID_B, sa, za, sb, zb, scale, zo, subtract=op == "Sub"))

    return first_agreeing_scale(so, STEP, MAX_TRIES, BATCH,
                                lambda scales: onnxruntime_add(sa, za, sb, zb, scales, zo, op), agrees)


def xnnpack_add(qa: np.ndarray, qb: np.ndarray, sa: float, za: int, sb: float, zb: int,
                so: float, zo: int, *, subtract: bool = False) -> np.ndarray:
    """XNNPACK's int8 add or subtract (xnn_init_qs8_add_minmax params, qs8-vadd kernels;
    subtract negates b's multiplier), exactly: float32 ratios, 20-bit multipliers,
    integer accumulation, a rounding shift."""
    ra = np.float32(np.float32(sa) / np.float32(so))
    rb = np.float32(np.float32(sb) / np.float32(so))
    exponent = int(np.array(max(ra, rb), np.float32).view(np.uint32) >> 23) - 127
    shift = 20 - exponent
    ma = int(np.rint(np.ldexp(np.float64(ra), shift)))
    mb = int(np.rint(np.ldexp(np.float64(rb), shift))) * (-1 if subtract else 1)
    bias = (1 << (shift - 1)) - ma * za - mb * zb
    acc = bias + qa.astype(np.int64) * ma + qb.astype(np.int64) * mb
    result: np.ndarray = np.clip((acc >> shift) + zo, -128, 127)
    return result


def onnxruntime_add(sa: float, za: int, sb: float, zb: int, scales: list[float], zo: int,
                    op: str = "Add") -> list[np.ndarray]:
    """onnxruntime's int8 result of DQ -> Add (or Sub) -> Q on every input pair, per output
    scale (the operands stored as uint8 = int8 + 128, as the converter writes activations)."""
    feed = {"a": (GRID_A + 128).astype(np.uint8)[None], "b": (GRID_B + 128).astype(np.uint8)[None]}
    outputs = run_probe(_probe_graph(sa, za, sb, zb, scales, zo, op), feed)
    return [o.reshape(-1).astype(np.int64) - 128 for o in outputs]


def _probe_graph(sa: float, za: int, sb: float, zb: int, scales: list[float], zo: int,
                 op: str) -> onnx.GraphProto:
    n = GRID_A.size
    inits = [_scalar("a_s", sa, np.float32), _scalar("a_z", za + 128, np.uint8),
             _scalar("b_s", sb, np.float32), _scalar("b_z", zb + 128, np.uint8),
             _scalar("o_z", zo + 128, np.uint8)]
    nodes, outputs = [], []
    for k, scale in enumerate(scales):
        inits.append(_scalar(f"o_s{k}", scale, np.float32))
        nodes += [helper.make_node("DequantizeLinear", ["a", "a_s", "a_z"], [f"a{k}"]),
                  helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], [f"b{k}"]),
                  helper.make_node(op, [f"a{k}", f"b{k}"], [f"s{k}"], name=f"add{k}"),
                  helper.make_node("QuantizeLinear", [f"s{k}", f"o_s{k}", "o_z"], [f"y{k}"])]
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.UINT8, [1, n]))
    return helper.make_graph(nodes, "add_ties",
                             [helper.make_tensor_value_info(x, TensorProto.UINT8, [1, n]) for x in "ab"],
                             outputs, inits)


def _scalar(name: str, value: float, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)
