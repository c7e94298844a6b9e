"""Open Inference Protocol v2 codec: request/response bodies <-> numpy, no I/O.

The v2 protocol (KServe, Triton, MLServer) carries tensors either inline as JSON
(``"data": [...]``, row-major) or, with the *binary tensor data extension* that
``tritonclient.http`` uses by default, as raw little-endian bytes appended after a JSON
header. The rules this module implements (both directions, server and client side):

- A body with binary tensors starts with a JSON header of exactly
  ``Inference-Header-Content-Length`` bytes (an HTTP header); the binary blobs follow,
  concatenated in the order of the tensors that carry ``"parameters":
  {"binary_data_size": N}`` (such a tensor has no ``"data"``).
- A request asks for binary outputs per output (``"outputs": [{"name": ..,
  "parameters": {"binary_data": true}}]``) or for all outputs at once
  (``"parameters": {"binary_data_output": true}``, what tritonclient sends when no outputs
  are named). Without ``"outputs"`` every model output is returned.
- A response carries ``"parameters"``; edgeship puts ``{"source": "local" | "cloud" |
  "local-degraded", "version": "..."}`` there so a client can tell who answered.

JSON goes through orjson when it is installed (a dependency of edgeship; the standard
library is the fallback): a 150 000-float body decodes ~5x faster, and JSON outputs are
written straight from the numpy array (float32 in its shortest form, which reads back
to the same float32). A tensor holding NaN or Inf is written, and read, by the standard
library (``NaN``/``Infinity``, as before), which orjson would refuse.

Errors split by who is at fault: a malformed *request* raises :class:`~edgeship.InputError`
(the server answers 400); a malformed *response* raises :class:`~edgeship.TransportError`
(the peer misbehaves). Every size read from outside is bounded by ``max_bytes``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from edgeship.sdk.serving._v2json import MIN_ARRAY_BYTES, CutArrays, cut_arrays

from edgeship._errors import InputError, TransportError

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "HEADER_LENGTH",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "RequestedOutput",
    "TensorSpec",
    "datatype_of",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "numpy_dtype",
    "parse_header_length",
    "validate_inputs",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
_MAX_RANK = 16
_MAX_TENSORS = 256

# v2 datatype name -> numpy dtype (binary form is always little-endian). BYTES is not
# supported: edgeship models take and return numeric tensors only.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES: dict[str, str] = {dt.str: name for name, dt in _DTYPES.items()}
_NAMES_OF_DTYPES: dict[np.dtype[Any], str] = {dt: name for name, dt in _DTYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype name; :class:`InputError` if unsupported."""
    try:
        return _DTYPES[datatype]
    except (KeyError, TypeError):
        raise InputError(
            f"unsupported datatype {datatype!r} (expected one of {', '.join(_DTYPES)})"
        ) from None


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype (or anything ``np.dtype`` accepts)."""
    known = _NAMES_OF_DTYPES.get(dtype) if isinstance(dtype, np.dtype) else None
    if known is not None:  # every answer asks twice per tensor: skip the byte-order dance
        return known
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).kind in "iuf" else np.dtype(dtype)
    name = _NAMES.get(dt.str)
    if name is None:
        raise InputError(f"dtype {np.dtype(dtype)} has no Open Inference Protocol v2 datatype")
    return name


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """One input or output of a model as v2 metadata shows it (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def of(cls, spec: Any) -> TensorSpec:
        """From anything with ``name``, ``shape`` and a numpy ``dtype`` (e.g. ``Model.inputs``)."""
        return cls(name=spec.name, datatype=datatype_of(spec.dtype), shape=tuple(spec.shape))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            return cls(
                name=str(data["name"]),
                datatype=str(data["datatype"]),
                shape=tuple(int(d) for d in data["shape"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"malformed tensor metadata {data!r}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """The document ``GET /v2/models/<name>`` answers with; ``versions[-1]`` is serving."""

    name: str
    versions: tuple[str, ...] = ()
    platform: str = "onnxruntime_onnx"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        if not isinstance(data, Mapping) or "name" not in data:
            raise TransportError(f"malformed model metadata: {str(data)[:200]}")
        return cls(
            name=str(data["name"]),
            versions=tuple(str(v) for v in data.get("versions") or ()),
            platform=str(data.get("platform", "")),
            inputs=tuple(TensorSpec.from_dict(t) for t in data.get("inputs") or ()),
            outputs=tuple(TensorSpec.from_dict(t) for t in data.get("outputs") or ()),
        )


@dataclass(frozen=True, kw_only=True)
class RequestedOutput:
    """An output named in a request, and whether it should come back as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True, kw_only=True)
class InferRequest:
    """A decoded infer request. ``outputs is None`` means: every output of the model."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_output: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class InferResponse:
    """A decoded infer response."""

    outputs: dict[str, np.ndarray]
    model_name: str = ""
    model_version: str = ""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- splitting


def _split(
    body: bytes | bytearray | memoryview, header_length: int | None, max_bytes: int, err: type[Exception]
) -> tuple[Any, bytes | memoryview, CutArrays | None]:
    """Parse the JSON header of ``body`` and return it with the binary tail (and, for a
    large all-JSON body, its large arrays cut out before parsing: see _v2json)."""
    if len(body) > max_bytes:
        raise err(f"body of {len(body)} bytes exceeds the limit of {max_bytes} bytes")
    cut = None
    tail: bytes | memoryview
    if header_length is None:
        header, tail = body, b""
        if len(body) >= MIN_ARRAY_BYTES:
            header, cut = cut_arrays(bytes(body) if isinstance(body, memoryview) else body)
    else:
        if not 0 < header_length <= len(body):
            raise err(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
        # the tensors are numpy views of the body: its tail is not copied (110 KB, ~10 us)
        header, tail = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = _loads(header)
    except RecursionError:
        raise err("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # also a 5000-digit integer (int_max_str_digits), bad UTF-8
        raise err(f"body is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(doc, dict):
        raise err("body must be a JSON object")
    return doc, tail, cut


def _loads(data: bytes | bytearray | memoryview) -> Any:
    """Parse JSON: orjson when installed (it refuses nesting deeper than 1024 and numbers
    beyond a double); a body that orjson refuses and that holds ``NaN``/``Infinity`` (which
    the standard library writes) is read again by the standard library."""
    fast = _orjson()
    if fast is None:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    try:
        return fast.loads(data)
    except fast.JSONDecodeError:
        data = bytes(data) if isinstance(data, memoryview) else data
        if b"NaN" not in data and b"Infinity" not in data:
            raise
    return json.loads(data)


def _dumps(doc: Any, *, plain: bool = False) -> bytes:
    """Compact JSON; numpy arrays in ``doc`` are written as lists (``plain``: by the
    standard library, for NaN and Inf)."""
    fast = None if plain else _orjson()
    if fast is None:
        return json.dumps(doc, separators=(",", ":"), default=_tolist).encode()
    return bytes(fast.dumps(doc, default=_tolist, option=fast.OPT_SERIALIZE_NUMPY))


def _tolist(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()  # float16 and friends orjson does not write itself
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _orjson() -> Any:
    global _ORJSON
    if _ORJSON is False:
        module: Any
        try:
            import orjson as module
        except ImportError:
            module = None
        # before 3.10 a body nested a million deep crashed the process (measured, 3.8.3)
        old = module is not None and tuple(map(int, module.__version__.split(".")[:2])) < (3, 10)
        _ORJSON = None if old else module
    return _ORJSON


_ORJSON: Any = False  # not looked for yet; None: not installed


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_header_length(value: str | None, err: type[Exception] = InputError) -> int | None:
    """The integer value of an ``Inference-Header-Content-Length`` header (or None)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise err(f"{HEADER_LENGTH} must be an integer, got {value[:40]!r}") from None


def _shape(value: Any, name: str, max_elements: int, err: type[Exception]) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _MAX_RANK:
        raise err(f"tensor {name!r}: shape must be a list of at most {_MAX_RANK} integers")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise err(f"tensor {name!r}: shape {_short(value)} must hold non-negative integers")
    # each dimension too: [0, 10**20] holds no element but no array can have that shape
    if math.prod(value) > max_elements or any(d > max_elements for d in value):
        raise err(f"tensor {name!r}: shape {_short(value)} is larger than the body allows")
    return tuple(value)


def _tensors(
    entries: Any, tail: bytes | memoryview, max_bytes: int, err: type[Exception], kind: str,
    cut: CutArrays | None = None,
) -> dict[str, np.ndarray]:
    """Decode a list of v2 tensors (JSON or binary) into named numpy arrays."""
    if not isinstance(entries, list) or not entries or len(entries) > _MAX_TENSORS:
        raise err(f'"{kind}" must be a non-empty list of at most {_MAX_TENSORS} tensors')
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise err(f'each of "{kind}" must be an object with a string "name"')
        name = entry["name"]
        if name in arrays:
            raise err(f"tensor {name!r} appears twice")
        try:
            datatype: Any = entry.get("datatype")  # JSON: numpy_dtype refuses a non-name
            dtype = numpy_dtype(datatype)
        except InputError as exc:
            raise err(f"tensor {name!r}: {exc}") from None
        shape = _shape(entry.get("shape"), name, max_bytes, err)
        params = entry.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            arrays[name], offset = _binary_tensor(name, dtype, shape, size, tail, offset, err)
        else:
            arrays[name] = _json_tensor(name, dtype, shape, entry.get("data"), err, cut)
    if offset != len(tail):
        raise err(f"{len(tail) - offset} bytes of binary data are not claimed by any tensor")
    if cut is not None and cut.untaken():
        raise err('a large numeric array outside the tensors\' "data"')
    return arrays


def _binary_tensor(
    name: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    size: Any,
    tail: bytes | memoryview,
    offset: int,
    err: type[Exception],
) -> tuple[np.ndarray, int]:
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or size != expected:
        raise err(
            f"tensor {name!r}: binary_data_size {size!r} does not match shape "
            f"{list(shape)} of {datatype_of(dtype)} ({expected} bytes)"
        )
    if offset + size > len(tail):
        raise err(f"tensor {name!r}: binary data ends after {len(tail) - offset} of {size} bytes")
    array = np.frombuffer(tail, dtype=dtype, count=math.prod(shape), offset=offset)
    return array.reshape(shape), offset + size


def _json_tensor(
    name: str, dtype: np.dtype[Any], shape: tuple[int, ...], data: Any, err: type[Exception],
    cut: CutArrays | None = None,
) -> np.ndarray:
    if cut is not None and cut.is_marker(data):
        try:
            return cut.array(data, dtype, math.prod(shape), _loads).reshape(shape)
        except (ValueError, TypeError, OverflowError) as exc:
            raise err(f"tensor {name!r}: data do not match shape {list(shape)} of "
                      f"{datatype_of(dtype)}: {_one_line(exc)}") from None
    if not isinstance(data, list):
        raise err(f'tensor {name!r}: needs "data" (a list) or a binary_data_size parameter')
    try:
        array = _from_list(data, dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise err(f"tensor {name!r}: data do not fit {datatype_of(dtype)}: {exc}") from None
    if array.size != math.prod(shape):
        raise err(f"tensor {name!r}: {array.size} data elements do not match shape {list(shape)}")
    return array.reshape(shape)


def _from_list(data: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` as an array of ``dtype``. A flat list of floats (what clients send) is
    copied element by element into the array (np.fromiter: 0.36 ms for mobilenet's 27 648
    floats, np.asarray 0.41 ms, as it first looks for the nesting); anything else, or what
    fromiter refuses, goes through np.asarray, whose errors say what is wrong."""
    if dtype.kind == "f" and data and type(data[0]) is float:
        try:
            return np.fromiter(data, dtype, len(data))
        except (ValueError, TypeError, OverflowError):
            pass
    return np.asarray(data, dtype=dtype)


# ---------------------------------------------------------------------------- encoding


def _encode_tensor(
    name: str, array: np.ndarray, binary: bool, blobs: list[bytes]
) -> dict[str, Any]:
    array = np.asarray(array)
    datatype = datatype_of(array.dtype)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        raw = np.ascontiguousarray(array, dtype=_DTYPES[datatype]).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        flat = np.ascontiguousarray(array).reshape(-1)  # written by _dumps
        finite = flat.dtype.kind != "f" or bool(np.isfinite(flat).all())
        entry["data"] = flat if finite else flat.tolist()  # a list: _assemble goes plain
    return entry


def _assemble(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    tensors = doc.get("inputs") or doc.get("outputs") or []
    header = _dumps(doc, plain=any(isinstance(t.get("data"), list) for t in tensors))
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and HTTP headers of an infer request (binary tensors and outputs if ``binary``)."""
    blobs: list[bytes] = []
    doc: dict[str, Any] = {
        "inputs": [_encode_tensor(n, a, binary, blobs) for n, a in inputs.items()]
    }
    if request_id is not None:
        doc["id"] = request_id
    params = dict(parameters or {})
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        params["binary_data_output"] = True
    if params:
        doc["parameters"] = params
    return _assemble(doc, blobs)


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | None, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> InferRequest:
    """Decode an infer request body; :class:`InputError` (-> HTTP 400) if malformed."""
    doc, tail, cut = _split(body, header_length, max_bytes, InputError)
    inputs = _tensors(doc.get("inputs"), tail, max_bytes, InputError, "inputs", cut)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError('"parameters" must be an object')
    request_id = doc.get("id")
    return InferRequest(
        inputs=inputs,
        outputs=_requested_outputs(doc.get("outputs")),
        binary_output=params.get("binary_data_output") is True,
        id=str(request_id) if request_id is not None else None,
        parameters=params,
    )


def _requested_outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > _MAX_TENSORS:
        raise InputError('"outputs" must be a list of objects with a "name"')
    requested = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError('"outputs" must be a list of objects with a "name"')
        params = entry.get("parameters") or {}
        if isinstance(params, dict) and params.get("classification"):
            raise InputError("the classification extension (class_count) is not supported")
        binary = isinstance(params, dict) and params.get("binary_data") is True
        requested.append(RequestedOutput(name=entry["name"], binary=binary))
    return tuple(requested)


def encode_response(
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    *,
    model_name: str,
    model_version: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers answering ``request`` with ``outputs`` (only those it asked for)."""
    if request.outputs is None:
        chosen = [(name, request.binary_output) for name in outputs]
    else:
        chosen = [(o.name, o.binary) for o in request.outputs]
        unknown = [name for name, _ in chosen if name not in outputs]
        if unknown:
            raise InputError(
                f"unknown output(s) {', '.join(map(repr, unknown))}; "
                f"the model has {', '.join(map(repr, outputs))}"
            )
    blobs: list[bytes] = []
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = [_encode_tensor(n, outputs[n], binary, blobs) for n, binary in chosen]
    return _assemble(doc, blobs)


def decode_response(
    body: bytes, header_length: int | None, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> InferResponse:
    """Decode an infer response body; :class:`TransportError` if the peer sent garbage."""
    doc, tail, cut = _split(body, header_length, max_bytes, TransportError)
    if "error" in doc and "outputs" not in doc:
        raise TransportError(f"server error: {str(doc['error'])[:300]}")
    outputs = _tensors(doc.get("outputs"), tail, max_bytes, TransportError, "outputs", cut)
    params = doc.get("parameters") or {}
    response_id = doc.get("id")
    return InferResponse(
        outputs=outputs,
        model_name=str(doc.get("model_name", "")),
        model_version=str(doc.get("model_version", "")),
        id=str(response_id) if response_id is not None else None,
        parameters=params if isinstance(params, dict) else {},
    )


# ---------------------------------------------------------------------------- validation


def validate_inputs(
    inputs: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """Check names, datatypes and fixed dimensions against the model's metadata.

    Raises :class:`InputError` naming the offending input; -1 dimensions accept any size.
    """
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise InputError(
            f"inputs {sorted(inputs)} do not match the model's inputs {sorted(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {extra})" if extra else "")
        )
    for name, array in inputs.items():
        spec = expected[name]
        got = datatype_of(array.dtype)
        if got != spec.datatype:
            raise InputError(
                f"input {name!r} has datatype {got}, the model expects {spec.datatype}"
            )
        fits = len(array.shape) == len(spec.shape) and all(
            want < 0 or want == have for want, have in zip(spec.shape, array.shape, strict=True)
        )
        if not fits:
            raise InputError(
                f"input {name!r} has shape {list(array.shape)}, the model expects {list(spec.shape)}"
            )
    return dict(inputs)
