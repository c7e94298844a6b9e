"""Ethos-U targets: Arm's Vela compiler (pip ``ethos-u-vela``, extra ``vela``) on the
fully-integer TFLite, in a subprocess with its output in a temporary directory.

Vela replaces every run of ops it supports with one ``ethos-u`` custom op (the command
stream for the NPU) and leaves the rest as ordinary TFLite ops for the CPU. What runs
where is read from the file Vela wrote (not from its log), MACs from the tensor shapes
(converter/_tflite_macs.py); the reasons for CPU ops from Vela's warnings, the
estimated cycles, inferences/s and memory from its summary CSV.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeship._errors import ConversionError

from ._compat import advise
from ._targets import Target, TargetInputs, TargetResult
from ._tflite_macs import TfliteOp, read_ops

VELA_TIMEOUT_S = 600
NPU_OP = "ethos-u"  # Vela's custom op code
_WARNING = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")


@dataclass(frozen=True, kw_only=True)
class VelaResult(TargetResult):
    """Vela's estimate for one accelerator configuration (from its summary CSV)."""

    clock_hz: float = 0.0
    cycles: int = 0  # estimated cycles per inference (NPU and memory, Vela's cycles_total)
    cycles_npu: int = 0
    inferences_per_second: float = 0.0
    sram_bytes: int = 0
    flash_bytes: int = 0  # off-chip + on-chip flash (weights, when stored there)
    dram_bytes: int = 0
    weights_storage: str = ""
    npu_partitions: int = 0  # ethos-u custom ops in the compiled file
    vela_ops: dict[str, int] | None = None  # Vela's own op counts, after its rewrites


def compile_vela(target: Target, inputs: TargetInputs) -> VelaResult:
    assert inputs.tflite is not None
    artifact = f"model.int8.{target.name}.tflite"
    with tempfile.TemporaryDirectory(prefix="edgeship-vela-") as tmp:
        source, shuffles = _npu_tflite(inputs, Path(tmp), shuffle_form(target))
        log = _run(source, Path(tmp), target.settings)
        compiled = _one(Path(tmp), "*_vela.tflite")
        summary = _read_csv(_one(Path(tmp), "*_summary_*.csv"))
        shutil.copyfile(compiled, inputs.out_dir / artifact)
        before = read_ops(source.read_bytes())
    after = read_ops((inputs.out_dir / artifact).read_bytes())
    result = _result(target, artifact, before, after, _cpu_reasons(log), summary, log)
    if shuffles:
        form = SHUFFLE_FORMS[shuffle_form(target)]
        result = replace(result, settings={**result.settings, "channel_shuffle": f"{shuffles} as {form}"})
    return result


SHUFFLE_FORMS = {"transpose": "RESHAPE/TRANSPOSE", "conv": "1x1 permutation CONV_2D"}


def shuffle_form(target: Target) -> str:
    """How a channel shuffle is written for this Ethos-U: Vela's estimate on ShuffleNet
    V2 (hw-bench/bench_npu.py) has the TRANSPOSE form fastest on U55/U65 (U55-128: 100
    vs 85 inf/s for the conv), and the 1x1 conv on U85, whose TRANSPOSE is hundreds of
    times slower there (1.6 vs 275 inf/s)."""
    return "conv" if target.name.startswith("ethos-u85") else "transpose"


def _npu_tflite(inputs: TargetInputs, tmp: Path, form: str) -> tuple[Path, int]:
    """The TFLite Vela compiles, and how many channel shuffles it writes in ``form``:
    the generic TFLite, unless the model has channel-permutation Gathers (ShuffleNet),
    which Vela leaves on the CPU as GATHER; then the same QDQ model lowered with the
    shuffles in a form Vela maps (same values, see _tflite_ops_move)."""
    assert inputs.tflite is not None
    shuffles = channel_permutations(inputs.onnx)
    if not shuffles:
        return inputs.tflite, 0
    from ._tflite import build_tflite

    data, _, _ = build_tflite(inputs.onnx, io=inputs.io, npu_shuffle=form)
    path = tmp / "model.int8.npu.tflite"
    path.write_bytes(data)
    return path, shuffles


