"""Processes and runtimes for ``bench_realworld.py``.

``measured(argv)`` runs one command as its own process and reads that process's own peak
RSS from ``os.wait4`` in a small launcher (its rusage alone: not the max over earlier
children, not the bench's own memory), with a wall-clock timeout and an RSS cap that ends
it before it takes the machine down.

Run as a script, this file is the worker for the two reference quantizers, so that each
one's time and memory are measured in a process of its own::

    python hw-bench/_realworld_run.py ort  MODEL.onnx CALIB.npz OUT.onnx
    python hw-bench/_realworld_run.py nncf MODEL.onnx CALIB.npz OUT.onnx
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Measured:
    """How one measured process ended."""

    code: int | None  # None: ended by the timeout or the RSS cap
    seconds: float
    peak_rss_mb: float
    output: str  # stdout + stderr, as text
    stopped: str | None  # why the bench ended it, if it did

    def error_line(self) -> str | None:
        """The one line that says why it failed (the last non-empty line of the output,
        the way every edgeship command ends on an error), or None when it succeeded."""
        if self.code == 0:
            return None
        if self.stopped:
            return self.stopped
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.lower().startswith(("error", "usage:"))
                  or "Error:" in ln or "error:" in ln]
        return (errors or lines or [f"exit {self.code}"])[-1][:300]


# A process's ru_maxrss starts at the RSS of the process image it replaced at exec (Linux
# keeps the high-water mark across execve), so a child forked from this bench would report
# at least the bench's own RSS. A small launcher forks the measured command instead and
# reads that command's own rusage with wait4: the floor is the launcher's ~10 MB.
_LAUNCHER = """
import os, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def _tree_rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and its descendants, MB (the cap watches the whole tree)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as handle:
                total += next((int(ln.split()[1]) for ln in handle if ln.startswith("VmRSS:")), 0) / 1024.0
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as handle:
                todo.extend(int(c) for c in handle.read().split())
        except (OSError, ValueError):
            continue
    return total


def measured(argv: Sequence[str], *, timeout: float, rss_cap_mb: float,
             cwd: Path | None = None, env: dict[str, str] | None = None) -> Measured:
    """Run ``argv`` (in its own session, niced) to its end; time, own peak RSS, output."""
    stopped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp:
        report, log_path = Path(tmp) / "rusage", Path(tmp) / "log"
        with open(log_path, "w+b") as log:
            began = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv],
                                    cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=lambda: os.nice(5))
            done = threading.Event()
            seen = [0.0]  # the largest RSS the watcher saw: the peak when the launcher is killed

            def watch() -> None:
                while not done.wait(0.2):
                    seen[0] = max(seen[0], _tree_rss_mb(proc.pid))
                    if time.monotonic() - began > timeout:
                        stopped.append(f"stopped by the bench after {timeout:.0f} s")
                    elif seen[0] > rss_cap_mb:
                        stopped.append(f"stopped by the bench: RSS over the {rss_cap_mb / 1024:.1f} GB cap")
                    else:
                        continue
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            proc.wait()
            seconds = time.monotonic() - began
            done.set()
            watcher.join()
            log.seek(0)
            output = log.read().decode("utf-8", "replace")
        code_text, _, rss_kb = (report.read_text().partition(" ") if report.exists()
                                else (str(proc.returncode), "", str(int(seen[0] * 1024))))
    code = None if stopped else int(code_text)
    return Measured(code=code, seconds=round(seconds, 2), peak_rss_mb=round(int(rss_kb) / 1024.0, 1),
                    output=output, stopped=stopped[0] if stopped else None)


# ----------------------------------------------------------------------------- runtimes
def ort_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # a model it cannot run raises; the bench prints that line
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, name: str, inputs: np.ndarray, threads: int = 1) -> list[list[np.ndarray]]:
    """Every output of every sample (one sample per run, batch 1)."""
    session = ort_session(path, threads)
    return [session.run(None, {name: inputs[i:i + 1]}) for i in range(len(inputs))]


def latency_ms(path: Path, name: str, sample: np.ndarray, runs: int, threads: int = 1) -> float:
    """Median wall time (ms) of ``runs`` single-sample runs after 3 warm-ups (timed as the
    converter's own evaluation times fp32 against int8)."""
    from edgeship.converter._evaluate import latency_ms as median_run_ms

    feed = {name: sample[None] if sample.ndim == 3 else sample}
    return median_run_ms(ort_session(path, threads), feed, runs)


