"""GlobalAveragePool: onnxruntime and LiteRT must round every channel average the same way
(converter/_pool_ties.py). PP-OCRv4's recognizer averages 6x80 = 480 int8 values per
channel in its squeeze-excitation blocks; an average exactly halfway between two steps
(one in 480) came out one step apart in the two formats, and the excitation gate
carried that step into every value of the channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._pool_ties import tie_free_eps
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(5)
SHAPE = [1, 3, 6, 80]
CHANNELS = 48


def _squeeze_excite(path: Path) -> Path:
    inits = {"w1": RNG.normal(size=(CHANNELS, 3, 3, 3)) * 0.5, "b1": RNG.normal(size=CHANNELS) * 0.2,
             "w2": RNG.normal(size=(CHANNELS, CHANNELS, 1, 1)) * 0.3, "b2": RNG.normal(size=CHANNELS) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Conv", ["g", "w2", "b2"], ["e"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["e"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["y"])]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_global_average_pool_rounds_alike_in_onnxruntime_and_litert(tmp_path: Path) -> None:
    x = RNG.normal(size=(40, *SHAPE[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    convert(_squeeze_excite(tmp_path / "se.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    scales = {i.name: float(numpy_helper.to_array(i)) for i in written.graph.initializer
              if i.name in ("c_s", "g_s")}
    # the average's scale moved off the input's by 1 + eps: no average is a half any more
    assert np.isclose(scales["c_s"] / scales["g_s"], 1 + tie_free_eps(6 * 80, global_pool=True), rtol=1e-6)
    onnx_model = Model.load(tmp_path / "out" / "model.int8.onnx")
    lite = Model.load(tmp_path / "out" / "model.int8.tflite")
    for sample in x[16:]:  # the same integers, sample after sample
        np.testing.assert_array_equal(lite.predict(sample[None]), onnx_model.predict(sample[None]))
