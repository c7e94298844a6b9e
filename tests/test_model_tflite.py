"""edgeship.sdk.Model on a real LiteRT interpreter: int8 edges, threads, Edge TPU boundary.

The models are written with the flatbuffer layer of the TFLite writer directly (one
FULLY_CONNECTED), so the expected answers can be computed by hand."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor, serialize
from edgeship.sdk import Model, TensorSpec

from edgeship import InferenceError, ModelLoadError

W = np.arange(-6, 6, dtype=np.int8).reshape(3, 4) * 9  # int8 weights, [out, in]
X_Q, W_S, Y_Q = (0.02, 0), 0.01, (0.005, 3)
BIAS = np.array([100, 0, -100], np.int32)


def _fc_model(io: str) -> bytes:
    g = FbGraph()
    x_q = FbQuant([X_Q[0]], [X_Q[1]])
    y_q = FbQuant([Y_Q[0]], [Y_Q[1]])
    if io == "float":
        x = g.add_tensor(FbTensor("x", (1, 4), "float32"))
        xq = g.add_tensor(FbTensor("x/int8", (1, 4), "int8", quant=x_q))
        g.add_op(FbOp("QUANTIZE", 1, [x], [xq]))
    else:
        x = xq = g.add_tensor(FbTensor("x", (1, 4), "int8", quant=x_q))
    w = g.add_tensor(FbTensor("w", (3, 4), "int8", quant=FbQuant([W_S], [0])), W)
    b = g.add_tensor(FbTensor("b", (3,), "int32", quant=FbQuant([X_Q[0] * W_S], [0])), BIAS)
    yq = g.add_tensor(FbTensor("y" if io == "int8" else "y/int8", (1, 3), "int8", quant=y_q))
    g.add_op(FbOp("FULLY_CONNECTED", 4, [xq, w, b], [yq],
                  ("FullyConnectedOptions", {"FusedActivationFunction": 0})))
    y = yq
    if io == "float":
        y = g.add_tensor(FbTensor("y", (1, 3), "float32"))
        g.add_op(FbOp("DEQUANTIZE", 2, [yq], [y]))
    g.inputs, g.outputs = [x], [y]
    return serialize(g)


def _expected(x: np.ndarray) -> np.ndarray:
    """The int8 arithmetic by hand: quantize x, integer matmul, requantize, dequantize."""
    xq = np.clip(np.round(x / X_Q[0]) + X_Q[1], -128, 127)
    acc = (xq - X_Q[1]) @ W.astype(np.int64).T + BIAS
    yq = np.clip(np.round(acc * X_Q[0] * W_S / Y_Q[0]) + Y_Q[1], -128, 127)
    return ((yq - Y_Q[1]) * Y_Q[0]).astype(np.float32)


@pytest.fixture(params=["float", "int8"])
def fc_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"fc_{request.param}.tflite"
    path.write_bytes(_fc_model(request.param))
    return path


def test_tflite_predict_float_and_int8_edges(fc_path: Path) -> None:
    model = Model.load(fc_path, threads=1)
    assert model.runtime == "litert"
    # int8 edges are presented as float32: Model (de)quantizes with the tensor's parameters
    assert model.inputs == (TensorSpec(name="x", shape=(1, 4), dtype="float32"),)
    assert model.outputs == (TensorSpec(name="y", shape=(1, 3), dtype="float32"),)
    x = np.random.default_rng(3).uniform(-1.5, 1.5, size=(20, 4)).astype(np.float32)
    y = model.predict(x)  # a batch of 20 on a batch-1 model runs row by row
    assert y.dtype == np.float32 and y.shape == (20, 3)
    # one step of slack: LiteRT's fixed-point requantization may round a tie the other way
    np.testing.assert_allclose(y, _expected(x), atol=Y_Q[0] * 1.01)
    assert np.mean(np.isclose(y, _expected(x), atol=1e-6)) > 0.9


def test_tflite_from_bytes_and_bad_inputs(fc_path: Path) -> None:
    model = Model.from_bytes(fc_path.read_bytes(), ".tflite")
    assert model.path is None and model.runtime == "litert"
    with pytest.raises(InferenceError, match=r"shape \[1, 5\]"):
        model.predict(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceError, match="missing input 'x'"):
        model.predict_all({"y": np.zeros((1, 4), np.float32)})


def test_tflite_predict_from_many_threads(fc_path: Path) -> None:
    model = Model.load(fc_path, threads=1)
    xs = [np.random.default_rng(i).uniform(-1, 1, size=(4, 4)).astype(np.float32) for i in range(48)]
    serial = [model.predict(x) for x in xs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(model.predict, xs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_edgetpu_delegate_absent_is_one_clear_error(fc_path: Path) -> None:
    # the hardware boundary: no Coral device and no libedgetpu.so.1 exist on this machine
    with pytest.raises(ModelLoadError, match=r"Edge TPU delegate libedgetpu\.so\.1 could not be loaded") as caught:
        Model.load(fc_path, device="edgetpu")
    assert "device='cpu'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_tflite_load_errors(tmp_path: Path, fc_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(fc_path.read_bytes()[:64])
    with pytest.raises(ModelLoadError, match="LiteRT cannot load"):
        Model.load(broken)
    with pytest.raises(ModelLoadError, match="onnxruntime cannot run it"):
        Model.load(fc_path, runtime="onnxruntime")
    with pytest.raises(ModelLoadError, match="device 'cpu', 'edgetpu' or 'ethos-u'"):
        Model.load(fc_path, device="CUDAExecutionProvider")
    with pytest.raises(ModelLoadError, match="threads must be >= 1"):
        Model.load(fc_path, threads=0)


def test_no_tflite_runtime_is_one_clear_error(fc_path: Path) -> None:
    """Without ai_edge_litert Model falls back to tflite_runtime; without both it says what
    to install (both imports are blocked in a child process)."""
    code = (
        "import sys\n"
        "sys.modules['ai_edge_litert'] = None\n"
        "sys.modules['tflite_runtime'] = None\n"
        "from edgeship import ModelLoadError\n"
        "from edgeship.sdk import Model\n"
        "try:\n"
        f"    Model.load({str(fc_path)!r})\n"
        "except ModelLoadError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "no TFLite runtime: install ai-edge-litert (or tflite-runtime)"


def test_dynamic_batch_tflite_is_resized_to_the_input(tmp_path: Path) -> None:
    """A model with -1 in its shape signature (other converters write these) takes any batch."""
    g = FbGraph()
    x = g.add_tensor(FbTensor("x", (1, 4), "float32", signature=(-1, 4)))
    xq = g.add_tensor(FbTensor("x/int8", (1, 4), "int8", quant=FbQuant([X_Q[0]], [X_Q[1]]), signature=(-1, 4)))
    y = g.add_tensor(FbTensor("y", (1, 4), "float32", signature=(-1, 4)))
    g.add_op(FbOp("QUANTIZE", 1, [x], [xq]))
    g.add_op(FbOp("DEQUANTIZE", 2, [xq], [y]))
    g.inputs, g.outputs = [x], [y]
    path = tmp_path / "dyn.tflite"
    path.write_bytes(serialize(g))
    model = Model.load(path)
    assert model.inputs[0].shape == (-1, 4)
    for rows in (5, 2, 5):
        x_val = np.linspace(-1, 1, rows * 4, dtype=np.float32).reshape(rows, 4)
        np.testing.assert_allclose(model.predict(x_val), np.round(x_val / X_Q[0]) * X_Q[0], atol=1e-6)
