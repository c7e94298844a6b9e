"""Magnitude pruning, per layer: in every Conv, Gemm and MatMul weight, the fraction S of
entries with the smallest |w| is set to zero (ties broken by position, so the result is
deterministic). Per layer rather than global so that small layers (the stem, depthwise
convs, the head) are not emptied by the big ones; runs after BatchNorm folding, on the
weights that will be deployed, and before calibration."""

from __future__ import annotations

import numpy as np

from ._ir import Graph

PRUNED_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def prune(graph: Graph, sparsity: float) -> dict[str, float]:
    """Prune in place; returns the achieved sparsity per weight tensor."""
    result: dict[str, float] = {}
    if sparsity <= 0.0:
        return result
    for node in graph.nodes:
        idx = PRUNED_OPS.get(node.op_type)
        if idx is None or len(node.input) <= idx or not graph.is_const(node.input[idx]):
            continue
        name = node.input[idx]
        if name in result:
            continue
        w = graph.inits[name]
        k = int(np.floor(sparsity * w.size))
        if k > 0:
            flat = w.reshape(-1).copy()
            order = np.argsort(np.abs(flat), kind="stable")
            flat[order[:k]] = 0.0
            graph.inits[name] = flat.reshape(w.shape).astype(np.float32)
        result[name] = float(np.mean(graph.inits[name] == 0.0))
    return result


def overall_sparsity(graph: Graph, names: list[str]) -> float:
    total = sum(graph.inits[n].size for n in names)
    zeros = sum(int(np.sum(graph.inits[n] == 0.0)) for n in names)
    return zeros / total if total else 0.0
