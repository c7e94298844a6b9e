"""``--calibration auto`` (converter/_range_choice.py + the onnxruntime probe in
converter/_accuracy.py): the greedy choice keeps only what lowers the measured error, the
probe measures what the built QDQ model really does, and a calibration outlier that
minmax lets ruin a tensor's resolution is clipped, in both formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, _accuracy, _calibrate, convert
from edgeship.converter._ir import Graph
from edgeship.converter._plan import make_plan
from edgeship.converter._quantize import build_qdq
from edgeship.converter._range_choice import candidates, choose
from onnx import TensorProto, helper, numpy_helper


def test_choose_keeps_only_what_lowers_the_error() -> None:
    start = {"a": (0.0, 10.0), "b": (-1.0, 1.0)}
    options = {
        "a": [("percentile", {"a": (0.0, 4.0)}), ("mse", {"a": (0.0, 2.0)})],
        "b": [("mse", {"b": (-0.5, 0.5)})],
    }

    def error(r: dict[str, tuple[float, float]]) -> float | None:
        if r["b"] != (-1.0, 1.0):
            return None  # "changes the plan": never taken
        return abs(r["a"][1] - 4.0) + 1.0  # best at a = [0, 4]

    choice = choose(start, options, ["a", "b"], error)
    assert choice.ranges == {"a": (0.0, 4.0), "b": (-1.0, 1.0)}
    assert choice.methods == {"a": "percentile"} and choice.tried == 3
    assert choice.error_before == 7.0 and choice.error_after == 1.0


def test_candidates_cover_the_whole_group() -> None:
    stats = {n: _calibrate.TensorStats() for n in ("x", "y", "z")}
    rng = np.random.default_rng(0)
    for n in stats:
        stats[n].update(np.concatenate([rng.normal(size=10000), [60.0]]).astype(np.float32))
    start = {n: (st.lo, st.hi) for n, st in stats.items()}
    opts = candidates(stats, {"x": ["x", "y"], "z": ["z"]}, 99.9, start)
    assert set(opts) == {"x", "z"}
    for _, member_ranges in opts["x"]:
        assert set(member_ranges) == {"x", "y"}  # a group moves together
        assert max(r[1] for r in member_ranges.values()) < 30.0  # the outlier is clipped
    flat = {"z": (0.0, 1.0)}
    assert candidates({}, {"z": ["z"]}, 99.9, flat) == {}  # no histogram: nothing to try


def _outlier_model(path: Path) -> Path:
    rng = np.random.default_rng(1)
    inits = {
        "w1": rng.normal(size=(32, 16)).astype(np.float32) * 0.3,
        "b1": rng.normal(size=32).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(4, 32)).astype(np.float32) * 0.3,
        "b2": np.zeros(4, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="r1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="g2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _data(n: int, seed: int, outlier: bool) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    if outlier:
        x[-1, :2] = [80.0, -80.0]  # two corrupted values in one calibration sample
    return x


def _sqnr(model: Path | onnx.ModelProto, ref: np.ndarray, x: np.ndarray) -> float:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    y = np.concatenate([sess.run(None, {"x": s[None]})[0] for s in x])
    return float(10 * np.log10(np.sum(ref**2) / np.sum((y - ref) ** 2)))


def test_probe_measures_the_built_model(tmp_path: Path) -> None:
    model = _outlier_model(tmp_path / "m.onnx")
    graph = Graph.from_model(onnx.shape_inference.infer_shapes(onnx.load(model)))
    x = _data(32, 2, outlier=True)
    stats = _calibrate.collect(graph, {"x": x}).stats
    ranges = _calibrate.ranges(stats, "minmax", 99.9)
    plan = make_plan(graph, ranges)
    probe = _accuracy.RangeProbe(graph, plan, {"x": x})
    fp32 = np.concatenate(
        [ort.InferenceSession(str(model)).run(None, {"x": s[None]})[0] for s in x[:8]]
    )
    built = build_qdq(graph, make_plan(graph, ranges))[0]
    err = probe.error(ranges)
    assert err is not None
    assert 10 * np.log10(1 / err) == pytest.approx(_sqnr(built, fp32, x[:8]), abs=0.5)


def test_auto_clips_a_calibration_outlier(tmp_path: Path) -> None:
    model = _outlier_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(64, 3, outlier=True))
    ev = _data(200, 4, outlier=False)
    ref = np.concatenate(
        [ort.InferenceSession(str(model)).run(None, {"x": s[None]})[0] for s in ev]
    )
    sqnr = {}
    for method in ("minmax", "auto"):
        out = tmp_path / method
        report = convert(
            model,
            tmp_path / "calib.npz",
            out,
            ConvertOptions(formats=("onnx", "tflite"), calibration=method, percentile=99.5),
        )
        sqnr[method] = _sqnr(out / "model.int8.onnx", ref, ev)
        if method == "auto":
            assert any("calibration auto:" in line for line in report.optimizations)
            sqnr["tflite"] = _tflite_sqnr(out / "model.int8.tflite", ref, ev)
    assert sqnr["auto"] > sqnr["minmax"] + 6.0
    assert sqnr["tflite"] > sqnr["minmax"] + 6.0


def _tflite_sqnr(path: Path, ref: np.ndarray, x: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for s in x:
        it.set_tensor(i["index"], s[None])
        it.invoke()
        ys.append(it.get_tensor(o["index"])[0])
    y = np.array(ys, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((y - ref) ** 2)))
