"""Open Inference Protocol v2 codec and HTTP layer: round trips, limits, bad bodies, and
tritonclient.http (JSON and binary modes) against a real server on a free port."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from edgeship.sdk.serving._v2 import (
    HEADER_LENGTH,
    InferRequest,
    ModelMetadata,
    TensorSpec,
    datatype_of,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    numpy_dtype,
    validate_inputs,
)
from edgeship.sdk.serving._v2server import Response, Route, StatusError, V2Service, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeship import InputError, TransportError

DTYPES = ["FP32", "FP16", "INT8", "UINT8", "INT32", "INT64", "BOOL"]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), size=shape).astype(dtype)


@pytest.mark.parametrize("datatype", DTYPES)
@pytest.mark.parametrize("binary", [True, False])
def test_request_and_response_round_trip(datatype: str, binary: bool) -> None:
    x = _sample(datatype, (2, 3))
    body, headers = encode_request({"x": x}, binary=binary, request_id="r1")
    length = headers.get(HEADER_LENGTH)
    assert (length is not None) == binary
    request = decode_request(body, int(length) if length else None)
    assert request.id == "r1" and request.binary_output == binary
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["x"].dtype == x.dtype

    y = _sample(datatype, (4,))
    body, headers = encode_response(
        {"y": y, "z": x},
        request,
        model_name="m",
        model_version="1.2.3",
        parameters={"source": "local", "version": "1.2.3"},
    )
    length = headers.get(HEADER_LENGTH)
    response = decode_response(body, int(length) if length else None)
    assert response.parameters == {"source": "local", "version": "1.2.3"}
    assert (response.model_name, response.model_version, response.id) == ("m", "1.2.3", "r1")
    np.testing.assert_array_equal(response.outputs["y"], y)
    np.testing.assert_array_equal(response.outputs["z"], x)


def test_requested_outputs_choose_names_and_encoding() -> None:
    body, _ = encode_request({"x": np.zeros(2, np.float32)}, binary=False, outputs=["b"])
    request = decode_request(body, None)
    out = {"a": np.ones(2, np.float32), "b": np.arange(3, dtype=np.int64)}
    body, _ = encode_response(out, request, model_name="m")
    doc = json.loads(body)
    assert [o["name"] for o in doc["outputs"]] == ["b"]
    assert doc["outputs"][0]["data"] == [0, 1, 2]
    with pytest.raises(InputError, match="unknown output"):
        encode_response({"a": out["a"]}, request, model_name="m")
    classify = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
    classify += b' "outputs": [{"name": "a", "parameters": {"classification": 3}}]}'
    with pytest.raises(InputError, match="classification"):
        decode_request(classify, None)


@pytest.mark.parametrize(
    ("body", "header_length", "match"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}', None, '"data"'),
        (
            b'{"inputs": [{"name": "x", "datatype": "STRING", "shape": [1], "data": [1]}]}',
            None,
            "datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
            None,
            "do not match shape",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
            None,
            "do not fit",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
            None,
            "do not fit",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000000000, 1000000000], "data": []}]}',
            None,
            "larger than",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            None,
            "twice",
        ),
        (b'{"inputs": []}', 999, "does not fit"),
    ],
)
def test_malformed_requests_are_input_errors(
    body: bytes, header_length: int | None, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        decode_request(body, header_length)


def test_binary_sizes_are_checked_exactly() -> None:
    body, headers = encode_request({"x": np.zeros((2, 2), np.float32)})
    n = int(headers[HEADER_LENGTH])
    with pytest.raises(InputError, match="ends after"):
        decode_request(body[:-1], n)
    with pytest.raises(InputError, match="not claimed"):
        decode_request(body + b"\0", n)
    lying = body[:n].replace(b'"binary_data_size":16', b'"binary_data_size":12')
    with pytest.raises(InputError, match="does not match shape"):
        decode_request(lying + body[n:], n)


def test_max_bytes_limit() -> None:
    body, _ = encode_request({"x": np.zeros(1000, np.float32)}, binary=False)
    with pytest.raises(InputError, match="exceeds the limit"):
        decode_request(body, None, max_bytes=100)
    with pytest.raises(TransportError, match="exceeds the limit"):
        decode_response(body, None, max_bytes=100)


def test_malformed_responses_are_transport_errors() -> None:
    with pytest.raises(TransportError, match="not valid JSON"):
        decode_response(b"<html>", None)
    with pytest.raises(TransportError, match="server error: boom"):
        decode_response(b'{"error": "boom"}', None)


def test_datatype_names_and_validation() -> None:
    assert [datatype_of(numpy_dtype(d)) for d in DTYPES] == DTYPES
    assert datatype_of(">f4") == "FP32"
    specs = [TensorSpec(name="x", datatype="FP32", shape=(-1, 3))]
    validate_inputs({"x": np.zeros((5, 3), np.float32)}, specs)
    with pytest.raises(InputError, match="shape"):
        validate_inputs({"x": np.zeros((5, 4), np.float32)}, specs)
    with pytest.raises(InputError, match="datatype FP64"):
        validate_inputs({"x": np.zeros((5, 3), np.float64)}, specs)
    with pytest.raises(InputError, match="missing"):
        validate_inputs({"y": np.zeros((5, 3), np.float32)}, specs)


def test_metadata_round_trip() -> None:
    meta = ModelMetadata(
        name="m",
        versions=("1.0.0",),
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


# ---------------------------------------------------------------------------- real server


class Doubler(V2Service):
    """y = 2x (+ argmax); fails on demand so every status code can be seen."""

    def __init__(self) -> None:
        self.is_ready = True

    def ready(self) -> bool:
        return self.is_ready

    def metadata(self, name: str) -> ModelMetadata | None:
        if name != "double":
            return None
        return ModelMetadata(
            name="double",
            versions=("3",),
            inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
            outputs=(
                TensorSpec(name="y", datatype="FP32", shape=(-1, 4)),
                TensorSpec(name="k", datatype="INT64", shape=(-1,)),
            ),
        )

    def infer(
        self, name: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        x = inputs["x"]
        if float(x.sum()) == 13.0:
            raise RuntimeError("the runtime crashed")
        if float(x.sum()) == 17.0:
            raise StatusError(503, "no model yet")
        return {"y": 2 * x, "k": x.argmax(axis=1)}, {"source": "local", "version": "3"}

    def routes(self) -> list[Route]:
        return [
            Route(
                method="GET",
                path="/metrics",
                handler=lambda r: Response(body=b"up 1\n", content_type="text/plain"),
            )
        ]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    service = Doubler()
    with serve(service, max_request_bytes=64 * 1024).start() as srv:
        srv.service = service  # type: ignore[attr-defined]
        yield srv


def _raw(
    server: Any,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_against_real_server(server: Any, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"{server.host}:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("double")
        meta = client.get_model_metadata("double")
        assert meta["versions"] == ["3"] and meta["inputs"][0]["shape"] == [-1, 4]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = triton.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("y", "k")]
        for requested in (outputs, None):  # named outputs, and all outputs (binary_data_output)
            result = client.infer("double", [inp], outputs=requested, request_id="7")
            np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
            np.testing.assert_array_equal(result.as_numpy("k"), [3, 3])
            response = result.get_response()
            assert response["parameters"] == {"source": "local", "version": "3"}
            assert response["model_version"] == "3" and response["id"] == "7"
        # versioned URL, and errors surface as tritonclient exceptions with our message
        client.infer("double", [inp], model_version="3")
        with pytest.raises(triton.InferenceServerException, match="unknown model"):
            client.infer("nope", [inp])
        bad = triton.InferInput("x", [2, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 2), np.float32), binary_data=binary)
        with pytest.raises(triton.InferenceServerException, match="expects"):
            client.infer("double", [bad])
    finally:
        client.close()


def test_status_codes(server: Any) -> None:
    body, _ = encode_request({"x": np.ones((1, 4), np.float32)}, binary=False)
    assert _raw(server, "POST", "/v2/models/double/infer", body)[0] == 200
    assert _raw(server, "POST", "/v2/models/double/infer", b"{oops")[0] == 400
    assert _raw(server, "POST", "/v2/models/missing/infer", body)[0] == 404
    assert _raw(server, "GET", "/v2/models/double/versions/9")[0] == 404
    assert _raw(server, "GET", "/nothing")[0] == 404
    assert _raw(server, "GET", "/v2/models/double/infer")[0] == 405
    assert _raw(server, "GET", "/metrics") == (200, b"up 1\n")
    crash, _ = encode_request({"x": np.array([[13, 0, 0, 0]], np.float32)}, binary=False)
    status, text = _raw(server, "POST", "/v2/models/double/infer", crash)
    assert status == 500 and json.loads(text)["error"] == "the runtime crashed"
    busy, _ = encode_request({"x": np.array([[17, 0, 0, 0]], np.float32)}, binary=False)
    assert _raw(server, "POST", "/v2/models/double/infer", busy) == (
        503,
        b'{"error":"no model yet"}',
    )
    too_big = b" " * (64 * 1024 + 1)
    assert _raw(server, "POST", "/v2/models/double/infer", too_big)[0] == 413
    server.service.is_ready = False
    try:
        assert _raw(server, "GET", "/v2/health/ready")[0] == 503
        assert _raw(server, "GET", "/v2/health/live")[0] == 200
    finally:
        server.service.is_ready = True


def test_keep_alive_serves_many_requests_on_one_connection(server: Any) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        for i in range(20):
            body, headers = encode_request({"x": np.full((1, 4), i, np.float32)})
            conn.request("POST", "/v2/models/double/infer", body=body, headers=headers)
            response = conn.getresponse()
            out = decode_response(response.read(), int(response.headers[HEADER_LENGTH]))
            assert out.outputs["y"][0, 0] == 2 * i
        assert conn.sock is not None  # still the same socket
    finally:
        conn.close()


def test_api_key() -> None:
    with serve(Doubler(), api_key="s3cret").start() as srv:
        assert _raw(srv, "GET", "/v2/health/ready")[0] == 200
        assert _raw(srv, "GET", "/v2/models/double")[0] == 401
        assert (
            _raw(srv, "GET", "/v2/models/double", headers={"Authorization": "Bearer wrong"})[0]
            == 401
        )
        assert (
            _raw(srv, "GET", "/v2/models/double", headers={"Authorization": "Bearer s3cret"})[0]
            == 200
        )
        assert _raw(srv, "GET", "/v2/models/double", headers={"X-API-Key": "s3cret"})[0] == 200


def test_unused_request_fields_are_kept() -> None:
    request = InferRequest(inputs={}, parameters={"priority": 1})
    assert request.parameters["priority"] == 1


class Blocker(Doubler):
    """Doubler whose infer waits for ``release`` (a connection stuck *working*)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.inside = threading.Semaphore(0)  # one release per call that entered infer

    def infer(
        self, name: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.inside.release()
        self.release.wait(10)
        return super().infer(name, inputs)


def test_connection_limit_evicts_idle_then_refuses_instead_of_growing_threads() -> None:
    """Full of idle connections: the one idle longest is closed and the newcomer served.
    Full of connections that are working: the newcomer is refused (503), no new thread."""
    import socket

    service = Blocker()
    with serve(service, max_connections=2).start() as srv:
        idle = [socket.create_connection((srv.host, srv.port)) for _ in range(2)]
        time.sleep(0.1)
        assert _raw(srv, "GET", "/v2/health/live")[0] == 200
        idle[0].settimeout(5)
        assert idle[0].recv(1024) == b""  # the oldest idle connection was closed
        for sock in idle:
            sock.close()
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "data": [1, 2, 3, 4]}]}).encode()
        workers = [threading.Thread(target=_raw, args=(srv, "POST", "/v2/models/double/infer",
                                                       body)) for _ in range(2)]
        for t in workers:
            t.start()
        for _ in workers:  # both are inside infer now (a fixed sleep was short under load)
            assert service.inside.acquire(timeout=10)
        try:
            extra = socket.create_connection((srv.host, srv.port))
            extra.settimeout(5)
            assert extra.recv(1024).startswith(b"HTTP/1.1 503")
            extra.close()
        finally:
            service.release.set()
            for t in workers:
                t.join()
        assert _raw(srv, "GET", "/v2/health/live")[0] == 200


