"""Binary deltas between two artifacts: ``bsdiff4`` and ``edgeship-tensor`` (pure bytes).

``make_delta(base, new, fmt)`` and ``apply_delta(base, delta, fmt, max_output=...)`` are
exact inverses: ``apply_delta(base, make_delta(base, new, f), f) == new`` byte for byte.
``apply_delta`` treats ``delta`` as hostile: every size it declares is checked against
``max_output`` (the artifact size the signed manifest promises) *before* anything is
decompressed, so a delta cannot make a device allocate more than that ("endless data").
A delta that cannot be decoded raises :class:`~edgeship.MalformedError`. The caller still
checks the result's sha256 (``check_payload`` in :mod:`edgeship.sdk.release._trust` does).

``edgeship-tensor`` (see :mod:`edgeship.sdk.release._delta_tensor`) needs no model parser on the
device: the layout is in the delta itself.
"""

from __future__ import annotations

import bz2
import struct

from edgeship._errors import MalformedError

__all__ = ["apply_delta", "best_delta", "make_delta"]

_BSDIFF_MAGIC = b"BSDIFF40"
_BEST_OF = ("bsdiff4", "edgeship-tensor")
_DEFAULT_MAX_OUTPUT = 512 * 1024 * 1024  # bytes; callers pass the signed artifact size


def make_delta(base: bytes, new: bytes, fmt: str = "edgeship-tensor") -> bytes:
    """Encode ``new`` as a delta against ``base`` in format ``fmt``."""
    if fmt == "bsdiff4":
        import bsdiff4

        return bytes(bsdiff4.diff(base, new))
    if fmt == "edgeship-tensor":
        from edgeship.sdk.release._delta_tensor import encode

        return encode(base, new)
    raise ValueError(f"unknown delta format {fmt!r}")


def apply_delta(
    base: bytes, delta: bytes, fmt: str, *, max_output: int = _DEFAULT_MAX_OUTPUT
) -> bytes:
    """Rebuild the new artifact from ``base`` and ``delta``; at most ``max_output`` bytes."""
    if fmt == "bsdiff4":
        return bspatch(base, delta, max_output=max_output)
    if fmt == "edgeship-tensor":
        from edgeship.sdk.release._delta_tensor import decode

        return decode(base, delta, max_output=max_output)
    raise MalformedError(f"unknown delta format {fmt!r}")


def best_delta(base: bytes, new: bytes) -> tuple[str, bytes]:
    """Both formats; return the smaller ``(format, delta)`` (ties go to bsdiff4)."""
    candidates = [(fmt, make_delta(base, new, fmt)) for fmt in _BEST_OF]
    return min(candidates, key=lambda c: len(c[1]))


def _decode_offt(raw: bytes) -> int:
    # bsdiff's sign-magnitude little-endian int64
    value: int = struct.unpack("<Q", raw)[0]
    return -(value & ~(1 << 63)) if value >> 63 else value


def bounded_bunzip(data: bytes, limit: int, what: str) -> bytes:
    """bz2-decompress at most ``limit`` bytes; more means a hostile or broken delta."""
    decomp = bz2.BZ2Decompressor()
    try:
        out = decomp.decompress(data, max_length=limit + 1)
    except (OSError, ValueError, EOFError) as exc:
        raise MalformedError(f"delta: {what} block is not bz2 ({exc})") from exc
    if len(out) > limit or not decomp.eof:
        raise MalformedError(f"delta: {what} block larger than declared or truncated")
    return out


def bspatch(base: bytes, delta: bytes, *, max_output: int) -> bytes:
    """Apply a BSDIFF40 patch with every size bounded before decompression."""
    import bsdiff4.core

    if len(delta) < 32 or delta[:8] != _BSDIFF_MAGIC:
        raise MalformedError("delta: not a bsdiff4 patch (bad magic)")
    len_control, len_diff, len_dst = (_decode_offt(delta[i : i + 8]) for i in (8, 16, 24))
    if not 0 <= len_dst <= max_output:
        raise MalformedError(f"delta: declares {len_dst} output bytes, limit is {max_output}")
    if len_control < 0 or len_diff < 0 or 32 + len_control + len_diff > len(delta):
        raise MalformedError("delta: bsdiff4 block lengths exceed the patch")
    body = delta[32:]
    control = bounded_bunzip(body[:len_control], 24 * (len_dst + 1), "control")
    diff = bounded_bunzip(body[len_control : len_control + len_diff], len_dst, "diff")
    extra = bounded_bunzip(body[len_control + len_diff :], len_dst, "extra")
    if len(control) % 24:
        raise MalformedError("delta: bsdiff4 control block is not a multiple of 24 bytes")
    try:
        return bytes(bsdiff4.core.patch(base, len_dst, control, diff, extra))
    except (ValueError, MemoryError, OverflowError) as exc:
        raise MalformedError(f"delta: bsdiff4 patch does not apply ({exc})") from exc
