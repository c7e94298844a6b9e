"""Peak memory of a conversion: edgeship vs onnxruntime's ``quantize_static`` on real models.

    python hw-bench/bench_convert_memory.py MODEL.onnx[=1x3x640x640] ... [--samples 64]
    python hw-bench/bench_convert_memory.py            # the models in $EDGESHIP_REALMODELS
    python hw-bench/bench_convert_memory.py /work/realmodels/320n.onnx=1x3x320x320 \
        /work/realmodels/ch_PP-OCRv4_det_infer.onnx=1x3x640x640 /work/realmodels/common_det.onnx

Each conversion runs in its own process (``edgeship convert`` for edgeship; a small
``quantize_static`` script, QDQ, per-channel, int8, MinMax, for onnxruntime) on the same
float model and the same calibration set: ``--samples`` random samples in [0, 1] (seed 0)
of the model's input shape. Both get the same static copy of the model: ``=SHAPE`` fixes
the input's dimensions (a model exported with dynamic ones), an opset below 13 is
upgraded with ``onnx.version_converter``, and shapes are inferred again. Peak RSS is the
child's ``ru_maxrss`` (``os.wait4``), the same number ``/usr/bin/time -v`` prints; a
watchdog kills a child whose RSS passes ``--cap-gb`` and the row says so.

Prints: model, edgeship peak RSS, ORT peak RSS, ratio, edgeship time (and its exit code:
2 when a requested format, e.g. TFLite, could not be written; the ONNX and report are
still there and the memory was spent). Writes ``results/convert_memory.json``.
Targets (issue 14): edgeship peak < 2 GB and <= 2 x ORT's on every model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine, print_table, quick, write_result

GB = 1e9
_ORT_SCRIPT = """
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
model, calib, out = sys.argv[1:4]
data = dict(np.load(calib))
n = len(next(iter(data.values())))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{k: v[i:i + 1] for k, v in data.items()} for i in range(n)])
    def get_next(self):
        return next(self.it, None)
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
"""


def static_copy(spec: str, tmp: Path) -> Path:
    """``PATH[=1x3xHxW]`` -> a copy with that static input shape, opset >= 13."""
    import onnx
    from onnx import shape_inference, version_converter

    path, _, shape = spec.partition("=")
    src = Path(path)
    m = onnx.load(str(src))
    if shape:
        inits = {t.name for t in m.graph.initializer}
        (inp,) = [i for i in m.graph.input if i.name not in inits]
        for dim, value in zip(inp.type.tensor_type.shape.dim, map(int, shape.split("x")), strict=True):
            dim.Clear()
            dim.dim_value = value
        del m.graph.value_info[:]
        for out in m.graph.output:  # inferred again from the new input shape
            for dim in out.type.tensor_type.shape.dim:
                dim.Clear()
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        m = version_converter.convert_version(m, 13)
    dst = tmp / src.name
    onnx.save(shape_inference.infer_shapes(m), str(dst))
    return dst


def static_inputs(model: Path) -> dict[str, tuple[int, ...]]:
    """Input name -> shape; refuses a dynamic dimension (the bench needs real sample shapes)."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    shapes = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if not all(dims):
            raise SystemExit(f"{model}: input {vi.name!r} has a dynamic dimension; make a static copy")
        shapes[vi.name] = tuple(dims)
    return shapes


def calib_set(model: Path, samples: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        name: rng.random((samples, *shape[1:]), dtype=np.float32)
        for name, shape in static_inputs(model).items()
    }
    np.savez(path, **arrays)
    return path


