"""OpenVINO targets (pip ``openvino``, extra ``openvino``): OpenVINO reads the QDQ ONNX
itself, so there is no artifact to write; what is checked is that it takes the INT8 path
and how fast it is here.

- ``openvino-cpu``: compile for this machine's CPU and read the compiled model's
  execution graph: every compute layer (convolution, fully connected, matmul) reports the
  precision it runs in (``runtimePrecision``: u8/i8 is the INT8 path, f32 is not).
  Latency (1 thread, median) is measured against onnxruntime on the same INT8 ONNX, and
  the outputs of both on the same inputs are compared.
- ``openvino-npu``: the same on an Intel NPU; a machine without one (OpenVINO lists its
  devices) gets ``compiled=False`` and says so.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship._errors import ConversionError

from . import _evaluate
from ._compat import advise
from ._targets import Target, TargetInputs, TargetResult

# OpenVINO execution-graph layer types that hold the MACs
COMPUTE_LAYERS = frozenset({
    "Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul",
    "BinaryConvolution",
})
INT8 = frozenset({"u8", "i8"})


@dataclass(frozen=True, kw_only=True)
class OpenVinoResult(TargetResult):
    device: str = "CPU"
    openvino_version: str = ""
    int8_path: bool = False  # every compute layer runs in u8/i8
    latency_ms: float | None = None  # OpenVINO, 1 thread, median
    onnxruntime_latency_ms: float | None = None  # same INT8 ONNX, same inputs, 1 thread
    speedup: float | None = None  # onnxruntime / OpenVINO
    max_abs_diff: float | None = None  # first output, OpenVINO vs onnxruntime INT8
    top1_agreement: float | None = None  # % of samples with the same argmax
    samples: int = 0


def compile_openvino(target: Target, inputs: TargetInputs) -> OpenVinoResult:
    import openvino as ov

    device = target.settings["device"]
    core = ov.Core()
    if device not in core.available_devices:
        seen = ", ".join(core.available_devices) or "none"
        raise ConversionError(f"no {device} device on this machine (OpenVINO sees: {seen})")
    try:
        model = core.read_model(str(inputs.onnx))
        compiled = core.compile_model(model, device, {
            "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
        } if device == "CPU" else {"PERFORMANCE_HINT": "LATENCY"})
    except Exception as exc:  # OpenVINO's own message, one line
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConversionError(f"OpenVINO cannot compile the INT8 ONNX for {device}: {detail[:300]}") from exc
    layers = compute_layers(compiled.get_runtime_model())
    float_rows = tuple(
        {"op": kind, "node": name, "reason": f"runs in {precision}, not int8"}
        for name, kind, precision in layers if precision not in INT8
    )
    timing = _compare(compiled, inputs)
    return OpenVinoResult(
        target=target.name, compiler=f"openvino {ov.get_version().split('-')[0]}", compiled=True,
        ops_total=len(layers), ops_on_npu=len(layers) - len(float_rows),
        cpu_ops=float_rows,
        advice=advise(target.name, float_rows, [], [], []) if float_rows else
        "none: every compute layer runs in int8",
        settings=dict(target.settings), device=device, openvino_version=ov.get_version(),
        int8_path=bool(layers) and not float_rows, **timing,
    )


def compute_layers(runtime_model: Any) -> list[tuple[str, str, str]]:
    """(name, layer type, runtime precision) of each compute layer of an executed graph."""
    rows = []
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in COMPUTE_LAYERS:
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            rows.append((op.get_friendly_name(), kind, precision.lower()))
    return rows


def _compare(compiled: Any, inputs: TargetInputs) -> dict[str, Any]:
    """Latency of both runtimes on the first sample, outputs of both on every sample."""
    feeds = list(_evaluate.samples(inputs.samples))
    if not feeds:
        return {}
    session = _evaluate.session(inputs.onnx.read_bytes(), threads=1)
    request = compiled.create_infer_request()
    names = [i.name for i in session.get_inputs()]
    ort_out, ov_out = [], []
    for feed in feeds:
        ort_out.append(np.asarray(session.run(None, feed)[0], np.float32))
        result = request.infer({name: feed[name] for name in names})
        ov_out.append(np.asarray(result[compiled.output(0)], np.float32))
    a, b = np.concatenate(ort_out), np.concatenate(ov_out)
    agree = _evaluate.predictions(a) == _evaluate.predictions(b)
    ort_ms = _evaluate.latency_ms(session, feeds[0], inputs.latency_runs)
    ov_ms = _latency_ms(request, {name: feeds[0][name] for name in names}, inputs.latency_runs)
    return {
        "latency_ms": round(ov_ms, 4), "onnxruntime_latency_ms": round(ort_ms, 4),
        "speedup": round(ort_ms / ov_ms, 3) if ov_ms > 0 else None,
        "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        "top1_agreement": round(100.0 * float(np.mean(agree)), 2), "samples": len(feeds),
    }


def _latency_ms(request: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):
        request.infer(feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))
