"""A wide float LSTM written in steps for OpenVINO (converter/_openvino_lstm.py): the same
outputs as the LSTM node within float rounding in onnxruntime and OpenVINO (Y, Y_h, Y_c;
forward, reverse and bidirectional; zero and non-zero initial states), the gate MatMuls
run in alternating order in OpenVINO's executed graph, and LSTMs the rewrite does not
reproduce (narrow, clipped, shorter sequences) are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter._openvino_lstm import MIN_HIDDEN, unrolled_lstms
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
STEPS, BATCH, SIZE = 5, 2, 8


def _lstm_model(direction: str = "bidirectional", hidden: int = MIN_HIDDEN, states: bool = True,
                lens: int | None = None, **attrs: object) -> onnx.ModelProto:
    """x [5, 2, 8] -> LSTM -> Y, Y_h, Y_c; initial states non-zero for the first direction
    (zero for the second) when ``states``."""
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (dirs, 4 * hidden, SIZE)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.05, (dirs, 4 * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.1, (dirs, 8 * hidden)).astype(np.float32), "B")]
    inputs = ["x", "W", "R", "B", "", "", ""]
    if lens is not None:
        inits.append(numpy_helper.from_array(np.full(BATCH, lens, np.int32), "lens"))
        inputs[4] = "lens"
    if states:
        initial = rng.normal(0, 0.5, (dirs, BATCH, hidden)).astype(np.float32)
        initial[1:] = 0.0
        inits += [numpy_helper.from_array(initial, "h0"), numpy_helper.from_array(initial * 2, "c0")]
        inputs[5:7] = ["h0", "c0"]
    node = helper.make_node("LSTM", inputs, ["y", "yh", "yc"], name="lstm", direction=direction,
                            hidden_size=hidden, **attrs)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [STEPS, dirs, BATCH, hidden]),
            helper.make_tensor_value_info("yh", TensorProto.FLOAT, [dirs, BATCH, hidden]),
            helper.make_tensor_value_info("yc", TensorProto.FLOAT, [dirs, BATCH, hidden])]
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, SIZE])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, {"x": x})]


def _ov(model: onnx.ModelProto, x: np.ndarray, path: Path) -> tuple[list[np.ndarray], object]:
    onnx.save(model, str(path))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": 1})
    result = compiled.create_infer_request().infer({0: x})
    return [np.asarray(result[o]) for o in compiled.outputs], compiled


@pytest.mark.parametrize(("direction", "states"), [("bidirectional", True), ("forward", False),
                                                   ("reverse", True)])
def test_an_lstm_in_steps_gives_the_lstms_outputs(tmp_path: Path, direction: str, states: bool) -> None:
    model = _lstm_model(direction, states=states)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert unrolled_lstms(rewritten) == 1
    onnx.checker.check_model(rewritten)
    assert "LSTM" not in {n.op_type for n in rewritten.graph.node}
    assert not {"W", "R", "B", "h0", "c0"} & {i.name for i in rewritten.graph.initializer}
    x = np.random.default_rng(1).normal(0, 1, (STEPS, BATCH, SIZE)).astype(np.float32)
    expected = _ort(model, x)
    for got in (_ort(rewritten, x), _ov(rewritten, x, tmp_path / "steps.onnx")[0]):
        assert len(got) == 3
        for want, value in zip(expected, got, strict=True):
            assert value.shape == want.shape
            np.testing.assert_allclose(value, want, rtol=0, atol=2e-5)


def test_openvino_runs_each_steps_gates_in_the_reverse_order_of_the_step_before(tmp_path: Path) -> None:
    model = _lstm_model("forward", states=False)
    assert unrolled_lstms(model) == 1
    x = np.zeros((STEPS, BATCH, SIZE), np.float32)
    _, compiled = _ov(model, x, tmp_path / "steps.onnx")
    ran = []
    for op in compiled.get_runtime_model().get_ordered_ops():  # type: ignore[attr-defined]
        info = op.get_rt_info()
        names = info["originalLayersNames"].astype(str)
        if info["layerType"].astype(str) == "FullyConnected" and "t" in names and names.endswith("r"):
            ran.append((int(info["execOrder"].astype(str)), names.rsplit("_", 1)[-1][0]))
    gates = "".join(g for _, g in sorted(ran))  # steps 1..4 (step 0 has no hidden state)
    assert gates == "cifo" + "ofic" + "cifo" + "ofic"


@pytest.mark.parametrize("change", ["narrow", "clip", "short"])
def test_an_lstm_the_steps_do_not_reproduce_is_left_alone(change: str) -> None:
    model = {"narrow": lambda: _lstm_model(hidden=MIN_HIDDEN // 2),
             "clip": lambda: _lstm_model(clip=3.0),
             "short": lambda: _lstm_model(lens=STEPS - 1)}[change]()
    before = model.SerializeToString()
    assert unrolled_lstms(model) == 0
    assert model.SerializeToString() == before
