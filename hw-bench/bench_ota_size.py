"""OTA payload size: what a device downloads for a model update, in one run on this machine.

Takes the MobileNet-style fixture (tests/fixtures/mobilenet.onnx, ~1.1 MB fp32), makes two
updated fp32 versions by editing its initializers with numpy —

- ``head-only``: only the classifier head (the last Gemm's weight and bias) is retrained
  (moved by 0.3 of its standard deviation, i.e. new values);
- ``every-weight``: every Conv/Gemm weight and bias moves by ~1% (x (1 + 0.01 N(0,1)))

— converts all three with ``edgeship convert`` (the CLI, as a user would) and, when the
converter has it, converts the updates again with ``--base`` v1 (delta-friendly
quantization). For each update and artifact format it reports, as bytes and as a share
of the full INT8 artifact: the full artifact, zstd -19 of it, a bsdiff4 delta, the
edgeship tensor delta, and the edgeship tensor delta of the ``--base`` conversion, plus
the order-0 entropy floor of the INT8 weight differences. Every delta is applied and
checked byte for byte (sha256) against its target.

Targets (issue 5): head-only <= 8% of the full INT8 artifact, every-weight <= 15%, and
both below bsdiff4 in the same run.

Usage: ``python hw-bench/bench_ota_size.py [--formats tflite,onnx] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, write_result

FIXTURES = ROOT / "tests" / "fixtures"
TARGETS = {"head-only": 0.08, "every-weight": 0.15}


def _weight_inputs(model: Any) -> tuple[set[str], set[str]]:
    """(all Conv/Gemm/MatMul weight+bias initializer names, those of the last Gemm/MatMul)."""
    inits = {t.name for t in model.graph.initializer}
    every, head = set(), set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            names = {n for n in node.input[1:] if n in inits}
            every |= names
            if node.op_type in ("Gemm", "MatMul"):
                head = names
    return every, head


def _variant(src: Path, out: Path, edit: Callable[[str, np.ndarray, Any], np.ndarray | None],
             seed: int) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(src)
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        new = edit(tensor.name, numpy_helper.to_array(tensor), rng)
        if new is not None:
            tensor.CopyFrom(numpy_helper.from_array(new.astype(np.float32), tensor.name))
    onnx.save(model, out)
    return out


def make_versions(tmp: Path) -> dict[str, Path]:
    import onnx

    src = FIXTURES / "mobilenet.onnx"
    every, head = _weight_inputs(onnx.load(src))
    return {
        "v1": src,
        "head-only": _variant(src, tmp / "head.onnx", lambda n, a, r: (
            a + r.normal(0.0, 0.3 * float(a.std()) + 1e-3, a.shape) if n in head else None), 1),
        "every-weight": _variant(src, tmp / "every.onnx", lambda n, a, r: (
            a * (1 + 0.01 * r.standard_normal(a.shape)) if n in every else None), 2),
    }


def _has_base_option() -> bool:
    out = subprocess.run([sys.executable, "-m", "edgeship", "convert", "--help"],
                         capture_output=True, text=True)
    return "--base" in out.stdout


def convert(model: Path, out: Path, base: Path | None = None) -> dict[str, Any] | None:
    """Run ``edgeship convert``; None when a ``--base`` conversion fails (reported)."""
    cmd = [sys.executable, "-m", "edgeship", "convert", str(model), "--calib",
           str(FIXTURES / "mobilenet_calib.npz"), "--eval", str(FIXTURES / "mobilenet_eval.npz"),
           "-o", str(out), "-q"]
    if base is not None:
        cmd += ["--base", str(base)]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        if base is None:
            raise SystemExit(f"edgeship convert {model.name} failed: {reason}")
        print(f"edgeship convert --base failed ({reason}); reported as n/a", flush=True)
        return None
    import json

    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(time.perf_counter() - began, 2), "eval": report.get("eval"),
            "base": report.get("base")}


def _floor(old: bytes, new: bytes) -> int:
    """Order-0 entropy (bytes) of the INT8 weight differences, summed per tensor."""
    from edgeship.sdk.release._delta_codec import entropy_bits
    from edgeship.sdk.release._delta_parse import find_regions

    before = {r.name: r for r in find_regions(old)}
    bits = 0.0
    for r in find_regions(new):
        o = before.get(r.name)
        if r.width == 1 and o is not None and o.length == r.length:
            d = (np.frombuffer(new, np.uint8, r.length, r.offset)
                 - np.frombuffer(old, np.uint8, o.length, o.offset)).view(np.int8)
            bits += entropy_bits(d.astype(np.int16) + 128)
    return round(bits / 8)


def _delta(old: bytes, new: bytes, fmt: str) -> tuple[int, float, float]:
    """(size, make seconds, apply seconds), after checking the round trip by sha256."""
    from edgeship.sdk import apply_delta, make_delta

    began = time.perf_counter()
    delta = make_delta(old, new, fmt)
    made = time.perf_counter() - began
    began = time.perf_counter()
    out = apply_delta(old, delta, fmt, max_output=len(new))
    applied = time.perf_counter() - began
    if hashlib.sha256(out).digest() != hashlib.sha256(new).digest():
        raise SystemExit(f"{fmt} delta does not rebuild the artifact")
    return len(delta), made, applied


def measure(outs: dict[str, Path], update: str, fmt: str) -> dict[str, Any]:
    import zstandard

    name = f"model.int8.{fmt}"
    old, new = (outs["v1"] / name).read_bytes(), (outs[update] / name).read_bytes()
    full = len(new)
    bsd, bsd_make, _ = _delta(old, new, "bsdiff4")
    est, est_make, est_apply = _delta(old, new, "edgeship-tensor")
    row: dict[str, Any] = {
        "update": update, "format": fmt, "full_bytes": full,
        "zstd_bytes": len(zstandard.ZstdCompressor(level=19).compress(new)),
        "bsdiff4_bytes": bsd, "edgeship_bytes": est, "edgeship_base_bytes": None,
        "floor_bytes": _floor(old, new), "floor_base_bytes": None,
        "bsdiff4_make_s": round(bsd_make, 3), "edgeship_make_s": round(est_make, 3),
        "edgeship_apply_s": round(est_apply, 3),
    }
    based = outs.get(f"{update}+base")
    if based is not None:
        new_b = (based / name).read_bytes()
        row["edgeship_base_bytes"] = _delta(old, new_b, "edgeship-tensor")[0]
        row["floor_base_bytes"] = _floor(old, new_b)
    return row


def _pct(row: dict[str, Any], key: str) -> str:
    return "" if row[key] is None else f"{100 * row[key] / row['full_bytes']:.2f}%"


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        best = min(v for v in (row["edgeship_bytes"], row["edgeship_base_bytes"]) if v)
        share = best / row["full_bytes"]
        limit = TARGETS[row["update"]]
        out.append({"update": row["update"], "format": row["format"],
                    "best_edgeship_share": round(share, 4), "target": limit,
                    "meets_target": share <= limit,
                    "below_bsdiff4": best < row["bsdiff4_bytes"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="tflite,onnx")
    parser.add_argument("--keep", type=Path, default=None, help="keep converted models here")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    print_machine()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        versions = make_versions(tmp)
        outs: dict[str, Path] = {}
        conversions: dict[str, Any] = {}
        for label, model in versions.items():
            outs[label] = tmp / label
            conversions[label] = convert(model, outs[label]) or {}
        base = _has_base_option()
        if base:
            for label in ("head-only", "every-weight"):
                done = convert(versions[label], tmp / f"{label}+base", base=outs["v1"])
                if done is not None:
                    outs[f"{label}+base"] = tmp / f"{label}+base"
                    conversions[f"{label}+base"] = done
        rows = [measure(outs, u, f) for f in formats for u in ("head-only", "every-weight")]
    table = [{"update": r["update"], "format": r["format"], "full": r["full_bytes"],
              "zstd": _pct(r, "zstd_bytes"), "bsdiff4": _pct(r, "bsdiff4_bytes"),
              "edgeship": _pct(r, "edgeship_bytes"),
              "edgeship --base": _pct(r, "edgeship_base_bytes") or "n/a",
              "floor": _pct(r, "floor_bytes"), "floor --base": _pct(r, "floor_base_bytes")}
             for r in rows]
    print_table(table, title="OTA payload, share of the full INT8 artifact")
    checks = verdicts(rows)
    print_table(checks, title="targets: head-only <= 8%, every-weight <= 15%, below bsdiff4")
    accuracy = {k: (v.get("eval") or {}).get("int8_accuracy") for k, v in conversions.items()}
    print("int8 eval accuracy:", ", ".join(f"{k} {v}" for k, v in accuracy.items()))
    write_result("ota_size", {"rows": rows, "checks": checks, "conversions": conversions,
                              "base_option": base})
    missed = [f"{c['update']}/{c['format']}" for c in checks
              if not (c["meets_target"] and c["below_bsdiff4"])]
    print("targets met" if not missed else f"targets missed: {', '.join(missed)}")
    return 0  # a measurement, not a test: the verdict is in the table and the JSON


if __name__ == "__main__":
    sys.exit(main())
