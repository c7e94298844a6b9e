"""OpenVINO targets (issue 22): the real OpenVINO runtime (pip openvino, in the test extra)
reads the fixtures' INT8 QDQ ONNX, compiles it for this CPU and must take the INT8 path;
its outputs and latency are compared with onnxruntime on the same model and inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openvino as ov
import pytest
from edgeship.converter._target_openvino import INT8, compute_nodes, node_precisions

FIX = Path(__file__).parent / "fixtures"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGESHIP_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "edgeship", "convert", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_openvino_cpu_takes_the_int8_path_and_agrees_with_onnxruntime(
    tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    res = run_cli(FIX / f"{name}.onnx", "--calib", FIX / f"{name}_calib.npz", "-o", out,
                  "--eval", FIX / f"{name}_eval.npz", "--target", "openvino-cpu")
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())["targets"]["openvino-cpu"]
    assert result["compiled"] and result["compiler"].startswith("openvino ")
    assert result["int8_path"] is True and result["cpu_ops"] == []
    assert result["ops_total"] >= 5 and result["ops_on_npu"] == result["ops_total"]
    assert result["samples"] == 8 and result["top1_agreement"] >= 99.0
    assert result["max_abs_diff"] < 0.02  # the same int8 arithmetic, 1/256 output grid
    assert result["latency_ms"] > 0 and result["onnxruntime_latency_ms"] > 0
    assert result["speedup"] == pytest.approx(
        result["onnxruntime_latency_ms"] / result["latency_ms"], rel=0.01)
    assert result["artifact"] is None  # OpenVINO reads model.int8.onnx itself
    assert "openvino-cpu" in res.stdout and "vs onnxruntime" in res.stdout


def test_the_int8_check_sees_a_float_model_as_float() -> None:
    """The same check on the fp32 fixture: its convolutions run in f32 (so a QDQ model
    whose INT8 path were not taken would be reported, not passed)."""
    compiled = ov.Core().compile_model(str(FIX / "cnn.onnx"), "CPU")
    nodes = compute_nodes(FIX / "cnn.onnx")
    assert {op for _, op in nodes} == {"Conv", "Gemm"} and len(nodes) >= 5
    rows = node_precisions(compiled.get_runtime_model(), nodes)
    assert [r[0] for r in rows] == [n for n, _ in nodes]
    assert all(precision not in INT8 for _, _, precision, _ in rows)
    assert all("not int8" in why or "not found" in why for *_, why in rows)


def test_openvino_npu_without_a_device_is_not_compiled_exit_2(tmp_path: Path) -> None:
    if "NPU" in ov.Core().available_devices:
        pytest.fail("this machine has an Intel NPU: the test expects none (write its case)")
    out = tmp_path / "o"
    res = run_cli(FIX / "cnn.onnx", "--calib", FIX / "cnn_calib.npz", "-o", out,
                  "--target", "openvino-cpu", "--target", "openvino-npu")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: openvino-npu not compiled: no NPU device on this machine (OpenVINO sees: CPU")
    targets = json.loads((out / "report.json").read_text())["targets"]
    assert targets["openvino-cpu"]["compiled"] is True  # the other target still ran
    assert targets["openvino-npu"]["compiled"] is False
    assert (out / "model.int8.onnx").is_file()
    assert "not compiled" in (out / "report.html").read_text()


def test_openvino_names_map_back_to_onnx_nodes() -> None:
    from edgeship.converter._target_openvino import _node_of

    wanted = {"conv_3_node", "/model.0/conv/Conv", "p2o.Conv.1"}
    assert _node_of("conv_3_node/WithoutBiases", wanted) == "conv_3_node"
    assert _node_of("/model.0/conv/Conv/WithoutBiases", wanted) == "/model.0/conv/Conv"
    assert _node_of("/model.0/conv/Conv", wanted) == "/model.0/conv/Conv"
    assert _node_of("p2o.Conv.1", wanted) == "p2o.Conv.1"
    assert _node_of("Multiply_5477", wanted) is None and _node_of("/model.0", wanted) is None
