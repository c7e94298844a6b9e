"""``Model``: one call to run an ONNX or TFLite model, float32 in and float32 out.

The runtime is picked from the file suffix (``.onnx`` -> onnxruntime, ``.tflite`` ->
LiteRT, else tflite-runtime; an OpenVINO IR, ``.xml`` or packed ``.ovir``, -> OpenVINO,
``.rknn`` -> rknn-toolkit-lite2); quantized TFLite edges are (de)quantized inside. Inputs
are checked against the model's own tensor specs before the runtime sees them, so a
wrong shape or dtype is an :class:`InferenceError` that says what was expected.

Runtimes are imported only in :meth:`Model.load`, never when ``edgeship.sdk`` is
imported. ``predict`` is safe to call from many threads at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeship._errors import InferenceError, ModelLoadError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Model", "TensorSpec"]

# openvino: ONNX only, asked for; rknn: a .rknn file on a Rockchip NPU (rknn-toolkit-lite2)
RUNTIMES = ("auto", "onnxruntime", "litert", "openvino", "rknn")
MAX_MODEL_BYTES = 1 << 30  # a model larger than 1 GiB is not an edge model
# an OpenVINO IR: its .xml (the .bin beside it) or both packed as one .ovir (_openvino_pack)
_SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".tflite": "litert", ".rknn": "rknn",
                   ".xml": "openvino", ".ovir": "openvino"}


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A model input or output as the caller sees it; ``-1`` marks a dynamic dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]),
                   dtype=str(data["dtype"]))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` fits this tensor (-1 dimensions take any size)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class _Backend(Protocol):
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Model:
    """A loaded model. Build it with :meth:`load`, or from memory with :meth:`load_bytes`
    (:meth:`from_bytes` takes the suffix positionally)."""

    def __init__(self, backend: _Backend, *, path: Path | None, format: str = "") -> None:
        self._backend = backend
        self.path = path
        self.runtime: str = backend.runtime
        # what the file is ("onnx", "tflite", "xml"/"ovir" for an OpenVINO IR, "rknn"):
        # one runtime reads several formats (OpenVINO reads ONNX and its own IR)
        self.format: str = format or (path.suffix.lstrip(".").lower() if path else "")
        self.inputs: tuple[TensorSpec, ...] = backend.inputs
        self.outputs: tuple[TensorSpec, ...] = backend.outputs
        # output name -> quantization step of a quantized (INT8) output, dequantized here
        self.output_steps: dict[str, float] = dict(getattr(backend, "output_steps", {}))
        self._exact_specs: tuple[tuple[TensorSpec, ...], list[Any]] | None = None

    def __repr__(self) -> str:
        return f"Model(path={str(self.path)!r}, runtime={self.runtime!r})"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        runtime: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        max_bytes: int = MAX_MODEL_BYTES,
    ) -> Model:
        """Load ``path`` (.onnx, .tflite, an IR's .xml/.ovir, .rknn) on ``device`` ("cpu", "edgetpu" or an ORT EP)."""
        file = Path(path)
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise ModelLoadError(f"cannot read model {file}: {exc.strerror}") from exc
        if size > max_bytes:
            raise ModelLoadError(f"model {file} is {size} bytes, over the limit of {max_bytes}")
        chosen = _choose_runtime(runtime, file.suffix, _sniff(file))
        return cls(_backend(chosen, str(file), device, threads), path=file)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        suffix: str,
        *,
        runtime: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        max_bytes: int = MAX_MODEL_BYTES,
    ) -> Model:
        """Load a model held in memory; ``suffix`` (".onnx"/".tflite"/".ovir") picks the runtime."""
        if len(data) > max_bytes:
            raise ModelLoadError(f"model is {len(data)} bytes, over the limit of {max_bytes}")
        suffix = suffix if suffix.startswith(".") else f".{suffix}"
        chosen = _choose_runtime(runtime, suffix, data[:8])
        return cls(_backend(chosen, bytes(data), device, threads), path=None,
                   format=suffix.lstrip(".").lower())

    @classmethod
    def load_bytes(
        cls,
        data: bytes,
        *,
        format: str,  # the manifest's name for it (artifact.format)
        runtime: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        max_bytes: int = MAX_MODEL_BYTES,
    ) -> Model:
        """Load a model from memory only (a decrypted artifact never touches the disk):
        onnxruntime gets the bytes, LiteRT ``model_content=``. ``format`` is the
        manifest's ``artifact.format`` ("onnx" or "tflite")."""
        return cls.from_bytes(data, format, runtime=runtime, device=device, threads=threads,
                              max_bytes=max_bytes)

    def predict(self, x: Any) -> np.ndarray:
        """Run a single-output model on ``x`` (an array, or a dict keyed by input name)."""
        if len(self.outputs) != 1:
            raise InferenceError(
                f"model has {len(self.outputs)} outputs; use predict_all() to get them by name"
            )
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise InferenceError(f"model has {len(self.inputs)} inputs ({names}); pass a dict")
            x = {self.inputs[0].name: x}
        return self.predict_all(x)[self.outputs[0].name]

    def predict_all(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on inputs keyed by name; returns every output keyed by name.

        A model with a fixed batch of 1 also takes a batch of N: it runs row by row.
        """
        feeds = self._exact(inputs)
        if feeds is not None:  # the served case: one array per input, as the model takes it
            return self._backend.run(feeds)
        feeds = self._check(inputs)
        rows = self._batch_rows(feeds)
        if rows is None:
            return self._backend.run(feeds)
        import numpy as np

        parts = [self._backend.run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)]
        return {s.name: np.concatenate([p[s.name] for p in parts]) for s in self.outputs}

    def _exact(self, inputs: Any) -> dict[str, np.ndarray] | None:
        """``inputs`` when each is already a finite, C-ordered array of exactly the dtype and
        shape (no -1) its spec names, else None (then :meth:`_check` converts or refuses).
        The API's answer path: ~10 us less per request than the general checks."""
        if type(inputs) is not dict or len(inputs) != len(self.inputs):
            return None
        exact = self._exact_specs
        if exact is None or exact[0] is not self.inputs:
            exact = self._exact_specs = _exact_specs(self.inputs)
        for name, shape, dtype, floating in exact[1]:
            array: Any = inputs.get(name)
            # (dtype objects compared, not dtype.name: a Python property, ~2.6 us a call)
            if (type(array).__name__ != "ndarray" or array.shape != shape
                    or array.dtype != dtype or not array.flags.c_contiguous
                    or (floating and not _finite(array))):
                return None
        return inputs


    def _check(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:

        if not isinstance(inputs, dict):
            raise InferenceError(f"inputs must be a dict of arrays, not {type(inputs).__name__}")
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InferenceError(f"missing input {spec.name!r}; the model takes {self._names()}")
        extra = sorted(set(inputs) - {s.name for s in self.inputs})
        if extra:
            raise InferenceError(f"unknown input(s) {extra}; the model takes {self._names()}")
        return {spec.name: _convert(spec, inputs[spec.name]) for spec in self.inputs}

    def _batch_rows(self, feeds: dict[str, np.ndarray]) -> int | None:
        """N when every input is a batch of N > 1 for a spec fixed at batch 1, else None."""
        rows = {v.shape[0] if v.ndim else 1 for v in feeds.values()}
        fixed = all(s.shape[:1] == (1,) for s in self.inputs)
        if len(rows) != 1 or not fixed:
            return None
        (n,) = rows
        return n if n > 1 else None

    def _names(self) -> str:
        return ", ".join(f"{s.name}{list(s.shape)}" for s in self.inputs)


def _exact_specs(specs: tuple[TensorSpec, ...]) -> tuple[tuple[TensorSpec, ...], list[Any]]:
    """``specs`` and, per input, what :meth:`Model._exact` compares (its numpy dtype made
    once): (name, shape, dtype, floating)."""
    import numpy as np

    return specs, [(s.name, s.shape, np.dtype(s.dtype), np.dtype(s.dtype).kind == "f")
                   for s in specs]


def _finite(array: np.ndarray) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


def _convert(spec: TensorSpec, value: Any) -> np.ndarray:
    import numpy as np

    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"input {spec.name!r} is not an array: {exc}") from exc
    want = np.dtype(spec.dtype)
    # float64 -> float32 and int -> float are fine; str, object, complex are not
    if array.dtype.kind not in "biuf" or not np.can_cast(array.dtype, want, casting="same_kind"):
        raise InferenceError(
            f"input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InferenceError(f"input {spec.name!r} contains NaN or Inf")
    shape = tuple(array.shape)
    batched = len(shape) == len(spec.shape) and spec.shape[:1] == (1,) and spec.accepts(
        (1, *shape[1:])
    )
    if not spec.accepts(shape) and not batched:
        raise InferenceError(
            f"input {spec.name!r} has shape {list(shape)}, the model expects {list(spec.shape)}"
            " (-1 = any size)"
        )
    return np.ascontiguousarray(array, dtype=want)


def _sniff(file: Path) -> bytes:
    try:
        with file.open("rb") as handle:
            return handle.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {file}: {exc.strerror}") from exc


def _choose_runtime(runtime: str, suffix: str, head: bytes) -> str:
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    is_tflite = head[4:8] == b"TFL3"
    is_rknn = head[:4] == b"RKNN"
    is_ir = head[:8] == b"ESOVIR1\0" or head[:5] == b"<?xml"  # _openvino_pack.MAGIC
    by_content = ("litert" if is_tflite else "rknn" if is_rknn else "openvino" if is_ir
                  else "onnxruntime")
    by_suffix = _SUFFIX_RUNTIME.get(suffix.lower(), by_content)
    chosen = by_suffix if runtime == "auto" else runtime
    if chosen == "litert" and not is_tflite:
        raise ModelLoadError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    if chosen in ("onnxruntime", "openvino") and is_tflite:
        raise ModelLoadError(f"this is a TFLite model; {chosen} cannot run it here")
    if is_ir and chosen != "openvino":
        raise ModelLoadError("an OpenVINO IR runs with runtime 'openvino' only")
    if (chosen == "rknn") != is_rknn:
        raise ModelLoadError("an RKNN model runs with runtime 'rknn' only" if is_rknn
                             else "not an RKNN model (no 'RKNN' header)")
    return chosen


def _backend(runtime: str, source: str | bytes, device: str, threads: int | None) -> _Backend:
    if threads is not None and threads < 1:
        raise ModelLoadError(f"threads must be >= 1, not {threads}")
    if runtime == "litert":
        from edgeship.sdk.runtime._runtime_litert import LiteRtBackend

        return LiteRtBackend(source, device=device, threads=threads)
    if runtime == "openvino":
        from edgeship.sdk.runtime._runtime_openvino import OpenVinoBackend

        return OpenVinoBackend(source, device=device, threads=threads)
    if runtime == "rknn":
        from edgeship.sdk.runtime._runtime_rknn import RknnBackend

        return RknnBackend(source, device=device, threads=threads)
    from edgeship.sdk.runtime._runtime_ort import OrtBackend

    return OrtBackend(source, device=device, threads=threads)
