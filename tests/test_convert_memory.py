"""Calibration and measurement stream: a bounded batch of activations at a time, running
statistics, per-layer SQNR as running sums; results equal the unbatched ones (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgeship.converter import ConvertOptions, _calibrate, _evaluate, convert
from edgeship.converter._convert import LAYER_SQNR_SAMPLES
from edgeship.converter._ir import Graph
from onnx import TensorProto, helper

FIX = Path(__file__).parent / "fixtures"


def conv_graph() -> Graph:
    """x[1,3,8,8] -> Conv(4) -> Relu -> Conv(2) -> y: 3 activations besides the input."""
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
         helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel())],
    )
    import onnx

    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return Graph.from_model(onnx.shape_inference.infer_shapes(model))


def feeds(n: int = 10) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).normal(size=(n, 3, 8, 8)).astype(np.float32)}


ONE_SAMPLE = 4 * (3 * 64 + 4 * 64 + 4 * 64 + 2 * 64)  # x, c1, r1, y of one sample


def test_batch_size_follows_the_byte_budget() -> None:
    assert _calibrate.batch_size(100, count=64, max_batch=16, batch_bytes=10_000) == 16
    assert _calibrate.batch_size(100, count=64, max_batch=16, batch_bytes=350) == 3
    assert _calibrate.batch_size(100, count=2, max_batch=16, batch_bytes=10_000) == 2
    assert _calibrate.batch_size(10**9, count=64, max_batch=16, batch_bytes=256 << 20) == 1
    assert _calibrate.batch_size(0, count=64, max_batch=16, batch_bytes=1) == 1


def test_calibration_batch_shrinks_under_a_small_budget_with_the_same_statistics() -> None:
    graph, data = conv_graph(), feeds()
    runs = {
        budget: _calibrate.collect(graph, data, histograms=True, batch_bytes=budget)
        for budget in (1 << 30, 3 * ONE_SAMPLE, 1)
    }
    assert [runs[b].batch for b in (1 << 30, 3 * ONE_SAMPLE, 1)] == [10, 3, 1]
    one = runs[1]
    assert one.tensor_bytes == {"x": 768, "c1": 1024, "r1": 1024, "y": 512}
    assert one.sample_bytes == ONE_SAMPLE
    for budget, got in runs.items():
        for name, st in one.stats.items():
            other = got.stats[name]
            assert (other.lo, other.hi, other.radius) == (st.lo, st.hi, st.radius), (budget, name)
            assert np.array_equal(other.hist, st.hist), (budget, name)
        assert got.stats["r1"].lo == 0.0 and got.stats["c1"].lo < 0.0


def test_histogram_in_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(3).normal(scale=3.0, size=10_001).astype(np.float32)
    whole = _calibrate.TensorStats()
    whole.update(x)
    monkeypatch.setattr(_calibrate, "CHUNK", 97)
    chunked = _calibrate.TensorStats()
    chunked.update(x)
    assert np.array_equal(whole.hist, chunked.hist) and whole.hist.sum() == x.size
    edges = np.linspace(-whole.radius, whole.radius, _calibrate.BINS + 1)
    assert np.array_equal(whole.hist, np.histogram(x.astype(np.float64), edges)[0])


def test_a_scalar_activation_does_not_break_batching() -> None:
    """A 0-d tensor (ReduceMean keepdims=0 over all axes) crashed the batch check."""
    import onnx

    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], keepdims=0, name="mean"),
        helper.make_node("Add", ["r", "m"], ["y"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    graph = Graph.from_model(onnx.shape_inference.infer_shapes(model))
    x = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)  # 6 samples of [1, 4]
    got = _calibrate.collect(graph, {"x": x})
    assert got.batch == 1  # the batched copy cannot hold a per-sample scalar
    means = np.maximum(x, 0).mean(axis=1)
    assert (got.stats["m"].lo, got.stats["m"].hi) == pytest.approx((means.min(), means.max()))


def test_byte_groups_cut_in_order_within_the_limit() -> None:
    assert _evaluate.byte_groups([3, 3, 3, 10, 1], 6) == [[0, 1], [2], [3], [4]]
    assert _evaluate.byte_groups([0, 0, 0], 1) == [[0, 1, 2]]
    assert _evaluate.byte_groups([], 5) == []


def test_sqnr_running_sums_equal_the_stacked_sqnr() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(8, 3, 50)).astype(np.float32)
    test = ref + rng.normal(scale=0.01, size=ref.shape).astype(np.float32)
    total = _evaluate.SqnrSum()
    for a, b in zip(ref, test, strict=True):
        total.add(a, b)
    err = ref.astype(np.float64) - test
    expected = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum(err**2))
    assert total.db() == pytest.approx(expected, abs=1e-9)
    exact = _evaluate.SqnrSum()
    exact.add(ref, ref)
    assert exact.db() == _evaluate.SQNR_CAP_DB


def test_layer_sqnr_in_groups_equals_one_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny group budget runs both models once per tensor; the numbers stay the same."""
    opts = ConvertOptions(formats=("onnx",))
    args = (FIX / "cnn.onnx", FIX / "cnn_calib.npz")
    whole = convert(*args, tmp_path / "a", opts)
    monkeypatch.setattr(_evaluate, "GROUP_BYTES", 1)
    grouped = convert(*args, tmp_path / "b", opts)
    a = {ly["tensor"]: ly["sqnr_db"] for ly in whole.layers}
    b = {ly["tensor"]: ly["sqnr_db"] for ly in grouped.layers}
    assert a.keys() == b.keys() and len(a) > 3
    assert all(v is not None for v in a.values())
    assert b == pytest.approx(a, abs=0.01)
    assert grouped.output_sqnr_db == whole.output_sqnr_db
    for f in ("model.int8.onnx", "quant_params.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["calibration"]["batch"] == 16  # the fixture's activations are small
    # per-layer SQNR on the first 8 samples (LAYER_SQNR_SAMPLES: two full-model runs each)
    assert report["layer_sqnr_samples"] == LAYER_SQNR_SAMPLES == 8
    assert "over 8 sample(s)" in (tmp_path / "a" / "report.html").read_text()


def test_layer_sqnr_samples_shrink_for_large_activations() -> None:
    gib = 1 << 30
    assert _evaluate.layer_samples(32, 1000) == 32
    assert _evaluate.layer_samples(32, gib // 2) == 8  # 4 GiB of activations
    assert _evaluate.layer_samples(32, 3 * gib) == 4  # never fewer than 4
    assert _evaluate.layer_samples(2, 3 * gib) == 2  # nor more than asked
