"""``--max-drop``'s search on the probe (converter/_mixed_probe.py) instead of a conversion
per attempt.

1. Sensitivity, per quantized tensor group (tensors sharing one scale: a tensor and its
   reshapes, transposes, slices; any op, weight layers or not: a Softmax, a LayerNorm, an
   attention MatMul, a Sigmoid gate, a CTC head): the output noise of the probe with ONLY
   that group int8 (its tensors and the weights of the layers writing them), everything
   else float, on the samples the all-int8 probe loses first (:func:`rank`).
2. The fewest top groups kept float (with every node that reads or writes them) that meet
   the target by the task metric on the probe, 1, 2, 3, 5, 8 ... (x1.5) then bisection
   (:func:`fewest`); a run stops as soon as its drop is sure to miss (:class:`FastDrop`);
   then the groups the target does not need go back to int8 (:func:`trim`).
3. Check: the real conversion is built once with those groups float and measured in both
   formats by the caller's ``real_drop`` (the same drop as without the probe: ONNX and
   LiteRT). The probe rounds its Q/DQ unfused, onnxruntime's int8 kernels and LiteRT their
   own way: a miss grows the count along the schedule (at most ``CHECKS`` conversions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._evaluate import sample_count
from ._mixed import MixedResult
from ._mixed_probe import FloatProbe, _Runner

CHECKS = 5  # real conversions at most (the first check and the growth after a miss)
FULL_RUNS = 3  # counts run on every sample when none holds (the best one is built)
TRIM_TRIES = 10  # probe runs at most that hand kept groups back to int8 (see :func:`trim`)
RANK_SAMPLES = 16  # samples per group for the sensitivity ranking, at most (4 let a few
# samples' noise order a small model's groups; the budget below caps a large model's)
RANK_BUDGET_S = 45.0  # what the ranking may take: fewer samples for a large model
# a probe run's estimated seconds per sample, from the float graph alone (so the ranking's
# sample count, and so the model written, is the same on a busy machine as on an idle
# one): per activation element (each has its on/off Q/DQ), per weight (each layer reads
# its int8 or float copy) and per multiply-accumulate of a weight layer; fitted on the
# probe runs of ppocr_cls, efficientnet_lite0 and yolov8n on a shared 2-core machine
# (within ~1.5x of each; the budget is a rough cap)
PROBE_S_PER_ELEMENT = 4e-9
PROBE_S_PER_WEIGHT = 2.5e-8
PROBE_S_PER_MAC = 5e-11


class ProbeSearch:
    """The probe, the drop measure and the plans of the attempts."""

    def __init__(self, probe: FloatProbe, measure: Any, plan_of: Callable[[dict[str, str]], Any],
                 base_plan: Any) -> None:
        from . import _evaluate

        self.probe, self.measure, self.plan_of, self.base = probe, measure, plan_of, base_plan
        self.sess = _evaluate.session(probe.model)
        self.fast = FastDrop(measure)
        self.seconds_per_sample = 0.0  # a probe run's, measured (the log's; not the ranking's)
        self.estimated_s = 0.0  # a probe run's seconds per sample from the graph (see rank)

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
    """The search's drop (converter/_accuracy.py ``_DropMeasure.drop_runner``) of a probe
    run, one searched sample at a time, the samples lost last time first, stopping once
    the drop is sure to be over ``stop_above``: the losses summed so far over the whole
    weight bound the drop from below (converter/_proxy.py :func:`lost_part`). With
    labels: the measure's own drop (an accuracy drop is no sum of losses)."""

    def __init__(self, measure: Any) -> None:
        from . import _proxy

        self.measure = measure
        self.n = sample_count(measure.feeds) if measure.labels is not None else measure.search_n
        self.order = list(range(self.n))
        self.total = 0.0
        if measure.labels is None:
            self.total = sum(_proxy.weight(measure.proxy, r) for r in measure.search_refs)

    def drop(self, runner: Any, stop_above: float | None = None) -> tuple[float, int]:
        """(drop in points, samples run)."""
        from . import _proxy

        m = self.measure
        if m.labels is not None:
            return float(m.drop_runner(runner)), self.n
        lost = 0.0
        newly: list[int] = []
        views: dict[int, object] = {}
        runs = 0
        for idx in self.order:
            view = _proxy.view(m.proxy, m._first(runner, {k: v[idx : idx + 1]
                                                          for k, v in m.feeds.items()}))
            views[idx] = view
            runs += 1
            part, _w = _proxy.lost_part(m.proxy, m.search_refs[idx], view)
            lost += part
            # a sample lost (a flip, a box), not one whose flip risk is slight
            if part >= 0.5 or (m.proxy.metric == "sqnr" and part > 0):
                newly.append(idx)
            if stop_above is not None and self._points(lost) > stop_above:
                break
        self.order = newly + [i for i in self.order if i not in newly]
        if runs == self.n:  # in full: the measure's own drop (top-1 adds the noise's)
            return m.task_drop(m.search_refs, [views[i] for i in range(self.n)]), runs
        return self._points(lost), runs

    def _points(self, lost: float) -> float:
        return 100.0 * lost / self.total if self.total > 0 else 0.0


