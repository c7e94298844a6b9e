"""Lowering rules for arithmetic and activation ops (issue 14): HardSwish, HardSigmoid,
Sub, Tanh, LeakyRelu, PRelu, Gelu, MatMul of two activations, LayerNormalization, and
the ops TFLite has no int8 kernel for (one clear reason each).

All kernels are TFLite's int8 builtins at the lowest version with the int8 kernel
(``OP_VERSIONS`` in :mod:`._tflite_lower`; tensorflow/lite/tools/versioning/op_version.cc).
Element-wise ops keep their input's layout (NHWC or logical), so no TRANSPOSE is added.
"""

from __future__ import annotations

import numpy as np
import onnx
from edgeship.converter import _layernorm
from edgeship.converter._layernorm_ties import int8_vector
from edgeship.converter._oprules_math import (
    NO_INT8_DIV,
    NO_INT8_ERF,
    NO_INT8_POW,
    NO_INT8_RECIPROCAL,
    NO_INT8_SQRT,
    RECURRENT,
    TANH_PARAMS,
)
from edgeship.converter._tflite_fb import FbQuant
from edgeship.converter._tflite_lower import Lowering, Val
from edgeship.converter._tflite_ops import (
    RULES,
    Rule,
    _operand,
    _weight,
    fused_activation,
    gemm,
    register,
)
from edgeship.converter._tflite_qdq import QParams

TANH_OUTPUT = QParams(*TANH_PARAMS)


def _elementwise(ctx: Lowering, node: onnx.NodeProto, opcode: str, x: Val,
                 options: tuple[str, dict[str, object]] | None = None) -> None:
    out = ctx.new_val(node.output[0], x.shape, x.layout, ctx.out_q(node.output[0]))
    ctx.emit(opcode, [x.index], [out.index], options)
    ctx.bind(node.output[0], out)


@register("HardSwish")
def hard_swish(ctx: Lowering, node: onnx.NodeProto) -> None:
    _elementwise(ctx, node, "HARD_SWISH", ctx.get(node.input[0]))


@register("LeakyRelu")
def leaky_relu(ctx: Lowering, node: onnx.NodeProto) -> None:
    alpha = float(ctx.attr("alpha", 0.01))
    _elementwise(ctx, node, "LEAKY_RELU", ctx.get(node.input[0]), ("LeakyReluOptions", {"Alpha": alpha}))


@register("Gelu")
def gelu(ctx: Lowering, node: onnx.NodeProto) -> None:
    approximate = ctx.attr("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    _elementwise(ctx, node, "GELU", ctx.get(node.input[0]),
                 ("GeluOptions", {"Approximate": approximate == "tanh"}))


@register("Tanh")
def tanh(ctx: Lowering, node: onnx.NodeProto) -> None:
    q = ctx.out_q(node.output[0])
    if q.zero_point != 0 or abs(q.scale * 128.0 - 1.0) > 1e-3:
        raise ctx.fail(
            "TANH int8 output must have scale 1/128 and zero point 0 (TFLite INT8 spec), "
            f"got scale {q.scale:.6g}, zero point {q.zero_point}"
        )
    x = ctx.get(node.input[0])
    out = ctx.new_val(node.output[0], x.shape, x.layout, TANH_OUTPUT)
    ctx.emit("TANH", [x.index], [out.index])
    ctx.bind(node.output[0], out)


def _scalar_const(ctx: Lowering, name: str, value: float, like: Val) -> int:
    """``value`` as a one-element int8 constant, exact (q = +-127 or 0), broadcastable to
    ``like``'s stored shape."""
    scale = abs(value) / 127.0 if value else 1.0
    q = np.full((1,) * len(like.stored), 127 if value > 0 else (-127 if value < 0 else 0), np.int8)
    return ctx.const(name, q, FbQuant([scale], [0]))


