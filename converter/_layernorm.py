"""Calibrated parameters for the inside of LayerNormalization, so that the TFLite writer
can lower one quantized LayerNormalization node to int8 builtins.

The QDQ ONNX keeps LayerNormalization as one op (onnxruntime runs DQ -> LN -> Q in
float). A fully-integer TFLite has no LAYER_NORM; it computes, over the last axis::

    m = MEAN(x)            d = SUB(x, m)          sq = MUL(d, d)
    v = MEAN(sq)           ve = ADD(v, eps)       r = RSQRT(ve)
    n = MUL(d, r)          g = MUL(n, gamma)      y = ADD(g, beta)

and every intermediate needs int8 parameters. They come from one extra pass over the
calibration data (only when the graph has quantized LayerNormalization nodes): the
float model is run, a bounded batch at a time, fetching only the LN inputs, and the
intermediates are computed in numpy (float64) to track their min/max. The parameters
travel in the QDQ model's metadata (``metadata_props["edgeship.layernorm"]``: JSON
``{node name: {intermediate: [scale, zero point]}}``), which runtimes ignore.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from ._evaluate import sample_count
from ._ir import Graph
from ._layernorm_ties import tie_free_layernorms
from ._plan import Plan, params_from_range
from ._quantize import tie_free_plan

METADATA_KEY = "edgeship.layernorm"
INTERNALS = ("mean", "centered", "squared", "variance", "variance_eps", "rstd", "normalized", "scaled")
BATCH = 16


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(onnx.helper.get_attribute_value(a))
    return default


def internals(x: np.ndarray, eps: float, gamma: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate of the int8 lowering, in float64 (pure math)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    squared = centered * centered
    variance = squared.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(variance + eps)
    normalized = centered * rstd
    return {"mean": mean, "centered": centered, "squared": squared, "variance": variance,
            "variance_eps": variance + eps, "rstd": rstd, "normalized": normalized,
            "scaled": normalized * gamma.astype(np.float64)}


def layernorm_params(graph: Graph, plan: Plan, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Parameters of every quantized LayerNormalization's intermediates (empty if none)."""
    nodes = [n for n in graph.nodes if n.op_type == "LayerNormalization" and plan.is_quantized_node(n)]
    if not nodes:
        return {}
    wanted = sorted({n.input[0] for n in nodes})
    sess, names = _session(graph, [n for n in wanted if n not in graph.input_names])
    lo: dict[tuple[str, str], float] = {}
    hi: dict[tuple[str, str], float] = {}
    count = sample_count(feeds)
    for start in range(0, count, BATCH):
        # the model may hard-code batch 1: run one sample at a time inside the batch
        for i in range(start, min(start + BATCH, count)):
            sample = {k: v[i : i + 1] for k, v in feeds.items()}
            values = dict(zip(names, sess.run(names, sample), strict=True)) if names else {}
            values.update(sample)
            for node in nodes:
                gamma = graph.inits[node.input[1]] if len(node.input) > 1 and node.input[1] else np.ones(1)
                for key, arr in internals(values[node.input[0]], _attr(node, "epsilon", 1e-5), gamma).items():
                    k = (node.name, key)
                    lo[k] = min(lo.get(k, np.inf), float(arr.min()))
                    hi[k] = max(hi.get(k, -np.inf), float(arr.max()))
    params = {n.name: {key: params_from_range(lo[(n.name, key)], hi[(n.name, key)]).to_list()
                       for key in INTERNALS} for n in nodes}
    return tie_free(graph, plan, params)


def tie_free(graph: Graph, plan: Plan, params: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """``params`` with the steps' scales moved to ones both runtimes round alike
    (converter/_layernorm_ties.py), after the plan's own tie-free moves, which it applies
    first (the LayerNorm inputs are often residual Adds). Moving a LayerNorm's output can
    move an Add after it, which may feed another LayerNorm: repeated until nothing moves."""
    for _ in range(4):
        tie_free_plan(graph, plan)
        before = dict(plan.params)
        chosen = tie_free_layernorms(graph, plan, params)
        if tie_free_plan(graph, plan) == 0 and plan.params == before:
            break
    return chosen


def _session(graph: Graph, fetch: list[str]) -> tuple[Any, list[str]]:
    import onnxruntime as ort

    extra = [n for n in fetch if n not in graph.output_names and n not in graph.input_names]
    model = graph.to_model(extra_outputs=extra)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess, fetch


def attach(model: onnx.ModelProto, params: dict[str, dict[str, list[float]]]) -> onnx.ModelProto:
    """``model`` with the parameters in its metadata (unchanged when there are none)."""
    if params:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(params, sort_keys=True)
    return model


def read(model: onnx.ModelProto) -> dict[str, dict[str, list[float]]]:
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return dict(json.loads(entry.value))
    return {}