def rank(search: ProbeSearch, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups, most output noise first: the noise of the probe with only that group int8
    (its tensors, the weights of the layers writing them), everything else float, on the
    samples the all-int8 probe loses first (then the first ones)."""
    from . import _evaluate

    every = list(_evaluate.samples(search.measure.feeds))
    n = rank_samples(search.estimated_s, len(groups))
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


def rank_samples(seconds_per_sample: float, groups: int) -> int:
    """Samples per group the ranking runs: ``RANK_SAMPLES``, fewer when the estimate of a
    probe run says the ranking would pass ``RANK_BUDGET_S`` (at least 1)."""
    per_group = max(seconds_per_sample, 1e-4) * max(1, groups)
    return int(min(RANK_SAMPLES, max(1, RANK_BUDGET_S // per_group)))


def estimated_seconds(graph: Any) -> float:
    """A probe run's seconds per sample estimated from the float graph's shapes: its
    activation elements, its constants' elements and the multiply-accumulates of its
    Conv / Gemm / MatMul with constant weights (a tensor of unknown shape counts nothing)."""
    elements = macs = 0
    weights = sum(int(v.size) for v in graph.inits.values())
    for node in graph.nodes:
        for out in node.output:
            dims = graph.shape(out) if out else None
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
                continue
            count = math.prod(int(d) for d in dims)
            elements += count
            weight = graph.shape(node.input[1]) if len(node.input) > 1 else None
            if node.op_type in ("Conv", "Gemm", "MatMul") and weight and graph.is_const(node.input[1]):
                per_output = math.prod(int(d) for d in weight[1:]) if node.op_type == "Conv" else int(weight[0])
                macs += count * per_output
    return elements * PROBE_S_PER_ELEMENT + weights * PROBE_S_PER_WEIGHT + macs * PROBE_S_PER_MAC


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
    bisection down to the count before it. When none holds, the counts between the
    largest that left INT8 (a finite drop) and the first that left none (inf: every
    quantized tensor in some float group) are bisected for one that holds, then refined
    the same way (a target may need most of a model float). None when none holds (every
    count's drop is in the map returned)."""
    seen: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in seen:
            seen[k] = drop_at(k)
        return seen[k]

    counts = schedule(n)
    high = next((k for k in counts if at(k) <= target), None)
    ceiling = min((k for k, d in seen.items() if math.isinf(d)), default=n)
    floor = max((k for k, d in seen.items() if k < ceiling), default=0)
    while high is None and ceiling - floor > 1:
        mid = (floor + ceiling) // 2
        if math.isinf(at(mid)):
            ceiling = mid
        elif seen[mid] <= target:
            high = mid
        else:
            floor = mid
    if high is None:
        return None, seen
    low = max([k for k in seen if k < high], default=0)  # every count below high missed
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
    # the conversions to check, in order: the trimmed set, the count that held, larger ones
    queue: list[list[dict[str, Any]]] = [chosen] if chosen else []
    if k is not None:
        queue += [ranked[:c] for c in [k, *schedule(len(ranked))]
                  if c >= k and seen.get(c, 0.0) != float("inf")]
    attempts: dict[int, list[dict[str, Any]]] = {}
    real: dict[int, float] = {}
    for groups_k in queue:
        if len(real) == CHECKS:
            break
        if any(len(g) == len(groups_k) and g == groups_k for g in attempts.values()):
            continue
        i = len(attempts)
        attempts[i] = groups_k
        real[i] = real_drop(keep_map(groups_k, target))
        tried.append({"units": "rebuilt", "float_layers": len(groups_k), "drop": round(real[i], 4)})
        if real[i] <= target:
            break
    result = MixedResult(target, metric, drop_int8, drop_int8, drop_int8 <= target, _rows(ranked))
    result.tried = tried
    result.units = "tensor groups"
    result.search_s = {"rank": round(t_rank, 1), "probe": round(t_probe, 1),
                       "total": round(time.perf_counter() - t0, 1),
                       "run_measured": round(search.seconds_per_sample, 4),
                       "run_estimated": round(search.estimated_s, 4)}
    result.rank_samples = rank_samples(search.estimated_s, len(groups))
    met = [c for c, d in real.items() if d <= target]
    size = {c: len(attempts[c]) for c in real}
    best = (min(met, key=lambda c: size[c]) if met
            else (min(real, key=lambda c: (real[c], size[c])) if real else None))
    if best is None or (not met and real[best] >= drop_int8):
        return result, {}
    result.drop, result.met = real[best], bool(met)
    result.kept_float = list(dict.fromkeys(g["head"] for g in attempts[best]))  # heads repeat
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
