"""OpenVINO adapter for :class:`edgeship.sdk.Model` (``runtime="openvino"``, extra
``openvino``): runs the INT8 QDQ ONNX, or the OpenVINO IR the converter wrote for it
(``.xml`` with its ``.bin``, or both packed as one ``.ovir``: _openvino_pack), on an Intel
CPU (or ``device="npu"`` / ``"gpu"`` when OpenVINO sees one). Imported only when asked for.

One compiled model and one infer request behind a lock: ``predict`` may be called from
many threads; each call hands the inputs as tensors over the callers' arrays to one
``infer`` call that returns copies of the outputs (:class:`OneCall`). int8 model edges
(``io="int8"``) of an ONNX are float32 to the caller, as with onnxruntime (the same Q/DQ
parameters, read from the ONNX graph; an IR carries them in its rt_info).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from edgeship.sdk.runtime._model import TensorSpec
from edgeship.sdk.runtime._quant_hints import QuantHints
from edgeship.sdk.runtime._runtime_ort import edge_quant, source_hints
from edgeship.sdk.runtime._runtime_quant import from_storage, to_storage

from edgeship._errors import InferenceError, ModelLoadError

# OpenVINO element type names -> numpy dtype names
_OV_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i8": "int8", "u8": "uint8",
              "i16": "int16", "i32": "int32", "i64": "int64", "boolean": "bool"}


def _spec(port: Any) -> TensorSpec:
    type_name = port.get_element_type().get_type_name()
    dtype = _OV_DTYPES.get(type_name)
    if dtype is None:
        raise ModelLoadError(f"tensor {port.get_any_name()!r} has type {type_name}, which Model does not serve")
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=dtype)


class OpenVinoBackend:
    runtime = "openvino"

    def __init__(self, source: str | bytes, *, device: str, threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelLoadError("runtime 'openvino' needs OpenVINO: pip install 'edgeship[openvino]'") from exc
        core = ov.Core()
        target = device.upper()
        if target not in core.available_devices:
            raise ModelLoadError(f"OpenVINO has no {target} device here (it sees: "
                                 f"{', '.join(core.available_devices) or 'none'})")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            # float parts in f32: on CPUs with AMX/AVX512-BF16 OpenVINO would pick bf16,
            # which fails a golden check at 1e-3 (measured: 0.03 off on a linear model)
            config["INFERENCE_PRECISION_HINT"] = "f32"
            # no pinning: OpenVINO pins its stream to one core, which then waits behind any
            # other busy process on that core while onnxruntime's thread moves to a free
            # one (2 shared cores, same run: the mobilenet fixture 3.98 ms pinned, 0.137 ms
            # not, onnxruntime 0.229 ms)
            config["ENABLE_CPU_PINNING"] = False
            if threads is not None:
                config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = _read_model(core, source)
            if target == "CPU":
                config.update(runtime_options(model))
            self._compiled = core.compile_model(model, target, config)
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot load the model: {_last_line(exc)}") from exc
        raw_in = [_spec(p) for p in self._compiled.inputs]
        raw_out = [_spec(p) for p in self._compiled.outputs]
        int_edges = any(s.dtype in ("int8", "uint8") for s in (*raw_in, *raw_out))
        hints = QuantHints()
        if int_edges:
            hints = ir_hints(model) if _is_ir(source) else source_hints(source)
        self._quant = edge_quant(hints, raw_in, raw_out)
        self.inputs = tuple(self._caller(s) for s in raw_in)
        self.outputs = tuple(self._caller(s) for s in raw_out)
        self._infer = OneCall(self._compiled.create_infer_request())
        self._output_names = [spec.name for spec in self.outputs]
        self._lock = threading.Lock()
        # float edges (no int8 edge to convert): the call that does only what a call needs
        self.run = (self._infer.runner(self._output_names, self._lock, [spec.name for spec in self.inputs])
                    if not self._quant else self._run_quant)

    def _caller(self, spec: TensorSpec) -> TensorSpec:
        return spec if spec.name not in self._quant else TensorSpec(
            name=spec.name, shape=spec.shape, dtype="float32")

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # set per model in __init__

    def _run_quant(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A model with int8 edges: float32 in and out as with onnxruntime."""
        feeds = {k: to_storage(self._quant[k], v) if k in self._quant else v for k, v in feeds.items()}
        try:
            with self._lock:
                values = self._infer(feeds)
        except Exception as exc:
            raise InferenceError(f"OpenVINO failed: {_last_line(exc)}") from exc
        return {
            spec.name: from_storage(self._quant[spec.name], v) if spec.name in self._quant else v
            for spec, v in zip(self.outputs, values, strict=True)
        }


