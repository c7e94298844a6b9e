"""Float weight layers in TFLite: the Conv / Gemm / MatMul (and their Relu / Clip) that
``--max-drop`` kept in float (converter/_mixed.py) run as float ops between DEQUANTIZE and
QUANTIZE, like the other float islands (converter/_tflite_float.py). On the Edge TPU such
an island runs on the CPU; the Edge TPU check puts the cut at its first DEQUANTIZE and
the report lists the ops.

Float values live in the logical (ONNX) layout: a Conv transposes its input to NHWC,
runs CONV_2D / DEPTHWISE_CONV_2D with float weights and transposes back (the transpose
folding pass removes pairs that cancel). Versions: every float kernel here exists since
version 1 (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, PAD, TRANSPOSE, RELU, RELU6,
MINIMUM, MAXIMUM).
"""

from __future__ import annotations

import numpy as np
import onnx

from ._tflite_float import (
    FloatVal,
    bind_float,
    emit_float,
    float_input,
    float_rule,
    float_tensor,
)
from ._tflite_lower import Lowering

SAME, VALID = 0, 1  # tflite.Padding
NO_ACTIVATION = 0


def _const_weight(ctx: Lowering, name: str) -> np.ndarray:
    if name in ctx.qdq.qconsts:
        return np.asarray(ctx.qdq.qconsts[name].dequantized(), np.float32)
    if name in ctx.qdq.initializers:
        return np.asarray(ctx.qdq.initializers[name], np.float32)
    raise ctx.fail(f"weight {name!r} is not a constant (a float layer needs constant weights)")


def _bias(ctx: Lowering, node: onnx.NodeProto, index: int | None, n: int) -> int:
    if index is not None and len(node.input) > index and node.input[index]:
        b = _const_weight(ctx, node.input[index]).reshape(-1)
        data = np.broadcast_to(b, (n,)).astype(np.float32)
    else:
        data = np.zeros(n, np.float32)
    return int(ctx.const(f"{node.output[0]}/bias", data))


