"""TFLite writer on small models built here with onnx.helper and quantized by
onnxruntime's quantize_static (QDQ); every .tflite runs in a real LiteRT interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
from edgeship.converter._tflite import TfliteInfo, write_tflite
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeship import ConversionError, InputError, UnsupportedOpError

RNG = np.random.default_rng(7)


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, data: np.ndarray) -> None:
        self._rows = iter([{name: data[i : i + 1]} for i in range(len(data))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def _init(inits: list[onnx.TensorProto], name: str, *shape: int, scale: float = 0.3) -> str:
    inits.append(numpy_helper.from_array((RNG.normal(size=shape) * scale).astype(np.float32), name))
    return name


def _save(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[int],
          y_shape: list[int], path: Path, *, extra_outputs: tuple[str, ...] = ()) -> None:
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [x_shape[0], y_shape[-1]]) for n in extra_outputs]
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape), *outputs], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _quantize(fp32: Path, calib: np.ndarray, out: Path, *, per_channel: bool = True) -> Path:
    """ORT QDQ int8, then pin Softmax/Sigmoid outputs to the TFLite spec (1/256, -128) the
    way edgeship's converter writes them (ORT picks 1/255)."""
    quantize_static(str(fp32), str(out), _Reader("x", calib), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    model = onnx.load(out)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        src = producer.get(node.input[0])
        if node.op_type == "QuantizeLinear" and src is not None and src.op_type in ("Softmax", "Sigmoid"):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.array(1 / 256, np.float32), node.input[1]))
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.array(-128, np.int8), node.input[2]))
    onnx.save(model, out)
    return out


