"""Boundary of the converter: read and check an ONNX model and the calibration / eval
arrays, turning every foreign failure into one clear edgeship error."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnx.external_data_helper import load_external_data_for_model

from edgeship._errors import CalibrationError, ConversionError, InputError

from ._shapes import InputShapes, fix_input_shapes, normalize_dims, pin_batch_for_shape_reads

MIN_OPSET = 13  # what the passes and the quantizer are written for; older ones are upgraded
PROTOBUF_LIMIT = (1 << 31) - 1  # one serialized ModelProto; larger models need external data
# ops of a graph that is already quantized (onnx, com.microsoft); plus every QLinear*/QOrdered*
QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized",
}


@dataclass
class LoadedModel:
    """A model read from disk: checked, upgraded to MIN_OPSET, dims fixed, shapes inferred."""

    model: onnx.ModelProto
    model_bytes: bytes  # the file as given, or (external data) serialized with weights inside
    external_files: list[Path]  # the external data files it references (each once)
    notes: list[str] = field(default_factory=list)  # what loading changed, for the report


def load_model(path: Path, *, max_bytes: int) -> onnx.ModelProto:
    """Read, check and shape-infer a float ONNX model (upgraded to opset >= 13)."""
    return read_model(path, max_bytes=max_bytes).model


def read_model(
    path: Path, *, max_bytes: int, input_shapes: InputShapes = (), static_batch: bool = False
) -> LoadedModel:
    """Read ``path`` (and its external data), refuse what cannot be converted with one
    clear error, upgrade an old opset and pin the ``input_shapes`` the user gave (and,
    with ``static_batch``, a dynamic batch the graph reads, see pin_batch_for_shape_reads)."""
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"model {path} is {size} bytes, over the limit of {max_bytes}")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise InputError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{path} is not an ONNX model (no graph nodes or opset)")
    _refuse_quantized(model, path)
    external = _external_files(model, path)
    _load_external(model, external, path, size, max_bytes)
    if external:  # one protobuf with the weights inside: onnxruntime sessions from bytes
        data = _serialized(model, path)
    model, notes = _upgrade_opset(model, path)
    normalize_dims(model)
    notes += fix_input_shapes(model, input_shapes)
    if static_batch:
        notes += pin_batch_for_shape_reads(model)
    model, checked = _check_and_infer(model, path)
    return LoadedModel(model, data, external, notes + checked)


def _load_external(
    model: onnx.ModelProto, files: list[Path], path: Path, size: int, max_bytes: int
) -> None:
    """Read the external data ``files`` into ``model`` (together under ``max_bytes``)."""
    if not files:
        return
    total = 0
    for file in files:
        if not file.is_file():
            raise InputError(f"{path}: external data file {file.name} not found next to it")
        total += file.stat().st_size
    if size + total > max_bytes:
        raise InputError(
            f"model {path} with its external data is {size + total} bytes, "
            f"over the limit of {max_bytes}"
        )
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise InputError(f"{path}: cannot read its external data ({_first_line(exc)})") from exc


def _external_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Every external data file the model names, refused when it points outside the
    model's directory (``../../etc/passwd``)."""
    base = path.parent.resolve()
    files: dict[Path, None] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        resolved = (base / location).resolve()
        if not location or Path(location).is_absolute() or not resolved.is_relative_to(base):
            raise InputError(
                f"{path}: tensor {tensor.name!r} has external data at {location!r}, "
                "outside the model's directory; refused"
            )
        files[resolved] = None
    return list(files)


def _serialized(model: onnx.ModelProto, path: Path) -> bytes:
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise InputError(f"model {path} with its weights is over 2 GB; edgeship converts "
                         "models that fit one protobuf")
    return bytes(model.SerializeToString())


def _refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    for node in model.graph.node:
        op = node.op_type
        if op in QUANTIZED_OPS or op.startswith(("QLinear", "QOrdered")):
            raise ConversionError(
                f"{path.name}: model is already quantized ({op} at node {_label(node)}); "
                "convert its float original"
            )


