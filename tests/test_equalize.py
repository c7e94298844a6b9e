"""Cross-layer equalization (converter/_equalize.py): the fp32 function is kept (real
onnxruntime runs before and after), ranges are equalized, pairs are found only where the
math holds, and the rescaled-MLP fixture of issue 15 keeps its fp32 accuracy in INT8."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, _accuracy, _equalize, convert
from edgeship.converter._ir import Graph
from edgeship.converter._optimize import optimize
from onnx import TensorProto, helper, numpy_helper

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from rescaled_mlp import rescaled_mlp  # noqa: E402


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _model(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _conv_chain(rng: np.random.Generator, act: str) -> onnx.ModelProto:
    """conv 3->8 (channels scaled 1e-2..1e2), act, depthwise 8, act, pointwise 8->4."""
    spread = np.logspace(-2, 2, 8)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)) * spread[:, None, None, None] * 0.1,
        "b1": rng.normal(size=8) * spread * 0.1,
        "w2": rng.normal(size=(8, 1, 3, 3)) / spread[:, None, None, None],
        "b2": rng.normal(size=8) * 0.1,
        "w3": rng.normal(size=(4, 8, 1, 1)),
        "b3": rng.normal(size=4),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1])]
    a1, a2 = "c1", "c2"
    if act == "Clip":
        inits.update(lo=np.array(0.0), hi=np.array(6.0))
    if act != "identity":
        extra = ["lo", "hi"] if act == "Clip" else []
        nodes.append(helper.make_node(act, ["c1", *extra], ["a1"], name="a1"))
        a1 = "a1"
    nodes.append(
        helper.make_node("Conv", [a1, "w2", "b2"], ["c2"], name="c2", group=8, pads=[1, 1, 1, 1])
    )
    if act != "identity":
        extra = ["lo", "hi"] if act == "Clip" else []
        nodes.append(helper.make_node(act, ["c2", *extra], ["a2"], name="a2"))
        a2 = "a2"
    nodes.append(helper.make_node("Conv", [a2, "w3", "b3"], ["y"], name="c3"))
    return _model(nodes, inits, [1, 3, 6, 6], [1, 4, 6, 6])


@pytest.mark.parametrize("act", ["identity", "Relu", "LeakyRelu", "Clip"])
def test_equalization_keeps_the_fp32_function(act: str) -> None:
    rng = np.random.default_rng(0)
    model = _conv_chain(rng, act)
    x = rng.normal(size=(16, 3, 6, 6)).astype(np.float32)
    before = _run(model, x)
    graph = Graph.from_model(model)
    pairs = _equalize.find_pairs(graph)
    assert [(p.first, p.second) for p in pairs] == [("c1", "c2"), ("c2", "c3")]
    log = _accuracy.equalize(graph, {"x": x}).log
    assert log and "2 pair(s)" in log[0]
    after = _run(graph.to_model(), x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    if act != "Clip":  # ranges of c1's output channels and c2's channels now match
        r1 = np.abs(graph.inits["w1"]).reshape(8, -1).max(1)
        r2 = np.abs(graph.inits["w2"]).reshape(8, -1).max(1)
        assert np.max(r1 / r2) < 1.5 and np.min(r1 / r2) > 1 / 1.5
        assert np.ptp(np.log10(r1)) < 1.0  # was 4 decades


def test_clip_keeps_saturating_channels() -> None:
    """A channel whose Clip(0, 6) input reaches 6 on the data keeps scale 1; the others are
    not shrunk below CLIP_MARGIN x their observed maximum."""
    r1, r2 = np.array([4.0, 4.0, 4.0]), np.array([0.01, 0.01, 100.0])
    cmax = np.array([7.0, 1.0, 1.0])
    s = _equalize.pair_scales(r1, r2, 6.0, cmax)
    assert s[0] == 1.0
    assert s[1] == pytest.approx(20.0)  # sqrt(4 / 0.01), grows: the clip moves up
    assert s[2] == pytest.approx(_equalize.CLIP_MARGIN * 1.0 / 6.0)  # sqrt(0.04) = 0.2 < 0.25


def test_gemm_chain_both_layouts() -> None:
    """Gemm(transB=1) -> Relu -> Gemm(transB=0) -> MatMul: same outputs, fc pairs found."""
    rng = np.random.default_rng(1)
    k = np.array([1.0, 300.0, 1.0, 0.005, 1.0, 1.0])
    inits = {
        "w1": rng.normal(size=(6, 5)) * k[:, None],
        "b1": rng.normal(size=6) * k,
        "w2": rng.normal(size=(6, 4)) / k[:, None],
        "b2": rng.normal(size=(1, 4)),
        "w3": rng.normal(size=(4, 3)),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="g1", transB=1),
        helper.make_node("Relu", ["g1"], ["r1"], name="r1"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["g2"], name="g2"),
        helper.make_node("MatMul", ["g2", "w3"], ["y"], name="m3"),
    ]
    model = _model(nodes, inits, [1, 5], [1, 3])
    x = rng.normal(size=(8, 5)).astype(np.float32)
    before = _run(model, x)
    graph = Graph.from_model(model)
    assert [(p.first, p.second) for p in _equalize.find_pairs(graph)] == [
        ("g1", "g2"),
        ("g2", "m3"),
    ]
    _equalize.equalize(graph)
    np.testing.assert_allclose(_run(graph.to_model(), x), before, rtol=1e-4, atol=1e-5)
    assert graph.inits["b2"].shape == (4,)  # a [1, N] Gemm bias was rescaled per channel
    r1 = np.abs(graph.inits["w1"]).max(1)
    assert r1.max() / r1.min() < 10  # was 6e4


def test_no_pair_where_the_math_does_not_hold() -> None:
    """A tensor with two readers, a Sigmoid between, a grouped (not depthwise) Conv and a
    Conv -> Gemm (different channel axes) are left alone."""
    rng = np.random.default_rng(2)
    inits = {
        "w1": rng.normal(size=(4, 2, 1, 1)),
        "w2": rng.normal(size=(4, 4, 1, 1)),
        "w3": rng.normal(size=(4, 2, 1, 1)),  # group 2
        "w4": rng.normal(size=(4, 4, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="s1"),
        helper.make_node("Conv", ["s1", "w2"], ["c2"], name="c2"),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], name="c3", group=2),
        helper.make_node("Conv", ["c3", "w4"], ["c4"], name="c4"),
        helper.make_node("Add", ["c4", "c3"], ["y"], name="add"),
    ]
    graph = Graph.from_model(_model(nodes, inits, [1, 2, 3, 3], [1, 4, 3, 3]))
    assert _equalize.find_pairs(graph) == []


def test_clip_pair_without_maxima_is_skipped() -> None:
    graph = Graph.from_model(_conv_chain(np.random.default_rng(3), "Clip"))
    w1 = graph.inits["w1"].copy()
    assert _equalize.equalize(graph).log == []
    assert np.array_equal(graph.inits["w1"], w1)


@pytest.mark.parametrize("name", ["mlp", "mobilenet"])
def test_fixture_fp32_function_after_equalization(name: str) -> None:
    """The committed fixtures, optimized then equalized, give the same fp32 outputs on the
    eval set (mobilenet's pairs go through Clip(0, 6), bounded by calibration maxima)."""
    graph = Graph.from_model(onnx.load(FIX / f"{name}.onnx"))
    optimize(graph)
    before_model = graph.to_model()
    calib = dict(np.load(FIX / f"{name}_calib.npz"))
    assert _accuracy.equalize(graph, calib).log
    x = np.load(FIX / f"{name}_eval.npz")["input"]
    before, after = _run(before_model, x), _run(graph.to_model(), x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)


def test_rescaled_mlp_keeps_fp32_accuracy(tmp_path: Path) -> None:
    """Issue 15's fixture: hidden units rescaled 100-400x (same fp32 function). With
    equalization (the default) INT8 stays within 0.5 point of fp32 in both formats; without
    it the per-tensor Gemm scales round most weights to zero."""
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "mlp_rescaled.onnx")
    calib, ev = FIX / "mlp_calib.npz", FIX / "mlp_eval.npz"
    report = convert(
        model,
        calib,
        tmp_path / "on",
        ConvertOptions(formats=("onnx", "tflite"), latency_runs=1),
        eval_path=ev,
    )
    assert report.options["equalize"] is None and report.extra["steps"]["equalize"] == "all pairs"
    fp32, int8 = report.eval["fp32_accuracy"], report.eval["int8_accuracy"]
    assert fp32 == pytest.approx(97.37, abs=0.01)  # the rescaling kept the function
    assert int8 >= fp32 - 0.5
    assert _tflite_accuracy(tmp_path / "on" / "model.int8.tflite", ev) >= fp32 - 0.5
    off = convert(
        model,
        calib,
        tmp_path / "off",
        ConvertOptions(formats=("onnx",), equalize=False, latency_runs=1),
        eval_path=ev,
    )
    assert off.eval["int8_accuracy"] < fp32 - 10  # the fixture is hard without it


