"""An OpenVINO IR (``model.xml`` + ``model.bin``) as one file, ``.ovir``.

Releases, slots, signatures and encryption all deal in one file per artifact; an IR is
two. ``edgeship release --variant openvino-cpu=OUT/model.int8.openvino-cpu.xml`` packs
the ``.xml`` and the ``.bin`` beside it into ``model.int8.openvino-cpu.ovir``, which is
signed, fetched, encrypted and stored like any artifact; the OpenVINO runtime reads it
from memory (the IR's weights handed over as a tensor, never written out).

Layout: the 8-byte magic ``ESOVIR1\\0``, the xml's length as a little-endian uint64, the
xml, then the weights to the end of the file. The same IR gives the same bytes.
Pure; imports nothing heavy.
"""

from __future__ import annotations

import struct
from pathlib import Path

from edgeship.sdk._fileio import read_head

from edgeship._errors import InputError, ModelLoadError

__all__ = ["MAGIC", "SUFFIX", "is_pack", "pack_ir", "pack_ir_files", "unpack_ir"]

MAGIC = b"ESOVIR1\0"
SUFFIX = ".ovir"
_LENGTH = struct.Struct("<Q")
_HEAD = len(MAGIC) + _LENGTH.size


def is_pack(head: bytes) -> bool:
    """Whether ``head`` (a file's first 8 bytes or more) starts a packed IR."""
    return head[:len(MAGIC)] == MAGIC


def pack_ir(xml: bytes, weights: bytes) -> bytes:
    """The IR's ``xml`` and ``weights`` (its .bin) as one ``.ovir`` file's bytes."""
    return MAGIC + _LENGTH.pack(len(xml)) + xml + weights


def unpack_ir(data: bytes) -> tuple[bytes, bytes]:
    """(xml, weights) of a packed IR; ModelLoadError when ``data`` is not one."""
    if not is_pack(data):
        raise ModelLoadError("not a packed OpenVINO IR (no 'ESOVIR1' header)")
    if len(data) < _HEAD:
        raise ModelLoadError("packed OpenVINO IR is truncated (no xml length)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > len(data) - _HEAD:
        raise ModelLoadError(f"packed OpenVINO IR is truncated (its xml is {length} bytes, "
                             f"the file has {len(data) - _HEAD} after the header)")
    xml = data[_HEAD:_HEAD + length]
    if b"<net" not in xml[:4096]:
        raise ModelLoadError("packed OpenVINO IR holds no IR xml (no <net> element)")
    return xml, data[_HEAD + length:]


def pack_ir_files(xml_path: Path, max_bytes: int) -> bytes:
    """Pack ``xml_path`` and the ``.bin`` beside it (InputError naming what is missing)."""
    bin_path = xml_path.with_suffix(".bin")
    parts = []
    for path in (xml_path, bin_path):
        try:  # bounded: a huge file (or /dev/zero, whose size reads 0) is never read whole
            data = read_head(path, max_bytes)
        except OSError as exc:
            what = "the IR's weights (.bin) beside it" if path == bin_path else "the IR"
            raise InputError(f"cannot read {what}: {path}: {exc.strerror}") from exc
        if len(data) > max_bytes:
            raise InputError(f"{path} is over the limit of {max_bytes} bytes")
        parts.append(data)
    return pack_ir(parts[0], parts[1])
