"""onnxruntime adapter for :class:`edgeship.sdk.Model`.

Imported only when an ONNX model is loaded, so devices that run TFLite never import
onnxruntime. An ``InferenceSession`` is thread-safe for ``run``, so no lock here.
int8 model edges (a model converted with ``io="int8"``) are float32 to the caller, as for
TFLite: quantized and dequantized here with the parameters of their Q/DQ nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from edgeship.sdk._quiet import ort_log_level
from edgeship.sdk.runtime._model import TensorSpec
from edgeship.sdk.runtime._quant_hints import (
    QuantHints,
    hints_from_metadata,
    hints_from_model_bytes,
)
from edgeship.sdk.runtime._runtime_quant import EdgeQuant, from_storage, to_storage

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
        options.log_severity_level = ort_log_level()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc
        raw_in = [_spec(a) for a in self._session.get_inputs()]
        raw_out = [_spec(a) for a in self._session.get_outputs()]
        hints = _hints(self._session, source)
        self._quant = edge_quant(hints, raw_in, raw_out)
        self.inputs = tuple(self._caller(s) for s in raw_in)
        self.outputs = tuple(self._caller(s) for s in raw_out)
        self._output_names = [s.name for s in self.outputs]
        out_names = {s.name for s in raw_out}
        self.output_steps = {n: q.scale for n, q in self._quant.items() if n in out_names}
        if not self.output_steps:  # a QDQ model's float outputs: made by DequantizeLinear
            self.output_steps = {n: step for n, step in hints.steps.items() if n in out_names}

    def _caller(self, spec: TensorSpec) -> TensorSpec:
        quant = self._quant.get(spec.name)
        return spec if quant is None else TensorSpec(name=spec.name, shape=spec.shape, dtype="float32")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._quant:  # a float model: the arrays go and come as they are
            try:
                values = self._session.run(None, feeds)
            except Exception as exc:
                raise InferenceError(f"onnxruntime failed: {_first_line(exc)}") from exc
            return dict(zip(self._output_names, values, strict=True))
        feeds = {k: to_storage(self._quant[k], v) if k in self._quant else v for k, v in feeds.items()}
        try:
            values = self._session.run(None, feeds)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {_first_line(exc)}") from exc
        return {
            spec.name: from_storage(self._quant[spec.name], np.asarray(v))
            if spec.name in self._quant else np.asarray(v)
            for spec, v in zip(self.outputs, values, strict=True)
        }


def _hints(session: Any, source: str | bytes) -> QuantHints:
    """The model's edge parameters and output steps: from the metadata the converter
    writes (no parse), else read from the graph."""
    try:
        metadata = dict(session.get_modelmeta().custom_metadata_map)
    except Exception:  # only a hint
        metadata = {}
    hints = hints_from_metadata(metadata)
    return hints if hints is not None else source_hints(source)


def source_hints(source: str | bytes) -> QuantHints:
    """The hints of a model file or its bytes, by parsing it (see _quant_hints)."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError:
        return QuantHints()
    return hints_from_model_bytes(data)


def edge_quant(hints: QuantHints, inputs: list[TensorSpec],
               outputs: list[TensorSpec]) -> dict[str, EdgeQuant]:
    """Scale and zero point of the int8/uint8 model edges among ``inputs`` / ``outputs`` (a
    model converted with io="int8"); an edge the hints do not name stays raw integers."""
    found: dict[str, EdgeQuant] = {}
    for spec in (*inputs, *outputs):
        edge = hints.edges.get(spec.name)
        if spec.dtype in ("int8", "uint8") and edge is not None and edge.dtype == spec.dtype:
            found[spec.name] = EdgeQuant(storage=np.dtype(edge.dtype), scale=edge.scale,
                                         zero_point=edge.zero_point)
    return found


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
