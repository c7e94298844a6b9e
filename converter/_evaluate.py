"""Measure what quantization cost: fp32 vs int8 accuracy, top-1 agreement, output and
per-layer SQNR (dB), and single-sample latency, all in real onnxruntime sessions."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from edgeship._errors import InferenceError

SQNR_CAP_DB = 120.0  # reported when the int8 tensor equals the float one exactly


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Accuracy and speed of the fp32 and int8 models on an eval set."""

    samples: int
    fp32_accuracy: float | None  # percent; None without labels
    int8_accuracy: float | None
    agreement: float  # percent of samples whose top-1 (or threshold 0.5) class matches
    output_sqnr_db: float
    fp32_latency_ms: float  # median of single-sample runs, one thread
    int8_latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def session(model: onnx.ModelProto | bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InferenceError(
            f"onnxruntime cannot load the model: {str(exc).strip()[:300]}"
        ) from exc


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Class ids from the first output: argmax, or probability > 0.5 for one column."""
    flat = outputs.reshape(len(outputs), -1)
    if flat.shape[1] == 1:
        return (flat[:, 0] > 0.5).astype(np.int64)
    return flat.argmax(axis=1)


def run_all(
    sess: Any, feeds: dict[str, np.ndarray], names: list[str] | None = None
) -> list[np.ndarray]:
    """Run every sample (batch 1) and stack each requested output over samples."""
    count = len(next(iter(feeds.values())))
    fetch = names or [sess.get_outputs()[0].name]
    rows: list[list[np.ndarray]] = [[] for _ in fetch]
    for i in range(count):
        outs = sess.run(fetch, {k: v[i : i + 1] for k, v in feeds.items()})
        for row, out in zip(rows, outs, strict=True):
            row.append(np.asarray(out, np.float32))
    return [np.concatenate(r) if r[0].ndim else np.stack(r) for r in rows]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref64, err = ref.astype(np.float64), ref.astype(np.float64) - test.astype(np.float64)
    noise, signal = float(np.sum(err * err)), float(np.sum(ref64 * ref64))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def latency_ms(sess: Any, sample: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):
        sess.run(None, sample)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, sample)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def evaluate(
    fp32: bytes, int8: bytes, feeds: dict[str, np.ndarray], labels: np.ndarray | None, *, runs: int
) -> EvalResult:
    s32, s8 = session(fp32), session(int8)
    y32, y8 = run_all(s32, feeds)[0], run_all(s8, feeds)[0]
    p32, p8 = predictions(y32), predictions(y8)
    acc32 = acc8 = None
    if labels is not None:
        acc32 = float(100.0 * np.mean(p32 == labels))
        acc8 = float(100.0 * np.mean(p8 == labels))
    first = {k: v[:1] for k, v in feeds.items()}
    return EvalResult(
        samples=len(p32),
        fp32_accuracy=acc32,
        int8_accuracy=acc8,
        agreement=float(100.0 * np.mean(p32 == p8)),
        output_sqnr_db=sqnr_db(y32, y8),
        fp32_latency_ms=latency_ms(s32, first, runs),
        int8_latency_ms=latency_ms(s8, first, runs),
    )


def layer_sqnr(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    tensor_map: dict[str, str],
    feeds: dict[str, np.ndarray],
) -> dict[str, float]:
    """SQNR of every quantized activation: fp32 tensor vs the int8 model's dequantized one."""
    names = sorted(n for n in tensor_map if n not in feeds)
    f_out = [o.name for o in fp32_model.graph.output]
    q_out = [o.name for o in int8_model.graph.output]
    s32 = session(_with_outputs(fp32_model, [n for n in names if n not in f_out]))
    s8 = session(
        _with_outputs(int8_model, [tensor_map[n] for n in tensor_map if tensor_map[n] not in q_out])
    )
    ref = dict(zip(names, run_all(s32, feeds, names), strict=True)) if names else {}
    ref.update((n, feeds[n]) for n in tensor_map if n in feeds)  # model inputs: the data itself
    order = sorted(ref)
    if not order:  # nothing was quantized (every op stays float): no layer to compare
        return {}
    got = run_all(s8, feeds, [tensor_map[n] for n in order])
    return {n: sqnr_db(ref[n], g) for n, g in zip(order, got, strict=True)}


def _with_outputs(model: onnx.ModelProto, extra: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inputs = {i.name for i in m.graph.input}
    m.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in extra
        if n not in inputs
    )
    return m
