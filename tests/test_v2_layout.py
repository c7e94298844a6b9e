"""A request like the one before it (issue 16, session 9): the server reuses the last
parsed head, the last binary layout (JSON header decoded and checked once) and the last
validation against the model's metadata, and answers exactly as if it decoded in full."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest
from edgeship.sdk.serving._v2 import (
    HEADER_LENGTH,
    ModelMetadata,
    TensorSpec,
    decode_request,
    encode_request,
)
from edgeship.sdk.serving._v2layout import RequestDecoder
from edgeship.sdk.serving._v2server import V2Service, serve
from test_v2_loop import _answers, _infer_request

from edgeship._errors import InputError


def _binary(**inputs: np.ndarray) -> tuple[bytes, int]:
    body, headers = encode_request(inputs, binary=True)
    return body, int(headers[HEADER_LENGTH])


def test_the_same_header_decodes_new_data_as_decode_request_does() -> None:
    decoder = RequestDecoder(1 << 20)
    first, header_length = _binary(a=np.ones((2, 3), np.float32), b=np.arange(4, dtype=np.int64))
    _, layout = decoder.decode(first, header_length)
    assert layout is not None
    second, same_length = _binary(a=np.full((2, 3), 7, np.float32), b=np.arange(4, 8))
    assert same_length == header_length
    request, again = decoder.decode(bytearray(second), header_length)
    assert again is layout  # not parsed again
    full = decode_request(second, header_length)
    assert list(request.inputs) == list(full.inputs) == ["a", "b"]
    for name, array in full.inputs.items():
        assert request.inputs[name].dtype == array.dtype
        np.testing.assert_array_equal(request.inputs[name], array)
    assert (request.outputs, request.binary_output, request.id, request.parameters) == (
        full.outputs, full.binary_output, full.id, full.parameters)


def test_a_different_header_or_tail_is_decoded_and_checked_in_full() -> None:
    decoder = RequestDecoder(1 << 20)
    body, header_length = _binary(x=np.ones((1, 4), np.float32))
    _, layout = decoder.decode(body, header_length)
    with pytest.raises(InputError, match="binary"):  # same header, a byte short
        decoder.decode(body[:-1], header_length)
    with pytest.raises(InputError, match="not claimed"):  # same header, a byte too many
        decoder.decode(body + b"\0", header_length)
    other, other_length = _binary(x=np.ones((1, 5), np.float32))
    request, new = decoder.decode(other, other_length)
    assert new is not None and new is not layout and request.inputs["x"].shape == (1, 5)
    json_body, _ = encode_request({"x": np.ones((1, 4), np.float32)}, binary=False)
    request, none = decoder.decode(json_body, None)
    assert none is None and request.inputs["x"].shape == (1, 4)


def test_a_request_with_a_json_tensor_has_no_layout() -> None:
    body, headers = encode_request({"x": np.ones((1, 4), np.float32)}, binary=True)
    header_length = int(headers[HEADER_LENGTH])
    doc = body[:header_length].replace(b'"parameters":{"binary_data_size":16}',
                                       b'"data":[1,2,3,4]')
    doc = doc.replace(b'"inputs":[', b'"inputs":[{"name":"j","datatype":"FP32","shape":[1],'
                      b'"data":[5]},', 1)
    doc = doc.replace(b'"data":[1,2,3,4]', b'"parameters":{"binary_data_size":16}')
    request, layout = RequestDecoder(1 << 20).decode(doc + body[header_length:], len(doc))
    assert layout is None and request.inputs["j"].tolist() == [5.0]


class Swappable(V2Service):
    """Doubles ``x``; its metadata's input shape can change between requests."""

    def __init__(self) -> None:
        self.width = 4

    def metadata(self, name: str) -> ModelMetadata | None:
        spec = TensorSpec(name="x", datatype="FP32", shape=(1, self.width))
        return ModelMetadata(name=name, versions=("1",), inputs=(spec,))

    def infer(self, name: str, inputs: dict[str, np.ndarray]
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"y": inputs["x"] * 2}, {}


def test_repeated_requests_are_answered_and_checked_against_new_metadata() -> None:
    service = Swappable()
    with serve(service, max_request_bytes=1 << 20).start() as srv, \
            socket.create_connection((srv.host, srv.port), timeout=30) as sock:
        for value in (1.0, 2.0, 3.0):  # the same head and header, new data each time
            sock.sendall(_infer_request(value, binary=True))
            [(status, body)] = _answers(sock, 1)
            assert status == 200 and np.frombuffer(body[-16:], np.float32).tolist() == [
                2 * value] * 4
        service.width = 5  # a new model: the same layout must be checked again
        sock.sendall(_infer_request(1.0, binary=True))
        [(status, body)] = _answers(sock, 1)
        assert status == 400 and b"shape" in body
        sock.sendall(_infer_request(1.0, binary=True, extra="Connection: close"))
        [(status, body)] = _answers(sock, 1)  # a different head: parsed, and it closes
        assert status == 400
        sock.settimeout(30)
        assert sock.recv(1) == b""


def test_an_answer_id_is_given_only_to_a_request_without_one() -> None:
    decoder = RequestDecoder(1 << 20)
    x = np.ones((1, 4), np.float32)
    body, headers = encode_request({"x": x}, binary=True)
    header_length = int(headers[HEADER_LENGTH])
    for new_id in ("first", "second"):  # in full, then from the layout
        request, _ = decoder.decode(body, header_length, default_id=new_id)
        assert request.id == new_id
    own, headers = encode_request({"x": x}, binary=True, request_id="mine")
    for _ in range(2):
        request, layout = decoder.decode(own, int(headers[HEADER_LENGTH]), default_id="other")
        assert request.id == "mine" and layout is not None
