"""The chunk protocol between a device and a release server (pure: bytes in, bytes out).

A device downloads one file of a release (the artifact or a delta) chunk by chunk.
Each request is a small JSON object published on ``edgeship/<fleet>/<device>/ota/req``
(the device's own request topic) with the MQTT 5 *response topic* (the device's
``.../ota/chunk``) and *correlation data*; the server answers there with one binary
message::

    header (62 bytes, big endian)            payload
    magic "ESCK" | ver u8 | status u8 | index u32 | offset u64 | total u64 |
    length u32 | sha256(payload) 32 bytes    length bytes (status 0) or a utf-8 reason

A binary header keeps a 64 KiB chunk at 64 KiB on the wire (base64 JSON would add a
third). The per-chunk sha256 only catches damage on the way; trust comes from the
sha256 and size of the whole file in the signed manifest, which also bound how many
bytes a device will ever accept (:func:`decode_chunk` refuses anything past them).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeship._errors import LengthMismatchError, TransportError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "Chunk",
    "ChunkRequest",
    "ChunkStatus",
    "chunk_count",
    "chunk_span",
    "decode_chunk",
    "decode_request",
    "encode_chunk",
    "encode_error",
    "encode_request",
    "serve_request",
]

DEFAULT_CHUNK_SIZE = 64 * 1024  # under the 128 KiB message limit of common brokers
MAX_CHUNK_SIZE = 1024 * 1024
MAX_REQUEST_BYTES = 1024
_MAGIC = b"ESCK"
_VERSION = 1
_HEADER = struct.Struct(">4sBBIQQI32s")
HEADER_SIZE = _HEADER.size
_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")


class ChunkStatus:
    """Status byte of a chunk response."""

    OK = 0
    NOT_FOUND = 1  # the server has no such release file
    BAD_REQUEST = 2  # malformed request
    OUT_OF_RANGE = 3  # index past the end of the file


@dataclass(frozen=True, kw_only=True)
class ChunkRequest:
    """Ask for chunk ``index`` (of ``chunk_size`` bytes) of ``file`` in release ``version``."""

    device: str
    model: str
    version: str
    file: str
    index: int
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        for key in ("device", "model", "version", "file"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _TEXT.match(value) or ".." in value:
                raise TransportError(f"chunk request: bad {key} {value!r}")
        if not isinstance(self.index, int) or not 0 <= self.index < 1 << 32:
            raise TransportError(f"chunk request: bad index {self.index!r}")
        if not isinstance(self.chunk_size, int) or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise TransportError(f"chunk request: chunk_size must be 1..{MAX_CHUNK_SIZE}")

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "model": self.model, "version": self.version,
                "file": self.file, "index": self.index, "chunk_size": self.chunk_size}

    @classmethod
    def from_dict(cls, d: Any) -> ChunkRequest:
        if not isinstance(d, dict):
            raise TransportError("chunk request: expected a JSON object")
        try:
            return cls(device=d["device"], model=d["model"], version=d["version"],
                       file=d["file"], index=d["index"], chunk_size=d["chunk_size"])
        except KeyError as exc:
            raise TransportError(f"chunk request: missing {exc.args[0]!r}") from exc


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """A verified chunk: ``data`` is at ``offset`` of a file of ``total`` bytes."""

    index: int
    offset: int
    total: int
    data: bytes


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has (an empty file has none)."""
    return -(-size // chunk_size)


def chunk_span(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` of a ``size``-byte file."""
    offset = index * chunk_size
    if index < 0 or offset >= size:
        raise TransportError(f"chunk {index} is past the end of a {size}-byte file")
    return offset, min(chunk_size, size - offset)


def encode_request(request: ChunkRequest) -> bytes:
    return json.dumps(request.to_dict(), separators=(",", ":")).encode()


def decode_request(raw: bytes) -> ChunkRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise TransportError(f"chunk request of {len(raw)} bytes is over {MAX_REQUEST_BYTES}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TransportError(f"chunk request is not JSON: {exc}") from exc
    return ChunkRequest.from_dict(doc)


def encode_chunk(index: int, offset: int, total: int, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    header = _HEADER.pack(_MAGIC, _VERSION, ChunkStatus.OK, index, offset, total, len(data), digest)
    return header + data


def encode_error(status: int, index: int, reason: str) -> bytes:
    text = reason.encode()[:1024]
    header = _HEADER.pack(_MAGIC, _VERSION, status, index, 0, 0, len(text),
                          hashlib.sha256(text).digest())
    return header + text


def decode_chunk(raw: bytes, *, index: int, chunk_size: int, signed_size: int) -> Chunk:
    """Check a response against the request and the signed size; return its payload.

    TransportError for a damaged message, one that does not match the request (index,
    offset, length) or a server-side refusal; LengthMismatchError when the server claims
    a file size other than the signed one.
    """
    if len(raw) < HEADER_SIZE:
        raise TransportError(f"chunk response of {len(raw)} bytes is shorter than its header")
    magic, version, status, got_index, offset, total, length, digest = _HEADER.unpack_from(raw)
    if magic != _MAGIC or version != _VERSION:
        raise TransportError("chunk response: not an edgeship chunk (bad magic or version)")
    payload = raw[HEADER_SIZE:]
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise TransportError(f"chunk {got_index}: payload damaged (length or sha256 mismatch)")
    if status != ChunkStatus.OK:
        reason = payload.decode("utf-8", "replace")
        raise TransportError(f"release server refused chunk {got_index}: {reason}")
    if got_index != index:
        raise TransportError(f"chunk response for index {got_index}, expected {index}")
    if total != signed_size:
        raise LengthMismatchError(f"server file is {total} bytes, the manifest signs {signed_size}")
    want_offset, want_length = chunk_span(signed_size, chunk_size, index)
    if offset != want_offset or length != want_length:
        # an answer to a request with another chunk size (another device's, forged): not
        # this device's chunk, dropped; never written, so the signed size still bounds it
        raise TransportError(
            f"chunk {index}: got {length} bytes at {offset}, expected {want_length} at "
            f"{want_offset} (does not match the request)"
        )
    return Chunk(index=index, offset=offset, total=total, data=payload)


def serve_request(raw: bytes, lookup: Callable[[ChunkRequest], tuple[int, Callable[[int, int], bytes]] | None]
                  ) -> tuple[ChunkRequest | None, bytes]:
    """Server side: answer one raw request. ``lookup`` maps a request to ``(size, read)``
    where ``read(offset, length)`` returns bytes, or None when the file is unknown."""
    try:
        request = decode_request(raw)
    except TransportError as exc:
        return None, encode_error(ChunkStatus.BAD_REQUEST, 0, str(exc))
    found = lookup(request)
    if found is None:
        return request, encode_error(ChunkStatus.NOT_FOUND, request.index,
                                     f"no file {request.file!r} in release {request.version}")
    size, read = found
    try:
        offset, length = chunk_span(size, request.chunk_size, request.index)
    except TransportError as exc:
        return request, encode_error(ChunkStatus.OUT_OF_RANGE, request.index, str(exc))
    return request, encode_chunk(request.index, offset, size, read(offset, length))
