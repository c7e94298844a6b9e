"""The onnxruntime side of the accuracy steps; the math is in the pure modules:
cross-layer equalization (converter/_equalize.py: here, the Clip pairs' channel maxima),
bias correction (converter/_bias_correct.py: here, which inputs need a mean), the
per-tensor range choice (converter/_range_choice.py: here, :class:`RangeProbe` measures
the output error), and ``--max-drop`` (converter/_mixed.py: here, :func:`meet_target`
evaluates each attempt)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from edgeship._errors import CalibrationError

from . import _equalize
from ._calibrate import TensorStats
from ._evaluate import sample_count
from ._ir import Graph

MAXIMA_SAMPLES = 256  # calibration samples that bound a Clip pair's channels


def equalize(
    graph: Graph, calib: dict[str, np.ndarray], fixed: dict[str, np.ndarray] | None = None
) -> _equalize.Equalized:
    """Cross-layer equalization in place; a Clip(0, M) pair is bounded by the
    per-channel maxima of its input on (the first ``MAXIMA_SAMPLES``) calibration samples;
    ``fixed``: a previous conversion's scales (``--base``)."""
    pairs = _equalize.find_pairs(graph)
    clipped = sorted({p.tensor for p in pairs if p.clip is not None})
    maxima = channel_maxima(graph, calib, clipped) if clipped else {}
    return _equalize.equalize(graph, maxima, fixed)


def channel_maxima(
    graph: Graph, feeds: dict[str, np.ndarray], tensors: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel maximum of each tensor (axis 1 of a 4-D tensor, else the last axis)."""
    sess = _session(graph, tensors)
    count = min(MAXIMA_SAMPLES, sample_count(feeds))
    result: dict[str, np.ndarray] = {}
    for i in range(count):
        try:
            values = sess.run(tensors, {k: v[i : i + 1] for k, v in feeds.items()})
        except Exception as exc:
            raise CalibrationError(f"calibration sample {i} fails: {exc}") from exc
        for name, v in zip(tensors, values, strict=True):
            m = _per_channel_max(np.asarray(v))
            result[name] = m if name not in result else np.maximum(result[name], m)
    return result


def _per_channel_max(v: np.ndarray) -> np.ndarray:
    axis = 1 if v.ndim == 4 else v.ndim - 1
    peaks: np.ndarray = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1).max(axis=1)
    return peaks.astype(np.float64)


def _session(graph: Graph, tensors: list[str]) -> Any:
    import onnxruntime as ort

    model = graph.to_model(extra_outputs=[t for t in tensors if t not in graph.output_names])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # deterministic, like calibration
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def corrected_layers(graph: Graph) -> frozenset[str]:
    """Inputs of the layers bias correction touches (their means are collected)."""
    from ._bias_correct import CORRECTED_OPS

    return frozenset(
        n.input[0]
        for n in graph.nodes
        if n.op_type in CORRECTED_OPS and len(n.input) > 1 and graph.is_const(n.input[1])
    )


PROBE_SAMPLES = 8  # calibration samples the range choice measures the output error on


class RangeProbe:
    """The output error of the QDQ model for a set of activation ranges, without
    rebuilding it: one session of the plan's QDQ model whose activation scales and zero
    points are graph inputs (unfused, so onnxruntime runs exact Q/DQ around float ops)."""

    def __init__(self, graph: Graph, plan: Any, feeds: dict[str, np.ndarray]) -> None:
        from ._quantize import build_qdq

        self.graph = graph
        self.shape = _structure(plan)
        qmodel = build_qdq(graph, plan)[0]
        self.model = _with_scale_inputs(qmodel, plan.quantized)
        n = min(PROBE_SAMPLES, sample_count(feeds))
        self.samples = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]
        self.sess = _plain_session(self.model)
        ref = _plain_session(graph.to_model())
        self.outputs = [o.name for o in ref.get_outputs()]
        self.refs = [ref.run(self.outputs, s) for s in self.samples]

    def error(self, ranges: dict[str, tuple[float, float]]) -> float | None:
        """Mean relative squared error of the outputs (None: these ranges change which
        tensors are quantized or fused, so this model cannot measure them)."""
        from ._plan import make_plan
        from ._quantize import _stored_zero_point, exact_pool_scales

        plan = make_plan(self.graph, ranges)
        if _structure(plan) != self.shape:
            return None
        exact_pool_scales(self.graph, plan)
        params = {}
        for t in plan.quantized:
            p = plan.params[t]
            params[t + "_s"] = np.array(p.scale, np.float32)
            params[t + "_z"] = _stored_zero_point(p.zero_point, int8=False)
        num = np.zeros(len(self.outputs))
        den = np.zeros(len(self.outputs))
        for sample, ref in zip(self.samples, self.refs, strict=True):
            got = self.sess.run(self.outputs, {**sample, **params})
            for j, (a, b) in enumerate(zip(got, ref, strict=True)):
                num[j] += float(np.sum((np.asarray(a, np.float64) - b) ** 2))
                den[j] += float(np.sum(np.asarray(b, np.float64) ** 2))
        return float(np.mean(num / np.maximum(den, 1e-30)))


def _structure(plan: Any) -> tuple[Any, ...]:
    return (tuple(plan.quantized), tuple(sorted(plan.fused)), tuple(sorted(plan.float_nodes)))


def _with_scale_inputs(model: Any, tensors: list[str]) -> Any:
    """``model`` with each activation's scale / zero point initializer turned into a graph
    input; a Conv bias scale computed from its input's scale (a Mul) is frozen first, so the
    int32 bias keeps its real value whatever scale is fed."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    frozen = []
    for node in list(g.node):
        if (
            node.op_type == "Mul"
            and node.output[0].endswith("_b_s")
            and all(i in inits for i in node.input)
        ):
            a, b = (numpy_helper.to_array(inits[i]) for i in node.input)
            frozen.append(numpy_helper.from_array((a * b).astype(np.float32), node.output[0]))
            g.node.remove(node)
    g.initializer.extend(frozen)
    names = {t + "_s" for t in tensors} | {t + "_z" for t in tensors}
    moved = [t for t in g.initializer if t.name in names]
    for t in moved:
        g.initializer.remove(t)
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, []))
    return model


