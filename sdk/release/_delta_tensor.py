"""The ``edgeship-tensor`` delta: per-tensor differences, entropy-friendly, zstd-compressed.

Layout::

    b"ESTD\x05" | header: LEB128 varints | stream blobs, in _STREAMS order

Header: base size, new size, skeleton size, skeleton mode, number of base and new
tensors, then per stream ``stored bytes, raw bytes, method (0 raw, 1 zstd), mask code
(0 packed bits, 1 varint gaps)``. The ``layout`` stream holds, column by column so that
zstd sees the repeats, the base tensor ranges (gap, length) and the new tensor rows (gap,
length, element width, mode, base tensor reference).

The *skeleton* of a file is the file with its tensor ranges cut out (protobuf / flatbuffer
framing, names, graph, TFLite quantization tables). The new skeleton is coded as a
byte-wise difference to the base skeleton when both have the same size (then it is
almost all zeros), else as a bsdiff4 patch; the smaller wins. Each new tensor is

- ``SAME``: identical to the base tensor of that name (costs nothing);
- ``SIG``: INT8 difference, mostly zero: significance streams ``nz``/``sign``/``big``/
  ``rest``, the masks coded per magnitude bucket of the base weight, a context the
  device knows (:mod:`edgeship.sdk.release._delta_codec`);
- ``ZZ``: difference as zigzag bytes (``zz8``, dense INT8 changes such as a retrained
  head) or, for int32 bias / float32 scale, zigzag byte planes or varints (``wide``);
- ``LIT``: raw bytes (``lit``), for new tensors or when cheaper than any difference.

Differences are element-wise wrapping integer subtraction, exact for every dtype.
Decoding needs no model parser; every declared size is checked against ``max_output``
and against what the layout implies before anything is decompressed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from edgeship.sdk.release import _delta_codec as codec
from edgeship.sdk.release._delta_parse import find_regions

from edgeship._errors import MalformedError

__all__ = ["decode", "encode"]

_MAGIC = b"ESTD\x05"
_SAME, _SIG, _LIT, _ZZ = 0, 1, 2, 3  # how a new tensor is coded
_BSDIFF, _BYTEDIFF = 0, 1  # how the skeleton is coded
_STREAMS = ("layout", "skel", "nz", "sign", "big", "rest", "zz8", "wide", "lit")
_MAX_TENSORS = 1 << 20


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


def _zigzag8(d: Any) -> Any:
    s = d.view(np.int8).astype(np.int16)
    return ((s << 1) ^ (s >> 15)).astype(np.uint8)


def _unzigzag8(z: Any) -> Any:
    z = z.astype(np.int16)
    return ((z >> 1) ^ -(z & 1)).astype(np.int8).view(np.uint8)


class _Encoder:
    def __init__(self) -> None:
        self.parts: dict[str, list[Any]] = {"sig": [], "old": [], "zz8": [], "wide": [],
                                            "lit": []}

    def add(self, new: bytes, old: bytes | None, width: int) -> int:
        if old is None or len(old) != len(new):
            self.parts["lit"].append(new)
            return _LIT
        if new == old:
            return _SAME
        d = _diff(new, old, width)
        if width > 1:
            self.parts["wide"].append(d)
            return _ZZ
        sig_bits, lit_bits = codec.int8_cost(d, new)
        zz = _zigzag8(d)
        # Huffman spends >= 1 bit per symbol: fine for zigzag bytes unless most are zero
        dense = float(np.mean(d == 0)) < 0.5
        diff_bits = codec.entropy_bits(zz) if dense else sig_bits
        if lit_bits < diff_bits:
            self.parts["lit"].append(new)
            return _LIT
        if dense:
            self.parts["zz8"].append(zz)
            return _ZZ
        self.parts["sig"].append(d)
        self.parts["old"].append(np.frombuffer(old, np.uint8))
        return _SIG

    def streams(self) -> dict[str, codec.Stream]:
        sig, old = self.parts["sig"], self.parts["old"]
        d = np.concatenate(sig) if sig else np.zeros(0, np.uint8)
        base = np.concatenate(old) if old else np.zeros(0, np.uint8)
        joined = {k: b"".join(bytes(x) for x in self.parts[k]) for k in ("zz8", "lit")}
        return {**codec.encode_int8(d, base), "wide": codec.encode_wide(self.parts["wide"]),
                **{k: codec.compress(v) for k, v in joined.items()}}


def _ref_code(i: int | None, k: int, used: bool) -> int:
    """Base tensor index as a small number: 0 none, else 1 + zigzag(i - k)."""
    if not used or i is None:
        return 0
    return 1 + (2 * (i - k) if i >= k else 2 * (k - i) - 1)


def _ref_index(code: int, k: int) -> int | None:
    if code == 0:
        return None
    z = code - 1
    return k + (z >> 1 if not z & 1 else -((z + 1) >> 1))


def _columns(old: list[list[int]], rows: list[list[int]]) -> list[int]:
    """Layout as columns (old gaps, old lengths, new gaps, ...): repeats line up for zstd."""
    end, gaps = 0, []
    for off, length in old:
        gaps.append(off - end)
        end = off + length
    return [*gaps, *(length for _, length in old), *(v for col in zip(*rows, strict=True) for v in col)]


def _skeleton(old_skel: bytes, new_skel: bytes) -> tuple[int, codec.Stream]:
    import bsdiff4

    patch = bsdiff4.diff(old_skel, new_skel)  # bz2 inside already
    best = (_BSDIFF, (0, codec.RAW, patch, len(patch)))
    if len(old_skel) == len(new_skel):  # same framing: a byte difference is mostly zeros
        bytediff = codec.compress(_diff(new_skel, old_skel, 1).tobytes())
        if len(bytediff[2]) < len(patch):
            best = (_BYTEDIFF, bytediff)
    return best


def encode(old: bytes, new: bytes) -> bytes:
    """Delta of ``new`` against ``old`` (see the module docstring)."""
    old_regions, new_regions = find_regions(old), find_regions(new)
    index = {r.name: i for i, r in enumerate(old_regions)}
    enc, rows, end = _Encoder(), [], 0
    for k, r in enumerate(new_regions):
        i = index.get(r.name)
        o = old_regions[i] if i is not None else None
        base = old[o.offset : o.offset + o.length] if o and o.width == r.width else None
        mode = enc.add(new[r.offset : r.offset + r.length], base, r.width)
        rows.append([r.offset - end, r.length, r.width, mode, _ref_code(i, k, mode != _LIT)])
        end = r.offset + r.length
    layout = _columns([[r.offset, r.length] for r in old_regions], rows)
    old_skel = _cut(old, [(r.offset, r.length) for r in old_regions])
    new_skel = _cut(new, [(r.offset, r.length) for r in new_regions])
    skel_mode, skel = _skeleton(old_skel, new_skel)
    streams = {"layout": codec.compress(codec.varints(layout)), "skel": skel, **enc.streams()}
    head = [len(old), len(new), len(new_skel), skel_mode, len(old_regions), len(new_regions)]
    for name in _STREAMS:  # stored bytes, raw bytes (the decompression bound), method, code
        code, method, blob, raw = streams[name]
        head += [len(blob), raw, method, code]
    return b"".join([_MAGIC, codec.varints(head), *(streams[name][2] for name in _STREAMS)])


# --- decoding: every number in the delta is hostile until checked -------------------------


def _bad(why: str) -> MalformedError:
    return MalformedError(f"delta: edgeship-tensor {why}")


class _Delta:
    """The parsed, bounds-checked delta: header numbers, streams and layout."""

    def __init__(self, delta: bytes, base_size: int, max_output: int) -> None:
        if delta[:5] != _MAGIC:
            raise _bad("bad magic")
        try:
            head, pos = codec.read_varints(delta, 5, 6 + 4 * len(_STREAMS))
        except ValueError as exc:
            raise _bad("header truncated") from exc
        old_size, self.new_size, self.skel_size, self.skel_mode, n_old, n_new = head[:6]
        if old_size != base_size:
            raise _bad(f"was made for a base of {old_size} bytes, not {base_size}")
        if self.new_size > max_output or self.skel_size > self.new_size:
            raise _bad(f"declares {self.new_size} output bytes, limit is {max_output}")
        if n_old > _MAX_TENSORS or n_new > _MAX_TENSORS or self.skel_mode > _BYTEDIFF:
            raise _bad("header out of range")
        self.raw: dict[str, tuple[int, bytes]] = {}
        limit = 2 * self.new_size + 4096 + 40 * (n_old + n_new)
        for i, name in enumerate(_STREAMS):
            clen, rlen, method, code = head[6 + 4 * i : 10 + 4 * i]
            if pos + clen > len(delta) or rlen > limit or method > 1 or code > 1:
                raise _bad(f"stream {name} out of range")
            self.raw[name] = (code, _unpack(name, delta[pos : pos + clen], method, rlen))
            pos += clen
        if pos != len(delta):
            raise _bad("trailing bytes")
        self._layout(n_old, n_new, base_size)

    def _layout(self, n_old: int, n_new: int, base_size: int) -> None:
        try:
            values = codec.unvarints(self.raw["layout"][1]).astype(np.int64).tolist()
        except ValueError as exc:
            raise _bad(f"layout unreadable ({exc})") from exc
        if len(values) != 2 * n_old + 5 * n_new:
            raise _bad("layout has the wrong length")
        self.cuts, end = [], 0
        for gap, length in zip(values[:n_old], values[n_old : 2 * n_old], strict=True):
            self.cuts.append((end + gap, length))
            end += gap + length
        if end > base_size:
            raise _bad("base ranges overrun the base")
        cols = [values[2 * n_old + c * n_new : 2 * n_old + (c + 1) * n_new] for c in range(5)]
        self.rows, end = [], 0
        for k, (gap, length, width, mode, code) in enumerate(zip(*cols, strict=True)):
            ref = _ref_index(code, k)
            if width not in codec.UINT or length % width or mode > _ZZ:
                raise _bad("region entry malformed")
            if (mode == _LIT) != (ref is None) or (mode == _SIG and width != 1):
                raise _bad("region entry inconsistent")
            if ref is not None and not (0 <= ref < n_old and self.cuts[ref][1] == length):
                raise _bad("region does not match its base tensor")
            self.rows.append((end + gap, length, width, mode, -1 if ref is None else ref))
            end += gap + length
        if end > self.new_size or self.new_size - sum(r[1] for r in self.rows) != self.skel_size:
            raise _bad("regions and skeleton do not add up to the output size")

    def stream(self, name: str, expected: int) -> bytes:
        raw = self.raw[name][1]
        if len(raw) != expected:
            raise _bad(f"stream {name} has {len(raw)} bytes, regions need {expected}")
        return raw

    def total(self, mode: int, wide: bool | None = None) -> int:
        return sum(r[1] for r in self.rows
                   if r[3] == mode and (wide is None or (r[2] > 1) == wide))


def _unpack(name: str, blob: bytes, method: int, rlen: int) -> bytes:
    try:
        raw = codec.decompress(blob, rlen) if method == codec.ZSTD else blob
    except ValueError as exc:
        raise _bad(f"stream {name}: {exc}") from exc
    if len(raw) != rlen:
        raise _bad(f"stream {name} has {len(raw)} bytes, declared {rlen}")
    return raw


def _new_skeleton(d: _Delta, old_skel: bytes) -> bytes:
    from edgeship.sdk.release._delta import bspatch

    if d.skel_mode == _BSDIFF:
        skel = bspatch(old_skel, d.raw["skel"][1], max_output=d.skel_size)
    else:
        diff = d.stream("skel", d.skel_size)
        if len(old_skel) != d.skel_size:
            raise _bad("skeleton byte difference needs equal sizes")
        skel = (np.frombuffer(old_skel, np.uint8) + np.frombuffer(diff, np.uint8)).tobytes()
    if len(skel) != d.skel_size:
        raise _bad("skeleton patch gives the wrong size")
    return skel


def decode(base: bytes, delta: bytes, *, max_output: int) -> bytes:
    """Rebuild the new file from ``base`` and an ``edgeship-tensor`` delta."""
    d = _Delta(delta, len(base), max_output)
    skel = _new_skeleton(d, _cut(base, d.cuts))
    olds = [np.frombuffer(base, np.uint8, r[1], d.cuts[r[4]][0]) for r in d.rows if r[3] == _SIG]
    try:
        sig = codec.decode_int8(d.raw, np.concatenate(olds) if olds else np.zeros(0, np.uint8))
    except ValueError as exc:
        raise _bad(f"int8 streams inconsistent ({exc})") from exc
    zz8 = np.frombuffer(d.stream("zz8", d.total(_ZZ, wide=False)), np.uint8)
    try:
        wide = iter(codec.decode_wide(*d.raw["wide"], [(r[1], r[2]) for r in d.rows
                                                       if r[3] == _ZZ and r[2] > 1]))
    except ValueError as exc:
        raise _bad(f"wide stream inconsistent ({exc})") from exc
    lit = d.stream("lit", d.total(_LIT))
    out, pos, ps = [], 0, 0
    used = {"sig": 0, "zz8": 0, "lit": 0}
    for off, length, width, mode, ref in d.rows:
        out.append(skel[ps : ps + off - pos])
        ps, pos = ps + off - pos, off + length
        if mode == _LIT:
            out.append(lit[used["lit"] : used["lit"] + length])
            used["lit"] += length
            continue
        old_off = d.cuts[ref][0]
        old = np.frombuffer(base, codec.UINT[width], length // width, old_off)
        if mode == _SAME:
            out.append(old.tobytes())
        elif mode == _SIG:
            out.append((old + sig[used["sig"] : used["sig"] + length]).tobytes())
            used["sig"] += length
        elif width == 1:
            out.append((old + _unzigzag8(zz8[used["zz8"] : used["zz8"] + length])).tobytes())
            used["zz8"] += length
        else:
            out.append((old + next(wide)).tobytes())
    out.append(skel[ps:])
    return b"".join(out)
