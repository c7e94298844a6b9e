"""Quantization plan: which nodes become int8, which Relu/Clip are folded into their
producer, which tensors share parameters, and every activation's (scale, zero point).

Pure logic on the graph and the calibrated ranges; no I/O, no onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx

from ._fixed_split import Split, fixed_of_groups, split_fixed_inputs
from ._ir import Graph
from ._oprules import OpRule, fusable_clamp, rule_for
from ._saturating import read_ranges
from ._tail import float_tails

QMIN, QMAX = -128, 127
# The narrowest activation range given its own parameters: an all-zero tensor needs a
# scale > 0, and runtimes multiply two scales in float32 (a bias scale, a Mul's
# requantization), so a scale stays above sqrt(float32 tiny) ~ 1e-19. Not wider: a
# random-weight EfficientNet-B0's blocks carry ranges of 1e-12 (its BN-scaled activations
# shrink block by block), and the old 1e-8 floor rounded them all to zero (0 dB).
MIN_RANGE = 1e-15


@dataclass(frozen=True)
class QParams:
    """Per-tensor int8 activation parameters: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def to_list(self) -> list[float | int]:
        return [self.scale, self.zero_point]


Pin = Callable[[str, tuple[float, float]], "QParams | None"]


@dataclass
class Plan:
    rules: dict[str, OpRule]  # node name -> rule, for every quantized node
    float_nodes: dict[str, str]  # node name -> reason it stays float
    fused: dict[str, str]  # activation node name -> producer node name
    quantized: list[str]  # activation tensors that get Q/DQ, topological order
    params: dict[str, QParams]
    ranges: dict[str, tuple[float, float]]  # the range each tensor's params came from
    group_of: dict[str, str] = field(default_factory=dict)  # tensor -> group root tensor

    def is_quantized_node(self, node: onnx.NodeProto) -> bool:
        return node.name in self.rules


def params_from_range(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] and holding 0.0 exactly."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < MIN_RANGE:
        hi = lo + MIN_RANGE
    scale = float(np.float32((hi - lo) / (QMAX - QMIN)))
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return QParams(scale, zp)


def make_plan(
    graph: Graph,
    ranges: dict[str, tuple[float, float]],
    *,
    pin: Pin | None = None,
    keep_float: dict[str, str] | None = None,
) -> Plan:
    """Build the plan; ``pin(group root, range)`` may return earlier parameters to keep
    (``--base``); None means "compute them from the range". ``keep_float``: node name ->
    why it stays float although it could be int8 (``--max-drop``)."""
    rules: dict[str, OpRule] = {}
    float_nodes: dict[str, str] = {}
    for node in graph.nodes:
        rule, reason = rule_for(node, graph)
        if rule is None:
            float_nodes[node.name] = reason or "not quantizable"
        else:
            rules[node.name] = rule
    for name, reason in float_tails(graph, set(rules), ranges).items():
        rules.pop(name, None)
        float_nodes[name] = reason
    for name, reason in (keep_float or {}).items():
        if name in rules:
            del rules[name]
            float_nodes[name] = reason
    fused = _find_fusions(graph, rules)
    while True:
        quantized = _quantized_tensors(graph, rules, fused)
        _, group_of = split_fixed_inputs(  # a Sigmoid's output into a wider Concat
            graph, rules, quantized, ranges, partial(_groups, graph, rules, fused, quantized)
        )
        params, used = _group_params(graph, rules, quantized, group_of, ranges, pin)
        bad = _inexact_fusions(graph, fused, params)
        if not bad:
            break
        for name in bad:  # keep that Relu/Clip as its own int8 op
            del fused[name]
    return Plan(rules, float_nodes, fused, quantized, params, used, group_of)


def _find_fusions(graph: Graph, rules: dict[str, OpRule]) -> dict[str, str]:
    fused: dict[str, str] = {}
    outputs = set(graph.output_names)
    for node in graph.nodes:
        if node.name not in rules or fusable_clamp(node, graph) is None:
            continue
        prod = graph.producer.get(node.input[0])
        if prod is None or prod.name not in rules or not rules[prod.name].can_fuse_activation:
            continue
        if prod.op_type == "MatMul" and not graph.is_const(prod.input[1]):
            continue  # TFLite BATCH_MATMUL has no fused activation
        if len(graph.consumers.get(node.input[0], [])) != 1 or node.input[0] in outputs:
            continue
        fused[node.name] = prod.name
    return fused


