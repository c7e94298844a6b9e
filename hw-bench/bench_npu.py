"""NPU targets: what each NPU's own compiler makes of edgeship's INT8 models (issue 22).

    python hw-bench/bench_npu.py                        # fixtures + every real model
    python hw-bench/bench_npu.py --models cnn,mobilenet,resnet18 --quick

For the repository's fixtures (tests/fixtures) and the real models of bench_realworld.py
(fetched and cached the same way, ``~/.cache/edgeship-bench``), one ``edgeship convert
--target ...`` per model (a subprocess, as a user runs it), then from its report.json per
target: ops and MACs on the accelerator, what fell back to the CPU and why; for Ethos-U
(Arm's Vela) the estimated cycles and inferences/s at the configuration's clock and the
SRAM / flash use; for OpenVINO on this CPU, whether the INT8 path is taken and its
latency vs onnxruntime on the same INT8 ONNX (1 thread, median; both loaded and called
as the agent's runtimes do, in alternating warm blocks of calls: converter/_target_openvino.py
_latencies_ms; ov_form says which ONNX OpenVINO ran, the generic one or the form written
for it, converter/_openvino_prep.py). The Edge TPU row is
Coral's rules (its compiler is not run). openvino-npu is left out unless asked for: it
needs an Intel NPU (this bench says whether OpenVINO sees one). Rockchip (rk3588 by
default; ``--targets`` adds rk3566, rv1106 ...) runs when ``EDGESHIP_RKNN_PYTHON`` names
rknn-toolkit2's own environment (it pins torch 2.4 / numpy 1.26, see
converter/_target_rknn.py): ops and MACs on its NPU from the toolkit's layer table and
the x86 simulator's top-1 agreement with our INT8 ONNX on up to 100 eval samples
(``--eval``: the fixtures' eval sets, the real models' EVAL split); for the YOLOv8
detector the recall of our INT8 ONNX's boxes among the simulator's (sim_det). Ours is
the INT8 ONNX as its ops define it (onnxruntime without its fused int8 kernels); the
``*_ort`` columns compare with onnxruntime's default session instead, and ort_top1 /
ort_det say how far that session itself is from the former.

Targets checked (issue 22): Vela maps >= 95% of the MACs to the NPU for every classifier
and detector; RKNN simulator agreement >= 99% top-1; OpenVINO INT8 is at least as fast as
onnxruntime INT8 on this CPU. Writes results/npu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, quick, write_result

FIXTURES = ("cnn", "mlp", "mobilenet")
VELA_TARGETS = ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256")
RKNN_TARGETS = ("rk3588",)  # with EDGESHIP_RKNN_PYTHON set
TARGETS = (*VELA_TARGETS, "openvino-cpu", *(RKNN_TARGETS if os.environ.get("EDGESHIP_RKNN_PYTHON") else ()))
TARGET_MAC_SHARE = 0.95
TARGET_RKNN_AGREEMENT = 99.0  # % top-1, simulator vs our INT8 ONNX
EVAL_SAMPLES = 100
SKIP_REAL = {"ddddocr_old"}  # already quantized: edgeship refuses it on purpose
COLUMNS = ["model", "target", "ops_on_acc", "macs_on_acc", "est_inf_s", "sram_kib", "flash_kib",
           "ov_ms", "ort_ms", "ov_speedup", "ov_form", "int8_path", "sim_top1", "sim_det", "sim_tie1", "sim_steps", "sim_top1_ort",
           "sim_det_ort", "ort_top1", "ort_det", "cpu_ops", "met"]


def fixture_inputs(name: str, work: Path) -> tuple[Path, Path, list[str]]:
    fix = ROOT / "tests" / "fixtures"
    evaluation = fix / f"{name}_eval.npz"
    return fix / f"{name}.onnx", fix / f"{name}_calib.npz", (
        ["--eval", str(evaluation)] if evaluation.exists() else [])


def real_inputs(spec: Any, work: Path, samples: int, cache: Path,
                with_eval: bool = False) -> tuple[Path, Path, list[str]]:
    import _realworld_models as models
    from _realworld_inputs import CALIB, EVAL

    model = models.float_model(spec, cache)
    name = models.input_name(model)
    calib = work / f"{spec.name}_calib.npz"
    np.savez(calib, **{name: spec.make(CALIB, samples).astype(np.float32)})
    extra = []
    if with_eval:  # the RKNN simulator's check data
        evaluation = work / f"{spec.name}_eval.npz"
        np.savez(evaluation, **{name: spec.make(EVAL, EVAL_SAMPLES).astype(np.float32)})
        extra = ["--eval", str(evaluation)]
    if models.dynamic_input(model):
        extra += ["--input-shape", f"{name}={'x'.join(map(str, spec.shape))}"]
    return model, calib, extra


def convert(model: Path, calib: Path, out: Path, extra: list[str], targets: tuple[str, ...],
            timeout: float) -> tuple[int, float, str, dict[str, Any] | None]:
    argv = [sys.executable, "-m", "edgeship", "convert", str(model), "--calib", str(calib),
            "-o", str(out), "-q", *extra, *(a for t in targets for a in ("--target", t))]
    # the RKNN simulator's outputs kept next to OUT/ for the detection metric
    env = {**os.environ, "EDGESHIP_RKNN_KEEP_OUTPUTS": str(out.parent)}
    began = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=env)
    except subprocess.TimeoutExpired:
        return -1, timeout, f"timed out after {timeout:.0f} s", None
    seconds = round(time.monotonic() - began, 1)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return proc.returncode, seconds, (lines[-1][7:] if lines else ""), report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}%"


def detection_agreement(work: Path, name: str, target: str, task: str = "yolov8"
                        ) -> dict[str, Any]:
    """Recall (%) of our INT8 ONNX's boxes (a YOLOv8 or YOLOX head: ``task``) among the
    RKNN simulator's on the same eval samples (IoU >= 0.5, same class;
    hw-bench/_realworld_metrics.py): ours as its ops define them (sim_det), as
    onnxruntime's fused kernels compute them (sim_det_ort), and those fused kernels' own
    recall of the former (ort_det); how many boxes ours found."""
    from _realworld_metrics import box_recall, decode_yolov8, decode_yolox
    from edgeship.converter._target_rknn import reference_outputs

    simulated = work / f"{target}.simulated.npz"
    if not simulated.exists():
        return {}
    with np.load(simulated) as npz:
        theirs = npz["out0"]
    with np.load(work / f"{name}_eval.npz") as npz:
        feeds = {k: npz[k] for k in npz.files}
    onnx_path = work / "out" / "model.int8.onnx"
    ours = reference_outputs(onnx_path, feeds)
    fused = reference_outputs(onnx_path, feeds, fused=True)
    size = next(iter(feeds.values())).shape[-2:]  # NCHW: the YOLOX grid follows the input

    def decode(out: np.ndarray) -> Any:
        return decode_yolox(out[None], size) if task == "yolox" else decode_yolov8(out[None])

    boxes = [decode(o) for o in ours]
    fused_boxes = [decode(o) for o in fused]
    sim_boxes = [decode(t) for t in theirs.reshape(ours.shape)]
    recall, found = box_recall(boxes, sim_boxes)
    return {"sim_det": recall, "sim_det_ort": box_recall(fused_boxes, sim_boxes)[0],
            "ort_det": box_recall(boxes, fused_boxes)[0], "sim_boxes": found}


def call_floor_us(work: Path) -> dict[str, float]:
    """Each runtime's cost of one call on a model that does nothing (a 16-float Relu), as
    the agent calls it (SDK backends, 1 thread), timed as the models are
    (converter/_target_openvino.py _latencies_ms): the part of a tiny model's latency that
    no model change can move."""
    import onnx
    from edgeship.converter._target_openvino import _agent_call, _latencies_ms
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "floor", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = work / "floor.onnx"
    onnx.save(model, str(path))
    feed = {"x": np.ones((1, 16), np.float32)}
    ort_ms, ov_ms = _latencies_ms([_agent_call(path, "onnxruntime", "CPU", feed),
                                   _agent_call(path, "openvino", "CPU", feed)], 2000)
    return {"onnxruntime": round(ort_ms * 1000.0, 2), "openvino": round(ov_ms * 1000.0, 2)}


def _ov_form(t: dict[str, Any]) -> str:
    """Which ONNX OpenVINO ran (generic, or the form written for it) and the IR's compile
    choices (converter/_openvino_ir.py): "fused 57, no-amx"."""
    form = f"fused {t.get('fused_blocks', 0)}" if t.get("prepared_kept") else "generic"
    choice = (t.get("ir_choice") or "").replace("fused", "").strip("-")
    return form + (f", {choice}" if choice and choice != "default" else "")


def rows_of(model: str, task: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    from edgeship.converter._compat import edgetpu_row

    tpu = edgetpu_row(report["edgetpu"])
    rows = [{"model": model, "target": "edgetpu (rules)", "ops_on_acc": tpu["on the accelerator"],
             "macs_on_acc": tpu["MACs on it"], "cpu_ops": tpu["falls back to the CPU"][:60]}]
    for name, t in (report.get("targets") or {}).items():
        row: dict[str, Any] = {"model": model, "target": name}
        if not t["compiled"]:
            row.update(cpu_ops=f"not compiled: {t['error']}"[:80], met="FAIL")
            rows.append(row)
            continue
        row.update(ops_on_acc=_pct(t["op_share"]), macs_on_acc=_pct(t["mac_share"]),
                   cpu_ops=", ".join(f"{c['op']} ({c['reason'][:40]})" for c in t["cpu_ops"][:3])
                   or "none", mac_share=t["mac_share"], op_share=t["op_share"])
        if "toolkit_version" in t:  # RKNN: the x86 simulator against our INT8 ONNX
            agree = t.get("top1_agreement")
            row.update(sim_top1=agree, sim_tie1=t.get("top1_within_step"),
                       sim_top1_ort=t.get("top1_vs_onnxruntime"), ort_top1=t.get("onnxruntime_top1"),
                       sim_steps=t.get("max_diff_steps"), cycles=t.get("cycles"),
                       met="PASS" if agree is not None and agree >= TARGET_RKNN_AGREEMENT else "FAIL")
        elif "inferences_per_second" in t:
            row.update(est_inf_s=round(t["inferences_per_second"], 1), cycles=t["cycles"],
                       sram_kib=round(t["sram_bytes"] / 1024, 1),
                       flash_kib=round((t["flash_bytes"] + t["dram_bytes"]) / 1024, 1),
                       met="PASS" if (t["mac_share"] or 0) >= TARGET_MAC_SHARE else "FAIL")
        else:
            row.update(ov_ms=t["latency_ms"], ort_ms=t["onnxruntime_latency_ms"],
                       ov_speedup=t["speedup"], int8_path=t["int8_path"],
                       ov_form=_ov_form(t),
                       agreement=t["top1_agreement"],
                       met="PASS" if t["int8_path"] and (t["speedup"] or 0) >= 1.0 else "FAIL")
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import _realworld_models as models

    names = [*FIXTURES, *(s.name for s in models.SPECS if s.name not in SKIP_REAL)]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help=f"comma-separated subset of: {','.join(names)}")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated edgeship targets (edgeship convert --list-targets)")
    parser.add_argument("--quick", action="store_true", help="16 calibration samples (else 32)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-bench")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds one convert may run")
    parser.add_argument("--result", default="npu",
                        help="results/<RESULT>.json (e.g. npu_rknn for a Rockchip-only run)")
    opts = parser.parse_args(argv)
    chosen = [m for m in opts.models.split(",") if m] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(names)}")
    opts.names = chosen
    opts.specs = {s.name: s for s in models.SPECS}
    opts.targets = tuple(t for t in opts.targets.split(",") if t)
    opts.samples = 16 if (opts.quick or quick()) else 32
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    missing = [p for p, m in (("ethos-u-vela", "ethosu"), ("openvino", "openvino"))
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"bench_npu needs {', '.join(missing)}: pip install 'edgeship[vela,openvino,bench]'",
              file=sys.stderr)
        return 2
    import openvino as ov

    print_machine()
    devices = ov.Core().available_devices
    print(f"OpenVINO devices: {', '.join(devices)}" + ("" if "NPU" in devices else
          " (no Intel NPU: openvino-npu cannot be checked here)"), flush=True)
    began, rows, models_info = time.monotonic(), [], []
    with tempfile.TemporaryDirectory(prefix="edgeship-npu-") as tmp:
        for name in opts.names:
            work = Path(tmp) / name
            work.mkdir()
            info: dict[str, Any] = {"model": name}
            try:
                if name in FIXTURES:
                    model, calib, extra = fixture_inputs(name, work)
                    info["what"] = f"tests/fixtures/{name}.onnx"
                else:
                    spec = opts.specs[name]
                    info["what"] = spec.what
                    rknn = any(t.startswith(("rk", "rv")) for t in opts.targets)
                    model, calib, extra = real_inputs(spec, work, opts.samples, opts.cache, rknn)
            except Exception as exc:  # a model that cannot be fetched is its row
                info["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                models_info.append(info)
                print(f"=== {name}: {info['error']}", flush=True)
                continue
            code, seconds, error, report = convert(model, calib, work / "out", extra,
                                                   opts.targets, opts.timeout)
            info.update(exit=code, convert_s=seconds, error=error or None)
            if report is not None:
                info["tflite_written"] = "tflite" in (report.get("formats") or {}).get("written", [])
                found = rows_of(name, "", report)
                task = opts.specs[name].task if name in opts.specs else "classify"
                for row in found:  # a detector: box recall, not top-1 of a box tensor
                    if task in ("yolov8", "yolox") and row["target"].startswith(("rk", "rv")) \
                            and row.get("sim_top1") is not None:
                        det = {k: v if not isinstance(v, float) else round(v, 2) for k, v in
                               detection_agreement(work, name, row["target"], task).items()}
                        recall = det.get("sim_det")
                        row.update(sim_top1=None, sim_top1_ort=None, ort_top1=None, **det,
                                   met="PASS" if recall is not None and recall >= TARGET_RKNN_AGREEMENT
                                   else "FAIL")
                rows.extend(found)
            models_info.append(info)
            print(f"=== {name}: exit {code}, {seconds} s" + (f" — {error}" if error else ""),
                  flush=True)
        floor = call_floor_us(Path(tmp)) if "openvino-cpu" in opts.targets else None
    print_table(rows, COLUMNS, title="NPU targets: share on the accelerator, speed, memory")
    if floor:
        print(f"per-call floor (a Relu on 16 floats, SDK backends, 1 thread): onnxruntime "
              f"{floor['onnxruntime']} us, OpenVINO {floor['openvino']} us")
    minutes = round((time.monotonic() - began) / 60.0, 1)
    command = "python hw-bench/bench_npu.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    write_result(opts.result, {
        "command": command, "minutes": minutes, "rows": rows, "models": models_info,
        "openvino_devices": devices, "calib_samples": opts.samples, "call_floor_us": floor,
        "targets": {"vela": f"MACs on the NPU >= {TARGET_MAC_SHARE:.0%} (every classifier and detector)",
                    "rknn": f"simulator top-1 agreement >= {TARGET_RKNN_AGREEMENT:.0f}% (detector: recall of"
                            f" our INT8 ONNX's boxes, IoU 0.5, same class, sim_det)",
                    "openvino-cpu": "every compute layer int8 and latency <= onnxruntime INT8's"},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
