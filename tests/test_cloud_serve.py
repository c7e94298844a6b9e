"""``edgeship cloud serve``: a real subprocess answered by tritonclient.http unchanged,
API keys, and request batching on a dynamic-batch model."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, free_port, wait_for_port
from edgeship.sdk.serving._cloudserve import OnnxService
from onnx import TensorProto, helper


def dynamic_model(path: Path) -> Path:
    """y = softmax(x @ W) with a symbolic batch dimension."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
        ],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def start_cloud(
    model: Path, *args: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeship",
            "cloud",
            "serve",
            str(model),
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=60)  # it loads the model first: slow on a loaded machine
    except TimeoutError:
        proc.kill()
        raise
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def cnn_cloud() -> Iterator[int]:
    proc, port = start_cloud(FIXTURES / "cnn.onnx", "--model-version", "2.0.0")
    yield port
    stop(proc)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_unchanged(cnn_cloud: int, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{cnn_cloud}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cnn")
        meta = client.get_model_metadata("cnn")
        assert meta["name"] == "cnn" and meta["versions"] == ["2.0.0"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        x = np.load(FIXTURES / "cnn_eval.npz")["input"][:3].astype(np.float32)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("probs", binary_data=binary)
        result = client.infer("cnn", [inp], outputs=[out])
        expected = ort.InferenceSession(str(FIXTURES / "cnn.onnx")).run(None, {"input": x[:1]})[0]
        got = result.as_numpy("probs")
        assert got.shape == (3, 10)
        np.testing.assert_allclose(got[:1], expected, rtol=1e-5, atol=1e-6)
        assert result.get_response()["parameters"] == {"source": "cloud", "version": "2.0.0"}
        bad = triton.InferInput("input", [1, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 8, 8), np.float32), binary_data=binary)
        with pytest.raises(triton.InferenceServerException, match="expects"):
            client.infer("cnn", [bad])
    finally:
        client.close()


def test_api_key_file(tmp_path: Path) -> None:
    import tritonclient.http as triton

    key = tmp_path / "key"
    key.write_text("tok-123\n")
    proc, port = start_cloud(FIXTURES / "mlp.onnx", "--api-key-file", str(key), "--name", "risk")
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()  # health stays open for load balancers
        with pytest.raises(triton.InferenceServerException, match="API key"):
            client.get_model_metadata("risk")
        meta = client.get_model_metadata("risk", headers={"Authorization": "Bearer tok-123"})
        assert meta["outputs"][0]["name"] == "probs"
        client.close()
    finally:
        stop(proc)


def test_bad_model_is_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    out = subprocess.run(
        [sys.executable, "-m", "edgeship", "cloud", "serve", str(bogus), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: onnxruntime cannot load") and "Traceback" not in out.stderr
    empty = tmp_path / "empty.key"
    empty.write_text("")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeship",
            "cloud",
            "serve",
            str(FIXTURES / "cnn.onnx"),
            "--api-key-file",
            str(empty),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--api-key-file" in out.stderr


def test_concurrent_requests_are_batched(tmp_path: Path) -> None:
    service = OnnxService(dynamic_model(tmp_path / "dyn.onnx"), batch_window_ms=200, max_batch=64)
    try:
        assert service.dynamic_batch
        rng = np.random.default_rng(1)
        xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(16)]
        results: list[np.ndarray | None] = [None] * len(xs)
        # the first run is held until all 16 requests are inside the server, so what is
        # tested is the merge of requests that wait together, not how a loaded machine
        # happens to schedule 16 threads (seen: 8 runs when they trickled in one by one)
        real_run, gate = service._run, threading.Event()

        def gated_run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            gate.wait(60)
            return real_run(inputs)

        service._run = gated_run  # type: ignore[method-assign]

        def call(i: int) -> None:
            results[i] = service.infer("dyn", {"x": xs[i]})[0]["y"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while service._active < len(xs) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(timeout=30)
        session = ort.InferenceSession(str(tmp_path / "dyn.onnx"))
        for x, y in zip(xs, results, strict=True):
            assert y is not None
            np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        # one run for the first request(s), one for those that queued behind it
        assert service.runs <= 3, f"{service.runs} session runs for {len(xs)} requests"
        # a lone request is not held back by the batching window
        before = service.runs
        service.infer("dyn", {"x": xs[0]})
        assert service.runs == before + 1
    finally:
        service.close()


def test_fixed_batch_model_runs_rows_one_by_one() -> None:
    service = OnnxService(FIXTURES / "cnn.onnx")
    try:
        assert not service.dynamic_batch
        x = np.load(FIXTURES / "cnn_eval.npz")["input"][:4].astype(np.float32)
        y = service.infer("cnn", {"input": x})[0]["probs"]
        assert y.shape == (4, 10) and service.runs == 4
    finally:
        service.close()


def test_batching_over_http_keeps_answers_apart(tmp_path: Path) -> None:
    from edgeship.sdk import CloudClient

    model = dynamic_model(tmp_path / "dyn.onnx")
    proc, port = start_cloud(model, "--batch-window-ms", "5")
    session = ort.InferenceSession(str(model))
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with CloudClient(f"http://127.0.0.1:{port}", "dyn", deadline_ms=5000) as cloud:
            for _ in range(15):
                x = rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32)
                y = cloud.infer({"x": x})["y"]
                if not np.allclose(y, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6):
                    failures.append(f"client {seed}: wrong rows for {x.shape}")

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        stop(proc)
    assert not failures, failures[:3]
