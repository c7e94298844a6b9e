"""The converter's front end on models as exporters write them (issue 14): old opsets
upgraded, batch -1 or named, external data, shape subgraphs folded, --input-shape,
already-quantized graphs refused, and the odd forms onnxruntime runs. Small graphs built
with onnx.helper, real onnxruntime / LiteRT, real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._ir import Graph
from edgeship.converter._load import read_model
from edgeship.converter._optimize import optimize
from onnx import TensorProto, helper, numpy_helper

from edgeship._cli.main import main
from edgeship._errors import ConfigError, ConversionError, EdgeshipError, InputError

RNG = np.random.default_rng(14)
ONNX_ONLY = ConvertOptions(formats=("onnx",), latency_runs=1, sqnr_samples=4)


def _conv_model(
    path: Path, *, opset: int = 13, shape: list[int | str] | None = None, cin: int = 3
) -> Path:
    """x -> Conv(3x3, pad 1) -> Relu -> Add(const) -> y, input ``shape``."""
    shape = shape or [1, cin, 8, 8]
    w = numpy_helper.from_array(RNG.normal(size=(4, cin, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "b")
    k = numpy_helper.from_array(RNG.normal(size=(1, 4, 1, 1)).astype(np.float32), "k")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "k"], ["y"], name="add"),
    ]
    out_shape = [shape[0], 4, *shape[2:]]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w, b, k],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset >= 13 else 6
    onnx.save(m, path)
    return path


def _calib(path: Path, shape: tuple[int, ...], n: int = 8, key: str = "x") -> Path:
    np.savez(path, **{key: RNG.uniform(-1, 1, size=(n, *shape)).astype(np.float32)})
    return path


def _ort(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _int8_close(out: Path, model: Path, x: np.ndarray) -> None:
    """The INT8 ONNX computes what the float model computes, up to int8 noise."""
    want = _ort(model, {"x": x})[0]
    got = _ort(out / "model.int8.onnx", {"x": x})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 1e-3


# ---------------------------------------------------------------- opsets
def test_opset_11_is_upgraded_and_the_report_says_so(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", opset=11)
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    assert "upgraded opset 11 -> 13 (onnx.version_converter)" in report.optimizations
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert saved["optimizations"][0] == "upgraded opset 11 -> 13 (onnx.version_converter)"
    _int8_close(tmp_path / "o", model, RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


def test_opset_newer_than_the_runtime_is_one_clear_error(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", opset=13)
    m = onnx.load(model)
    m.opset_import[0].version = 99
    onnx.save(m, model)
    with pytest.raises(ConversionError, match=r"uses opset 99; the installed onnx knows opsets up to"):
        read_model(model, max_bytes=1 << 20)


# ---------------------------------------------------------------- dynamic batch
@pytest.mark.parametrize("batch", [-1, "batch"])
def test_batch_minus_one_or_named_is_a_dynamic_batch(tmp_path: Path, batch: int | str) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=[batch, 3, 8, 8])
    if batch == -1:  # helper writes -1 as dim_value, as tf2onnx / Paddle2ONNX do
        dim = onnx.load(model).graph.input[0].type.tensor_type.shape.dim[0]
        assert dim.HasField("dim_value") and dim.dim_value == -1
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    assert report.calibration["samples"] == 8
    _int8_close(tmp_path / "o", model, RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


# ---------------------------------------------------------------- external data
def _external(tmp_path: Path) -> Path:
    src = _conv_model(tmp_path / "src.onnx", cin=16)
    m = onnx.load(src)
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path


def test_external_data_is_read_and_sized(tmp_path: Path) -> None:
    model = _external(tmp_path)
    data = model.parent / "model.onnx.data"
    assert data.stat().st_size > model.stat().st_size  # the weights live outside
    report = convert(model, _calib(tmp_path / "c.npz", (16, 8, 8)), tmp_path / "o", ONNX_ONLY)
    assert report.sizes["fp32_bytes"] == model.stat().st_size + data.stat().st_size
    x = RNG.uniform(-1, 1, (1, 16, 8, 8)).astype(np.float32)
    _int8_close(tmp_path / "o", model, x)  # onnxruntime reads the .data next to the file


def test_external_data_limit_counts_the_data_file(tmp_path: Path) -> None:
    model = _external(tmp_path)
    limit = model.stat().st_size + 10  # the .onnx alone fits, with its data it does not
    with pytest.raises(InputError, match=r"with its external data is .* over the limit"):
        read_model(model, max_bytes=limit)


def test_external_data_file_missing_or_short_is_one_clear_error(tmp_path: Path) -> None:
    model = _external(tmp_path)
    data = model.parent / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])  # truncated: offsets point past the end
    with pytest.raises(InputError) as err:
        read_model(model, max_bytes=1 << 20)
    assert "cannot read its external data" in str(err.value) and "\n" not in str(err.value)
    data.unlink()
    with pytest.raises(InputError, match=r"external data file model\.onnx\.data not found"):
        read_model(model, max_bytes=1 << 20)


def test_external_data_path_traversal_is_refused(tmp_path: Path) -> None:
    model = _external(tmp_path)
    m = onnx.load(model, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m, model)
    with pytest.raises(InputError) as err:
        read_model(model, max_bytes=1 << 20)
    assert "outside the model's directory" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- shape subgraphs
def _shape_subgraph_model(path: Path) -> Path:
    """Conv -> Reshape(c, Concat(Unsqueeze(Gather(Shape(c), 0)), [-1])) -> MatMul, the
    batch-flatten torch writes; the batch stays dynamic in the model."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(RNG.normal(size=(4 * 36, 5)).astype(np.float32), "fc")
    consts = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w, fc, *consts],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, path)
    return path


