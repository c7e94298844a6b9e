"""NPU targets: after the INT8 TFLite / QDQ ONNX are written, ``--target NAME`` runs that
NPU's own compiler on them, writes its artifact next to them and puts what the compiler
says (what runs on the accelerator, what falls back to the CPU and why, estimated speed,
memory) into the report.

One :class:`Target` per name in :data:`TARGETS`: what it compiles (``tflite`` or the QDQ
``onnx``), the pip extra that brings its compiler, the module that must be importable and
the function (``"module:attribute"``, imported only when the target runs) that compiles
and returns a :class:`TargetResult` subclass. The compilers are optional: a missing one
is one :class:`~edgeship._errors.ConfigError` naming the extra, raised before any work.

The runners live in their own modules (converter/_target_vela.py,
converter/_target_openvino.py); this module is the registry and the shared result shape
the report's compatibility table reads (converter/_compat.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship._errors import ConfigError, ConversionError, EdgeshipError

__all__ = [
    "TARGETS",
    "Target",
    "TargetInputs",
    "TargetResult",
    "check_available",
    "compile_targets",
    "target_names",
]


@dataclass(frozen=True, kw_only=True)
class TargetInputs:
    """What a target's compiler gets: the files written so far and a few real inputs
    (eval samples when given, else calibration samples) for latency and agreement."""

    out_dir: Path  # the (temporary) OUT/: artifacts are written here
    onnx: Path  # OUT/model.int8.onnx (float io unless --io int8)
    tflite: Path | None  # OUT/model.int8.tflite, None when it was not written
    samples: dict[str, np.ndarray]
    latency_runs: int = 50
    io: str = "float"  # the TFLite's edges (--io), for a target that builds its own TFLite
    # more samples for a target that checks agreement on a simulator (RKNN); None: samples
    check_samples: dict[str, np.ndarray] | None = None


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """What one target's compiler made of the model; the fields every target fills
    (a compiler's own numbers are in the subclasses). ``ops_*`` count the ops of the
    model edgeship wrote (TFLite ops or ONNX compute layers), not the compiler's
    internal ones; float QUANTIZE/DEQUANTIZE at the model's edges are in ``edge_ops``
    and outside ``ops_total``, as in the Edge TPU check."""

    target: str
    compiler: str  # e.g. "vela 5.2.0"
    compiled: bool
    artifact: str | None = None  # file name in OUT/, None if the target writes none
    error: str | None = None  # why it was not compiled (compiled=False)
    ops_total: int = 0
    ops_on_npu: int = 0
    macs_total: int = 0
    macs_on_npu: int = 0
    cpu_ops: tuple[dict[str, Any], ...] = ()  # {"op", "node", "reason"}: ran on the CPU
    edge_ops: tuple[dict[str, Any], ...] = ()  # float QUANTIZE/DEQUANTIZE at the edges
    cut_points: tuple[str, ...] = ()  # CPU ops that split the accelerator's work
    advice: str = ""  # the one change that would move most work onto the accelerator
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def op_share(self) -> float | None:
        """Share of the model's ops that run on the accelerator (None: not compiled)."""
        return self.ops_on_npu / self.ops_total if self.ops_total else None

    @property
    def mac_share(self) -> float | None:
        """Share of the model's multiply-accumulates on the accelerator (None: unknown)."""
        return self.macs_on_npu / self.macs_total if self.macs_total else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("cpu_ops", "edge_ops", "cut_points"):
            d[key] = list(d[key])
        d["op_share"] = _round(self.op_share)
        d["mac_share"] = _round(self.mac_share)
        return d


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


Runner = Callable[["Target", TargetInputs], TargetResult]


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    compiles: str  # "tflite" (the fully-integer TFLite) or "onnx" (the QDQ ONNX)
    extra: str  # pip install 'edgeship[<extra>]' brings the compiler
    module: str  # import name that must be present
    runner: str  # "module:function" returning a TargetResult
    compiler: str  # who makes it and its pip package, for messages
    summary: str
    settings: Mapping[str, str] = field(default_factory=dict)
    # "module:function" -> why the compiler cannot run here, or None; for a compiler that
    # lives outside edgeship's environment (rknn-toolkit2), instead of importing ``module``
    probe: str = ""
    hint: str = ""  # how to install the compiler, when it is not a pip extra of edgeship

    def problem(self) -> str | None:
        """Why this target's compiler cannot run here (None: it can)."""
        if self.probe:
            module_name, attr = self.probe.split(":")
            found: str | None = getattr(importlib.import_module(module_name), attr)()
            return found
        if _missing(self.module):
            return f"--target {self.name} needs {self.compiler}, which is not installed: {self.install_hint()}"
        return None

    def install_hint(self) -> str:
        return self.hint or f"pip install 'edgeship[{self.extra}]'"

    def run(self, inputs: TargetInputs) -> TargetResult:
        module_name, attr = self.runner.split(":")
        runner: Runner = getattr(importlib.import_module(module_name), attr)
        return runner(self, inputs)


_VELA = "edgeship.converter._target_vela:compile_vela"
_OPENVINO = "edgeship.converter._target_openvino:compile_openvino"
_OV = "Intel's OpenVINO runtime (openvino)"
_RKNN = "edgeship.converter._target_rknn"


def _rockchip(name: str, what: str) -> Target:
    return Target(
        name=name, compiles="onnx", extra="rknn", module="rknn", runner=f"{_RKNN}:compile_rknn",
        compiler="Rockchip's rknn-toolkit2 (in its own environment, EDGESHIP_RKNN_PYTHON)",
        summary=f"Rockchip {name.upper()} NPU, {what} (rknn-toolkit2)",
        # optimization level 2: no conv + add + activation fusion, which skips the
        # rounding of the conv's output that our INT8 ONNX (and the TFLite) does
        settings={"target_platform": name, "optimization_level": "2"},
        probe=f"{_RKNN}:toolkit_problem",
        hint="rknn-toolkit2 in its own venv, EDGESHIP_RKNN_PYTHON=<its python>",
    )


def _ethos_u(name: str, system: str, memory: str, what: str) -> Target:
    # Vela's own defaults per NPU family, named so that Vela does not warn about them
    return Target(
        name=name, compiles="tflite", extra="vela", module="ethosu.vela", runner=_VELA,
        compiler="Arm's Vela compiler (ethos-u-vela)", summary=f"Arm {what} (Vela)",
        settings={"accelerator_config": name, "config": "Arm/vela.ini",
                  "system_config": system, "memory_mode": memory},
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _ethos_u("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram",
                 "Ethos-U55, 128 MACs/cycle"),
        _ethos_u("ethos-u55-256", "Ethos_U55_High_End_Embedded", "Shared_Sram",
                 "Ethos-U55, 256 MACs/cycle"),
        _ethos_u("ethos-u65-256", "Ethos_U65_Client_Server", "Dedicated_Sram_384KB",
                 "Ethos-U65, 256 MACs/cycle"),
        _ethos_u("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB",
                 "Ethos-U85, 256 MACs/cycle"),
        Target(name="openvino-cpu", compiles="onnx", extra="openvino", module="openvino",
               runner=_OPENVINO, compiler=_OV, summary="Intel OpenVINO on this machine's CPU",
               settings={"device": "CPU"}),
        Target(name="openvino-npu", compiles="onnx", extra="openvino", module="openvino",
               runner=_OPENVINO, compiler=_OV, summary="Intel OpenVINO on an Intel NPU (Core Ultra)",
               settings={"device": "NPU"}),
        _rockchip("rk3588", "6 TOPS"),
        _rockchip("rk3576", "6 TOPS"),
        _rockchip("rk3568", "1 TOPS"),
        _rockchip("rk3566", "1 TOPS"),
        _rockchip("rk3562", "1 TOPS"),
        _rockchip("rv1106", "0.5 TOPS"),
        _rockchip("rv1103", "0.5 TOPS"),
    )
}


