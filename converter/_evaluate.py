"""Measure what quantization cost: fp32 vs int8 accuracy, top-1 agreement, output and
per-layer SQNR (dB), and single-sample latency, all in real onnxruntime sessions."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from edgeship._errors import InferenceError

SQNR_CAP_DB = 120.0  # reported when the int8 tensor equals the float one exactly
CHUNK = 1 << 20  # elements per float64 slice when summing a large tensor's power
LAYER_SQNR_BYTES = 4 << 30  # fp32 activations per-layer SQNR compares (bounds its time)
GROUP_BYTES = 384 << 20  # fp32 tensors of one SQNR run per sample (the int8 model's as many)


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
    """An onnxruntime CPU session without the memory arena: the arena keeps its peak
    for the life of the session, and measurement sessions fetch every activation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
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
    return np.asarray(flat.argmax(axis=1))


def sample_count(feeds: Mapping[str, np.ndarray]) -> int:
    """How many samples ``feeds`` holds (axis 0 of its inputs, which agree)."""
    return len(next(iter(feeds.values())))


def samples(feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Each sample of ``feeds`` as a batch-1 feed (views, no copies)."""
    for i in range(sample_count(feeds)):
        yield {k: v[i : i + 1] for k, v in feeds.items()}


def run_all(
    sess: Any, feeds: dict[str, np.ndarray], names: list[str] | None = None
) -> list[np.ndarray]:
    """Run every sample (batch 1) and stack each requested output over samples (holds
    them all: for a few outputs only; measurements stream with :class:`SqnrSum`)."""
    fetch = names or [sess.get_outputs()[0].name]
    rows: list[list[np.ndarray]] = [[] for _ in fetch]
    for feed in samples(feeds):
        outs = sess.run(fetch, feed)
        for row, out in zip(rows, outs, strict=True):
            row.append(np.asarray(out, np.float32))
    return [np.concatenate(r) if r[0].ndim else np.stack(r) for r in rows]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    total = SqnrSum()
    total.add(ref, test)
    return total.db()


@dataclass
class SqnrSum:
    """Signal and noise power summed over samples, so that SQNR over a set needs one
    sample in memory at a time. Large tensors are summed in chunks of float64."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref, test = ref.reshape(-1), np.asarray(test).reshape(-1)
        for start in range(0, ref.size, CHUNK):
            r = ref[start : start + CHUNK].astype(np.float64)
            err = r - test[start : start + CHUNK].astype(np.float64)
            self.noise += float(np.sum(err * err))  # not np.dot: BLAS may thread the sum
            self.signal += float(np.sum(r * r))

    def db(self) -> float:
        if self.noise == 0.0:
            return SQNR_CAP_DB
        if self.signal == 0.0:
            return -SQNR_CAP_DB
        return min(SQNR_CAP_DB, 10.0 * math.log10(self.signal / self.noise))


def latency_ms(sess: Any, sample: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):
        sess.run(None, sample)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, sample)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def compare_outputs(
    s32: Any, s8: Any, feeds: dict[str, np.ndarray],
    recorded: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-1 predictions of both sessions' first output and its SQNR, one sample at a
    time (a detector's output over an eval set would not fit in memory). ``recorded``:
    the float model's first output on each sample (batch 1), kept from an earlier run of
    it (calibration's); then ``s32`` is not run and may be None."""
    n8 = s8.get_outputs()[0].name
    if recorded is None:
        n32 = s32.get_outputs()[0].name
        refs: Iterable[Any] = (s32.run([n32], feed)[0] for feed in samples(feeds))
    else:
        refs = recorded
    p32, p8, total = [], [], SqnrSum()
    for feed, y32 in zip(samples(feeds), refs, strict=True):
        (y8,) = s8.run([n8], feed)
        y32, y8 = np.asarray(y32, np.float32), np.asarray(y8, np.float32)
        p32.append(predictions(y32.reshape(1, -1)))
        p8.append(predictions(y8.reshape(1, -1)))
        total.add(y32, y8)
    return np.concatenate(p32), np.concatenate(p8), total.db()


def evaluate(
    fp32: bytes, int8: bytes, feeds: dict[str, np.ndarray], labels: np.ndarray | None, *, runs: int
) -> EvalResult:
    s32, s8 = session(fp32), session(int8)
    p32, p8, out_db = compare_outputs(s32, s8, feeds)
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
        output_sqnr_db=out_db,
        fp32_latency_ms=latency_ms(s32, first, runs),
        int8_latency_ms=latency_ms(s8, first, runs),
    )


def layer_samples(requested: int, sample_bytes: int) -> int:
    """Samples for per-layer SQNR: ``requested``, fewer when their activations would
    pass ``LAYER_SQNR_BYTES`` (a 640x640 detector's 700 MB a sample made it minutes),
    never fewer than 4. Memory does not depend on it (one sample at a time)."""
    fit = LAYER_SQNR_BYTES // max(sample_bytes, 1)
    return int(min(requested, max(4, fit)))


def layer_sqnr(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    tensor_map: dict[str, str],
    feeds: dict[str, np.ndarray],
    *,
    tensor_bytes: Mapping[str, int] | None = None,
    group_bytes: int | None = None,
) -> dict[str, float]:
    """SQNR of every quantized activation: fp32 tensor vs the int8 model's dequantized one."""
    order = sorted(tensor_map)
    dbs = sqnr_pairs(
        fp32_model,
        int8_model,
        [(n, tensor_map[n]) for n in order],
        feeds,
        tensor_bytes=tensor_bytes,
        group_bytes=group_bytes,
    )
    return dict(zip(order, dbs, strict=True))


def sqnr_pairs(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    pairs: list[tuple[str, str]],
    feeds: dict[str, np.ndarray],
    *,
    tensor_bytes: Mapping[str, int] | None = None,
    group_bytes: int | None = None,
) -> list[float]:
    """SQNR (dB) of each ``(fp32 tensor, int8-model tensor)`` pair over ``feeds``; an
    fp32 name that is a model input compares against the data itself.

    Memory holds one sample's tensors of one group, not every sample's: pairs are cut
    into groups whose fp32 tensors weigh at most ``group_bytes`` per sample
    (``tensor_bytes``: bytes of one sample of each fp32 tensor; unknown ones count 0),
    both models run once per sample and group with that group's tensors as outputs,
    and each pair's signal and noise power go into running sums. With the int8 model's
    tensors exposed, onnxruntime runs its QDQ nodes unfused (float math on dequantized
    values); the output SQNR of the deployed model is :func:`compare_outputs`'."""
    sizes = [(tensor_bytes or {}).get(ref, 0) for ref, _ in pairs]
    sums = [SqnrSum() for _ in pairs]
    for group in byte_groups(sizes, GROUP_BYTES if group_bytes is None else group_bytes):
        group_pairs, group_sums = [pairs[i] for i in group], [sums[i] for i in group]
        _sqnr_group(fp32_model, int8_model, group_pairs, feeds, group_sums)
    return [total.db() for total in sums]


def byte_groups(sizes: list[int], limit: int) -> list[list[int]]:
    """Indices of ``sizes`` cut, in order, into runs that sum to at most ``limit`` (an
    item larger than ``limit`` is a group of its own)."""
    groups: list[list[int]] = [[]]
    used = 0
    for item, size in enumerate(sizes):
        if groups[-1] and used + size > limit:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return [g for g in groups if g]


def _sqnr_group(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    pairs: list[tuple[str, str]],
    feeds: dict[str, np.ndarray],
    sums: list[SqnrSum],
) -> None:
    refs = list(dict.fromkeys(r for r, _ in pairs if r not in feeds))
    tests = list(dict.fromkeys(t for _, t in pairs))
    s32 = session(_with_outputs(fp32_model, refs)) if refs else None
    s8 = session(_with_outputs(int8_model, tests))
    for feed in samples(feeds):
        ref = dict(zip(refs, s32.run(refs, feed), strict=True)) if s32 is not None else {}
        ref.update((n, v) for n, v in feed.items())  # model inputs: the data itself
        got = dict(zip(tests, s8.run(tests, feed), strict=True))
        for (r, t), total in zip(pairs, sums, strict=True):
            total.add(np.asarray(ref[r], np.float32), np.asarray(got[t], np.float32))
        del ref, got  # before the next sample's outputs arrive


def _with_outputs(model: onnx.ModelProto, extra: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``extra`` only (fewer outputs: onnxruntime
    reuses the buffers of every other tensor)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inputs = {i.name for i in m.graph.input}
    outputs = {o.name: o for o in m.graph.output}
    del m.graph.output[:]
    m.graph.output.extend(
        outputs.get(n) or onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in extra
        if n not in inputs
    )
    return m
