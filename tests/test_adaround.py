"""Learned rounding (converter/_adaround.py, converter/_learned.py, ``--learned-rounding``):
every weight goes to one of its two int8 neighbours, the layer's output error on the
calibration inputs never rises above round-to-nearest's, the im2col rows are what
onnxruntime's Conv multiplies, and on held-out data the rounded layer is closer to fp32
in the QDQ ONNX and in the TFLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._adaround import output_error, patches, round_rows
from onnx import TensorProto, helper, numpy_helper


def test_round_rows_beats_nearest_with_neighbours_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 24)) @ rng.normal(size=(24, 24))  # correlated inputs
    h = x.T @ x
    w = rng.normal(size=(6, 24))
    s = np.abs(w).max(axis=1) / 127
    q = round_rows(w, s, h)
    r = w / s[:, None]
    assert np.all((q == np.floor(r)) | (q == np.ceil(r)))
    assert np.abs(q).max() <= 127
    nearest = np.round(r)
    assert output_error(w, q, s, h) < 0.7 * output_error(w, nearest, s, h)
    # nothing to gain (H diagonal, every weight already nearest): nothing moves
    assert np.array_equal(round_rows(w, s, np.eye(24)), nearest.astype(np.int8))


def test_patches_are_what_the_conv_multiplies() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 7, 9)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    attrs = dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    rows = patches(node, x, (3, 2))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x[None]})[0][0]
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T, y.reshape(4, -1).T, rtol=1e-4, atol=1e-4)


def _conv_model(path: Path) -> Path:
    rng = np.random.default_rng(2)
    w = (rng.normal(size=(8, 16, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(9).normal(size=(16, 16))  # channels correlated, same for all
    z = rng.normal(size=(n, 8, 8, 16)) @ mix
    return np.ascontiguousarray(z.transpose(0, 3, 1, 2)).astype(np.float32)


def _weight_error(out: Path, model: Path, x: np.ndarray) -> float:
    """Output error of the int8 weight alone (float activations) on ``x``."""
    q = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load(out / "model.int8.onnx").graph.initializer
    }
    w_dq = q["w_q"].astype(np.float32) * q["w_s"].reshape(-1, 1, 1, 1)
    m = onnx.load(model)
    ref = ort.InferenceSession(m.SerializeToString())
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w_dq.astype(np.float32), "w"))
    got = ort.InferenceSession(m.SerializeToString())
    err = 0.0
    for s in x:
        err += float(
            np.sum((got.run(None, {"x": s[None]})[0] - ref.run(None, {"x": s[None]})[0]) ** 2)
        )
    return err


def test_learned_rounding_generalizes_in_both_formats(tmp_path: Path) -> None:
    """On by default (None); --no-learned-rounding (False) rounds to nearest."""
    from ai_edge_litert.interpreter import Interpreter

    model = _conv_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(64, 3))
    ev = _data(64, 4)
    errors, lite = {}, {}
    fp32 = ort.InferenceSession(str(model))
    ref = np.concatenate([fp32.run(None, {"x": s[None]})[0] for s in ev])
    for on in (False, None):
        out = tmp_path / str(on)
        report = convert(
            model,
            tmp_path / "calib.npz",
            out,
            ConvertOptions(formats=("onnx", "tflite"), learned_rounding=on, equalize=False),
        )
        assert any("learned rounding:" in line for line in report.optimizations) == (on is None)
        errors[on] = _weight_error(out, model, ev)
        it = Interpreter(model_path=str(out / "model.int8.tflite"))
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        ys = []
        for s in ev:
            it.set_tensor(i["index"], s[None])
            it.invoke()
            ys.append(it.get_tensor(o["index"])[0])
        lite[on] = float(np.sum((np.array(ys) - ref) ** 2))
    assert errors[None] < 0.8 * errors[False]  # held-out data, weight error alone
    assert lite[None] < lite[False]  # and the whole int8 TFLite is closer to fp32


def test_gram_of_grouped_rows_is_per_group_sum_of_outer_products() -> None:
    from edgeship.converter._learned import gram

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(50, 4 * 9)).astype(np.float32)
    per = rows.astype(np.float64).reshape(50, 4, 9)
    want = np.einsum("pgk,pgl->gkl", per, per)
    got = gram(rows, 4)
    assert got.shape == (4, 9, 9) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gram(rows, 1)[0], rows.T.astype(np.float64) @ rows, rtol=1e-4)


def test_h_rows_grow_with_the_inputs_of_one_output() -> None:
    """A depthwise 3x3's 9 x 9 H needs far fewer im2col rows than a wide 1x1 Conv's."""
    from edgeship.converter._adaround import MAX_POSITIONS
    from edgeship.converter._learned import MIN_POSITIONS, _Layer, positions

    def conv(group: int) -> _Layer:
        return _Layer(onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=group), group, False)

    assert positions(conv(96), np.zeros((96, 1, 3, 3), np.float32)) == MIN_POSITIONS
    assert positions(conv(1), np.zeros((16, 1152, 1, 1), np.float32)) == MAX_POSITIONS
    assert MIN_POSITIONS < positions(conv(1), np.zeros((16, 96, 1, 1), np.float32)) < MAX_POSITIONS


def test_no_gram_for_a_layer_too_wide_to_estimate(tmp_path: Path) -> None:
    """K = 228 x 3 x 3 = 2052 inputs per output needs more rows than MAX_POSITIONS / 2:
    that layer is rounded to nearest without building its 2052 x 2052 H; a narrow one is not."""
    from edgeship.converter._ir import Graph
    from edgeship.converter._learned import collect_grams

    rng = np.random.default_rng(0)
    wide = rng.normal(size=(4, 228, 3, 3)).astype(np.float32)
    narrow = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "wide"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["h", "narrow"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 228, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(wide, "wide"), numpy_helper.from_array(narrow, "narrow")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    layers = collect_grams(Graph.from_model(m), {"x": rng.normal(size=(4, 228, 4, 4)).astype(np.float32)})
    assert set(layers) == {"narrow"}


def test_a_model_without_weight_layers_has_no_grams() -> None:
    """An Add-only graph (the learned-rounding default meets it): nothing collected, no error."""
    from edgeship.converter._ir import Graph
    from edgeship.converter._learned import collect_grams

    c = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [c],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    assert collect_grams(Graph.from_model(m), {"x": np.ones((3, 4), np.float32)}) == {}


def test_grams_are_the_same_whatever_the_rows_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows wait and are added to the Grams in stacks (converter/_learned.py _flush): with
    a budget so small that some layer is flushed after every sample, each layer's H and
    row count are those of one big stack (no row lost or counted twice), for a plain, a
    grouped Conv and a Gemm."""
    from edgeship.converter import _learned
    from edgeship.converter._ir import Graph

    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.normal(size=(8, 4, 3, 3)).astype(np.float32),
        "w2": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),  # depthwise
        "w3": rng.normal(size=(5, 8 * 6 * 6)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], group=8),
            helper.make_node("Flatten", ["b"], ["f"]),
            helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    feeds = {"x": rng.normal(size=(12, 4, 6, 6)).astype(np.float32)}
    monkeypatch.setattr(_learned, "FLUSH_VALUES", 1 << 30)
    once = _learned.collect_grams(Graph.from_model(m), feeds)
    monkeypatch.setattr(_learned, "FLUSH_VALUES", 64)
    stacked = _learned.collect_grams(Graph.from_model(m), feeds)
    assert set(once) == set(stacked) == {"w1", "w2", "w3"}
    for name, layer in once.items():
        assert layer.gram is not None and stacked[name].gram is not None
        assert stacked[name].rows == layer.rows > 0
        scale = float(np.abs(layer.gram).max())  # float32 products: summed in another order
        np.testing.assert_allclose(stacked[name].gram, layer.gram, rtol=1e-5, atol=1e-5 * scale)
