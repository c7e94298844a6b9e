"""Fixed-parameter outputs (Sigmoid, Softmax, Tanh) that a Concat would force on wider data.

int8 Concat gives its inputs and its output one set of parameters (converter/_plan.py,
``unify``), and a Sigmoid's output has fixed ones (scale 1/256, zero point -128: the TFLite
LOGISTIC kernel's). When a Concat joins a Sigmoid's output with a tensor of a wider range
(a YOLOX head: ``Concat(box offsets and log sizes, objectness, class score)``), the whole
group took the fixed parameters and every box value was clamped to [0, 1): ddddocr_det's
output SQNR was 7.4 dB. Here such a Concat input keeps its fixed parameters and the Concat
requantizes it into the group's own, calibrated ones (onnxruntime QLinearConcat takes a
scale per input; the TFLite writer emits a QUANTIZE before CONCATENATION): both formats
stay fully integer.

LiteRT's requantization is not onnxruntime's: the builtin QUANTIZE rounds x * r and the
zero point's z * r apart, XNNPACK's multiplier has 8 fraction bits (0.2 is 51/256), so a
score can land one step of the Concat's scale apart in the two runtimes (9-19 % of the
scores of a YOLOX-style head in tests/test_fixed_split.py; a scale snapped to an odd
multiple of 1/256 did not remove it, and no scale makes all three agree: exact
multipliers need a power-of-two ratio, which puts ties on 1 value in 8 or more, rounded
apart again). One step of a ~5/255 scale on a score: the detections stay the same
(hw-bench/bench_realworld.py's LiteRT agreement on ddddocr_det).

Pure logic on the plan's groups and the calibrated ranges.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from ._ir import Graph
from ._oprules import OpRule

QMIN, QMAX = -128, 127

Split = frozenset[tuple[str, str]]  # (unify node name, input tensor name) left unjoined


def fixed_range(fixed: tuple[float, int]) -> tuple[float, float]:
    scale, zero_point = fixed
    return scale * (QMIN - zero_point), scale * (QMAX - zero_point)


def split_fixed_inputs(
    graph: Graph,
    rules: dict[str, OpRule],
    quantized: list[str],
    ranges: dict[str, tuple[float, float]],
    group_with: Callable[[Split], dict[str, str]],
) -> tuple[Split, dict[str, str]]:
    """The unify inputs to leave out of their Concat's group, and the groups without them.

    A group whose fixed parameters do not cover the calibrated range of its other members
    is in conflict; each of its unify nodes then leaves out the inputs whose own range the
    fixed parameters do cover (the Sigmoid side). Repeated until no group is in conflict
    or nothing more can be split (one round for a YOLOX head)."""
    split: Split = frozenset()
    group_of = group_with(split)
    while True:
        more = {
            (node.name, name)
            for node, fixed in _conflicts(graph, rules, quantized, group_of, ranges)
            for name in node.input
            if name in group_of and (node.name, name) not in split
            and _covered(ranges.get(name), fixed)
        }
        if not more:
            return split, group_of
        split = split | more
        group_of = group_with(split)


def _conflicts(
    graph: Graph,
    rules: dict[str, OpRule],
    quantized: list[str],
    group_of: dict[str, str],
    ranges: dict[str, tuple[float, float]],
) -> list[tuple[onnx.NodeProto, tuple[float, int]]]:
    fixed = fixed_of_groups(graph, rules, quantized, group_of)
    wide: set[str] = set()
    for t in quantized:
        root = group_of[t]
        if root in fixed and not _covered(ranges.get(t), fixed[root]):
            wide.add(root)
    return [
        (node, fixed[group_of[node.output[0]]])
        for node in graph.nodes
        if (rule := rules.get(node.name)) is not None and rule.output == "unify"
        and group_of.get(node.output[0]) in wide
    ]


def fixed_of_groups(
    graph: Graph, rules: dict[str, OpRule], quantized: list[str], group_of: dict[str, str]
) -> dict[str, tuple[float, int]]:
    """The fixed (scale, zero point) of each group that holds an op's fixed output."""
    fixed: dict[str, tuple[float, int]] = {}
    for t in quantized:
        prod = graph.producer.get(t)
        rule = rules.get(prod.name) if prod is not None else None
        if rule is not None and rule.output == "fixed" and rule.fixed is not None:
            fixed[group_of[t]] = rule.fixed
    return fixed


def _covered(span: tuple[float, float] | None, fixed: tuple[float, int]) -> bool:
    """Whether the fixed parameters hold ``span`` (to within one step: a Sigmoid reaches
    1.0, one step above the grid's last value)."""
    if span is None:
        return True
    lo, hi = fixed_range(fixed)
    return span[0] >= lo - fixed[0] and span[1] <= hi + fixed[0]


__all__ = ["Split", "fixed_of_groups", "fixed_range", "split_fixed_inputs"]
