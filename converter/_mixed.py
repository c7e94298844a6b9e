"""``--max-drop X``: keep the fewest, most sensitive layers in float until the INT8 model is
within X points of fp32, or say it cannot be done (exit 3).

The drop is accuracy points on ``--eval`` when it has labels (fp32 accuracy minus INT8
accuracy), else a label-free task metric against the fp32 model chosen from the output's
shape (converter/_proxy.py: top-1 disagreement, CTC strings that differ, fp32 boxes
missed, or relative output noise; ``--drop-metric`` overrides) on ``--eval`` or, without
it, on calibration samples held out of calibration (:func:`split_holdout`).

Sensitivity: each weight layer's own share of the output noise, read from the per-layer
SQNR of the first INT8 model: the relative noise power of its output minus that of its
input (``10^(-SQNR/10)``), so a layer is not blamed for the noise it inherits. The most
sensitive layers go to float first, 1, 2, 3, 5, 8 ... at a time, each step a rebuild
and one evaluation. A layer kept float runs as DQ -> float op -> Q in the ONNX and as
DEQUANTIZE -> float CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED -> QUANTIZE in the TFLite
(converter/_tflite_float_layers.py); on the Edge TPU that island runs on the CPU, and the
report's Edge TPU section names the cut.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship._errors import ConversionError

from ._ir import Graph

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MAX_STEPS = 12  # rebuilds at most while growing the float part
BISECT_STEPS = 4  # rebuilds at most while shrinking it again to the fewest groups
HOLDOUT_MIN_CALIB = 32  # fewer calibration samples: measured on all of them, none held out


def split_holdout(
    calib: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(calibration samples, held-out samples): the last quarter (at least 8) of a set of
    ``HOLDOUT_MIN_CALIB`` or more is held out of calibration so that ``--max-drop`` without
    ``--eval`` measures on samples the ranges were not fitted to; fewer: none held out."""
    count = len(next(iter(calib.values())))
    if count < HOLDOUT_MIN_CALIB:
        return calib, None
    held = max(8, count // 4)
    return ({k: v[: count - held] for k, v in calib.items()},
            {k: v[count - held :] for k, v in calib.items()})


class TargetNotMet(ConversionError):
    """``--max-drop`` not reached; raised after OUT/ was written with the best attempt."""

    def __init__(self, report: Any, out_dir: Any, target: float, reached: float, metric: str):
        self.report, self.out_dir = report, out_dir
        super().__init__(
            f"--max-drop {target:g}: the best {metric} drop reached is {reached:.2f} points "
            f"(OUT/ holds that conversion: {out_dir})"
        )


@dataclass
class MixedResult:
    target: float
    metric: str  # "accuracy" (--eval labels) | a converter/_proxy.py metric
    drop_int8: float  # the all-int8 model's drop
    drop: float  # the drop of the model kept
    met: bool
    ranking: list[dict[str, Any]]
    kept_float: list[str] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    measured_on: str = ""  # which samples
    metric_detail: str = ""  # what the metric counts
    blocked: list[str] = field(default_factory=list)  # nodes with no float TFLite lowering
    units: str = "tensor groups"  # what the ranking holds: tensor groups | layers
    float_nodes: int = 0  # nodes --max-drop keeps float in the model written
    int8_nodes: int = 0  # nodes left int8 in it

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "metric": self.metric,
            "metric_detail": self.metric_detail,
            "measured_on": self.measured_on,
            "drop_all_int8": round(self.drop_int8, 4),
            "drop": round(self.drop, 4),
            "met": self.met,
            "kept_float": self.kept_float,
            "ranking": self.ranking[:20],
            "tried": self.tried,
            "no_float_tflite": self.blocked,
            "units": self.units,
            "float_nodes": self.float_nodes,
            "int8_nodes": self.int8_nodes,
        }