@register("HardSigmoid")
def hard_sigmoid(ctx: Lowering, node: onnx.NodeProto) -> None:
    """clip(alpha*x + beta, 0, 1) as MUL(x, alpha) -> ADD(beta). TFLite has no
    HARD_SIGMOID. The MUL output is given the scale ``alpha * input scale`` and the
    input's zero point, so it only relabels the int8 values (multiplier exactly 1/127 x
    127: no rounding). The ADD then rounds once into the output parameters, whose range
    lies in [0, 1] with zero point -128: saturation is the clip, as onnxruntime's Q does."""
    x = ctx.get(node.input[0])
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    if alpha <= 0:
        raise ctx.fail(f"HardSigmoid alpha {alpha} <= 0 has no int8 lowering")
    name = ctx.graph.tensors[x.index].name
    scaled = ctx.new_val(f"{node.output[0]}/alpha_x", x.shape, x.layout,
                         QParams(x.q.scale * alpha, x.q.zero_point))
    ctx.emit("MUL", [x.index, _scalar_const(ctx, f"{name}/alpha", alpha, x)], [scaled.index],
             ("MulOptions", {"FusedActivationFunction": 0}))
    out_q = ctx.out_q(node.output[0])
    out = ctx.new_val(node.output[0], x.shape, x.layout, out_q)
    ctx.emit("ADD", [scaled.index, _scalar_const(ctx, f"{name}/beta", beta, x)], [out.index],
             ("AddOptions", {"FusedActivationFunction": fused_activation(out_q)}))
    ctx.bind(node.output[0], out)


@register("Sub")
def sub(ctx: Lowering, node: onnx.NodeProto) -> None:
    acts = [n for n in node.input if ctx.qdq.source(n) in ctx.values]
    if not acts:
        raise ctx.fail("both operands are constants (fold them first)")
    first = ctx.get(acts[0])
    vals = [_operand(ctx, n, first) for n in node.input]
    if len({len(v.shape) for v in vals}) == 1 and any(v.layout == "nhwc" for v in vals):
        vals, layout = [ctx.nhwc(v) for v in vals], "nhwc"
    else:
        vals, layout = [ctx.logical(v) for v in vals], "logical"
    out_q = ctx.out_q(node.output[0])
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), layout, out_q)
    broadcast = vals[0].stored != vals[1].stored
    version = 3 if broadcast and max(len(v.stored) for v in vals) > 4 else None
    ctx.emit("SUB", [v.index for v in vals], [out.index],
             ("SubOptions", {"FusedActivationFunction": fused_activation(out_q)}), version=version)
    ctx.bind(node.output[0], out)


@register("PRelu")
def prelu(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    slope = _operand(ctx, node.input[1], x)  # a constant, stored in x's layout
    _elementwise_two(ctx, node, "PRELU", x, slope)


def _elementwise_two(ctx: Lowering, node: onnx.NodeProto, opcode: str, a: Val, b: Val) -> None:
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), a.layout, ctx.out_q(node.output[0]))
    ctx.emit(opcode, [a.index, b.index], [out.index])
    ctx.bind(node.output[0], out)


@register("MatMul")
def matmul(ctx: Lowering, node: onnx.NodeProto) -> None:
    """A constant weight -> FULLY_CONNECTED (the existing rule); two activations ->
    BATCH_MATMUL (int8 v2; it has no fused activation)."""
    if node.input[1] in ctx.qdq.qconsts:
        if len(ctx.get(node.input[0]).shape) > 2:
            _matmul_rows(ctx, node)
        else:
            gemm(ctx, node)
        return
    a, b = (ctx.logical(ctx.get(n)) for n in node.input)
    if len(a.shape) < 2 or len(b.shape) < 2 or max(len(a.shape), len(b.shape)) > 5:
        raise ctx.fail(f"BATCH_MATMUL needs ranks 2..5, got {len(a.shape)} and {len(b.shape)}")
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), "logical", ctx.out_q(node.output[0]))
    ctx.emit("BATCH_MATMUL", [a.index, b.index], [out.index],
             ("BatchMatMulOptions", {"AdjX": False, "AdjY": False, "AsymmetricQuantizeInputs": False}))
    ctx.bind(node.output[0], out)


