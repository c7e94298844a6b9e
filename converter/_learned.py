"""The shell of learned rounding (``--learned-rounding``; the math is converter/_adaround.py):
one float run over the calibration samples accumulates ``H = E[x x^T]`` of every Conv /
Gemm / MatMul input, then a :class:`WeightPolicy` rounds each weight against it.

Tried and not kept (session 6, 64 calibration samples, task metric vs fp32 on 128 / 256
eval samples, ONNX): the target on the quantized model's inputs (AdaRound's asymmetric
reconstruction, ``|W~ x_q - W x_fp|^2`` with ``x_q`` from the nearest-rounded QDQ model:
a linear term ``2 d^T E[x_q (x_q - x_fp)^T] w`` in the same coordinate descent) lowered
the layer error on held-out samples but compounded across layers: ddddocr_ocr string
match 81.3 -> 74.2 % (19.1 -> 14.4 dB), efficientnet_lite0 top-1 92.2 -> 88.3 %; with
``x_q`` taken before the layer's own input Q/DQ 78.1 %. A per-layer acceptance check
(rounding fitted on the even samples judged on the odd ones and back) rejected none of
ddddocr_ocr's 21 layers: learned rounding is not its loss (256 eval samples: nearest
85.2 %, learned 87.9 %; at 32 samples one string is 3 points)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ._adaround import MAX_POSITIONS, damped, output_error, patches, round_rows
from ._evaluate import sample_count
from ._ir import Graph
from ._oprules import attr
from ._quantize import WeightPolicy

# rows that estimate H: 16 per weight of one output, at least 1024 (a depthwise 3x3 H is 9 x 9)
ROWS_PER_INPUT = 16
MIN_POSITIONS = 1024
# input values (float32: 64 MiB) that wait for a Gram product, over all layers; past it
# the layers with the most waiting rows are added first, until half of it is free
FLUSH_VALUES = 1 << 24
MIN_ROWS_PER_INPUT = 2  # H of K inputs is estimated from at least 2K rows, else nearest


@dataclass
class _Layer:
    node: onnx.NodeProto
    groups: int  # Conv groups (1 for Gemm / MatMul)
    rows_last: bool  # the weight's output axis is 1 (Gemm transB=0, MatMul)
    gram: np.ndarray | None = None  # [groups, K, K]
    rows: int = 0  # input rows (patches, vectors) that went into it


def inputs_per_output(layer: _Layer, w: np.ndarray) -> int:
    """How many weights feed one output value (the size of the layer's ``H``)."""
    if layer.node.op_type == "Conv":
        return int(np.prod(w.shape[1:]))
    return int(w.shape[0] if layer.rows_last else w.shape[1])


def positions(layer: _Layer, w: np.ndarray) -> int:
    """Input rows that estimate a layer's ``H``: ``ROWS_PER_INPUT`` per weight of one
    output, within [``MIN_POSITIONS``, ``MAX_POSITIONS``] (a depthwise layer's 9 x 9 ``H``
    needs far fewer than a 1x1 Conv's 1152 x 1152; im2col of every position is the cost)."""
    wanted = ROWS_PER_INPUT * inputs_per_output(layer, w)
    return int(min(MAX_POSITIONS, max(MIN_POSITIONS, wanted)))


def _layers(graph: Graph) -> dict[str, _Layer]:
    """Weight name -> layer, for weights used by exactly one Conv / Gemm / MatMul."""
    found: dict[str, _Layer] = {}
    for node in graph.nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        if not graph.is_const(name) or len(graph.consumers.get(name, [])) != 1:
            continue
        w = graph.inits[name]
        if node.op_type == "Conv" and w.ndim == 4:
            found[name] = _Layer(node, int(attr(node, "group", 1)), False)
        elif node.op_type in ("Gemm", "MatMul") and w.ndim == 2 and not attr(node, "transA", 0):
            rows_last = node.op_type == "MatMul" or not attr(node, "transB", 0)
            found[name] = _Layer(node, 1, rows_last)
    return found


def _sample_rows(
    x: np.ndarray, layer: _Layer, w: np.ndarray, keep: int, rng: Any, dtype: Any = np.float64
) -> np.ndarray | None:
    """The layer's input rows for one sample: im2col patches (Conv) or feature vectors."""
    if layer.node.op_type == "Conv":
        if x.ndim != 3:
            return None
        rows = patches(layer.node, x, (w.shape[2], w.shape[3]), keep, rng)
        return None if rows is None else rows.astype(dtype, copy=False)
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) > keep:
        rows = rows[np.sort(rng.choice(len(rows), keep, replace=False))]
    return rows.astype(dtype, copy=False)