# ---------------------------------------------------------------------------- fuzzing


_arrays = st.sampled_from(DTYPES).flatmap(
    lambda d: hnp.arrays(numpy_dtype(d), hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
)


@settings(max_examples=150, deadline=None)
@given(arrays=st.lists(_arrays, min_size=1, max_size=3), binary=st.booleans())
def test_any_tensor_round_trips(arrays: list[np.ndarray], binary: bool) -> None:
    inputs = {f"t{i}": a for i, a in enumerate(arrays)}
    body, headers = encode_request(inputs, binary=binary)
    length = headers.get(HEADER_LENGTH)
    decoded = decode_request(body, int(length) if length else None).inputs
    for name, array in inputs.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)  # NaN == NaN here


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_bodies_only_ever_raise_input_error(data: st.DataObject) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = encode_request({"x": x}, binary=data.draw(st.booleans()))
    raw = bytearray(body)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    length = headers.get(HEADER_LENGTH)
    header_length = data.draw(st.sampled_from([None, int(length) if length else None, 7, 10**9]))
    with contextlib.suppress(InputError):  # anything else fails the test
        decode_request(bytes(raw[:cut]), header_length)


def test_server_survives_garbage_on_the_wire(server: Any) -> None:
    import socket

    for junk in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"POST /v2 HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                 b"GET " + b"A" * 70000 + b" HTTP/1.1\r\n\r\n", b"\r\n\r\n"):  # fmt: skip
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    assert _raw(server, "GET", "/v2/health/live")[0] == 200


