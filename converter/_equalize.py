"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"): pure math on the optimized float graph, before
calibration.

Two weight layers in a row, ``y = W2 f(W1 x + b1) + b2``, with ``f`` positively
homogeneous (identity, Relu, LeakyRelu: ``f(x / s) = f(x) / s`` for ``s > 0``), compute
the same function after ``W1[i] /= s_i``, ``b1[i] /= s_i``, ``W2[:, i] *= s_i``. With
``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: range of output channel i of W1, ``r2_i``: range of
input channel i of W2) both ranges become ``sqrt(r1_i r2_i)``: a channel that training
left 100x larger than its neighbours no longer sets the per-tensor weight scale of W1
(Gemm weights are per-tensor, as TFLite FULLY_CONNECTED wants), the scale of each W2
row, nor the range of the activation between them. Chains (a layer that is the second
of one pair and the first of the next) are equalized by repeated sweeps.

Pairs: Conv (group 1) or depthwise Conv -> Conv (group 1) or depthwise Conv, and
Gemm / MatMul with constant 2-D weights -> Gemm / MatMul, directly or through one
Relu / LeakyRelu / Clip(0, M). The tensors between are used by nothing else (not a
graph output, one consumer each), the weights and biases by no other node.

Clip(0, M) is not positively homogeneous: after scaling, channel i clips at ``M s_i``
in the old units instead of ``M``. So a Clip pair is only equalized with the per-channel
maxima of its input on the calibration data (``channel_max``): a channel that reaches M
keeps ``s_i = 1``; the others keep their new clip level at least ``CLIP_MARGIN`` times
above what calibration saw (AIMET instead replaces ReLU6 by ReLU, which changes the
function wherever a channel saturates). Without maxima, Clip pairs are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ._ir import Graph
from ._oprules import attr, fusable_clamp

HOMOGENEOUS = ("Relu", "LeakyRelu")
SWEEPS = 20  # Nagel: a few sweeps converge; stop earlier when every scale is ~1
TOLERANCE = 1e-4
CLIP_MARGIN = 2.0  # a rescaled channel stays this far below its clip level
S_MIN, S_MAX = 1e-4, 1e4  # bounds on one sweep's scale (guards tiny/degenerate ranges)


@dataclass(frozen=True)
class Pair:
    """Two weight layers that can trade a per-channel scale."""

    first: str  # producer node name
    second: str  # consumer node name
    tensor: str  # first's output (the pre-activation tensor)
    clip: float | None  # M of a Clip(0, M) between them, else None


def _is_depthwise(node: onnx.NodeProto, graph: Graph) -> bool:
    w = graph.inits[node.input[1]]
    group = int(attr(node, "group", 1))
    return group > 1 and w.shape[1] == 1 and w.shape[0] == group


def _kind(node: onnx.NodeProto, graph: Graph) -> str | None:
    """'conv' / 'dw' / 'fc' when the node's weight can be rescaled per channel."""
    if len(node.input) < 2 or not graph.is_const(node.input[1]):
        return None
    w = graph.inits[node.input[1]]
    if w.dtype != np.float32:
        return None
    if node.op_type == "Conv" and w.ndim == 4:
        if int(attr(node, "group", 1)) == 1:
            return "conv"
        return "dw" if _is_depthwise(node, graph) else None
    if node.op_type == "Gemm" and w.ndim == 2 and not attr(node, "transA", 0):
        if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            return None
        return "fc"
    if node.op_type == "MatMul" and w.ndim == 2:
        return "fc"
    return None


def out_axis(node: onnx.NodeProto) -> int:
    """The weight axis of the output channels."""
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attr(node, "transB", 0)):
        return 1
    return 0


def in_axis(node: onnx.NodeProto, kind: str) -> int:
    """The weight axis of the input channels (a depthwise channel is its own output)."""
    if kind == "dw":
        return 0
    if kind == "conv":
        return 1
    return 1 - out_axis(node)


def _only_user(graph: Graph, name: str, node: onnx.NodeProto) -> bool:
    users = graph.consumers.get(name, [])
    return all(u is node for u in users)


