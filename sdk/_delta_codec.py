"""Entropy-friendly layouts for tensor differences (numpy, pure, used by _delta_tensor).

zstd codes literals with Huffman, which cannot spend less than one bit per byte-symbol.
INT8 weight differences of a small update are mostly 0 or ±1 (well under one bit of
entropy per weight), so they are reshaped first into streams whose symbols carry more
information each:

- *significance*: ``nz`` mask (d != 0), then for non-zero entries ``sign`` bits, a ``big``
  mask (|d| > 1) and ``rest`` bytes (|d| - 2) for the big ones;
- a mask is stored either as packed bits (dense masks) or as LEB128 varint gaps between
  set positions (sparse masks: the gaps are geometric, for which Huffman is near optimal),
  whichever compresses smaller;
- wider integers are zigzagged and split into byte planes so near-zero high bytes vanish.

Decoders treat input as hostile: counts and lengths are checked, errors are ValueError
(the caller turns them into MalformedError).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zstandard

__all__ = [
    "RAW",
    "ZSTD",
    "compress",
    "decode_int8",
    "encode_int8",
    "entropy_bits",
    "unzigzag_planes",
    "zigzag_planes",
]

RAW, ZSTD = 0, 1
PACKED, GAPS = 0, 1
_LEVEL = 19
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
Stream = tuple[int, int, bytes, int]  # (mask code, method, blob, raw size)


def compress(raw: bytes, code: int = PACKED) -> Stream:
    """zstd unless that does not help (random sign bits): ``(code, method, blob, raw size)``."""
    if not raw:
        return code, RAW, b"", 0
    packed = zstandard.ZstdCompressor(level=_LEVEL).compress(raw)
    return (code, ZSTD, packed, len(raw)) if len(packed) < len(raw) else (code, RAW, raw, len(raw))


def entropy_bits(values: Any) -> float:
    """Order-0 entropy of ``values`` in bits (the floor for coding them independently)."""
    counts = np.bincount(np.asarray(values).astype(np.int64).ravel())
    counts = counts[counts > 0]
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def zigzag_planes(diff: Any, width: int) -> bytes:
    signed = diff.view(np.dtype(f"i{width}"))
    zz = ((signed << 1) ^ (signed >> (8 * width - 1))).view(diff.dtype)
    return np.ascontiguousarray(zz.view(np.uint8).reshape(-1, width).T).tobytes()


def unzigzag_planes(planes: bytes, width: int) -> Any:
    dt = UINT[width]
    zz = np.ascontiguousarray(np.frombuffer(planes, np.uint8).reshape(width, -1).T)
    zz = zz.view(dt).reshape(-1)
    return (zz >> dt(1)) ^ (np.zeros_like(zz) - (zz & dt(1)))


def varints(values: Any) -> bytes:
    values = np.asarray(values, np.uint64)
    nbytes = np.ones(values.size, np.int64)
    for k in range(1, 10):
        nbytes += values >= (np.uint64(1) << np.uint64(7 * k))
    out = np.zeros(int(nbytes.sum()), np.uint8)
    starts = np.cumsum(nbytes) - nbytes
    for k in range(int(nbytes.max(initial=0))):
        sel = nbytes > k
        byte = (values[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def unvarints(raw: bytes) -> Any:
    b = np.frombuffer(raw, np.uint8)
    if b.size and b[-1] & 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = ends - starts + 1
    if lengths.size and lengths.max() > 9:
        raise ValueError("varint too long")
    group = np.repeat(np.arange(ends.size), lengths)
    shift = (np.arange(b.size) - starts[group]) * 7
    values = np.zeros(ends.size, np.uint64)
    np.add.at(values, group, (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64))
    return values


def pack_mask(mask: Any) -> Stream:
    """The smaller of packed bits and varint gaps for a boolean mask."""
    packed = compress(np.packbits(mask).tobytes(), PACKED)
    gaps = compress(varints(np.diff(np.flatnonzero(mask), prepend=-1) - 1), GAPS)
    return min(packed, gaps, key=lambda c: len(c[2]))


def unpack_mask(code: int, raw: bytes, n: int) -> Any:
    if code == PACKED:
        if len(raw) != (n + 7) // 8:
            raise ValueError("packed mask has the wrong length")
        return np.unpackbits(np.frombuffer(raw, np.uint8))[:n].astype(bool)
    if code != GAPS:
        raise ValueError("unknown mask code")
    gaps = unvarints(raw)
    if gaps.size > n or (gaps.size and gaps.max() >= n):
        raise ValueError("mask gaps overrun the tensor")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions.size and positions[-1] >= n:
        raise ValueError("mask gaps overrun the tensor")
    mask = np.zeros(n, bool)
    mask[positions] = True
    return mask


def encode_int8(d: Any) -> dict[str, Stream]:
    """Significance streams of int8 differences by name."""
    d = d.view(np.int8)
    nz = d != 0
    v = d[nz].astype(np.int16)
    mag = np.abs(v)
    big = mag > 1
    return {
        "nz": pack_mask(nz),
        "sign": compress(np.packbits(v < 0).tobytes()),
        "big": pack_mask(big),
        "rest": compress((mag[big] - 2).astype(np.uint8).tobytes()),
    }


def decode_int8(raw: dict[str, tuple[int, bytes]], n: int) -> Any:
    """Inverse of :func:`encode_int8` given each stream's (code, decompressed bytes)."""
    nz = unpack_mask(*raw["nz"], n)
    k = int(nz.sum())
    neg = unpack_mask(PACKED, raw["sign"][1], k)
    big = unpack_mask(*raw["big"], k)
    rest = np.frombuffer(raw["rest"][1], np.uint8)
    if rest.size != int(big.sum()):
        raise ValueError("rest stream has the wrong length")
    mag = np.ones(k, np.int16)
    mag[big] = rest.astype(np.int16) + 2
    d = np.zeros(n, np.int16)
    d[nz] = np.where(neg, -mag, mag)
    return d.astype(np.int8).view(np.uint8)


def int8_cost(d: Any, new: bytes) -> tuple[float, float]:
    """Estimated bits of (significance-coded difference, raw literal) for one tensor."""
    d = d.view(np.int8)
    nz = d != 0
    mag = np.abs(d[nz].astype(np.int16))
    diff = entropy_bits(nz) + nz.sum() + entropy_bits(mag > 1) + entropy_bits(mag[mag > 1])
    return float(diff), entropy_bits(np.frombuffer(new, np.uint8))
