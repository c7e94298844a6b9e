"""Ablation table (issue 15): each accuracy step of ``edgeship convert`` on and off, on real
models of bench_realworld.py and the rescaled-units MLP fixture, so every default is
justified by a measurement.

    python hw-bench/bench_ablation.py                          # 4 models x every config
    python hw-bench/bench_ablation.py --models ppocr_cls,mlp_rescaled --configs default,no-lr
    python hw-bench/bench_ablation.py --eval 256               # more eval samples (slower)

Configurations (converter Python API, ``ConvertOptions``): ``default`` (learned rounding;
equalization and bias correction where their guards measure a gain, converter/_steps.py;
minmax ranges), then the default with one step changed: ``no-cle`` / ``cle`` (equalization
never / on every pair), ``no-bc`` / ``bc`` (bias correction never / always), ``no-lr``
(round to nearest), ``ranges`` (per-tensor choice among MinMax, percentile and MSE,
``--calibration auto``), ``none`` (every step off), and on the classifiers ``prune50-mag`` /
``prune50-rec`` (``--prune 0.5`` magnitude only / with reconstruction).

Per model and configuration: the task metric of the INT8 ONNX (onnxruntime) and of the
TFLite (LiteRT) against the fp32 model on the eval set (top-1 agreement, CTC string match;
the MLP fixture: accuracy on its labels, fp32's in ``fp32``), the ONNX output SQNR, the
conversion time (report.json, --eval excluded) and the part of it learned rounding took,
and which steps ran. Real models get bench_realworld's inputs (64 calibration / 32 eval
samples, disjoint). Writes results/ablation.json after each row (``--append`` keeps the
rows of earlier runs that this one does not measure again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _realworld_models as models
import _realworld_run as run
from _common import ROOT, print_machine, print_table, quick, results_dir, write_result
from _realworld_inputs import CALIB, EVAL

FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(FIX))
from rescaled_mlp import rescaled_mlp  # noqa: E402

DEFAULT_MODELS = ("mlp_rescaled", "ppocr_cls", "efficientnet_lite0", "ddddocr_ocr")
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-cle": {"equalize": False},
    "cle": {"equalize": True},
    "no-bc": {"bias_correction": False},
    "bc": {"bias_correction": True},
    "no-lr": {"learned_rounding": False},
    "ranges": {"calibration": "auto"},
    "none": {"equalize": False, "bias_correction": False, "learned_rounding": False},
    "prune50-mag": {"prune": 0.5, "reconstruct": False},
    "prune50-rec": {"prune": 0.5, "reconstruct": True},
}
PRUNE_TASKS = ("classify",)  # pruning rows only where a top-1 metric reads them
COLUMNS = ("model", "config", "onnx", "tflite", "fp32", "sqnr_db", "convert_s", "lr_s", "ran",
           "error")


@dataclasses.dataclass
class Case:
    """One model: its float file, calibration file, eval inputs and how to score outputs."""

    name: str
    model: Path
    calib: Path
    eval_x: np.ndarray
    input_name: str
    task: str
    score: Any  # list of per-sample outputs -> metric (%)
    fp32: float | None  # the fp32 model's own score (labels) or None (metric vs fp32)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()


def fixture_case(work: Path) -> Case:
    """The rescaled-units MLP: accuracy on the fixture's labels (issue: within 0.5 of fp32)."""
    model = rescaled_mlp(FIX / "mlp.onnx", work / "mlp_rescaled.onnx")
    ev = np.load(FIX / "mlp_eval.npz")
    x, y = ev["input"].astype(np.float32), ev["label"]

    def accuracy(outputs: list[list[np.ndarray]]) -> float:
        first = [np.asarray(o[0]).reshape(-1) for o in outputs]
        pred = [int(p[0] > 0.5) if p.size == 1 else int(p.argmax()) for p in first]
        return float(100.0 * np.mean(np.asarray(pred) == y))

    fp32 = accuracy(run.run_onnx(model, "input", x))
    return Case("mlp_rescaled", model, FIX / "mlp_calib.npz", x, "input", "classify", accuracy, fp32)


def real_case(name: str, work: Path, calib_n: int, eval_n: int, cache: Path) -> Case:
    """A bench_realworld model with its inputs; the metric is against fp32's own outputs."""
    import bench_realworld as rw

    spec = next(s for s in models.SPECS if s.name == name)
    model = models.float_model(spec, cache)
    spec = dataclasses.replace(spec, input_name=models.input_name(model))
    calib = work / f"{name}_calib.npz"
    np.savez(calib, **{spec.input_name: spec.make(CALIB, calib_n).astype(np.float32)})
    eval_x = spec.make(EVAL, eval_n).astype(np.float32)
    reference = rw.task_view(spec, run.run_onnx(model, spec.input_name, eval_x))
    shapes = ((spec.input_name, tuple(spec.shape)),) if models.dynamic_input(model) else ()

    def score(outputs: list[list[np.ndarray]]) -> float | None:
        return rw.task_metric(spec, reference, rw.task_view(spec, outputs))

    return Case(name, model, calib, eval_x, spec.input_name, spec.task, score, None, shapes)


