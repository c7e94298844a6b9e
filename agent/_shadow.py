"""The shadow model: a candidate release run on live requests, off the answer path.

Public surface (the daemon wires it; H3)::

    tap = ShadowTap(ShadowConfig.from_dict(toml.get("shadow", {})), log=log)
    tap.start(model_bytes, fmt="onnx", version="1.1.0", runtime="auto", threads=1)
    service.taps = (*service.taps, tap)        # the Tap protocol of agent/_api.py
    tap.stats()  # -> {"version", "state": "running"|"crashed"|"stopped", "sampled",
                 #     "compared", "agreement", "max_abs_diff", "active_p50_ms",
                 #     "shadow_p50_ms", "dropped", "errors", ...}  (JSON-ready)
    tap.stop()                                  # on UnloadShadow; idempotent

* ``start`` takes the model's **plaintext bytes in memory** (the agent decrypted them):
  they go to the child over its stdin pipe and are loaded there from memory, never
  written to a file. It returns at once; the child starts and loads in the background.
  Calling ``start`` again replaces the running shadow.
* ``observe`` is the tap: it only looks at the active model's own answers (``source``
  ``local``, or ``local-degraded``: the local answer stood, the cloud was away), picks a
  ``sample`` fraction of them, skips while the shadow is over its CPU budget, and puts
  (inputs, outputs, seconds) on a queue bounded in count (``queue``) and bytes
  (``max_queue_bytes``; full or too big: counted in ``dropped``). It takes
  a lock for a few counters and never blocks on I/O or raises; answers are never changed.
* A feeder thread sends each queued request with the active answer to the child
  (``python -m edgeship.agent._shadow_worker``, framed raw arrays over pipes), which runs
  the shadow and compares there (top-1 per row when the last dimension is > 1, i.e.
  class scores; else ``|active - shadow| <= atol``), so the agent's GIL is held only to
  copy bytes; the feeder accounts the CPU time spent (child + feeder) against
  ``cpu_budget`` cores of wall time (token bucket): over budget, new samples are skipped
  (``budget_skipped``) until the time is paid back. The child also runs at ``os.nice``.
* A child that dies (crash, SIGKILL, load failure) or stops answering within
  ``timeout_s`` is logged, counted (``crashes``, ``errors``) and restarted after
  ``backoff_s * 2**n`` seconds, at most ``max_restarts`` times in a row (a child that
  served ``healthy_s`` seconds clears the count: a shadow run for days is not ended by
  rare crashes); then the state is ``"crashed"`` and the tap ignores traffic. A model raising on a request is an error
  reply from a live child (counted in ``errors``), not a crash.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeship.agent._shadow_pipe import Worker, WorkerDied
from edgeship.sdk._cpubucket import CpuBucket

from edgeship._errors import ConfigError

__all__ = ["ShadowConfig", "ShadowTap", "compare_outputs"]

_FORMATS = ("onnx", "tflite")
_LATENCIES = 512  # recent latencies kept for the p50s
_LOCAL = ("local", "local-degraded")  # answers that are the active model's outputs


@dataclass(frozen=True, kw_only=True)
class ShadowConfig:
    """The ``[shadow]`` table of agent.toml."""

    sample: float = 0.1  # fraction of local answers also sent to the shadow
    cpu_budget: float = 0.25  # fraction of one core the shadow may use, on average
    queue: int = 8  # sampled requests waiting for the shadow; more are dropped
    atol: float = 1e-3  # agreement tolerance for outputs that are not class scores
    max_restarts: int = 3
    backoff_s: float = 1.0
    healthy_s: float = 600.0  # a child that served this long clears the restart count
    timeout_s: float = 10.0  # one shadow inference; longer = the child is hung
    load_timeout_s: float = 120.0
    nice: int = 10
    max_request_bytes: int = 16 << 20  # one sampled request; bigger ones are dropped
    # what the waiting requests may hold in memory together (big inputs: fewer wait)
    max_queue_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        checks = [("sample", 0.0 < self.sample <= 1.0, "in (0, 1]"),
                  ("cpu_budget", 0.0 < self.cpu_budget <= 64.0, "in (0, 64]"),
                  ("queue", 1 <= self.queue <= 4096, "in [1, 4096]"),
                  ("atol", 0.0 <= self.atol < float("inf"), ">= 0"),
                  ("max_restarts", 0 <= self.max_restarts <= 1000, "in [0, 1000]"),
                  ("backoff_s", 0.0 <= self.backoff_s <= 3600, "in [0, 3600]"),
                  ("healthy_s", 0.0 < self.healthy_s <= 1e6, "in (0, 1e6]"),
                  ("timeout_s", 0.0 < self.timeout_s <= 3600, "in (0, 3600]"),
                  ("load_timeout_s", 0.0 < self.load_timeout_s <= 3600, "in (0, 3600]"),
                  ("nice", 0 <= self.nice <= 19, "in [0, 19]"),
                  ("max_request_bytes", 1024 <= self.max_request_bytes <= 1 << 30,
                   "in [1 KiB, 1 GiB]"),
                  ("max_queue_bytes", 1024 <= self.max_queue_bytes <= 1 << 34,
                   "in [1 KiB, 16 GiB]")]
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"shadow.{key}: must be {want}, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShadowConfig:
        """Build from the ``[shadow]`` table; unknown keys are ignored (newer files load)."""
        if not isinstance(d, Mapping):
            raise ConfigError("shadow: expected a table [shadow]")
        kwargs: dict[str, Any] = {}
        for key, default in cls().to_dict().items():
            if key not in d:
                continue
            value = d[key]
            want = int if isinstance(default, int) else (int, float)
            if isinstance(value, bool) or not isinstance(value, want):
                kind = "an integer" if want is int else "a number"
                raise ConfigError(f"shadow.{key}: expected {kind}, got {type(value).__name__}")
            kwargs[key] = type(default)(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def compare_outputs(active: Mapping[str, Any], shadow: Mapping[str, Any],
                    atol: float) -> tuple[bool, float | None]:
    """``(agree, max |active - shadow|)`` over the active model's outputs (pure).

    Class scores (last dimension > 1) agree when every row's top-1 class is the same;
    other outputs when every element is within ``atol``. A missing output or another
    shape disagrees, and has no difference (None) unless another output gives one.
    """
    import numpy as np

    agree, worst = True, None
    for name, value in active.items():
        a = np.asarray(value)
        s = shadow.get(name)
        if s is None or np.shape(s) != a.shape:
            agree = False
            continue
        a64, s64 = a.astype(np.float64), np.asarray(s, dtype=np.float64)
        diff = float(np.max(np.abs(a64 - s64))) if a.size else 0.0
        if diff != diff:  # NaN
            diff = float("inf")
        worst = diff if worst is None else max(worst, diff)
        if a.ndim >= 1 and a.shape[-1] > 1:
            agree = agree and bool(np.array_equal(np.argmax(a64, -1), np.argmax(s64, -1)))
        else:
            agree = agree and diff <= atol
    return agree, worst


def _nbytes(arrays: Mapping[str, Any]) -> int:
    """The bytes ``arrays`` hold (numpy arrays; anything else counts 0): a few us."""
    return sum(getattr(v, "nbytes", 0) for v in arrays.values())


def _p50(values: deque[float]) -> float | None:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 3) if ordered else None


def _default_log(event: str, level: str = "info", **fields: Any) -> None:
    logging.getLogger("edgeship.agent.shadow").log(
        logging.getLevelName(level.upper()), "%s %s", event, fields)


class ShadowTap:
    """Runs a shadow model beside the active one (see the module docstring)."""

    def __init__(self, config: ShadowConfig | None = None, *,
                 log: Callable[..., None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ShadowConfig()
        self._log = log or _default_log
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._queue: deque[tuple[Any, Any, float, int]] = deque()
        self._ready_at: float | None = None  # when the current child became ready
        self._queued_bytes = 0
        self._reset("", "stopped")

    def _reset(self, version: str, state: str) -> None:
        self.version, self.state = version, state
        self._ready = False
        self._acc = 0.0
        self._resume_at = 0.0
        self._queue.clear()
        self._queued_bytes = 0
        self._counts = dict.fromkeys(("sampled", "compared", "agreed", "dropped", "errors",
                                      "crashes", "restarts", "budget_skipped"), 0)
        self._max_diff: float | None = None
        self._active_ms: deque[float] = deque(maxlen=_LATENCIES)
        self._shadow_ms: deque[float] = deque(maxlen=_LATENCIES)

    # -- the daemon's side ------------------------------------------------------------

    def start(self, model: bytes, *, fmt: str, version: str, runtime: str = "auto",
              threads: int = 1) -> None:
        """Run ``model`` (plaintext bytes, in memory) as the shadow of ``version``."""
        if fmt not in _FORMATS:
            raise ConfigError(f"shadow model format {fmt!r} is not one of {_FORMATS}")
        self.stop()
        # a fresh event per run: a feeder of an earlier run that outlived stop()'s join
        # still sees its own event set and cannot pick up this run's work
        self._stopping = threading.Event()
        with self._lock:
            self._reset(version, "running")
        self._thread = threading.Thread(
            target=self._feed, args=(bytes(model), fmt, runtime, max(1, int(threads)),
                                     self._stopping),
            name=f"shadow-{version}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the feeder and the child (idempotent); the stats stay readable."""
        self._stopping.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker.proc.poll() is None:
            worker.proc.kill()  # unblocks a feeder stuck writing to a hung child
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        with self._lock:
            self._ready = False
            self._drop_queue()
            if self.state == "running":
                self.state = "stopped"

    def wait_ready(self, timeout: float) -> bool:
        """True once a child has loaded the model (tests and benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._ready or self.state != "running":
                return self._ready
            time.sleep(0.02)
        return self._ready

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.proc.pid if worker is not None else None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counts)
            agreed = c.pop("agreed")
            return {"version": self.version, "state": self.state, **c,
                    "agreement": round(agreed / c["compared"], 4) if c["compared"] else None,
                    "max_abs_diff": self._max_diff,
                    "active_p50_ms": _p50(self._active_ms),
                    "shadow_p50_ms": _p50(self._shadow_ms)}

    # -- the answer path --------------------------------------------------------------

    def observe(self, inputs: dict[str, Any], outputs: dict[str, Any], *, source: str,
                version: str, seconds: float) -> None:
        """The tap: maybe queue this answered request for the shadow; never blocks."""
        if source not in _LOCAL or self.state != "running":
            return
        with self._lock:
            self._acc += self.config.sample
            if self._acc < 1.0:
                return
            self._acc -= 1.0
            if self._resume_at and self._clock() < self._resume_at:
                self._counts["budget_skipped"] += 1
                return
            self._counts["sampled"] += 1
            # the queue keeps the arrays alive: bound it in bytes too, not only in count
            size = _nbytes(inputs) + _nbytes(outputs)
            if not self._ready or len(self._queue) >= self.config.queue \
                    or size > self.config.max_request_bytes \
                    or (self._queue and self._queued_bytes + size > self.config.max_queue_bytes):
                self._counts["dropped"] += 1
                return
            self._queue.append((inputs, outputs, seconds, size))
            self._queued_bytes += size
        self._wake.set()

    # -- the feeder thread ------------------------------------------------------------

    def _feed(self, model: bytes, fmt: str, runtime: str, threads: int,
              stopping: threading.Event) -> None:
        budget = CpuBucket(self.config.cpu_budget, self._clock())
        restarts = 0
        while not stopping.is_set():
            self._ready_at = None
            reason = self._run_worker(model, fmt, runtime, threads, budget, stopping)
            if stopping.is_set():
                break
            ready_at = self._ready_at
            if ready_at is not None and time.monotonic() - ready_at >= self.config.healthy_s:
                restarts = 0  # it served well for a long time: a fresh start, short backoff
            with self._lock:
                self._counts["crashes"] += 1
                self._counts["errors"] += 1
            if restarts >= self.config.max_restarts:
                self._log("shadow_crashed", level="error", version=self.version,
                          reason=reason, restarts=restarts)
                with self._lock:
                    self.state = "crashed"
                    self._drop_queue()
                break
            delay = self.config.backoff_s * 2 ** restarts
            restarts += 1
            self._log("shadow_worker_died", level="warning", version=self.version,
                      reason=reason, restart=restarts, of=self.config.max_restarts,
                      delay_s=delay)
            with self._lock:
                self._counts["restarts"] += 1
            if stopping.wait(delay):
                break

    def _run_worker(self, model: bytes, fmt: str, runtime: str, threads: int,
                    budget: CpuBucket, stopping: threading.Event) -> str:
        """Serve one child until it dies (the reason) or the tap stops ("")."""
        from edgeship.agent._shadow_worker import pack_frame

        cfg = self.config
        try:
            worker = self._worker = Worker(cfg)
        except OSError as exc:
            return f"cannot start the worker: {exc}"
        try:
            if stopping.is_set():  # stop() came while the child was being spawned
                return ""
            worker.send(pack_frame({"op": "load", "fmt": fmt, "runtime": runtime,
                                    "threads": threads, "nice": cfg.nice,
                                    "max_blob": cfg.max_request_bytes}, [model]),
                        cfg.load_timeout_s)
            header, _ = worker.receive(cfg.load_timeout_s, 0)
            if header.get("op") != "ready":
                return f"model did not load: {str(header.get('error', header))[:300]}"
            with self._lock:  # ready before it is announced: a request sent on seeing
                self._ready = True  # "shadow_ready" must be taken, not dropped
            self._ready_at = time.monotonic()
            self._log("shadow_ready", version=self.version, pid=worker.proc.pid)
            while not stopping.is_set():
                item = self._next()
                if item is not None:
                    try:
                        self._one(worker, item, budget)
                    except WorkerDied:
                        with self._lock:
                            self._counts["dropped"] += 1  # the request the child died on
                        raise
                elif worker.proc.poll() is not None:
                    return worker.describe_exit("worker exited")
            return ""
        except WorkerDied as exc:
            return str(exc)
        finally:
            with self._lock:
                self._ready = False
                self._drop_queue()
                if self._worker is worker:
                    self._worker = None
            worker.close()

    def _drop_queue(self) -> None:
        """Count what waited for a child that is gone as dropped (holding the lock)."""
        self._counts["dropped"] += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _next(self) -> tuple[Any, Any, float, int] | None:
        with self._lock:
            if self._queue:
                item = self._queue.popleft()
                self._queued_bytes -= item[3]
                return item
            self._wake.clear()
        self._wake.wait(0.5)
        return None

    def _one(self, worker: Worker, item: tuple[Any, Any, float, int],
             budget: CpuBucket) -> None:
        from edgeship.agent._shadow_worker import encode_arrays, pack_frame

        inputs, outputs, seconds, _ = item
        own0 = time.thread_time()
        try:
            specs_in, blobs_in = encode_arrays(inputs)
            specs_out, blobs_out = encode_arrays(outputs)
        except Exception as exc:  # inputs the active model took but we cannot send
            self._error("shadow_input_unsendable", exc)
            return
        if sum(map(len, blobs_in)) + sum(map(len, blobs_out)) > self.config.max_request_bytes:
            with self._lock:
                self._counts["dropped"] += 1
            return
        worker.send(pack_frame({"op": "infer", "inputs": specs_in, "outputs": specs_out,
                                "atol": self.config.atol}, [*blobs_in, *blobs_out]),
                    self.config.timeout_s)
        header, _ = worker.receive(self.config.timeout_s, 0)
        cpu = header.get("cpu")
        spent = (cpu if isinstance(cpu, float) else 0.0) + (time.thread_time() - own0)
        resume = budget.spend(spent, self._clock())
        if header.get("op") != "result":
            self._error("shadow_inference_failed", header.get("error", header))
        with self._lock:
            self._resume_at = resume
            if header.get("op") == "result":
                self._record(header, seconds)

    def _record(self, header: dict[str, Any], seconds: float) -> None:
        """Count one compared request (holding the lock)."""
        c = self._counts
        c["compared"] += 1
        c["agreed"] += header.get("agree") is True
        diff = header.get("diff")
        # a NaN/inf output is a disagreement; the max stays finite (status JSON is strict)
        if isinstance(diff, (int, float)) and math.isfinite(diff):
            self._max_diff = diff if self._max_diff is None else max(self._max_diff, diff)
        self._active_ms.append(seconds * 1000)
        wall = header.get("wall")
        if isinstance(wall, float):
            self._shadow_ms.append(wall * 1000)

    def _error(self, event: str, detail: Any) -> None:
        with self._lock:
            self._counts["errors"] += 1
            first = self._counts["errors"] <= 3
        if first:  # a model failing on every request would flood the log
            self._log(event, level="warning", version=self.version, error=str(detail)[:300])
