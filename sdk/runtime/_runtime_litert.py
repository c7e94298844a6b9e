"""LiteRT / tflite-runtime adapter for :class:`edgeship.sdk.Model`.

Uses ``ai_edge_litert.interpreter`` when installed, else ``tflite_runtime.interpreter``
(the two share one API). Quantized edge tensors (int8/uint8 with a scale) are presented
to the caller as float32: inputs are quantized and outputs dequantized here with the
tensor's own parameters, so ``--io int8`` and ``--io float`` models look the same.

A TFLite interpreter is not thread-safe (its tensors are shared buffers), so every
``run`` holds the interpreter's lock.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from edgeship.sdk._quiet import runtime_chatter_filtered
from edgeship.sdk.runtime._model import TensorSpec
from edgeship.sdk.runtime._runtime_quant import EdgeQuant, from_storage, to_storage

from edgeship._errors import InferenceError, ModelLoadError

EDGETPU_LIBRARY = "libedgetpu.so.1"


@dataclass(frozen=True, kw_only=True)
class _Edge:
    """One input or output tensor of the interpreter and how to convert it."""

    spec: TensorSpec  # what the caller sees
    index: int  # interpreter tensor index
    quant: EdgeQuant


def interpreter_module() -> ModuleType:
    """``ai_edge_litert.interpreter`` if installed, else ``tflite_runtime.interpreter``."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
    except ImportError:
        try:
            module = importlib.import_module("tflite_runtime.interpreter")
        except ImportError as exc:
            raise ModelLoadError(
                "no TFLite runtime: install ai-edge-litert (or tflite-runtime)"
            ) from exc
    return module


class LiteRtBackend:
    """One TFLite interpreter behind a lock; ``run`` takes validated caller arrays."""

    def __init__(self, source: str | bytes, *, device: str, threads: int | None) -> None:
        module = interpreter_module()
        # "litert" names the runtime kind (the value of Model.load's runtime=), whichever of
        # the two packages provides it; ``library`` says which one did
        self.runtime = "litert"
        self.library = module.__name__.split(".")[0]
        if device not in ("cpu", "edgetpu", "ethos-u"):
            raise ModelLoadError("TFLite models run on device 'cpu', 'edgetpu' or 'ethos-u', "
                                 f"not {device!r}")
        delegate = {"edgetpu": _edgetpu_delegate, "ethos-u": _ethosu_delegate}.get(device)
        kwargs: dict[str, Any] = {"num_threads": threads,
                                  "experimental_delegates": delegate and [delegate(module)]}
        if isinstance(source, bytes):
            kwargs["model_content"] = source
        else:
            kwargs["model_path"] = source
        try:
            with runtime_chatter_filtered():  # LiteRT's "INFO: Created ... XNNPACK delegate"
                self._interp = module.Interpreter(**kwargs)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load the model: {_first_line(exc)}") from exc
        self._lock = threading.Lock()
        self._in = tuple(_edge(d) for d in self._interp.get_input_details())
        self._shapes = [tuple(int(x) for x in d["shape"]) for d in self._interp.get_input_details()]
        self._out = tuple(_edge(d) for d in self._interp.get_output_details())
        self.inputs = tuple(e.spec for e in self._in)
        self.outputs = tuple(e.spec for e in self._out)
        # the step of each quantized output (dequantized values are multiples of it)
        self.output_steps = {e.spec.name: e.quant.scale for e in self._out if e.quant.quantized}
        self.output_steps.update(_dequantized_steps(self._interp, self._out))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            try:
                values = [to_storage(e.quant, feeds[e.spec.name]) for e in self._in]
                self._fit_shapes(values)
                for edge, value in zip(self._in, values, strict=True):
                    self._interp.set_tensor(edge.index, value)
                self._interp.invoke()
                raw = [(e, self._interp.get_tensor(e.index)) for e in self._out]
            except (ValueError, RuntimeError) as exc:
                raise InferenceError(f"LiteRT failed: {_first_line(exc)}") from exc
        return {e.spec.name: from_storage(e.quant, value) for e, value in raw}

    def _fit_shapes(self, values: list[np.ndarray]) -> None:
        """Resize dynamic inputs (-1 in the shape signature) to the shapes handed in."""
        resized = False
        for i, (edge, value) in enumerate(zip(self._in, values, strict=True)):
            if self._shapes[i] != value.shape and -1 in edge.spec.shape:
                self._interp.resize_tensor_input(edge.index, list(value.shape), strict=True)
                self._shapes[i] = value.shape
                resized = True
        if resized:
            self._interp.allocate_tensors()


