"""Calibration: run the optimized float graph on the calibration set and pick a range
for every activation tensor.

One pass over the data. Each tensor keeps its min/max and a signed histogram over
[-R, R] (R a power of two; when a value falls outside, bins are merged in pairs and R
doubles, so no second pass is needed). Range methods:

- ``minmax``      the observed [min, max];
- ``percentile``  two-sided percentile of the histogram (default 99.999);
- ``mse``         [t*min, t*max] for the t in (0.3..1] minimising the expected squared
                  error of int8 quantization (clipping + rounding) over the histogram.

Default: ``minmax``, chosen by measurement (``python hw-bench/bench_converter.py``, table
"edgeship calibration methods"; eval accuracy / top-1 agreement / output SQNR):

    model      minmax              percentile 99.999   mse
    cnn        99.25 / 99.75 / 43.1  99.25 / 99.75 / 42.0  99.00 / 99.50 / 44.4
    mlp        97.37 / 100   / 43.2  97.37 / 100   / 43.1  97.37 / 100   / 41.1
    mobilenet  98.75 / 100   / 37.4  98.75 / 99.75 / 37.9  98.75 / 99.75 / 37.0

minmax is never worse on accuracy or agreement; clipping the tails buys < 1.5 dB of
SQNR at best and costs top-1 decisions on these small, well-trained models. The robust
methods stay available (``--calibration``) for models with real outliers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import numpy as np

from edgeship._errors import CalibrationError

from ._evaluate import sample_count
from ._ir import Graph

BINS = 8192
BATCH_BYTES = 256 << 20  # activations of one calibration run (sum over fetched tensors)
# runs started while one run's statistics are counted: each run is single-threaded (its
# values do not depend on this), so two cores calibrate at once when memory allows
AHEAD = 2
RECORD_BYTES = 128 << 20  # the float output kept for the samples asked (``record``)
CHUNK = 1 << 20  # elements per float64 slice when a large tensor is binned


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration set."""

    histogram: bool = True  # minmax needs none, and skipping it halves calibration time
    lo: float = math.inf
    hi: float = -math.inf
    radius: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1)
        if x.size == 0:
            return
        mn, mx = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, mn), max(self.hi, mx)
        if not self.histogram:
            return
        a = max(abs(mn), abs(mx))
        if a == 0.0:
            self.hist[BINS // 2] += x.size
            return
        if self.radius == 0.0:
            self.radius = 2.0 ** math.ceil(math.log2(a))
        while a > self.radius:
            self._grow()
        per_bin = BINS / (2 * self.radius)
        for start in range(0, x.size, CHUNK):  # bounded float64/int64 temporaries
            part = x[start : start + CHUNK].astype(np.float64)
            idx = ((part + self.radius) * per_bin).astype(np.int64)
            np.clip(idx, 0, BINS - 1, out=idx)
            self.hist += np.bincount(idx, minlength=BINS)

    def _grow(self) -> None:
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        pad = np.zeros(BINS // 4, np.int64)
        self.hist = np.concatenate([pad, merged, pad])
        self.radius *= 2.0

    def centers(self) -> np.ndarray:
        edges = np.linspace(-self.radius, self.radius, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


def range_minmax(st: TensorStats, _: float) -> tuple[float, float]:
    return st.lo, st.hi


def range_percentile(st: TensorStats, pct: float) -> tuple[float, float]:
    if st.radius == 0.0:
        return st.lo, st.hi
    cdf = np.cumsum(st.hist) / st.hist.sum()
    c = st.centers()
    tail = (100.0 - pct) / 100.0
    lo = float(c[np.searchsorted(cdf, tail)])
    hi = float(c[min(int(np.searchsorted(cdf, 1.0 - tail)), BINS - 1)])
    return max(st.lo, lo), min(st.hi, hi)


def range_mse(st: TensorStats, _: float) -> tuple[float, float]:
    if st.radius == 0.0:
        return st.lo, st.hi
    c, n = st.centers(), st.hist.astype(np.float64)
    used = n > 0
    c, n = c[used], n[used]
    best, best_t = math.inf, 1.0
    for t in np.linspace(1.0, 0.3, 36):
        lo, hi = min(st.lo * t, 0.0), max(st.hi * t, 0.0)
        scale = max(hi - lo, 1e-12) / 255.0
        q = np.clip(np.round((c - lo) / scale), 0, 255) * scale + lo
        err = float(np.dot(n, (q - c) ** 2))
        if err < best * (1.0 - 1e-12):  # ties keep the wider range
            best, best_t = err, float(t)
    return st.lo * best_t, st.hi * best_t


METHODS: dict[str, Callable[[TensorStats, float], tuple[float, float]]] = {
    "minmax": range_minmax,
    "percentile": range_percentile,
    "mse": range_mse,
}


@dataclass
class Collected:
    """Statistics of every activation tensor, and how calibration batched the samples."""

    stats: dict[str, TensorStats]
    batch: int  # samples per onnxruntime run
    tensor_bytes: dict[str, int]  # bytes of one sample of each activation tensor
    # per-position mean over the samples (batch axis dropped) of the tensors asked for
    means: dict[str, np.ndarray] = field(default_factory=dict)
    # the same means over the first ``mean_split`` samples only (a held-out check's fit)
    head_means: dict[str, np.ndarray] = field(default_factory=dict)
    # per-channel minimum / maximum of the tensors asked for (``channels_of``)
    channel_lo: dict[str, np.ndarray] = field(default_factory=dict)
    channel_hi: dict[str, np.ndarray] = field(default_factory=dict)
    # the graph's first output on the samples asked for (``record``), batch 1: later
    # checks compare their INT8 models against it instead of running the float graph again
    outputs: dict[int, np.ndarray] = field(default_factory=dict)

    def recorded(self, start: int, stop: int) -> list[np.ndarray] | None:
        """The kept float outputs of samples ``start`` to ``stop`` (None: not all kept)."""
        if not all(i in self.outputs for i in range(start, stop)):
            return None
        return [self.outputs[i] for i in range(start, stop)]

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's activations (every fetched tensor)."""
        return sum(self.tensor_bytes.values())


def batch_size(sample_bytes: int, count: int, max_batch: int, batch_bytes: int) -> int:
    """Samples per run so that one run's activations stay within ``batch_bytes``
    (1 when one sample is already over it)."""
    fit = batch_bytes // max(sample_bytes, 1)
    return int(max(1, min(max_batch, count, fit)))


def collect(
    graph: Graph,
    feeds: dict[str, np.ndarray],
    *,
    histograms: bool = True,
    progress: bool = False,
    batch: int = 16,
    batch_bytes: int = BATCH_BYTES,
    mean_of: frozenset[str] = frozenset(),
    mean_split: int = 0,
    channels_of: frozenset[str] = frozenset(),
    observer: SampleObserver | None = None,
    record: frozenset[int] = frozenset(),
) -> Collected:
    """Run the float graph on every sample; returns stats for every activation tensor.

    Memory is bounded by one run's activations: the first sample runs alone to measure
    them, then samples go ``n`` at a time with ``n <= batch`` chosen so that ``n``
    samples' activations fit in ``batch_bytes``, and each tensor's statistics are
    updated (running min/max, histogram) before the next run. Runs of ``n > 1`` use a
    copy of the graph with a dynamic batch axis, when that copy gives the same outputs
    as batch 1 on the first samples (it does not when, e.g., a Reshape hard-codes the
    batch); else samples go one at a time. ``mean_of``: tensors whose mean over the
    samples is kept too (bias correction's inputs; float32 sums, one sample's size), and
    with ``mean_split`` also their mean over the first ``mean_split`` samples;
    ``channels_of``: tensors whose per-channel min / max is kept (axis 1 of a 4-D tensor,
    else the last axis; the cross-layer equalization guard). ``observer``: gets each
    sample's values (batch 1) of its ``inputs`` as the run produces them, or is told
    ``batched()`` when the samples go in batches (learned rounding's Grams, which then
    run on their own). ``record``: samples whose first graph output is kept (see
    :attr:`Collected.outputs`; none when they would pass ``RECORD_BYTES``)."""
    names = graph.activations()
    stats = {n: TensorStats(histogram=histograms) for n in names}
    sums: dict[str, np.ndarray] = {}
    sess, fetch = _session(graph, dynamic_batch=False)
    count = sample_count(feeds)
    first: list[Any] | None = _run(sess, fetch, {k: v[:1] for k, v in feeds.items()}, 0)
    tensor_bytes = {k: v[:1].nbytes for k, v in feeds.items()}
    tensor_bytes.update(
        (name, v.nbytes) for name, v in zip(fetch, first or [], strict=True) if isinstance(v, np.ndarray)
    )
    batch = batch_size(sum(tensor_bytes.values()), count, batch, batch_bytes)
    if batch > 1:
        batched = _batched_session(graph, feeds, sess, fetch)
        if batched is None:
            batch = 1
        else:  # every sample goes through the batched copy, the first one too
            sess, first = batched, None
    if observer is not None and (batch > 1 or not set(observer.inputs) <= {*fetch, *feeds}):
        observer.batched()  # it runs the samples itself
        observer = None
    starts = sorted({*range(0, count, batch), *([mean_split] if 0 < mean_split < count else [])})
    chunks = list(zip(starts, [*starts[1:], count], strict=True))
    ahead = AHEAD if (AHEAD + 1) * batch * sum(tensor_bytes.values()) <= batch_bytes else 0
    kept: dict[int, np.ndarray] = {}
    out_at = _record_index(graph, fetch, tensor_bytes, record, count)
    head: dict[str, np.ndarray] = {}
    # rows summed per tensor: the samples, or more where axis 0 is not the batch (a Gemm
    # input [T, K] of a batch-1 graph: its mean row is what bias correction needs)
    rows: dict[str, int] = {}
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    runs = _in_order(sess, fetch, feeds, chunks, first, ahead)
    del first  # the generator holds it until handed over
    with _progress_bar(progress, count) as advance:
        for (i, end), values in zip(chunks, runs, strict=True):
            sample = {k: v[i:end] for k, v in feeds.items()}
            if out_at is not None:
                _keep(kept, record, i, end, values[out_at], batched=batch > 1)
            if observer is not None:
                _observe(observer, fetch, sample, values)
            _accumulate(sums, mean_of, fetch, sample, values, rows)
            _channel_range(lo, hi, channels_of, fetch, values)
            _update(stats, fetch, sample, values)
            del values  # before the next run allocates its outputs
            if end == mean_split:
                head = {k: (v / rows[k]).astype(np.float32) for k, v in sums.items()}
            advance(end - i)
    means = {k: (v / rows[k]).astype(np.float32) for k, v in sums.items()}
    return Collected(stats, batch, tensor_bytes, means, head or means, lo, hi, kept)


def _in_order(
    sess: Any,
    fetch: list[str],
    feeds: dict[str, np.ndarray],
    chunks: list[tuple[int, int]],
    first: list[Any] | None,
    ahead: int,
) -> Iterator[list[Any]]:
    """Each chunk's outputs, in chunk order (``first``: chunk 0's, already run). With
    ``ahead``, that many later chunks run on worker threads while the caller counts one
    (onnxruntime releases the GIL; a session may run on several threads at once)."""
    def run(chunk: tuple[int, int]) -> list[Any]:
        i, end = chunk
        return _run(sess, fetch, {k: v[i:end] for k, v in feeds.items()}, i)

    todo = iter(chunks)
    if first is not None:
        next(todo)
        yield first
        first = None
    if not ahead:
        yield from map(run, todo)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="calibrate")
    try:
        pending: deque[Future[list[Any]]] = deque(pool.submit(run, c) for c in islice(todo, ahead))
        while pending:
            values = pending.popleft().result()
            pending.extend(pool.submit(run, c) for c in islice(todo, 1))
            yield values
            del values
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _record_index(
    graph: Graph, fetch: list[str], tensor_bytes: dict[str, int], record: frozenset[int],
    count: int,
) -> int | None:
    """Where the first graph output is in ``fetch``, when ``record`` asks for it and its
    samples fit in ``RECORD_BYTES``."""
    wanted = [i for i in record if 0 <= i < count]
    if not wanted or not graph.output_names or graph.output_names[0] not in fetch:
        return None
    name = graph.output_names[0]
    if tensor_bytes.get(name, 0) * len(wanted) > RECORD_BYTES:
        return None
    return fetch.index(name)


def _keep(
    kept: dict[int, np.ndarray], record: frozenset[int], i: int, end: int, value: Any,
    *, batched: bool,
) -> None:
    """Copies of samples ``i..end``'s output rows asked for (axis 0 is the batch of a
    batched run; a one-sample run's output is the sample's, whatever its layout)."""
    if not isinstance(value, np.ndarray) or value.dtype != np.float32:
        return
    for s in range(i, end):
        if s in record:
            kept[s] = np.array(value[s - i : s - i + 1] if batched else value)


class SampleObserver(Protocol):
    """Someone who reads calibration's float values as they are produced."""

    inputs: list[str]  # the tensors it wants (graph inputs included)

    def add(self, values: dict[str, Any]) -> None: ...

    def batched(self) -> None: ...


def _observe(
    observer: SampleObserver, fetch: list[str], sample: dict[str, np.ndarray], values: list[Any]
) -> None:
    index = {name: j for j, name in enumerate(fetch)}
    observer.add({
        name: sample[name] if name in sample else values[index[name]] for name in observer.inputs
    })


def _channel_range(
    lo: dict[str, np.ndarray],
    hi: dict[str, np.ndarray],
    channels_of: frozenset[str],
    fetch: list[str],
    values: list[Any],
) -> None:
    """Per-channel running min / max of the ``channels_of`` tensors in this run."""
    for j, name in enumerate(fetch):
        v = values[j]
        if name not in channels_of or not isinstance(v, np.ndarray) or v.ndim < 2:
            continue
        axis = 1 if v.ndim == 4 else v.ndim - 1
        flat = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
        mn, mx = flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
        lo[name] = mn if name not in lo else np.minimum(lo[name], mn)
        hi[name] = mx if name not in hi else np.maximum(hi[name], mx)


def _accumulate(
    sums: dict[str, np.ndarray],
    mean_of: frozenset[str],
    fetch: list[str],
    sample: dict[str, np.ndarray],
    values: list[Any],
    rows: dict[str, int],
) -> None:
    """Add this run's samples of the ``mean_of`` tensors to their running sums (and the
    rows summed to ``rows``)."""
    if not mean_of:
        return
    found = [(k, v) for k, v in sample.items() if k in mean_of]
    found += [(n, values[j]) for j, n in enumerate(fetch) if n in mean_of]
    for name, v in found:
        if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim == 0:
            continue
        # one row: the row itself (the same float64 values as its float64 sum, without
        # numpy's buffered reduction over an axis of length 1)
        part = v[0] if v.shape[0] == 1 else v.sum(axis=0, dtype=np.float64)
        if name in sums and sums[name].shape == part.shape:
            sums[name] += part  # float32 rows are added as float64
            rows[name] += v.shape[0]
        elif name not in sums:
            sums[name] = part.astype(np.float64)  # a copy: the run's buffer is not kept
            rows[name] = v.shape[0]


def _run(sess: Any, fetch: list[str], sample: dict[str, np.ndarray], i: int) -> list[Any]:
    try:
        return list(sess.run(fetch, sample))
    except Exception as exc:
        raise CalibrationError(f"calibration sample {i} fails: {_first_line(exc)}") from exc


def _update(
    stats: dict[str, TensorStats],
    fetch: list[str],
    sample: dict[str, np.ndarray],
    values: list[Any],
) -> None:
    for k, v in sample.items():
        if k in stats:
            stats[k].update(v)
    for j, name in enumerate(fetch):
        v = values[j]
        values[j] = None  # each tensor is freed once counted
        if name in stats and isinstance(v, np.ndarray) and v.dtype == np.float32:
            stats[name].update(v)


def _session(graph: Graph, *, dynamic_batch: bool) -> tuple[Any, list[str]]:
    import onnxruntime as ort

    outputs = [n for n in graph.activations() if n not in graph.input_names]
    model = graph.to_model(extra_outputs=[n for n in outputs if n not in graph.output_names])
    if dynamic_batch:
        del model.graph.value_info[:]
        for v in [*model.graph.input, *model.graph.output]:
            dims = v.type.tensor_type.shape.dim
            if len(dims):
                dims[0].dim_param = "N"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one thread: identical ranges, hence identical bytes
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # the arena would keep the peak of a run for good
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise CalibrationError(
            f"onnxruntime cannot run the float model: {_first_line(exc)}"
        ) from exc
    return sess, [o.name for o in sess.get_outputs()]


def _batched_session(
    graph: Graph, feeds: dict[str, np.ndarray], single: Any, fetch: list[str]
) -> Any:
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # fatal only: a failing probe (batch hard-coded) is expected
    try:
        sess, _ = _session(graph, dynamic_batch=True)
        two = sess.run(fetch, {k: v[:2] for k, v in feeds.items()}, quiet)
    except Exception:
        return None
    for i in range(2):
        one = single.run(fetch, {k: v[i : i + 1] for k, v in feeds.items()})
        for a, b in zip(one, two, strict=True):
            if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
                return None
            if a.ndim == 0 or b.ndim == 0:  # a scalar (a size computed from the input shape)
                return None  # has no batch axis: run one sample at a time
            if a.shape[1:] != b.shape[1:] or len(b) != 2:
                return None
            if not np.allclose(a[0], b[i], rtol=1e-4, atol=1e-5):
                return None
    return sess


def ranges(
    stats: dict[str, TensorStats], method: str, pct: float
) -> dict[str, tuple[float, float]]:
    fn = METHODS[method]
    return {name: fn(st, pct) for name, st in stats.items() if st.lo <= st.hi}


class _progress_bar:
    """A rich progress bar on stderr (or nothing) that yields an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.bar: Any = None  # a rich Progress while shown

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:  # keep logs and captured stderr clean
            return lambda n: None

        self.bar = Progress(
            "calibrating",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task("calibrate", total=self.total)
        bar = self.bar
        return lambda n: bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
