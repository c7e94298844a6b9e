"""OpenVINO as a runtime (issue 22): ``Model.load(..., runtime="openvino")`` on the
converter's INT8 QDQ ONNX agrees with onnxruntime (float and int8 model edges), and a
real agent process with ``[model] runtime = "openvino"`` installs and serves a release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from edgeship.converter import ConvertOptions, convert
from edgeship.sdk import Model
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    expected,
    http_json,
    make_keys,
    make_release,
    served_version,
    write_config,
)

from edgeship._errors import ModelLoadError

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov")
    outs = {}
    for io in ("float", "int8"):
        convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", root / io,
                ConvertOptions(formats=("onnx", "tflite"), io=io))
        outs[io] = root / io
    return outs


@pytest.mark.parametrize("io", ["float", "int8"])
def test_openvino_model_agrees_with_onnxruntime(cnn_int8: dict[str, Path], io: str) -> None:
    """(--io int8 loads only with f32 for the float parts: OpenVINO 2026.4's bf16 default on
    this AMX CPU finds no kernel for it, 'No suitable implementations')"""
    path = cnn_int8[io] / "model.int8.onnx"
    ov_model = Model.load(path, runtime="openvino", threads=1)
    ort_model = Model.load(path)
    assert ov_model.runtime == "openvino"
    assert [s.to_dict() for s in ov_model.inputs] == [s.to_dict() for s in ort_model.inputs]
    assert ov_model.inputs[0].dtype == "float32"  # int8 edges are float32 to the caller
    x = np.load(FIX / "cnn_eval.npz")["input"][:16]
    same = 0
    for i in range(len(x)):
        a = ort_model.predict(x[i : i + 1])
        b = ov_model.predict(x[i : i + 1])
        assert b.dtype == np.float32 and b.shape == a.shape
        assert a.argmax() == b.argmax()
        same += bool(np.abs(a - b).max() <= 1.0 / 256 + 1e-6)  # within one output step
    # the integers are the same but for rounding ties: a logit one step apart moves the
    # Softmax output by several of its 1/256 steps (measured: 60 of 64 samples identical)
    assert same >= len(x) - 2, same


def test_an_io_int8_ir_is_float32_to_the_caller_as_its_onnx(cnn_int8: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """The IR the openvino-cpu target writes for an --io int8 model carries its edges'
    scales and zero points (an IR has no Q/DQ to read them from): loaded from the .xml or
    packed in memory, it takes and gives float32 and the numbers of its ONNX."""
    from edgeship.converter._openvino_ir import IrChoice, write_ir
    from edgeship.sdk.runtime._openvino_pack import pack_ir_files

    onnx_path = cnn_int8["int8"] / "model.int8.onnx"
    xml = write_ir(onnx_path, tmp_path / "m.xml", IrChoice(fused=False, amx=True))
    from_onnx = Model.load(onnx_path, runtime="openvino", threads=1)
    for ir in (Model.load(xml, threads=1),
               Model.load_bytes(pack_ir_files(xml, 1 << 30), format="ovir", runtime="openvino")):
        assert [s.to_dict() for s in ir.inputs] == [s.to_dict() for s in from_onnx.inputs]
        assert ir.inputs[0].dtype == "float32" and ir.outputs[0].dtype == "float32"
        x = np.load(FIX / "cnn_eval.npz")["input"][:4]
        for i in range(len(x)):
            np.testing.assert_array_equal(ir.predict(x[i:i + 1]), from_onnx.predict(x[i:i + 1]))


def test_openvino_refuses_what_it_cannot_run(cnn_int8: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="TFLite model; openvino cannot run it"):
        Model.load(cnn_int8["float"] / "model.int8.tflite", runtime="openvino")
    import openvino as ov

    if "NPU" not in ov.Core().available_devices:
        with pytest.raises(ModelLoadError, match="no NPU device here"):
            Model.load(cnn_int8["float"] / "model.int8.onnx", runtime="openvino", device="npu")


def test_agent_serves_a_release_with_the_openvino_runtime(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    release = make_release(tmp_path, keys, "1.0.0")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=keys / "root.pub", initial=release)
    text = cfg.read_text()
    assert "threads = 1" in text
    cfg.write_text(text.replace("threads = 1", 'runtime = "openvino"\nthreads = 1', 1))
    proc = AgentProc(cfg, port).start()
    try:
        proc.wait_ready()
        version, y = served_version(proc.url)
        assert version == "1.0.0"  # the golden health check ran in OpenVINO too
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        status, meta = http_json(f"{proc.url}/v2/models/model")
        assert status == 200 and meta["platform"] == "openvino_onnx"
    finally:
        assert proc.terminate() == 0


@pytest.mark.parametrize("side", [8, 128])  # 256 B: copied into the bound tensor; 64 KiB: shared
def test_one_call_path_returns_what_the_public_infer_does(tmp_path: Path, side: int) -> None:
    """The SDK's one-call path (OneCall) on fresh inputs each call, in both of its input
    modes (a small static input copied into the request's bound tensor, a large one
    shared) and on a dynamic batch (always shared), gives exactly the outputs of
    OpenVINO's public ``InferRequest.infer``; results are copies that the next call
    does not overwrite."""
    import openvino as ov
    from edgeship.sdk.runtime._runtime_openvino import SMALL_INPUT, OneCall
    from onnx import helper
    from onnx_graphs import save_one_io_model

    rng = np.random.default_rng(5)
    path = save_one_io_model(tmp_path / "m.onnx", [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["y"])], {"w": rng.normal(size=(4, 1, 3, 3))},
        ["N", 1, side, side])
    core = ov.Core()
    dynamic = core.compile_model(core.read_model(str(path)), "CPU")
    static_model = core.read_model(str(path))
    static_model.reshape([1, 1, side, side])
    static = core.compile_model(static_model, "CPU")
    reference = dynamic.create_infer_request()
    cases = [(OneCall(static.create_infer_request()), (1, 1, 1)),
             (OneCall(dynamic.create_infer_request()), (1, 2, 1))]
    assert bool(cases[0][0]._views) == (side * side * 4 <= SMALL_INPUT) and not cases[1][0]._views
    for one, batches in cases:
        for batch in batches:
            x = rng.normal(size=(batch, 1, side, side)).astype(np.float32)
            first = one({0: x})[0]
            again = one({0: -x})[0]
            assert np.array_equal(first, reference.infer({0: x})[0])
            assert np.array_equal(again, reference.infer({0: -x})[0])
            assert not np.array_equal(first, again)


@pytest.mark.parametrize("inputs", [1, 2])
def test_the_backends_call_gives_the_public_infers_outputs_on_every_path(tmp_path: Path, inputs: int) -> None:
    """``OpenVinoBackend.run`` (the closure built per model: a single input looked up by
    name, several in a loop) on arrays that fit the bound tensors, on float64 and
    non-contiguous arrays (converted, not refused), from 8 threads at once: each result
    is OpenVINO's public ``InferRequest.infer`` on that input, and is a copy the next
    call does not overwrite."""
    import threading

    import onnx
    import openvino as ov
    from edgeship.sdk.runtime._runtime_openvino import OpenVinoBackend
    from onnx import TensorProto, helper

    names = ["a", "b"][:inputs]
    nodes = [helper.make_node("Sigmoid", [names[0]], ["s"])]
    nodes += [helper.make_node("Add", ["s", "b"], ["y"])] if inputs == 2 else [helper.make_node("Neg", ["s"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 6]) for n in [*names, "y"]]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:-1], io[-1:]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    backend = OpenVinoBackend(str(tmp_path / "m.onnx"), device="cpu", threads=1)
    reference = ov.Core().compile_model(str(tmp_path / "m.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(3)

    def feeds(k: int) -> dict[str, np.ndarray]:
        values = rng.normal(size=(len(names), 1, 6)) * (k + 1)
        return {n: v.astype(np.float32) for n, v in zip(names, values, strict=True)}

    first, second = feeds(0), feeds(1)
    got_first, got_second = backend.run(first)["y"], backend.run(second)["y"]
    assert np.array_equal(got_first, reference.create_infer_request().infer(first)[0])  # not overwritten
    assert np.array_equal(got_second, reference.create_infer_request().infer(second)[0])
    odd = {n: np.asfortranarray(np.repeat(v.astype(np.float64), 2, axis=1)[:, ::2]) for n, v in first.items()}
    assert np.array_equal(backend.run(odd)["y"], got_first)
    assert np.array_equal(backend.run(second)["y"], got_second)  # the fast path again after a slow call
    failures: list[str] = []

    def worker(seed: int) -> None:
        own = np.random.default_rng(seed)
        for _ in range(200):
            feed = {n: own.normal(size=(1, 6)).astype(np.float32) for n in names}
            want = reference.create_infer_request().infer(feed)[0]
            if not np.array_equal(backend.run(feed)["y"], want):
                failures.append(f"thread {seed}")
                return

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and failures == []