class OneCall:
    """An OpenVINO InferRequest run in one call into OpenVINO: ``call(arrays)`` takes
    input (index or name) -> array and returns copies of the outputs in the model's
    output order; an array of another dtype or layout is converted to the input's.

    A small input (<= :data:`SMALL_INPUT` bytes, static shape) is copied into the
    request's own input tensor, bound once; a larger one is set as a tensor sharing the
    caller's memory (no copy), the array kept referenced until the next call (the request
    would read freed memory otherwise; setting it inside the binding's GIL-free infer
    crashed). The public ``InferRequest.infer`` wraps the same call in an input
    dispatcher and a result dict; setting tensors, inferring and reading each output are
    a call each; and a new ``Tensor`` costs 2-3 us. Per call from Python on a 1-thread
    model (the mlp fixture, same run): the binding's infer alone 7.3 us, through
    :meth:`OpenVinoBackend.run` 8.3 us (10.2 us before this path kept its checks to
    one dict look-up and two identity tests a call). Returning the named dict straight
    from the binding's result (no list between) took another ~0.6 us off (under load
    ~10: the binding alone 10.5 us, ``run`` 12.1-12.6 us, onnxruntime's backend 10.8 us,
    its ``session.run`` alone 10.1 us)."""

    def __init__(self, request: Any) -> None:
        self._tensor, self._infer = _binding()
        self._request = request
        self._views: dict[int | str, np.ndarray] = {}
        self._dtypes: dict[int | str, np.dtype[Any]] = {}
        self._index: dict[int | str, int] = {}
        self._held: dict[int, np.ndarray] = {}
        self._positions = list(range(len(request.model_outputs)))
        for index, port in enumerate(request.model_inputs):
            tensor = request.get_input_tensor(index)
            dtype = np.dtype(_OV_DTYPES.get(tensor.element_type.get_type_name(), "float32"))
            keys: list[int | str] = [index, *port.get_names()]
            for key in keys:
                self._index[key], self._dtypes[key] = index, dtype
            if port.get_partial_shape().is_static:
                view = tensor.data
                if view.nbytes <= SMALL_INPUT:  # with the dtype object the arrays carry
                    for key in keys:
                        self._views[key] = view.view(dtype)

    def __call__(self, arrays: dict[Any, np.ndarray]) -> list[np.ndarray]:
        return list(self.named(arrays, self._positions).values())

    def named(self, arrays: dict[Any, np.ndarray], names: list[Any]) -> dict[Any, np.ndarray]:
        """As a call, the outputs keyed by ``names`` (one dict, no list in between: the
        agent's path, where each step costs a fraction of a microsecond)."""
        views = self._views
        for key, value in arrays.items():
            view = views.get(key)
            if view is None or view.dtype is not value.dtype or view.shape != value.shape:
                value = np.ascontiguousarray(value, dtype=self._dtypes[key])
                if view is None or view.shape != value.shape:
                    self._share(key, value)
                    continue
            view[...] = value  # (np.copyto parses a keyword more per call)
        return dict(zip(names, self._infer(self._request, {}, False, True).values(), strict=True))

    def runner(self, names: list[str], lock: threading.Lock, inputs: list[str]
               ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """A call from names to arrays under ``lock``, the outputs keyed by ``names``
        (``inputs``: the names callers give the inputs): what
        :meth:`named` does, built as one closure so that a call whose arrays fit the
        bound inputs (their dtype object and shape) costs a dict look-up, two tests and
        a copy per input, the lock and the binding's infer; anything else takes
        :meth:`named`. A single output is taken from the binding's result dict by
        ``popitem`` (building a dict from a zip of its values cost ~0.4 us a call) and
        the lock's bound methods are called directly (a ``with`` block cost ~0.1 us
        more). Per call on a Relu of 16 floats (same run): 5.5 us this way, 6.7 us
        through ``run`` -> ``named``, the binding's infer alone 4.7 us; onnxruntime's
        backend 5.1 us, its ``session.run`` alone 4.4 us."""
        request, infer, named = self._request, self._infer, self.named
        bound = {key: (view, view.dtype, view.shape) for key, view in self._views.items()}
        acquire, release = lock.acquire, lock.release
        single = names[0] if len(names) == 1 else None
        no_tensors: dict[int, Any] = {}  # the inputs are already in the bound tensors
        if len(inputs) == 1 and inputs[0] in bound:
            return self._one_input_runner(names, lock, inputs[0])

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            acquire()
            try:
                for key, value in feeds.items():
                    view, dtype, shape = bound.get(key, _UNBOUND)
                    if dtype is not value.dtype or shape != value.shape:
                        return named(feeds, names)
                    view[...] = value
                result = infer(request, no_tensors, False, True)
            except Exception as exc:
                raise InferenceError(f"OpenVINO failed: {_last_line(exc)}") from exc
            finally:
                release()
            if single is not None:
                return {single: result.popitem()[1]}
            return dict(zip(names, result.values(), strict=False))  # the model's own: same count

        return run

    def _one_input_runner(self, names: list[str], lock: threading.Lock, key: str
                          ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """:meth:`runner` for a model of one bound input named ``key``: its array looked
        up by name, no loop (~0.2 us less a call)."""
        request, infer, named = self._request, self._infer, self.named
        view = self._views[key]
        dtype, shape = view.dtype, view.shape
        acquire, release = lock.acquire, lock.release
        single = names[0] if len(names) == 1 else None
        no_tensors: dict[int, Any] = {}

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            value = feeds.get(key)
            acquire()
            try:
                if value is None or len(feeds) != 1 or value.dtype is not dtype or value.shape != shape:
                    return named(feeds, names)
                view[...] = value
                result = infer(request, no_tensors, False, True)
            except Exception as exc:
                raise InferenceError(f"OpenVINO failed: {_last_line(exc)}") from exc
            finally:
                release()
            if single is not None:
                return {single: result.popitem()[1]}
            return dict(zip(names, result.values(), strict=False))

        return run

    def _share(self, key: int | str, value: np.ndarray) -> None:
        """Set ``value`` as the input's tensor, sharing its memory; the bound tensor is
        replaced for good (set here with the GIL held: the request drops the tensor it
        replaces)."""
        index = self._index[key]
        for other in [k for k, i in self._index.items() if i == index]:
            self._views.pop(other, None)
        self._request.set_input_tensor(index, self._tensor(value, shared_memory=True))
        self._held[index] = value  # the request reads it until the next call


_UNBOUND: tuple[Any, Any, Any] = (None, None, None)  # an input with no bound tensor: no dtype is None
SMALL_INPUT = 32 * 1024  # bytes: copying this many costs about what a new Tensor does


@functools.cache
def _binding() -> tuple[Any, Callable[[Any, dict[int, Any], bool, bool], Any]]:
    """(openvino.Tensor, infer(request, tensors, share_outputs, decode_strings) ->
    {output: array}): the compiled binding's ``infer`` that ``openvino.InferRequest.infer``
    wraps, or that wrapper where the binding moved (same results)."""
    import openvino as ov

    try:
        from openvino._pyopenvino import InferRequest
    except ImportError:
        return ov.Tensor, lambda request, tensors, share, decode: request.infer(tensors)
    infer: Callable[[Any, dict[int, Any], bool, bool], Any] = InferRequest.infer
    return ov.Tensor, infer


def _read_model(core: Any, source: str | bytes) -> Any:
    """OpenVINO's model of ``source``: an ONNX or IR file path (an IR's .bin beside it), a
    packed IR (``.ovir``, sdk/runtime/_openvino_pack.py: file or bytes, read in memory)
    or ONNX bytes."""
    from edgeship.sdk.runtime._openvino_pack import SUFFIX, is_pack, unpack_ir

    if isinstance(source, str) and source.lower().endswith(SUFFIX):
        source = Path(source).read_bytes()
    if isinstance(source, bytes) and is_pack(source):
        xml, weights = unpack_ir(source)
        return core.read_model(xml, weights)
    return core.read_model(source)


def _is_ir(source: str | bytes) -> bool:
    from edgeship.sdk.runtime._openvino_pack import SUFFIX, is_pack

    if isinstance(source, bytes):
        return is_pack(source)
    return source.lower().endswith((SUFFIX, ".xml"))


def ir_hints(model: Any) -> QuantHints:
    """The int8 edges' scales and zero points an IR carries in its rt_info (the converter
    writes them: converter/_openvino_ir.py), empty when it carries none."""
    key = "edgeship_edge_quant"
    if not model.has_rt_info([key]):
        return QuantHints()
    try:
        return QuantHints.from_json(model.get_rt_info([key]).astype(str))
    except ValueError:
        return QuantHints()


def runtime_options(model: Any) -> dict[str, str]:
    """The compile properties an OpenVINO IR names in its ``runtime_options`` (the
    converter writes them for the openvino-cpu target: converter/_openvino_ir.py). The CPU
    plugin applies some of these itself; ``SNIPPETS_MODE`` it does not, so they are passed
    as properties."""
    if not model.has_rt_info(["runtime_options"]):
        return {}
    options = model.get_rt_info(["runtime_options"]).astype(dict)
    return {str(key): value.astype(str) for key, value in options.items()}


def _last_line(exc: BaseException) -> str:
    """OpenVINO's messages are a stack of 'Exception from <file>' lines; the cause is last."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
