"""The reference cloud model: an fp32 ONNX model behind Open Inference Protocol v2.

``edgeship cloud serve`` runs :class:`OnnxService` on the :mod:`edgeship.sdk.serving._v2server`
toolkit, so ``tritonclient.http``, KServe/MLServer clients and the edgeship fallback all
talk to it unchanged.

Batching, honestly:

- Every infer request goes to one worker thread through a queue; that worker owns the
  onnxruntime session (whose own intra-op threads use the cores).
- When the model's first dimension is dynamic for every input and output, the worker
  merges concurrent requests with the same trailing shapes into one session call of up
  to ``max_batch`` rows and splits the outputs back. It waits up to ``batch_window_ms``
  for more requests only while other requests are already inside the server, so a lone
  client pays no added latency. If a merged run fails, each request is re-run alone so
  one bad request cannot fail its neighbours.
- Otherwise (a fixed batch dimension, as the bundled fixtures have) requests run one after
  another; a model fixed at batch 1 also takes N rows, run row by row, and its metadata
  advertises the batch dimension as -1 accordingly.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeship.sdk.serving._v2 import ModelMetadata, TensorSpec
from edgeship.sdk.serving._v2server import StatusError, V2Service

from edgeship._errors import ConfigError, InferenceError, ModelLoadError

__all__ = ["OnnxService"]

# onnxruntime's type strings -> v2 datatypes
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}
_STOP = object()


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which v2 cannot carry here")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


@dataclass(kw_only=True)
class _Job:
    inputs: dict[str, np.ndarray]
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def key(self) -> tuple[Any, ...]:
        return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.inputs.items()))


class OnnxService(V2Service):
    """One ONNX model served over v2 with request batching (see the module docstring)."""

    server_name = "edgeship-cloud"

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        version: str = "1",
        max_batch: int = 32,
        batch_window_ms: float = 2.0,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ModelLoadError(f"max_batch must be >= 1, not {max_batch}")
        self.path = Path(path)
        self.name = name or self.path.stem
        if not self.name.isprintable() or any(c in self.name for c in "/?#% "):
            # it is a path segment of /v2/models/<name>: these would make it unreachable
            raise ConfigError(f"model name {self.name!r} cannot be a URL path segment "
                              "(no / ? # % or spaces; set --name)")
        self.version = version
        self.max_batch = max_batch
        self.batch_window_s = batch_window_ms / 1000
        self._session = _load_session(self.path, threads)
        inputs = [_spec(a) for a in self._session.get_inputs()]
        outputs = [_spec(a) for a in self._session.get_outputs()]
        self.dynamic_batch = all(s.shape[:1] == (-1,) for s in inputs + outputs)
        self.batch1 = all(s.shape[:1] == (1,) for s in inputs)
        if self.batch1:  # we run N rows one by one, so any batch size is accepted
            inputs = [
                TensorSpec(name=s.name, datatype=s.datatype, shape=(-1, *s.shape[1:]))
                for s in inputs
            ]
            outputs = [
                TensorSpec(name=s.name, datatype=s.datatype, shape=(-1, *s.shape[1:]))
                for s in outputs
            ]
        self._meta = ModelMetadata(
            name=self.name, versions=(version,), inputs=tuple(inputs), outputs=tuple(outputs)
        )
        self._output_names = [s.name for s in outputs]
        self._queue: queue.Queue[Any] = queue.Queue()
        self._active = 0  # requests inside infer(); batching waits only when > batch size
        self._lock = threading.Lock()
        self.runs = 0  # session calls, for tests and stats
        self._worker = threading.Thread(target=self._work, name="onnx-batcher", daemon=True)
        self._worker.start()

    @property
    def meta(self) -> ModelMetadata:
        return self._meta

    # -- V2Service

    def metadata(self, name: str) -> ModelMetadata | None:
        return self._meta if name == self.name else None

    def infer(
        self, name: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        job = _Job(inputs=inputs)
        with self._lock:
            self._active += 1
        try:
            self._queue.put(job)
            outputs = job.future.result()
        finally:
            with self._lock:
                self._active -= 1
        return outputs, {"source": "cloud", "version": self.version}

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join(timeout=5)

    # -- worker

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            jobs = self._collect(job) if self.dynamic_batch else [job]
            for group in _groups(jobs):
                self._run_group(group)

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.batch_window_s
        while rows < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    others_coming = self._active > len(jobs)
                wait = deadline - time.monotonic()
                if not others_coming or wait <= 0:
                    break
                try:
                    job = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
            if job is _STOP:
                self._queue.put(_STOP)
                break
            jobs.append(job)
            rows += job.rows
        return jobs

    def _run_group(self, group: list[_Job]) -> None:
        if len(group) > 1:
            try:
                merged = {n: np.concatenate([j.inputs[n] for j in group]) for n in group[0].inputs}
                outputs = self._run(merged)
                if all(v.shape[:1] == (sum(j.rows for j in group),) for v in outputs.values()):
                    _split(group, outputs)
                    return
            except InferenceError:
                pass  # run them one by one below, so only the bad request fails
        for job in group:
            try:
                job.future.set_result(self._run_rows(job.inputs))
            except Exception as exc:
                job.future.set_exception(exc)

    def _run_rows(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {a.shape[0] for a in inputs.values()}
        if not self.batch1 or rows == {1}:
            return self._run(inputs)
        if len(rows) != 1:
            raise StatusError(400, f"inputs disagree on the batch size: {sorted(rows)}")
        (n,) = rows
        parts = [self._run({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(n)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self._output_names}

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs += 1
        try:
            values = self._session.run(self._output_names, inputs)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[tuple[Any, ...], list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.key(), []).append(job)
    return list(groups.values())


def _split(group: list[_Job], outputs: dict[str, np.ndarray]) -> None:
    start = 0
    for job in group:
        end = start + job.rows
        job.future.set_result({n: v[start:end] for n, v in outputs.items()})
        start = end


def _load_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise ModelLoadError(f"model file {path} {why}")
    from edgeship.sdk._quiet import ort_log_level

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc


def describe(service: OnnxService) -> str:
    """One line saying what is served and how it batches (for the CLI)."""
    batching = (
        f"dynamic batching up to {service.max_batch} rows"
        if service.dynamic_batch
        else "fixed batch dimension: requests run one after another"
    )
    shapes = ", ".join(f"{s.name}{list(s.shape)}" for s in service.meta.inputs)
    return f"model {service.name!r} v{service.version} ({shapes}); {batching}"