def run_measured(cmd: list[str], cap_bytes: float) -> dict[str, Any]:
    """Run ``cmd``; its peak RSS (bytes), wall time, exit code and last stderr line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = threading.Event()

    def watch() -> None:  # the machine is shared: stop a conversion that runs away
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                rss = next(int(x.split()[1]) * 1024 for x in status.read_text().splitlines()
                           if x.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError):
                return
            if rss > cap_bytes:
                killed.set()
                os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr_text = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    lines = [ln for ln in stderr_text.strip().splitlines() if ln.strip()]
    return {
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "seconds": round(time.perf_counter() - t0, 2),
        "rc": proc.returncode,
        "killed_over_cap": killed.is_set(),
        "stderr": lines[-1][:300] if lines else "",
    }


def bench_model(model: Path, samples: int, tmp: Path, cap: float, extra: list[str]) -> dict[str, Any]:
    calib = calib_set(model, samples, tmp / f"{model.stem}_calib.npz")
    es = run_measured(
        [sys.executable, "-m", "edgeship", "convert", str(model), "--calib", str(calib),
         "-o", str(tmp / f"{model.stem}.edgeship"), "-q", *extra], cap)
    ort = run_measured(
        [sys.executable, "-c", _ORT_SCRIPT, str(model), str(calib), str(tmp / f"{model.stem}.ort.onnx")],
        cap)
    report = tmp / f"{model.stem}.edgeship" / "report.json"
    written = []
    if report.exists():
        r = json.loads(report.read_text())
        written = ["onnx"] + (["tflite"] if r.get("tflite") and "path" in r["tflite"] else [])
    ratio = es["peak_rss_bytes"] / ort["peak_rss_bytes"] if ort["rc"] == 0 else None
    return {
        "model": model.name,
        "model_mb": round(model.stat().st_size / 1e6, 1),
        "edgeship_peak_gb": round(es["peak_rss_bytes"] / GB, 2),
        "ort_peak_gb": round(ort["peak_rss_bytes"] / GB, 2),
        "ratio": None if ratio is None else round(ratio, 2),
        "edgeship_s": es["seconds"],
        "ort_s": ort["seconds"],
        "edgeship_rc": "killed" if es["killed_over_cap"] else es["rc"],
        "ort_rc": "killed" if ort["killed_over_cap"] else ort["rc"],
        "formats_written": ",".join(written),
        "under_2gb": es["peak_rss_bytes"] < 2 * GB and es["rc"] in (0, 2),
        "within_2x_ort": ratio is not None and ratio <= 2.0,
        "edgeship_stderr": es["stderr"],
        "ort_stderr": ort["stderr"] if ort["rc"] else "",
    }


def default_models() -> list[Path]:
    root = os.environ.get("EDGESHIP_REALMODELS")
    return sorted(Path(root).glob("*.onnx")) if root else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="MODEL.onnx or MODEL.onnx=1x3xHxW")
    ap.add_argument("--samples", type=int, default=8 if quick() else 64)
    ap.add_argument("--cap-gb", type=float, default=12.0, help="kill a child above this RSS")
    ap.add_argument("--edgeship-arg", action="append", default=[],
                    help="passed to edgeship convert (repeatable), e.g. --edgeship-arg=--format=onnx")
    args = ap.parse_args()
    specs = args.models or [str(p) for p in default_models()]
    if not specs:  # `edgeship bench` runs every script: no models here is nothing to measure
        print("no models: pass MODEL.onnx[=SHAPE] paths or set EDGESHIP_REALMODELS; "
              "nothing measured")
        return
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            model = static_copy(spec, Path(tmp))
            rows.append(bench_model(model, args.samples, Path(tmp), args.cap_gb * GB, args.edgeship_arg))
            print(f"  {model.name}: edgeship {rows[-1]['edgeship_peak_gb']} GB, "
                  f"ort {rows[-1]['ort_peak_gb']} GB", flush=True)
    print_table(rows, ["model", "model_mb", "edgeship_peak_gb", "ort_peak_gb", "ratio",
                       "edgeship_s", "ort_s", "edgeship_rc", "formats_written"],
                title=f"conversion peak RSS, {args.samples} calibration samples")
    for row in rows:
        if row["edgeship_stderr"]:
            print(f"  {row['model']}: edgeship: {row['edgeship_stderr']}")
        if row["ort_stderr"]:
            print(f"  {row['model']}: ort: {row['ort_stderr']}")
    write_result("convert_memory", {"samples": args.samples, "rows": rows,
                                    "targets_met": all(r["under_2gb"] and r["within_2x_ort"] for r in rows)})


if __name__ == "__main__":
    main()
