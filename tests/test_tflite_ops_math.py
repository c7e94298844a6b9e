"""Arithmetic and activation ops of real models (issue 14), through the real pipeline:
a float graph built with onnx.helper -> ``convert`` (calibration npz) -> QDQ ONNX and
TFLite. Each case checks that the op is quantized (not in the report's float ops), that
the INT8 ONNX tracks fp32, that LiteRT agrees with onnxruntime on the INT8 model, and
for the fusions, that the fused float graph computes what the original did."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, FormatsNotWritten, convert
from edgeship.converter._ir import Graph
from edgeship.converter._optimize import optimize
from onnx import TensorProto, helper, numpy_helper

from edgeship import UnsupportedOpError

REFUSED = (UnsupportedOpError, FormatsNotWritten)  # write_tflite / convert

RNG = np.random.default_rng(14)
C = 4
X_SHAPE = [1, 3, 8, 8]


class Net:
    """Float graph under construction: Conv -> op(s) -> Conv, like a real model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | float) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def const_i64(self, name: str, value: list[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def conv(self, x: str, cin: int, cout: int, out: str, k: int = 3) -> str:
        w = self.const(f"{out}_w", RNG.normal(size=(cout, cin, k, k)) * (0.6 / np.sqrt(cin * k * k)) * 2)
        b = self.const(f"{out}_b", RNG.normal(size=cout) * 0.3)
        self.nodes.append(helper.make_node("Conv", [x, w, b], [out], name=f"conv_{out}",
                                           kernel_shape=[k, k], pads=[k // 2] * 4))
        return out

    def op(self, op_type: str, inputs: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def save(self, path: Path, *, opset: int = 13, inputs: dict[str, list[int]] | None = None) -> Path:
        inputs = inputs or {"x": X_SHAPE}
        graph = helper.make_graph(
            self.nodes, path.stem,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_empty_tensor_value_info("y")], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 9 if opset >= 20 else 8
        model = onnx.shape_inference.infer_shapes(model)  # types the output "y"
        onnx.checker.check_model(model)
        onnx.save(model, path)
        return path


@dataclass
class Result:
    out: Path
    report: dict
    y_scale: float
    fp32: np.ndarray
    int8: np.ndarray
    tflite: np.ndarray | None


def _data(inputs: dict[str, list[int]], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, *s[1:])).astype(np.float32) for k, s in inputs.items()}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = [sess.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(len(next(iter(feeds.values()))))]
    return np.concatenate(rows)


def _litert(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from edgeship.sdk.runtime._runtime_litert import interpreter_module

    interp = interpreter_module().Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interp.get_input_details()}
    out = interp.get_output_details()[0]["index"]
    rows = []
    for i in range(len(next(iter(feeds.values())))):
        for k, v in feeds.items():
            interp.set_tensor(by_name[k], v[i : i + 1])
        interp.invoke()
        rows.append(interp.get_tensor(out).copy())
    return np.concatenate(rows)


def _convert(tmp: Path, net: Net, *, opset: int = 13, inputs: dict[str, list[int]] | None = None,
             formats: tuple[str, ...] = ("onnx", "tflite")) -> Result:
    inputs = inputs or {"x": X_SHAPE}
    tmp.mkdir(exist_ok=True)
    model = net.save(tmp / "fp32.onnx", opset=opset, inputs=inputs)
    np.savez(tmp / "calib.npz", **_data(inputs, 32, 0))
    convert(model, tmp / "calib.npz", tmp / "out", ConvertOptions(formats=formats))
    out = tmp / "out"
    report = json.loads((out / "report.json").read_text())
    params = json.loads((out / "quant_params.json").read_text())
    # calibration samples: inside the calibrated ranges, so errors are rounding only
    feeds = {k: v[:8] for k, v in _data(inputs, 32, 0).items()}
    tfl = _litert(out / "model.int8.tflite", feeds) if "tflite" in formats else None
    return Result(out, report, float(params["activations"]["y"][0]), _run(model, feeds),
                  _run(out / "model.int8.onnx", feeds), tfl)


def _float_ops(r: Result) -> set[str]:
    return {f["op"] for f in r.report["float_ops"]}


def _check(r: Result, op: str, *, fp32_steps: float = 6.0, tflite_steps: float = 1.0) -> None:
    assert op not in _float_ops(r), r.report["float_ops"]
    err = np.abs(r.int8 - r.fp32).max() / r.y_scale
    assert err <= fp32_steps, f"INT8 ONNX is {err:.2f} steps from fp32"
    assert r.tflite is not None
    gap = np.abs(r.tflite - r.int8).max() / r.y_scale
    assert gap <= tflite_steps + 1e-3, f"LiteRT is {gap:.2f} steps from onnxruntime"


def _fused_matches(path: Path, inputs: dict[str, list[int]] | None = None) -> tuple[Graph, list[str]]:
    """Optimize (fuse) the float graph and check it against the original in onnxruntime."""
    graph = Graph.from_model(onnx.shape_inference.infer_shapes(onnx.load(path)))
    log = optimize(graph)
    fused = path.with_name("fused.onnx")
    onnx.save(graph.to_model(), fused)
    feeds = _data(inputs or {"x": X_SHAPE}, 8, 2)
    np.testing.assert_allclose(_run(fused, feeds), _run(path, feeds), rtol=1e-5, atol=1e-5)
    return graph, log


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]


def _tflite_ops(r: Result) -> dict[str, int]:
    return r.report["tflite"]["op_counts"]


# ---- HardSwish / HardSigmoid --------------------------------------------------------
def _hardswish_net(form: str) -> Net:
    net = Net()
    a = net.conv("x", 3, C, "a")
    if form == "native":
        h = net.op("HardSwish", [a], "h")
    elif form == "div":  # Paddle / MobileNetV3: x * relu6(x + 3) / 6
        t = net.op("Add", [a, net.const("three", 3.0)], "t")
        r = net.op("Clip", [t, net.const("zero", 0.0), net.const("six", 6.0)], "r")
        m = net.op("Mul", [a, r], "m")
        h = net.op("Div", [m, net.const("six_d", 6.0)], "h")
    elif form == "mul_first":  # x * (relu6(x + 3) * (1/6))
        t = net.op("Add", [net.const("three", 3.0), a], "t")
        r = net.op("Clip", [t, net.const("zero", 0.0), net.const("six", 6.0)], "r")
        d = net.op("Mul", [r, net.const("sixth", 1 / 6)], "d")
        h = net.op("Mul", [d, a], "h")
    else:  # x * HardSigmoid(x) with torch's 1/6
        s = net.op("HardSigmoid", [a], "s", alpha=1 / 6, beta=0.5)
        h = net.op("Mul", [a, s], "h")
    net.conv(h, C, C, "y", k=1)
    return net


@pytest.mark.parametrize("form", ["native", "div", "mul_first", "hardsigmoid"])
def test_hardswish_forms_become_an_int8_gate_on_nchw(tmp_path: Path, form: str) -> None:
    """Every form fuses to HardSwish; on an NCHW tensor that is then written as
    x * Clip(depthwise 1x1 conv, 0, 1): QLinearConv + QLinearMul in onnxruntime (no
    float island), DEPTHWISE_CONV_2D + MUL in TFLite (Edge TPU ops)."""
    net = _hardswish_net(form)
    opset = 14 if form == "native" else 13
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx", opset=opset))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Conv", "Clip", "Mul", "Conv"], log
    assert form == "native" or any(line.endswith("-> HardSwish") for line in log), log
    r = _convert(tmp_path / "c", _hardswish_net(form), opset=opset)
    _check(r, "Mul")
    assert not _float_ops(r) and "HARD_SWISH" not in _tflite_ops(r)
    assert _tflite_ops(r)["DEPTHWISE_CONV_2D"] == 1 and _tflite_ops(r)["MUL"] == 1
    assert r.report["edgetpu"]["compatible"], r.report["edgetpu"]
    gate = next(row for row in r.report["layers"] if row["tensor"].endswith("_gate_out"))
    assert gate["fused"] == "Clip" and gate["zero_point"] == -128  # the clip is exact


def test_hardswish_on_tokens_is_tflite_hard_swish(tmp_path: Path) -> None:
    net = Net()
    inputs = {"x": [1, 12, 32]}
    a = net.op("Add", ["x", net.const("shift", RNG.normal(size=32))], "a")
    h = net.op("HardSwish", [a], "h")
    net.op("Mul", [h, net.const("gain", RNG.normal(size=32))], "y")
    r = _convert(tmp_path, net, opset=14, inputs=inputs)
    _check(r, "HardSwish")
    assert _tflite_ops(r)["HARD_SWISH"] == 1
    assert r.report["tflite"]["op_versions"]["HARD_SWISH"] == 1


def test_hardswish_pattern_with_a_shared_inner_tensor_is_not_fused(tmp_path: Path) -> None:
    net = _hardswish_net("div")
    net.nodes.append(helper.make_node("Add", ["r", "y"], ["y2"], name="uses_r"))  # r read twice
    graph, _ = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert "HardSwish" not in [n.op_type for n in graph.nodes]


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (1 / 6, 0.5)])
def test_hardsigmoid_on_nchw_is_a_clipped_depthwise_conv(tmp_path: Path, alpha: float, beta: float) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    s = net.op("HardSigmoid", [a], "s", alpha=alpha, beta=beta)
    net.conv(s, C, C, "y", k=1)
    graph, _ = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Conv", "Clip", "Conv"]
    r = _convert(tmp_path / "c", net)
    _check(r, "Clip")
    assert not _float_ops(r) and _tflite_ops(r)["DEPTHWISE_CONV_2D"] == 1


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (1 / 6, 0.5)])
def test_hardsigmoid_on_tokens_is_mul_add_with_a_saturating_output(tmp_path: Path, alpha: float, beta: float) -> None:
    net = Net()
    a = net.op("Add", ["x", net.const("shift", RNG.normal(size=32))], "a")
    s = net.op("HardSigmoid", [a], "s", alpha=alpha, beta=beta)
    net.op("Mul", [s, net.const("gain", RNG.normal(size=32))], "y")
    r = _convert(tmp_path, net, inputs={"x": [1, 12, 32]})
    _check(r, "HardSigmoid")
    assert {"MUL", "ADD"} <= set(_tflite_ops(r))


