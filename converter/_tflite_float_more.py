"""More float TFLite ops, for the tensor groups ``--max-drop`` keeps in float
(converter/_mixed.py: a group goes float with every node that writes or reads it, so any
op of the model may land in a float island): pooling, general MatMul (an N-D input times
a constant weight, or two activations), Slice and Split. Values stay in the logical (ONNX)
layout; 2-D pooling transposes to NHWC and back (the transpose folding pass removes pairs
that cancel). An op these rules cannot express exactly raises ``ctx.fail`` naming the
node; ``--max-drop`` then leaves that group in int8.
"""

from __future__ import annotations

import numpy as np
import onnx

from ._tflite_float import FloatVal, bind_float, emit_float, float_input, float_rule, float_tensor
from ._tflite_float_layers import gemm as gemm_2d
from ._tflite_lower import Lowering

SAME, VALID = 0, 1
FC_KEEP_DIMS_VERSION = 5  # FULLY_CONNECTED with keep_num_dims
LOWEST = -3.4e38  # what a MaxPool pad holds (PADV2's constant)


def _out(ctx: Lowering, name: str) -> FloatVal:
    return float_tensor(ctx, name, ctx.out_shape(name))


def _nhwc(ctx: Lowering, x: FloatVal, name: str) -> FloatVal:
    out = float_tensor(ctx, name, (x.shape[0], x.shape[2], x.shape[3], x.shape[1]))
    emit_float(ctx, "TRANSPOSE", [x.index, ctx.int32("perm", [0, 2, 3, 1])], [out.index])
    return out


def _nchw(ctx: Lowering, x: FloatVal, name: str) -> FloatVal:
    out = float_tensor(ctx, name, (x.shape[0], x.shape[3], x.shape[1], x.shape[2]))
    emit_float(ctx, "TRANSPOSE", [x.index, ctx.int32("perm", [0, 3, 1, 2])], [out.index])
    return out


