"""GlobalAveragePool: onnxruntime and LiteRT must round every channel average the same way
(converter/_pool_ties.py). PP-OCRv4's recognizer averages 6x80 = 480 int8 values per
channel in its squeeze-excitation blocks; an average exactly halfway between two steps
(one in 480) came out one step apart in the two formats, and the excitation gate
carried that step into every value of the channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._pool_ties import tie_free_eps
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import save_one_io_model

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
    return save_one_io_model(path, nodes, inits, SHAPE, opset=13, name="se")


def test_global_average_pool_rounds_alike_in_onnxruntime_and_litert(tmp_path: Path) -> None:
    x = RNG.normal(size=(40, *SHAPE[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    convert(_squeeze_excite(tmp_path / "se.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    scales = {i.name: float(numpy_helper.to_array(i)) for i in written.graph.initializer
              if i.name in ("c_s", "g_s")}
    # the average's scale moved off the input's by 1 + eps: no average is a half any more
    assert np.isclose(scales["c_s"] / scales["g_s"], 1 + tie_free_eps(6 * 80), rtol=1e-6)
    onnx_model = Model.load(tmp_path / "out" / "model.int8.onnx")
    lite = Model.load(tmp_path / "out" / "model.int8.tflite")
    for sample in x[16:]:  # the same integers, sample after sample
        np.testing.assert_array_equal(lite.predict(sample[None]), onnx_model.predict(sample[None]))



def test_every_halfway_average_of_480_values_rounds_alike() -> None:
    """PP-OCRv4's pooled parameters (scale 0.27046, zero point -122) and the tie-free
    output scale, channel sums built to be exactly halfway (averages k + 1/2): the same
    integer in both runtimes. LiteRT's MEAN (sums in float32 with the zero point in every
    value) was ~1e-5 off at k = 0 and rounded 0.5 + 4e-6 down; the window is now a
    DEPTHWISE_CONV_2D summed in int32."""
    from ai_edge_litert.interpreter import Interpreter
    from edgeship.converter._tflite import build_tflite

    channels, n, zp = 480, 6 * 80, -122
    s_in = 0.2704618573188782
    s_out = float(np.float32(s_in / (1.0 + tie_free_eps(n))))
    inits = [numpy_helper.from_array(np.array(v, d), k) for k, v, d in
             (("x_s", s_in, np.float32), ("x_z", zp + 128, np.uint8),
              ("g_s", s_out, np.float32), ("g_z", zp + 128, np.uint8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("GlobalAveragePool", ["xd"], ["g"], name="gap"),
             helper.make_node("QuantizeLinear", ["g", "g_s", "g_z"], ["gq"]),
             helper.make_node("DequantizeLinear", ["gq", "g_s", "g_z"], ["y"])]
    graph = helper.make_graph(nodes, "gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [1, channels, 6, 80])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    k = np.arange(channels) % 250 - 2  # q - zero point, within the int8 range
    q = np.repeat(k[:, None], n, axis=1)
    q[:, : n // 2] += 1  # sum = n k + n / 2
    x = (np.float32(s_in) * q.astype(np.float32)).reshape(1, channels, 6, 80)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.rint(session.run(None, {"x": x})[0].ravel() / np.float32(s_out))
    interp = Interpreter(model_content=build_tflite(model)[0])
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], x if tuple(detail["shape"]) == x.shape else x.transpose(0, 2, 3, 1))
    interp.invoke()
    got = np.rint(interp.get_tensor(interp.get_output_details()[0]["index"]).ravel() / np.float32(s_out))
    np.testing.assert_array_equal(got, ref)
    assert np.array_equal(ref[k >= 0], k[k >= 0] + 1)  # halves moved away from zero