def _edgetpu_delegate(module: ModuleType) -> Any:
    try:
        # probe first: LiteRT's Delegate object raises again in __del__ when its library
        # is missing, which would add a second, confusing error to the first
        ctypes.CDLL(EDGETPU_LIBRARY)
        return module.load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelLoadError(
            f"Edge TPU delegate {EDGETPU_LIBRARY} could not be loaded ({_first_line(exc)}); "
            "install the Edge TPU runtime (libedgetpu1-std) and plug in the device, "
            "or load with device='cpu'"
        ) from exc


def _ethosu_delegate(module: ModuleType) -> Any:
    """Arm's Ethos-U delegate (a Vela-compiled model's ``ethos-u`` ops go to the NPU
    driver through it). The hardware boundary: past this load only the NPU can run it."""
    from edgeship.sdk.runtime._accel import ETHOSU_DELEGATE_ENV, ethosu_delegate_path

    path = ethosu_delegate_path()
    if path is None:
        raise ModelLoadError("no Ethos-U delegate library (libethosu_delegate.so) found: "
                             f"install the board's Ethos-U delegate or set {ETHOSU_DELEGATE_ENV}")
    try:
        ctypes.CDLL(str(path))  # probe first, as for the Edge TPU
        return module.load_delegate(str(path))
    # AttributeError: a library without the delegate entry points (LiteRT looks them up)
    except (ValueError, OSError, RuntimeError, AttributeError) as exc:
        raise ModelLoadError(f"Ethos-U delegate {path} could not be loaded "
                             f"({_first_line(exc)})") from exc


def _edge(detail: dict[str, Any]) -> _Edge:
    storage = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = storage.kind in "iu" and storage.itemsize <= 2 and scale != 0.0
    quant = EdgeQuant(storage=storage, scale=float(scale) if quantized else 0.0,
                      zero_point=int(zero_point) if quantized else 0)
    signature = detail.get("shape_signature")
    shape = tuple(int(d) for d in (signature if signature is not None else detail["shape"]))
    spec = TensorSpec(name=str(detail["name"]), shape=shape, dtype=quant.caller_dtype)
    return _Edge(spec=spec, index=int(detail["index"]), quant=quant)


def _dequantized_steps(interp: Any, outputs: tuple[_Edge, ...]) -> dict[str, float]:
    """The step of each float output made from one int8/uint8 tensor (a DEQUANTIZE at the
    end of a fully-integer model: an INT8 softmax has step 1/256), read from the op list;
    empty when this interpreter does not list its ops."""
    try:
        ops = interp._get_ops_details()
        tensors = {int(d["index"]): d for d in interp.get_tensor_details()}
    except Exception:  # a private API of LiteRT / tflite-runtime: only a hint
        return {}
    steps = {}
    for edge in outputs:
        if edge.quant.quantized:
            continue
        maker = next((op for op in ops if edge.index in [int(i) for i in op["outputs"]]), None)
        sources = [tensors.get(int(i)) for i in maker["inputs"]] if maker else []
        if len(sources) == 1 and sources[0] is not None:
            scale = float(sources[0].get("quantization", (0.0, 0))[0])
            if scale > 0.0 and np.dtype(sources[0]["dtype"]).kind in "iu":
                steps[edge.spec.name] = scale
    return steps


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