def test_shape_subgraph_folds_to_a_constant_reshape(tmp_path: Path) -> None:
    model = _shape_subgraph_model(tmp_path / "m.onnx")
    loaded = read_model(model, max_bytes=1 << 20, input_shapes=(("x", (1, 3, 8, 8)),))
    graph = Graph.from_model(loaded.model)
    log = optimize(graph)
    ops = [n.op_type for n in graph.nodes]
    assert ops == ["Conv", "Reshape", "Gemm"] or ops == ["Conv", "Reshape", "MatMul"], ops
    reshape = next(n for n in graph.nodes if n.op_type == "Reshape")
    assert graph.inits[reshape.input[1]].tolist() == [1, -1]
    assert any(line.startswith("folded Shape shape") for line in log)
    for _ in range(3):  # the folded graph computes what the original computes
        x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(
            _ort(graph.to_model(), {"x": x})[0], _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5
        )


def test_shape_gather_of_a_known_dim_folds_with_a_dynamic_batch(tmp_path: Path) -> None:
    """Reshape(c, [-1, Gather(Shape(c), 1), 36]): the channel count is known even when the
    batch is not, so the shape folds and the batch stays dynamic."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    consts = [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([36], np.int64), "hw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["ch"], axis=0, name="gather"),
        helper.make_node("Concat", ["minus1", "ch", "hw"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "target"], ["y"], name="reshape"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *consts],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    graph = Graph.from_model(read_model(tmp_path / "m.onnx", max_bytes=1 << 20).model)
    optimize(graph)
    assert [n.op_type for n in graph.nodes] == ["Conv", "Reshape"]
    assert graph.inits[graph.nodes[1].input[1]].tolist() == [-1, 4, 36]
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)  # batch 2 still runs
    np.testing.assert_allclose(
        _ort(graph.to_model(), {"x": x})[0], _ort(m, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------- --input-shape
def test_input_shape_fixes_a_dynamic_width_and_tflite_is_written(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    opts = ConvertOptions(formats=("onnx", "tflite"), input_shapes=(("x", (1, 3, 8, 12)),),
                          latency_runs=1, sqnr_samples=4)
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 12)), tmp_path / "o", opts)
    assert "input x shape batchx3x8xwidth fixed to 1x3x8x12 (--input-shape)" in report.optimizations
    assert not any("onnx.checker" in line for line in report.optimizations)  # still valid
    assert report.options["input_shapes"] == [["x", [1, 3, 8, 12]]] or report.options[
        "input_shapes"
    ] == (("x", (1, 3, 8, 12)),)
    interp = Interpreter(model_path=str(tmp_path / "o" / "model.int8.tflite"))
    interp.allocate_tensors()
    assert list(interp.get_input_details()[0]["shape"]) == [1, 3, 8, 12]  # static
    x = RNG.uniform(-1, 1, (1, 3, 8, 12)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    want = _ort(tmp_path / "o" / "model.int8.onnx", {"x": x})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 2 * float(report.layers[-1]["scale"]) + 1e-6


def test_calibration_must_match_the_fixed_shape(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    opts = ConvertOptions(formats=("onnx",), input_shapes=(("x", (1, 3, 8, 12)),))
    with pytest.raises(EdgeshipError, match=r"expected \(N, 3, 8, 12\)"):
        convert(model, _calib(tmp_path / "c.npz", (3, 8, 16)), tmp_path / "o", opts)


def test_dynamic_width_blocking_tflite_names_the_option(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    opts = ConvertOptions(formats=("onnx", "tflite"))
    with pytest.raises(ConversionError) as err:
        convert(model, _calib(tmp_path / "c.npz", (3, 8, 12)), tmp_path / "o", opts)
    assert str(err.value) == (
        "input 'x' has dynamic dimension 3 ('width'); TFLite needs static shapes: "
        "fix it with --input-shape x=1x3x8x12 "
        "(or pass --format onnx to keep it dynamic in an ONNX-only conversion)"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("shapes", "needle"),
    [
        ((("y", (1, 3, 8, 8)),), "the model has no input 'y' (its inputs: x)"),
        ((("x", (1, 3, 8)),), "input 'x' has rank 4, not 3"),
        ((("x", (1, 5, 8, 8)),), "dimension 1 of input 'x' is fixed at 3 in the model"),
    ],
)
def test_input_shape_that_does_not_fit_the_model(
    tmp_path: Path, shapes: tuple[tuple[str, tuple[int, ...]], ...], needle: str
) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    with pytest.raises(ConversionError) as err:
        read_model(model, max_bytes=1 << 20, input_shapes=shapes)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "shapes", [(("x", (1, 0, 8)),), (("x", ()),), (("", (1, 2)),), (("x", (1,)), ("x", (1,)))]
)
def test_input_shape_option_is_validated(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
    with pytest.raises(ConfigError, match="--input-shape"):
        ConvertOptions(input_shapes=shapes)


def test_input_shapes_round_trip_through_the_report_dict() -> None:
    opts = ConvertOptions(input_shapes=(("x", (1, 3, 48, 320)),))
    back = ConvertOptions.from_dict(json.loads(json.dumps(opts.to_dict())))
    assert back == opts


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("x=1xax3", "expected NAME=DIMS with positive integers"),
        ("x", "expected NAME=DIMS"),
        ("=1x3x8x8", "expected NAME=DIMS"),
        ("x=1x0x8x8", "every dimension must be a positive integer"),
        ("y=1x3x8x8", "the model has no input 'y'"),
        ("x=1x3x8", "has rank 4, not 3"),
        ("x=1x5x8x8", "is fixed at 3 in the model"),
    ],
)
def test_cli_input_shape_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, needle: str
) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    calib = _calib(tmp_path / "c.npz", (3, 8, 8))
    with pytest.raises(SystemExit) as code:
        main(["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "o"),
              "--input-shape", value, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_input_shape_repeatable_and_converts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    calib = _calib(tmp_path / "c.npz", (3, 8, 12))
    with pytest.raises(SystemExit) as code:
        main(["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "o"),
              "--format", "onnx", "--input-shape", "x=1x3x8x12", "-q"])
    assert code.value.code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["options"]["input_shapes"] == [["x", [1, 3, 8, 12]]]
    q = onnx.load(tmp_path / "o" / "model.int8.onnx")
    assert [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 12]


# ---------------------------------------------------------------- already quantized
@pytest.mark.parametrize("op", ["QuantizeLinear", "ConvInteger", "QLinearConv"])
def test_already_quantized_model_is_refused(tmp_path: Path, op: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    src = _conv_model(tmp_path / "m.onnx")
    q = tmp_path / "q.onnx"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [{"x": RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)}] * 2

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.left.pop() if self.left else None

    if op == "ConvInteger":
        quantize_dynamic(src, q, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    else:
        from onnxruntime.quantization import QuantFormat

        fmt = QuantFormat.QDQ if op == "QuantizeLinear" else QuantFormat.QOperator
        quantize_static(src, q, Reader(), quant_format=fmt)
    with pytest.raises(ConversionError) as err:
        convert(q, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    text = str(err.value)
    assert "model is already quantized (" in text and "convert its float original" in text
    assert any(o in text for o in ("QuantizeLinear", "DequantizeLinear", "ConvInteger",
                                   "DynamicQuantizeLinear", "QLinearConv")), text


# ---------------------------------------------------------------- exporter oddities
def _messy_model(path: Path) -> Path:
    """What older exporters write and onnxruntime runs: unused custom-domain opset,
    initializers listed as graph inputs, unnamed nodes, Constant as value_floats /
    value_ints, an Identity."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["k"], value_floats=[0.5, -0.25, 1.0, 2.0]),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, 4, 1, 1]),
        helper.make_node("Reshape", ["k", "shape"], ["k4"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["ci"]),
        helper.make_node("Mul", ["ci", "k4"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
    ]
    g = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 7
    onnx.save(m, path)
    return path


def test_exporter_oddities_convert(tmp_path: Path) -> None:
    model = _messy_model(tmp_path / "m.onnx")
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    assert "constant k -> initializer" in report.optimizations
    assert report.float_ops == []
    _int8_close(tmp_path / "o", model, RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


def test_duplicate_node_names_are_made_unique() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"),
             helper.make_node("Relu", ["a"], ["y"], name="n")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = Graph.from_model(helper.make_model(g))
    log = optimize(graph)
    assert [n.name for n in graph.nodes] == ["n", "n_1"]
    assert log[0] == "renamed duplicate node name n -> n_1"


def test_strict_shape_inference_failure_falls_back_when_onnxruntime_runs_it(
    tmp_path: Path,
) -> None:
    """A declared output shape that contradicts inference: strict mode refuses it,
    onnxruntime runs it; the converter goes on and says so."""
    model = _conv_model(tmp_path / "m.onnx")
    m = onnx.load(model)
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 9  # inference says 8
    onnx.save(m, model)
    loaded = read_model(model, max_bytes=1 << 20)
    assert any(n.startswith("strict shape inference: ") for n in loaded.notes), loaded.notes
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    assert any(n.startswith("strict shape inference: ") for n in report.optimizations)


def test_scalar_computed_from_a_dynamic_shape_calibrates(tmp_path: Path) -> None:
    """x * float(height): a 0-d activation made from the input's shape (YOLO-style box
    scaling) used to crash the batched-calibration probe with 'len() of unsized object'."""
    idx = numpy_helper.from_array(np.array(2, np.int64), "two")
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "two"], ["h"], axis=0, name="gather"),
        helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Relu", ["hf"], ["hr"], name="scalar_relu"),
        helper.make_node("Mul", ["x", "hr"], ["y"], name="mul"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", 8])], [idx],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    convert(tmp_path / "m.onnx", _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    _int8_close(tmp_path / "o", tmp_path / "m.onnx", RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


def test_version_converter_failure_names_the_op(tmp_path: Path) -> None:
    """Scatter (opset 10) with too few inputs: onnx.version_converter stops on it."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Scatter", ["r"], ["y"], name="scatter_7")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
    m.ir_version = 5
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(ConversionError) as err:
        read_model(tmp_path / "m.onnx", max_bytes=1 << 20)
    text = str(err.value)
    assert "cannot upgrade opset 10 -> 13 with onnx.version_converter (failed on Scatter at " \
        "node scatter_7: " in text and "\n" not in text, text


def test_custom_domain_op_keeps_its_opset_import(tmp_path: Path) -> None:
    """A float com.microsoft op (Gelu) onnx cannot check but onnxruntime runs: it stays
    float and the written models still import com.microsoft."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Gelu", ["c"], ["y"], name="gelu", domain="com.microsoft")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o",
                     ONNX_ONLY)
    assert [f["op"] for f in report.float_ops] == ["Gelu"]
    q = onnx.load(tmp_path / "o" / "model.int8.onnx")
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in q.opset_import]
    _int8_close(tmp_path / "o", tmp_path / "m.onnx", RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


def test_dynamic_width_skips_tflite_with_the_option_when_formats_are_default(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=["batch", 3, 8, "width"])
    opts = ConvertOptions(formats=("onnx", "tflite"), strict_formats=False, latency_runs=1)
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 12)), tmp_path / "o", opts)
    assert report.tflite is not None
    assert report.tflite["skipped"] == (
        "input 'x' has dynamic dimension 3 ('width'); TFLite needs static shapes: "
        "fix it with --input-shape x=1x3x8x?"
    )
    assert (tmp_path / "o" / "model.int8.onnx").exists()