def _plain_session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the same errors every run: the same choice, same bytes
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def choose_ranges(
    graph: Graph,
    stats: dict[str, TensorStats],
    start: dict[str, tuple[float, float]],
    feeds: dict[str, np.ndarray],
    percentile: float,
) -> tuple[dict[str, tuple[float, float]], str]:
    """``--calibration auto``: each parameter group's range method chosen by the output
    error it causes (converter/_range_choice.py). Returns the ranges and a log line."""
    from ._plan import make_plan
    from ._range_choice import candidates, choose

    t0 = time.perf_counter()
    plan = make_plan(graph, start)
    groups: dict[str, list[str]] = {}
    for t in plan.quantized:
        groups.setdefault(plan.group_of.get(t, t), []).append(t)
    roots = list(groups)
    options = candidates(stats, groups, percentile, start)
    probe = RangeProbe(graph, plan, feeds)
    choice = choose(start, options, roots, probe.error)
    counts = {m: list(choice.methods.values()).count(m) for m in ("percentile", "mse")}
    gain = 10.0 * np.log10(max(choice.error_before, 1e-30) / max(choice.error_after, 1e-30))
    line = (
        f"calibration auto: {len(roots)} group(s), {choice.tried} range(s) tried, "
        f"{counts['percentile']} percentile and {counts['mse']} mse kept, output error down "
        f"{gain:.2f} dB on {len(probe.samples)} samples ({time.perf_counter() - t0:.1f} s)"
    )
    return choice.ranges, line