def rank_layers(
    graph: Graph,
    rules: dict[str, Any],
    fused: dict[str, str],
    layer_db: dict[str, float],
    floatable: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Weight layers, most sensitive first: the noise each adds (relative power);
    ``floatable``: op types that may go float (see :func:`rank_groups`)."""
    by_name = {n.name: n for n in graph.nodes}
    out_of = {prod: by_name[act].output[0] for act, prod in fused.items()}  # folded Relu/Clip
    ranked: list[dict[str, Any]] = []
    for node in graph.nodes:
        if node.name not in rules or node.op_type not in WEIGHT_OPS:
            continue
        if len(node.input) < 2 or not graph.is_const(node.input[1]):
            continue
        acts = [act for act, prod in fused.items() if prod == node.name]
        if floatable is not None and any(
            n.op_type not in floatable for n in graph.nodes if n.name in {node.name, *acts}
        ):
            continue
        out_t = out_of.get(node.name, node.output[0])
        db_out, db_in = layer_db.get(out_t), layer_db.get(node.input[0])
        if db_out is None:
            continue
        added = 10 ** (-db_out / 10) - (10 ** (-db_in / 10) if db_in is not None else 0.0)
        ranked.append(
            {
                "node": node.name,
                "op": node.op_type,
                "sqnr_db": round(db_out, 2),
                "added_noise": float(added),
                # its folded Relu/Clip goes float with it (else the tensor between two
                # float layers would still be quantized)
                "with": [act for act, prod in fused.items() if prod == node.name],
            }
        )
    ranked.sort(key=lambda r: -r["added_noise"])
    return ranked


def rank_groups(
    graph: Graph, plan: Any, layer_db: dict[str, float], floatable: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Quantized tensor groups (tensors that share one scale: a tensor and its reshapes,
    transposes, slices), most noise added first. Keeping a group in higher precision keeps
    every node that writes or reads it float, with the Relu/Clip fused into them, so the
    group's tensors are not quantized at all (keeping one node float leaves its input and
    output quantized: only its weights gain). ``floatable``: op types that may go float
    (those with a float TFLite lowering, when a TFLite is written); a group touching
    another op is not a candidate."""
    by_name = {n.name: n for n in graph.nodes}
    partners: dict[str, set[str]] = {}
    for act, prod in plan.fused.items():
        partners.setdefault(act, set()).add(prod)
        partners.setdefault(prod, set()).add(act)
    groups: dict[str, list[str]] = {}
    for t in plan.quantized:
        groups.setdefault(plan.group_of.get(t, t), []).append(t)
    ranked: list[dict[str, Any]] = []
    for root, tensors in groups.items():
        nodes = _group_nodes(graph, plan, tensors, partners)
        dbs = [layer_db[t] for t in tensors if t in layer_db]
        if not nodes or not dbs:
            continue
        if floatable is not None and any(by_name[n].op_type not in floatable for n in nodes):
            continue
        added = max(10 ** (-d / 10) for d in dbs) - _input_noise(graph, plan, tensors, layer_db)
        producer = graph.producer.get(tensors[0])
        head = producer.name if producer is not None and producer.name in nodes else sorted(nodes)[0]
        ranked.append(
            {
                "node": head,
                "op": by_name[head].op_type,
                "tensor": root,
                "sqnr_db": round(min(dbs), 2),
                "added_noise": float(added),
                "with": sorted(nodes - {head}),
            }
        )
    ranked.sort(key=lambda r: -r["added_noise"])
    return ranked


def _group_nodes(
    graph: Graph, plan: Any, tensors: list[str], partners: dict[str, set[str]]
) -> set[str]:
    nodes: set[str] = set()
    for t in tensors:
        producer = graph.producer.get(t)
        if producer is not None and producer.name in plan.rules:
            nodes.add(producer.name)
        nodes |= {c.name for c in graph.consumers.get(t, []) if c.name in plan.rules}
    return nodes | {q for n in nodes for q in partners.get(n, ()) if q in plan.rules}


def _input_noise(graph: Graph, plan: Any, tensors: list[str], layer_db: dict[str, float]) -> float:
    """The largest relative noise power among the inputs of the group's producers (what
    the group inherits rather than adds)."""
    worst = 0.0
    for t in tensors:
        producer = graph.producer.get(t)
        if producer is None:
            continue
        if producer.name in plan.fused:  # a fused Relu/Clip: its layer's inputs
            producer = next((n for n in graph.nodes if n.name == plan.fused[producer.name]), producer)
        for name in producer.input:
            if name in layer_db and name not in tensors:
                worst = max(worst, 10 ** (-layer_db[name] / 10))
    return worst


def steps(n: int) -> list[int]:
    """How many of the ranked layers each attempt keeps float: 1, 2, 3, 5, 8, ... n."""
    out: list[int] = []
    k = 1
    while k < n and len(out) < MAX_STEPS - 1:
        out.append(k)
        k = max(k + 1, round(k * 1.6))
    return [*out, n] if n else []


def search(
    target: float,
    ranked: list[dict[str, Any]],
    drop_int8: float,
    drop_of: Callable[[dict[str, str]], float],
    metric: str,
) -> tuple[MixedResult, dict[str, str]]:
    """Keep the top k ranked groups float for growing k (:func:`steps`) until
    ``drop_of(keep) <= target``, then bisect down to the fewest that hold it (at most
    ``BISECT_STEPS`` more rebuilds). ``drop_of`` returns inf for an attempt that is no
    conversion (every tensor float); then the k below it is tried. Returns the result and
    the keep-float map of the best attempt (empty: all int8): the fewest groups that
    meet the target, else the lowest drop."""
    result = MixedResult(target, metric, drop_int8, drop_int8, drop_int8 <= target, ranked)
    if result.met or not ranked:
        return result, {}
    drops: dict[int, float] = {}

    def attempt(k: int) -> float:
        if k not in drops:
            drops[k] = drop_of(_keep_map(ranked, k, target))
            result.tried.append({"float_layers": k, "drop": round(drops[k], 4)})
        return drops[k]

    low, high = 0, None  # low: most groups known to miss; high: fewest known to meet
    for k in steps(len(ranked)):
        if attempt(k) <= target:
            high = k
            break
        if drops[k] != float("inf"):
            low = k
    n = len(ranked)
    if high is None and drops.get(n) == float("inf"):
        # every group float is no conversion: look below it for the most that is one
        top = n
        for _ in range(BISECT_STEPS):
            if top - low <= 1:
                break
            mid = (low + top + 1) // 2
            if attempt(mid) == float("inf"):
                top = mid
            elif drops[mid] <= target:
                high = mid
                break
            else:
                low = mid
    for _ in range(BISECT_STEPS):
        if high is None or high - low <= 1:
            break
        mid = (low + high) // 2
        if attempt(mid) <= target:
            high = mid
        else:
            low = mid
    best = high if high is not None else min(drops, key=lambda k: (drops[k], k))
    if drops[best] < drop_int8 or high is not None:
        result.drop, result.met = drops[best], high is not None
        keep = _keep_map(ranked, best, target)
        result.kept_float = [r["node"] for r in ranked if r["node"] in keep]
        return result, keep
    return result, {}


def _keep_map(ranked: list[dict[str, Any]], k: int, target: float) -> dict[str, str]:
    return {
        name: f"kept float by --max-drop {target:g} (sensitivity rank {i + 1})"
        for i, r in enumerate(ranked[:k])
        for name in [r["node"], *r.get("with", [])]
    }


def drop_points(p32: np.ndarray, p8: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is not None:
        return float(100.0 * (np.mean(p32 == labels) - np.mean(p8 == labels)))
    return float(100.0 * (1.0 - np.mean(p32 == p8)))
