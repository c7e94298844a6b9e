"""Lowering rules for ops that move int8 data without new parameters: pooling,
Flatten / Reshape and Concat (they keep their input's scale and zero point; when the
ONNX model gives the output other parameters, an explicit requantize is emitted)."""

from __future__ import annotations

import numpy as np
import onnx
from edgeship.converter._tflite_fb import FbQuant
from edgeship.converter._tflite_lower import TO_NHWC, Lowering, Val, qparams_close
from edgeship.converter._tflite_ops import SAME, _operand, _padding, register
from edgeship.converter._tflite_qdq import QParams


def _pool_output(ctx: Lowering, x: Val, padding: int, kernel: list[int], strides: list[int]) -> tuple[int, int]:
    dims = []
    for size, k, s in zip(x.shape[2:], kernel, strides, strict=True):
        dims.append(-(-size // s) if padding == SAME else (size - k) // s + 1)
    return dims[0], dims[1]


@register("MaxPool")
@register("AveragePool")
def pool(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.nhwc(ctx.get(node.input[0]))
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * len(kernel)))
    if len(kernel) != 2 or list(ctx.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.fail("only 2-D pooling without dilation is supported")
    is_max = node.op_type == "MaxPool"
    if not is_max and not qparams_close(ctx.out_q(node.output[0], x.q), x.q):
        _average_as_depthwise(ctx, node, x, kernel, strides)
        return
    if len(node.output) > 1 and node.output[1]:
        raise ctx.fail("MaxPool indices output is not supported")
    # TFLite SAME skips padding in averages and maxima (count_include_pad=0, -inf pads);
    # explicit PAD writes the zero point: right for count_include_pad=1, and for MaxPool
    # only when the zero point is the int8 minimum
    include_pad = not is_max and bool(ctx.attr("count_include_pad", 0))
    pad_ok = include_pad or (is_max and x.q.zero_point == -128)
    out_shape = ctx.out_shape(node.output[0])
    extra = _ceil_extra(ctx, x, kernel, strides, out_shape) if is_max else (0, 0)
    if any(extra) and not pad_ok:
        raise ctx.fail("ceil_mode=1 reads past the input; exact in int8 only when the input's "
                       f"zero point is -128 (a ReLU'd input), not {x.q.zero_point}")
    padding, x = _padding(ctx, x, kernel, strides, [1, 1], pad_ok=pad_ok, explicit=include_pad,
                          extra_end=extra)
    if tuple(out_shape[2:]) != _pool_output(ctx, x, padding, kernel, strides):
        raise ctx.fail(f"output size {list(out_shape)} (ceil_mode?) has no TFLite equivalent")
    _pool2d(ctx, node, x, "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", padding, kernel,
            strides, out_shape)


def _average_as_depthwise(ctx: Lowering, node: onnx.NodeProto, x: Val, kernel: list[int],
                          strides: list[int]) -> None:
    """An AveragePool whose output scale differs from its input's (converter/_pool_ties.py)
    as DEPTHWISE_CONV_2D with weights 1 / n: one rounding of the average at the output
    scale, as onnxruntime's QLinearAveragePool does (AVERAGE_POOL_2D + a requantize would
    round twice)."""
    if any(int(p) for p in ctx.attr("pads", [0, 0, 0, 0])) or ctx.attr("ceil_mode", 0):
        raise ctx.fail("a requantizing AveragePool needs full windows (no pads, no ceil_mode)")
    c, n = x.shape[1], kernel[0] * kernel[1]
    out_q = ctx.out_q(node.output[0], x.q)
    w_scales = np.full(c, 1.0 / (127.0 * n), np.float32)
    b_scales = (w_scales * np.float32(x.q.scale)).astype(np.float32)
    padding, x = _padding(ctx, x, kernel, strides, [1, 1])
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), "nhwc", out_q)
    name = node.output[0]
    filt = ctx.const(f"{name}/filter", np.full((1, kernel[0], kernel[1], c), 127, np.int8),
                     FbQuant([float(s) for s in w_scales], [0] * c, axis=3))
    bias = ctx.const(f"{name}/bias", np.zeros(c, np.int32), FbQuant([float(s) for s in b_scales], [0] * c))
    options: dict[str, object] = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0], "DepthMultiplier": 1,
               "FusedActivationFunction": 0, "DilationWFactor": 1, "DilationHFactor": 1}
    ctx.emit("DEPTHWISE_CONV_2D", [x.index, filt, bias], [out.index], ("DepthwiseConv2DOptions", options))
    ctx.bind(node.output[0], out)