def channel_permutations(onnx_path: Path) -> int:
    """Gathers on axis 1 of a 4-D tensor with a constant permutation of all channels."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        idx = inits.get(node.input[1]) if node.op_type == "Gather" and len(node.input) > 1 else None
        if idx is not None and axis == 1 and idx.ndim == 1 and sorted(idx.tolist()) == list(range(idx.size)):
            count += 1
    return count


def vela_version() -> str:
    from ethosu.vela import __version__

    return str(__version__)


def _run(tflite: Path, out: Path, settings: dict[str, str] | Any) -> str:
    cmd = [sys.executable, "-m", "ethosu.vela", str(tflite), "--output-dir", str(out)]
    for key in ("accelerator_config", "config", "system_config", "memory_mode"):
        cmd += [f"--{key.replace('_', '-')}", settings[key]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT_S,
                              cwd=out)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"Vela did not finish in {VELA_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
        raise ConversionError(f"Vela refused the model (exit {proc.returncode}): {why.strip()[:300]}")
    return proc.stdout


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise ConversionError(f"Vela wrote no {pattern} (its output format may have changed)")
    return found[0]


def _read_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConversionError(f"Vela's summary {path.name} is empty")
    return rows[0]


def _cpu_reasons(log: str) -> dict[str, str]:
    """ofm name -> Vela's reason, from its 'Warning (supported operators)' blocks."""
    reasons: dict[str, str] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        match = _WARNING.match(line.strip())
        if not match:
            continue
        text = []
        for follow in lines[i + 1:]:
            if not follow.strip() or _WARNING.match(follow.strip()):
                break
            text.append(follow.strip().removeprefix("Reason: "))
        reasons.setdefault(match.group(2), "; ".join(text) or "not supported by Vela")
    return reasons


def _vela_counts(log: str) -> dict[str, int]:
    counts = {}
    for kind in ("CPU", "NPU"):
        match = re.search(rf"^{kind} operators = (\d+)", log, re.MULTILINE)
        if match:
            counts[kind.lower()] = int(match.group(1))
    return counts


def _result(
    target: Target, artifact: str, before: list[TfliteOp], after: list[TfliteOp],
    reasons: dict[str, str], summary: dict[str, str], log: str,
) -> VelaResult:
    by_output = {op.outputs[0]: op for op in before if op.outputs}
    cpu_after = [op for op in after if op.op != NPU_OP]
    cpu = [by_output.get(op.outputs[0], op) if op.outputs else op for op in cpu_after]
    inner_cpu = [op for op in cpu if not op.edge]
    edge = [op for op in cpu if op.edge]
    positions = [i for i, op in enumerate(after) if op.op == NPU_OP]
    cuts = tuple(
        _label(cpu[k]) for k, op in enumerate(cpu_after)
        if positions and positions[0] < after.index(op) < positions[-1] and not cpu[k].edge
    )
    cpu_rows = tuple(_row(op, reasons) for op in inner_cpu)
    edge_rows = tuple(_row(op, reasons) for op in edge)
    macs_total = sum(op.macs for op in before)
    kib = 1024.0
    return VelaResult(
        target=target.name, compiler=f"vela {vela_version()}", compiled=True, artifact=artifact,
        ops_total=sum(not op.edge for op in before),
        ops_on_npu=sum(not op.edge for op in before) - len(inner_cpu),
        macs_total=macs_total, macs_on_npu=macs_total - sum(op.macs for op in cpu),
        cpu_ops=cpu_rows, edge_ops=edge_rows, cut_points=cuts,
        advice=advise(target.name, cpu_rows, edge_rows, cuts, [op.macs for op in inner_cpu]),
        settings=dict(target.settings),
        clock_hz=float(summary.get("core_clock", 0) or 0),
        cycles=round(float(summary.get("cycles_total", 0) or 0)),
        cycles_npu=round(float(summary.get("cycles_npu", 0) or 0)),
        inferences_per_second=round(float(summary.get("inferences_per_second", 0) or 0), 2),
        sram_bytes=round(float(summary.get("sram_memory_used", 0) or 0) * kib),
        flash_bytes=round((float(summary.get("off_chip_flash_memory_used", 0) or 0)
                           + float(summary.get("on_chip_flash_memory_used", 0) or 0)) * kib),
        dram_bytes=round(float(summary.get("dram_memory_used", 0) or 0) * kib),
        weights_storage=summary.get("weights_storage_area", ""),
        npu_partitions=len(positions),
        vela_ops=_vela_counts(log),
    )


def _label(op: TfliteOp) -> str:
    return f"{op.op} '{op.outputs[0] if op.outputs else op.index}'"


def _row(op: TfliteOp, reasons: dict[str, str]) -> dict[str, Any]:
    name = op.outputs[0] if op.outputs else str(op.index)
    return {"op": op.op, "node": name, "macs": op.macs,
            "reason": reasons.get(name, "placed on the CPU by Vela (no reason logged)")}
