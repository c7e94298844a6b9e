"""The QDQ model follows the TFLite INT8 contract documented in converter/_quantize.py,
checked on real conversions (fixtures and tiny onnx.helper models) in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._pool_ties import tie_free_eps
from onnx import TensorProto, helper, numpy_helper

FIX = Path(__file__).parent / "fixtures"
ONNX_ONLY = ConvertOptions(formats=("onnx",))


class Qdq:
    """Index of a QDQ model: initializers, producers, consumers."""

    def __init__(self, path: Path) -> None:
        self.model = onnx.load(path)
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}
        self.nodes = list(self.model.graph.node)
        for n in self.nodes:  # per-channel bias scales: Mul(weight scales, input scale)
            if n.op_type == "Mul" and all(i in self.inits for i in n.input):
                a, b = (self.inits[i].astype(np.float32) for i in n.input)
                self.inits[n.output[0]] = a * b
        self.producer = {o: n for n in self.nodes for o in n.output}

    def ops(self, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op]

    def dq_of(self, tensor: str) -> onnx.NodeProto:
        node = self.producer[tensor]
        assert node.op_type == "DequantizeLinear", (tensor, node.op_type)
        return node

    def act_params(self, tensor: str) -> tuple[float, int]:
        """(scale, zero point) of the activation DequantizeLinear producing ``tensor``."""
        dq = self.dq_of(tensor)
        return float(self.inits[dq.input[1]]), self.zero_point(dq.input[2])

    def zero_point(self, name: str) -> int:
        """An activation zero point in int8 terms (stored as uint8 + 128 inside the graph)."""
        z = self.inits[name]
        return int(z) - 128 if z.dtype == np.uint8 else int(z)

    def in_params(self, node: onnx.NodeProto, i: int = 0) -> tuple[float, int]:
        return self.act_params(node.input[i])

    def out_params(self, node: onnx.NodeProto) -> tuple[float, int]:
        q = next(
            n for n in self.nodes if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]
        )
        return float(self.inits[q.input[1]]), self.zero_point(q.input[2])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Qdq:
    out = tmp_path_factory.mktemp("c") / "cnn"
    convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", out, ONNX_ONLY)
    return Qdq(out / "model.int8.onnx")


def test_weights_int8_symmetric_conv_per_channel_gemm_per_tensor(cnn: Qdq) -> None:
    for node in cnn.ops("Conv") + cnn.ops("Gemm"):
        dq = cnn.dq_of(node.input[1])
        w, s = cnn.inits[dq.input[0]], cnn.inits[dq.input[1]]
        assert w.dtype == np.int8 and w.min() >= -127 and w.max() <= 127
        assert len(dq.input) == 2 or not cnn.inits[dq.input[2]].any()  # zero point 0
        if node.op_type == "Conv":
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert axis == 0 and s.shape == (w.shape[0],)
            assert np.abs(w).reshape(len(w), -1).max(axis=1).min() >= 120  # range used per channel
        else:
            assert s.ndim == 0 and np.abs(w).max() == 127


def test_bias_int32_with_input_times_weight_scale(cnn: Qdq) -> None:
    for node in cnn.ops("Conv") + cnn.ops("Gemm"):
        assert len(node.input) == 3
        bdq = cnn.dq_of(node.input[2])
        assert cnn.inits[bdq.input[0]].dtype == np.int32
        in_scale = cnn.in_params(node)[0]
        w_scale = cnn.inits[cnn.dq_of(node.input[1]).input[1]]
        expected = np.float32(in_scale) * w_scale.astype(np.float32)
        np.testing.assert_allclose(cnn.inits[bdq.input[1]], expected, rtol=1e-6)


def test_activation_rules(cnn: Qdq) -> None:
    assert not cnn.ops("Relu") and not cnn.ops("Clip")  # all folded into their producers
    folded = [
        n for n in cnn.ops("Conv") + cnn.ops("Add") if n.output[0].startswith(("relu", "clip"))
    ]
    assert len(folded) == 4  # the fixture's 3 Relu and 1 Clip(0, 6)
    for node in folded:
        scale, zp = cnn.out_params(node)
        assert zp == -128  # Relu/Clip made exact by the range
        if node.output[0].startswith("clip"):
            assert scale * 255 <= 6.0 + 1e-6
    for op in ("MaxPool", "Flatten"):
        for node in cnn.ops(op):
            assert cnn.out_params(node) == cnn.in_params(node)
    for node in cnn.ops("AveragePool"):  # full windows of n: scale / (1 + eps), no halves
        (out_s, out_z), (in_s, in_z) = cnn.out_params(node), cnn.in_params(node)
        kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
        assert out_z == in_z and np.isclose(in_s / out_s, 1 + tie_free_eps(kernel[0] * kernel[1]), rtol=1e-6)
    (sm,) = cnn.ops("Softmax")
    assert cnn.out_params(sm) == (1 / 256, -128)
    graph = cnn.model.graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [TensorProto.FLOAT]
    for q in cnn.ops("QuantizeLinear"):  # int8 parameters, stored as uint8 (zero point + 128)
        assert cnn.inits[q.input[2]].dtype == np.uint8 and cnn.inits[q.input[1]].size == 1


def _tiny(
    path: Path, nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], out_shape: list[int]
) -> None:
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def test_concat_reshape_sigmoid_and_a_float_fallback(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
        "k": np.full((1, 4, 6, 6), 3.0, np.float32),
        "shape": np.array([1, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
        helper.make_node("Concat", ["c", "m"], ["cat"], axis=1, name="cat"),
        helper.make_node("Neg", ["cat"], ["t"], name="neg"),  # no rule: stays float
        helper.make_node("Reshape", ["t", "shape"], ["r"], name="reshape"),
        helper.make_node("Sigmoid", ["r"], ["y"], name="sig"),
    ]
    _tiny(tmp_path / "t.onnx", nodes, inits, [1, 288])
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    report = convert(tmp_path / "t.onnx", tmp_path / "c.npz", tmp_path / "out", ONNX_ONLY)
    assert [(f["node"], f["op"]) for f in report.float_ops] == [("neg", "Neg")]
    assert "no quantization rule" in report.float_ops[0]["reason"]
    q = Qdq(tmp_path / "out" / "model.int8.onnx")
    (cat,) = q.ops("Concat")
    assert q.in_params(cat, 0) == q.in_params(cat, 1) == q.out_params(cat)
    (reshape,) = q.ops("Reshape")
    assert q.out_params(reshape) == q.in_params(reshape)
    (sig,) = q.ops("Sigmoid")
    assert q.out_params(sig) == (1 / 256, -128)
    f32, i8 = (
        ort.InferenceSession(str(p))
        for p in (tmp_path / "t.onnx", tmp_path / "out" / "model.int8.onnx")
    )
    want = np.concatenate([f32.run(None, {"x": x[i : i + 1]})[0] for i in range(4)])
    got = np.concatenate([i8.run(None, {"x": x[i : i + 1]})[0] for i in range(4)])
    assert np.abs(got - want).max() < 0.05


def test_matmul_add_becomes_gemm_and_bn_folds(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    inits = {
        "w": rng.normal(size=(4, 4, 1, 1)).astype(np.float32),
        "g": rng.uniform(0.5, 2, 4).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "mu": rng.normal(size=4).astype(np.float32),
        "var": rng.uniform(0.5, 2, 4).astype(np.float32),
        "shape": np.array([1, 144], np.int64),
        "fc": rng.normal(size=(144, 3)).astype(np.float32),
        "fb": rng.normal(size=3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], name="bn"),
        helper.make_node("Reshape", ["bn", "shape"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "fb"], ["y"], name="add"),
    ]
    _tiny(tmp_path / "t.onnx", nodes, inits, [1, 3])
    x = rng.normal(size=(32, 4, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    report = convert(
        tmp_path / "t.onnx",
        tmp_path / "c.npz",
        tmp_path / "out",
        ONNX_ONLY,
        eval_path=tmp_path / "c.npz",
    )
    q = Qdq(tmp_path / "out" / "model.int8.onnx")
    assert not q.ops("BatchNormalization") and not q.ops("MatMul") and len(q.ops("Gemm")) == 1
    assert any("BatchNormalization" in line for line in report.optimizations)
    assert report.eval is not None and report.eval["agreement"] >= 90.0
    assert report.output_sqnr_db is not None and report.output_sqnr_db > 25.0


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_robust_calibration_methods(tmp_path: Path, method: str) -> None:
    opts = ConvertOptions(formats=("onnx",), calibration=method)
    r = convert(
        FIX / "cnn.onnx",
        FIX / "cnn_calib.npz",
        tmp_path / "o",
        opts,
        eval_path=FIX / "cnn_eval.npz",
    )
    assert r.calibration["method"] == method
    assert r.eval is not None and r.eval["int8_accuracy"] >= r.eval["fp32_accuracy"] - 1.0
    minmax = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "m", ONNX_ONLY)
    widths = {ly["tensor"]: ly["hi"] - ly["lo"] for ly in minmax.layers}
    assert all(ly["hi"] - ly["lo"] <= widths[ly["tensor"]] + 1e-6 for ly in r.layers)


def test_failed_conversion_leaves_previous_out_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeship.converter import _convert

    out = tmp_path / "out"
    convert(FIX / "mlp.onnx", FIX / "mlp_calib.npz", out, ONNX_ONLY)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*_: object) -> str:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(_convert, "to_html", boom)  # fails after the model was written
    with pytest.raises(OSError, match="injected"):
        convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", out, ONNX_ONLY)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OSError):
        convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "fresh", ONNX_ONLY)
    assert not (tmp_path / "fresh").exists()


def test_io_int8_edges_and_tflite(tmp_path: Path) -> None:
    from edgeship.converter import default_formats

    opts = ConvertOptions(formats=default_formats(), io="int8")
    r = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "o", opts, eval_path=FIX / "cnn_eval.npz")
    q = Qdq(tmp_path / "o" / "model.int8.onnx")
    assert [i.type.tensor_type.elem_type for i in q.model.graph.input] == [TensorProto.INT8]
    assert [o.type.tensor_type.elem_type for o in q.model.graph.output] == [TensorProto.INT8]
    assert q.producer["probs"].op_type == "QuantizeLinear"
    assert r.eval is not None and r.eval["agreement"] >= 99.0  # evaluated through float edges
    if "tflite" in default_formats():
        assert (tmp_path / "o" / "model.int8.tflite").stat().st_size > 0
        assert r.tflite is not None and r.tflite["io"] == "int8"


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_onnxruntime_fuses_every_quantized_op(tmp_path: Path, name: str) -> None:
    """No Conv/Gemm/Add runs in float between DequantizeLinear and QuantizeLinear once
    onnxruntime has optimized the graph (residual branches included), and the output
    stays the same. Uses the default session options a user gets."""
    out = tmp_path / name
    convert(FIX / f"{name}.onnx", FIX / f"{name}_calib.npz", out, ONNX_ONLY)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(out / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert not {"Conv", "Gemm", "Add", "MatMul", "FusedConv", "FusedGemm"} & set(ops), ops
    assert ops.count("QLinearConv") == len(Qdq(out / "model.int8.onnx").ops("Conv"))
    assert ops.count("DequantizeLinear") <= 1 and ops.count("QuantizeLinear") <= 1  # the edges
    # uint8 storage holds the plan's int8 parameters (what the TFLite writer reads back)
    params = json.loads((out / "quant_params.json").read_text())["activations"]
    q = Qdq(out / "model.int8.onnx")
    for node in q.ops("QuantizeLinear"):
        t = node.input[0].removesuffix("_float")
        assert q.zero_point(node.input[2]) == params[t][1]
        assert float(q.inits[node.input[1]]) == pytest.approx(params[t][0], rel=1e-7)


def test_constant_operands_fuse_and_reach_tflite(tmp_path: Path) -> None:
    """Add/Mul with a constant operand run as QLinearAdd/QLinearMul (the constant is stored
    like an activation), and the TFLite writer reads the same int8 constant back."""
    from edgeship.converter import default_formats

    rng = np.random.default_rng(3)
    inits = {
        "w": rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
        "k": rng.normal(size=(1, 4, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        # Mul first: a Conv followed by Add of a per-channel constant folds into its bias
        helper.make_node("Mul", ["c", "k"], ["a"], name="mul"),
        helper.make_node("Add", ["a", "k"], ["y"], name="add"),
    ]
    _tiny(tmp_path / "t.onnx", nodes, inits, [1, 4, 6, 6])
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    convert(tmp_path / "t.onnx", tmp_path / "c.npz", tmp_path / "o", ConvertOptions(formats=default_formats()))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "o" / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert {"QLinearAdd", "QLinearMul"} <= ops and not {"Add", "Mul"} & ops, ops
    if "tflite" in default_formats():
        from edgeship.sdk import Model

        want = Model.load(tmp_path / "o" / "model.int8.onnx").predict(x)
        got = Model.load(tmp_path / "o" / "model.int8.tflite").predict(x)
        q = Qdq(tmp_path / "o" / "model.int8.onnx")
        step = float(q.inits[q.ops("QuantizeLinear")[-1].input[1]])
        assert np.abs(got - want).max() <= 2 * step + 1e-6