def _pads(ctx: Lowering, hw: tuple[int, int], kernel: list[int], strides: list[int],
          dilations: list[int]) -> list[int]:
    """[top, left, bottom, right], auto_pad resolved."""
    auto = ctx.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(hw, kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return [begin[0], begin[1], end[0], end[1]]
    return _ints(ctx.attr("pads", [0, 0, 0, 0]))


def _ints(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else []


def _transpose(ctx: Lowering, x: FloatVal, perm: list[int], name: str) -> FloatVal:
    out = float_tensor(ctx, name, tuple(x.shape[p] for p in perm))
    emit_float(ctx, "TRANSPOSE", [x.index, ctx.int32("perm", perm)], [out.index])
    return out


@float_rule("Conv")
def conv(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    w = _const_weight(ctx, node.input[1])
    if w.ndim != 4 or len(x.shape) != 4:
        raise ctx.fail("only 2-D convolutions (4-D tensors) are supported")
    o, ig, kh, kw = w.shape
    c = x.shape[1]
    group = int(ctx.attr("group", 1))
    depthwise = group == c and ig == 1 and group > 1
    if group != 1 and not depthwise:
        raise ctx.fail("a float grouped convolution (other than depthwise) is not lowered")
    strides = _ints(ctx.attr("strides", [1, 1]))
    dilations = _ints(ctx.attr("dilations", [1, 1]))
    name = node.output[0]
    nhwc = _transpose(ctx, x, [0, 2, 3, 1], f"{name}/nhwc_in")
    t, left, b, r = _pads(ctx, (x.shape[2], x.shape[3]), [kh, kw], strides, dilations)
    if t or left or b or r:  # explicit PAD, then VALID: exact for any padding
        n, h, wd, ch = nhwc.shape
        padded = float_tensor(ctx, f"{name}/pad", (n, h + t + b, wd + left + r, ch))
        paddings = np.array([[0, 0], [t, b], [left, r], [0, 0]], np.int32)
        emit_float(ctx, "PAD", [nhwc.index, ctx.const("paddings", paddings)], [padded.index])
        nhwc = padded
    out_shape = ctx.out_shape(name)
    out_nhwc = float_tensor(ctx, f"{name}/nhwc", (out_shape[0], out_shape[2], out_shape[3],
                                                  out_shape[1]))
    geometry: dict[str, object] = {
        "Padding": VALID, "StrideW": strides[1], "StrideH": strides[0],
        "FusedActivationFunction": NO_ACTIVATION,
        "DilationWFactor": dilations[1], "DilationHFactor": dilations[0],
    }
    bias = _bias(ctx, node, 2, o)
    if depthwise:
        filt = ctx.const(f"{name}/filter", np.ascontiguousarray(w.transpose(1, 2, 3, 0)))
        emit_float(ctx, "DEPTHWISE_CONV_2D", [nhwc.index, filt, bias], [out_nhwc.index],
                   ("DepthwiseConv2DOptions", dict(geometry, DepthMultiplier=o // c)))
    else:
        filt = ctx.const(f"{name}/filter", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
        emit_float(ctx, "CONV_2D", [nhwc.index, filt, bias], [out_nhwc.index],
                   ("Conv2DOptions", geometry))
    bind_float(ctx, name, _transpose(ctx, out_nhwc, [0, 3, 1, 2], name))


@float_rule("Gemm", "MatMul")
def gemm(ctx: Lowering, node: onnx.NodeProto) -> None:
    if ctx.attr("transA", 0) or float(ctx.attr("alpha", 1.0)) != 1.0:
        raise ctx.fail("transA and alpha != 1 are not supported")
    if node.op_type == "Gemm" and float(ctx.attr("beta", 1.0)) != 1.0:
        raise ctx.fail("beta != 1 is not supported")
    x = float_input(ctx, node.input[0])
    w = _const_weight(ctx, node.input[1])
    if w.ndim != 2 or len(x.shape) != 2:
        raise ctx.fail("a float FULLY_CONNECTED needs a 2-D input and a 2-D constant weight")
    if node.op_type == "MatMul" or not ctx.attr("transB", 0):
        w = w.T  # ONNX [K, N] -> TFLite [N, K]
    n = w.shape[0]
    out = float_tensor(ctx, node.output[0], ctx.out_shape(node.output[0]))
    filt = ctx.const(f"{node.output[0]}/weights", np.ascontiguousarray(w))
    bias = _bias(ctx, node, 2 if node.op_type == "Gemm" else None, n)
    emit_float(ctx, "FULLY_CONNECTED", [x.index, filt, bias], [out.index],
               ("FullyConnectedOptions", {"FusedActivationFunction": NO_ACTIVATION,
                                          "WeightsFormat": 0, "KeepNumDims": False}))
    bind_float(ctx, node.output[0], out)


@float_rule("Clip")
def clip(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    lo, hi = _clip_bounds(ctx, node)
    out = float_tensor(ctx, node.output[0], ctx.out_shape(node.output[0]))
    if (lo, hi) == (0.0, 6.0):
        emit_float(ctx, "RELU6", [x.index], [out.index])
    else:
        mid = float_tensor(ctx, f"{node.output[0]}/max", out.shape)
        lo_t = ctx.const(f"{node.output[0]}/lo", np.array(lo, np.float32))
        hi_t = ctx.const(f"{node.output[0]}/hi", np.array(hi, np.float32))
        emit_float(ctx, "MAXIMUM", [x.index, lo_t], [mid.index])
        emit_float(ctx, "MINIMUM", [mid.index, hi_t], [out.index])
    bind_float(ctx, node.output[0], out)


def _clip_bounds(ctx: Lowering, node: onnx.NodeProto) -> tuple[float, float]:
    bounds = [-np.inf, np.inf]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            bounds[i - 1] = float(_const_weight(ctx, node.input[i]).reshape(-1)[0])
    if node.input[1:] == [] and ctx.attr("min") is not None:  # opset < 11 attributes
        bounds = [float(ctx.attr("min", -np.inf)), float(ctx.attr("max", np.inf))]
    return float(max(bounds[0], -3.4e38)), float(min(bounds[1], 3.4e38))