def gram(rows: np.ndarray, groups: int) -> np.ndarray:
    """``sum_p x_p x_p^T`` per group ([groups, K, K], float64) of input rows [P, groups * K]:
    BLAS products in float32 (a grouped Conv's groups as one batched product)."""
    if groups == 1:
        product: np.ndarray = (rows.T @ rows)[None]
    else:
        per = rows.reshape(len(rows), groups, -1).transpose(1, 0, 2)  # [G, P, K]
        product = np.matmul(per.transpose(0, 2, 1), per)
    return product.astype(np.float64)


def collect_grams(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, _Layer]:
    """Run the float graph on the calibration samples; ``H`` per layer (per group)."""
    import onnxruntime as ort

    count = sample_count(feeds)
    collector = GramCollector(graph, count)
    if not collector.layers:  # nothing to round (and run([]) would fetch every output)
        return {}
    inputs = collector.inputs
    model = graph.to_model(extra_outputs=[t for t in inputs if t not in graph.output_names])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for i in range(count):
        collector.add(
            dict(zip(inputs, sess.run(inputs, {k: v[i : i + 1] for k, v in feeds.items()}), strict=True))
        )
    return collector.finish()


class GramCollector:
    """The Gram matrices of :func:`collect_grams`, fed one batch-1 sample's layer inputs at a
    time by whoever runs the float graph: its own session, or calibration's run over the
    same samples (converter/_calibrate.py ``collect(observer=...)``), which saves a second
    float pass over the calibration set. Rows are drawn by the same seeded generator in
    the same order either way: the same Grams for the same float values."""

    def __init__(self, graph: Graph, count: int) -> None:
        graph.reindex()
        self.graph = graph
        # a layer whose H the rows cannot estimate (K > MAX_POSITIONS / MIN_ROWS_PER_INPUT)
        # would be rounded to nearest anyway: its K^2 Gram is not built (yolov8n's 3x3 Convs)
        self.layers = {
            name: layer
            for name, layer in _layers(graph).items()
            if positions(layer, graph.inits[name])
            >= MIN_ROWS_PER_INPUT * inputs_per_output(layer, graph.inits[name])
        }
        self.inputs = sorted({ly.node.input[0] for ly in self.layers.values()})
        self.keep = {
            n: max(1, math.ceil(positions(ly, graph.inits[n]) / count))
            for n, ly in self.layers.items()
        }
        self.rng = np.random.default_rng(0)  # the same positions every run: the same bytes
        # rows wait until many are stacked: one Gram product of a few thousand rows runs at
        # BLAS speed, one per sample mostly writes its K x K result (ddddocr_ocr: 36 -> 8 s)
        self.waiting: dict[str, list[np.ndarray]] = {}
        self.held = 0  # float32 values waiting, over all layers
        self.seconds = 0.0  # time spent in add / finish

    def add(self, values: dict[str, Any]) -> None:
        """One sample's values (batch 1) of every tensor in :attr:`inputs`."""
        began = time.perf_counter()
        for name, layer in self.layers.items():
            w = self.graph.inits[name]
            x = np.asarray(values[layer.node.input[0]])[0]
            rows = _sample_rows(x, layer, w, self.keep[name], self.rng, dtype=np.float32)
            if rows is None:
                continue
            if rows.base is not None:  # a view of the run's output would keep the run's
                rows = rows.copy()  # buffers (every tensor of calibration's run) alive
            self.waiting.setdefault(name, []).append(rows)
            self.held += rows.size
            if self.held >= FLUSH_VALUES:
                self.held = _flush(self.layers, self.waiting, self.held - FLUSH_VALUES // 2)
        self.seconds += time.perf_counter() - began

    def finish(self) -> dict[str, _Layer]:
        began = time.perf_counter()
        _flush(self.layers, self.waiting, None)
        self.seconds += time.perf_counter() - began
        return {n: ly for n, ly in self.layers.items() if ly.gram is not None}


def _flush(
    layers: dict[str, _Layer], waiting: dict[str, list[np.ndarray]], free: int | None
) -> int:
    """Add the stacked rows waiting per layer to its Gram, the layers with the most rows
    first, until ``free`` values are freed (None: all); returns the values still waiting."""
    sizes = {name: sum(r.size for r in pending) for name, pending in waiting.items()}
    for name in sorted(sizes, key=lambda n: -sizes[n]):
        if free is not None and free <= 0:
            break
        pending = waiting[name]
        if not pending:
            continue
        layer = layers[name]
        rows = np.concatenate(pending)
        g = gram(rows, layer.groups)
        layer.gram = g if layer.gram is None else layer.gram + g
        layer.rows += len(rows)
        pending.clear()
        if free is not None:
            free -= sizes[name]
        sizes[name] = 0
    return sum(sizes.values())


@dataclass
class LearnedRounding(WeightPolicy):
    """Rounds each weight with a Gram matrix by :func:`round_rows`; the others to nearest."""

    layers: dict[str, _Layer] = field(default_factory=dict)
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)  # nearest, learned
    seconds: float = 0.0
    # (weight, scales, axis) -> its int8 values: a --max-drop rebuild asks again
    rounded: dict[tuple[str, bytes, int | None], np.ndarray] = field(default_factory=dict)

    def round(self, name: str, w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
        key = (name, np.asarray(scales).tobytes(), axis)
        if key in self.rounded:
            return self.rounded[key].copy()
        layer = self.layers.get(name)
        if (
            layer is None
            or layer.gram is None
            or layer.rows < MIN_ROWS_PER_INPUT * layer.gram.shape[1]
        ):
            return super().round(name, w, scales, axis)  # too few samples to trust H
        t0 = time.perf_counter()
        rows = w.T if layer.rows_last else w
        out_c = rows.shape[0]
        s = np.broadcast_to(scales.reshape(-1), (out_c,)) if scales.size in (1, out_c) else None
        if s is None or out_c % layer.groups:
            return super().round(name, w, scales, axis)
        flat = rows.reshape(out_c, -1)
        per = out_c // layer.groups
        q = np.empty(flat.shape, np.int8)
        near = learned = 0.0
        for g in range(layer.groups):
            sl = slice(g * per, (g + 1) * per)
            q[sl] = round_rows(flat[sl], s[sl], damped(layer.gram[g]))
            nearest = np.clip(np.round(flat[sl] / s[sl, None]), -127, 127)
            near += output_error(flat[sl], nearest, s[sl], layer.gram[g])
            learned += output_error(flat[sl], q[sl], s[sl], layer.gram[g])
        self.errors[name] = (near, learned)
        self.seconds += time.perf_counter() - t0
        shaped = q.reshape(rows.shape)
        self.rounded[key] = shaped.T.copy() if layer.rows_last else shaped
        return self.rounded[key].copy()

    def summary(self) -> str:
        near = sum(e[0] for e in self.errors.values())
        learned = sum(e[1] for e in self.errors.values())
        db = 10.0 * np.log10(max(near, 1e-30) / max(learned, 1e-30))
        return (
            f"learned rounding: {len(self.errors)} weight(s), layer output error of the "
            f"rounding down {db:.2f} dB in total ({self.seconds:.1f} s)"
        )
