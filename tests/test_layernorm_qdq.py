"""LayerNormalization: the INT8 ONNX computes the int8 steps the TFLite file computes
(converter/_layernorm_qdq.py), so onnxruntime and LiteRT agree. Before, onnxruntime ran
the whole normalization in float between one DQ and one Q while LiteRT rounded eight
intermediates: 41 % of PP-OCRv4's first LayerNorm outputs were up to 8 steps apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edgeship.converter import ConvertOptions, convert
from edgeship.sdk import Model
from onnx import helper, numpy_helper
from onnx_graphs import save_one_io_model

RNG = np.random.default_rng(7)
SHAPE = [1, 40, 48]


def _ln_model(path: Path) -> Path:
    inits = {"w1": RNG.normal(size=(48, 48)) * 0.3, "gamma": RNG.uniform(0.5, 1.5, 48),
             "beta": RNG.normal(size=48) * 0.2, "w2": RNG.normal(size=(48, 16)) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="ln", axis=-1,
                              epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"])]
    return save_one_io_model(path, nodes, inits, SHAPE, opset=17, name="ln")


def test_layernorm_steps_are_the_same_in_onnxruntime_and_litert(tmp_path: Path) -> None:
    x = (RNG.normal(size=(24, *SHAPE[1:])) * 2 + RNG.normal(size=(1, 1, 48))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    convert(_ln_model(tmp_path / "ln.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    ops = [n.op_type for n in written.graph.node]
    assert "LayerNormalization" not in ops and ops.count("ReduceMean") == 2  # the TFLite file's steps
    onnx_model = Model.load(tmp_path / "out" / "model.int8.onnx")
    lite = Model.load(tmp_path / "out" / "model.int8.tflite")
    step = float(numpy_helper.to_array(next(i for i in written.graph.initializer if i.name == "y_s")))
    differ = 0
    for sample in x[16:]:
        a, b = onnx_model.predict(sample[None]), lite.predict(sample[None])
        differ += int((np.abs(a - b) > step / 2).sum())
    assert differ == 0, f"{differ} output values apart"


def test_tflite_written_from_the_int8_onnx_is_the_same(tmp_path: Path) -> None:
    """write_tflite (and the Ethos-U target) read the written file: each chain goes back to
    one LayerNormalization, lowered as before, byte for byte."""
    from edgeship.converter import write_tflite

    x = RNG.normal(size=(16, *SHAPE[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    convert(_ln_model(tmp_path / "ln.onnx"), tmp_path / "calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx", "tflite")))
    write_tflite(tmp_path / "out" / "model.int8.onnx", tmp_path / "again.tflite")
    assert (tmp_path / "again.tflite").read_bytes() == (tmp_path / "out" / "model.int8.tflite").read_bytes()


def test_rstd_scale_is_one_on_which_litert_rsqrt_and_onnxruntime_agree() -> None:
    """PP-OCRv4's second LayerNorm: with the calibrated rstd scale LiteRT's fixed-point
    RSQRT and onnxruntime's float 1/sqrt round one of the 256 codes apart; the scale
    match_rstd keeps gives the same integer for every code."""
    from edgeship.converter._rsqrt_ties import CODES, litert_rsqrt, match_rstd, onnxruntime_rsqrt

    s_in, z_in, s_out, z_out = 0.008852215483784676, -128, 0.0068366555497050285, -128
    positive = z_in < CODES
    before = litert_rsqrt(s_in, z_in, s_out, z_out) != onnxruntime_rsqrt(s_in, z_in, [s_out], z_out)[0]
    assert before[positive].sum() == 1
    params = match_rstd({"ln": {"variance_eps": [s_in, z_in], "rstd": [s_out, z_out]}})
    chosen = params["ln"]["rstd"][0]
    assert chosen != s_out and abs(chosen / s_out - 1) < 0.02
    after = litert_rsqrt(s_in, z_in, chosen, z_out) == onnxruntime_rsqrt(s_in, z_in, [chosen], z_out)[0]
    assert after[positive].all()
