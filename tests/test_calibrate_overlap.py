"""Calibration runs later samples on worker threads while it counts one (each run is
single-threaded, so the statistics are exactly the sequential ones), and keeps the float
output of the samples the later checks compare against, so they run no float model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import _calibrate, _evaluate
from edgeship.converter._ir import Graph

FIX = Path(__file__).parent / "fixtures"


def _mobilenet(n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    data = np.load(FIX / "mobilenet_calib.npz")
    model = onnx.shape_inference.infer_shapes(onnx.load(FIX / "mobilenet.onnx"))
    return model, {k: data[k][:n] for k in data.files}


@pytest.mark.parametrize("batch", [1, 4])
def test_runs_ahead_give_the_sequential_statistics(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, feeds = _mobilenet(11)
    got = {}
    for ahead in (0, 2):
        monkeypatch.setattr(_calibrate, "AHEAD", ahead)
        graph = Graph.from_model(model)
        mean_of = frozenset(graph.activations()[:5])
        got[ahead] = _calibrate.collect(
            graph, feeds, batch=batch, mean_of=mean_of, mean_split=5, record=frozenset({0, 3, 7})
        )
    seq, par = got[0], got[2]
    assert par.batch == seq.batch == batch
    for name, st in seq.stats.items():
        other = par.stats[name]
        assert (other.lo, other.hi, other.radius) == (st.lo, st.hi, st.radius), name
        assert np.array_equal(other.hist, st.hist), name
    for a, b in ((seq.means, par.means), (seq.head_means, par.head_means)):
        assert a.keys() == b.keys() and a
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert sorted(par.outputs) == [0, 3, 7]
    for i in par.outputs:
        np.testing.assert_array_equal(par.outputs[i], seq.outputs[i])


@pytest.mark.parametrize("batch", [1, 4])
def test_recorded_outputs_are_the_float_models(batch: int) -> None:
    model, feeds = _mobilenet(9)
    got = _calibrate.collect(Graph.from_model(model), feeds, batch=batch,
                             record=frozenset(range(2, 9)))
    assert got.recorded(0, 4) is None  # samples 0 and 1 were not asked for
    kept = got.recorded(2, 9)
    assert kept is not None and len(kept) == 7
    sess = _evaluate.session(model)
    name = sess.get_outputs()[0].name
    for i, value in zip(range(2, 9), kept, strict=True):
        want = sess.run([name], {k: v[i : i + 1] for k, v in feeds.items()})[0]
        assert value.shape == want.shape
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5)
    # the SQNR against them is the one against a float session on the same samples
    tail = {k: v[2:9] for k, v in feeds.items()}
    noisy = _evaluate.session(model)  # stands in for the int8 model: its own run, exact
    p32, p8, db = _evaluate.compare_outputs(None, noisy, tail, kept)
    q32, q8, db_run = _evaluate.compare_outputs(sess, noisy, tail)
    assert np.array_equal(p32, q32) and np.array_equal(p8, q8)
    assert db > 60.0 and db_run == _evaluate.SQNR_CAP_DB


def test_nothing_kept_past_the_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = _mobilenet(4)
    monkeypatch.setattr(_calibrate, "RECORD_BYTES", 16)
    got = _calibrate.collect(Graph.from_model(model), feeds, record=frozenset(range(4)))
    assert got.outputs == {} and got.recorded(0, 4) is None


def test_a_failing_sample_ahead_is_one_calibration_error() -> None:
    model, feeds = _mobilenet(6)
    bad = {k: v.copy() for k, v in feeds.items()}
    graph = Graph.from_model(model)
    sess, fetch = _calibrate._session(graph, dynamic_batch=False)
    chunks = [(i, i + 1) for i in range(6)]
    runs = _calibrate._in_order(sess, fetch, {k: v[:, :1] for k, v in bad.items()}, chunks, None, 2)
    with pytest.raises(_calibrate.CalibrationError, match="calibration sample 0"):
        next(runs)
