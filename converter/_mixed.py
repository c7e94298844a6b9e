"""``--max-drop X``: keep the fewest, most sensitive tensor groups in float until the INT8
model is within X points of fp32, or say it cannot be done (exit 3).

The drop is accuracy points on ``--eval`` when it has labels (fp32 accuracy minus INT8
accuracy), else a label-free task metric against the fp32 model chosen from the output's
shape (converter/_proxy.py: top-1 disagreement, CTC strings that differ, each with the
flip risk of the samples kept, fp32 boxes missed, or relative output noise;
``--drop-metric`` overrides) on ``--eval`` or, without it, on the calibration samples:
the model searched and checked is the one written, calibrated on all of them (a split
calibrated the model written on fewer samples than the default's, so it could read worse).
Top-1 is searched on every other sample and checked on the rest (a search fits the noise
of the few samples nearest a flip it chooses on) and also counts the flips the noise it
shows makes at the near-flip density of fp32's margins (converter/_proxy.py
:func:`noise_drop`). The default conversion is kept whenever it meets the target on that
measure, and a conversion that misses is kept only if it reads better than the default.

The ranking and the search run on one probe session (converter/_mixed_probe.py); the
conversion kept is built and measured like any other. A group kept float runs as DQ ->
float ops -> Q in the ONNX and as DEQUANTIZE -> float ops -> QUANTIZE in the TFLite
(converter/_tflite_float*.py); on the Edge TPU that island runs on the CPU, and the
report's Edge TPU section names the cut. Here: the result and the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship._errors import ConversionError

from ._ir import Graph

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


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
    search_s: dict[str, float] = field(default_factory=dict)  # seconds: rank, probe, total
    kept_ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes kept float
    rank_samples: int = 0  # samples per group the ranking ran (from the graph, not a clock)

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
            "kept_ops": self.kept_ops,
            "search_s": self.search_s,
            "rank_samples": self.rank_samples,
        }


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


def drop_points(p32: np.ndarray, p8: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is not None:
        return float(100.0 * (np.mean(p32 == labels) - np.mean(p8 == labels)))
    return float(100.0 * (1.0 - np.mean(p32 == p8)))
