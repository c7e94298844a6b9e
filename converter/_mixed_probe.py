"""``--max-drop``'s search on one probe session instead of a conversion per attempt.

The probe is the optimized fp32 graph with a switchable Q/DQ behind every tensor the
all-int8 plan quantizes and a switchable weight and bias in every int8 weight layer; the
switches, scales and zero points are graph inputs (:class:`FloatProbe`). Any set of nodes
kept float is read by planning it (``make_plan`` with ``keep_float``, the parameters the
real build would use) and feeding that plan: a tensor the plan quantizes gets its Q/DQ
with the plan's scale and zero point, any other passes through in float; a layer the plan
keeps int8 reads the int8 weight and bias the conversion wrote (learned rounding and bias
correction included), any other its float ones. A Relu/Clip the plan folds into its
producer stays in the probe as a float op in front of the Q/DQ (the same values: the
fusion is kept only where it is exact).

1. Sensitivity, per quantized tensor group (tensors sharing one scale: a tensor and its
   reshapes, transposes, slices; any op, weight layers or not: a Softmax, a LayerNorm, an
   attention MatMul, a Sigmoid gate, a CTC head): the output noise of the probe with ONLY
   that group int8 (its tensors and the weights of the layers writing them), everything
   else float, on the samples the all-int8 probe loses first (:func:`rank`).
2. The fewest top groups kept float (with every node that reads or writes them) that meet
   the target by the task metric on the probe, 1, 2, 3, 5, 8 ... (x1.5) then bisection
   (:func:`fewest`).
3. Check: the real conversion is built once with those groups float and measured in both
   formats by the caller's ``real_drop`` (the same drop as before: ONNX and LiteRT). The
   probe rounds its Q/DQ unfused, onnxruntime's int8 kernels and LiteRT their own way: a
   miss grows the count along the schedule (at most ``CHECKS`` conversions in all).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._ir import Graph
from ._mixed import WEIGHT_OPS, MixedResult, _group_nodes

CHECKS = 3  # real conversions at most (the first check and the growth after a miss)
FULL_RUNS = 3  # counts run on every sample when none holds (the best one is built)
TRIM_TRIES = 10  # probe runs at most that hand kept groups back to int8 (see :func:`trim`)
RANK_SAMPLES = 4  # samples per group for the sensitivity ranking, at most
RANK_BUDGET_S = 45.0  # what the ranking may take: fewer samples for a large model
SUFFIX = "__mx"  # names the probe adds end with it (no clash with the graph's)


# ----------------------------------------------------------------------------- the probe
@dataclass
class FloatProbe:
    """The probe model, what it can switch, and its session."""

    model: onnx.ModelProto
    tensors: list[str]  # activation tensors with a switchable Q/DQ
    weight_nodes: list[str]  # layers with a switchable int8 / float weight and bias
    sess: Any = None
    _off: dict[str, np.ndarray] = field(default_factory=dict)

    def feeds(self, plan: Any) -> dict[str, np.ndarray]:
        """The inputs that make the probe compute ``plan``'s model."""
        return self.switches({t: plan.params[t] for t in self.tensors if t in plan.params},
                             [n for n in self.weight_nodes if n in plan.rules])

    def switches(self, params: dict[str, Any], int8_nodes: Collection[str]) -> dict[str, np.ndarray]:
        """``params`` (tensor -> QParams): those tensors int8, the others float;
        ``int8_nodes``: those layers read their int8 weights, the others float ones."""
        out = dict(self._off)
        for t, p in params.items():
            if t + "__s" + SUFFIX in self._off:
                out[t + "__s" + SUFFIX] = np.array(p.scale, np.float32)
                out[t + "__z" + SUFFIX] = np.array(int(p.zero_point) + 128, np.uint8)
                out[t + "__a" + SUFFIX] = np.array(1.0, np.float32)
        for n in int8_nodes:
            if n + "__m" + SUFFIX in self._off:  # a layer with weights
                out[n + "__m" + SUFFIX] = np.array(1.0, np.float32)
        return out


