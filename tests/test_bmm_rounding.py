"""MatMul of two activations: the INT8 ONNX rounds the int32 accumulator the way LiteRT's
BATCH_MATMUL does (gemmlowp's two roundings, converter/_bmm_rounding.py). onnxruntime
rounded once: 0.4 % of PP-OCRv4's attention scores were a step apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgeship.converter import ConvertOptions, convert, write_tflite
from edgeship.converter._bmm_rounding import tflite_requantize
from edgeship.sdk import Model
from onnx import helper
from onnx_graphs import save_one_io_model

RNG = np.random.default_rng(11)
SHAPE = [1, 4, 40, 24]


def _attention(path: Path) -> Path:
    inits = {"wq": RNG.normal(size=(24, 15)) * 0.4, "wk": RNG.normal(size=(24, 15)) * 0.4}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    return save_one_io_model(path, nodes, inits, SHAPE, opset=17, name="attn")


def test_requantize_matches_gemmlowp_double_rounding() -> None:
    # 3483 * M = 22.497...: 22 rounded once, 23 after gemmlowp's first rounding to 1/128 of a
    # step (PP-OCRv4: LiteRT 13 with zero point -10, onnxruntime 12)
    assert tflite_requantize(np.array([3483]), 0.0064594, -10)[0] == 13
    assert tflite_requantize(np.array([-3483, 100, 0]), 0.0064594, 0).tolist() == [-23, 1, 0]


def test_matmul_of_two_activations_rounds_alike_in_onnxruntime_and_litert(tmp_path: Path) -> None:
    x = RNG.normal(size=(24, *SHAPE[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    convert(_attention(tmp_path / "attn.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    onnx_model = Model.load(tmp_path / "out" / "model.int8.onnx")
    lite = Model.load(tmp_path / "out" / "model.int8.tflite")
    for sample in x[16:]:
        np.testing.assert_array_equal(lite.predict(sample[None]), onnx_model.predict(sample[None]))
    # the TFLite writer reading the written file puts the MatMul back: the same bytes
    write_tflite(tmp_path / "out" / "model.int8.onnx", tmp_path / "again.tflite")
    assert (tmp_path / "again.tflite").read_bytes() == (tmp_path / "out" / "model.int8.tflite").read_bytes()