@dataclass(frozen=True)
class Interleaved:
    """fp32 and INT8 timed in alternating rounds (same machine load for both)."""

    fp32_ms: float  # the fastest round's median
    int8_ms: float
    ratio: float  # int8_ms / fp32_ms: fastest round against fastest round
    median_ratio: float  # median over rounds of the paired per-round ratios


def interleaved_latency(fp32: Path, int8: Path, name: str, sample: np.ndarray, rounds: int, runs: int,
                        threads: int = 1) -> Interleaved:
    """INT8 vs fp32 the way bench_int8_speed.py times them: both sessions open, ``rounds``
    alternating rounds of ``runs`` single-sample runs each (more for a fast model, up to
    ~1/4 s a round; after warm-ups), a round's
    median per model. The fastest round of each is the one least disturbed by other load
    on the machine; the paired per-round ratios show how much the load moved it."""
    import statistics

    feed = {name: sample[None] if sample.ndim == 3 else sample}
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8, threads)}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    began = time.perf_counter()
    sessions["fp32"].run(None, feed)
    # a round of a fast model is lengthened to ~1/4 s (at most 100 runs): a round shorter
    # than the scheduler's slices under load says more about the load than the model
    runs = max(runs, min(100, int(0.25 / max(time.perf_counter() - began, 1e-6))))
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for label, session in sessions.items():
            times = []
            for _ in range(runs):
                began = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - began) * 1000.0)
            medians[label].append(statistics.median(times))
    fp32_ms, int8_ms = min(medians["fp32"]), min(medians["int8"])
    paired = [i / f for i, f in zip(medians["int8"], medians["fp32"], strict=True)]
    return Interleaved(fp32_ms, int8_ms, round(int8_ms / fp32_ms, 3), round(statistics.median(paired), 3))


def run_tflite(path: Path, inputs: np.ndarray, reference_shapes: Sequence[tuple[int, ...]],
               threads: int = 1) -> list[list[np.ndarray]]:
    """LiteRT outputs per sample, laid out like the ONNX model's (NHWC put back to NCHW when
    the TFLite file kept TFLite's layout at its edges)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outs = interp.get_output_details()
    results = []
    for i in range(len(inputs)):
        x = inputs[i:i + 1]
        if tuple(inp["shape"]) != x.shape and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
        interp.invoke()
        sample = []
        for detail, want in zip(outs, reference_shapes, strict=False):
            y = interp.get_tensor(detail["index"])
            if y.shape != tuple(want) and y.ndim == 4:
                y = y.transpose(0, 3, 1, 2)
            sample.append(y.reshape(want) if y.size == int(np.prod(want)) else y)
        results.append(sample)
    return results


# ----------------------------------------------------------------------------- reference quantizers
def _samples(calib: Path) -> tuple[str, list[np.ndarray]]:
    data = np.load(calib)
    name = data.files[0]
    return name, [data[name][i:i + 1] for i in range(len(data[name]))]


def ort_quantize(model: Path, calib: Path, out: Path) -> None:
    """onnxruntime ``quantize_static`` as every bench runs it (_common.ort_quantize_static).
    (Not ``CalibMaxIntermediateOutputs``: in onnxruntime 1.32 reaching it drops the
    collected samples instead of merging their ranges.)"""
    from _common import ort_quantize_static

    name, samples = _samples(calib)
    ort_quantize_static(model, out, ({name: s} for s in samples))


def nncf_quantize(model: Path, calib: Path, out: Path) -> None:
    """NNCF post-training quantization on the ONNX backend, default preset, every
    calibration sample."""
    import nncf
    import onnx

    name, samples = _samples(calib)
    quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset([{name: s} for s in samples]),
                              subset_size=len(samples))
    onnx.save(quantized, str(out))


WORKERS: dict[str, Callable[[Path, Path, Path], None]] = {"ort": ort_quantize, "nncf": nncf_quantize}


if __name__ == "__main__":
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    tool, model_path, calib_path, out_path = sys.argv[1:5]
    WORKERS[tool](Path(model_path), Path(calib_path), Path(out_path))
    print(f"{tool}: wrote {out_path}")
