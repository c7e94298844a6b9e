"""Sizes for the report: the fp32 model as it lies on disk (its .onnx file plus every
external data file its tensors point at), the INT8 outputs, their zstd sizes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

ZSTD_LEVEL = 9  # for the report's compressed sizes; higher levels cost seconds on 1 MB
_READ = 1 << 24  # bytes per read when compressing a large external data file


def external_data_files(model: onnx.ModelProto, model_dir: Path) -> list[Path]:
    """The distinct external data files that ``model``'s tensors (initializers, and
    tensors inside node attributes and subgraphs) reference, resolved against
    ``model_dir``, in first-reference order."""
    files: dict[Path, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location:
            files[model_dir / location] = None
    return list(files)


def fp32_files(path: Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The model file and the external data files it references. ``model`` may be the
    model as read *without* its external data; otherwise (or when it references none:
    a loader that pulled the weights in has cleared the references) the file is read
    again that way, which reads no weights."""
    if model is None or not _has_external(model):
        model = onnx.load(str(path), load_external_data=False)
    return [path, *external_data_files(model, path.parent)]


def fp32_disk_bytes(path: Path, model: onnx.ModelProto | None = None) -> int:
    """Bytes of the fp32 model on disk: the model file plus each distinct external data
    file it references (once, however many tensors share it)."""
    return sum(f.stat().st_size for f in fp32_files(path, model) if f.is_file())


def zstd_bytes(data: bytes) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def zstd_files_bytes(files: list[Path]) -> int:
    """zstd size of the files' concatenation, read in slices (weights can be large)."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    size = 0
    for file in files:
        if not file.is_file():
            continue
        with file.open("rb") as handle:
            while chunk := handle.read(_READ):
                size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


def report_sizes(
    path: Path, model: onnx.ModelProto, model_bytes: bytes, int8: bytes, tflite: int | None
) -> dict[str, Any]:
    """The report's sizes in bytes: fp32 as it lies on disk (external data included,
    ``fp32_external_files`` says how many files), the INT8 ONNX (and TFLite), ratios to
    fp32 and zstd sizes."""
    external = fp32_files(path, model)[1:]
    fp32 = fp32_disk_bytes(path, model)
    sizes: dict[str, Any] = {
        "fp32_bytes": fp32,
        "int8_onnx_bytes": len(int8),
        "int8_onnx_ratio": round(len(int8) / fp32, 4),
        "fp32_zstd_bytes": (
            zstd_files_bytes([path, *external]) if external else zstd_bytes(model_bytes)
        ),
        "int8_onnx_zstd_bytes": zstd_bytes(int8),
    }
    if external:
        sizes["fp32_external_files"] = len(external)
    if tflite is not None:
        sizes["int8_tflite_bytes"] = tflite
        sizes["int8_tflite_ratio"] = round(tflite / fp32, 4)
    return sizes


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