def target_names() -> tuple[str, ...]:
    return tuple(TARGETS)


def check_names(names: tuple[str, ...], formats: tuple[str, ...]) -> None:
    """Pure validation of ``--target`` against the registry and ``--format``."""
    for name in names:
        target = TARGETS.get(name)
        if target is None:
            raise ConfigError(
                f"unknown target {name!r}; known: {', '.join(TARGETS)} "
                "(edgeship convert --list-targets)"
            )
        if target.compiles not in formats:
            raise ConfigError(
                f"--target {name} compiles the INT8 {target.compiles.upper()} model: "
                f"add {target.compiles} to --format"
            )
    if len(set(names)) != len(names):
        raise ConfigError("--target: a target is given twice")


def check_available(names: tuple[str, ...]) -> None:
    """One clear error, before any work, when a target's compiler is not installed."""
    checked: dict[str, str | None] = {}  # one probe per compiler (rk3588 and rk3566 share one)
    for name in names:
        target = TARGETS[name]
        key = target.probe or target.module
        if key not in checked:
            checked[key] = target.problem()
        if checked[key]:
            raise ConfigError(str(checked[key]))


def compiler_installed(target: Target) -> bool:
    return target.problem() is None


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing or broken
        return True


def compile_targets(names: tuple[str, ...], inputs: TargetInputs) -> dict[str, TargetResult]:
    """Run each target's compiler. A compiler that refuses the model (or fails) gives a
    result with ``compiled=False`` and its message: the caller decides the exit."""
    results: dict[str, TargetResult] = {}
    for name in names:
        target = TARGETS[name]
        if target.compiles == "tflite" and inputs.tflite is None:
            results[name] = _not_compiled(target, "the INT8 TFLite was not written")
            continue
        try:
            results[name] = target.run(inputs)
        except EdgeshipError as exc:
            results[name] = _not_compiled(target, str(exc))
        except Exception as exc:  # a compiler's own crash: its message, in our report
            detail = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            results[name] = _not_compiled(target, f"{target.summary} failed: {detail[0][:300]}")
    return results


