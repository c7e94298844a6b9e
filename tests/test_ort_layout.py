"""The onnxruntime pass on the written INT8 ONNX (converter/_ort_layout.py): depthwise
channels padded to a multiple of 16 and HardSwish gates written as Add. Pinned by what
onnxruntime's optimizer makes of the model (which kernels it picks), not by timings; the
numbers must stay those of the model before the pass, in onnxruntime and in LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._ort_layout import CHANNEL_ALIGN, for_onnxruntime, gates_as_conv
from edgeship.converter._tflite import build_tflite
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(5)
WIDTH = 40  # a MobileNet width onnxruntime's fast depthwise kernel does not take
SHAPE = [1, 8, 12, 20]


# ---- a QDQ model in the converter's contract (converter/_quantize.py) ----------------------
class _Qdq:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def act(self, t: str, scale: float, zp: int) -> str:
        self.inits[f"{t}_s"] = np.array(scale, np.float32)
        self.inits[f"{t}_z"] = np.array(zp + 128, np.uint8)
        self.nodes += [helper.make_node("QuantizeLinear", [t, f"{t}_s", f"{t}_z"], [f"{t}_q"]),
                       helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_s", f"{t}_z"], [f"{t}_dq"])]
        return f"{t}_dq"

    def conv(self, x: str, out: str, w: np.ndarray, b: np.ndarray, **attrs: object) -> str:
        scales = np.maximum(np.abs(w).reshape(len(w), -1).max(1) / 127, 1e-12).astype(np.float32)
        self.inits[f"{out}_w_q"] = np.round(w / scales.reshape(-1, 1, 1, 1)).astype(np.int8)
        self.inits[f"{out}_w_s"] = scales
        x_s = self.inits[f"{x[:-3]}_s"]
        b_s = (x_s * scales).astype(np.float32)
        self.inits[f"{out}_b_q"] = np.round(b / b_s).astype(np.int32)
        k = w.shape[2]
        self.nodes += [
            helper.make_node("DequantizeLinear", [f"{out}_w_q", f"{out}_w_s"], [f"{out}_w"], axis=0),
            helper.make_node("Mul", [f"{out}_w_s", f"{x[:-3]}_s"], [f"{out}_b_s"]),
            helper.make_node("DequantizeLinear", [f"{out}_b_q", f"{out}_b_s"], [f"{out}_b"], axis=0),
            helper.make_node("Conv", [x, f"{out}_w", f"{out}_b"], [out], name=out, kernel_shape=[k, k],
                             pads=[k // 2] * 4, **attrs)]
        return out

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model


def mobilenet_block() -> onnx.ModelProto:
    """1x1 expand -> HardSwish as the converter writes it (x * Clip(1x1 gate)) -> 3x3
    depthwise -> Relu (folded) -> 1x1 project, WIDTH channels inside."""
    b = _Qdq()
    x = b.act("x", 0.02, 0)
    e = b.act(b.conv(x, "expand", RNG.normal(size=(WIDTH, 8, 1, 1)) * 0.4, RNG.normal(size=WIDTH) * 0.1), 0.03, 5)
    gate = b.conv(e, "hs_gate", np.full((WIDTH, 1, 1, 1), 1 / 6, np.float32), np.full(WIDTH, 0.5, np.float32),
                  group=WIDTH)
    g = b.act(gate, 1 / 255, -128)
    b.nodes.append(helper.make_node("Mul", [e, g], ["hs"], name="hs"))
    h = b.act("hs", 0.02, -100)
    d = b.act(b.conv(h, "dw", RNG.normal(size=(WIDTH, 1, 3, 3)) * 0.5, RNG.normal(size=WIDTH) * 0.1,
                     group=WIDTH), 0.02, -128)
    b.conv(d, "project", RNG.normal(size=(16, WIDTH, 1, 1)) * 0.2, RNG.normal(size=16) * 0.1)
    b.nodes[-1].output[0] = "y_float"
    b.act("y_float", 0.05, 0)
    b.nodes[-1].output[0] = "y"
    return b.model()


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _inputs(n: int = 6) -> list[np.ndarray]:
    return [RNG.normal(size=SHAPE).astype(np.float32) * 0.8 for _ in range(n)]


def _litert(data: bytes, xs: list[np.ndarray], tmp: Path) -> list[np.ndarray]:
    (tmp / "m.tflite").write_bytes(data)
    model = Model.load(tmp / "m.tflite")
    return [model.predict(x) for x in xs]


def test_onnxruntime_picks_its_fast_int8_kernels(tmp_path: Path) -> None:
    before = mobilenet_block()
    after, log = for_onnxruntime(before)
    assert any("padded" in line for line in log) and any("QLinearAdd" in line for line in log)
    for model, name in ((before, "before"), (after, "after")):
        _session(model, tmp_path / f"{name}.onnx")
    ops = {name: onnx.load(tmp_path / f"{name}.onnx").graph.node for name in ("before", "after")}

    def groups(nodes: list[onnx.NodeProto]) -> list[int]:
        return [a.i for n in nodes if n.op_type == "QLinearConv" for a in n.attribute if a.name == "group" and a.i > 1]

    assert groups(ops["before"]) == [WIDTH, WIDTH]  # the gate and the depthwise conv
    # after: one depthwise QLinearConv with a group count the fast kernel takes, the gate a
    # QLinearAdd, and nothing left in float between the input's Q and the output's DQ
    assert groups(ops["after"]) == [-(-WIDTH // CHANNEL_ALIGN) * CHANNEL_ALIGN]
    assert [n.op_type for n in ops["after"]].count("QLinearAdd") == 1
    floats = [n.op_type for n in ops["after"] if n.op_type in ("Conv", "Add", "Mul", "Clip", "DequantizeLinear")]
    assert floats == ["DequantizeLinear"]  # the graph output's


def test_same_numbers_in_onnxruntime_and_in_litert(tmp_path: Path) -> None:
    before = mobilenet_block()
    after, _ = for_onnxruntime(before)
    xs = _inputs()
    a, b = _session(before), _session(after)
    for x in xs:  # every real channel keeps its integers
        np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])
    # the TFLite reader turns the Add gate back into its 1x1 Conv; the padded channels
    # change no output
    tfl_before, tfl_after = build_tflite(before)[0], build_tflite(after)[0]
    for got, ref in zip(_litert(tfl_after, xs, tmp_path), _litert(tfl_before, xs, tmp_path), strict=True):
        np.testing.assert_array_equal(got, ref)


def test_gate_round_trip_is_the_converters_gate() -> None:
    """Without padding (a multiple of 16 already), the TFLite read back from the written
    model is byte for byte the one read from the model before the pass."""
    global WIDTH
    old, WIDTH = WIDTH, 32
    try:
        before = mobilenet_block()
    finally:
        WIDTH = old
    after, log = for_onnxruntime(before)
    assert not any("padded" in line for line in log)
    restored = gates_as_conv(after)
    assert [n.op_type for n in restored.graph.node].count("Add") == 0
    assert build_tflite(after)[0] == build_tflite(before)[0]


def test_convert_writes_the_tflite_from_the_unpadded_model(tmp_path: Path) -> None:
    """End to end from a float graph: the .onnx is padded for onnxruntime, the .tflite is
    not (no extra MACs on the Edge TPU), and both agree."""
    nodes, inits = [], {}

    def const(name: str, value: np.ndarray) -> str:
        inits[name] = value.astype(np.float32)
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int, group: int = 1) -> str:
        w = const(f"{out}_w", RNG.normal(size=(cout, cin // group, k, k)) * 0.4)
        nodes.append(helper.make_node("Conv", [x, w, const(f"{out}_b", RNG.normal(size=cout) * 0.1)], [out],
                                      kernel_shape=[k, k], pads=[k // 2] * 4, group=group))
        return out

    e = conv("x", "e", 8, WIDTH, 1)
    nodes.append(helper.make_node("HardSwish", [e], ["h"]))
    d = conv("h", "d", WIDTH, WIDTH, 3, group=WIDTH)
    nodes.append(helper.make_node("Relu", [d], ["r"]))
    conv("r", "y", WIDTH, 16, 1)
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "block.onnx")
    np.savez(tmp_path / "calib.npz", x=np.stack([x[0] for x in _inputs(16)]))
    report = convert(tmp_path / "block.onnx", tmp_path / "calib.npz", tmp_path / "out",
                     ConvertOptions(formats=("onnx", "tflite")))
    assert any(line.startswith("onnxruntime:") for line in report.optimizations)
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    dw = next(n for n in written.graph.node if n.op_type == "Conv"
              and any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in dw.attribute if a.name == "group") % CHANNEL_ALIGN == 0
    tflite = (tmp_path / "out" / "model.int8.tflite").read_bytes()
    it = Interpreter(model_content=tflite)
    widths = {int(t["shape"][-1]) for t in it.get_tensor_details() if len(t["shape"]) == 4}
    assert WIDTH in widths and -(-WIDTH // CHANNEL_ALIGN) * CHANNEL_ALIGN not in widths
    xs = _inputs(4)
    onnx_out = [_session(written).run(None, {"x": x})[0] for x in xs]
    step = float(numpy_helper.to_array(next(i for i in written.graph.initializer if i.name == "y_s")))
    for got, ref in zip(_litert(tflite, xs, tmp_path), onnx_out, strict=True):
        assert np.abs(got - ref).max() <= 1.001 * step  # one int8 step at most


def test_gate_weight_keeps_the_bias_in_int32() -> None:
    """A network whose activations shrink (MobileNetV3 with random weights: input scales
    of 1e-7) made the gate's int32 bias ``c * 127 / s_x`` overflow into garbage: the
    weight's integer shrinks instead (weight x scale stays alpha) and below 1 the bias
    saturates (the gate cannot move then)."""
    from edgeship.converter._ort_layout import _INT32_MAX, _gate_weight_steps

    assert _gate_weight_steps(3.0, 0.02) == 127
    for s_x in (1e-7, 1e-8, 1e-12):
        steps = _gate_weight_steps(3.0, s_x)
        assert 1 <= steps < 127
        assert steps == 1 or 3.0 * steps / s_x <= _INT32_MAX
    assert _gate_weight_steps(0.0, 1e-12) == 127