def _cnn(path: Path) -> None:
    """Every layout case: explicit/SAME/VALID pads, depthwise x2, grouped conv, residual
    Add, MaxPool, AveragePool, Concat on channels, Flatten of a 4x4 map into a Gemm."""
    inits: list[onnx.TensorProto] = []
    i = lambda name, *s: _init(inits, name, *s)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", i("w1", 8, 3, 3, 3), i("b1", 8)], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", i("w2", 16, 1, 3, 3), i("b2", 16)], ["c2"], pads=[1, 1, 1, 1],
                         group=8, strides=[2, 2]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", i("w3", 16, 8, 1, 1)], ["c3"], group=2),
        helper.make_node("Add", ["c3", "r2"], ["a3"]),
        helper.make_node("Relu", ["a3"], ["r3"]),
        helper.make_node("Conv", ["r3", i("w4", 8, 16, 3, 3), i("b4", 8)], ["c4"], auto_pad="SAME_UPPER"),
        helper.make_node("AveragePool", ["c4"], ["p4"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["p4", "r3"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["p5"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p5"], ["f"]),
        helper.make_node("Gemm", ["f", i("wf", 10, 24 * 4 * 4), i("bf", 10)], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    # the logits are an output too: the softmax amplifies any one-step difference in them
    _save(nodes, inits, ["N", 3, 16, 16], ["N", 10], path, extra_outputs=("g",))


def _mlp(path: Path) -> None:
    inits: list[onnx.TensorProto] = []
    i = lambda name, *s: _init(inits, name, *s)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", i("w1", 12, 16)], ["m1"]),
        helper.make_node("Add", ["m1", i("b1", 16)], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Mul", ["r1", "r1"], ["sq"]),
        helper.make_node("Gemm", ["sq", i("w2", 16, 4)], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    _save(nodes, inits, ["N", 12], ["N", 4], path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("tflite")
    built = {}
    for name, make, shape in (("cnn", _cnn, (3, 16, 16)), ("mlp", _mlp, (12,))):
        fp32 = root / f"{name}.onnx"
        make(fp32)
        calib = RNG.normal(size=(48, *shape)).astype(np.float32)
        built[name] = (_quantize(fp32, calib, root / f"{name}.int8.onnx"), calib)
    return built


def _steps(a: np.ndarray, b: np.ndarray, step: float) -> float:
    return round(float(np.abs(a - b).max() / step), 3)  # float noise of the dequantization


@pytest.mark.parametrize(("name", "output"), [("cnn", "g"), ("mlp", "y")])
def test_tflite_agrees_with_int8_onnx(models: dict, name: str, output: str, tmp_path: Path) -> None:
    onnx_path, x = models[name]
    info = write_tflite(onnx_path, tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").stat().st_size == info.size_bytes
    ref = Model.load(onnx_path).predict_all({"x": x})
    lite = Model.load(tmp_path / "m.tflite", threads=1)
    assert lite.runtime == "litert"
    assert lite.inputs[0].name == "x" and lite.inputs[0].dtype == "float32"
    assert lite.inputs[0].shape == (1, *x.shape[1:])  # static batch; Model loops over rows
    assert {o.name for o in lite.outputs} == set(ref)
    got = lite.predict_all({"x": x})
    assert (got["y"].argmax(1) == ref["y"].argmax(1)).mean() >= 0.995
    # within 2 steps of the output's own quantization (ORT and LiteRT round differently
    # at ties, and a one-step difference grows through the layers after it)
    step = next(o["scale"] for o in info.outputs if o["name"] == output)
    assert _steps(got[output], ref[output], step) <= 2.0


def test_cnn_ops_layouts_and_versions(models: dict, tmp_path: Path) -> None:
    info = write_tflite(models["cnn"][0], tmp_path / "m.tflite")
    ops = info.op_counts
    assert ops["DEPTHWISE_CONV_2D"] == 1 and ops["SPLIT"] == 1  # depthwise x2; grouped conv split
    assert ops["CONV_2D"] == 4 and ops["CONCATENATION"] == 2
    assert ops["PAD"] == 1  # the stride-2 pads [1,1,1,1] are not TFLite SAME
    assert ops["TRANSPOSE"] == 1  # only at the NCHW input; Flatten->Gemm permutes FC columns
    assert info.op_versions == {
        "ADD": 2, "AVERAGE_POOL_2D": 2, "CONCATENATION": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3,
        "DEQUANTIZE": 2, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2, "PAD": 2, "QUANTIZE": 1,
        "RESHAPE": 1, "SOFTMAX": 2, "SPLIT": 2, "TRANSPOSE": 2,
    } | {k: v for k, v in info.op_versions.items() if k in ("RELU", "RELU6")}
    assert TfliteInfo.from_dict(info.to_dict()) == info
    # the flatbuffer itself: int8 tensors everywhere but the float edges, per-axis filters
    model = tflite.Model.GetRootAs((tmp_path / "m.tflite").read_bytes(), 0)
    graph = model.Subgraphs(0)
    kinds = {}
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        kinds[tensor.Name().decode()] = (tensor.Type(), tensor.Quantization())
    float_names = {n for n, (k, _) in kinds.items() if k == tflite.TensorType.FLOAT32}
    assert float_names == {"x", "y", "g"}
    dw = next(q for n, (_, q) in kinds.items() if n.startswith("r2/filter"))  # Conv c2 + fused Clip
    assert dw.QuantizedDimension() == 3 and dw.ScaleLength() == 16
    codes = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i) for i in range(model.OperatorCodesLength())}
    conv = codes[tflite.BuiltinOperator.CONV_2D]
    assert conv.DeprecatedBuiltinCode() == tflite.BuiltinOperator.CONV_2D and conv.Version() == 3


def test_serving_signature(models: dict, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    onnx_path, x = models["mlp"]
    write_tflite(onnx_path, tmp_path / "m.tflite")
    interpreter = Interpreter(model_path=str(tmp_path / "m.tflite"))
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["y"]}}
    out = interpreter.get_signature_runner("serving_default")(x=x[:1])
    np.testing.assert_array_equal(out["y"], Model.load(tmp_path / "m.tflite").predict(x[:1]))


def test_io_int8_edges(models: dict, tmp_path: Path) -> None:
    onnx_path, x = models["cnn"]
    info = write_tflite(onnx_path, tmp_path / "m8.tflite", io="int8")
    assert info.inputs[0]["dtype"] == "int8" and info.outputs[0]["dtype"] == "int8"
    assert info.outputs[0]["scale"] == pytest.approx(1 / 256) and info.outputs[0]["zero_point"] == -128
    float_info = write_tflite(onnx_path, tmp_path / "mf.tflite", io="float")
    # the edge QUANTIZE / DEQUANTIZEs are gone; inner requantizations stay
    assert "DEQUANTIZE" not in info.op_counts
    assert info.op_counts.get("QUANTIZE", 0) == float_info.op_counts["QUANTIZE"] - 1
    float_io = Model.load(tmp_path / "m8.tflite")
    # Model (de)quantizes int8 edges itself: same float answers as the float-edged file
    assert float_io.inputs[0].dtype == "float32" and float_io.outputs[0].dtype == "float32"
    want = Model.load(tmp_path / "mf.tflite").predict_all({"x": x[:16]})
    got = float_io.predict_all({"x": x[:16]})
    for name in ("y", "g"):
        np.testing.assert_array_equal(got[name], want[name])


def _unsupported(path: Path) -> Path:
    inits: list[onnx.TensorProto] = []
    nodes = [
        helper.make_node("Gemm", ["x", _init(inits, "w", 4, 4)], ["g"], transB=1),
        helper.make_node("Tanh", ["g"], ["t"], name="the_tanh"),
        helper.make_node("Gemm", ["t", _init(inits, "w2", 2, 4)], ["y"], transB=1),
    ]
    _save(nodes, inits, [1, 4], [1, 2], path)
    return _quantize(path, RNG.normal(size=(8, 4)).astype(np.float32), path.with_suffix(".int8.onnx"))


def test_unsupported_op_names_op_and_node_and_writes_nothing(tmp_path: Path) -> None:
    model = _unsupported(tmp_path / "tanh.onnx")
    out = tmp_path / "out" / "m.tflite"
    with pytest.raises(UnsupportedOpError, match="Tanh at node 'the_tanh'") as caught:
        write_tflite(model, out)
    assert caught.value.op_type == "Tanh" and caught.value.node_name == "the_tanh"
    assert not out.exists() and not list(tmp_path.glob("out/.*"))
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"previous")  # an older file stays as it was
    with pytest.raises(UnsupportedOpError):
        write_tflite(model, out)
    assert out.read_bytes() == b"previous"


def test_softmax_output_must_be_fixed_params(tmp_path: Path) -> None:
    fp32 = tmp_path / "s.onnx"
    _mlp(fp32)
    calib = RNG.normal(size=(8, 12)).astype(np.float32)
    quantize_static(str(fp32), str(tmp_path / "s8.onnx"), _Reader("x", calib),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)  # ORT's own 1/255 for the Sigmoid output
    with pytest.raises(UnsupportedOpError, match="LOGISTIC int8 output must have scale 1/256"):
        write_tflite(tmp_path / "s8.onnx", tmp_path / "s.tflite")
    assert not (tmp_path / "s.tflite").exists()


def test_bad_inputs(tmp_path: Path, models: dict) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    with pytest.raises(InputError, match="not an ONNX model"):
        write_tflite(junk, tmp_path / "j.tflite")
    with pytest.raises(InputError, match="io must be one of"):
        write_tflite(models["mlp"][0], tmp_path / "j.tflite", io="uint8")
    fp32 = tmp_path / "float.onnx"
    _mlp(fp32)  # a float model has no int8 tensors to write
    with pytest.raises(ConversionError, match="not quantized"):
        write_tflite(fp32, tmp_path / "f.tflite")
