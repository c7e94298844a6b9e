"""The ``edgeship-tensor`` delta: per-tensor differences, entropy-friendly, zstd-compressed.

Layout::

    b"ESTD\x01" | u32 LE header length | zstd(JSON header) | stream blobs in _STREAMS order

The header records the base and new sizes, the tensor byte ranges of the base
(``old_cut``), those of the new file (``regions``: ``[offset, length, width, mode,
base_offset]``) and, per stream, ``[stored bytes, raw bytes, method (0 raw, 1 zstd),
mask code (0 packed bits, 1 varint gaps)]``. The *skeleton* of a file is the file with its
tensor ranges cut out (protobuf / flatbuffer framing, names, graph); the new skeleton is a
bsdiff4 patch of the base skeleton (stream ``skel``). Each new tensor is ``SAME``
(identical to the base tensor of that name), ``DIFF`` (difference to it) or ``LIT`` (raw
bytes, stream ``lit``; chosen when cheaper, e.g. a retrained head). Differences are
element-wise wrapping integer subtraction, exact for any dtype: 1-byte elements go to the
significance streams ``nz``/``sign``/``big``/``rest``, wider ones to zigzag byte planes
(``wide``); see :mod:`edgeship.sdk._delta_codec`.

Decoding needs no model parser; every declared size is checked against ``max_output``
and against what the regions imply before anything is decompressed.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import zstandard
from edgeship.sdk import _delta_codec as codec
from edgeship.sdk._delta_parse import Region, find_regions

from edgeship._errors import MalformedError

__all__ = ["decode", "encode"]

_MAGIC = b"ESTD\x01"
_SAME, _DIFF, _LIT = 0, 1, 2
_MAX_HEADER = 16 * 1024 * 1024  # bytes, raw JSON
_STREAMS = ("skel", "nz", "sign", "big", "rest", "wide", "lit")


def _cut(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    parts, pos = [], 0
    for off, length in cuts:
        parts.append(data[pos:off])
        pos = off + length
    parts.append(data[pos:])
    return b"".join(parts)


def _diff(new: bytes, old: bytes, width: int) -> Any:
    dt = codec.UINT[width]
    return np.frombuffer(new, dt) - np.frombuffer(old, dt)  # wraps: exact for any dtype


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
            diff_bits, lit_bits = codec.int8_cost(d, new)
            if lit_bits < diff_bits:
                self.lit.append(new)
                return _LIT
            self.int8.append(d)
        else:
            self.wide.append(codec.zigzag_planes(d, width))
        return _DIFF

    def streams(self) -> dict[str, codec.Stream]:
        d = np.concatenate(self.int8) if self.int8 else np.zeros(0, np.uint8)
        wide, lit = b"".join(self.wide), b"".join(self.lit)
        return {**codec.encode_int8(d), "wide": codec.compress(wide), "lit": codec.compress(lit)}


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
    skel_patch = bsdiff4.diff(_cut(old, old_cut), new_skel)  # already bz2-compressed
    streams = {"skel": (0, codec.RAW, skel_patch, len(skel_patch)), **enc.streams()}
    header = {
        "old_size": len(old),
        "new_size": len(new),
        "skel_size": len(new_skel),
        "old_cut": old_cut,
        "regions": rows,
        # [stored bytes, raw bytes (the decompression bound), method, mask code]
        "streams": {k: [len(streams[k][2]), streams[k][3], streams[k][1], streams[k][0]]
                    for k in _STREAMS},
    }
    head = zstandard.ZstdCompressor(level=19).compress(
        json.dumps(header, separators=(",", ":")).encode())
    blobs = [streams[k][2] for k in _STREAMS]
    return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *blobs])


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
    if any(len(r) != 5 or r[2] not in codec.UINT or r[3] not in (_SAME, _DIFF, _LIT) or r[1] % r[2]
           for r in rows):
        raise _bad("region entry malformed")
    _check_ranges(cuts, base_size, "base")
    _check_ranges([(r[0], r[1]) for r in rows], new_size, "new")
    skel_size = new_size - sum(r[1] for r in rows)
    if header.get("skel_size") != skel_size:
        raise _bad("skeleton size does not add up")
    return cuts, rows, new_size, skel_size  # type: ignore[return-value]


class _Streams:
    """Each stream decompressed with its declared raw size as the hard limit."""

    def __init__(self, delta: bytes, start: int, table: Any, max_raw: int) -> None:
        if not isinstance(table, dict):
            raise _bad("stream table missing")
        self.raw: dict[str, tuple[int, bytes]] = {}
        pos = start
        for name in _STREAMS:
            entry = table.get(name)
            if not isinstance(entry, list) or len(entry) != 4:
                raise _bad(f"stream {name} not declared")
            clen, rlen = _int(entry[0], 0, len(delta), name), _int(entry[1], 0, max_raw, name)
            method, code = _int(entry[2], 0, 1, name), _int(entry[3], 0, 1, name)
            blob = delta[pos : pos + clen]
            pos += clen
            self.raw[name] = (code, self._unpack(name, blob, method, rlen))
        if pos != len(delta):
            raise _bad("trailing or missing stream bytes")

    @staticmethod
    def _unpack(name: str, blob: bytes, method: int, rlen: int) -> bytes:
        try:
            raw = (zstandard.ZstdDecompressor().decompress(blob, max_output_size=rlen)
                   if method == codec.ZSTD else blob)
        except zstandard.ZstdError as exc:
            raise _bad(f"stream {name} corrupt ({exc})") from exc
        if len(raw) != rlen:
            raise _bad(f"stream {name} has {len(raw)} bytes, declared {rlen}")
        return raw

    def get(self, name: str, expected: int | None = None) -> bytes:
        raw = self.raw[name][1]
        if expected is not None and len(raw) != expected:
            raise _bad(f"stream {name} has {len(raw)} bytes, regions need {expected}")
        return raw


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
    try:
        d8 = codec.decode_int8(streams.raw, n8)
    except ValueError as exc:
        raise _bad(f"int8 streams inconsistent ({exc})") from exc
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
        old = np.frombuffer(base, codec.UINT[width], length // width, old_off)
        if mode == _SAME:
            out.append(old.tobytes())
        elif width == 1:
            out.append((old + d8[p8 : p8 + length]).tobytes())
            p8 += length
        else:
            out.append((old + codec.unzigzag_planes(wide[pw : pw + length], width)).tobytes())
            pw += length
    out.append(skel[ps:])
    return b"".join(out)


def regions_of(data: bytes) -> list[Region]:
    """The tensor ranges the encoder would use (for tests and the benchmark)."""
    return find_regions(data)