def test_a_million_deep_body_is_refused_not_a_crash() -> None:
    # orjson before 3.10 crashed the process on this 2 MB body; the codec refuses it
    depth = 10**6
    body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InputError, match="not valid JSON"):
        decode_request(body, None)


def test_json_tensors_with_nan_and_inf_still_round_trip_through_the_fast_parser() -> None:
    x = np.array([[np.nan, np.inf, -np.inf, 0.1]], np.float32)
    body, _ = encode_request({"x": x}, binary=False)
    assert b"Infinity" in body  # written by the standard library, which orjson cannot read
    np.testing.assert_array_equal(decode_request(body, None).inputs["x"], x)
    finite, _ = encode_request({"x": x[:, 3:]}, binary=False)
    assert finite.endswith(b'"data":[0.1]}]}')  # float32 in its shortest form


def test_large_blocks_are_unmapped_when_freed_on_glibc() -> None:
    from edgeship.sdk.serving._memory import keep_large_blocks_mapped, trim

    assert keep_large_blocks_mapped() and keep_large_blocks_mapped()  # glibc here; idempotent
    trim()  # callable at any time


def _large(datatype: str = "FP32", n: int = 120_000, **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    x = _sample(datatype, (n,))
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [n // 4, 4],
                       "data": x.tolist()}], **extra}
    return x.reshape(n // 4, 4), doc


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "UINT8"])
def test_large_json_tensors_are_parsed_in_slices_exactly(datatype: str) -> None:
    """Issue 16, bytes in flight: a large JSON "data" array is parsed a slice at a time
    (see _v2json) to the same array the whole parse gives; responses too."""
    from edgeship.sdk.serving import _v2json

    n = 120_000 if datatype.startswith("FP") else 640_000  # > 2 slices either way
    x, doc = _large(datatype, n, id="r1", parameters={"k": "v"})
    body = json.dumps(doc).encode()
    assert len(body) > 2 * _v2json.SLICE_BYTES
    header, cut = _v2json.cut_arrays(body)
    assert len(cut.spans) == 1 and len(header) < 300  # the numbers were cut out
    request = decode_request(body, None, max_bytes=64 << 20)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["x"].dtype == x.dtype and request.id == "r1"
    assert request.parameters == {"k": "v"}
    answer, _ = encode_response({"y": x}, request, model_name="m", model_version="1")
    np.testing.assert_array_equal(decode_response(answer, None, max_bytes=64 << 20).outputs["y"], x)


