"""A tiny PNG reader and writer on the standard library (zlib + struct) only.

A device image has no room for Pillow or OpenCV just to read a camera frame saved as PNG.
Reads 8-bit, non-interlaced grey, grey+alpha, RGB and RGBA images (what cameras and
scripts write); writes 8-bit grey. Every size read from a file is checked against
``MAX_PIXELS`` before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 4096 * 4096
MAX_FILE_BYTES = 64 << 20
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


class PngError(ValueError):
    """The file is not a PNG this reader handles (says why)."""


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PngError("truncated chunk")
        yield kind, body
        pos += 12 + length  # length, type, body, crc


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> bytearray:
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up_left = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + prev[i]) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xFF
            elif kind != 0:
                raise PngError(f"unknown filter type {kind} in row {y}")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return out


def read_png(path: str | Path) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels row-major) of an 8-bit PNG."""
    file = Path(path)
    if file.stat().st_size > MAX_FILE_BYTES:
        raise PngError(f"{file}: larger than {MAX_FILE_BYTES} bytes")
    data = file.read_bytes()
    if not data.startswith(SIGNATURE):
        raise PngError(f"{file}: not a PNG file")
    header, idat = None, bytearray()
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError(f"{file}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise PngError(f"{file}: only 8-bit non-interlaced grey/RGB(A) PNGs are read "
                       f"(depth {depth}, colour type {colour}, interlace {interlace})")
    if not 0 < width * height <= MAX_PIXELS:
        raise PngError(f"{file}: {width}x{height} is over the limit of {MAX_PIXELS} pixels")
    channels = _CHANNELS[colour]
    expected = height * (width * channels + 1)
    decoder = zlib.decompressobj()
    raw = decoder.decompress(bytes(idat), expected)  # bounded: a zip bomb stops here
    if len(raw) != expected:
        raise PngError(f"{file}: image data is {len(raw)} bytes, expected {expected}")
    return width, height, channels, bytes(_unfilter(raw, width, height, channels))


def write_png_grey(path: str | Path, width: int, height: int, pixels: bytes) -> None:
    """Write 8-bit grey ``pixels`` (row-major, ``width * height`` bytes) as a PNG."""
    if len(pixels) != width * height:
        raise ValueError(f"need {width * height} bytes, got {len(pixels)}")
    rows = b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(SIGNATURE + chunk(b"IHDR", header)
                           + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
