"""Entropy-friendly layouts for tensor differences (numpy, pure, used by _delta_tensor).

zstd codes literals with Huffman, which cannot spend less than one bit per byte-symbol.
INT8 weight differences of a small update are mostly 0 or ±1 (well under one bit of
entropy per weight), so they are reshaped first into streams whose symbols carry more
information each:

- *significance*: ``nz`` mask (d != 0), then for non-zero entries ``sign`` bits (relative
  to the base value's sign), a ``big`` mask (|d| > 1) and ``rest`` bytes (|d| - 2);
- *context*: the masks are split by the magnitude bucket of the base value (known to the
  decoder), since large weights change more often than small ones;
- a mask is stored either as packed bits (dense masks) or as LEB128 varint gaps between
  set positions (sparse masks: the gaps are geometric, for which Huffman is near optimal),
  whichever compresses smaller;
- wider integers are zigzagged, then split into byte planes so near-zero high bytes
  vanish, or written as varints, whichever is smaller.

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
_MAX_WINDOW = 1 << 24  # bytes of decoder memory a frame may ask for
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
Stream = tuple[int, int, bytes, int]  # (mask code, method, blob, raw size)
N_CTX = 8


def compress(raw: bytes, code: int = PACKED) -> Stream:
    """zstd unless that does not help (random sign bits): ``(code, method, blob, raw size)``."""
    if not raw:
        return code, RAW, b"", 0
    packed = zstandard.ZstdCompressor(level=_LEVEL).compress(raw)
    return (code, ZSTD, packed, len(raw)) if len(packed) < len(raw) else (code, RAW, raw, len(raw))


def decompress(blob: bytes, limit: int) -> bytes:
    """zstd-decompress at most ``limit`` bytes; ValueError for anything hostile.

    python-zstandard allocates a frame's declared content size, ignoring
    ``max_output_size``, so the declaration is checked first.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > limit:
            raise ValueError(f"frame declares {params.content_size} bytes, limit {limit}")
        dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
        out = dctx.decompress(blob, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame corrupt ({exc})") from exc
    if len(out) > limit:
        raise ValueError("zstd frame larger than declared")
    return out


def entropy_bits(values: Any) -> float:
    """Order-0 entropy of ``values`` in bits (the floor for coding them independently)."""
    counts = np.bincount(np.asarray(values).astype(np.int64).ravel())
    counts = counts[counts > 0]
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def zigzag_planes(diff: Any, width: int) -> bytes:
    zz = zigzag(diff, width)
    return np.ascontiguousarray(zz.view(np.uint8).reshape(-1, width).T).tobytes()


def unzigzag_planes(planes: bytes, width: int) -> Any:
    zz = np.ascontiguousarray(np.frombuffer(planes, np.uint8).reshape(width, -1).T)
    return unzigzag(zz.view(UINT[width]).reshape(-1))


def zigzag(diff: Any, width: int) -> Any:
    """Wrapping difference -> unsigned zigzag value (small magnitude, small number)."""
    signed = diff.view(np.dtype(f"i{width}"))
    return ((signed << 1) ^ (signed >> (8 * width - 1))).view(diff.dtype)


def unzigzag(zz: Any) -> Any:
    one = zz.dtype.type(1)
    return (zz >> one) ^ (np.zeros_like(zz) - (zz & one))


def encode_wide(diffs: list[Any]) -> Stream:
    """Differences of wide tensors: zigzag byte planes per tensor, or zigzag varints for all,
    whichever is smaller (mask-code field: 0 planes, 1 varints)."""
    planes = compress(b"".join(zigzag_planes(d, d.itemsize) for d in diffs), PACKED)
    values = [zigzag(d, d.itemsize).astype(np.uint64) for d in diffs]
    packed = compress(varints(np.concatenate(values) if values else np.zeros(0, np.uint64)),
                      GAPS)
    return min(planes, packed, key=lambda c: len(c[2]))


def decode_wide(code: int, raw: bytes, shapes: list[tuple[int, int]]) -> list[Any]:
    """Zigzag-decoded differences for tensors of ``(bytes, width)``, as unsigned arrays."""
    if code == PACKED:
        if len(raw) != sum(n for n, _ in shapes):
            raise ValueError("wide planes have the wrong length")
        out, pos = [], 0
        for n, width in shapes:
            out.append(unzigzag_planes(raw[pos : pos + n], width))
            pos += n
        return out
    values = unvarints(raw)
    if values.size != sum(n // w for n, w in shapes):
        raise ValueError("wide varints have the wrong count")
    out, pos = [], 0
    for n, width in shapes:
        chunk = values[pos : pos + n // width]
        if width < 8 and chunk.size and int(chunk.max()) >> (8 * width):
            raise ValueError("wide value out of range")
        out.append(unzigzag(chunk.astype(UINT[width])))
        pos += n // width
    return out


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
    if lengths.size and lengths.max() > 10:
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


def context(old: Any) -> Any:
    """Per-weight context known to both sides: the base value's magnitude bucket.

    A weight's chance to change grows with its magnitude (a relative move, a rescale,
    update-aware rounding all act in proportion to |q|), so masks are coded per bucket.
    """
    return np.minimum(np.abs(old.view(np.int8).astype(np.int16)) >> 4, N_CTX - 1)


def read_varints(data: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """``count`` LEB128 varints from ``data[pos:]``; ValueError when truncated."""
    out = []
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("varints truncated")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(value)
    return out, pos


def pack_masks(mask: Any, ctx: Any) -> Stream:
    """One mask per context bucket (or one for all, if smaller): varint table + blobs."""
    candidates = []
    for groups in (1, N_CTX):  # context-free statistics may be cheaper than 8 tables
        parts = [pack_mask(mask if groups == 1 else mask[ctx == k]) for k in range(groups)]
        table = varints([groups, *(v for code, method, blob, raw in parts
                                   for v in (code, method, len(blob), raw))])
        candidates.append(table + b"".join(p[2] for p in parts))
    data = min(candidates, key=len)
    return PACKED, RAW, data, len(data)


def unpack_masks(raw: bytes, ctx: Any) -> Any:
    (groups,), pos = read_varints(raw, 0, 1)
    if groups not in (1, N_CTX):
        raise ValueError("mask group count out of range")
    table, pos = read_varints(raw, pos, 4 * groups)
    mask = np.zeros(ctx.size, bool)
    for k in range(groups):
        code, method, clen, rlen = table[4 * k : 4 * k + 4]
        where = np.arange(ctx.size) if groups == 1 else np.flatnonzero(ctx == k)
        if method > ZSTD or rlen > 2 * where.size + 64 or pos + clen > len(raw):
            raise ValueError("mask table out of range")
        blob = raw[pos : pos + clen]
        pos += clen
        data = decompress(blob, rlen) if method == ZSTD else blob
        if len(data) != rlen:
            raise ValueError("mask blob has the wrong length")
        mask[where] = unpack_mask(code, data, where.size)
    if pos != len(raw):
        raise ValueError("trailing bytes after the masks")
    return mask


def encode_int8(d: Any, old: Any) -> dict[str, Stream]:
    """Significance streams of int8 differences ``d`` against base values ``old``.

    The sign is stored relative to the base value's sign: updates that shrink or grow
    weights (weight decay, a rescale, update-aware rounding) make that bit predictable.
    """
    d, ctx, negative = d.view(np.int8), context(old), old.view(np.int8) < 0
    nz = d != 0
    v = d[nz].astype(np.int16)
    mag = np.abs(v)
    big = mag > 1
    return {
        "nz": pack_masks(nz, ctx),
        "sign": compress(np.packbits((v < 0) ^ negative[nz]).tobytes()),
        "big": pack_masks(big, ctx[nz]),
        "rest": compress((mag[big] - 2).astype(np.uint8).tobytes()),
    }


def decode_int8(raw: dict[str, tuple[int, bytes]], old: Any) -> Any:
    """Inverse of :func:`encode_int8` given each stream's (code, decompressed bytes)."""
    ctx = context(old)
    nz = unpack_masks(raw["nz"][1], ctx)
    k = int(nz.sum())
    neg = unpack_mask(PACKED, raw["sign"][1], k) ^ (old.view(np.int8)[nz] < 0)
    big = unpack_masks(raw["big"][1], ctx[nz])
    rest = np.frombuffer(raw["rest"][1], np.uint8)
    if rest.size != int(big.sum()):
        raise ValueError("rest stream has the wrong length")
    mag = np.ones(k, np.int16)
    mag[big] = rest.astype(np.int16) + 2
    d = np.zeros(old.size, np.int16)
    d[nz] = np.where(neg, -mag, mag)
    return d.astype(np.int8).view(np.uint8)


def int8_cost(d: Any, new: bytes) -> tuple[float, float]:
    """Estimated bits of (significance-coded difference, raw literal) for one tensor."""
    d = d.view(np.int8)
    nz = d != 0
    mag = np.abs(d[nz].astype(np.int16))
    diff = entropy_bits(nz) + nz.sum() + entropy_bits(mag > 1) + entropy_bits(mag[mag > 1])
    return float(diff), entropy_bits(np.frombuffer(new, np.uint8))
