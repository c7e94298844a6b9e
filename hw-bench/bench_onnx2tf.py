"""edgeship's TFLite writer next to onnx2tf's full-integer TFLite output, in one run.

For every fixture model (tests/fixtures) and the same calibration data:

- edgeship: ``edgeship convert --format onnx,tflite`` (QDQ INT8 ONNX, then the TFLite
  writer, no TensorFlow);
- onnx2tf 2.6.9 with ``-oiqt`` (its ``flatbuffer_direct`` backend, no TensorFlow either),
  run the way a new user would: from its own Python 3.12 venv, calibration data as NHWC
  .npy with mean 0 / std 1 (ours is already normalized). When the default (per-channel)
  run leaves no ``*_full_integer_quant.tflite`` behind, a second try with
  ``-qt per-tensor`` is recorded as well.

Each row has the exit status and the first error line (failures are results), conversion
time, size, eval accuracy, top-1 agreement with the fp32 ONNX model, and the Edge TPU
verdict of :func:`edgeship.converter._edgetpu.check_edgetpu`.

The venv is made on first use at ``--venv`` (default $EDGESHIP_ONNX2TF_VENV or
/tmp/edgeship-onnx2tf-venv) with ``pip install onnx2tf==2.6.9``; it is never part of the
repository.

Usage: ``python hw-bench/bench_onnx2tf.py [--models cnn,mlp,mobilenet] [--venv DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, quick, write_result

FIXTURES = ROOT / "tests" / "fixtures"
ONNX2TF = "onnx2tf==2.6.9"
DEFAULT_VENV = Path(os.environ.get("EDGESHIP_ONNX2TF_VENV", "/tmp/edgeship-onnx2tf-venv"))
TIMEOUT_S = 900


def python312() -> str | None:
    for candidate in (shutil.which("python3.12"),
                      str(Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def ensure_venv(venv: Path) -> str | None:
    """Path of the venv's onnx2tf, making the venv when missing; None (and why) on failure."""
    exe = venv / "bin" / "onnx2tf"
    if exe.exists():
        return None
    interpreter = python312()
    if interpreter is None:
        return "no Python 3.12 on this machine (onnx2tf 2.x needs >= 3.12)"
    for cmd in ([interpreter, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", ONNX2TF]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            return f"{' '.join(cmd[:3])} failed: {_first_error(done.stderr + done.stdout)}"
    return None


def _first_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error" in ln and not ln.startswith(("File ", "raise "))]
    return (hits[0] if hits else (lines[-1] if lines else ""))[:300]


def _eval(path: Path, name: str) -> dict[str, Any]:
    from edgeship.converter._edgetpu import check_edgetpu
    from edgeship.sdk import Model

    ev = np.load(FIXTURES / f"{name}_eval.npz")
    x = ev[next(k for k in ev.files if k != "label")].astype(np.float32)
    ref = Model.load(FIXTURES / f"{name}.onnx").predict(x)
    model = Model.load(path, threads=1)
    if tuple(model.inputs[0].shape[1:]) != x.shape[1:] and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # onnx2tf's inputs are NHWC
    y = model.predict(x)
    edgetpu = check_edgetpu(path)
    return {
        "bytes": path.stat().st_size,
        "accuracy": round(100.0 * float(np.mean(_pred(y) == ev["label"])), 2),
        "agreement_fp32": round(100.0 * float(np.mean(_pred(y) == _pred(ref))), 2),
        "edgetpu": "fully mappable" if edgetpu.fully_mappable
        else f"cut at #{edgetpu.cut.index} {edgetpu.cut.op}" if edgetpu.cut else "?",
        "edgetpu_verdict": edgetpu.verdict,
    }


def _pred(y: np.ndarray) -> np.ndarray:
    return (y[:, 0] > 0.5).astype(int) if y.shape[1] == 1 else y.argmax(1)


def run_edgeship(name: str, work: Path) -> dict[str, Any]:
    out = work / f"edgeship_{name}"
    cmd = [sys.executable, "-m", "edgeship", "convert", str(FIXTURES / f"{name}.onnx"),
           "--calib", str(FIXTURES / f"{name}_calib.npz"), "-o", str(out), "--format", "onnx,tflite"]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    row: dict[str, Any] = {"model": name, "tool": "edgeship", "exit": done.returncode,
                           "seconds": round(time.perf_counter() - began, 2)}
    tflite = out / "model.int8.tflite"
    if done.returncode != 0 or not tflite.exists():
        return row | {"status": "failed", "error": _first_error(done.stderr)}
    return row | {"status": "ok"} | _eval(tflite, name)


def _calib_npy(name: str, work: Path) -> tuple[Path, str]:
    data = np.load(FIXTURES / f"{name}_calib.npz")
    x = data[next(k for k in data.files if k != "label")].astype(np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # "in dimension order after conversion to TF"
    path = work / f"{name}_calib.npy"
    np.save(path, x)
    return path, "[" * (x.ndim - 1) + "{}" + "]" * (x.ndim - 1)


def run_onnx2tf(name: str, work: Path, venv: Path, extra: list[str], label: str) -> dict[str, Any]:
    out = work / f"onnx2tf_{name}_{label}"
    calib, brackets = _calib_npy(name, work)
    cmd = [str(venv / "bin" / "onnx2tf"), "-i", str(FIXTURES / f"{name}.onnx"), "-o", str(out),
           "-oiqt", *extra, "-cind", "input", str(calib), brackets.format(0.0), brackets.format(1.0)]
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=work, env=env)
    row: dict[str, Any] = {"model": name, "tool": f"onnx2tf {label}", "exit": done.returncode,
                           "seconds": round(time.perf_counter() - began, 2)}
    if done.returncode != 0:
        row["error"] = _first_error(done.stdout + done.stderr)
    found = sorted(out.glob("*_full_integer_quant.tflite"))
    if not found:
        return row | {"status": "failed: no full-integer TFLite written"}
    row["status"] = "ok" if done.returncode == 0 else "exit != 0, full-integer file left behind"
    try:
        return row | _eval(found[0], name)
    except Exception as exc:  # its file may not load or run; that is a result too
        return row | {"status": f"written but unusable: {str(exc).splitlines()[0][:200]}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn" if quick() else "cnn,mlp,mobilenet")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args(argv)
    print_machine()
    setup_error = ensure_venv(args.venv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-o2t-") as tmp:
        work = Path(tmp)
        for name in (m.strip() for m in args.models.split(",")):
            rows.append(run_edgeship(name, work))
            if setup_error:
                rows.append({"model": name, "tool": "onnx2tf", "status": "not run", "error": setup_error})
                continue
            first = run_onnx2tf(name, work, args.venv, [], "per-channel")
            rows.append(first)
            if first["status"].startswith("failed"):
                rows.append(run_onnx2tf(name, work, args.venv, ["-qt", "per-tensor"], "per-tensor"))
    cols = ["model", "tool", "status", "seconds", "bytes", "accuracy", "agreement_fp32", "edgetpu"]
    print_table(rows, cols, title="full-integer TFLite: edgeship vs onnx2tf -oiqt")
    for row in rows:
        if row.get("error"):
            print(f"  {row['model']} / {row['tool']}: {row['error']}")
    write_result("onnx2tf", {"onnx2tf": ONNX2TF, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