def _ceil_extra(ctx: Lowering, x: Val, kernel: list[int], strides: list[int],
                out_shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows / columns that ceil_mode=1 reads past the pads: a MaxPool window there sees
    only real values, which PAD with the zero point keeps exact when that is the int8
    minimum (a ReLU'd input), like the explicit pads."""
    auto = ctx.attr("auto_pad", b"NOTSET")
    if not ctx.attr("ceil_mode", 0) or (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET":
        return 0, 0
    pads = list(ctx.attr("pads", [0, 0, 0, 0]))
    extra = []
    for d, (out, stride, k, size) in enumerate(
            zip(out_shape[2:], strides, kernel, x.shape[2:], strict=True)):
        extra.append(max((out - 1) * stride + k - (size + pads[d] + pads[d + 2]), 0))
    return extra[0], extra[1]


def _pool2d(ctx: Lowering, node: onnx.NodeProto, x: Val, opcode: str, padding: int,
            kernel: list[int], strides: list[int], out_shape: tuple[int, ...]) -> None:
    out_q = ctx.out_q(node.output[0], x.q)
    # int8 pooling kernels keep the input's parameters; requantize afterwards if needed
    out = ctx.new_val(node.output[0], out_shape, "nhwc", x.q)
    options: dict[str, object] = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
               "FilterWidth": kernel[1], "FilterHeight": kernel[0],
               "FusedActivationFunction": 0}
    ctx.emit(opcode, [x.index], [out.index], ("Pool2DOptions", options))
    ctx.bind(node.output[0], ctx.requant(out, out_q))


@register("GlobalAveragePool")
def global_average_pool(ctx: Lowering, node: onnx.NodeProto) -> None:
    """MEAN over H and W (keep_dims), not AVERAGE_POOL_2D: an average exactly halfway
    between two int8 steps is then rounded to even by XNNPACK's int8 MEAN (LiteRT's
    default delegate), as onnxruntime does with the scale the converter picks
    (``exact_pool_scales``). AVERAGE_POOL_2D rounds it away from zero on the raw int8
    values; LiteRT's own MEAN kernel (no XNNPACK) rounds it up. With a tie-free output
    scale (converter/_pool_ties.py) no average is halfway: DEPTHWISE_CONV_2D over the whole
    H x W window, as for AveragePool."""
    x = ctx.nhwc(ctx.get(node.input[0]))
    if len(x.shape) != 4:
        raise ctx.fail("GlobalAveragePool needs a 4-D input")
    out_q = ctx.out_q(node.output[0], x.q)
    if out_q.zero_point == x.q.zero_point and 0.0 < x.q.scale / out_q.scale - 1.0 <= 1.0 / 512:
        # a tie-free output scale (converter/_pool_ties.py): one window over H x W, summed
        # exactly in int32 and rounded once (LiteRT's MEAN computes that sum in float32
        # with the zero points in it: ~1e-5 of error, more than a tie was moved)
        _average_as_depthwise(ctx, node, x, [x.shape[2], x.shape[3]], [1, 1])
        return
    mean_q = x.q  # requantized to out_q afterwards if the ONNX model has other parameters
    if mean_q.zero_point % 2:
        # XNNPACK's MEAN rounds (average + output zero point) to even: only an even zero
        # point leaves that equal to rounding the average itself (what onnxruntime does),
        # so average into zero point - 1 and shift back exactly (costs one int8 QUANTIZE,
        # and an average of values that are all int8 -128 ends one step high)
        mean_q = QParams(mean_q.scale, mean_q.zero_point - 1)
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), "nhwc", mean_q)
    ctx.emit("MEAN", [x.index, ctx.int32("axes", [1, 2])], [out.index],
             ("ReducerOptions", {"KeepDims": True}))
    ctx.bind(node.output[0], ctx.requant(out, out_q))


@register("Flatten")
@register("Reshape")
def reshape(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    shape = ctx.out_shape(node.output[0])
    out_q = ctx.out_q(node.output[0], x.q)
    if x.layout == "nhwc" and len(shape) == 2 and shape[0] == x.shape[0]:
        n, c, h, w = x.shape
        layout = "logical" if c == 1 or h * w == 1 else "flat_hwc"  # same order when trivial
        out = ctx.new_val(node.output[0], shape, layout, x.q)
        ctx.reshape(Val(x.index, (n, c * h * w), "logical", x.q), out)
        if layout == "flat_hwc":
            ctx.flat_source[out.index] = (n, c, h, w)
    else:
        x = ctx.logical(x)
        out = ctx.new_val(node.output[0], shape, "logical", x.q)
        ctx.reshape(x, out)
    requantized = ctx.requant(out, out_q)
    if requantized is not out and out.layout == "flat_hwc":
        ctx.flat_source[requantized.index] = ctx.flat_source[out.index]
    ctx.bind(node.output[0], requantized)


@register("Concat")
def concat(ctx: Lowering, node: onnx.NodeProto) -> None:
    # a constant input (anchors, a class token) is an int8 constant with the output's
    # parameters (converter/_quantize.py const_operand); it takes the layout of the first
    # activation input
    first = next((ctx.get(n) for n in node.input if ctx.qdq.source(n) in ctx.values), None)
    if first is None:
        raise ctx.fail("every input is a constant (fold it first)")
    vals = [_operand(ctx, name, first) for name in node.input]
    rank = len(vals[0].shape)
    axis = int(ctx.attr("axis")) % rank
    out_q = ctx.out_q(node.output[0], vals[0].q)
    if rank == 4 and any(v.layout == "nhwc" for v in vals):
        vals = [ctx.nhwc(v) for v in vals]
        layout, stored_axis = "nhwc", TO_NHWC.index(axis)
    else:
        vals = [ctx.logical(v) for v in vals]
        layout, stored_axis = "logical", axis
    # inputs are brought to the output's parameters first: CONCATENATION then copies bytes
    vals = [ctx.requant(v, out_q) for v in vals]
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), layout, out_q)
    ctx.emit("CONCATENATION", [v.index for v in vals], [out.index],
             ("ConcatenationOptions", {"Axis": stored_axis, "FusedActivationFunction": 0}))
    ctx.bind(node.output[0], out)
