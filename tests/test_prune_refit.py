"""Pruning with reconstruction (converter/_reconstruct.py, converter/_prune_refit.py): the
refit keeps every pruned weight at zero and lowers the layer's output error against the
dense fp32 layer, measured by onnxruntime on held-out samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import _reconstruct
from edgeship.converter._evaluate import run_all, session
from edgeship.converter._ir import Graph
from edgeship.converter._optimize import optimize
from edgeship.converter._prune_refit import prune_and_refit

FIX = Path(__file__).parent / "fixtures"


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))  # correlated inputs
    w = rng.normal(size=(6, 24))
    kept = np.abs(w) > np.quantile(np.abs(w), 0.5)
    return x, w, kept, x.T @ x


def test_exact_refit_is_the_least_squares_fit_over_the_kept_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, w, kept, h = _problem()
    monkeypatch.setattr(_reconstruct, "DAMPING", 1e-9)  # no ridge: plain least squares
    fitted = _reconstruct.refit(w, kept, h)
    assert fitted is not None
    for o in range(len(w)):  # lstsq of the dense outputs on the kept inputs
        s = kept[o]
        ref = np.linalg.lstsq(x[:, s], x @ w[o], rcond=None)[0]
        np.testing.assert_allclose(fitted[o, s], ref, rtol=1e-5, atol=1e-6)
    assert np.all(fitted[~kept] == 0.0)
    monkeypatch.setattr(_reconstruct, "DAMPING", 1e6)  # all ridge: magnitude pruning
    np.testing.assert_allclose(_reconstruct.refit(w, kept, h), w * kept, atol=1e-4)


def test_both_solvers_lower_output_error_and_keep_the_zeros(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, w, kept, h = _problem(1)
    monkeypatch.setattr(_reconstruct, "DAMPING", 0.01)  # the solvers, not the ridge
    exact = _reconstruct.refit(w, kept, h)
    monkeypatch.setattr(_reconstruct, "EXACT_FLOPS", 0.0)  # the OBS sweep for large layers
    sweep = _reconstruct.refit(w, kept, h)
    assert exact is not None and sweep is not None
    magnitude, e_exact, e_sweep = (
        _reconstruct.output_error(w, v, h) for v in (w * kept, exact, sweep)
    )
    assert e_exact < 0.5 * magnitude and e_exact <= e_sweep < magnitude
    for fitted in (exact, sweep):
        assert np.all(fitted[~kept] == 0.0) and np.all(fitted[kept] != 0.0)


def test_cross_statistics_make_up_for_an_input_error() -> None:
    """With inputs x' = x + noise (earlier layers pruned), the target is W x: the refit
    with C = sum x' x^T lands closer to it than the one that ignores the input error."""
    x, w, kept, _ = _problem(2)
    xp = x + np.random.default_rng(3).normal(scale=0.5, size=x.shape)
    h, c, hd = xp.T @ xp, xp.T @ x, x.T @ x
    seq, plain = _reconstruct.refit(w, kept, h, c), _reconstruct.refit(w, kept, h)
    assert seq is not None and plain is not None
    err = [_reconstruct.output_error(w, v, h, c, hd) for v in (w * kept, plain, seq)]
    assert err[2] < err[1] < err[0]
    np.testing.assert_allclose(  # output_error agrees with the direct sum
        err[2], np.sum((xp @ seq.T - x @ w.T) ** 2), rtol=1e-6
    )


def _graphs(name: str, sparsity: float) -> tuple[Graph, Graph, Graph, dict[str, np.ndarray]]:
    calib = dict(np.load(FIX / f"{name}_calib.npz"))
    made = []
    for reconstruct in (None, False, True):
        g = Graph.from_model(onnx.load(FIX / f"{name}.onnx"))
        optimize(g)
        if reconstruct is not None:
            prune_and_refit(g, calib, sparsity, reconstruct=reconstruct)
        made.append(g)
    return made[0], made[1], made[2], calib