SAMPLES = 8  # inputs handed to a target for latency and agreement
CHECK_SAMPLES = 100  # inputs for a simulator's agreement check (RKNN's x86 simulator)


def run_for_convert(
    opts: Any, out_dir: Path, onnx_file: str, tflite_file: str, feeds: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """convert()'s step: compile ``opts.targets`` on what is in ``out_dir``; the results
    as report.json holds them (``{}`` without targets)."""
    if not opts.targets:
        return {}
    tflite = out_dir / tflite_file
    inputs = TargetInputs(
        out_dir=out_dir, onnx=out_dir / onnx_file, tflite=tflite if tflite.is_file() else None,
        samples={k: v[:SAMPLES] for k, v in feeds.items()}, latency_runs=opts.latency_runs,
        io=opts.io, check_samples={k: v[:CHECK_SAMPLES] for k, v in feeds.items()},
    )
    return {n: r.to_dict() for n, r in compile_targets(opts.targets, inputs).items()}


def _not_compiled(target: Target, why: str) -> TargetResult:
    return TargetResult(target=target.name, compiler=target.summary, compiled=False, error=why,
                        settings=dict(target.settings))


class TargetsNotCompiled(ConversionError):
    """A requested target could not be compiled. Raised by ``convert()`` *after* OUT/ was
    written (the INT8 models, the report saying why), like FormatsNotWritten."""

    def __init__(self, report: Any, out_dir: Path, failed: dict[str, str]):
        self.report, self.out_dir, self.failed = report, out_dir, failed
        lines = [f"{name} not compiled: {why}" for name, why in sorted(failed.items())]
        super().__init__(f"{'; '.join(lines)} (the INT8 models are in {out_dir}/)")
