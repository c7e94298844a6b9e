"""Boundary of the converter: read and check an ONNX model and the calibration / eval
arrays, turning every foreign failure into one clear edgeship error."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeship._errors import CalibrationError, ConversionError, InputError

MIN_OPSET = 13


def load_model(path: Path, *, max_bytes: int) -> onnx.ModelProto:
    """Read, check and shape-infer a float ONNX model (opset >= 13)."""
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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ConversionError(
            f"{path} uses opset {opset}; edgeship needs opset >= {MIN_OPSET} "
            "(upgrade it with onnx.version_converter.convert_version)"
        )
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path} is not a valid ONNX model: {first}") from exc
    return model


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
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
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