@float_rule("GlobalAveragePool")
def global_average_pool(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    axes = list(range(2, len(x.shape)))
    out = _out(ctx, node.output[0])
    emit_float(ctx, "MEAN", [x.index, ctx.int32("axes", axes)], [out.index],
               ("ReducerOptions", {"KeepDims": True}))
    bind_float(ctx, node.output[0], out)


@float_rule("MaxPool", "AveragePool")
def pool(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", [1] * len(kernel))]
    if len(kernel) != 2 or len(x.shape) != 4 or list(ctx.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.fail("only 2-D pooling without dilation is lowered in float")
    if len(node.output) > 1 and node.output[1]:
        raise ctx.fail("MaxPool indices output is not supported")
    auto = ctx.attr("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else str(auto)) != "NOTSET":
        raise ctx.fail("auto_pad pooling is not lowered in float")
    is_max = node.op_type == "MaxPool"
    pads = [int(p) for p in ctx.attr("pads", [0, 0, 0, 0])]
    out_shape = ctx.out_shape(node.output[0])
    name = node.output[0]
    nhwc = _nhwc(ctx, x, f"{name}/nhwc_in")
    # ceil_mode: the windows past the end see only real values (pad with the lowest float
    # for a maximum); an average must not count them
    extra = [max((o - 1) * s + k - (size + pads[d] + pads[d + 2]), 0)
             for d, (o, s, k, size) in enumerate(zip(out_shape[2:], strides, kernel, x.shape[2:],
                                                     strict=True))]
    if any(pads) or any(extra):
        if not is_max:
            raise ctx.fail("a float AveragePool with pads or ceil_mode is not lowered")
        t, left, b, r = pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]
        n, h, w, c = nhwc.shape
        padded = float_tensor(ctx, f"{name}/pad", (n, h + t + b, w + left + r, c))
        paddings = np.array([[0, 0], [t, b], [left, r], [0, 0]], np.int32)
        emit_float(ctx, "PADV2", [nhwc.index, ctx.const("paddings", paddings),
                                  ctx.const(f"{name}/lowest", np.array(LOWEST, np.float32))],
                   [padded.index])
        nhwc = padded
    pooled = float_tensor(ctx, f"{name}/nhwc", (out_shape[0], out_shape[2], out_shape[3], out_shape[1]))
    got = [(nhwc.shape[1 + d] - kernel[d]) // strides[d] + 1 for d in (0, 1)]
    if got != list(out_shape[2:]):
        raise ctx.fail(f"output size {list(out_shape)} has no TFLite float pooling equivalent")
    emit_float(ctx, "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [nhwc.index], [pooled.index],
               ("Pool2DOptions", {"Padding": VALID, "StrideW": strides[1], "StrideH": strides[0],
                                  "FilterWidth": kernel[1], "FilterHeight": kernel[0],
                                  "FusedActivationFunction": 0}))
    bind_float(ctx, name, _nchw(ctx, pooled, name))


@float_rule("MatMul")
def matmul(ctx: Lowering, node: onnx.NodeProto) -> None:
    """2-D times a constant: FULLY_CONNECTED (converter/_tflite_float_layers.py); N-D times
    a constant 2-D weight: FULLY_CONNECTED keeping the leading dims; two activations:
    BATCH_MATMUL."""
    a = float_input(ctx, node.input[0])
    b_name = node.input[1]
    const = b_name in ctx.qdq.initializers or b_name in ctx.qdq.qconsts
    if const and len(a.shape) == 2:
        gemm_2d(ctx, node)
        return
    out = _out(ctx, node.output[0])
    if const:
        b = float_input(ctx, b_name)
        if len(b.shape) != 2:
            raise ctx.fail("a float MatMul with a constant weight of rank other than 2 is not lowered")
        w = _constant(ctx, b_name).T  # ONNX [K, N] -> TFLite [N, K]
        filt = ctx.const(f"{node.output[0]}/weights", np.ascontiguousarray(w, np.float32))
        bias = ctx.const(f"{node.output[0]}/bias", np.zeros(w.shape[0], np.float32))
        ctx.emit("FULLY_CONNECTED", [a.index, filt, bias], [out.index],
                 ("FullyConnectedOptions", {"FusedActivationFunction": 0, "WeightsFormat": 0,
                                            "KeepNumDims": True}),
                 version=FC_KEEP_DIMS_VERSION)
    else:
        b = float_input(ctx, b_name)
        if len(a.shape) < 2 or len(b.shape) < 2:
            raise ctx.fail("a float MatMul of vectors is not lowered")
        emit_float(ctx, "BATCH_MATMUL", [a.index, b.index], [out.index],
                   ("BatchMatMulOptions", {"AdjX": False, "AdjY": False,
                                           "AsymmetricQuantizeInputs": False}))
    bind_float(ctx, node.output[0], out)


def _constant(ctx: Lowering, name: str) -> np.ndarray:
    if name in ctx.qdq.qconsts:
        return np.asarray(ctx.qdq.qconsts[name].dequantized(), np.float32)
    return np.asarray(ctx.qdq.initializers[name], np.float32)


def _ints(ctx: Lowering, node: onnx.NodeProto, pos: int) -> list[int] | None:
    if len(node.input) <= pos or not node.input[pos]:
        return None
    name = node.input[pos]
    if name not in ctx.qdq.initializers:
        raise ctx.fail(f"input {name!r} must be a constant")
    return [int(v) for v in np.asarray(ctx.qdq.initializers[name]).ravel()]


@float_rule("Slice")
def slice_(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    rank = len(x.shape)
    starts, ends = _ints(ctx, node, 1), _ints(ctx, node, 2)
    if starts is None or ends is None:
        raise ctx.fail("Slice needs constant starts and ends")
    axes = _ints(ctx, node, 3) or list(range(len(starts)))
    steps = _ints(ctx, node, 4) or [1] * len(starts)
    begin, end, stride = [0] * rank, list(x.shape), [1] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= rank
        size = x.shape[axis]
        if step <= 0:
            raise ctx.fail("a float Slice with a negative step is not lowered")
        start = min(max(start + size if start < 0 else start, 0), size)
        stop = min(max(stop + size if stop < 0 else stop, 0), size)
        begin[axis], end[axis], stride[axis] = start, max(stop, start), step
    out = _out(ctx, node.output[0])
    emit_float(ctx, "STRIDED_SLICE", [x.index, ctx.int32("begin", begin), ctx.int32("end", end),
                                      ctx.int32("strides", stride)], [out.index],
               ("StridedSliceOptions", {}))
    bind_float(ctx, node.output[0], out)


@float_rule("Split")
def split(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    axis = int(ctx.attr("axis", 0)) % len(x.shape)
    sizes = _ints(ctx, node, 1) or [int(v) for v in ctx.attr("split", [])]
    if not sizes:
        count = len(node.output)
        sizes = [x.shape[axis] // count] * count
    outs = [_out(ctx, name) for name in node.output]
    emit_float(ctx, "SPLIT_V", [x.index, ctx.int32("sizes", sizes),
                                ctx.const("axis", np.array(axis, np.int32))],
               [o.index for o in outs], ("SplitVOptions", {"NumSplits": len(outs)}))
    for name, out in zip(node.output, outs, strict=True):
        bind_float(ctx, name, out)