def _error(dense: Graph, other: Graph, tensor: str, feeds: dict[str, np.ndarray]) -> float:
    """Squared error of ``tensor`` in ``other`` against the dense model, summed."""
    extra = [] if tensor in dense.output_names else [tensor]
    a = run_all(session(dense.to_model(extra_outputs=extra)), feeds, [tensor])[0]
    b = run_all(session(other.to_model(extra_outputs=extra)), feeds, [tensor])[0]
    return float(np.sum((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.parametrize(("name", "sparsity"), [("cnn", 0.5), ("mlp", 0.6)])
def test_reconstruction_beats_magnitude_on_held_out_samples(name: str, sparsity: float) -> None:
    dense, magnitude, refit, _ = _graphs(name, sparsity)
    ev = {k: v for k, v in np.load(FIX / f"{name}_eval.npz").items() if k != "label"}
    pruned = [
        n for n in refit.nodes
        if n.op_type in ("Conv", "Gemm", "MatMul") and not np.array_equal(
            magnitude.inits[n.input[1]], dense.inits[n.input[1]]
        )
    ]
    for node in pruned:
        w_mag, w_fit = magnitude.inits[node.input[1]], refit.inits[node.input[1]]
        np.testing.assert_array_equal(w_mag == 0.0, w_fit == 0.0)  # the same pattern
    weighted = [  # refit (a layer with fewer calibration rows than 2 K keeps magnitude)
        n for n in pruned
        if not np.array_equal(magnitude.inits[n.input[1]], refit.inits[n.input[1]])
    ]
    assert len(weighted) >= 2
    first = weighted[0].output[0]  # same inputs in both: the layer's own error
    assert _error(dense, refit, first, ev) < 0.8 * _error(dense, magnitude, first, ev)
    out = dense.output_names[0]
    assert _error(dense, refit, out, ev) < _error(dense, magnitude, out, ev)


def test_report_says_what_reconstruction_recovered(tmp_path: Path) -> None:
    from edgeship.converter import ConvertOptions, convert

    opts = ConvertOptions(formats=("onnx",), prune=0.5, latency_runs=1)
    r = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "o", opts,
                eval_path=FIX / "cnn_eval.npz")
    rec = r.pruning["reconstruction"]
    assert rec["layers"] >= 2 and rec["layer_error_gain_db"] > 0
    assert rec["reconstructed_sqnr_db"] > rec["magnitude_sqnr_db"]
    assert "magnitude_accuracy" in rec and "reconstructed_accuracy" in rec
    assert any(line.startswith("prune reconstruction:") for line in r.optimizations)
    assert "pruning reconstruction" in (tmp_path / "o" / "report.html").read_text()
    off = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "m",
                  ConvertOptions(formats=("onnx",), prune=0.5, reconstruct=False, latency_runs=1))
    assert "reconstruction" not in off.pruning
    assert off.pruning["achieved"] == pytest.approx(r.pruning["achieved"])


def test_a_refit_model_further_from_the_dense_one_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole-model guard: when the refit model's output is further from the dense
    model's than magnitude pruning's, every weight and bias goes back to magnitude."""
    from edgeship.converter import _prune_refit

    _, magnitude, _, calib = _graphs("cnn", 0.5)
    seen: list[tuple[float, float]] = []
    real = _prune_refit._worse

    def judged(*args: object) -> bool:
        seen.append((0.0, 0.0))
        assert real(*args) is False  # on this model the refit is closer to the dense one
        return True  # as if it were not

    monkeypatch.setattr(_prune_refit, "_worse", judged)
    g = Graph.from_model(onnx.load(FIX / "cnn.onnx"))
    optimize(g)
    result = prune_and_refit(g, calib, 0.5)
    assert seen and result.refit is not None and result.refit.reverted
    assert result.refit.to_dict()["kept"].startswith("magnitude only")
    for name, value in magnitude.inits.items():
        np.testing.assert_array_equal(g.inits[name], value)
