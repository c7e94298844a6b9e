"""Where the tensors are: byte ranges of weight tensors inside an ONNX or TFLite file.

Used only on the host, to *make* an ``edgeship-tensor`` delta (a device applying one needs
no parser: the delta carries the layout). No onnx / tflite import: the ONNX protobuf wire
format and the TFLite flatbuffer are walked directly, because the libraries do not expose
byte offsets. Anything unexpected yields no regions (the delta then degrades to bsdiff4 of
the whole file), never an error.

- ONNX: ``ModelProto.graph`` (field 7) -> ``GraphProto.initializer`` (field 5) ->
  ``TensorProto.raw_data`` (field 9), named by ``TensorProto.name`` (field 8), element
  width from ``data_type`` (field 2).
- TFLite: ``Model.buffers`` (field 4) -> ``Buffer.data`` (field 0); a buffer is named by
  the first ``SubGraph.tensors[i]`` (field 0) whose ``buffer`` (field 2) points at it,
  and its element width comes from that tensor's ``type`` (field 1). Each tensor's
  ``quantization`` (field 4) ``scale`` (2, float32) and ``zero_point`` (3, int64) vectors
  are regions too: per-channel scales change with every retrain.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Region", "find_regions"]

# ONNX TensorProto.DataType -> bytes per element
_ONNX_WIDTH = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
# TFLite TensorType -> bytes per element
_TFL_WIDTH = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 12: 8, 15: 4, 16: 2}
_MIN_REGION = 16  # bytes; smaller tensors stay in the skeleton (bsdiff handles them)


@dataclass(frozen=True)
class Region:
    """``length`` bytes at ``offset`` holding tensor ``name`` of ``width``-byte elements."""

    name: str
    offset: int
    length: int
    width: int


def find_regions(data: bytes) -> list[Region]:
    """Tensor byte ranges in ``data``, sorted and non-overlapping; ``[]`` if unknown."""
    try:
        regions = _tflite_regions(data) if data[4:8] == b"TFL3" else _onnx_regions(data)
    except (IndexError, ValueError, struct.error, KeyError):
        return []
    kept, end = [], 0
    for region in sorted(regions, key=lambda r: r.offset):
        # a shared or overlapping range stays in the skeleton; bsdiff covers it
        if region.length < _MIN_REGION or region.offset < end:
            continue
        if region.offset + region.length > len(data):
            return []
        kept.append(region)
        end = region.offset + region.length
    return _unique_names(kept)


def _unique_names(regions: list[Region]) -> list[Region]:
    seen: dict[str, int] = {}
    out = []
    for r in regions:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        out.append(r if n == 0 else Region(f"{r.name}#{n}", r.offset, r.length, r.width))
    return out


# --- protobuf wire format -------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field number, wire type, value or start, end)`` for one message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("length-delimited field overruns its message")
            yield field, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            yield field, wire, pos, pos
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _onnx_regions(data: bytes) -> list[Region]:
    regions: list[Region] = []
    for field, wire, gstart, gend in _fields(data, 0, len(data)):
        if field != 7 or wire != 2:
            continue
        for f2, w2, tstart, tend in _fields(data, gstart, gend):
            if f2 == 5 and w2 == 2:
                region = _onnx_tensor(data, tstart, tend)
                if region is not None:
                    regions.append(region)
    return regions


def _onnx_tensor(data: bytes, start: int, end: int) -> Region | None:
    name, dtype, raw = "", 0, None
    for field, wire, a, b in _fields(data, start, end):
        if field == 8 and wire == 2:
            name = data[a:b].decode("utf-8", "replace")
        elif field == 2 and wire == 0:
            dtype = a
        elif field == 9 and wire == 2:
            raw = (a, b)
    if raw is None or not name:
        return None
    width = _ONNX_WIDTH.get(dtype, 1)
    if (raw[1] - raw[0]) % width:
        width = 1
    return Region(name, raw[0], raw[1] - raw[0], width)


# --- flatbuffers ----------------------------------------------------------------------------


def _u32(buf: bytes, pos: int) -> int:
    return int(struct.unpack_from("<I", buf, pos)[0])


def _field_pos(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the table at ``table``, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vsize:
        return None
    off = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + off if off else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + _u32(buf, pos)


def _vector(buf: bytes, table: int, index: int) -> tuple[int, int] | None:
    """``(start of elements, count)`` of a vector field."""
    pos = _field_pos(buf, table, index)
    if pos is None:
        return None
    vec = _deref(buf, pos)
    count = _u32(buf, vec)
    if vec + 4 + count > len(buf):  # elements are at least one byte each
        raise ValueError("vector overruns the file")
    return vec + 4, count


def _tables(buf: bytes, table: int, index: int) -> list[int]:
    vec = _vector(buf, table, index)
    if vec is None:
        return []
    start, count = vec
    if start + 4 * count > len(buf):
        raise ValueError("table vector overruns the file")
    return [_deref(buf, start + 4 * i) for i in range(count)]


def _tensor_names(buf: bytes, model: int) -> dict[int, tuple[str, int]]:
    names: dict[int, tuple[str, int]] = {}
    for subgraph in _tables(buf, model, 2):
        for tensor in _tables(buf, subgraph, 0):
            pos = _field_pos(buf, tensor, 2)
            index = _u32(buf, pos) if pos is not None else 0
            tpos, npos = _field_pos(buf, tensor, 1), _field_pos(buf, tensor, 3)
            ttype = buf[tpos] if tpos is not None else 0
            name = ""
            if npos is not None:
                sstart = _deref(buf, npos)
                name = buf[sstart + 4 : sstart + 4 + _u32(buf, sstart)].decode("utf-8", "replace")
            names.setdefault(index, (name, _TFL_WIDTH.get(ttype, 1)))
    return names


def _quant_regions(buf: bytes, model: int) -> list[Region]:
    """Per-channel ``scale`` (float32) and ``zero_point`` (int64) vectors of each tensor."""
    regions = []
    for g, subgraph in enumerate(_tables(buf, model, 2)):
        for t, tensor in enumerate(_tables(buf, subgraph, 0)):
            qpos = _field_pos(buf, tensor, 4)
            if qpos is None:
                continue
            quant = _deref(buf, qpos)
            for field, suffix, width in ((2, "scale", 4), (3, "zero_point", 8)):
                vec = _vector(buf, quant, field)
                if vec is not None and vec[1]:
                    regions.append(Region(f"q{g}.{t}/{suffix}", vec[0], vec[1] * width, width))
    return regions


def _tflite_regions(data: bytes) -> list[Region]:
    model = _u32(data, 0)
    names = _tensor_names(data, model)
    regions = _quant_regions(data, model)
    for i, buffer in enumerate(_tables(data, model, 4)):
        vec = _vector(data, buffer, 0)
        if vec is None or vec[1] == 0:
            continue
        name, width = names.get(i, (f"buffer{i}", 1))
        if vec[1] % width:
            width = 1
        regions.append(Region(name or f"buffer{i}", vec[0], vec[1], width))
    return regions
