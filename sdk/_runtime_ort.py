"""onnxruntime adapter for :class:`edgeship.sdk.Model`.

Imported only when an ONNX model is loaded, so devices that run TFLite never import
onnxruntime. An ``InferenceSession`` is thread-safe for ``run``, so no lock here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from edgeship.sdk._model import TensorSpec

from edgeship._errors import InferenceError, ModelLoadError

# onnxruntime type strings -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which Model does not serve")
    # symbolic or unknown dimensions are dynamic (-1)
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype)


class OrtBackend:
    """One onnxruntime session; ``run`` takes validated, correctly typed arrays."""

    runtime = "onnxruntime"

    def __init__(self, source: str | bytes, *, device: str, threads: int | None) -> None:
        import onnxruntime as ort

        providers = _providers(ort, device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(None, feeds)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {_first_line(exc)}") from exc
        return {spec.name: np.asarray(v) for spec, v in zip(self.outputs, values, strict=True)}


def _providers(ort: Any, device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "edgetpu":
        raise ModelLoadError("device 'edgetpu' needs a .tflite model; ONNX runs on cpu or an ORT EP")
    available = ort.get_available_providers()
    if device not in available:
        raise ModelLoadError(
            f"onnxruntime execution provider {device!r} is not available "
            f"(available: {', '.join(available)})"
        )
    return [device, "CPUExecutionProvider"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
