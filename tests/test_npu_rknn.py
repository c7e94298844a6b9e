"""Rockchip NPU targets (issue 22): ``edgeship convert --target rk3588`` runs Rockchip's
rknn-toolkit2 in its own environment (``EDGESHIP_RKNN_PYTHON``) on our QDQ ONNX.

Always run: the one error without the toolkit, and that the toolkit-ready ONNX computes
exactly what ours does. With the toolkit (its environment needs torch 2.4 and ~4 GB of
CUDA wheels from PyPI, too slow for .ci/run, so these run where EDGESHIP_RKNN_PYTHON is
set, e.g. hw-bench): a real compile of the cnn fixture for three chips, the simulator's
agreement with our INT8 ONNX on the eval set, and the agent-side runtime up to the
hardware boundary (the .rknn's inputs/outputs read from the file; rknn-toolkit-lite2
itself exists only for aarch64/armhf boards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert

from edgeship._errors import ModelLoadError

FIX = Path(__file__).parent / "fixtures"
TOOLKIT = os.environ.get("EDGESHIP_RKNN_PYTHON", "")
needs_toolkit = pytest.mark.skipif(
    not (TOOLKIT and Path(TOOLKIT).is_file()),
    reason="rknn-toolkit2 environment not set up (EDGESHIP_RKNN_PYTHON); hw-bench runs it")


def convert_cli(out: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeship", "convert", str(FIX / "cnn.onnx"), "--calib",
         str(FIX / "cnn_calib.npz"), "-o", str(out), *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env})


@pytest.mark.parametrize(("value", "words"), [
    ("", "EDGESHIP_RKNN_PYTHON is not set"),
    ("/nonexistent/python", "is not an executable python"),
])
def test_without_the_toolkit_one_error_says_how_to_set_it_up(
        tmp_path: Path, value: str, words: str) -> None:
    res = convert_cli(tmp_path / "out", "--target", "rk3588", env={"EDGESHIP_RKNN_PYTHON": value})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "pip install rknn-toolkit2" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_toolkit_ready_onnx_computes_what_ours_does(tmp_path: Path) -> None:
    import onnxruntime as ort
    from edgeship.converter._target_rknn import toolkit_ready_onnx

    convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "out",
            ConvertOptions(formats=("onnx",)))
    ours = tmp_path / "out" / "model.int8.onnx"
    toolkit_ready_onnx(ours, tmp_path / "ready.onnx")
    ready = onnx.load(str(tmp_path / "ready.onnx"))
    onnx.checker.check_model(ready)
    inits = {i.name for i in ready.graph.initializer}
    assert all(len(n.input) == 3 for n in ready.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    assert not any(n.op_type == "Mul" and all(i in inits for i in n.input)
                   for n in ready.graph.node)
    assert any(n.op_type == "Mul" and all(i in inits for i in n.input)
               for n in onnx.load(str(ours)).graph.node)  # there was something to fold
    x = np.load(FIX / "cnn_eval.npz")["input"][:32]
    a = ort.InferenceSession(str(ours), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "ready.onnx"), providers=["CPUExecutionProvider"])
    for i in range(len(x)):
        np.testing.assert_array_equal(a.run(None, {"input": x[i:i + 1]})[0],
                                      b.run(None, {"input": x[i:i + 1]})[0])


def test_the_toolkit_ready_onnx_drops_only_a_default_rnn_layout(tmp_path: Path) -> None:
    """rknn-toolkit2 2.5's checker knows no LSTM ``layout`` ("Unrecognized attribute:
    layout for operator LSTM" on torch's CRNN export): 0, the default, goes; the rest stays."""
    from edgeship.converter._target_rknn import toolkit_ready_onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(1, 16, 4)).astype(np.float32), "w")
    r = numpy_helper.from_array(rng.normal(size=(1, 16, 4)).astype(np.float32), "r")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4, layout=0,
                          direction="forward")],
        "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, 4])], [w, r])
    src = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), src)
    toolkit_ready_onnx(src, tmp_path / "ready.onnx")
    (lstm,) = onnx.load(str(tmp_path / "ready.onnx")).graph.node
    assert {a.name: helper.get_attribute_value(a) for a in lstm.attribute} == {
        "hidden_size": 4, "direction": b"forward"}


@needs_toolkit
def test_cnn_compiles_for_three_rockchip_npus_and_the_simulator_agrees(tmp_path: Path) -> None:
    from edgeship.sdk import Model
    from edgeship.sdk.runtime._runtime_rknn import rknn_io

    out = tmp_path / "out"
    res = convert_cli(out, "--eval", str(FIX / "cnn_eval.npz"), "--target", "rk3588",
                      "--target", "rk3566", "--target", "rv1106", env={})
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())["targets"]
    ref = Model.load(out / "model.int8.onnx")
    for target in ("rk3588", "rk3566", "rv1106"):
        result = report[target]
        assert result["compiled"] and result["compiler"].startswith("rknn-toolkit2 2.")
        assert result["samples"] == 100  # the eval set, not the 8 latency samples
        assert result["top1_agreement"] >= 99.0
        assert result["top1_within_step"] >= result["top1_agreement"]
        # our weight scales given back to the toolkit and no fused roundings: the
        # simulator computes our INT8 ONNX's numbers exactly (7 steps off before)
        assert result["restored_scales"] > 0
        assert result["max_diff_steps"] == 0.0
        assert result["macs_total"] > 0 and result["mac_share"] == 1.0
        artifact = out / f"model.{target}.rknn"
        assert result["artifact"] == artifact.name and artifact.read_bytes()[:4] == b"RKNN"
        inputs, outputs = rknn_io(artifact.read_bytes())
        assert [(s.name, s.shape) for s in inputs] == [(s.name, s.shape) for s in ref.inputs]
        assert [(s.name, s.shape) for s in outputs] == [(s.name, s.shape) for s in ref.outputs]
        # the hardware boundary: past the file's own description only a board runs it
        with pytest.raises(ModelLoadError, match="rknn-toolkit-lite2"):
            Model.load(artifact)
    assert "rk3566" in res.stdout and "model.rk3566.rknn" in res.stdout


@needs_toolkit
def test_a_compiled_rknn_file_is_a_release_variant(tmp_path: Path) -> None:
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release

    out = tmp_path / "out"
    convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", out,
            ConvertOptions(formats=("onnx",), targets=("rk3588",)))
    KeyDir(tmp_path / "keys").init()
    rel = Release.build(out / "model.int8.onnx", version="1.0.0", keydir=tmp_path / "keys",
                        out=tmp_path / "rel", variants={"rk3588": out / "model.rk3588.rknn"})
    assert rel.manifest.variants["rk3588"].format == "rknn"
    assert rel.read_variant("rk3588") == (out / "model.rk3588.rknn").read_bytes()