def _upgrade_opset(model: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """Opsets below MIN_OPSET are upgraded with onnx.version_converter; newer ones than
    the installed onnx knows are refused."""
    opset = _default_opset(model)
    # onnxruntime loads newer opsets than it implements (an op it lacks fails when the
    # session is made, naming the op); onnx's own limit is the one to check here
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ConversionError(
            f"{path} uses opset {opset}; the installed onnx knows opsets up to {newest} "
            f"(upgrade onnx, or export the model with opset <= {newest})"
        )
    if opset >= MIN_OPSET:
        return model, []
    if opset == 0:
        raise ConversionError(f"{path} imports no default-domain opset")
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ConversionError(
            f"{path}: cannot upgrade opset {opset} -> {MIN_OPSET} with onnx.version_converter "
            f"({_failed_op(model, exc)}); export the model with opset >= {MIN_OPSET}"
        ) from exc
    return upgraded, [f"upgraded opset {opset} -> {MIN_OPSET} (onnx.version_converter)"]


def _failed_op(model: onnx.ModelProto, exc: BaseException) -> str:
    """Name the op the version converter stopped at, from its message."""
    text = _first_line(exc)
    text = re.sub(r"^\S*\.(h|cc):\d+: ", "", text)  # the C++ source location
    # longest first: ConvTranspose before Conv; the converter glues numbers to the op name
    for node in sorted(model.graph.node, key=lambda n: -len(n.op_type)):
        if re.search(rf"(?<![A-Za-z]){re.escape(node.op_type)}(?![a-z])", text):
            same = [n for n in model.graph.node if n.op_type == node.op_type]
            named = next((n for n in same if n.name and n.name in text), same[0])
            return f"failed on {node.op_type} at node {_label(named)}: {text[:200]}"
    return f"failed: {text[:200]}"


def _check_and_infer(model: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """onnx's checker and strict shape inference; a model they reject that onnxruntime
    still runs is accepted with non-strict inference (and the report says so)."""
    notes = []
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        _require_ort_runs(model, path, exc)
        notes.append(f"onnx.checker: {_first_line(exc)[:200]} (onnxruntime runs it; continued)")
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True), notes
    except Exception as exc:
        strict_error = exc
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:
        raise ConversionError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from exc
    _require_ort_runs(model, path, strict_error)
    notes.append(f"strict shape inference: {_first_line(strict_error)[:200]} (non-strict used)")
    return inferred, notes


def _require_ort_runs(model: onnx.ModelProto, path: Path, exc: BaseException) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        raise ConversionError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from exc


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"(unnamed, output {node.output[0] if node.output else '?'})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@dataclass(frozen=True)
class InputSpec:
    """One model input: name and shape (ints, or strings for dynamic dims)."""

    name: str
    shape: tuple[int | str, ...]

    @property
    def sample_shape(self) -> tuple[int | str, ...]:
        return self.shape[1:]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise ConversionError(
                f"model input {vi.name!r} is not float32; edgeship converts float models"
            )
        dims = tuple(  # a dim <= 0 is dynamic too (tf2onnx and Paddle2ONNX write -1)
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in t.shape.dim
        )
        if not dims:
            raise ConversionError(f"model input {vi.name!r} has no known rank")
        if isinstance(dims[0], int) and dims[0] != 1:
            raise ConversionError(
                f"model input {vi.name!r} has batch {dims[0]}; edgeship needs batch 1 or dynamic"
            )
        specs.append(InputSpec(vi.name, dims))
    return specs


def load_arrays(
    path: Path, specs: list[InputSpec], *, what: str, max_bytes: int, max_samples: int
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Load ``what`` (calibration / eval) data for ``specs``; returns (inputs, labels)."""
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CalibrationError(
            f"{what} file {path} is not an .npz archive (make it with numpy.savez)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = _npz_entries(npz, path, what, max_bytes)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CalibrationError(f"{what} file {path} is not a readable .npz ({exc})") from exc
    labels = entries.pop("label", None)
    arrays = _match_keys(entries, specs, path, what)
    counts = set()
    for spec in specs:
        arr = _check_array(arrays[spec.name], spec, path, what)
        arrays[spec.name] = arr[:max_samples]
        counts.add(len(arr))
    if len(counts) != 1:
        raise CalibrationError(
            f"{what} arrays in {path} hold different sample counts {sorted(counts)}"
        )
    n = counts.pop()
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != n:
            raise CalibrationError(f"'label' in {path} must hold one class id per sample ({n})")
        if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
            raise CalibrationError(f"'label' in {path} has dtype {labels.dtype}; class ids must "
                                   "be integers")
        labels = labels[:max_samples].astype(np.int64)
    return arrays, labels


def _npz_entries(
    npz: np.lib.npyio.NpzFile, path: Path, what: str, max_bytes: int
) -> dict[str, np.ndarray]:
    total = 0
    out = {}
    assert npz.zip is not None  # open until the caller's with-block ends
    for key in sorted(npz.files):
        info = npz.zip.getinfo(key + ".npy" if key + ".npy" in npz.zip.namelist() else key)
        total += info.file_size
        if total > max_bytes:
            raise CalibrationError(f"{what} file {path} holds over {max_bytes} bytes of arrays")
        out[key] = npz[key]
    return out


def _match_keys(
    entries: dict[str, np.ndarray], specs: list[InputSpec], path: Path, what: str
) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if all(n in entries for n in names):
        return {n: entries[n] for n in names}
    if len(specs) == 1 and len(entries) == 1:  # a single-input model may use any one key
        return {names[0]: next(iter(entries.values()))}
    have = ", ".join(sorted(entries)) or "(none)"
    raise CalibrationError(
        f"{what} file {path} has keys [{have}] but the model's inputs are [{', '.join(names)}]"
    )


def _check_array(arr: np.ndarray, spec: InputSpec, path: Path, what: str) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise CalibrationError(
            f"{what} array {spec.name!r} in {path} has dtype {arr.dtype}, not numeric"
        )
    if arr.ndim != len(spec.shape) or len(arr) == 0:
        if arr.ndim >= 1 and len(arr) == 0:
            raise CalibrationError(f"{what} set {path} is empty (0 samples for {spec.name!r})")
        raise CalibrationError(
            f"{what} array {spec.name!r} in {path} has shape {arr.shape}; "
            f"expected (N, {', '.join(map(str, spec.sample_shape))})"
        )
    for got, want in zip(arr.shape[1:], spec.sample_shape, strict=True):
        if isinstance(want, int) and got != want:
            raise CalibrationError(
                f"{what} array {spec.name!r} in {path} has shape {arr.shape}; "
                f"expected (N, {', '.join(map(str, spec.sample_shape))})"
            )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
        raise CalibrationError(
            f"{what} array {spec.name!r} in {path} has NaN/Inf in {bad} sample(s)"
        )
    return np.ascontiguousarray(arr)