def _matmul_rows(ctx: Lowering, node: onnx.NodeProto) -> None:
    """[..., K] x constant [K, N] (a token-wise linear layer, e.g. SVTR's): RESHAPE to
    rows, FULLY_CONNECTED (v4, as the Edge TPU compiler wants; keep_num_dims needs v5),
    RESHAPE back."""
    w = _weight(ctx, node.input[1])
    if w.values.ndim != 2:
        raise ctx.fail("constant MatMul weight must be 2-D")
    if not w.per_tensor and w.axis != 1:
        raise ctx.fail("per-channel weights must be along the output axis")
    values = np.ascontiguousarray(w.values.T)  # ONNX [K, N] -> TFLite [N, K]
    n, k = values.shape
    x = ctx.logical(ctx.get(node.input[0]))
    rows = int(np.prod(x.shape[:-1]))
    base = node.output[0]
    flat = ctx.new_val(f"{base}/rows", (rows, k), "logical", x.q)
    ctx.reshape(x, flat)
    out_q = ctx.out_q(node.output[0])
    w_scales = np.broadcast_to(w.scales, (n,)) if not w.per_tensor else w.scales
    b_scales = np.broadcast_to(w.scales, (n,)).astype(np.float32) * np.float32(x.q.scale)
    filt = ctx.const(f"{base}/weights", values, FbQuant([float(v) for v in w_scales], [0] * len(w_scales)))
    bias = ctx.const(f"{base}/bias", np.zeros(n, np.int32), FbQuant([float(v) for v in b_scales], [0] * n))
    fc = ctx.new_val(f"{base}/fc", (rows, n), "logical", out_q)
    ctx.emit("FULLY_CONNECTED", [flat.index, filt, bias], [fc.index],
             ("FullyConnectedOptions", {"FusedActivationFunction": fused_activation(out_q),
                                        "WeightsFormat": 0, "KeepNumDims": False}))
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), "logical", out_q)
    ctx.reshape(fc, out)
    ctx.bind(node.output[0], out)


def _refuse(reason: str) -> Rule:
    def rule(ctx: Lowering, node: onnx.NodeProto) -> None:
        raise ctx.fail(reason.format(op=node.op_type))

    return rule


for _op, _reason in (("Div", NO_INT8_DIV), ("Sqrt", NO_INT8_SQRT), ("Reciprocal", NO_INT8_RECIPROCAL),
                     ("Pow", NO_INT8_POW), ("Erf", NO_INT8_ERF), ("GRU", RECURRENT)):
    RULES.setdefault(_op, _refuse(_reason))


# ---- LayerNormalization -----------------------------------------------------------------
def _const_vector(ctx: Lowering, name: str, values: np.ndarray) -> int:
    """A float vector as an int8 per-tensor symmetric constant (zero -> scale 1)."""
    q, scale = int8_vector(values)
    return ctx.const(name, q, FbQuant([scale], [0]))


def _mul_version(a: QParams, b_scale: float, out: QParams) -> int | None:
    return 3 if a.scale * b_scale / out.scale >= 1.0 else None  # op_version.cc, as binary()


