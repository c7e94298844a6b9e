"""edgeship.sdk.Model on real onnxruntime: loading, checking inputs, threads, errors."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.sdk import Model, TensorSpec
from onnx import TensorProto, helper, numpy_helper

from edgeship import InferenceError, ModelLoadError


def _linear_onnx(path: Path, *, batch: int | str = "N") -> np.ndarray:
    """y = softmax(x @ W + b) for x of shape [batch, 4]; returns W."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = np.array([0.1, -0.2, 0.3], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return w


def _expected(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    z = x @ w + np.array([0.1, -0.2, 0.3], np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def linear(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "linear.onnx"
    return path, _linear_onnx(path)


def test_onnx_predict_matches_numpy(linear: tuple[Path, np.ndarray]) -> None:
    path, w = linear
    model = Model.load(path, threads=1)
    assert model.runtime == "onnxruntime"
    assert model.path == path
    assert model.inputs == (TensorSpec(name="x", shape=(-1, 4), dtype="float32"),)
    assert model.outputs == (TensorSpec(name="y", shape=(-1, 3), dtype="float32"),)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    y = model.predict(x)
    assert y.dtype == np.float32 and y.shape == (5, 3)
    np.testing.assert_allclose(y, _expected(x, w), rtol=1e-5, atol=1e-6)
    # dict input and predict_all give the same answer; float64 is cast
    np.testing.assert_allclose(model.predict({"x": x.astype(np.float64)}), y, rtol=1e-6)
    np.testing.assert_allclose(model.predict_all({"x": x})["y"], y, rtol=1e-6)


def test_from_bytes_and_spec_roundtrip(linear: tuple[Path, np.ndarray]) -> None:
    path, w = linear
    model = Model.from_bytes(path.read_bytes(), "onnx")
    assert model.path is None
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(model.predict(x), _expected(x, w), rtol=1e-5, atol=1e-6)
    spec = model.inputs[0]
    assert TensorSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((2, 5), np.float32), "shape [2, 5], the model expects [-1, 4]"),
        (np.zeros((4,), np.float32), "shape [4]"),
        (np.array([["a"] * 4]), "dtype <U1"),
        (np.zeros((1, 4), np.complex64), "dtype complex64"),
        (np.full((1, 4), np.nan, np.float32), "NaN or Inf"),
    ],
)
def test_bad_inputs_are_inference_errors(
    linear: tuple[Path, np.ndarray], value: np.ndarray, message: str
) -> None:
    model = Model.load(linear[0])
    with pytest.raises(InferenceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.predict(value)


def test_missing_and_unknown_inputs(linear: tuple[Path, np.ndarray]) -> None:
    model = Model.load(linear[0])
    with pytest.raises(InferenceError, match="missing input 'x'"):
        model.predict_all({})
    with pytest.raises(InferenceError, match="unknown input"):
        model.predict_all({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)})


def test_fixed_batch_one_takes_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "b1.onnx"
    w = _linear_onnx(path, batch=1)
    model = Model.load(path)
    x = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), _expected(x, w), rtol=1e-5, atol=1e-6)


def test_predict_from_many_threads(linear: tuple[Path, np.ndarray]) -> None:
    path, w = linear
    model = Model.load(path, threads=1)
    xs = [np.random.default_rng(i).normal(size=(3, 4)).astype(np.float32) for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        ys = list(pool.map(model.predict, xs))
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_allclose(y, _expected(x, w), rtol=1e-5, atol=1e-6)


def test_load_errors(tmp_path: Path, linear: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(ModelLoadError, match="cannot read model"):
        Model.load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model at all")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        Model.load(junk)
    with pytest.raises(ModelLoadError, match="not a TFLite flatbuffer"):
        Model.load(junk, runtime="litert")
    with pytest.raises(ModelLoadError, match="unknown runtime"):
        Model.load(linear[0], runtime="tensorrt")
    with pytest.raises(ModelLoadError, match="over the limit"):
        Model.load(linear[0], max_bytes=10)
    with pytest.raises(ModelLoadError, match="execution provider 'NoSuchExecutionProvider'"):
        Model.load(linear[0], device="NoSuchExecutionProvider")
    with pytest.raises(ModelLoadError, match=r"needs a \.tflite model"):
        Model.load(linear[0], device="edgetpu")


def test_import_sdk_does_not_import_runtimes() -> None:
    code = (
        "import sys, edgeship.sdk; from edgeship.sdk import Model, TensorSpec; "
        "heavy = {'numpy', 'onnx', 'onnxruntime', 'ai_edge_litert'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_int8_edged_onnx_is_float_to_the_caller(tmp_path: Path) -> None:
    """A model converted with io="int8": int8 input -> DequantizeLinear ... QuantizeLinear
    -> int8 output. Model quantizes and dequantizes with those nodes' parameters."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(-5, np.int8), "z"),
             numpy_helper.from_array(np.array(0.2, np.float32), "s2"),
             numpy_helper.from_array(np.array(7, np.int8), "z2")]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
         helper.make_node("Relu", ["f"], ["r"]),
         helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["y"])],
        "io8", [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [2, 3])], inits)
    path = tmp_path / "io8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    model = Model.load(path)
    assert model.inputs[0].dtype == "float32" and model.outputs[0].dtype == "float32"
    x = np.array([[-1.0, 0.0, 0.34], [2.0, 12.9, 100.0]], np.float32)
    y = model.predict(x)
    # quantize (round half even, clip to int8), relu, requantize to 0.2/7, dequantize
    xq = np.clip(np.round(x / 0.1) - 5, -128, 127)
    yq = np.clip(np.round(np.maximum((xq + 5) * 0.1, 0) / 0.2) + 7, -128, 127)
    np.testing.assert_allclose(y, (yq - 7) * 0.2, atol=1e-6)
    # the same parameters read from the metadata the converter writes (no graph parse)
    import onnxruntime as ort
    from edgeship.converter._runtime_hints import with_runtime_hints
    from edgeship.sdk.runtime._quant_hints import hints_from_metadata

    hinted = tmp_path / "io8_hints.onnx"
    onnx.save(with_runtime_hints(onnx.load(path)), hinted)
    metadata = ort.InferenceSession(str(hinted)).get_modelmeta().custom_metadata_map
    hints = hints_from_metadata(metadata)
    assert hints is not None and set(hints.edges) == {"x", "y"}
    np.testing.assert_array_equal(Model.load(hinted).predict(x), y)


def test_a_float_onnx_model_loads_without_importing_onnx(tmp_path: Path) -> None:
    # the agent boots on onnxruntime alone: onnx (~180 ms, ~15 MB) only for QDQ outputs
    code = ("import sys; from edgeship.sdk.runtime._model import Model; "
            f"m = Model.load({str(Path(__file__).parent / 'fixtures' / 'mobilenet.onnx')!r}); "
            "print('onnx' in sys.modules, m.output_steps)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "{}"]
