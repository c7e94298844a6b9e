"""``convert()``: the whole conversion, from a float ONNX file to OUT/ (the shell around
the pure passes: it reads the inputs, times the phases and writes OUT atomically)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeship._errors import ConversionError, EdgeshipError, UnsupportedOpError

from . import _accuracy, _calibrate, _evaluate, _layernorm
from ._bmm_rounding import emulate_matmuls
from ._evaluate import sample_count
from ._ir import Graph
from ._layernorm_qdq import decompose_layernorms
from ._load import InputSpec, LoadedModel, input_specs, load_arrays, read_model
from ._mixed import TargetNotMet
from ._optimize import optimize
from ._options import ConvertOptions
from ._ort_layout import for_onnxruntime
from ._outdir import atomic_dir, write_file
from ._overlap import Background, Grams, same_weights
from ._plan import Plan, make_plan
from ._prune import overall_sparsity
from ._prune_refit import prune_and_refit
from ._quantize import WeightInfo, WeightPolicy, build_qdq
from ._report import Report, not_written_line, to_html
from ._runtime_hints import with_runtime_hints
from ._shapes import dynamic_dims, format_shape
from ._sizes import report_sizes, zstd_bytes
from ._steps import (
    GUARD_SAMPLES,
    Steps,
    fit_count,
    guarded_bias_correction,
    guarded_equalize,
)
from ._targets import TargetsNotCompiled, check_available, run_for_convert
from ._tflite_macs import read_ops

MODEL_FILE = "model.int8.onnx"
TFLITE_FILE = "model.int8.tflite"
PARAMS_FILE = "quant_params.json"
PROFILE_FILE = "profile.json"  # with --eval: the drift reference for `release --profile`
# per-layer SQNR (the report's table) runs the float and the int8 model with every tensor
# exposed, per sample: on 32 samples that was ~8 s of CPU of ddddocr_ocr's conversion
# (21 MB of activations a sample), more than its calibration; 8 samples of thousands of
# values per tensor rank the layers as well (the output SQNR keeps all sqnr_samples)
LAYER_SQNR_SAMPLES = 8


class FormatsNotWritten(ConversionError):
    """A requested format (e.g. TFLite) could not be written. Raised by :func:`convert`
    *after* ``out_dir`` was written with everything else (the INT8 ONNX model, the
    report saying why), so the caller keeps the ONNX. ``report`` is that report,
    ``out_dir`` the directory, ``not_written`` maps each missing format to its reason
    (``reason``, and ``op`` / ``node`` when one op blocked it)."""

    def __init__(self, report: Report, out_dir: Path, not_written: dict[str, dict[str, str]]):
        self.report, self.out_dir, self.not_written = report, out_dir, not_written
        lines = [not_written_line(fmt, why) for fmt, why in sorted(not_written.items())]
        super().__init__(
            f"{'; '.join(lines)} (the INT8 ONNX is in {out_dir}/; "
            "pass --format onnx to ask for ONNX only)"
        )


def tflite_available() -> bool:
    """True when the TFLite writer (converter/_tflite.py) is part of this build."""
    try:
        from . import _tflite
    except ImportError:
        return False
    return hasattr(_tflite, "write_tflite")


def default_formats() -> tuple[str, ...]:
    """The formats ``convert`` writes unless told: ONNX, and TFLite when its writer is built in."""
    return ("onnx", "tflite") if tflite_available() else ("onnx",)


class _Clock:
    def __init__(self, on_lap: Callable[[str], None] | None = None) -> None:
        self.t = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.on_lap = on_lap

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self.t, 4)
        self.t = now
        if self.on_lap is not None:
            self.on_lap(name)


@dataclass
class _Inputs:
    """Everything read from outside, checked, before any work starts."""

    path: Path
    model: onnx.ModelProto  # checked, opset >= 13, --input-shape applied, shapes inferred
    model_bytes: bytes  # the fp32 model as one protobuf (external data embedded)
    calib: dict[str, np.ndarray]
    ev: tuple[dict[str, np.ndarray], np.ndarray | None] | None
    base: Any  # _base.BaseParams | None
    notes: tuple[str, ...] = ()  # what loading changed (opset upgrade, fixed shapes ...)
    external_files: tuple[Path, ...] = ()  # the model's external data files, as read


@dataclass
class _Quantized:
    """The optimized float graph and what quantization made of it."""

    graph: Graph
    log: list[str]
    pruned: dict[str, float]
    plan: Plan
    qmodel: onnx.ModelProto  # float-io QDQ model (what is measured)
    weights: list[WeightInfo]
    tensor_map: dict[str, str]
    int8_bytes: bytes  # the model written (float or int8 io; after the onnxruntime pass)
    tflite_source: bytes  # that model before the onnxruntime pass (the TFLite writer reads it)
    calib_batch: int  # samples per calibration run (bounded by activation bytes)
    tensor_bytes: dict[str, int]  # one sample of each float activation, from calibration
    equalization: dict[str, np.ndarray]  # cross-layer equalization scales per pair
    rebuild: Any = None  # keep_float -> _Built: the same conversion with more float nodes
    steps: Steps | None = None  # which accuracy steps ran, and why (converter/_steps.py)
    refit: Any = None  # _prune_refit.Refit: what reconstruction after pruning did
    policy: Any = None  # the WeightPolicy (learned rounding: its seconds and errors)
    # learned rounding's float run for its Gram matrices: (its own wall time, the time the
    # conversion waited for it after calibration; it overlaps calibration, _overlap.py)
    gram_seconds: tuple[float, float] | None = None
    plan_of: Any = None  # keep_float -> Plan: what rebuild would quantize (--max-drop's probe)
    # (start, stop) -> the float graph's first output on those calibration samples, kept
    # from calibration (None when not kept): the report's output SQNR runs no float model
    recorded: Any = None

    def use(self, built: _Built) -> None:
        self.plan, self.qmodel, self.weights = built.plan, built.qmodel, built.weights
        self.tensor_map, self.int8_bytes = built.tensor_map, built.int8_bytes
        self.tflite_source = built.tflite_source


@dataclass
class _Built:
    """One plan and the QDQ model written from it."""

    plan: Plan
    qmodel: onnx.ModelProto
    weights: list[WeightInfo]
    tensor_map: dict[str, str]
    int8_bytes: bytes
    tflite_source: bytes  # the same model before the onnxruntime pass (the TFLite reads it)


def convert(
    model_path: str | Path,
    calib_path: str | Path,
    out_dir: str | Path,
    options: ConvertOptions | None = None,
    *,
    eval_path: str | Path | None = None,
    base_dir: str | Path | None = None,
    progress: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> Report:
    """Convert ``model_path`` into ``out_dir`` (model.int8.onnx, [model.int8.tflite],
    quant_params.json, report.json, report.html; with ``eval_path`` also profile.json: the
    eval inputs and the INT8 model's outputs on them, see :mod:`edgeship.sdk.monitor._profile`).
    Raises an EdgeshipError subclass for every bad input; on any failure ``out_dir`` is
    left as it was.

    A requested format that cannot be written (the TFLite writer refuses an op, say) is
    not such a failure: ``out_dir`` is written with the INT8 ONNX model and a report
    whose ``formats["not_written"]`` says, per format, why (the op and node that blocked
    it). Then, with ``options.strict_formats`` (the default), :class:`FormatsNotWritten`
    is raised carrying that report; without, the report is returned and the caller
    reads ``report.formats``. ``edgeship convert`` turns the exception into exit code 2.

    ``on_phase(name)`` is called as each phase ends (load, optimize, calibrate, quantize,
    write, measure, then eval and profile with ``eval_path``): a caller's progress line."""
    opts = options or ConvertOptions(formats=default_formats())
    check_available(opts.targets)  # a missing compiler: one error naming its extra, now
    clock = _Clock(on_phase)
    inp = _read_inputs(Path(model_path), Path(calib_path), eval_path, base_dir, opts)
    clock.lap("load")
    q = _quantize(inp, opts, clock, progress)
    mixed = _accuracy.meet_target(inp, q, opts) if opts.max_drop is not None else None
    if mixed is not None:
        clock.lap("mixed precision")
    with atomic_dir(Path(out_dir)) as tmp:
        write_file(tmp / MODEL_FILE, q.int8_bytes)
        write_file(tmp / PARAMS_FILE, _params_json(q.plan, q.weights, q.equalization).encode())
        tflite, not_written = _write_formats(tmp, opts, q.tflite_source)
        clock.lap("write")
        targets = run_for_convert(opts, tmp, MODEL_FILE, TFLITE_FILE, inp.ev[0] if inp.ev else inp.calib)
        clock.lap("targets")
        report, profile = _report(inp, q, opts, tflite, not_written, tmp, clock)
        report = replace(report, targets=targets or None)
        if mixed is not None:
            report.extra["mixed_precision"] = mixed.to_dict()
        if profile is not None:
            write_file(tmp / PROFILE_FILE, profile.to_json().encode())
        write_file(tmp / "report.json", report.to_json().encode())
        write_file(tmp / "report.html", to_html(report).encode())
    if mixed is not None and not mixed.met:
        raise TargetNotMet(report, Path(out_dir), mixed.target, mixed.drop, mixed.metric)
    if not_written and opts.strict_formats:
        raise FormatsNotWritten(report, Path(out_dir), not_written)
    failed = {n: r["error"] for n, r in (targets or {}).items() if not r["compiled"]}
    if failed and opts.strict_formats:
        raise TargetsNotCompiled(report, Path(out_dir), failed)
    return report


def _read_inputs(
    model_path: Path,
    calib_path: Path,
    eval_path: str | Path | None,
    base_dir: str | Path | None,
    opts: ConvertOptions,
) -> _Inputs:
    loaded = _read_model(model_path, opts)
    model = loaded.model
    specs = input_specs(model)
    limits = {"max_bytes": opts.max_data_bytes}
    calib, _ = load_arrays(
        calib_path, specs, what="calibration", max_samples=opts.max_calib_samples, **limits
    )
    ev = None
    if eval_path is not None:
        ev = load_arrays(
            Path(eval_path), specs, what="eval", max_samples=opts.max_eval_samples, **limits
        )
    if "tflite" in opts.formats and not tflite_available():
        raise ConversionError("--format tflite: the TFLite writer is not part of this build")
    if "tflite" in opts.formats and opts.strict_formats:
        _require_static(model, specs, calib)  # fail now, not after calibration
    base = _load_base(Path(base_dir), opts) if base_dir is not None else None
    return _Inputs(
        model_path, model, loaded.model_bytes, calib, ev, base,
        notes=tuple(loaded.notes), external_files=tuple(loaded.external_files),
    )


def _read_model(path: Path, opts: ConvertOptions) -> LoadedModel:
    return read_model(
        path, max_bytes=opts.max_model_bytes, input_shapes=opts.input_shapes,
        static_batch="tflite" in opts.formats,  # TFLite runs batch 1
    )


def _require_static(
    model: onnx.ModelProto, specs: list[InputSpec], calib: dict[str, np.ndarray]
) -> None:
    """TFLite needs static shapes: name the first dynamic input dimension and the option
    that fixes it (with the calibration data's shape as the suggestion)."""
    dynamic = dynamic_dims(model)
    if not dynamic:
        return
    name, pos, dim = dynamic[0]
    arr = calib.get(name)
    spec = next(s for s in specs if s.name == name)
    shape = (1, *arr.shape[1:]) if arr is not None else tuple(
        d if isinstance(d, int) else "?" for d in (1, *spec.shape[1:])
    )
    raise ConversionError(
        f"input {name!r} has dynamic dimension {pos} ({dim!r}); TFLite needs static shapes: "
        f"fix it with --input-shape {name}={format_shape(shape)} "
        "(or pass --format onnx to keep it dynamic in an ONNX-only conversion)"
    )


def _quantize(inp: _Inputs, opts: ConvertOptions, clock: _Clock, progress: bool) -> _Quantized:
    graph = Graph.from_model(inp.model)
    log = [*inp.notes, *optimize(graph)]
    pruned_by = prune_and_refit(
        graph, inp.calib, opts.prune, reconstruct=opts.reconstruct, measure_on=inp.ev
    )
    pruned = pruned_by.sparsity
    if pruned_by.refit is not None:
        log.append(pruned_by.refit.summary())
    clock.lap("optimize")
    histograms = opts.calibration != "minmax"  # minmax needs no histogram
    wants_bc = opts.bias_correction is not False and (inp.base is None or opts.bias_correction)
    mean_of = _accuracy.corrected_layers(graph) if wants_bc else frozenset()
    method = "minmax" if opts.calibration == "auto" else opts.calibration

    def calibrate(
        feeds: dict[str, np.ndarray], channels_of: frozenset[str] = frozenset()
    ) -> tuple[Any, dict[str, tuple[float, float]]]:
        calib = _calibrate.collect(
            graph, feeds, histograms=histograms, progress=progress, mean_of=mean_of,
            mean_split=fit_count(sample_count(feeds)), channels_of=channels_of,
            observer=grams.observer() if grams is not None and feeds is inp.calib else None,
            record=_recorded_samples(sample_count(feeds), opts, inp.ev is None),
        )
        return calib, _calibrate.ranges(calib.stats, method, opts.percentile)

    wants_lr = opts.learned_rounding is not False and inp.base is None
    grams = Grams(graph, inp.calib) if wants_lr else None  # fed by the first calibration
    steps = Steps()
    equalized: dict[str, np.ndarray] = {}
    if opts.equalize is not False and (inp.base is not None or opts.equalize):
        # --base: the previous release's pairs, as they were; --equalize: every pair
        eq = _accuracy.equalize(graph, inp.calib, inp.base.equalization if inp.base else None)
        log += eq.log
        equalized = eq.scales
        steps.equalize = ("as --base" if inp.base else "all pairs") if equalized else "off"
        calib, ranges = calibrate(inp.calib)
    elif opts.equalize is None:
        chosen = guarded_equalize(graph, inp.calib, calibrate, steps)
        log += chosen.log
        equalized, calib, ranges = chosen.scales, chosen.collected, chosen.ranges
    else:
        calib, ranges = calibrate(inp.calib)
    if opts.calibration == "auto":
        ranges, chosen_ranges = _accuracy.choose_ranges(
            graph, calib.stats, ranges, inp.calib, opts.percentile
        )
        log.append(chosen_ranges)
    steps.bias_correction = bool(opts.bias_correction) or bool(
        opts.bias_correction is None
        and wants_bc
        and guarded_bias_correction(
            graph, inp.calib, ranges, mean_of, steps, calib.head_means, calib.recorded
        )
    )
    clock.lap("calibrate")
    policy = inp.base.policy() if inp.base else WeightPolicy()
    gram_seconds = None
    if grams is not None:
        policy, gram_seconds = _learned_policy(graph, inp.calib, grams)
    elif opts.learned_rounding is not False:
        log.append("learned rounding skipped: --base keeps the previous int8 values")
    means = calib.means if steps.bias_correction else None
    ort_log: list[str] = []  # what the onnxruntime pass changed (the last build's)

    def build(keep_float: dict[str, str]) -> _Built:
        plan = make_plan(graph, ranges, pin=inp.base, keep_float=keep_float)
        # LayerNorm internals, for the TFLite writer only; may move a LayerNorm's output
        # scale in the plan (converter/_layernorm_ties.py), so before the QDQ build
        ln_params = _layernorm.layernorm_params(graph, plan, inp.calib) if "tflite" in opts.formats else {}
        qmodel, weights, tensor_map = build_qdq(
            graph, plan, policy=policy, io="float", input_means=means
        )
        out_model = (
            qmodel
            if opts.io == "float"
            else build_qdq(graph, plan, policy=policy, io=opts.io, input_means=means)[0]
        )
        out_model = _layernorm.attach(out_model, ln_params)
        # the file gets onnxruntime's fast int8 kernels (same integers, converter/_ort_layout)
        written, ort_log[:] = for_onnxruntime(out_model)
        written = decompose_layernorms(written)[0]  # the TFLite file's int8 LayerNorm steps
        if "tflite" in opts.formats:  # and its BATCH_MATMUL roundings
            written = emulate_matmuls(written)[0]
        written = with_runtime_hints(written)  # so a device needs no onnx parse to serve it
        return _Built(plan, qmodel, weights, tensor_map, written.SerializeToString(),
                      out_model.SerializeToString())

    def plan_of(keep_float: dict[str, str]) -> Plan:
        return make_plan(graph, ranges, pin=inp.base, keep_float=keep_float)

    built = build({})
    log += ort_log
    if hasattr(policy, "summary"):
        log.append(policy.summary())
    clock.lap("quantize")
    return _Quantized(
        graph,
        log,
        pruned,
        built.plan,
        built.qmodel,
        built.weights,
        built.tensor_map,
        built.int8_bytes,
        built.tflite_source,
        calib.batch,
        calib.tensor_bytes,
        equalized,
        build,
        steps,
        pruned_by.refit,
        policy,
        gram_seconds,
        plan_of,
        calib.recorded,
    )


def _learned_policy(
    graph: Graph, feeds: dict[str, np.ndarray], grams: Grams
) -> tuple[Any, tuple[float, float]]:
    """The learned-rounding policy from the Grams collected beside calibration when the
    weights are still the ones they read, else from a fresh run on the graph as it is now."""
    from ._learned import LearnedRounding, collect_grams

    began = time.perf_counter()
    inline = 0.0  # seconds the Grams took inside calibration's loop
    if same_weights(graph, grams.copy):
        layers, own, inline = grams.result()
    else:  # equalization changed the weights: the snapshot's Grams are not these layers'
        grams.wait()
        rerun = time.perf_counter()
        layers = collect_grams(graph, feeds)
        own = time.perf_counter() - rerun
    return LearnedRounding(layers=layers), (own, time.perf_counter() - began + inline)


def _write_formats(
    tmp: Path, opts: ConvertOptions, source: bytes
) -> tuple[dict[str, Any] | None, dict[str, dict[str, str]]]:
    """Write the TFLite file, from the QDQ model ``source``, if asked. Returns its info
    (``{"skipped": message}`` when the writer rejected the model) and, per format not
    written, why."""
    if "tflite" not in opts.formats:
        return None, {}
    try:
        return _write_tflite(tmp, opts, source), {}
    except ConversionError as exc:  # e.g. a float op that TFLite int8 cannot hold
        (tmp / TFLITE_FILE).unlink(missing_ok=True)
        return {"skipped": str(exc)}, {"tflite": _why(exc)}


def _why(exc: ConversionError) -> dict[str, str]:
    if isinstance(exc, UnsupportedOpError):
        reason = getattr(exc, "reason", "") or str(exc).split(": ", 1)[-1]
        return {"op": exc.op_type, "node": exc.node_name, "reason": reason}
    return {"reason": str(exc)}


def _formats(
    opts: ConvertOptions, tflite: dict[str, Any] | None, not_written: dict[str, dict[str, str]]
) -> dict[str, Any]:
    written = ["onnx"] + (["tflite"] if tflite is not None and "skipped" not in tflite else [])
    return {"requested": list(opts.formats), "written": written, "not_written": not_written}


def _report(
    inp: _Inputs,
    q: _Quantized,
    opts: ConvertOptions,
    tflite: dict[str, Any] | None,
    not_written: dict[str, dict[str, str]],
    tmp: Path,
    clock: _Clock,
) -> tuple[Report, Any]:
    written = tflite if tflite and "skipped" not in tflite else None
    calib, ev, graph, plan = inp.calib, inp.ev, q.graph, q.plan
    sqnr_feeds = _head(ev[0] if ev else calib, opts.sqnr_samples)
    fp32_ref = graph.to_model()
    layer_n = _evaluate.layer_samples(
        min(opts.sqnr_samples, LAYER_SQNR_SAMPLES), sum(q.tensor_bytes.values())
    )
    recorded = None if ev is not None or q.recorded is None else q.recorded(
        0, sample_count(sqnr_feeds)
    )
    # both models as bytes before the worker reads the protos (no proto is read by two
    # threads at once); per-layer SQNR on the worker, output SQNR, sizes and the Edge TPU
    # check here: each session single-threaded, so every number is the sequential one
    fp32_bytes, int8_bytes = fp32_ref.SerializeToString(), q.qmodel.SerializeToString()
    layers_job = Background(
        partial(_evaluate.layer_sqnr, tensor_bytes=q.tensor_bytes),
        fp32_ref, q.qmodel, q.tensor_map, _head(sqnr_feeds, layer_n),
    )
    # zstd releases the GIL: the sizes compress beside the runs (ddddocr_ocr: 1.5 s)
    sizes_job = Background(_sizes, inp, q.int8_bytes, written, plan, q.pruned, opts)
    try:
        out_db = _output_sqnr(fp32_bytes, int8_bytes, sqnr_feeds, recorded)
        edgetpu = _edgetpu_tflite(tmp) if written else _edgetpu_verdict(graph, plan)
    finally:
        sizes_job.wait()
        layer_db = layers_job.result()
    sizes = sizes_job.result()
    clock.lap("measure")
    conversion_seconds = round(sum(clock.phases.values()), 4)
    eval_result = _eval(inp, q, fp32_ref, opts) if ev is not None else None
    profile = None
    if ev is not None:
        clock.lap("eval")
        profile = _profile(ev[0], q.qmodel)
        clock.lap("profile")
    return Report(
        model=inp.path.name,
        model_sha256=hashlib.sha256(inp.model_bytes).hexdigest(),
        int8_sha256=hashlib.sha256(q.int8_bytes).hexdigest(),
        options=opts.to_dict(),
        sizes=sizes,
        calibration={
            "method": opts.calibration,
            "samples": sample_count(calib),
            "batch": q.calib_batch,
        },
        pruning=_pruning(graph, q, opts),
        eval=eval_result,
        output_sqnr_db=out_db,
        layers=_layers(graph, plan, layer_db),
        weights=[_weight_row(w) for w in q.weights],
        float_ops=[
            {"node": n, "op": _op_of(graph, n), "reason": r} for n, r in plan.float_nodes.items()
        ],
        fused=[{"activation": a, "into": p} for a, p in plan.fused.items()],
        optimizations=q.log,
        edgetpu=edgetpu,
        base=inp.base.summary(q.weights, plan) if inp.base else None,
        tflite=tflite,
        timings=dict(clock.phases),
        conversion_seconds=conversion_seconds,
        profile=None if profile is None else _profile_summary(profile),
        formats=_formats(opts, tflite, not_written),
        extra={
            "layer_sqnr_samples": min(layer_n, sample_count(sqnr_feeds)),
            **({"steps": q.steps.to_dict()} if q.steps is not None else {}),
            **_learned_rounding(q),
        },
    ), profile


def _learned_rounding(q: _Quantized) -> dict[str, Any]:
    """How long learned rounding took (the issue reports it apart from the 3x-ORT budget):
    the float run that collects its Gram matrices and the rounding itself (in quantize)."""
    if q.gram_seconds is None:
        return {}
    own, waited = q.gram_seconds
    rounding = float(getattr(q.policy, "seconds", 0.0))
    return {"learned_rounding": {
        # what it added to the conversion's wall time: its Gram work inside calibration's
        # loop or the wait for its own Gram run once everything else was calibrated, and
        # the rounding
        "seconds": round(waited + rounding, 3),
        "gram_seconds": round(own, 3),  # the Gram run's own wall time (overlapped)
        "gram_wait_seconds": round(waited, 3),
        "rounding_seconds": round(rounding, 3),
        "weights": len(getattr(q.policy, "errors", {})),
    }}


def _pruning(graph: Graph, q: _Quantized, opts: ConvertOptions) -> dict[str, Any]:
    mode = "global magnitude (depthwise exempt)"
    result: dict[str, Any] = {
        "mode": mode + (
            ", remaining weights refit to the fp32 layer outputs"
            if q.refit is not None and not q.refit.reverted
            else ""
        ),
        "target": opts.prune,
        "achieved": overall_sparsity(graph, list(q.pruned)) if q.pruned else 0.0,
    }
    if q.refit is not None:
        result["reconstruction"] = q.refit.to_dict()
    return result


def _eval(
    inp: _Inputs, q: _Quantized, fp32_ref: onnx.ModelProto, opts: ConvertOptions
) -> dict[str, Any]:
    assert inp.ev is not None
    result = _evaluate.evaluate(
        # the latency of the model as written (the onnxruntime pass changes no output)
        inp.model_bytes, for_onnxruntime(q.qmodel)[0].SerializeToString(), inp.ev[0], inp.ev[1],
        runs=opts.latency_runs
    ).to_dict()
    if q.pruned:
        result["pruned_fp32_accuracy"] = _pruned_accuracy(fp32_ref, inp.ev)
    return result


def _profile(feeds: dict[str, np.ndarray], qmodel: onnx.ModelProto) -> Any:
    """Drift reference: the eval inputs and the INT8 model's (float) outputs on them."""
    from edgeship.sdk.monitor._profile import batch_first, build_profile

    names = [o.name for o in qmodel.graph.output]
    outputs = _evaluate.run_all(_evaluate.session(qmodel), feeds, names)
    try:
        return build_profile(feeds, batch_first(dict(zip(names, outputs, strict=True)),
                                                _evaluate.sample_count(feeds)))
    except EdgeshipError as exc:
        raise ConversionError(f"--eval: cannot build the drift profile: {exc}") from exc


def _profile_summary(profile: Any) -> dict[str, Any]:
    return {
        "file": PROFILE_FILE,
        "samples": profile.samples,
        "bins": profile.bins,
        "features": [f.name for f in profile.features],
        "sha256": hashlib.sha256(profile.to_json().encode()).hexdigest(),
    }


def _load_base(path: Path, opts: ConvertOptions) -> Any:
    from ._base import BaseParams

    return BaseParams.load(path, opts)


def _head(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in feeds.items()}


def _output_sqnr(
    fp32: bytes, int8: bytes, feeds: dict[str, np.ndarray], recorded: list[np.ndarray] | None
) -> float:
    """The first output's SQNR in plain sessions (with the int8 model's tensors exposed,
    as in :func:`_evaluate.layer_sqnr`, onnxruntime would not fuse its QDQ kernels);
    against ``recorded`` (calibration's float outputs on these samples) when kept."""
    s32 = _evaluate.session(fp32) if recorded is None else None
    return _evaluate.compare_outputs(s32, _evaluate.session(int8), feeds, recorded)[2]


def _recorded_samples(count: int, opts: ConvertOptions, no_eval: bool) -> frozenset[int]:
    """The calibration samples whose float output later checks compare against: the
    equalization guard's and the bias-correction guard's judges (converter/_steps.py) and,
    without --eval, the report's output SQNR samples."""
    fit = fit_count(count)
    judges = {*range(min(count, GUARD_SAMPLES))}
    judges |= {*range(fit, min(count, fit + GUARD_SAMPLES))} if fit < count else set()
    return frozenset(judges | ({*range(min(count, opts.sqnr_samples))} if no_eval else set()))


def _pruned_accuracy(
    fp32: onnx.ModelProto, ev: tuple[dict[str, np.ndarray], np.ndarray | None]
) -> float | None:
    if ev[1] is None:
        return None
    sess = _evaluate.session(fp32)
    name = sess.get_outputs()[0].name
    pred = [
        _evaluate.predictions(np.asarray(sess.run([name], feed)[0]).reshape(1, -1))
        for feed in _evaluate.samples(ev[0])
    ]
    return float(100.0 * np.mean(np.concatenate(pred) == ev[1]))


def _write_tflite(tmp: Path, opts: ConvertOptions, source: bytes) -> dict[str, Any]:
    """The TFLite file from the QDQ model before the onnxruntime pass: its depthwise
    channels unpadded (no extra MACs on the Edge TPU), its gates the 1x1 Convs it maps."""
    from ._tflite import write_tflite

    try:
        info = write_tflite(onnx.ModelProto.FromString(source), tmp / TFLITE_FILE, io=opts.io)
    except EdgeshipError:
        raise
    except Exception as exc:
        raise ConversionError(f"TFLite writer failed: {str(exc).strip()[:300]}") from exc
    d: dict[str, Any] = info.to_dict()
    d["path"] = TFLITE_FILE
    return d


def _sizes(
    inp: _Inputs,
    int8: bytes,
    tflite: dict[str, Any] | None,
    plan: Plan,
    pruned: dict[str, float],
    opts: ConvertOptions,
) -> dict[str, Any]:
    tflite_bytes = None if tflite is None else tflite["size_bytes"]
    sizes = report_sizes(inp.path, list(inp.external_files), inp.model_bytes, int8,
                         tflite_bytes)
    if pruned:  # what the same conversion weighs without pruning, same activation params
        # read again: the passes edited inp.model's nodes in place
        dense = Graph.from_model(_read_model(inp.path, opts).model)
        optimize(dense)
        dense_bytes = build_qdq(dense, plan, io=opts.io)[0].SerializeToString()
        sizes["unpruned_int8_onnx_zstd_bytes"] = zstd_bytes(dense_bytes)
        sizes["pruned_zstd_saving"] = round(
            1.0 - sizes["int8_onnx_zstd_bytes"] / sizes["unpruned_int8_onnx_zstd_bytes"], 4
        )
    return sizes


def _layers(graph: Graph, plan: Plan, sqnr: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    fused_by_out = {}
    by_name = {n.name: n for n in graph.nodes}
    for act in plan.fused:
        fused_by_out[by_name[act].output[0]] = by_name[act].op_type
    for t in plan.quantized:
        prod = graph.producer.get(t)
        if prod is not None and prod.name in plan.fused:
            prod = by_name[plan.fused[prod.name]]
        p, (lo, hi) = plan.params[t], plan.ranges[t]
        rows.append(
            {
                "tensor": t,
                "op": prod.op_type if prod is not None else "input",
                "node": prod.name if prod is not None else "",
                "fused": fused_by_out.get(t, ""),
                "scale": p.scale,
                "zero_point": p.zero_point,
                "lo": lo,
                "hi": hi,
                "shares_with": plan.group_of.get(t, t),
                "sqnr_db": sqnr.get(t),
            }
        )
    return rows


def _weight_row(w: WeightInfo) -> dict[str, Any]:
    return {
        "name": w.name,
        "node": w.node,
        "shape": w.shape,
        "per_channel": w.per_channel,
        "sparsity": w.sparsity,
        "scale_min": min(w.scales),
        "scale_max": max(w.scales),
        "kept_scales": w.kept_scales,
        "kept_values": w.kept_values,
    }


def _op_of(graph: Graph, node_name: str) -> str:
    return next((n.op_type for n in graph.nodes if n.name == node_name), "?")


# Edge TPU (int8 TFLite) ops that map from the ONNX ops edgeship quantizes.
_EDGETPU_OK = {
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Relu",
    "Clip",
    "Sigmoid",
    "Softmax",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Concat",
    # data movement (issue 14): SPLIT / STRIDED_SLICE, TRANSPOSE, RESHAPE, RESIZE_*,
    # TRANSPOSE_CONV, PAD, MEAN are on Coral's list (Gather only when it becomes a
    # STRIDED_SLICE, so not listed; Pad reflect/edge becomes MIRROR_PAD, which is not)
    "Split",
    "Slice",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "ConvTranspose",
    "Pad",
    "ReduceMean",
    # issue 14: ops lowered to documented Edge TPU ops (SUB, TANH, PRELU; HardSigmoid as
    # MUL + ADD). HardSwish -> HARD_SWISH, LeakyRelu, Gelu and BATCH_MATMUL are not in
    # Coral's supported-operations table, so they stay off this list.
    "Sub",
    "Tanh",
    "PRelu",
    "HardSigmoid",
    "LayerNormalization",  # MEAN, SUB, SQUARED_DIFFERENCE, ADD, RSQRT, MUL: all documented
}


def _edgetpu_tflite(tmp: Path) -> dict[str, Any]:
    """Coral's model requirements checked on the written TFLite file (converter/_edgetpu.py):
    verdict, ops that would run on the CPU and where the compiler would cut the graph."""
    from ._edgetpu import check_edgetpu

    result = check_edgetpu(tmp / TFLITE_FILE).to_dict()
    result["compatible"] = result["fully_mappable"]
    ops = read_ops((tmp / TFLITE_FILE).read_bytes())  # for the compatibility table
    for row in result["cpu_ops"]:  # named by its output tensor, as the NPU compilers' rows
        row["node"] = ops[row["index"]].outputs[0] if ops[row["index"]].outputs else ""
    result["macs_total"] = sum(op.macs for op in ops)
    result["macs_on_tpu"] = result["macs_total"] - sum(ops[r["index"]].macs for r in result["cpu_ops"])
    return result


def _edgetpu_verdict(graph: Graph, plan: Plan) -> dict[str, Any]:
    """Every float node (and any op the Edge TPU lacks) would run on the CPU."""
    cpu = [
        {"node": n.name, "op": n.op_type, "reason": plan.float_nodes.get(n.name, "no Edge TPU op")}
        for n in graph.nodes
        if n.name in plan.float_nodes or n.op_type not in _EDGETPU_OK
    ]
    verdict = (
        "all ops map to Edge TPU int8 ops"
        if not cpu
        else f"{len(cpu)} op(s) would fall back to CPU"
    )
    return {
        "verdict": verdict,
        "compatible": not cpu,
        "cpu_ops": cpu,
        "note": "from the int8 plan; the Edge TPU compiler itself was not run",
    }


def _params_json(plan: Plan, weights: list[WeightInfo], equalization: dict[str, np.ndarray]) -> str:
    """Quantization parameters for a later ``--base`` conversion (int8 values are read
    back from model.int8.onnx; equalization scales are reused so the weights line up)."""
    data: dict[str, Any] = {
        "version": 1,
        "activations": {t: plan.params[t].to_list() for t in plan.quantized},
        "ranges": {t: list(plan.ranges[t]) for t in plan.quantized},
        "groups": {t: plan.group_of[t] for t in plan.quantized},
        "weights": {w.name: {"per_channel": w.per_channel, "scales": w.scales} for w in weights},
    }
    if equalization:
        data["equalization"] = {k: [float(x) for x in v] for k, v in equalization.items()}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"
