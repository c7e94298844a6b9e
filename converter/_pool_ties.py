"""AveragePool output scales that leave no average halfway between two int8 steps, so that
onnxruntime and LiteRT round every average the same way.

With the output's parameters equal to the input's (the TFLite INT8 spec's pooling rule),
an average of ``n`` int8 values lands exactly halfway between two steps whenever the sum of
(q - zero point) is an odd multiple of n / 2 (a 3x2 window: 16 % of PP-OCRv4's pooled
values). The two formats then round it differently: onnxruntime's QLinearAveragePool
computes in float32 and rounds to nearest even (or, where float32 rounding already moved
the value, to whichever side it fell), LiteRT's AVERAGE_POOL_2D rounds the raw int8 sum
away from zero. One step of difference at 9 % of the pooled values of PP-OCRv4's
recognizer grew through its attention neck into different CTC strings.

The output scale here is the input's divided by ``1 + eps`` with eps = 1 / (1024 n): every
exact half moves away from zero by (k + 1/2) eps (relative eps, ~300x float32's rounding
error), every other average (at least 1 / (2n) from a half) by at most 255 eps < 1 / (4n),
so both runtimes round each average to the nearest step with the half cases away from zero
in the centered domain -- the same integers. The TFLite writer computes such a pool as a
depthwise convolution with weights 1 / n (a requantizing kernel; AVERAGE_POOL_2D cannot
change scale), see ``converter/_tflite_ops_shape.py``.
"""

from __future__ import annotations

import onnx

from ._ir import Graph
from ._plan import Plan, QParams

MAX_WINDOW = 100  # larger windows: eps would near float32's rounding error
MAX_GLOBAL = 1024  # GlobalAveragePool (lowered the same way): eps >= ~1e-6 relative


def tie_free_eps(n: int) -> float:
    """The relative scale change for a window of ``n`` values."""
    return 1.0 / (1024.0 * n)


def tie_free_pool_scales(graph: Graph, plan: Plan) -> None:
    """Give each unpadded 2-D AveragePool the output scale ``input scale / (1 + eps)``
    (updates ``plan.params`` in place; idempotent), and the same to the data-movement ops
    after it. A reader that keeps the input's parameters (a Concat with the input's group)
    requantizes the output back exactly: (q - z) / (1 + eps) rounds to q - z, as
    |q - z| eps < 1/2."""
    for node in graph.nodes:
        n = _window(node) if node.op_type == "AveragePool" else _global_window(graph, node)
        if n is None or not plan.is_quantized_node(node):
            continue
        x, y = node.input[0], node.output[0]
        if x not in plan.params or y not in plan.params:
            continue
        if y in graph.output_names:
            continue
        src = plan.params[x]
        if plan.params[y] == src:  # not moved yet
            moved = QParams(float(src.scale / (1.0 + tie_free_eps(n))), src.zero_point)
            _set_downstream(graph, plan, y, src, moved)


def _set_downstream(graph: Graph, plan: Plan, t: str, old: QParams, new: QParams) -> None:
    """``new`` for tensor ``t`` and for what data-movement readers (output rule "same":
    Flatten, Reshape, MaxPool ...) pass on from it, so that they keep equal parameters."""
    plan.params[t] = new
    for user in graph.consumers.get(t, []):
        rule = plan.rules.get(user.name)
        if rule is None or rule.output != "same" or user.op_type in ("AveragePool", "GlobalAveragePool"):
            continue
        for out in user.output:
            if plan.params.get(out) == old and out not in graph.output_names:
                _set_downstream(graph, plan, out, old, new)


def _global_window(graph: Graph, node: onnx.NodeProto) -> int | None:
    """The count a GlobalAveragePool averages when it is even (an odd count has no
    halfway average) and static, else None."""
    if node.op_type != "GlobalAveragePool":
        return None
    shape = graph.shape(node.input[0])
    if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    n = int(shape[2]) * int(shape[3])
    return n if n % 2 == 0 and 1 < n <= MAX_GLOBAL else None


def _window(node: onnx.NodeProto) -> int | None:
    """The window size of an AveragePool every window of which is full, else None."""
    if node.op_type != "AveragePool":
        return None
    attrs = {a.name: a for a in node.attribute}
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    ceil = attrs["ceil_mode"].i if "ceil_mode" in attrs else 0
    if len(kernel) != 2 or any(pads) or auto not in ("NOTSET", "VALID") or ceil:
        return None
    if "dilations" in attrs and any(d != 1 for d in attrs["dilations"].ints):
        return None
    n = kernel[0] * kernel[1]
    return n if 1 < n <= MAX_WINDOW else None
