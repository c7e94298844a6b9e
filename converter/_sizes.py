"""Sizes for the report: the fp32 model as it lies on disk (its .onnx file plus every
external data file its tensors point at), the INT8 outputs, their zstd sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ZSTD_LEVEL = 9  # for the report's compressed sizes; higher levels cost seconds on 1 MB
_READ = 1 << 24  # bytes per read when compressing a large external data file


def fp32_disk_bytes(path: Path, external_files: list[Path]) -> int:
    """Bytes of the fp32 model on disk: the model file plus each external data file it
    references (the loader's list: each file once, however many tensors share it)."""
    return path.stat().st_size + sum(f.stat().st_size for f in external_files)


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
    path: Path, external: list[Path], model_bytes: bytes, int8: bytes, tflite: int | None
) -> dict[str, Any]:
    """The report's sizes in bytes: fp32 as it lies on disk (external data included,
    ``fp32_external_files`` says how many files), the INT8 ONNX (and TFLite), ratios to
    fp32 and zstd sizes."""
    fp32 = fp32_disk_bytes(path, external)
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
