"""One lowering rule per ONNX op type: QDQ ONNX node -> TFLite int8 op(s).

``RULES`` maps an ONNX op type to a function ``(Lowering, node) -> None`` that reads the
node's int8 inputs from the lowering, emits TFLite ops, and binds the node's outputs.
Adding an op is adding one function here. Every rule checks what TFLite cannot express
and raises :class:`UnsupportedOpError` (through ``ctx.fail``) naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from edgeship.converter._tflite_fb import FbQuant
from edgeship.converter._tflite_lower import TO_NHWC, Lowering, Val
from edgeship.converter._tflite_qdq import QConst, QParams

SAME, VALID = 0, 1  # tflite.Padding
NO_ACT, RELU = 0, 1  # tflite.ActivationFunctionType
FIXED_OUTPUT = QParams(scale=1.0 / 256.0, zero_point=-128)  # LOGISTIC / SOFTMAX int8 output

Rule = Callable[[Lowering, onnx.NodeProto], None]


def fused_activation(q: QParams) -> int:
    # an output whose zero point is the int8 minimum is clamped at 0.0 anyway: declaring
    # RELU changes no value and tells readers (and the Edge TPU compiler) what it is
    return RELU if q.zero_point == -128 else NO_ACT


# ---- convolution ------------------------------------------------------------------
def _weight(ctx: Lowering, name: str) -> QConst:
    w = ctx.qconst(name)
    if w.values.dtype != np.int8:
        raise ctx.fail(f"weight {name!r} is {w.values.dtype}, not int8")
    if np.any(w.zero_points != 0):
        raise ctx.fail(f"weight {name!r} has a non-zero zero point (TFLite int8 weights are symmetric)")
    return w


def _bias(ctx: Lowering, node: onnx.NodeProto, index: int, scales: np.ndarray, n: int) -> np.ndarray:
    """int32 bias with scale = input scale x weight scale (rescaled if stored otherwise)."""
    if len(node.input) <= index or not node.input[index]:
        return np.zeros(n, np.int32)
    name = node.input[index]
    const = ctx.qdq.qconsts.get(name)
    if const is not None and const.values.dtype == np.int32 and not np.any(const.zero_points):
        stored = np.broadcast_to(const.scales, (n,)).astype(np.float64)
        if np.allclose(stored, scales, rtol=1e-6, atol=0):
            return np.broadcast_to(const.values.ravel(), (n,)).astype(np.int32)  # as the ONNX has it
    if const is not None:
        real = const.dequantized().astype(np.float64)
    elif name in ctx.qdq.initializers:
        real = ctx.qdq.initializers[name].astype(np.float64)
    else:
        raise ctx.fail(f"bias {name!r} must be a constant")
    real = np.broadcast_to(real.ravel(), (n,))
    q = np.round(real / np.broadcast_to(scales.astype(np.float64), (n,)))
    return np.clip(q, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)


def _padding(ctx: Lowering, x: Val, kernel: list[int], strides: list[int],
             dilations: list[int], *, pad_ok: bool = True, explicit: bool = False,
             extra_end: tuple[int, int] = (0, 0)) -> tuple[int, Val]:
    """TFLite padding for a NHWC input; inserts a PAD (with the zero point) when needed,
    or always for non-zero pads when ``explicit``; ``extra_end`` rows / columns are
    padded after the pads (MaxPool's ceil_mode)."""
    _, _, h, w = x.shape
    auto = ctx.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    pads = list(ctx.attr("pads", [0, 0, 0, 0]))
    same = []
    for size, k, s, d in zip((h, w), kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        same.append((total // 2, total - total // 2))
    same_pads = [same[0][0], same[1][0], same[0][1], same[1][1]]
    if auto == "SAME_UPPER":
        pads = same_pads
    elif auto == "SAME_LOWER":
        pads = [same[0][1], same[1][1], same[0][0], same[1][0]]
    if any(extra_end):
        pads = [pads[0], pads[1], pads[2] + extra_end[0], pads[3] + extra_end[1]]
        explicit = True
    if pads == same_pads and any(pads) and not explicit:
        return SAME, x
    if auto == "VALID" or not any(pads):
        return VALID, x
    if not pad_ok:
        raise ctx.fail(f"explicit pads {pads} have no TFLite equivalent for this op")
    t, left, b, r = pads
    out_shape = (x.shape[0], x.shape[1], h + t + b, w + left + r)
    assert ctx.node is not None  # set while a node is lowered
    padded = ctx.new_val(f"{ctx.node.output[0]}/pad", out_shape, "nhwc", x.q)
    paddings = np.array([[0, 0], [t, b], [left, r], [0, 0]], np.int32)
    ctx.emit("PAD", [x.index, ctx.const("paddings", paddings)], [padded.index])
    return VALID, padded


def _conv_geometry(ctx: Lowering, kernel: list[int]) -> tuple[list[int], list[int]]:
    strides = list(ctx.attr("strides", [1, 1]))
    dilations = list(ctx.attr("dilations", [1, 1]))
    if len(kernel) != 2:
        raise ctx.fail(f"only 2-D spatial ops are supported, got kernel {kernel}")
    return strides, dilations


def conv(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.nhwc(ctx.get(node.input[0]))
    w = _weight(ctx, node.input[1])
    if w.values.ndim != 4 or len(x.shape) != 4:
        raise ctx.fail("only 2-D convolutions (4-D tensors) are supported")
    o, ig, kh, kw = w.values.shape
    group = int(ctx.attr("group", 1))
    strides, dilations = _conv_geometry(ctx, [kh, kw])
    out_q = ctx.out_q(node.output[0])
    out_shape = ctx.out_shape(node.output[0])
    scales = np.broadcast_to(w.scales, (o,)) * np.float32(x.q.scale)
    bias = _bias(ctx, node, 2, scales, o)
    padding, x = _padding(ctx, x, [kh, kw], strides, dilations)
    out = ctx.new_val(node.output[0], out_shape, "nhwc", out_q)
    geometry: dict[str, object] = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
                "FusedActivationFunction": fused_activation(out_q),
                "DilationWFactor": dilations[1], "DilationHFactor": dilations[0]}
    c = x.shape[1]
    if group == 1:
        _conv2d(ctx, x, w.values, w.scales, bias, scales, out, geometry)
    elif group == c and ig == 1:
        filt = w.values.transpose(1, 2, 3, 0)  # [1, kh, kw, O]
        quant = FbQuant([float(s) for s in w.scales], [0] * w.scales.size, axis=3)
        bias_t = ctx.const(f"{node.output[0]}/bias", bias,
                           FbQuant([float(s) for s in scales], [0] * o))
        options = dict(geometry, DepthMultiplier=o // c)
        ctx.emit("DEPTHWISE_CONV_2D", [x.index, ctx.const(f"{node.output[0]}/filter", filt, quant),
                                       bias_t], [out.index], ("DepthwiseConv2DOptions", options))
    else:
        _grouped(ctx, x, w, bias, scales, out, geometry, group)
    ctx.bind(node.output[0], out)


def _conv2d(ctx: Lowering, x: Val, weights: np.ndarray, w_scales: np.ndarray, bias: np.ndarray,
            b_scales: np.ndarray, out: Val, geometry: dict[str, object]) -> None:
    o = weights.shape[0]
    per_axis = [float(s) for s in np.broadcast_to(w_scales, (o,))] if w_scales.size > 1 else [float(w_scales[0])]
    name = ctx.graph.tensors[out.index].name
    filt = ctx.const(f"{name}/filter", weights.transpose(0, 2, 3, 1),
                     FbQuant(per_axis, [0] * len(per_axis), axis=0))
    bias_t = ctx.const(f"{name}/bias", bias, FbQuant([float(s) for s in b_scales], [0] * o))
    ctx.emit("CONV_2D", [x.index, filt, bias_t], [out.index], ("Conv2DOptions", geometry))


def _grouped(ctx: Lowering, x: Val, w: QConst, bias: np.ndarray, b_scales: np.ndarray,
             out: Val, geometry: dict[str, object], group: int) -> None:
    """Grouped conv as SPLIT -> CONV_2D per group -> CONCATENATION (CONV_2D v6 groups are
    newer than the Edge TPU compiler)."""
    n, c, h, wd = x.shape
    o = w.values.shape[0]
    if c % group or o % group:
        raise ctx.fail(f"group {group} does not divide {c} input / {o} output channels")
    ci, co = c // group, o // group
    assert ctx.node is not None  # set while a node is lowered
    parts = [ctx.new_val(f"{ctx.node.output[0]}/in{g}", (n, ci, h, wd), "nhwc", x.q) for g in range(group)]
    ctx.emit("SPLIT", [ctx.int32("axis", [3]), x.index], [p.index for p in parts],
             ("SplitOptions", {"NumSplits": group}))
    scales = np.broadcast_to(w.scales, (o,))
    outs = []
    for g, part in enumerate(parts):
        sl = slice(g * co, (g + 1) * co)
        shape = (out.shape[0], co, out.shape[2], out.shape[3])
        piece = ctx.new_val(f"{ctx.node.output[0]}/out{g}", shape, "nhwc", out.q)
        _conv2d(ctx, part, w.values[sl], scales[sl], bias[sl], b_scales[sl], piece, geometry)
        outs.append(piece.index)
    ctx.emit("CONCATENATION", outs, [out.index], ("ConcatenationOptions", {"Axis": 3}))


# ---- fully connected ----------------------------------------------------------------
def gemm(ctx: Lowering, node: onnx.NodeProto) -> None:
    if ctx.attr("transA", 0) or float(ctx.attr("alpha", 1.0)) != 1.0:
        raise ctx.fail("transA and alpha != 1 are not supported")
    if len(node.input) > 2 and node.input[2] and float(ctx.attr("beta", 1.0)) != 1.0:
        raise ctx.fail("beta != 1 is not supported")
    w = _weight(ctx, node.input[1])
    values, scales = w.values, w.scales
    out_axis = 0
    if node.op_type == "MatMul" or not ctx.attr("transB", 0):
        values, out_axis = values.T, 1  # ONNX [K, N] -> TFLite [N, K]
    if not w.per_tensor and (w.axis != out_axis or w.values.ndim != 2):
        raise ctx.fail("per-channel weights must be along the output axis")
    _fully_connected(ctx, node, values, scales, bias_index=2 if node.op_type == "Gemm" else None)


def _fully_connected(ctx: Lowering, node: onnx.NodeProto, weights: np.ndarray,
                     w_scales: np.ndarray, bias_index: int | None) -> None:
    x = ctx.get(node.input[0])
    if weights.ndim != 2 or len(x.shape) != 2:
        raise ctx.fail("FULLY_CONNECTED needs a 2-D input and a 2-D constant weight")
    n, k = weights.shape
    if x.layout == "flat_hwc":
        _, c, h, wd = ctx.flat_source[x.index]
        # the input arrives in (h, w, c) order: permute the weight columns to match
        weights = weights.reshape(n, c, h, wd).transpose(0, 2, 3, 1).reshape(n, k)
    else:
        x = ctx.logical(x)
    out_q = ctx.out_q(node.output[0])
    b_scales = np.broadcast_to(w_scales, (n,)) * np.float32(x.q.scale)
    bias = _bias(ctx, node, bias_index, b_scales, n) if bias_index else np.zeros(n, np.int32)
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), "logical", out_q)
    per_axis = [float(s) for s in w_scales]
    filt = ctx.const(f"{node.output[0]}/weights", np.ascontiguousarray(weights),
                     FbQuant(per_axis, [0] * len(per_axis), axis=0))
    bias_t = ctx.const(f"{node.output[0]}/bias", bias, FbQuant([float(s) for s in b_scales], [0] * n))
    options: dict[str, object] = {"FusedActivationFunction": fused_activation(out_q), "WeightsFormat": 0,
               "KeepNumDims": False}
    ctx.emit("FULLY_CONNECTED", [x.index, filt, bias_t], [out.index],
             ("FullyConnectedOptions", options))
    ctx.bind(node.output[0], out)


# ---- element-wise -------------------------------------------------------------------
def _operand(ctx: Lowering, name: str, like: Val | None) -> Val:
    """An activation, or a quantized constant materialized in ``like``'s layout."""
    if ctx.qdq.source(name) in ctx.values:
        return ctx.get(name)
    const = ctx.qconst(name)
    if const.values.dtype != np.int8 or not const.per_tensor:
        raise ctx.fail(f"constant {name!r} must be a per-tensor int8 constant")
    data = const.values
    q = QParams(float(const.scales[0]), int(const.zero_points[0]))
    layout = "logical"
    if like is not None and like.layout == "nhwc" and data.ndim <= 4:
        data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(TO_NHWC)
        layout = "nhwc"
    index = ctx.const(name, data, FbQuant([q.scale], [q.zero_point]))
    shape = tuple(data.shape[i] for i in (0, 3, 1, 2)) if layout == "nhwc" else tuple(data.shape)
    return Val(index, shape, layout, q)


def binary(ctx: Lowering, node: onnx.NodeProto) -> None:
    names = list(node.input)
    acts = [n for n in names if ctx.qdq.source(n) in ctx.values]
    if not acts:
        raise ctx.fail("both operands are constants (fold them first)")
    first = ctx.get(acts[0])
    vals = [_operand(ctx, n, first) for n in names]
    if len({len(v.shape) for v in vals}) == 1 and any(v.layout == "nhwc" for v in vals):
        vals = [ctx.nhwc(v) for v in vals]
        layout = "nhwc"
    else:
        vals = [ctx.logical(v) for v in vals]
        layout = "logical"
    out_q = ctx.out_q(node.output[0])
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), layout, out_q)
    opcode = {"Add": "ADD", "Mul": "MUL"}[node.op_type]
    version = None
    if opcode == "MUL" and vals[0].q.scale * vals[1].q.scale / out_q.scale >= 1.0:
        version = 3  # op_version.cc: int8 MUL with a rescale >= 1
    ctx.emit(opcode, [v.index for v in vals], [out.index],
             (f"{node.op_type}Options", {"FusedActivationFunction": fused_activation(out_q)}),
             version=version)
    ctx.bind(node.output[0], out)


def _unary(ctx: Lowering, node: onnx.NodeProto, opcode: str, x: Val, q: QParams,
           options: tuple[str, dict[str, object]] | None = None) -> None:
    out = ctx.new_val(node.output[0], x.shape, x.layout, q)
    ctx.emit(opcode, [x.index], [out.index], options)
    ctx.bind(node.output[0], out)


def _clip_bounds(ctx: Lowering, node: onnx.NodeProto) -> tuple[float, float]:
    lo, hi = float(ctx.attr("min", -np.inf)), float(ctx.attr("max", np.inf))
    for pos in (1, 2):
        if len(node.input) > pos and node.input[pos]:
            name = node.input[pos]
            if name in ctx.qdq.qconsts:
                value = float(ctx.qdq.qconsts[name].dequantized().ravel()[0])
            elif name in ctx.qdq.initializers:
                value = float(ctx.qdq.initializers[name].ravel()[0])
            else:
                raise ctx.fail("Clip bounds must be constants")
            lo, hi = (value, hi) if pos == 1 else (lo, value)
    return lo, hi


def relu(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    q = ctx.out_q(node.output[0], x.q)
    lo, hi = (0.0, np.inf) if node.op_type == "Relu" else _clip_bounds(ctx, node)
    opcode = {(0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get((lo, hi))
    if opcode is None:
        raise ctx.fail(f"Clip({lo}, {hi}) has no TFLite int8 activation; fuse it into its producer")
    _unary(ctx, node, opcode, x, q)


def _fixed_output(ctx: Lowering, node: onnx.NodeProto, tflite_op: str) -> QParams:
    q = ctx.out_q(node.output[0])
    if q.zero_point != -128 or abs(q.scale * 256.0 - 1.0) > 1e-3:
        raise ctx.fail(
            f"{tflite_op} int8 output must have scale 1/256 and zero point -128 "
            f"(TFLite INT8 spec), got scale {q.scale:.6g}, zero point {q.zero_point}"
        )
    return FIXED_OUTPUT


def sigmoid(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    _unary(ctx, node, "LOGISTIC", x, _fixed_output(ctx, node, "LOGISTIC"))


def softmax(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    axis = int(ctx.attr("axis", -1 if ctx.qdq.model.opset_import[0].version >= 13 else 1)) % rank
    q = _fixed_output(ctx, node, "SOFTMAX")
    if rank == 4 and axis == 1:
        x = ctx.nhwc(x)  # channels are last in NHWC
    elif axis == rank - 1:
        x = ctx.logical(x)
    else:  # SOFTMAX works on the last axis: move the axis there and back
        x = ctx.logical(x)
        perm = [a for a in range(rank) if a != axis] + [axis]
        back = [perm.index(a) for a in range(rank)]
        moved = ctx.new_val(f"{node.output[0]}/in", tuple(x.shape[p] for p in perm), "logical", x.q)
        ctx.emit("TRANSPOSE", [x.index, ctx.int32("perm", perm)], [moved.index])
        soft = ctx.new_val(f"{node.output[0]}/last", moved.shape, "logical", q)
        ctx.emit("SOFTMAX", [moved.index], [soft.index], ("SoftmaxOptions", {"Beta": 1.0}))
        out = ctx.new_val(node.output[0], x.shape, "logical", q)
        ctx.emit("TRANSPOSE", [soft.index, ctx.int32("perm", back)], [out.index])
        ctx.bind(node.output[0], out)
        return
    _unary(ctx, node, "SOFTMAX", x, q, ("SoftmaxOptions", {"Beta": 1.0}))


RULES: dict[str, Rule] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": gemm,
    "Add": binary,
    "Mul": binary,
    "Relu": relu,
    "Clip": relu,
    "Sigmoid": sigmoid,
    "Softmax": softmax,
}


def register(op_type: str) -> Callable[[Rule], Rule]:
    def wrap(rule: Rule) -> Rule:
        RULES[op_type] = rule
        return rule

    return wrap


__all__ = ["RULES", "fused_activation", "register"]
