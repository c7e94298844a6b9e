"""The ``edgeship-tensor`` delta: per-tensor differences, entropy-friendly, zstd-compressed.

Layout::

    b"ESTD" | u8 version (1) | u32 LE header length | zstd(JSON header) | streams...

The header records the base and new sizes, the tensor byte ranges of the base
(``old_cut``) and of the new file (``regions``: ``[offset, length, width, mode,
base_offset]``) and the compressed and raw length of each stream. The *skeleton* of a file
is the file with its tensor ranges cut out (protobuf / flatbuffer framing, names, graph);
the new skeleton is a bsdiff4 patch of the base skeleton. Each new tensor is either
``SAME`` (identical to the base tensor), ``DIFF`` (difference to the base tensor) or
``LIT`` (raw bytes). Differences are element-wise wrapping integer subtraction, so they
are exact for any dtype, and small for small weight changes:

- 1-byte elements (INT8 weights): significance coding, each a packed bit stream —
  ``nz`` (d != 0), then for the non-zero ones ``sign`` and ``big`` (|d| > 1), then
  ``rest`` (|d| - 2, one byte) for the big ones. Typical updates move an int8 weight by 0
  or ±1, so the cost approaches the entropy of d instead of zstd's 1-bit-per-byte floor;
- wider elements (int32 bias, float32 scale): zigzag, then split into byte planes so the
  mostly-zero high bytes compress away.

Decoding needs no model parser; every declared size is checked against ``max_output``
and against what the regions imply before decompression.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import zstandard
from edgeship.sdk._delta_parse import Region, find_regions

from edgeship._errors import MalformedError

__all__ = ["decode", "encode"]

_MAGIC = b"ESTD\x01"
_SAME, _DIFF, _LIT = 0, 1, 2
_LEVEL = 19
_MAX_HEADER = 16 * 1024 * 1024  # bytes, raw JSON
_STREAMS = ("skel", "nz", "sign", "big", "rest", "wide", "lit")
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _cut(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    parts, pos = [], 0
    for off, length in cuts:
        parts.append(data[pos:off])
        pos = off + length
    parts.append(data[pos:])
    return b"".join(parts)


def _diff(new: bytes, old: bytes, width: int) -> Any:
    dt = _UINT[width]
    return np.frombuffer(new, dt) - np.frombuffer(old, dt)  # wraps: exact for any dtype


def _zigzag_planes(diff: Any, width: int) -> bytes:
    bits = 8 * width
    signed = diff.view(np.dtype(f"i{width}"))
    zz = ((signed << 1) ^ (signed >> (bits - 1))).view(diff.dtype)
    return np.ascontiguousarray(zz.view(np.uint8).reshape(-1, width).T).tobytes()


def _unzigzag_planes(planes: bytes, width: int) -> Any:
    dt = _UINT[width]
    zz = np.ascontiguousarray(np.frombuffer(planes, np.uint8).reshape(width, -1).T).view(dt)
    zz = zz.reshape(-1)
    return (zz >> dt(1)) ^ (np.zeros_like(zz) - (zz & dt(1)))


def _entropy_bits(values: Any) -> float:
    counts = np.bincount(values.astype(np.int64).ravel())
    counts = counts[counts > 0]
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def _int8_cost(d: Any, new: bytes) -> tuple[float, float]:
    """Estimated bits of (DIFF, LIT) coding for a 1-byte tensor."""
    nz = d != 0
    mag = np.abs(d[nz].view(np.int8).astype(np.int16))
    diff_bits = _entropy_bits(nz) + nz.sum() + _entropy_bits(mag > 1) + _entropy_bits(mag[mag > 1])
    return diff_bits, _entropy_bits(np.frombuffer(new, np.uint8))


class _Encoder:
    def __init__(self) -> None:
        self.int8: list[Any] = []
        self.wide: list[bytes] = []
        self.lit: list[bytes] = []

    def add(self, new: bytes, old: bytes | None, width: int) -> int:
        if old is None or len(old) != len(new):
            self.lit.append(new)
            return _LIT
        if new == old:
            return _SAME
        d = _diff(new, old, width)
        if width == 1:
            diff_bits, lit_bits = _int8_cost(d, new)
            if lit_bits < diff_bits:
                self.lit.append(new)
                return _LIT
            self.int8.append(d)
        else:
            self.wide.append(_zigzag_planes(d, width))
        return _DIFF

    def streams(self) -> dict[str, bytes]:
        d = np.concatenate(self.int8).view(np.int8) if self.int8 else np.zeros(0, np.int8)
        nz = d != 0
        v = d[nz].astype(np.int16)
        mag = np.abs(v)
        big = mag > 1
        return {
            "nz": np.packbits(nz).tobytes(),
            "sign": np.packbits(v < 0).tobytes(),
            "big": np.packbits(big).tobytes(),
            "rest": (mag[big] - 2).astype(np.uint8).tobytes(),
            "wide": b"".join(self.wide),
            "lit": b"".join(self.lit),
        }


def encode(old: bytes, new: bytes) -> bytes:
    """Delta of ``new`` against ``old`` (see the module docstring)."""
    import bsdiff4

    old_regions, new_regions = find_regions(old), find_regions(new)
    by_name = {r.name: r for r in old_regions}
    enc = _Encoder()
    rows = []
    for r in new_regions:
        o = by_name.get(r.name)
        base = old[o.offset : o.offset + o.length] if o and o.width == r.width else None
        mode = enc.add(new[r.offset : r.offset + r.length], base, r.width)
        rows.append([r.offset, r.length, r.width, mode, o.offset if base is not None else -1])
    old_cut = [(r.offset, r.length) for r in old_regions]
    new_skel = _cut(new, [(r.offset, r.length) for r in new_regions])
    raw = {"skel": bsdiff4.diff(_cut(old, old_cut), new_skel), **enc.streams()}
    cctx = zstandard.ZstdCompressor(level=_LEVEL)
    packed = {k: cctx.compress(v) if v else b"" for k, v in raw.items()}
    header = {
        "old_size": len(old),
        "new_size": len(new),
        "skel_size": len(new_skel),
        "old_cut": old_cut,
        "regions": rows,
        "streams": {k: [len(packed[k]), len(raw[k])] for k in _STREAMS},
    }
    head = cctx.compress(json.dumps(header, separators=(",", ":")).encode())
    return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *(packed[k] for k in _STREAMS)])


# --- decoding: every number in the header is hostile until checked ------------------------


def _bad(why: str) -> MalformedError:
    return MalformedError(f"delta: edgeship-tensor {why}")


def _read_header(delta: bytes) -> tuple[dict[str, Any], int]:
    if len(delta) < 9 or delta[:5] != _MAGIC:
        raise _bad("bad magic")
    (hlen,) = struct.unpack_from("<I", delta, 5)
    if 9 + hlen > len(delta):
        raise _bad("header overruns the delta")
    try:
        text = zstandard.ZstdDecompressor().decompress(delta[9 : 9 + hlen],
                                                       max_output_size=_MAX_HEADER)
        header = json.loads(text)
    except (zstandard.ZstdError, ValueError) as exc:
        raise _bad(f"header unreadable ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad("header is not an object")
    return header, 9 + hlen


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{what} out of range")
    return value


def _check_ranges(pairs: list[tuple[int, int]], size: int, what: str) -> None:
    end = 0
    for off, length in pairs:
        if off < end or off + length > size:
            raise _bad(f"{what} ranges overlap or overrun the file")
        end = off + length


def _layout(header: dict[str, Any], base_size: int, max_output: int) -> tuple[
        list[tuple[int, int]], list[tuple[int, int, int, int, int]], int, int]:
    new_size = _int(header.get("new_size"), 0, max_output, "new_size")
    if header.get("old_size") != base_size:
        raise _bad(f"was made for a base of {header.get('old_size')} bytes, not {base_size}")
    cuts_raw, rows_raw = header.get("old_cut"), header.get("regions")
    if not isinstance(cuts_raw, list) or not isinstance(rows_raw, list):
        raise _bad("layout lists missing")
    try:
        cuts = [(_int(a, 0, base_size, "cut"), _int(b, 0, base_size, "cut")) for a, b in cuts_raw]
        rows = [tuple(_int(x, -1, max(new_size, base_size), "region") for x in row)
                for row in rows_raw]
    except (TypeError, ValueError) as exc:
        raise _bad("layout entries malformed") from exc
    if any(len(r) != 5 or r[2] not in _UINT or r[3] not in (_SAME, _DIFF, _LIT) or r[1] % r[2]
           for r in rows):
        raise _bad("region entry malformed")
    _check_ranges(cuts, base_size, "base")
    _check_ranges([(r[0], r[1]) for r in rows], new_size, "new")
    skel_size = new_size - sum(r[1] for r in rows)
    if header.get("skel_size") != skel_size:
        raise _bad("skeleton size does not add up")
    return cuts, rows, new_size, skel_size  # type: ignore[return-value]


class _Streams:
    """Decompress each stream lazily with its declared raw size as the hard limit."""

    def __init__(self, delta: bytes, start: int, table: Any, max_raw: int) -> None:
        if not isinstance(table, dict):
            raise _bad("stream table missing")
        self._raw: dict[str, bytes] = {}
        pos = start
        dctx = zstandard.ZstdDecompressor()
        for name in _STREAMS:
            entry = table.get(name)
            if not isinstance(entry, list) or len(entry) != 2:
                raise _bad(f"stream {name} not declared")
            clen, rlen = _int(entry[0], 0, len(delta), name), _int(entry[1], 0, max_raw, name)
            blob = delta[pos : pos + clen]
            pos += clen
            try:
                raw = dctx.decompress(blob, max_output_size=rlen) if clen else b""
            except zstandard.ZstdError as exc:
                raise _bad(f"stream {name} corrupt ({exc})") from exc
            if len(raw) != rlen:
                raise _bad(f"stream {name} has {len(raw)} bytes, declared {rlen}")
            self._raw[name] = raw
        if pos != len(delta):
            raise _bad("trailing or missing stream bytes")

    def get(self, name: str, expected: int | None = None) -> bytes:
        raw = self._raw[name]
        if expected is not None and len(raw) != expected:
            raise _bad(f"stream {name} has {len(raw)} bytes, regions need {expected}")
        return raw


def _int8_diffs(streams: _Streams, n: int) -> Any:
    nz = np.unpackbits(np.frombuffer(streams.get("nz", (n + 7) // 8), np.uint8))[:n].astype(bool)
    k = int(nz.sum())
    neg = np.unpackbits(np.frombuffer(streams.get("sign", (k + 7) // 8), np.uint8))[:k]
    big = np.unpackbits(np.frombuffer(streams.get("big", (k + 7) // 8), np.uint8))[:k]
    big = big.astype(bool)
    mag = np.ones(k, np.int16)
    mag[big] = np.frombuffer(streams.get("rest", int(big.sum())), np.uint8).astype(np.int16) + 2
    d = np.zeros(n, np.int16)
    d[nz] = np.where(neg.astype(bool), -mag, mag)
    return d.astype(np.int8).view(np.uint8)


def decode(base: bytes, delta: bytes, *, max_output: int) -> bytes:
    """Rebuild the new file from ``base`` and an ``edgeship-tensor`` delta."""
    from edgeship.sdk._delta import bspatch

    header, start = _read_header(delta)
    cuts, rows, new_size, skel_size = _layout(header, len(base), max_output)
    streams = _Streams(delta, start, header.get("streams"), max(new_size, 1) * 2 + 1024)
    skel = bspatch(_cut(base, cuts), streams.get("skel"), max_output=skel_size)
    if len(skel) != skel_size:
        raise _bad("skeleton patch gives the wrong size")
    n8 = sum(r[1] for r in rows if r[3] == _DIFF and r[2] == 1)
    d8 = _int8_diffs(streams, n8)
    wide = streams.get("wide", sum(r[1] for r in rows if r[3] == _DIFF and r[2] > 1))
    lit = streams.get("lit", sum(r[1] for r in rows if r[3] == _LIT))
    out, pos, p8, pw, pl, ps = [], 0, 0, 0, 0, 0
    for off, length, width, mode, old_off in rows:
        out.append(skel[ps : ps + off - pos])
        ps, pos = ps + off - pos, off + length
        if mode == _LIT:
            out.append(lit[pl : pl + length])
            pl += length
            continue
        if old_off < 0 or old_off + length > len(base):
            raise _bad("region points outside the base")
        old = np.frombuffer(base, _UINT[width], length // width, old_off)
        if mode == _SAME:
            out.append(old.tobytes())
        elif width == 1:
            out.append((old + d8[p8 : p8 + length]).tobytes())
            p8 += length
        else:
            out.append((old + _unzigzag_planes(wide[pw : pw + length], width)).tobytes())
            pw += length
    out.append(skel[ps:])
    return b"".join(out)


def regions_of(data: bytes) -> list[Region]:
    """The tensor ranges the encoder would use (for tests and the benchmark)."""
    return find_regions(data)
