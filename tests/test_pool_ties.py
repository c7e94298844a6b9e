"""AveragePool: onnxruntime and LiteRT must round every average the same way
(converter/_pool_ties.py). A 3x2 window of int8 values lands exactly halfway between two
steps for about one pooled value in six; with the input's scale kept, onnxruntime rounded
those halves to even and LiteRT's AVERAGE_POOL_2D away from zero (PP-OCRv4's recognizer:
9 % of its pooled values one step apart)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._pool_ties import tie_free_eps
from edgeship.sdk import Model
from onnx import helper, numpy_helper
from onnx_graphs import save_one_io_model

RNG = np.random.default_rng(3)
SHAPE = [1, 4, 12, 16]


def _pool_model(path: Path) -> Path:
    inits = {"w1": RNG.normal(size=(24, 4, 3, 3)) * 0.5, "b1": RNG.normal(size=24) * 0.2,
             "w2": RNG.normal(size=(8, 24, 1, 1)) * 0.3, "b2": RNG.normal(size=8) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[3, 2], strides=[3, 2]),
             helper.make_node("Conv", ["p", "w2", "b2"], ["y"], kernel_shape=[1, 1])]
    return save_one_io_model(path, nodes, inits, SHAPE, opset=13, name="pool")


def test_average_pool_rounds_alike_in_onnxruntime_and_litert(tmp_path: Path) -> None:
    x = RNG.normal(size=(24, *SHAPE[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    convert(_pool_model(tmp_path / "pool.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    inits = {i.name: float(numpy_helper.to_array(i)) for i in written.graph.initializer
             if i.name in ("c_s", "p_s")}
    # the output scale moved off the input's by 1 + eps: no average is a half any more
    assert np.isclose(inits["c_s"] / inits["p_s"], 1 + tie_free_eps(6), rtol=1e-6)
    onnx_model = Model.load(tmp_path / "out" / "model.int8.onnx")
    lite = Model.load(tmp_path / "out" / "model.int8.tflite")
    for sample in x:  # the same integers, sample after sample
        np.testing.assert_array_equal(lite.predict(sample[None]), onnx_model.predict(sample[None]))