def convert_one(case: Case, config: str, work: Path) -> dict[str, Any]:
    from edgeship.converter import ConvertOptions, convert
    from edgeship.converter._report import steps_ran

    out = work / f"{case.name}-{config}"
    opts = ConvertOptions(formats=("onnx", "tflite"), strict_formats=False, latency_runs=1,
                          input_shapes=case.input_shapes, **CONFIGS[config])
    row: dict[str, Any] = {"model": case.name, "config": config, "fp32": _round(case.fp32)}
    began = time.perf_counter()
    try:
        report = convert(case.model, case.calib, out, opts)
    except Exception as exc:  # one configuration's failure is its row
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    row["wall_s"] = round(time.perf_counter() - began, 1)
    row["convert_s"] = round(report.conversion_seconds, 2)
    lr = report.extra.get("learned_rounding") or {}
    row["lr_s"] = round(lr["seconds"], 2) if lr else None
    row["ran"] = ", ".join(steps_ran(report))
    outputs = run.run_onnx(out / "model.int8.onnx", case.input_name, case.eval_x)
    row["onnx"] = _round(case.score(outputs))
    ref = run.run_onnx(case.model, case.input_name, case.eval_x)
    row["sqnr_db"] = _round(_sqnr([o[0] for o in ref], [o[0] for o in outputs]))
    tflite = out / "model.int8.tflite"
    if tflite.exists():
        lite = run.run_tflite(tflite, case.eval_x, [o.shape for o in outputs[0]])
        row["tflite"] = _round(case.score(lite))
    else:
        row["error"] = "no TFLite: " + str((report.formats or {}).get("not_written"))[:200]
    return row


def _sqnr(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - t.astype(np.float64))))
                for r, t in zip(ref, test, strict=True))
    return 120.0 if noise == 0 else 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="mlp_rescaled and/or bench_realworld model names")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--calib", type=int, default=64, help="calibration samples (real models)")
    parser.add_argument("--eval", type=int, default=32, help="eval samples (real models)")
    parser.add_argument("--quick", action="store_true", help="16 calibration / 8 eval samples")
    parser.add_argument("--append", action="store_true",
                        help="keep results/ablation.json's other rows (a model and configuration "
                        "measured again replaces its row)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-bench")
    opts = parser.parse_args(argv)
    opts.models = [m for m in opts.models.split(",") if m]
    opts.configs = [c for c in opts.configs.split(",") if c]
    known = {"mlp_rescaled", *(s.name for s in models.SPECS)}
    if set(opts.models) - known:
        parser.error(f"unknown model(s): {','.join(sorted(set(opts.models) - known))}")
    if set(opts.configs) - set(CONFIGS):
        parser.error(f"--configs takes {','.join(CONFIGS)}")
    if opts.quick or quick():
        opts.calib, opts.eval = 16, 8
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.ERROR)
    opts = parse_args(argv)
    print_machine()
    began = time.monotonic()
    command = "python hw-bench/bench_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    kept, runs = previous(opts.append)
    runs.append({"command": command.strip(), "samples": {"calib": opts.calib, "eval": opts.eval}})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-ablation-") as tmp:
        work = Path(tmp)
        for name in opts.models:
            case = (fixture_case(work) if name == "mlp_rescaled"
                    else real_case(name, work, opts.calib, opts.eval, opts.cache))
            for config in opts.configs:
                if config.startswith("prune") and case.task not in PRUNE_TASKS:
                    continue
                row = convert_one(case, config, work)
                print({k: row.get(k) for k in COLUMNS if row.get(k) is not None}, flush=True)
                rows.append(row)
                save(kept, rows, runs, time.monotonic() - began)  # each row as it comes
    rows = merged(kept, rows)
    print_table([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS),
                title="accuracy steps on/off (issue 15): task metric vs fp32 (MLP: accuracy on "
                "labels), ONNX and TFLite; conversion and learned-rounding seconds")
    print(f"took {round((time.monotonic() - began) / 60.0, 1)} min", flush=True)
    return 0


def previous(append: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """With --append: the rows and runs results/ablation.json already holds."""
    path = results_dir() / "ablation.json"
    if not append or not path.exists():
        return [], []
    data = json.loads(path.read_text())
    return list(data.get("rows", [])), list(data.get("runs", []))


def merged(kept: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``kept`` without the (model, config) pairs measured again, then ``rows``; in model
    order, configurations in CONFIGS order."""
    new = {(r["model"], r["config"]) for r in rows}
    out = [r for r in kept if (r["model"], r["config"]) not in new] + rows
    order = list(dict.fromkeys(r["model"] for r in out))
    return sorted(out, key=lambda r: (order.index(r["model"]), list(CONFIGS).index(r["config"])))


def save(kept: list[dict[str, Any]], rows: list[dict[str, Any]], runs: list[dict[str, Any]],
         seconds: float) -> None:
    write_result("ablation", {"rows": merged(kept, rows), "runs": runs,
                              "minutes": round(seconds / 60.0, 1), "configs": CONFIGS})


if __name__ == "__main__":
    raise SystemExit(main())
