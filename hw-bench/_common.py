"""Shared helpers for ``hw-bench/bench_*.py``: machine info, result JSON, tables, timing.

A benchmark script is a plain program (``python hw-bench/bench_x.py``) that measures,
prints its table and the machine it ran on, and writes ``<results>/<name>.json``.
``edgeship bench`` discovers and runs the scripts; it tells them where to write through
``EDGESHIP_BENCH_OUT`` (a directory) and asks for a short run with
``EDGESHIP_BENCH_QUICK=1``. Use from a script::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info, print_machine, print_table, quick, timed, write_result

    rows = [{"model": "cnn", "p50_ms": 0.02}]
    print_machine()
    print_table(rows, title="runtime latency")
    write_result("runtime", {"rows": rows})

Result document (what the plots read; every key beyond these is the script's own)::

    {"bench": NAME, "created": ISO-8601 UTC, "machine": machine_info(), ...data}
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
OUT_ENV = "EDGESHIP_BENCH_OUT"
QUICK_ENV = "EDGESHIP_BENCH_QUICK"
_PACKAGES = ("edgeship", "numpy", "onnx", "onnxruntime", "ai-edge-litert", "tflite",
             "bsdiff4", "zstandard", "paho-mqtt")


def results_dir() -> Path:
    """Where results go: ``$EDGESHIP_BENCH_OUT`` when ``edgeship bench`` set it, else
    ``hw-bench/results``."""
    return Path(os.environ.get(OUT_ENV) or HERE / "results")


def quick() -> bool:
    """True when asked for a short run (``edgeship bench --quick``, or in tests)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _versions(names: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, memory, OS, Python and library versions."""
    memory = _memory_bytes()
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": _versions(_PACKAGES),
    }


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One line naming the machine, for a table's caption."""
    info = info or machine_info()
    memory = f", {info['memory_gib']} GiB" if info.get("memory_gib") else ""
    return (f"{info.get('cpu', '?')} ({info.get('arch', '?')}, {info.get('cpus', '?')} cpus"
            f"{memory}), {info.get('os', '?')}, Python {info.get('python', '?')}")


def print_machine(info: Mapping[str, Any] | None = None) -> None:
    print(f"machine: {machine_line(info)}", flush=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 title: str | None = None) -> str:
    """A plain-text table (the same text goes to a terminal, a log and the README)."""
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [f"## {title}"] if title else []
    for row in [columns, ["-" * w for w in widths], *cells]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                title: str | None = None) -> None:
    print(format_table(rows, columns, title), flush=True)


def timed(fn: Callable[[], Any], n: int, warmup: int = 10) -> dict[str, float]:
    """Latency of ``fn`` over ``n`` calls after ``warmup``: p50, p90, p99 and mean in ms."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000.0)
    samples.sort()

    def pct(p: float) -> float:
        return round(samples[min(len(samples) - 1, int(p / 100.0 * len(samples)))], 4)

    return {"n": n, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "mean_ms": round(sum(samples) / len(samples), 4)}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a crash leaves the old file or the new one, never half
    (edgeship's one crash-safe writer; results are world-readable, 0644)."""
    from edgeship.sdk._fileio import write_atomic

    write_atomic(path, text.encode("utf-8"))


def write_result(name: str, data: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``<results>/<name>.json`` with ``bench``, ``created`` and ``machine`` added."""
    doc: dict[str, Any] = {
        "bench": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "quick": quick(),
    }
    doc.update(data)
    path = (out_dir or results_dir()) / f"{name}.json"
    atomic_write_text(path, json.dumps(doc, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, Paths: what benchmark code tends to hand in."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def convert_mobilenet_tflite(tmp: Path) -> Path:
    """``edgeship convert`` of the mobilenet fixture to INT8 TFLite in ``tmp/converted``."""
    import subprocess
    import sys

    out = tmp / "converted"
    subprocess.run([sys.executable, "-m", "edgeship", "convert",
                    str(ROOT / "tests" / "fixtures" / "mobilenet.onnx"),
                    "--calib", str(ROOT / "tests" / "fixtures" / "mobilenet_calib.npz"),
                    "-o", str(out), "--format", "tflite"], check=True, capture_output=True)
    return out / "model.int8.tflite"


def ort_quantize_static(model: Path, out: Path, feeds: Iterable[Mapping[str, Any]]) -> None:
    """The onnxruntime baseline every bench compares with: ``quantize_static`` to QDQ,
    per-channel, int8 weights and activations (S8S8, what its docs recommend first for QDQ
    on x86), MinMax calibration over ``feeds`` (one input dict a sample), its default
    settings otherwise."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> Mapping[str, Any] | None:
            return next(self.feeds, None)

    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
