"""Activations whose whole range is far below 1 (a random-weight EfficientNet-B0's later
blocks carry ranges of 1e-12) keep their own int8 parameters: a range floor of 1e-8 once
rounded every such tensor to zero and the model's INT8 output to 0 dB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._plan import MIN_RANGE, params_from_range
from onnx import TensorProto, helper, numpy_helper

SHRINK = 1e-12  # what the first Mul does to the input's scale


def _tiny_model(path: Path) -> Path:
    rng = np.random.default_rng(3)

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [
        init("shrink", np.array(SHRINK)),
        init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3),
        init("b1", rng.standard_normal(8) * 0.1 * SHRINK),
        init("w2", rng.standard_normal((10, 8)) * 0.3),
        init("b2", rng.standard_normal(10) * 0.1 * SHRINK),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "shrink"], ["small"], name="mul"),
        helper.make_node("Conv", ["small", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"], name="gap"),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flat"),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def test_a_range_far_below_one_gets_its_own_resolution() -> None:
    p = params_from_range(-3e-12, 5e-12)
    assert abs(p.scale - 8e-12 / 255) < 1e-15
    assert params_from_range(0.0, 0.0).scale > 0.0  # an all-zero tensor still has a scale
    assert params_from_range(0.0, 0.0).scale == np.float32(MIN_RANGE / 255)


def test_model_with_tiny_activations_keeps_its_output(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "tiny.onnx")
    x = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    report = convert(
        model, tmp_path / "calib.npz", tmp_path / "out",
        ConvertOptions(formats=("onnx", "tflite"), learned_rounding=False),
    )
    assert report.output_sqnr_db > 25.0  # was 0 dB with the 1e-8 floor

    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    lite = Interpreter(model_path=str(tmp_path / "out" / "model.int8.tflite"))
    lite.allocate_tensors()
    inp, out = lite.get_input_details()[0], lite.get_output_details()[0]
    signal = noise = 0.0
    for sample in x[:8]:
        want = ref.run(None, {"x": sample[None]})[0]
        lite.set_tensor(inp["index"], sample[None])
        lite.invoke()
        got = lite.get_tensor(out["index"])
        signal += float(np.sum(want.astype(np.float64) ** 2))
        noise += float(np.sum((want.astype(np.float64) - got) ** 2))
    assert 10.0 * np.log10(signal / noise) > 20.0  # LiteRT's int8 kernels too