class _Consts:
    """Values of the constant subgraphs of a QDQ model: initializers, DequantizeLinear
    and Mul of constants (a weight, a bias and its per-channel scale product)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.memo: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.memo:
            self.memo[name] = self._value(name)
        return self.memo[name]

    def _value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return np.asarray(self.inits[name])
        node = self.producer.get(name)
        if node is None:
            return None
        args = [self.value(i) if i else None for i in node.input]
        if node.op_type == "Mul" and len(args) == 2 and all(a is not None for a in args):
            return np.asarray(args[0] * args[1], np.float32)  # type: ignore[operator]
        if node.op_type != "DequantizeLinear" or args[0] is None or args[1] is None:
            return None
        q, scale = args[0].astype(np.float32), args[1].astype(np.float32)
        zero = args[2].astype(np.float32) if len(args) > 2 and args[2] is not None else np.float32(0)
        if scale.ndim == 1 and q.ndim > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape if np.ndim(zero) else ())
        return np.asarray((q - zero) * scale, np.float32)


def build_probe(graph: Graph, plan: Any, qmodel: onnx.ModelProto) -> FloatProbe:
    """The probe of ``graph`` (the optimized fp32 graph the conversion quantized) for the
    all-int8 ``plan`` and its float-io QDQ model ``qmodel`` (where the int8 weights and
    biases are read)."""
    consts = _Consts(qmodel)
    qnodes = {n.name: n for n in qmodel.graph.node if n.name}
    probed = list(plan.quantized)
    probed_set = set(probed)
    outputs = set(graph.output_names)
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = dict(graph.inits)
    extra_inputs: list[onnx.ValueInfoProto] = []
    off: dict[str, np.ndarray] = {}
    read_as: dict[str, str] = {}

    def switch(name: str, dtype: int, value: np.ndarray) -> str:
        extra_inputs.append(helper.make_tensor_value_info(name, dtype, []))
        off[name] = value
        return name

    def qdq(t: str, src: str, dst: str) -> None:
        s = switch(t + "__s" + SUFFIX, TensorProto.FLOAT, np.array(1.0, np.float32))
        z = switch(t + "__z" + SUFFIX, TensorProto.UINT8, np.array(128, np.uint8))
        a = switch(t + "__a" + SUFFIX, TensorProto.FLOAT, np.array(0.0, np.float32))
        p = t + "__"
        # a blend, not a Where: onnxruntime's Where with a broadcast condition measured
        # 1.6x slower than these three passes
        nodes.extend([
            helper.make_node("QuantizeLinear", [src, s, z], [p + "q" + SUFFIX]),
            helper.make_node("DequantizeLinear", [p + "q" + SUFFIX, s, z], [p + "dq" + SUFFIX]),
            helper.make_node("Sub", [p + "dq" + SUFFIX, src], [p + "e" + SUFFIX]),
            helper.make_node("Mul", [p + "e" + SUFFIX, a], [p + "ea" + SUFFIX]),
            helper.make_node("Add", [src, p + "ea" + SUFFIX], [dst]),
        ])

    def mixed(n: str, what: str, f32: np.ndarray, int8: np.ndarray, m: str) -> str:
        """float + m (int8 - float), a constant pair behind the switch ``m``."""
        base = f"{n}__{what}"
        inits[base + "f" + SUFFIX] = np.asarray(f32, np.float32)
        inits[base + "d" + SUFFIX] = np.asarray(int8 - f32, np.float32)
        nodes.extend([
            helper.make_node("Mul", [base + "d" + SUFFIX, m], [base + "dm" + SUFFIX]),
            helper.make_node("Add", [base + "f" + SUFFIX, base + "dm" + SUFFIX], [base + SUFFIX]),
        ])
        return base + SUFFIX

    for t in graph.input_names:
        if t in probed_set:
            qdq(t, t, t + SUFFIX)
            read_as[t] = t + SUFFIX
    weight_nodes: list[str] = []
    for node in graph.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = read_as.get(name, name)
        swapped = _weights(graph, node, qnodes.get(node.name), consts) if node.name in plan.rules else None
        if swapped is not None:
            m = switch(node.name + "__m" + SUFFIX, TensorProto.FLOAT, np.array(0.0, np.float32))
            (w_f, w_q), bias = swapped
            copy.input[1] = mixed(node.name, "w", w_f, w_q, m)
            if bias is not None:
                b_name = mixed(node.name, "b", *bias, m)
                if len(copy.input) > 2:
                    copy.input[2] = b_name
                else:
                    copy.input.append(b_name)
            weight_nodes.append(node.name)
        pending = []
        for i, out in enumerate(copy.output):
            if out not in probed_set:
                continue
            if out in outputs:  # the graph output keeps its name: the op writes a raw copy
                copy.output[i] = out + "__raw" + SUFFIX
                pending.append((out, out + "__raw" + SUFFIX, out))
            else:
                pending.append((out, out, out + SUFFIX))
                read_as[out] = out + SUFFIX
        nodes.append(copy)
        for t, src, dst in pending:
            qdq(t, src, dst)
    g = helper.make_graph(
        nodes, graph.name, [*graph.inputs, *extra_inputs], list(graph.outputs),
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", max(graph.opset, 13))]
    opsets += [helper.make_opsetid(d, v) for d, v in graph.domains.items()]
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = graph.ir_version
    tensors = [t for t in probed if t + "__s" + SUFFIX in off]
    return FloatProbe(model, tensors, weight_nodes, None, off)


def _weights(
    graph: Graph, node: onnx.NodeProto, qnode: onnx.NodeProto | None, consts: _Consts
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None] | None:
    """((float weight, int8 weight as real values), (float bias, int8 bias) or None) of an
    int8 weight layer, read from the QDQ model's node of the same name; None when it has
    no constant weight there (the layer then reads its float weight in every attempt)."""
    if qnode is None or node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    if not graph.is_const(node.input[1]) or len(qnode.input) < 2:
        return None
    w_f = np.asarray(graph.inits[node.input[1]], np.float32)
    w_q = consts.value(qnode.input[1])
    if w_q is None or w_q.shape != w_f.shape:
        return None
    if len(qnode.input) < 3 or not qnode.input[2]:
        return (w_f, w_q), None
    b_q = consts.value(qnode.input[2])
    if b_q is None:
        return (w_f, w_q), None
    has_bias = len(node.input) > 2 and node.input[2] and graph.is_const(node.input[2])
    b_f = np.asarray(graph.inits[node.input[2]], np.float32) if has_bias else np.zeros_like(b_q)
    if b_f.size != b_q.size and b_f.size != 1:
        return (w_f, w_q), None
    return (w_f, w_q), (np.broadcast_to(b_f.reshape(-1), b_q.shape).astype(np.float32), b_q)


class _Runner:
    """The probe session with one set of switches, behind the two session calls the
    drop measure makes (``get_outputs()[0].name``, ``run([name], feed)``)."""

    def __init__(self, sess: Any, extra: dict[str, np.ndarray]) -> None:
        self.sess, self.extra = sess, extra

    def get_outputs(self) -> Any:
        return self.sess.get_outputs()

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.sess.run(names, {**feed, **self.extra}))


# ----------------------------------------------------------------------------- groups
def candidate_groups(
    graph: Graph, plan: Any, floatable: Collection[str] | None
) -> list[dict[str, Any]]:
    """Quantized tensor groups that may go float: {root, tensors, nodes (every node that
    writes or reads them, with its folded Relu/Clip), head, op, owns (the int8 layers
    whose weights count in this group's sensitivity: those writing its tensors)}.
    ``floatable``: the op types the TFLite can run in float (a group touching another op
    is no candidate when a TFLite is written)."""
    by_name = {n.name: n for n in graph.nodes}
    partners: dict[str, set[str]] = {}
    for act, prod in plan.fused.items():
        partners.setdefault(act, set()).add(prod)
        partners.setdefault(prod, set()).add(act)
    groups: dict[str, list[str]] = {}
    for t in plan.quantized:
        groups.setdefault(plan.group_of.get(t, t), []).append(t)
    out = []
    for root, tensors in groups.items():
        nodes = _group_nodes(graph, plan, tensors, partners)
        if not nodes:
            continue
        if floatable is not None and any(by_name[n].op_type not in floatable for n in nodes):
            continue
        writers = {graph.producer[t].name for t in tensors if t in graph.producer}
        owns = {plan.fused.get(w, w) for w in writers} & set(plan.rules)
        producer = graph.producer.get(tensors[0])
        head = producer.name if producer is not None and producer.name in nodes else sorted(nodes)[0]
        if head in plan.fused:  # name the layer, not its folded Relu
            head = plan.fused[head]
        out.append({"root": root, "tensors": tensors, "nodes": sorted(nodes), "head": head,
                    "op": by_name[head].op_type, "owns": sorted(owns)})
    return out


# ----------------------------------------------------------------------------- search
class ProbeSearch:
    """The probe, the drop measure and the plans of the attempts."""

    def __init__(self, probe: FloatProbe, measure: Any, plan_of: Callable[[dict[str, str]], Any],
                 base_plan: Any) -> None:
        from . import _evaluate

        self.probe, self.measure, self.plan_of, self.base = probe, measure, plan_of, base_plan
        self.sess = _evaluate.session(probe.model)
        self.fast = FastDrop(measure)
        self.seconds_per_sample = 0.0

    def drop(self, keep: dict[str, str], stop_above: float | None = None) -> float:
        """The task-metric drop with the nodes of ``keep`` float (inf: nothing int8);
        above ``stop_above`` it may be a lower bound (the run stops there)."""
        plan = self.plan_of(keep) if keep else self.base
        if not plan.quantized:
            return float("inf")
        began = time.perf_counter()
        d, runs = self.fast.drop(_Runner(self.sess, self.probe.feeds(plan)), stop_above)
        self.seconds_per_sample = (time.perf_counter() - began) / max(1, runs)
        return d


class FastDrop:
    """The measure's drop (converter/_accuracy.py ``_DropMeasure``) of a probe run, one
    sample at a time, the samples lost last time first, stopping once the drop is sure to
    be over ``stop_above``: the losses summed so far over a set's whole weight bound its
    drop from below (converter/_proxy.py :func:`lost_part`). With labels: the measure's
    own drop (an accuracy drop is no sum of losses)."""

    def __init__(self, measure: Any) -> None:
        from . import _proxy

        self.measure = measure
        self.n = _count(measure.feeds)
        self.order = list(range(self.n))
        self.parts: list[tuple[int, list[object], float]] = []
        if measure.labels is None:
            for refs, feeds in zip(measure.refs, measure.sets, strict=True):
                total = sum(_proxy.weight(measure.proxy, r) for r in refs)
                self.parts.append((self.n - _count(feeds), refs, total))  # a set is a tail

    def drop(self, runner: Any, stop_above: float | None = None) -> tuple[float, int]:
        """(drop in points, samples run)."""
        from . import _proxy

        m = self.measure
        if m.labels is not None:
            return float(m.drop_runner(runner)), self.n
        lost = [0.0] * len(self.parts)
        newly: list[int] = []
        runs = 0
        for idx in self.order:
            view = _proxy.view(m.proxy, m._first(runner, {k: v[idx : idx + 1]
                                                          for k, v in m.feeds.items()}))
            runs += 1
            hit = False
            for p, (start, refs, _) in enumerate(self.parts):
                if idx >= start:
                    part, _w = _proxy.lost_part(m.proxy, refs[idx - start], view)
                    lost[p] += part
                    hit = hit or part > 0
            if hit:
                newly.append(idx)
            if stop_above is not None and self._points(lost) > stop_above:
                break
        self.order = newly + [i for i in self.order if i not in newly]
        return self._points(lost), runs

    def _points(self, lost: list[float]) -> float:
        return max(100.0 * x / total if total > 0 else 0.0
                   for x, (_, _, total) in zip(lost, self.parts, strict=True))


def rank(search: ProbeSearch, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups, most output noise first: the noise of the probe with only that group int8
    (its tensors, the weights of the layers writing them), everything else float, on the
    samples the all-int8 probe loses first (then the first ones)."""
    every = list(_samples(search.measure.feeds))
    per_group = max(search.seconds_per_sample, 1e-4) * max(1, len(groups))
    n = int(min(RANK_SAMPLES, max(1, RANK_BUDGET_S // per_group)))
    feeds = [every[i] for i in search.fast.order[:n]]  # the lost ones first
    names = [o.name for o in search.measure.fp32.get_outputs()]
    refs = [search.measure.fp32.run(names, f) for f in feeds]
    base = search.base
    rows = []
    for g in groups:
        extra = search.probe.switches({t: base.params[t] for t in g["tensors"]}, g["owns"])
        noise = _noise(search.sess, extra, feeds, refs)
        rows.append({**g, "noise": noise})
    rows.sort(key=lambda r: -r["noise"])
    return [{**r, "rank": i + 1} for i, r in enumerate(rows)]


def _noise(sess: Any, extra: dict[str, np.ndarray], feeds: list[dict[str, np.ndarray]],
           refs: list[list[np.ndarray]]) -> float:
    """Mean over outputs of the relative noise power against fp32, over ``feeds``."""
    num = np.zeros(len(refs[0]))
    den = np.zeros(len(refs[0]))
    for feed, ref in zip(feeds, refs, strict=True):
        got = sess.run(None, {**feed, **extra})
        for j, (a, b) in enumerate(zip(got, ref, strict=True)):
            b64 = np.asarray(b, np.float64)
            num[j] += float(np.sum((np.asarray(a, np.float64) - b64) ** 2))
            den[j] += float(np.sum(b64**2))
    return float(np.mean(num / np.maximum(den, 1e-30)))


def schedule(n: int) -> list[int]:
    """The group counts tried: 1, 2, 3, 5, 8, ... n (x1.5)."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k = max(k + 1, math.ceil(k * 1.5))
    return [*out, n] if n else []


def fewest(drop_at: Callable[[int], float], n: int, target: float) -> tuple[int | None, dict[int, float]]:
    """The first count of :func:`schedule` with ``drop_at(k) <= target``, refined by
    bisection down to the count before it; None when none holds (every count's drop is
    in the map returned)."""
    seen: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in seen:
            seen[k] = drop_at(k)
        return seen[k]

    counts = schedule(n)
    high = next((k for k in counts if at(k) <= target), None)
    if high is None:
        return None, seen
    low = max([k for k in counts if k < high], default=0)
    while high - low > 1:
        mid = (low + high) // 2
        if at(mid) <= target:
            high = mid
        else:
            low = mid
    return high, seen


def keep_map(groups: list[dict[str, Any]], target: float) -> dict[str, str]:
    """Node -> why it stays float, for the nodes of ``groups`` (ranked)."""
    out: dict[str, str] = {}
    for i, g in enumerate(groups):
        for n in g["nodes"]:
            rank_of = g.get("rank", i + 1)
            out.setdefault(n, f"kept float by --max-drop {target:g} (sensitivity rank {rank_of})")
    return out


def search_probe(
    target: float,
    search: ProbeSearch,
    groups: list[dict[str, Any]],
    drop_int8: float,
    real_drop: Callable[[dict[str, str]], float],
    metric: str,
) -> tuple[MixedResult, dict[str, str]]:
    """Rank, search on the probe, check with real conversions (see the module doc).
    A probe drop above the target in ``tried`` is a lower bound (that run stopped there).
    Returns the result and the keep-float map of the conversion kept (empty: all int8)."""
    t0 = time.perf_counter()
    tried: list[dict[str, Any]] = []
    probe_int8 = search.drop({})
    tried.append({"units": "probe: all int8", "drop": round(probe_int8, 4)})
    ranked = rank(search, groups)
    t_rank = time.perf_counter() - t0
    k, seen = fewest(lambda k: search.drop(keep_map(ranked[:k], target), target),
                     len(ranked), target)
    tried += [{"units": "probe: float groups", "float_layers": c, "drop": round(d, 4)}
              for c, d in sorted(seen.items())]
    chosen = ranked[:k] if k is not None else []
    if chosen:
        chosen, trims = trim(chosen, lambda gs: search.drop(keep_map(gs, target), target), target)
        tried += [{"units": "probe: fewer float groups", "float_layers": c, "drop": round(d, 4)}
                  for c, d in trims]
    t_probe = time.perf_counter() - t0
    if k is None:  # no count holds; those runs stopped early: the largest counts in full
        finite = sorted(c for c, d in seen.items() if math.isfinite(d))[-FULL_RUNS:]
        full = {c: search.drop(keep_map(ranked[:c], target)) for c in finite}
        tried += [{"units": "probe: float groups, every sample", "float_layers": c,
                   "drop": round(d, 4)} for c, d in sorted(full.items())]
        k = min(full, key=lambda c: (full[c], c)) if full else None
    real: dict[int, float] = {}
    counts = schedule(len(ranked))
    attempts: dict[int, list[dict[str, Any]]] = {}
    if chosen:  # the trimmed set first (counted as its own size)
        k = -len(chosen)
        attempts[k] = chosen
    while k is not None and len(real) < CHECKS:
        groups_k = attempts.setdefault(k, ranked[:k])
        real[k] = real_drop(keep_map(groups_k, target))
        tried.append({"units": "rebuilt", "float_layers": len(groups_k), "drop": round(real[k], 4)})
        if real[k] <= target:
            break
        low = len(groups_k)
        k = next((c for c in counts if c > low and seen.get(c, 0.0) != float("inf")), None)
    result = MixedResult(target, metric, drop_int8, drop_int8, drop_int8 <= target, _rows(ranked))
    result.tried = tried
    result.units = "tensor groups"
    result.search_s = {"rank": round(t_rank, 1), "probe": round(t_probe, 1),
                       "total": round(time.perf_counter() - t0, 1)}
    met = [c for c, d in real.items() if d <= target]
    size = {c: len(attempts[c]) for c in real}
    best = (min(met, key=lambda c: size[c]) if met
            else (min(real, key=lambda c: (real[c], size[c])) if real else None))
    if best is None or (not met and real[best] >= drop_int8):
        return result, {}
    result.drop, result.met = real[best], bool(met)
    result.kept_float = [g["head"] for g in attempts[best]]
    return result, keep_map(attempts[best], target)


def trim(
    groups: list[dict[str, Any]], drop_of: Callable[[list[dict[str, Any]]], float], target: float
) -> tuple[list[dict[str, Any]], list[tuple[int, float]]]:
    """``groups`` (meeting the target on the probe) less the runs of them that can go back
    to int8 and still meet it: the task metric is not monotone in the count (a near-tie
    sample flips either way), so the first count that holds carries groups it does not
    need. Runs of half the set, then a quarter ..., the least sensitive first; at most
    ``TRIM_TRIES`` probe runs. Returns the groups kept and (count, drop) per try."""
    kept = list(groups)
    tries: list[tuple[int, float]] = []
    size = max(1, len(kept) // 2)
    while size >= 1 and len(tries) < TRIM_TRIES and len(kept) > 1:
        end = len(kept)
        while end > 0 and len(tries) < TRIM_TRIES:
            start = max(0, end - size)
            candidate = kept[:start] + kept[end:]
            if not candidate:
                break
            d = drop_of(candidate)
            tries.append((len(candidate), d))
            if d <= target:
                kept = candidate
            end = start
        size //= 2
    return kept, tries


def _rows(ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's ranking: ``added_noise`` is the output noise power of the probe with
    only that group int8, ``sqnr_db`` the output SQNR that makes."""
    return [{"node": g["head"], "op": g["op"], "tensor": g["root"],
             "sqnr_db": round(-10 * math.log10(max(g["noise"], 1e-30)), 2),
             "added_noise": float(g["noise"]),
             "with": [n for n in g["nodes"] if n != g["head"]]}
            for g in ranked]


def _count(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def _samples(feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for i in range(_count(feeds)):
        yield {k: v[i : i + 1] for k, v in feeds.items()}