def _tflite_accuracy(path: Path, ev_path: Path) -> float:
    from ai_edge_litert.interpreter import Interpreter

    ev = np.load(ev_path)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    hits = 0
    for x, label in zip(ev["input"], ev["label"], strict=True):
        it.set_tensor(inp["index"], x[None].astype(np.float32))
        it.invoke()
        hits += int(it.get_tensor(out["index"])[0, 0] > 0.5) == label
    return 100.0 * hits / len(ev["label"])


def test_fixed_scales_are_reused_where_they_fit() -> None:
    """--base: a previous conversion's scales are applied as they are (the same weights
    come out), and scales that break a Clip's limits are recomputed."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 3, 6, 6)).astype(np.float32)
    first = Graph.from_model(_conv_chain(rng, "Relu"))
    original = Graph.from_model(first.to_model())
    eq = _equalize.equalize(first)
    assert set(eq.scales) == {"c1/c2", "c2/c3"}
    again = Graph.from_model(original.to_model())
    reused = _equalize.equalize(again, fixed=eq.scales)
    assert "2 with --base scales" in reused.log[0]
    for name in ("w1", "w2", "w3"):
        np.testing.assert_allclose(again.inits[name], first.inits[name], rtol=1e-6)
    np.testing.assert_allclose(
        _run(again.to_model(), x), _run(original.to_model(), x), rtol=1e-4, atol=1e-5
    )
    bad = {"c1/c2": np.full(8, 3.0)}  # a Clip channel that saturates must keep scale 1
    assert not _equalize._fits(bad["c1/c2"], np.ones(8), 6.0, np.full(8, 7.0))
    assert _equalize._fits(bad["c1/c2"], np.ones(8), 6.0, np.full(8, 1.0))
    assert not _equalize._fits(np.ones(5), np.ones(8), None, None)  # channel count changed


def test_quant_params_carry_the_scales(tmp_path: Path) -> None:
    import json

    out = tmp_path / "out"  # the rescaled MLP: the guard keeps equalization (test_accuracy_steps)
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    convert(model, FIX / "mlp_calib.npz", out, ConvertOptions(formats=("onnx",)))
    data = json.loads((out / "quant_params.json").read_text())
    assert len(data["equalization"]) == 2
    assert all(len(v) in (32, 16) and min(v) > 0 for v in data["equalization"].values())
