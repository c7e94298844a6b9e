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
        self._quant = _edge_quant(source, raw_in, raw_out)
        self.inputs = tuple(self._caller(s) for s in raw_in)
        self.outputs = tuple(self._caller(s) for s in raw_out)
        self.output_steps = {n: q.scale for n, q in self._quant.items()
                             if n in {s.name for s in raw_out}}
        if not self.output_steps:  # a QDQ model's float outputs: made by DequantizeLinear
            self.output_steps = _dequantized_steps(source, {s.name for s in raw_out})

    def _caller(self, spec: TensorSpec) -> TensorSpec:
        quant = self._quant.get(spec.name)
        return spec if quant is None else TensorSpec(name=spec.name, shape=spec.shape, dtype="float32")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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


def _edge_quant(source: str | bytes, inputs: list[TensorSpec],
                outputs: list[TensorSpec]) -> dict[str, EdgeQuant]:
    """Scale and zero point of int8/uint8 model edges (a model converted with io="int8":
    an input feeding DequantizeLinear, an output made by QuantizeLinear). Needs the
    ``onnx`` package to read the graph; without it such edges stay raw integers."""
    edges_in = {s.name for s in inputs if s.dtype in ("int8", "uint8")}
    edges_out = {s.name for s in outputs if s.dtype in ("int8", "uint8")}
    if not edges_in and not edges_out:
        return {}
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return {}
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    graph = onnx.load_model_from_string(data).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found: dict[str, EdgeQuant] = {}
    for node in graph.node:
        edge = None
        if node.op_type == "DequantizeLinear" and node.input[0] in edges_in:
            edge = node.input[0]
        elif node.op_type == "QuantizeLinear" and node.output[0] in edges_out:
            edge = node.output[0]
        params = [inits.get(n) for n in node.input[1:3]] if edge else []
        scale, zero = params if len(params) == 2 else (None, None)
        if edge and scale is not None and zero is not None and scale.size == zero.size == 1:
            found.setdefault(edge, EdgeQuant(storage=np.dtype(zero.dtype), scale=float(scale.ravel()[0]),
                                             zero_point=int(zero.ravel()[0])))
    return found


def _dequantized_steps(source: str | bytes, outputs: set[str]) -> dict[str, float]:
    """The scale of each graph output made by a per-tensor DequantizeLinear (its values are
    multiples of it: the confidence fallback reads an INT8 softmax by it). Empty without
    the ``onnx`` package or for a model it cannot parse."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError:
        return {}
    if b"DequantizeLinear" not in data:  # the op's name is in every such node: no onnx
        return {}  # import (~180 ms, ~15 MB) nor a second parse of a float model
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return {}
    try:
        graph = onnx.load_model_from_string(data).graph
    except Exception:  # onnxruntime loaded it; this is only a hint
        return {}
    producers = {n.output[0]: n for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.output and n.output[0] in outputs}
    scales = {i.name: i for i in graph.initializer
              if any(len(n.input) > 1 and n.input[1] == i.name for n in producers.values())}
    steps = {}
    for name, node in producers.items():
        scale = scales.get(node.input[1])
        value = numpy_helper.to_array(scale) if scale is not None else None
        if value is not None and value.size == 1:
            steps[name] = float(value.ravel()[0])
    return steps


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
