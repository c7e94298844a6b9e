"""Learned rounding's Gram matrices from calibration's own float pass (one sample at a
time) are those of its separate run up to float32 rounding (that session exposes every
tensor, so onnxruntime fuses less); a batched calibration leaves them to a run of their
own, as before. ddddocr_ocr's conversion wrote the same bytes either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import _calibrate
from edgeship.converter._ir import Graph
from edgeship.converter._learned import collect_grams
from edgeship.converter._overlap import Grams

FIX = Path(__file__).parent / "fixtures"


def _feeds(n: int) -> dict[str, np.ndarray]:
    data = np.load(FIX / "mobilenet_calib.npz")
    return {k: data[k][:n] for k in data.files}


@pytest.mark.parametrize("batch", [1, 16])
def test_grams_beside_calibration_equal_their_own_run(batch: int) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(FIX / "mobilenet.onnx"))
    feeds = _feeds(12)
    graph = Graph.from_model(model)
    grams = Grams(graph, feeds)
    _calibrate.collect(graph, feeds, batch=batch, observer=grams.observer())
    assert grams.observer() is None  # the first calibration only
    # batched (or a layer input the calibration does not fetch): a run of their own
    assert (grams.job is not None) == (batch > 1)
    inline, own, spent = grams.result()
    assert own >= spent >= 0.0
    alone = collect_grams(Graph.from_model(model), feeds)
    assert set(inline) == set(alone) and alone
    for name, layer in alone.items():
        assert inline[name].rows == layer.rows  # the same rows drawn
        if batch > 1:  # the same run
            np.testing.assert_array_equal(inline[name].gram, layer.gram)
        else:  # calibration's session exposes every tensor: onnxruntime fuses less
            scale = float(np.abs(layer.gram).max())
            np.testing.assert_allclose(inline[name].gram, layer.gram, rtol=1e-5, atol=1e-6 * scale)