@register("LayerNormalization")
def layer_norm(ctx: Lowering, node: onnx.NodeProto) -> None:
    """MEAN, SUB, MUL(centered, centered), MEAN, ADD(eps), RSQRT, MUL, MUL(gamma), ADD(beta)
    over the last axis, each int8 with the parameters calibrated for that intermediate
    (converter/_layernorm.py, carried in the QDQ model's metadata)."""
    params = _layernorm.read(ctx.qdq.model).get(node.name)
    if params is None:
        raise ctx.fail("LayerNormalization needs calibrated parameters for its intermediates "
                       f"(QDQ model metadata {_layernorm.METADATA_KEY!r}, written by edgeship convert)")
    x = ctx.logical(ctx.get(node.input[0]))
    rank = len(x.shape)
    if int(ctx.attr("axis", -1)) % rank != rank - 1:
        raise ctx.fail("only LayerNormalization over the last axis has an int8 lowering")
    q = {k: QParams(float(v[0]), int(v[1])) for k, v in params.items()}
    width = x.shape[-1]
    gamma = _ln_const(ctx, node, 1, width, 1.0)
    beta = _ln_const(ctx, node, 2, width, 0.0)
    base = node.output[0]
    reduced = (*x.shape[:-1], 1)
    axes = ctx.int32(f"{base}/axes", [rank - 1])

    def val(key: str, shape: tuple[int, ...]) -> Val:
        return ctx.new_val(f"{base}/{key}", shape, "logical", q[key])

    mean, centered, squared = val("mean", reduced), val("centered", x.shape), val("squared", x.shape)
    ctx.emit("MEAN", [x.index, axes], [mean.index], ("ReducerOptions", {"KeepDims": True}))
    ctx.emit("SUB", [x.index, mean.index], [centered.index],
             ("SubOptions", {"FusedActivationFunction": 0}), version=3 if rank > 4 else None)
    # MUL(centered, centered), not SQUARED_DIFFERENCE(x, mean): one product of two int8
    # values rounded once in float32 (XNNPACK), as onnxruntime's QLinearMul does; the
    # fixed-point SQUARED_DIFFERENCE rounded ~0.1 % of values the other way
    ctx.emit("MUL", [centered.index, centered.index], [squared.index],
             ("MulOptions", {"FusedActivationFunction": 0}),
             version=_mul_version(centered.q, centered.q.scale, squared.q))
    variance, variance_eps, rstd = val("variance", reduced), val("variance_eps", reduced), val("rstd", reduced)
    ctx.emit("MEAN", [squared.index, axes], [variance.index], ("ReducerOptions", {"KeepDims": True}))
    eps = float(ctx.attr("epsilon", 1e-5))
    ctx.emit("ADD", [variance.index, _scalar_const(ctx, f"{base}/eps", eps, variance)], [variance_eps.index],
             ("AddOptions", {"FusedActivationFunction": 0}))
    ctx.emit("RSQRT", [variance_eps.index], [rstd.index])
    normalized, scaled = val("normalized", x.shape), val("scaled", x.shape)
    ctx.emit("MUL", [centered.index, rstd.index], [normalized.index],
             ("MulOptions", {"FusedActivationFunction": 0}),
             version=_mul_version(centered.q, rstd.q.scale, normalized.q))
    gamma_t = _const_vector(ctx, f"{base}/gamma", gamma)
    gamma_quant = ctx.graph.tensors[gamma_t].quant
    assert gamma_quant is not None  # _const_vector quantizes it
    gamma_scale = gamma_quant.scales[0]
    ctx.emit("MUL", [normalized.index, gamma_t], [scaled.index], ("MulOptions", {"FusedActivationFunction": 0}),
             version=_mul_version(normalized.q, gamma_scale, scaled.q))
    out_q = ctx.out_q(node.output[0])
    out = ctx.new_val(node.output[0], x.shape, "logical", out_q)
    ctx.emit("ADD", [scaled.index, _const_vector(ctx, f"{base}/beta", beta)], [out.index],
             ("AddOptions", {"FusedActivationFunction": fused_activation(out_q)}))
    ctx.bind(node.output[0], out)


def _ln_const(ctx: Lowering, node: onnx.NodeProto, index: int, width: int, default: float) -> np.ndarray:
    if len(node.input) <= index or not node.input[index]:
        return np.full(width, default, np.float32)
    name = node.input[index]
    if name in ctx.qdq.qconsts:
        values = ctx.qdq.qconsts[name].dequantized()
    elif name in ctx.qdq.initializers:
        values = np.asarray(ctx.qdq.initializers[name], np.float32)
    else:
        raise ctx.fail(f"LayerNormalization input {name!r} must be a constant")
    return np.broadcast_to(values.reshape(-1), (width,)).astype(np.float32)