# ---- SiLU, Sub, Div ---------------------------------------------------------------------
def test_silu_is_logistic_and_mul(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    s = net.op("Sigmoid", [a], "s")
    m = net.op("Mul", [a, s], "m")
    net.conv(m, C, C, "y", k=1)
    r = _convert(tmp_path, net)
    _check(r, "Mul")
    assert {"LOGISTIC", "MUL"} <= set(_tflite_ops(r))


def test_sub_by_tensor_and_by_constant(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    b = net.conv("x", 3, C, "b")
    d = net.op("Sub", [a, b], "d")
    e = net.op("Sub", [net.const("mu", RNG.normal(size=(1, C, 1, 1))), d], "e")
    net.conv(e, C, C, "y", k=1)
    r = _convert(tmp_path, net)
    _check(r, "Sub")
    assert _tflite_ops(r)["SUB"] == 2
    assert r.report["tflite"]["op_versions"]["SUB"] == 2


def test_sub_of_a_constant_is_an_add_that_onnxruntime_runs_in_int8(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    d = net.op("Sub", [a, net.const("anchor", RNG.normal(size=(1, C, 1, 1)))], "d")
    net.conv(d, C, C, "y", k=1)
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Conv"], log  # into the conv bias

    net = Net()
    r = net.op("Relu", ["x"], "r")
    d = net.op("Sub", [r, net.const("anchor", RNG.normal(size=(1, 3, 1, 1)))], "d")
    net.conv(d, 3, C, "y", k=1)
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert [n.op_type for n in graph.nodes] == ["Relu", "Add", "Conv"], log
    r = _convert(tmp_path / "c", net)
    _check(r, "Add")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(r.out / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert "QLinearAdd" in ops and "Sub" not in ops, ops


def test_div_by_constant_becomes_mul(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    d = net.op("Div", [a, net.const("k", np.array([1.5, 2.0, -4.0, 3.0]).reshape(1, C, 1, 1))], "d")
    net.conv(d, C, C, "y", k=1)
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Mul", "Conv"], log
    r = _convert(tmp_path, net)
    _check(r, "Mul")


def test_div_by_tensor_stays_float_with_a_reason_and_tflite_names_it(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    b = net.op("Sigmoid", [net.conv("x", 3, C, "b")], "bs")
    d = net.op("Add", [b, net.const("one", 1.0)], "den")
    q = net.op("Div", [a, d], "q")
    net.conv(q, C, C, "y", k=1)
    r = _convert(tmp_path, net, formats=("onnx",))
    reasons = {f["node"]: f["reason"] for f in r.report["float_ops"]}
    assert "no int8 DIV" in reasons["q"]
    with pytest.raises(REFUSED, match=r"Div at node 'q'.*no int8 DIV"):
        _convert(tmp_path / "both", net)


@pytest.mark.parametrize("op,extra,reason", [
    ("Sqrt", None, "SQRT has no int8"), ("Reciprocal", None, "no int8 reciprocal"),
    ("Pow", 3.0, "exponent other than 2"), ("Erf", None, "Gelu pattern")])
def test_ops_without_int8_kernels_stay_float_and_tflite_names_them(
        tmp_path: Path, op: str, extra: float | None, reason: str) -> None:
    net = Net()
    a = net.op("Sigmoid", [net.conv("x", 3, C, "a")], "pos")  # positive: Sqrt/Reciprocal defined
    inputs = [a] + ([net.const("e", extra)] if extra is not None else [])
    net.conv(net.op(op, inputs, "f"), C, C, "y", k=1)
    r = _convert(tmp_path / "onnx", net, formats=("onnx",))
    assert reason in {f["node"]: f["reason"] for f in r.report["float_ops"]}["f"]
    with pytest.raises(REFUSED, match=rf"{op} at node 'f'.*{reason}"):
        _convert(tmp_path / "both", net)


# ---- Tanh, LeakyRelu, PRelu ------------------------------------------------------------
@pytest.mark.parametrize("op", ["Tanh", "LeakyRelu", "PRelu"])
def test_unary_activations(tmp_path: Path, op: str) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    if op == "PRelu":
        h = net.op("PRelu", [a, net.const("slope", np.array([0.1, 0.25, -0.1, 0.5]).reshape(C, 1, 1))], "h")
    elif op == "LeakyRelu":
        h = net.op("LeakyRelu", [a], "h", alpha=0.1)
    else:
        h = net.op("Tanh", [a], "h")
    net.conv(h, C, C, "y", k=1)
    r = _convert(tmp_path, net)
    _check(r, op)
    tfl = {"Tanh": "TANH", "LeakyRelu": "LEAKY_RELU", "PRelu": "PRELU"}[op]
    assert _tflite_ops(r).get(tfl) == 1


# ---- MatMul of two activations ------------------------------------------------------------
def test_matmul_of_two_activations_is_batch_matmul(tmp_path: Path) -> None:
    net = Net()
    inputs = {"x": [1, 2, 6, 8], "k": [1, 2, 8, 5]}
    m = net.op("MatMul", ["x", "k"], "m")
    net.op("Add", [m, net.const("bias", RNG.normal(size=5))], "y")
    r = _convert(tmp_path, net, inputs=inputs)
    _check(r, "MatMul")
    assert _tflite_ops(r).get("BATCH_MATMUL") == 1
    assert r.report["tflite"]["op_versions"]["BATCH_MATMUL"] == 2


def test_token_wise_matmul_with_constant_weight_is_fully_connected(tmp_path: Path) -> None:
    net = Net()
    inputs = {"x": [1, 12, 32]}
    m = net.op("MatMul", ["x", net.const("w", RNG.normal(size=(32, 16)) * 0.2)], "m")
    net.op("Add", [m, net.const("bias", RNG.normal(size=16) * 0.1)], "y")
    r = _convert(tmp_path, net, inputs=inputs)
    _check(r, "MatMul")
    assert _tflite_ops(r)["FULLY_CONNECTED"] == 1 and r.report["tflite"]["op_versions"]["FULLY_CONNECTED"] == 4


# ---- Gelu -----------------------------------------------------------------------------
def _gelu_net(erf: bool) -> Net:
    net = Net()
    a = net.conv("x", 3, C, "a")
    if erf:  # torch's export: x * 0.5 * (1 + erf(x / sqrt2))
        d = net.op("Div", [a, net.const("sqrt2", np.sqrt(2.0))], "d")
        e = net.op("Erf", [d], "e")
        p = net.op("Add", [e, net.const("one", 1.0)], "p")
        m = net.op("Mul", [a, p], "m")
        g = net.op("Mul", [m, net.const("half", 0.5)], "g")
    else:
        g = net.op("Gelu", [a], "g")
    net.conv(g, C, C, "y", k=1)
    return net


@pytest.mark.parametrize("erf", [False, True])
def test_gelu_and_its_erf_pattern_are_int8_gelu(tmp_path: Path, erf: bool) -> None:
    graph, log = _fused_matches(_gelu_net(erf).save(tmp_path / "fp32.onnx", opset=20))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Gelu", "Conv"], log
    r = _convert(tmp_path, _gelu_net(erf), opset=20)
    _check(r, "Gelu")
    assert r.report["tflite"]["op_versions"]["GELU"] == 2


def test_erf_pattern_of_an_opset_17_graph_fuses_with_an_opset_bump(tmp_path: Path) -> None:
    graph, log = _fused_matches(_gelu_net(True).save(tmp_path / "fp32.onnx", opset=17))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Gelu", "Conv"] and graph.opset == 20, log


def test_erf_pattern_stays_float_where_the_opset_cannot_be_raised(tmp_path: Path) -> None:
    net = _gelu_net(True)
    net.nodes.append(helper.make_node("ReduceMax", ["y"], ["y_max"], axes=[1], name="max"))  # axes: attr
    net.nodes[-2].output[0] = "y0"
    net.nodes[-1].input[0] = "y0"
    net.op("Sub", ["y0", "y_max"], "y")
    r = _convert(tmp_path, net, formats=("onnx",))
    reasons = {f["op"]: f["reason"] for f in r.report["float_ops"]}
    assert "Gelu pattern" in reasons["Erf"]


# ---- LSTM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op,gates", [("GRU", 3)])  # LSTM: a TFLite float island (test_tflite_lstm)
def test_recurrent_stays_float_in_onnx_and_tflite_names_the_reason(tmp_path: Path, op: str, gates: int) -> None:
    net = Net()
    hidden, width = 6, 8
    inputs = {"x": [1, 5, width]}  # [seq, batch, features]
    s = net.op("Mul", ["x", net.const("gain", 0.5)], "s")
    w = net.const("W", RNG.normal(size=(1, gates * hidden, width)) * 0.3)
    rw = net.const("R", RNG.normal(size=(1, gates * hidden, hidden)) * 0.3)
    net.nodes.append(helper.make_node(op, [s, w, rw], ["seq"], name="rnn", hidden_size=hidden))
    net.op("Add", ["seq", net.const("bias", 0.1)], "y")
    r = _convert(tmp_path / "onnx", net, inputs=inputs, formats=("onnx",))
    reasons = {f["node"]: f["reason"] for f in r.report["float_ops"]}
    assert reasons["rnn"].startswith(f"{op}: full-integer {op} needs per-gate intermediate scales")
    assert np.abs(r.int8 - r.fp32).max() <= 4 * r.y_scale  # quantized around the float node
    with pytest.raises(REFUSED, match=rf"{op} at node 'rnn'.*use --format onnx"):
        _convert(tmp_path / "both", net, inputs=inputs)


# ---- float-graph passes -------------------------------------------------------------------
def test_conv_then_add_of_a_channel_constant_becomes_the_conv_bias(tmp_path: Path) -> None:
    net = Net()
    a = net.conv("x", 3, C, "a")
    b = net.op("Add", [a, net.const("se_bias", RNG.normal(size=(1, C, 1, 1)))], "b")
    w = net.const("w_nobias", RNG.normal(size=(C, C, 1, 1)) * 0.3)
    c = net.op("Conv", [b, w], "c")
    d = net.op("Add", [net.const("scalar", 0.25), c], "d")
    net.op("Add", [d, net.const("lastaxis", RNG.normal(size=8))], "y")  # [8]: broadcasts on W
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Conv", "Add"], log


def test_constant_subgraphs_fold(tmp_path: Path) -> None:
    """Reshape of constants (Paddle's SE biases) folds to an initializer (onnxruntime
    1.2x refuses the untyped outputs the folding pass used to declare)."""
    net = Net()
    a = net.conv("x", 3, C, "a")
    r = net.op("Reshape", [net.const("flat_bias", RNG.normal(size=C)), net.const_i64("to4d", [1, C, 1, 1])], "rb")
    net.op("Add", [a, r], "y")
    graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx"))
    assert any(line.startswith("folded constant Reshape") for line in log), log
    assert [n.op_type for n in graph.nodes] == ["Conv"], log  # and the Add became its bias


def test_opset_is_not_raised_over_an_op_whose_meaning_changes() -> None:
    from edgeship.converter._fuse import bump_opset

    graph = Graph.from_model(helper.make_model(
        helper.make_graph([helper.make_node("RoiAlign", ["x", "r", "i"], ["y"])], "g", [], []),
        opset_imports=[helper.make_opsetid("", 13)]))
    assert not bump_opset(graph, 17) and graph.opset == 13  # RoiAlign-16 changed a default
    graph.nodes = [helper.make_node("Relu", ["x"], ["y"])]
    assert bump_opset(graph, 17) and graph.opset == 17 and graph.ir_version >= 8


# ---- LayerNormalization -----------------------------------------------------------------
LN_INPUTS = {"x": [1, 12, 32]}


def _layernorm_net(decomposed: bool, *, axes_input: bool = False) -> Net:
    """Tokens x width, normalized over the width as PP-OCRv4's SVTR mixer exports it."""
    net = Net()
    a = net.op("Add", ["x", net.const("shift", RNG.normal(size=32) * 0.5)], "a")
    gamma = net.const("gamma", 1.0 + RNG.normal(size=32) * 0.2)
    beta = net.const("beta", RNG.normal(size=32) * 0.1)
    if decomposed:
        mean_attrs = {} if axes_input else {"axes": [-1]}

        def mean(x: str, out: str) -> str:
            inputs = [x, net.const_i64(f"{out}_axes", [-1])] if axes_input else [x]
            return net.op("ReduceMean", inputs, out, **mean_attrs)

        m = mean(a, "mu")
        d = net.op("Sub", [a, m], "d")
        p = net.op("Pow", [d, net.const("two", 2.0)], "p")
        v = mean(p, "var")
        e = net.op("Add", [v, net.const("eps", 1e-5)], "ve")
        s = net.op("Sqrt", [e], "sd")
        n = net.op("Div", [d, s], "n")
        g = net.op("Mul", [n, gamma], "g")
        ln = net.op("Add", [g, beta], "ln")
    else:
        ln = net.op("LayerNormalization", [a, gamma, beta], "ln", axis=-1, epsilon=1e-5)
    net.op("Mul", [ln, net.const("gain", RNG.normal(size=32))], "y")
    return net


@pytest.mark.parametrize("decomposed,opset", [(False, 17), (True, 13), (True, 18)])
def test_layernorm_is_one_int8_op_and_int8_builtins_in_tflite(tmp_path: Path, decomposed: bool, opset: int) -> None:
    net = _layernorm_net(decomposed, axes_input=opset >= 18)
    if decomposed:
        graph, log = _fused_matches(net.save(tmp_path / "fp32.onnx", opset=opset, inputs=LN_INPUTS), LN_INPUTS)
        assert [n.op_type for n in graph.nodes] == ["Add", "LayerNormalization", "Mul"], log
        assert graph.opset == max(opset, 17)
    r = _convert(tmp_path / "c", _layernorm_net(decomposed, axes_input=opset >= 18), opset=opset, inputs=LN_INPUTS)
    assert not _float_ops(r), r.report["float_ops"]
    # the written INT8 ONNX rounds the same eight intermediates as the int8 chain in TFLite
    # (converter/_layernorm_qdq.py), so LiteRT and onnxruntime agree
    assert "LayerNormalization" not in _ops(r.out / "model.int8.onnx")
    assert _ops(r.out / "model.int8.onnx").count("ReduceMean") == 2
    _check(r, "LayerNormalization", tflite_steps=1.0)
    ops = _tflite_ops(r)
    assert ops["MEAN"] == 2 and ops["RSQRT"] == 1 and "SQUARED_DIFFERENCE" not in ops, ops


def test_float_layernorm_is_a_float_island_and_the_chain_matches_onnxruntime(tmp_path: Path) -> None:
    """``float_layernorm``: the LayerNormalization as a float island in TFLite (the Edge
    TPU then stops there). The written INT8 ONNX computes the int8 chain
    (converter/_layernorm_qdq.py): the default TFLite matches it exactly, the float
    island stays within a few steps of it."""
    from edgeship.converter._tflite import write_tflite

    r = _convert(tmp_path / "c", _layernorm_net(False), opset=17, inputs=LN_INPUTS)
    info = write_tflite(r.out / "model.int8.onnx", tmp_path / "float_ln.tflite", float_layernorm=True)
    chain = _tflite_ops(r)  # the default: one DEQUANTIZE, at the float output
    assert "SQUARED_DIFFERENCE" not in info.op_counts
    assert info.op_counts["DEQUANTIZE"] == chain["DEQUANTIZE"] + 1  # into the island
    feeds = {k: v[:8] for k, v in _data(LN_INPUTS, 32, 0).items()}
    gap = np.abs(_litert(tmp_path / "float_ln.tflite", feeds) - r.int8).max() / r.y_scale
    chain_gap = np.abs(r.tflite - r.int8).max() / r.y_scale
    assert chain_gap == 0.0 and gap <= 4.0 + 1e-3, (gap, chain_gap)