def _single_path(graph: Graph, tensor: str) -> onnx.NodeProto | None:
    users = graph.consumers.get(tensor, [])
    if len(users) != 1 or tensor in graph.output_names:
        return None
    return users[0]


def find_pairs(graph: Graph) -> list[Pair]:
    """Every equalizable pair, in graph order."""
    graph.reindex()
    pairs = []
    for node in graph.nodes:
        kind = _kind(node, graph)
        if kind is None or not node.output:
            continue
        nxt = _single_path(graph, node.output[0])
        clip = None
        if nxt is not None and nxt.op_type in (*HOMOGENEOUS, "Clip"):
            if nxt.op_type == "Clip":
                bounds = fusable_clamp(nxt, graph)
                if bounds is None:
                    continue
                clip = bounds[1]
            nxt = _single_path(graph, nxt.output[0])
        if nxt is None or _kind(nxt, graph) is None:
            continue
        if (kind == "fc") != (_kind(nxt, graph) == "fc"):
            continue  # a Conv's channels are axis 1, a Gemm's the last one
        if not _owned(graph, node) or not _owned(graph, nxt):
            continue
        if _channels(graph, node, kind, out=True) != _channels(
            graph, nxt, _kind(nxt, graph), out=False
        ):
            continue
        pairs.append(Pair(node.name, nxt.name, node.output[0], clip))
    return pairs


def _owned(graph: Graph, node: onnx.NodeProto) -> bool:
    """The node's weight and bias are used by no other node."""
    return all(_only_user(graph, n, node) for n in node.input[1:] if n)


def _channels(graph: Graph, node: onnx.NodeProto, kind: str | None, *, out: bool) -> int:
    w = graph.inits[node.input[1]]
    if kind == "dw":
        return int(w.shape[0])
    return int(w.shape[out_axis(node) if out else in_axis(node, kind or "")])


def _ranges(w: np.ndarray, axis: int) -> np.ndarray:
    peaks: np.ndarray = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return peaks.astype(np.float64)


def _scale_axis(w: np.ndarray, axis: int, s: np.ndarray) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    scaled: np.ndarray = w.astype(np.float64) * s.reshape(shape)
    return scaled.astype(np.float32)


def pair_scales(
    r1: np.ndarray, r2: np.ndarray, clip: float | None, channel_max: np.ndarray | None
) -> np.ndarray:
    """Nagel's ``s = sqrt(r1 / r2)``, 1 where a range is 0, within the Clip's limits."""
    live = (r1 > 0) & (r2 > 0)
    s: np.ndarray = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] / r2[live])
    s = np.clip(s, S_MIN, S_MAX)
    if clip is None:
        return s
    assert channel_max is not None
    seen = CLIP_MARGIN * np.maximum(channel_max, 0.0)
    s[seen >= clip] = 1.0  # near or at the clip level: only s = 1 is safe
    return np.asarray(np.maximum(s, np.minimum(1.0, seen / clip)))


def apply_pair(graph: Graph, pair: Pair, s: np.ndarray) -> None:
    """Divide output channel i of ``first`` (weight and bias) by ``s_i`` and multiply input
    channel i of ``second`` by it: the same float function."""
    by_name = {n.name: n for n in graph.nodes}
    first, second = by_name[pair.first], by_name[pair.second]
    w1 = first.input[1]
    graph.inits[w1] = _scale_axis(graph.inits[w1], out_axis(first), 1.0 / s)
    if len(first.input) > 2 and first.input[2]:
        b = graph.inits[first.input[2]]
        full = np.broadcast_to(b.reshape(-1), s.shape) if b.size == 1 else b.reshape(-1)
        graph.inits[first.input[2]] = (full.astype(np.float64) / s).astype(np.float32)
    w2 = second.input[1]
    kind2 = _kind(second, graph) or ""
    graph.inits[w2] = _scale_axis(graph.inits[w2], in_axis(second, kind2), s)


def pair_key(pair: Pair) -> str:
    """How quant_params.json names a pair's scales (``--base`` reuses them)."""
    return f"{pair.first}/{pair.second}"


