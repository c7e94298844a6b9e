"""Checks for the data-movement and structural ops (issue 14): Split, Slice, Transpose,
Squeeze / Unsqueeze, Resize, ConvTranspose, Pad, ReduceMean, Gather, Expand / Tile,
Softmax on any axis.

Each check returns why a node stays float (or None). They only ask what the int8 QDQ
model needs (constant axes, sizes and indices; a padding value that int8 holds exactly);
what TFLite cannot express is refused by the TFLite lowering, with its own reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ._ir import Graph


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _non_const(node: onnx.NodeProto, g: Graph, positions: range, what: str) -> str | None:
    for pos in positions:
        if len(node.input) > pos and node.input[pos] and not g.is_const(node.input[pos]):
            return f"{what} (input {pos}) is not a constant"
    return None


def check_split(node: onnx.NodeProto, g: Graph) -> str | None:
    return _non_const(node, g, range(1, 2), "split sizes")


def check_expand_tile(node: onnx.NodeProto, g: Graph) -> str | None:
    return _non_const(node, g, range(1, 2), "shape/repeats")


def check_slice(node: onnx.NodeProto, g: Graph) -> str | None:
    reason = _non_const(node, g, range(1, 5), "starts/ends/axes/steps")
    steps = node.input[4] if reason is None and len(node.input) > 4 else ""
    if steps and np.any(g.inits[steps] == 0):
        return "a step of 0"
    return reason


def check_axes_input(node: onnx.NodeProto, g: Graph) -> str | None:
    """Squeeze / Unsqueeze (opset >= 13): the axes input must be a constant."""
    return _non_const(node, g, range(1, 2), "axes")


def check_resize(node: onnx.NodeProto, g: Graph) -> str | None:
    reason = _non_const(node, g, range(1, 4), "roi/scales/sizes")
    if reason:
        return reason
    if _text(_attr(node, "mode", "nearest")) == "cubic":
        return "cubic interpolation overshoots its input's range (int8 keeps the input's)"
    return None


def check_conv_transpose(node: onnx.NodeProto, g: Graph) -> str | None:
    if not g.is_const(node.input[1]) or g.inits[node.input[1]].ndim != 4:
        return "weight is not a constant 4-D tensor (only 2-D ConvTranspose is quantized)"
    if len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
        return "bias is not a constant"
    if int(_attr(node, "group", 1)) != 1:
        return "group > 1"
    if _attr(node, "output_shape") is not None:
        return "the output_shape attribute (give pads instead)"
    if _text(_attr(node, "auto_pad", "NOTSET")) != "NOTSET":
        return "auto_pad (give explicit pads instead)"
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return "dilation"
    return None


def check_pad(node: onnx.NodeProto, g: Graph) -> str | None:
    reason = _non_const(node, g, range(1, 4), "pads/constant_value/axes")
    if reason:
        return reason
    mode = _text(_attr(node, "mode", "constant"))
    if mode not in ("constant", "reflect", "edge"):
        return f"mode {mode!r}"
    pads = _attr(node, "pads") if len(node.input) < 2 else g.inits[node.input[1]]
    if pads is not None and np.any(np.asarray(pads) < 0):
        return "negative pads (a crop)"
    value = node.input[2] if len(node.input) > 2 else ""
    if mode == "constant" and value and np.any(g.inits[value] != 0):
        return "a non-zero padding value (int8 pads with the zero point, i.e. 0.0)"
    return None


def check_reduce_mean(node: onnx.NodeProto, g: Graph) -> str | None:
    if g.shape(node.input[0]) is None:
        return "input rank unknown"
    return _non_const(node, g, range(1, 2), "axes")


def check_gather(node: onnx.NodeProto, g: Graph) -> str | None:
    if g.is_const(node.input[0]):
        return "gathers from a constant table (an embedding): stays float"
    if not g.is_const(node.input[1]):
        return "indices are not a constant"
    if g.inits[node.input[1]].ndim > 1:
        return "indices of rank > 1"
    return None


def check_softmax(node: onnx.NodeProto, g: Graph) -> str | None:
    shape = g.shape(node.input[0])
    axis = int(_attr(node, "axis", -1 if g.opset >= 13 else 1))
    if g.opset < 13 and shape is not None and axis % len(shape) != len(shape) - 1:
        return "Softmax before opset 13 over a non-last axis (flattens the trailing axes)"
    return None
