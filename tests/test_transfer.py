"""The chunk protocol: round trip, bounds from the signed size, damaged and hostile input."""

from __future__ import annotations

import hashlib

import pytest
from edgeship.sdk.transport._transfer import (
    HEADER_SIZE,
    ChunkRequest,
    chunk_count,
    decode_chunk,
    decode_request,
    encode_chunk,
    encode_request,
    serve_request,
)
from hypothesis import given
from hypothesis import strategies as st

from edgeship import LengthMismatchError, TransportError


def _lookup(data: bytes):  # type: ignore[no-untyped-def]
    def lookup(req: ChunkRequest):  # type: ignore[no-untyped-def]
        if req.file != "model.onnx":
            return None
        return len(data), lambda o, n: data[o:o + n]

    return lookup


@given(st.binary(min_size=1, max_size=5000), st.integers(min_value=1, max_value=700))
def test_every_chunk_round_trips_and_reassembles(data: bytes, chunk_size: int) -> None:
    out = bytearray()
    for index in range(chunk_count(len(data), chunk_size)):
        req = ChunkRequest(device="d", model="m", version="1.0.0", file="model.onnx",
                           index=index, chunk_size=chunk_size)
        got, raw = serve_request(encode_request(req), _lookup(data))
        assert got == req
        assert len(raw) == HEADER_SIZE + min(chunk_size, len(data) - index * chunk_size)
        chunk = decode_chunk(raw, index=index, chunk_size=chunk_size, signed_size=len(data))
        out += chunk.data
    assert bytes(out) == data


def test_size_other_than_signed_is_refused() -> None:
    raw = encode_chunk(0, 0, 2000, b"a" * 1000)
    with pytest.raises(LengthMismatchError, match="manifest signs 1500"):
        decode_chunk(raw, index=0, chunk_size=1000, signed_size=1500)
    # a last chunk longer than the signed size allows: not what was asked for (dropped)
    raw = encode_chunk(1, 1000, 1500, b"a" * 1000)
    with pytest.raises(TransportError, match="does not match the request"):
        decode_chunk(raw, index=1, chunk_size=1000, signed_size=1500)


def test_damage_and_wrong_index_are_transport_errors() -> None:
    raw = bytearray(encode_chunk(0, 0, 10, b"0123456789"))
    raw[HEADER_SIZE + 3] ^= 0xFF
    with pytest.raises(TransportError, match="damaged"):
        decode_chunk(bytes(raw), index=0, chunk_size=10, signed_size=10)
    with pytest.raises(TransportError, match="expected 1"):
        decode_chunk(encode_chunk(0, 0, 20, b"x" * 10), index=1, chunk_size=10, signed_size=20)
    with pytest.raises(TransportError, match="shorter"):
        decode_chunk(b"ESCK", index=0, chunk_size=10, signed_size=10)


def test_server_refusals_reach_the_device_as_reasons() -> None:
    req = ChunkRequest(device="d", model="m", version="1.0.0", file="other.bin", index=0)
    _, raw = serve_request(encode_request(req), _lookup(b"x" * 10))
    with pytest.raises(TransportError, match=r"no file 'other\.bin'"):
        decode_chunk(raw, index=0, chunk_size=10, signed_size=10)
    req = ChunkRequest(device="d", model="m", version="1.0.0", file="model.onnx", index=9)
    _, raw = serve_request(encode_request(req), _lookup(b"x" * 10))
    with pytest.raises(TransportError, match="past the end"):
        decode_chunk(raw, index=9, chunk_size=10, signed_size=10)
    got, raw = serve_request(b"\xff" * 2000, _lookup(b""))
    assert got is None and b"over 1024" in raw


@pytest.mark.parametrize("field,value", [("file", "../etc/passwd"), ("version", ""),
                                         ("index", -1), ("chunk_size", 10**9),
                                         ("device", "a/+")])
def test_hostile_requests_are_rejected(field: str, value: object) -> None:
    doc = {"device": "d", "model": "m", "version": "1.0.0", "file": "model.onnx", "index": 0,
           "chunk_size": 10, field: value}
    import json

    with pytest.raises(TransportError):
        decode_request(json.dumps(doc).encode())


def test_chunk_digest_is_sha256_of_payload() -> None:
    raw = encode_chunk(0, 0, 3, b"abc")
    assert raw[HEADER_SIZE - 32:HEADER_SIZE] == hashlib.sha256(b"abc").digest()