def test_large_json_arrays_the_slices_cannot_take_go_to_the_plain_parser() -> None:
    from edgeship.sdk.serving import _v2json

    x, doc = _large()
    nested = {"inputs": [{**doc["inputs"][0], "data": x.tolist()}]}  # [[..4..], ...]
    body = json.dumps(nested).encode()
    assert not _v2json.cut_arrays(body)[1].spans
    np.testing.assert_array_equal(decode_request(body, None, max_bytes=64 << 20).inputs["x"], x)
    with_nan = x.copy()
    with_nan[7, 1] = np.nan
    body, _ = encode_request({"x": with_nan}, binary=False)
    assert not _v2json.cut_arrays(body)[1].spans
    np.testing.assert_array_equal(decode_request(body, None, max_bytes=64 << 20).inputs["x"],
                                  with_nan)
    # '"data": [' inside a string is not a tensor's data
    text = json.dumps({"note": '"data": [' + "1," * 600_000, "inputs": doc["inputs"]}).encode()
    np.testing.assert_array_equal(decode_request(text, None, max_bytes=64 << 20).inputs["x"], x)


@pytest.mark.parametrize(("change", "match"), [
    (lambda b: b.replace(b", 0.", b",, 0.", 1), "unexpected character"),
    (lambda b: b.replace(b", 0.", b", 00.", 1), "leading zero"),
    (lambda b: b.replace(b", 0.", b", 1" + b"0" * 400 + b".", 1), "infinity"),
    (lambda b: b.replace(b", 0.", b", 0.5, 0.", 1), "more than 120000"),
    (lambda b: b.replace(b'"shape": [30000, 4]', b'"shape": [30001, 4]'), "120000 data elements"),
])
def test_bad_large_json_arrays_are_one_input_error(change: Any, match: str) -> None:
    x, doc = _large()
    doc["inputs"][0]["data"] = np.abs(x).ravel().tolist()  # ", 0." follows every comma
    body = change(json.dumps(doc).encode())
    with pytest.raises(InputError, match=match) as caught:
        decode_request(body, None, max_bytes=64 << 20)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_large_numeric_array_outside_the_tensors_is_refused() -> None:
    _, doc = _large(n=40)
    doc["parameters"] = {"data": list(range(300_000))}
    with pytest.raises(InputError, match="outside the tensors"):
        decode_request(json.dumps(doc).encode(), None, max_bytes=64 << 20)