def _fits(s: np.ndarray, r1: np.ndarray, clip: float | None, cmax: np.ndarray | None) -> bool:
    """Whether earlier scales may be applied to this pair (count, and a Clip's limits)."""
    if s.shape != r1.shape or not np.all(np.isfinite(s)) or np.any(s <= 0):
        return False
    if clip is None:
        return True
    if cmax is None:
        return False
    seen = CLIP_MARGIN * np.maximum(cmax, 0.0)
    return bool(np.all(s[seen >= clip] == 1.0) and np.all(s >= np.minimum(1.0, seen / clip)))


@dataclass
class Equalized:
    log: list[str]
    scales: dict[str, np.ndarray]  # pair_key -> total scale per channel


def equalize(
    graph: Graph,
    channel_max: dict[str, np.ndarray] | None = None,
    fixed: dict[str, np.ndarray] | None = None,
) -> Equalized:
    """Equalize every pair in place (``channel_max``: per-channel maximum of each Clip
    pair's input tensor on the calibration data; ``fixed``: scales of an earlier
    conversion, by :func:`pair_key`, applied as they are where they still fit, so that
    ``--base`` keeps int8 values; pairs it does not name stay as they are). Returns log lines and each pair's scales."""
    maxima = channel_max or {}
    pairs = [p for p in find_pairs(graph) if p.clip is None or p.tensor in maxima]
    if fixed is not None:  # --base: the pairs the previous release equalized, no others
        pairs = [p for p in pairs if pair_key(p) in fixed]
    if not pairs:
        return Equalized([], {})
    by_name = {n.name: n for n in graph.nodes}
    total = {}
    for p in pairs:
        first = by_name[p.first]
        r1 = _ranges(graph.inits[first.input[1]], out_axis(first))
        old = np.asarray((fixed or {}).get(pair_key(p), []), np.float64)
        if _fits(old, r1, p.clip, maxima.get(p.tensor)):
            apply_pair(graph, p, old)
            total[p] = old
    free = [p for p in pairs if p not in total]
    for p in free:
        total[p] = np.ones(
            _channels(graph, by_name[p.first], _kind(by_name[p.first], graph), out=True)
        )
    # sweep on a copy of the weights, then apply each pair's total once to the originals:
    # the same float operations as reusing those scales (--base gives identical bytes)
    touched = {
        n
        for p in free
        for node in (by_name[p.first], by_name[p.second])
        for n in node.input[1:]
        if n
    }
    saved = {n: graph.inits[n] for n in touched}
    _sweep(graph, free, by_name, maxima, total)
    graph.inits.update(saved)
    for p in free:
        apply_pair(graph, p, total[p])
    spread = [float(np.max(t) / np.min(t)) for t in total.values()]
    log = [
        f"cross-layer equalization: {len(pairs)} pair(s) "
        f"({sum(p.clip is not None for p in pairs)} through Clip, "
        f"{len(pairs) - len(free)} with --base scales), "
        f"largest channel rescale ratio {max(spread):.3g}"
    ]
    return Equalized(log, {pair_key(p): total[p] for p in pairs})


def _sweep(
    graph: Graph,
    pairs: list[Pair],
    by_name: dict[str, onnx.NodeProto],
    maxima: dict[str, np.ndarray],
    total: dict[Pair, np.ndarray],
) -> None:
    """Nagel's sweeps; ``total`` accumulates each pair's scales (a Clip pair's data check
    holds for the product)."""
    for _ in range(SWEEPS):
        moved = 0.0
        for p in pairs:
            first, second = by_name[p.first], by_name[p.second]
            r1 = _ranges(graph.inits[first.input[1]], out_axis(first))
            r2 = _ranges(graph.inits[second.input[1]], in_axis(second, _kind(second, graph) or ""))
            cmax = None if p.clip is None else maxima[p.tensor] / total[p]
            s = pair_scales(r1, r2, p.clip, cmax)
            apply_pair(graph, p, s)
            total[p] = total[p] * s
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < TOLERANCE:
            break