def fused_pre_tensors(graph: Graph, fused: dict[str, str]) -> set[str]:
    """Tensors that vanish when their Relu/Clip is folded into the producer."""
    by_name = {n.name: n for n in graph.nodes}
    return {by_name[a].input[0] for a in fused}


def _quantized_tensors(graph: Graph, rules: dict[str, OpRule], fused: dict[str, str]) -> list[str]:
    gone = fused_pre_tensors(graph, fused)
    result = []
    for name in graph.activations():
        if name in gone:
            continue
        prod = graph.producer.get(name)
        q = prod is not None and prod.name in rules
        if not q:
            q = any(
                c.name in rules and _is_activation_input(c, rules[c.name], name, graph)
                for c in graph.consumers.get(name, [])
            )
        if q:
            result.append(name)
    return result


def _is_activation_input(node: onnx.NodeProto, rule: OpRule, name: str, graph: Graph) -> bool:
    for i, inp in enumerate(node.input):
        if inp != name or graph.is_const(inp):
            continue
        if rule.activation_inputs is None or i in rule.activation_inputs:
            return True
    return False


def _groups(
    graph: Graph,
    rules: dict[str, OpRule],
    fused: dict[str, str],
    quantized: list[str],
    split: Split = frozenset(),
) -> dict[str, str]:
    parent = {t: t for t in quantized}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:  # the earlier tensor (topological) stays the root: deterministic
            first, second = sorted((ra, rb), key=quantized.index)
            parent[second] = first

    for node in graph.nodes:
        rule = rules.get(node.name)
        if rule is None or rule.output not in ("same", "unify") or node.name in fused:
            continue
        ins = [i for i in node.input if i in parent and (node.name, i) not in split]
        outs = [node.output[0]]
        if rule.output == "same":  # every output of a "same" op (Split has several)
            ins, outs = ins[:1], list(node.output)
        for i in ins:
            for out in outs:
                if out in parent:
                    union(i, out)
    return {t: find(t) for t in quantized}


def _group_params(
    graph: Graph,
    rules: dict[str, OpRule],
    quantized: list[str],
    group_of: dict[str, str],
    ranges: dict[str, tuple[float, float]],
    pin: Pin | None,
) -> tuple[dict[str, QParams], dict[str, tuple[float, float]]]:
    fixed = fixed_of_groups(graph, rules, quantized, group_of)
    read = read_ranges(graph, rules, quantized, group_of, ranges)  # what readers tell apart
    span: dict[str, tuple[float, float]] = {}
    for t in quantized:
        root = group_of[t]
        if t not in read:
            continue
        lo, hi = read[t]
        old = span.get(root, (lo, hi))
        span[root] = (min(old[0], lo), max(old[1], hi))
    for root, (lo, hi) in _constant_spans(graph, rules, group_of).items():
        if root in span:  # a constant Concat operand shares the group's parameters
            span[root] = (min(span[root][0], lo), max(span[root][1], hi))
    chosen: dict[str, QParams] = {}
    for root in dict.fromkeys(group_of[t] for t in quantized):
        if root in fixed:
            chosen[root] = QParams(*fixed[root])
            continue
        kept = pin(root, span[root]) if pin is not None else None
        chosen[root] = kept or params_from_range(*span[root])
    params = {t: chosen[group_of[t]] for t in quantized}
    used = {t: span[group_of[t]] for t in quantized}
    return params, used


def _constant_spans(
    graph: Graph, rules: dict[str, OpRule], group_of: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """The range of the constant operands of ``unify`` ops (anchors or a class token in a
    Concat): they are quantized with the output's parameters, so those must cover them."""
    spans: dict[str, tuple[float, float]] = {}
    for node in graph.nodes:
        rule = rules.get(node.name)
        if rule is None or rule.output != "unify" or node.output[0] not in group_of:
            continue
        root = group_of[node.output[0]]
        for name in node.input:
            if name and graph.is_const(name) and graph.inits[name].size:
                c = graph.inits[name].astype(np.float64)
                lo, hi = spans.get(root, (float(c.min()), float(c.max())))
                spans[root] = (min(lo, float(c.min())), max(hi, float(c.max())))
    return spans


def _inexact_fusions(graph: Graph, fused: dict[str, str], params: dict[str, QParams]) -> list[str]:
    """Folded Relu/Clip whose output parameters do not put 0.0 at exactly -128."""
    by_name = {n.name: n for n in graph.nodes}
    return [a for a in fused if params[by_name[a].output[0]].zero_point != QMIN]
