"""The part of a group's range its readers can tell apart: a Sigmoid saturates.

A parameter group (converter/_plan.py: a tensor and the tensors its Concat / Reshape /
Split / Transpose ... share one scale with) takes the union of its members' calibrated
ranges. Only the members the group's data leaves through are read: a member whose every
reader is a data-moving op inside the same group (the moves below: each output element is
one input element, or a max of some) passes its values on unchanged, so its range adds
nothing its readers outside the group do not see. And a member read only by Sigmoid
cannot be told apart below ``-SATURATED`` or above it: the Sigmoid's int8 output (fixed
scale 1/256) reads 0 or its top step there. So the group's span is the union of what the
members it leaves through can tell apart. The saturation is used only in a group that
other readers share (a lone Sigmoid input is left as it was: ppocr_rec's GELU-style
Sigmoid inputs, clamped, read one string of 64 apart in LiteRT and onnxruntime).

YOLOv8's head: ``Concat(box logits, class logits)`` per stride, reshaped and joined, then
``Split`` back into the box part (its DFL Softmax) and the class part (a Sigmoid). The
class logits reach -26 (sigmoid 5e-12) on calibration data; the group spanned -26..13, a
step of 0.155 in logit space for both parts. Read where it is told apart, the class part
stops at -6.24: -6.24..13.2, a step of 0.076.

Pure logic on the plan's groups and the calibrated ranges.
"""

from __future__ import annotations

import math

from ._ir import Graph
from ._oprules import OpRule

# sigmoid(-x) under half an output step of 1/256, and 1 - sigmoid(x) likewise
SATURATED = math.log(2 * 256 - 1)
# ops whose every output element is one input element (or the max of some): a range
# clamped before them is the range clamped after them
MOVES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
                   "Split", "Slice", "Gather", "Expand", "Tile", "MaxPool"})


def read_ranges(
    graph: Graph,
    rules: dict[str, OpRule],
    quantized: list[str],
    group_of: dict[str, str],
    ranges: dict[str, tuple[float, float]],
) -> dict[str, tuple[float, float]]:
    """Each member's range as its readers outside the group tell it apart; a member read
    only by moves inside its group is left out, unless its group would then be empty."""
    out: dict[str, tuple[float, float]] = {}
    members: dict[str, list[str]] = {}
    for t in quantized:
        members.setdefault(group_of[t], []).append(t)
    outputs = set(graph.output_names)
    for group in members.values():
        seen = {t: _told_apart(graph, rules, t, group_of, outputs, ranges) for t in group}
        kept = {t: r for t, (r, _) in seen.items() if r is not None}
        # a Sigmoid's saturation narrows a group only where other readers share it (a
        # lone Sigmoid input keeps its scale: LiteRT's LOGISTIC then rounds as before)
        if all(sig for r, sig in seen.values() if r is not None):
            kept = {t: ranges.get(t, (0.0, 0.0)) for t in kept}
        out.update(kept if kept else {t: ranges.get(t, (0.0, 0.0)) for t in group})
    return out


def _told_apart(
    graph: Graph,
    rules: dict[str, OpRule],
    t: str,
    group_of: dict[str, str],
    outputs: set[str],
    ranges: dict[str, tuple[float, float]],
) -> tuple[tuple[float, float] | None, bool]:
    """(what ``t``'s readers outside its group tell apart, None: none; whether only
    Sigmoid reads it there)."""
    lo, hi = ranges.get(t, (0.0, 0.0))
    readers = graph.consumers.get(t, [])
    if t in outputs or not readers:
        return (lo, hi), False
    outside = [n for n in readers if not _moves_within(n, rules, t, group_of)]
    if not outside:
        return None, False
    if all(n.op_type == "Sigmoid" for n in outside):
        return (min(max(lo, -SATURATED), SATURATED), max(min(hi, SATURATED), -SATURATED)), True
    return (lo, hi), False


def _moves_within(node: object, rules: dict[str, OpRule], t: str, group_of: dict[str, str]) -> bool:
    """Whether ``node`` only moves ``t``'s values into tensors of ``t``'s own group."""
    op, name = getattr(node, "op_type", ""), getattr(node, "name", "")
    outs = [o for o in getattr(node, "output", []) if o]
    return (op in MOVES and name in rules and bool(outs)
            and all(group_of.get(o) == group_of[t] for o in outs))


__all__ = ["MOVES", "SATURATED", "read_ranges"]