def test_no_onnxruntime_error_log_in_a_conversion_that_succeeds(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The folded Reshape [1, -1] makes the batch-2 calibration probe fail inside
    onnxruntime; that failure is expected and must not print a red error."""
    model = _shape_subgraph_model(tmp_path / "m.onnx")
    opts = ConvertOptions(formats=("onnx",), input_shapes=(("x", (1, 3, 8, 8)),), latency_runs=1)
    convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", opts)
    err = capfd.readouterr().err
    assert "onnxruntime" not in err, err


def test_identity_naming_a_graph_output_is_removed(tmp_path: Path) -> None:
    """tf2onnx and Paddle2ONNX end graphs with Identity nodes that name the outputs."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Identity", ["c"], ["y"], name="out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o",
                     ONNX_ONLY)
    assert "removed Identity out" in report.optimizations and report.float_ops == []
    q = onnx.load(tmp_path / "o" / "model.int8.onnx")
    assert [o.name for o in q.graph.output] == ["y"]
    _int8_close(tmp_path / "o", tmp_path / "m.onnx", RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))


def test_tflite_pins_a_dynamic_batch_the_graph_reads(tmp_path: Path) -> None:
    """torch's x.view(x.size(0), -1) with a dynamic batch: for TFLite (batch 1) the batch
    is pinned, the shape subgraph folds and the file is written without --input-shape."""
    model = _shape_subgraph_model(tmp_path / "m.onnx")
    opts = ConvertOptions(formats=("onnx", "tflite"), latency_runs=1, sqnr_samples=4)
    report = convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", opts)
    assert "input x batch N fixed to 1 (TFLite; the graph reads its shapes at run time)" \
        in report.optimizations
    assert (tmp_path / "o" / "model.int8.tflite").exists()
    q = onnx.load(tmp_path / "o" / "model.int8.onnx")
    assert "Shape" not in [n.op_type for n in q.graph.node]


def test_onnx_only_keeps_a_dynamic_batch(tmp_path: Path) -> None:
    model = _shape_subgraph_model(tmp_path / "m.onnx")
    convert(model, _calib(tmp_path / "c.npz", (3, 8, 8)), tmp_path / "o", ONNX_ONLY)
    q = onnx.load(tmp_path / "o" / "model.int8.onnx")
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = RNG.uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)  # batch 3 runs
    assert _ort(tmp_path / "o" / "model.int8.onnx", {"x": x})[0].shape == (3, 5)


def test_a_wrong_declared_output_shape_is_not_folded(tmp_path: Path) -> None:
    """Shape of a graph output whose declared shape is wrong: the folded constant comes
    from inference on the inputs, not from the declaration."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Reshape", ["c", "s"], ["y"], name="reshape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 6, 7])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    graph = Graph.from_model(read_model(tmp_path / "m.onnx", max_bytes=1 << 20).model)
    optimize(graph)
    reshape = next(n for n in graph.nodes if n.op_type == "Reshape")
    assert graph.inits[reshape.input[1]].tolist() == [1, 4, 6, 6]
