"""Empirical bias correction (converter/_bias_correct.py): the per-channel shift it
computes from one mean tensor equals the mean output difference onnxruntime measures
between the layer with the rounded weight and with the float one; end to end, the INT8
model's per-channel mean error shrinks, in the QDQ ONNX and in the TFLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._bias_correct import bias_shift
from onnx import TensorProto, helper, numpy_helper


def _single(op: str, w: np.ndarray, in_shape: list[int], **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if sess.get_inputs()[0].shape[0] == 1:  # a static batch-1 model: one sample at a time
        return np.concatenate([sess.run(None, {"x": s[None]})[0] for s in x]).astype(np.float64)
    return sess.run(None, {"x": x})[0].astype(np.float64)


CONVS = [
    dict(kernel=(3, 3), group=1, pads=[1, 1, 1, 1], strides=[1, 1]),
    dict(kernel=(3, 3), group=1, pads=[0, 1, 2, 0], strides=[2, 2], dilations=[1, 2]),
    dict(kernel=(3, 3), group=6, pads=[1, 1, 1, 1], strides=[2, 1]),  # depthwise
    dict(kernel=(5, 5), group=2, auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel=(1, 1), group=1, strides=[1, 1]),
]


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: f"k{c['kernel'][0]}g{c['group']}")
def test_conv_shift_is_the_measured_mean_difference(cfg: dict) -> None:
    rng = np.random.default_rng(0)
    kernel, group = cfg.pop("kernel"), cfg["group"]
    w = rng.normal(size=(6, 6 // group, *kernel)).astype(np.float32)
    w_dq = (w + rng.uniform(-0.05, 0.05, w.shape)).astype(np.float32)
    x = (rng.normal(size=(20, 6, 9, 7)) + rng.uniform(-1, 2, (1, 6, 9, 7))).astype(np.float32)
    attrs = {k: v for k, v in cfg.items()}
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    shift = bias_shift(node, w, w_dq, x.mean(axis=0))
    measured = (
        _outputs(_single("Conv", w_dq, [None, 6, 9, 7], **attrs), x)
        - _outputs(_single("Conv", w, [None, 6, 9, 7], **attrs), x)
    ).mean(axis=(0, 2, 3))
    assert shift is not None
    np.testing.assert_allclose(shift, measured, rtol=1e-4, atol=1e-5)
    assert np.abs(measured).max() > 1e-3  # the shift is not trivially zero


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_shift_is_the_measured_mean_difference(trans_b: int) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 4) if trans_b else (4, 5)).astype(np.float32)
    w_dq = (w + rng.uniform(-0.05, 0.05, w.shape)).astype(np.float32)
    x = (rng.normal(size=(30, 4)) + 1.0).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b)
    shift = bias_shift(node, w, w_dq, x.mean(axis=0))
    measured = (
        _outputs(_single("Gemm", w_dq, [None, 4], transB=trans_b), x)
        - _outputs(_single("Gemm", w, [None, 4], transB=trans_b), x)
    ).mean(axis=0)
    np.testing.assert_allclose(shift, measured, rtol=1e-4, atol=1e-6)


def test_unknown_layers_are_not_corrected() -> None:
    w = np.ones((2, 2), np.float32)
    assert bias_shift(helper.make_node("MatMul", ["x", "w"], ["y"]), w, w, np.ones(2)) is None
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=3)  # 4 channels, 3 groups
    assert (
        bias_shift(conv, np.ones((4, 1, 1, 1)), np.ones((4, 1, 1, 1)), np.ones((4, 2, 2))) is None
    )


def _biased_model(path: Path) -> Path:
    """A 1x1 conv whose weights all sit 0.45 of a step above the int8 grid, on positive
    inputs: rounding moves every channel's mean the same way."""
    rng = np.random.default_rng(2)
    steps = rng.integers(20, 120, size=(8, 16, 1, 1)).astype(np.float64)
    steps[:, 0] = 127  # sets each channel's scale to 1/127 of its max
    w = ((steps + np.where(steps < 127, 0.45, 0.0)) / 127.0).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")
    graph = helper.make_graph(
        [conv],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_correction_removes_the_mean_error_in_both_formats(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = _biased_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.0, size=(64, 16, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    fp32 = _outputs(onnx.load(model), x)
    errors = {}
    for on in (False, True):
        out = tmp_path / f"bc{on}"
        convert(
            model,
            tmp_path / "calib.npz",
            out,
            ConvertOptions(
                formats=("onnx", "tflite"), bias_correction=on, equalize=False,
                learned_rounding=False,  # the mean error of nearest rounding
            ),
        )
        onnx_err = (_outputs(onnx.load(out / "model.int8.onnx"), x) - fp32).mean(axis=(0, 2, 3))
        it = Interpreter(model_path=str(out / "model.int8.tflite"))
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        tfl = []
        for s in x:
            it.set_tensor(i["index"], s[None])  # the TFLite keeps the ONNX NCHW interface
            it.invoke()
            tfl.append(it.get_tensor(o["index"])[0])
        tfl_err = (np.array(tfl, np.float64) - fp32).mean(axis=(0, 2, 3))
        errors[on] = (np.abs(onnx_err).mean(), np.abs(tfl_err).mean())
    assert errors[False][0] > 0.01  # rounding down 0.45 steps is a visible offset
    assert errors[True][0] < errors[False][0] / 4
    assert errors[True][1] < errors[False][1] / 4


def test_cli_flag_turns_it_on(tmp_path: Path) -> None:
    """``--no-bias-correction`` / ``--bias-correction`` (the default decides by a held-out
    check, tests/test_accuracy_steps.py): the flag changes the int32 biases, not the weights."""
    import json
    import subprocess
    import sys

    fix = Path(__file__).parent / "fixtures"
    ints = {}
    for flag in (["--no-bias-correction"], ["--bias-correction"]):
        on = flag == ["--bias-correction"]
        out = tmp_path / ("on" if on else "off")
        cmd = [
            sys.executable,
            "-m",
            "edgeship",
            "convert",
            str(fix / "cnn.onnx"),
            "--calib",
            str(fix / "cnn_calib.npz"),
            "-o",
            str(out),
            "--format",
            "onnx",
            "-q",
            *flag,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        options = json.loads((out / "report.json").read_text())["options"]
        assert options["bias_correction"] is on
        model = onnx.load(out / "model.int8.onnx")
        ints[on] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    biases = [k for k in ints[True] if k.endswith("_b_q")]
    assert biases and any(not np.array_equal(ints[True][k], ints[False][k]) for k in biases)
    weights = [k for k in ints[True] if k.endswith("_q") and k not in biases]
    assert all(np.array_equal(ints[True][k], ints[False][k]) for k in weights)
