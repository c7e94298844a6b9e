"""The guards that decide the default accuracy steps (converter/_steps.py) and the verdict
line report.html ends with (converter/_report.py): real conversions of small models."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert
from onnx import TensorProto, helper, numpy_helper

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from rescaled_mlp import rescaled_mlp  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def _data_blind_trap(path: Path, rng: np.random.Generator) -> Path:
    """1x1 conv 8->8, Relu, 1x1 conv 8->4. Channel 0 of the first conv is its bias (1.0;
    its weights are 1e-4): as large as its neighbours, but equalization sees only the tiny
    weights, divides the channel by ~50 and makes it 50x larger than every other channel
    of the int8 activation between the convs (no bias absorption here)."""
    w1 = rng.normal(size=(8, 8, 1, 1)) * 0.3
    w1[0] = rng.normal(size=(8, 1, 1)) * 1e-4
    b1 = np.zeros(8)
    b1[0] = 1.0
    w2 = rng.normal(size=(4, 8, 1, 1))
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(
        nodes,
        "trap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _trap_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 8, 4, 4)).astype(np.float32)


def test_equalization_is_dropped_where_it_lowers_the_output_sqnr(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model = _data_blind_trap(tmp_path / "trap.onnx", rng)
    np.savez(tmp_path / "calib.npz", x=_trap_inputs(rng, 48))
    opts = ConvertOptions(formats=("onnx",), latency_runs=1, bias_correction=False)
    report = convert(model, tmp_path / "calib.npz", tmp_path / "out", opts)
    steps = report.extra["steps"]
    assert steps["equalize_db"]["all pairs"] < steps["equalize_db"]["off"] - 3.0
    assert steps["equalize"] == "off"
    off = convert(
        model,
        tmp_path / "calib.npz",
        tmp_path / "plain",
        ConvertOptions(formats=("onnx",), latency_runs=1, bias_correction=False, equalize=False),
    )
    assert report.int8_sha256 == off.int8_sha256  # the guarded default is the plain model
    forced = convert(
        model,
        tmp_path / "calib.npz",
        tmp_path / "forced",
        ConvertOptions(formats=("onnx",), latency_runs=1, bias_correction=False, equalize=True),
    )
    assert forced.extra["steps"]["equalize"] == "all pairs"  # --equalize: every pair
    assert forced.output_sqnr_db < report.output_sqnr_db - 3.0


def test_equalization_is_kept_where_it_helps(tmp_path: Path) -> None:
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    opts = ConvertOptions(formats=("onnx",), latency_runs=1)
    report = convert(model, FIX / "mlp_calib.npz", tmp_path / "out", opts)
    steps = report.extra["steps"]
    assert steps["equalize"] == "all pairs"
    assert steps["equalize_db"]["all pairs"] > steps["equalize_db"]["off"] + 20.0


def test_bias_correction_needs_enough_samples_and_a_held_out_gain(tmp_path: Path) -> None:
    calib = np.load(FIX / "cnn_calib.npz")
    np.savez(tmp_path / "few.npz", input=calib["input"][:16])
    opts = ConvertOptions(formats=("onnx",), latency_runs=1)
    few = convert(FIX / "cnn.onnx", tmp_path / "few.npz", tmp_path / "few", opts)
    assert few.extra["steps"]["bias_correction"] is False
    assert "16 calibration samples < 32" in few.extra["steps"]["notes"]["bias_correction"]
    full = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "full", opts)
    note = full.extra["steps"]["notes"]["bias_correction"]
    off_db, on_db = (float(v) for v in re.findall(r"([-\d.]+) dB", note))
    from edgeship.converter._steps import BC_MIN_GAIN_DB

    assert full.extra["steps"]["bias_correction"] is (on_db - off_db > BC_MIN_GAIN_DB)
    forced = ConvertOptions(formats=("onnx",), latency_runs=1, bias_correction=True)
    on = convert(FIX / "cnn.onnx", tmp_path / "few.npz", tmp_path / "on", forced)
    assert on.extra["steps"]["bias_correction"] is True  # an explicit choice is kept


@pytest.mark.parametrize("with_eval", [True, False])
def test_report_html_ends_with_the_verdict(tmp_path: Path, with_eval: bool) -> None:
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    out = tmp_path / "out"
    report = convert(
        model,
        FIX / "mlp_calib.npz",
        out,
        ConvertOptions(formats=("onnx",), latency_runs=1),
        eval_path=FIX / "mlp_eval.npz" if with_eval else None,
    )
    page = (out / "report.html").read_text()
    last = re.findall(r"<p id=\"verdict\">(.*?)</p>", page)
    assert len(last) == 1 and page.rstrip().endswith(f"{last[0]}</p></body></html>")
    line = html.unescape(last[0])
    assert line.startswith("verdict: ") and "no --max-drop target" in line
    assert "steps: equalization (all pairs)" in line and "minmax ranges" in line
    if with_eval:
        assert f"agreement {report.eval['agreement']:.2f}%" in line
        assert f"drop {report.eval['fp32_accuracy'] - report.eval['int8_accuracy']:.2f}" in line
    else:
        assert f"output SQNR {report.output_sqnr_db:.1f} dB on calibration samples" in line
    assert "Accuracy steps" in page and "output SQNR on 16 calibration samples" in page


@pytest.mark.parametrize("act", ["Relu", "Clip", "LeakyRelu"])
def test_pair_ranges_equal_a_calibration_of_the_equalized_graph(act: str) -> None:
    """The guard judges each variant without calibrating it: the ranges between its pairs
    follow from per-channel min/max on the plain graph. They match a real calibration."""
    from edgeship.converter import _calibrate, _equalize
    from edgeship.converter._ir import Graph
    from edgeship.converter._steps import pair_ranges
    from test_equalize import _conv_chain

    rng = np.random.default_rng(5)
    graph = Graph.from_model(_conv_chain(rng, act))
    x = {"x": rng.normal(size=(12, 3, 6, 6)).astype(np.float32)}
    pairs = _equalize.find_pairs(graph)
    plain = _calibrate.collect(graph, x, histograms=False, channels_of=frozenset(p.tensor for p in pairs))
    low, high = plain.channel_lo, plain.channel_hi
    maxima = {p.tensor: high[p.tensor] for p in pairs if p.clip is not None}
    eq = _equalize.equalize(graph, maxima)
    assert max(float(np.max(s) / np.min(s)) for s in eq.scales.values()) > 10  # it did rescale
    derived = pair_ranges(graph, pairs, low, high, eq.scales)
    real = _calibrate.ranges(_calibrate.collect(graph, x, histograms=False).stats, "minmax", 99.9)
    unchanged = pair_ranges(graph, pairs, low, high, {})  # no scales: the plain graph's ranges
    plain_ranges = _calibrate.ranges(plain.stats, "minmax", 99.9)
    assert all(unchanged[t] == pytest.approx(plain_ranges[t]) for t in unchanged)
    assert len(derived) == 4  # c1, its activation, c2, its activation
    for name, (lo, hi) in derived.items():
        assert lo == pytest.approx(real[name][0], rel=1e-4, abs=1e-5)
        assert hi == pytest.approx(real[name][1], rel=1e-4, abs=1e-5)


def test_calibration_keeps_first_half_means_and_channel_ranges() -> None:
    """The guards' statistics come from the one calibration pass, batched or not."""
    from edgeship.converter import _calibrate
    from edgeship.converter._ir import Graph
    from test_equalize import _conv_chain

    rng = np.random.default_rng(6)
    graph = Graph.from_model(_conv_chain(rng, "Relu"))
    x = {"x": rng.normal(size=(10, 3, 6, 6)).astype(np.float32)}
    for batch in (1, 4):
        got = _calibrate.collect(graph, x, histograms=False, batch=batch, mean_of=frozenset({"a1"}),
                                 mean_split=5, channels_of=frozenset({"c1"}))
        head = _calibrate.collect(graph, {"x": x["x"][:5]}, histograms=False,
                                  mean_of=frozenset({"a1"}))
        np.testing.assert_allclose(got.head_means["a1"], head.means["a1"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got.means["a1"], got.head_means["a1"])
        assert got.channel_hi["c1"].shape == (8,)
        assert float(got.channel_hi["c1"].max()) == pytest.approx(got.stats["c1"].hi)
        assert float(got.channel_lo["c1"].min()) == pytest.approx(got.stats["c1"].lo)


def test_a_sequence_gemm_input_gets_its_mean_row() -> None:
    """A Gemm reading [T, K] rows of a batch-1 graph (a recognizer's head after its
    LSTM): the mean bias correction needs is over all T rows of all samples, not the sum
    of a sample's T rows (which was T times too large: forced bias correction on
    ddddocr_ocr fell to 3 % string match)."""
    import onnx
    from edgeship.converter import _calibrate
    from edgeship.converter._ir import Graph
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.array([5, 3], np.int64), "rows"),
             numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "rows"], ["r"]),
         helper.make_node("Gemm", ["r", "w"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = {"x": (rng.normal(size=(8, 5, 3)) + 2.0).astype(np.float32)}
    for batch in (1, 4):
        got = _calibrate.collect(Graph.from_model(onnx.shape_inference.infer_shapes(model)), x,
                                 histograms=False, batch=batch, mean_of=frozenset({"r"}))
        np.testing.assert_allclose(got.means["r"], x["x"].reshape(-1, 3).mean(axis=0), rtol=1e-5)


def test_equalization_needs_a_clear_sqnr_gain() -> None:
    """A small SQNR gain on the check keeps the plain graph (on EfficientNet-Lite0 +0.5 dB
    lost top-1 agreement); a large one (rescaled units) equalizes; the best variant wins."""
    from edgeship.converter._steps import EQUALIZE_MIN_GAIN_DB, pick_equalization

    assert pick_equalization({"off": 14.9, "all pairs": 15.4, "pairs not through Clip": 15.3}) == "off"
    assert pick_equalization({"off": 21.9, "all pairs": 21.9 + EQUALIZE_MIN_GAIN_DB - 0.1}) == "off"
    assert pick_equalization({"off": 4.3, "all pairs": 41.8}) == "all pairs"
    assert pick_equalization(
        {"off": 10.0, "all pairs": 14.0, "pairs not through Clip": 16.0}
    ) == "pairs not through Clip"
