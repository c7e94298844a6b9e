"""OpenVINO targets (issue 22): the real OpenVINO runtime (pip openvino, in the test extra)
reads the fixtures' INT8 QDQ ONNX, compiles it for this CPU and must take the INT8 path;
its outputs and latency are compared with onnxruntime on the same model and inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
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
    # the speedup is paired per round (paired_ratio), near the ratio of the medians
    assert 0.25 < result["speedup"] / (result["onnxruntime_latency_ms"] / result["latency_ms"]) < 4
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


def _silu_net(path: Path) -> Path:
    """A float conv net with SiLU blocks and a squeeze-excitation sigmoid gate."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits, nodes = [], []

    def conv(x: str, out: str, cin: int, cout: int, k: int) -> str:
        inits.extend([numpy_helper.from_array((rng.normal(size=(cout, cin, k, k)) * 0.3).astype(np.float32), f"{out}_w"),
                      numpy_helper.from_array((rng.normal(size=cout) * 0.1).astype(np.float32), f"{out}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{out}_w", f"{out}_b"], [out], kernel_shape=[k, k],
                                      pads=[k // 2] * 4))
        return out

    def silu(x: str, out: str) -> str:
        nodes.extend([helper.make_node("Sigmoid", [x], [f"{out}_sig"]),
                      helper.make_node("Mul", [x, f"{out}_sig"], [out])])
        return out

    h = silu(conv("x", "c1", 3, 16, 3), "s1")
    h = silu(conv(h, "c2", 16, 16, 3), "s2")
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pool"]))
    nodes.append(helper.make_node("Sigmoid", [conv("pool", "se", 16, 16, 1)], ["gate"]))
    nodes.append(helper.make_node("Mul", [h, "gate"], ["scaled"]))
    nodes.append(helper.make_node("GlobalAveragePool", [conv("scaled", "c3", 16, 10, 1)], ["p2"]))
    nodes.append(helper.make_node("Flatten", ["p2"], ["y"]))
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    np.savez(path.with_suffix(".npz"), x=rng.uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32))
    return path


def test_silu_blocks_are_written_for_openvinos_fusion(tmp_path: Path) -> None:
    """SiLU blocks and the sigmoid gate lose their inner Q/DQ pairs in
    model.int8.openvino-cpu.onnx, which OpenVINO compiles into int8 convolutions with the
    sigmoid fused (no float subgraph left for them); the report measures the difference to
    onnxruntime on the generic INT8 ONNX."""
    import onnx
    from edgeship.converter._openvino_prep import fused_for_openvino

    model = _silu_net(tmp_path / "silu.onnx")
    out = tmp_path / "out"
    res = run_cli(model, "--calib", model.with_suffix(".npz"), "-o", out, "--target", "openvino-cpu")
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "report.json").read_text())["targets"]["openvino-cpu"]
    assert result["fused_blocks"] == 3 and result["int8_path"] is True
    # kept when it ran faster here (measured against the generic model at each convert)
    kept = result["artifact"] == "model.int8.openvino-cpu.onnx"
    assert kept == result["prepared_kept"] == (out / "model.int8.openvino-cpu.onnx").exists()
    generic = onnx.load(str(out / "model.int8.onnx"))
    prepared, _ = fused_for_openvino(generic)
    onnx.save(prepared, str(tmp_path / "prepared.onnx"))
    count = [n.op_type for n in generic.graph.node].count("QuantizeLinear")
    assert [n.op_type for n in prepared.graph.node].count("QuantizeLinear") == count - 5
    assert fused_for_openvino(prepared)[1] == 0  # nothing left to rewrite
    compiled = ov.Core().compile_model(str(tmp_path / "prepared.onnx"), "CPU")
    fused = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    sigmoids = {n.output[0]: n.name for n in prepared.graph.node if n.op_type == "Sigmoid"}
    blocks = {*sigmoids.values(), *(n.name for n in prepared.graph.node
                                    if n.op_type == "Mul" and any(i in sigmoids for i in n.input))}
    # each SiLU (named by its Mul) and the gate (its Sigmoid) is inside an int8 convolution
    assert sum(any(b in names.split(",") for b in blocks) for names in fused) == 3


def test_latency_is_taken_in_alternating_warm_blocks() -> None:
    """Both runtimes are timed in blocks of BLOCK calls (the first of a block, right after
    the other runtime ran, not counted), the order reversed each round; each median is
    at least the work its call does (a ratio bound would be flaky on a loaded machine)."""
    import time

    from edgeship.converter._target_openvino import BLOCK, _latencies_ms

    log: list[str] = []

    def work(name: str, seconds: float) -> Callable[[], object]:
        def call() -> None:
            log.append(name)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        return call

    slow_ms, fast_ms = _latencies_ms([work("a", 0.004), work("b", 0.002)], runs=50)
    assert slow_ms >= 4.0 and fast_ms >= 2.0
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up: two calls each
    blocks = [log[i:i + BLOCK] for i in range(4, len(log), BLOCK)]
    assert len(blocks) >= 10 and all(len(set(b)) == 1 and len(b) == BLOCK for b in blocks)
    firsts = [b[0] for b in blocks]
    assert firsts[:4] == ["a", "b", "b", "a"]  # a round is a then b, the next b then a


def test_the_speedup_pairs_each_round_so_a_passing_load_cancels() -> None:
    """Each round's two blocks ran back to back: a round slowed 5x for both leaves the
    ratio as it is, where the ratio of overall medians would take in which blocks the
    load happened to hit."""
    from edgeship.converter._target_openvino import paired_ratio

    load = [1.0, 5.0, 5.0, 1.0, 5.0]
    ort = [[1.2 * f, 1.2 * f, 1.2 * f] for f in load]
    ov = [[1.0 * f, 1.0 * f, 1.0 * f] for f in load]
    assert paired_ratio(ort, ov) == pytest.approx(1.2)
    ov[1] = [1.0, 1.0, 1.0]  # the load missed one OpenVINO block: one round's outlier
    assert paired_ratio(ort, ov) == pytest.approx(1.2)
    assert paired_ratio([[2.0], [3.0], [4.0]], [[1.0], [3.0], [1.0]]) == pytest.approx(2.0)
