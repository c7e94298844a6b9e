"""ShuffleNet's channel shuffle on Ethos-U (issue 22): the generic TFLite writes it as a
GATHER of channels, which Vela leaves on the CPU; the TFLite Vela compiles writes it as
RESHAPE/TRANSPOSE (U55/U65) or a 1x1 CONV_2D with a 0/1 permutation matrix (U85), which
the NPU runs. Same values: the TFLite files give identical int8 outputs in LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._tflite import build_tflite
from edgeship.converter._tflite_macs import read_ops
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

C, G, HW = 8, 2, 6


def shuffle_model(path: Path, hw: int = HW) -> Path:
    """Conv -> channel shuffle (Reshape 5-D, Transpose, Reshape) -> Conv -> Relu."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.3, "w2")
    s5 = numpy_helper.from_array(np.array([1, G, C // G, hw, hw], np.int64), "s5")
    s4 = numpy_helper.from_array(np.array([1, C, hw, hw], np.int64), "s4")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Reshape", ["b", "s5"], ["c"], name="shuffle_reshape"),
        helper.make_node("Transpose", ["c"], ["d"], name="shuffle_transpose", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["d", "s4"], ["e"], name="shuffle_back"),
        helper.make_node("Conv", ["e", "w2"], ["f"], name="conv2"),
        helper.make_node("Relu", ["f"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, hw, hw])], [w1, w2, s5, s4])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shuffle")
    calib = root / "calib.npz"
    np.savez(calib, x=np.random.default_rng(4).uniform(-1, 1, (32, 3, HW, HW)).astype(np.float32))
    out = root / "out"
    convert(shuffle_model(root / "shuffle.onnx"), calib, out,
            ConvertOptions(formats=("onnx", "tflite"), targets=("ethos-u55-128", "ethos-u85-256")))
    return out


@pytest.mark.parametrize(("form", "convs"), [("transpose", 2), ("conv", 3)])
def test_the_npu_tflite_writes_the_shuffle_in_a_form_vela_maps_with_the_same_values(
        converted: Path, tmp_path: Path, form: str, convs: int) -> None:
    generic = converted / "model.int8.tflite"
    ops = [op.op for op in read_ops(generic.read_bytes())]
    assert "GATHER" in ops and ops.count("CONV_2D") == 2
    data, _, _ = build_tflite(converted / "model.int8.onnx", npu_shuffle=form)
    npu_ops = [op.op for op in read_ops(data)]
    assert "GATHER" not in npu_ops and npu_ops.count("CONV_2D") == convs
    (tmp_path / "npu.tflite").write_bytes(data)
    a, b = Model.load(generic), Model.load(tmp_path / "npu.tflite")
    x = np.random.default_rng(5).uniform(-1, 1, (64, 1, 3, HW, HW)).astype(np.float32)
    for sample in x:
        np.testing.assert_array_equal(a.predict(sample), b.predict(sample))


def test_vela_maps_the_shuffled_model_entirely_to_the_npu(converted: Path) -> None:
    import json

    result = json.loads((converted / "report.json").read_text())["targets"]["ethos-u55-128"]
    assert result["compiled"] and result["cpu_ops"] == []
    assert result["op_share"] == 1.0 and result["mac_share"] == 1.0
    assert result["settings"]["channel_shuffle"] == "1 as RESHAPE/TRANSPOSE"  # U55: no MACs added
    u85 = json.loads((converted / "report.json").read_text())["targets"]["ethos-u85-256"]
    assert u85["cpu_ops"] == [] and u85["settings"]["channel_shuffle"] == "1 as 1x1 permutation CONV_2D"
    # the generic TFLite keeps its GATHER for CPUs (a C x C conv per pixel would be slower)
    assert "GATHER" in [op.op for op in read_ops((converted / "model.int8.tflite").read_bytes())]


def test_a_shuffle_too_large_for_vela_transposes_takes_the_conv_form(tmp_path: Path) -> None:
    """Vela's tensor dimensions stop at 65535: [P*Cg, g] with 128x128 pixels and Cg = 4
    is 65536 long, so even the U55's form is the permutation conv there."""
    big = 128
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(6).uniform(-1, 1, (4, 3, big, big)).astype(np.float32))
    convert(shuffle_model(tmp_path / "big.onnx", big), calib, tmp_path / "out",
            ConvertOptions(formats=("onnx",)))
    data, _, _ = build_tflite(tmp_path / "out" / "model.int8.onnx", npu_shuffle="transpose")
    ops = [op.op for op in read_ops(data)]
    assert "GATHER" not in ops and ops.count("CONV_2D") == 3