def meet_target(inp: Any, q: Any, opts: Any) -> Any:
    """``--max-drop``: measure the drop; when it misses, rank the quantized tensor groups
    by the output noise each causes alone and search the fewest kept float on one probe
    session (converter/_mixed_probe.py, _mixed_search.py), then build that conversion and measure it (both
    formats) as before; ``q`` ends up as the best conversion built. With ``--eval`` labels
    the drop is accuracy points; without, a label-free task metric against the fp32 model
    (converter/_proxy.py) on ``--eval`` or every calibration sample. With a TFLite
    to write, only ops with a float TFLite lowering go float, and a conversion whose TFLite
    cannot be lowered drops the group that blocked it (so both formats carry the same
    model)."""
    from . import _mixed_probe, _mixed_search
    from ._mixed import MixedResult

    assert opts.max_drop is not None
    fp32_model = q.graph.to_model()
    measure = _drop_measure(inp, fp32_model, opts.drop_metric)
    tflite = "tflite" in opts.formats
    lite_too = tflite and opts.io == "float"  # LiteRT measured too (float edges, as ONNX)
    drop_int8 = measure.drop_of(q.qmodel, _tflite_bytes(q.tflite_source, opts) if lite_too else None)
    builds: dict[tuple[str, ...], Any] = {}
    blocked: set[str] = set()  # nodes whose float TFLite lowering failed
    groups: list[dict[str, Any]] = []

    def drop_of(keep: dict[str, str]) -> float:
        lite: bytes | None = None
        while True:
            usable = _without_blocked(keep, groups, blocked)
            built = q.rebuild(usable)
            if not tflite:
                break
            lite, node = _tflite_or_blocker(built.tflite_source, opts)
            if node is None or node in blocked or node not in usable:
                break
            blocked.add(node)
        builds[tuple(keep)] = built
        if not built.plan.quantized:  # every tensor float: no INT8 conversion at all
            return float("inf")
        return measure.drop_of(built.qmodel, lite if lite_too else None)

    best = MixedResult(opts.max_drop, measure.metric, drop_int8, drop_int8,
                       drop_int8 <= opts.max_drop, [])
    keep: dict[str, str] = {}
    if not best.met:
        groups[:] = _mixed_probe.candidate_groups(q.graph, q.plan, _floatable() if tflite else None)
        probe = _mixed_probe.build_probe(q.graph, q.plan, q.qmodel)
        search = _mixed_search.ProbeSearch(
            probe, measure, lambda k: _planned(q.graph, q.plan_of(k)), q.plan)
        search.estimated_s = _mixed_search.estimated_seconds(q.graph)
        best, keep = _mixed_search.search_probe(
            opts.max_drop, search, groups, drop_int8, drop_of, measure.metric)
    best.measured_on = measure.where + (", ONNX and TFLite (the larger drop)" if lite_too else "")
    best.metric_detail = measure.detail
    if keep:
        q.use(builds[tuple(keep)])
        marked = set(q.plan.float_nodes)  # a group whose TFLite lowering failed is not
        best.kept_float = [n for n in best.kept_float if n in marked]
    by_name = {n.name: n.op_type for n in q.graph.nodes}
    kept = [n for n, why in q.plan.float_nodes.items() if "--max-drop" in why]
    best.float_nodes = len(kept)
    best.kept_ops = {op: sum(by_name.get(n) == op for n in kept)
                     for op in sorted({by_name.get(n, "?") for n in kept})}
    best.int8_nodes = len(q.plan.rules)
    if blocked:
        best.blocked = sorted(blocked)
    return best


def _planned(graph: Graph, plan: Any) -> Any:
    """``plan`` with the scale adjustments the QDQ writer makes (converter/_quantize.py
    :func:`build_qdq`), so the probe reads the scales the conversion would write."""
    from ._add_ties import tie_free_add_scales
    from ._pool_ties import tie_free_pool_scales
    from ._quantize import exact_pool_scales

    exact_pool_scales(graph, plan)
    tie_free_pool_scales(graph, plan)
    tie_free_add_scales(graph, plan)
    return plan


def _floatable() -> frozenset[str]:
    from ._tflite_float import FLOAT_RULES

    return frozenset(FLOAT_RULES)


def _without_blocked(
    keep: dict[str, str], groups: list[dict[str, Any]], blocked: set[str]
) -> dict[str, str]:
    """``keep`` less every group that holds a blocked node (a group goes float whole or
    not at all)."""
    if not blocked:
        return keep
    gone: set[str] = set()
    for r in groups:
        members = set(r["nodes"])
        if members & blocked:
            gone |= members
    return {k: v for k, v in keep.items() if k not in gone}


def _tflite_or_blocker(source: bytes, opts: Any) -> tuple[bytes | None, str | None]:
    """The TFLite of this attempt, or the node whose lowering fails (None, None: it
    fails for another reason, which the write reports)."""
    import onnx

    from edgeship._errors import UnsupportedOpError

    from ._tflite import build_tflite

    try:
        data = build_tflite(onnx.ModelProto.FromString(source), io=opts.io, verify=False)[0]
    except UnsupportedOpError as exc:
        return None, exc.node_name or None
    except Exception:  # not this step's business: the write reports it
        return None, None
    return data, None


def _tflite_bytes(source: bytes, opts: Any) -> bytes | None:
    return _tflite_or_blocker(source, opts)[0]


HOLD_OUT_MIN = 16  # samples per half: fewer, and search and check share every sample


class _DropMeasure:
    """The drop of a QDQ model against the fp32 model on fixed samples, in points: with
    ``--eval`` labels, the accuracy drop on all of them; else a label-free metric
    (converter/_proxy.py, counting each kept sample's flip risk) on ``--eval`` or the
    calibration samples (the model checked is the one written, calibrated on all of them),
    top-1 split in two halves (every other sample): the search measures the first
    (``search_*``), the check of a conversion built, :meth:`drop_of`, the other
    (``check_*``). A search that tries many float sets and keeps the one that holds on its
    samples fits their noise (ppocr_cls: the margins of the samples nearest a flip moved
    half as much as on unseen ones), so the verdict is read on samples no choice was made
    on. Other metrics search and check on every sample."""

    def __init__(self, inp: Any, fp32_model: Any, requested: str) -> None:
        from . import _evaluate, _proxy

        self.fp32 = _evaluate.session(fp32_model)
        self.labels: np.ndarray | None = None
        source = "--eval" if inp.ev is not None else "calibration"
        if inp.ev is not None:
            self.feeds, self.labels = inp.ev
            self.where = f"--eval ({sample_count(self.feeds)} samples)"
        else:
            self.feeds = inp.calib
            self.where = f"the {sample_count(self.feeds)} calibration samples"
        if self.labels is not None:
            self.metric, self.detail = "accuracy", _proxy.DESCRIBE["accuracy"]
            return
        first = self._first(self.fp32, next(_evaluate.samples(self.feeds)))
        inputs = next(iter(self.feeds.values()))
        self.proxy = _proxy.choose(first.shape, inputs.shape, first, requested)
        self.metric, self.detail = self.proxy.metric, self.proxy.describe()
        n = sample_count(self.feeds)
        self.search_n, self.check_start = n, 0
        # top-1 is decided by the few samples nearest a flip: the ones a search fits
        if self.proxy.metric == "top1" and n >= 2 * HOLD_OUT_MIN:
            order = np.r_[np.arange(0, n, 2), np.arange(1, n, 2)]  # the first stays first
            self.feeds = {k: np.asarray(v)[order] for k, v in self.feeds.items()}
            self.search_n = self.check_start = (n + 1) // 2
            self.where = (f"{n - self.search_n} of the {n} {source} samples, held out from the "
                          f"search (it chose on the other {self.search_n})")
        refs = [_proxy.reference(self.proxy, v) for v in self._views(self.fp32, self.feeds)]
        # top-1: how densely fp32's margins crowd a flip, on every sample (the fp32 model's)
        self.density = _proxy.near_flip_density(refs) if self.proxy.metric == "top1" else 0.0
        self.search_refs = refs[: self.search_n]
        self.check_refs = refs[self.check_start :]
        self.check_feeds = {k: v[self.check_start :] for k, v in self.feeds.items()}

    @staticmethod
    def _first(sess: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(sess.run([sess.get_outputs()[0].name], feed)[0], np.float32)

    def _views(self, sess: Any, feeds: dict[str, np.ndarray]) -> list[object]:
        from . import _evaluate, _proxy

        return [_proxy.view(self.proxy, self._first(sess, f)) for f in _evaluate.samples(feeds)]

    def drop_of(self, qmodel: Any, lite: bytes | None = None) -> float:
        """The drop of the QDQ model, or of it and its TFLite (``lite``, run by LiteRT)
        whichever is larger: both formats are to hold the target."""
        from . import _evaluate
        from ._mixed import drop_points

        s8 = _evaluate.session(qmodel)
        runners: list[Any] = [s8]
        if lite is not None:
            # LiteRT cannot run it as named: the TFLite write says why
            with contextlib.suppress(KeyError, ValueError, RuntimeError):
                runners.append(_LiteSession(lite, self.fp32, self.feeds))
        if self.labels is not None:
            drops = []
            for runner in runners:
                p32, p8, _ = _evaluate.compare_outputs(self.fp32, runner, self.feeds)
                drops.append(drop_points(p32, p8, self.labels))
            return max(drops)
        return max(self._check_drop(runner) for runner in runners)

    def _check_drop(self, runner: Any) -> float:
        """The drop on the samples held out from the search."""
        return self.task_drop(self.check_refs, self._views(runner, self.check_feeds))

    def task_drop(self, refs: list[object], views: list[object]) -> float:
        """The metric's drop of ``views`` against ``refs``; top-1: also the expected drop
        of the noise they show at the near-flip density of every sample (the larger)."""
        from . import _proxy

        drop = _proxy.drop(self.proxy, refs, views)
        if self.density > 0.0:
            drop = max(drop, _proxy.noise_drop(self.density, refs, views))
        return drop

    def drop_runner(self, runner: Any) -> float:
        """The search's drop for a session-like ``runner`` (converter/_mixed_probe.py):
        with labels the accuracy drop, else the metric on the searched samples."""
        from ._mixed import drop_points

        if self.labels is not None:
            p32, p8, _ = _compare(self.fp32, runner, self.feeds)
            return drop_points(p32, p8, self.labels)
        head = {k: v[: self.search_n] for k, v in self.feeds.items()}
        return self.task_drop(self.search_refs, self._views(runner, head))


def _compare(s32: Any, runner: Any, feeds: dict[str, np.ndarray]) -> Any:
    from . import _evaluate

    return _evaluate.compare_outputs(s32, runner, feeds)


class _LiteSession:
    """A LiteRT interpreter behind the two onnxruntime session calls the measurement
    makes (``get_outputs()[0].name``, ``run([name], feed)``); tensors by ONNX name."""

    def __init__(self, data: bytes, like: Any, feeds: dict[str, np.ndarray]) -> None:
        from edgeship.sdk._quiet import runtime_chatter_filtered
        from edgeship.sdk.runtime._runtime_litert import interpreter_module

        with runtime_chatter_filtered():
            self.it = interpreter_module().Interpreter(model_content=data, num_threads=1)
            self.it.allocate_tensors()
        self.outputs = like.get_outputs()
        self.inputs = {d["name"]: d["index"] for d in self.it.get_input_details()}
        self.out_index = {d["name"]: d["index"] for d in self.it.get_output_details()}
        missing = ({self.outputs[0].name} - set(self.out_index)) | (set(feeds) - set(self.inputs))
        if missing:
            raise KeyError(f"no TFLite tensor named {sorted(missing)}")

    def get_outputs(self) -> Any:
        return self.outputs

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in feed.items():
            self.it.set_tensor(self.inputs[name], np.ascontiguousarray(value, np.float32))
        self.it.invoke()
        return [self.it.get_tensor(self.out_index[n]).copy() for n in names]


def _drop_measure(inp: Any, fp32_model: Any, requested: str) -> _DropMeasure:
    return _DropMeasure(inp, fp32_model, requested)
