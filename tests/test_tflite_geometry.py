"""Convolution and pooling geometry, generated: kernel, stride, dilation, explicit pads,
groups and depth multipliers. Each case is one QDQ node run by onnxruntime and, written
as TFLite, by LiteRT; the outputs must agree to one quantization step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from edgeship.converter._tflite import write_tflite
from edgeship.sdk import Model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper
from test_tflite_ops import QdqBuilder

STEP = 0.05


def _run_both(b: QdqBuilder, shape: list[int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = b.save(Path(tmp) / "g.onnx", shape)
        info = write_tflite(path, Path(tmp) / "g.tflite")
        x = np.random.default_rng(0).normal(size=(2, *shape[1:])).astype(np.float32)
        return Model.load(path).predict(x), Model.load(Path(tmp) / "g.tflite").predict(x), info.op_counts


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    k = draw(st.sampled_from([1, 2, 3, 5]))
    dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
    stride = draw(st.sampled_from([1, 2, 3]))
    cin = draw(st.sampled_from([1, 2, 4]))
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if kind == "depthwise":
        group, cout = cin, cin * draw(st.sampled_from([1, 2]))
    elif kind == "grouped" and cin % 2 == 0:
        group, cout = 2, 4
    else:
        group, cout = 1, draw(st.sampled_from([1, 3]))
    pads = draw(st.lists(st.integers(0, k - 1), min_size=4, max_size=4)) if k > 1 else [0] * 4
    span = (k - 1) * dil + 1
    h = draw(st.integers(max(span - pads[0] - pads[2], 1), 11))
    w = draw(st.integers(max(span - pads[1] - pads[3], 1), 11))
    return {"k": k, "dil": dil, "stride": stride, "cin": cin, "cout": cout, "group": group,
            "pads": pads, "h": h, "w": w}


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def _case(k: int, stride: int, pads: list[int], size: int, group: int = 1) -> dict:
    return {"k": k, "dil": 1, "stride": stride, "cin": 2, "cout": 2, "group": group,
            "pads": pads, "h": size, "w": size}


@given(conv_cases())
# odd total padding: TFLite SAME puts the extra row at the end (ONNX SAME_UPPER), so the
# same pads at the start must become an explicit PAD
@example(_case(2, 1, [0, 0, 1, 1], 6))
@example(_case(2, 1, [1, 1, 0, 0], 6))
@example(_case(3, 2, [0, 0, 1, 1], 8, group=2))
@example(_case(3, 2, [1, 1, 0, 0], 8, group=2))
@example(_case(3, 2, [1, 1, 1, 1], 8))
def test_conv_geometry_matches_onnxruntime(case: dict) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04)
    rng = np.random.default_rng(1)
    w, _ = b.weight("w", rng.normal(size=(case["cout"], case["cin"] // case["group"], case["k"],
                                               case["k"])).astype(np.float32))
    b.nodes.append(helper.make_node(
        "Conv", [x, w], ["c"], kernel_shape=[case["k"]] * 2, strides=[case["stride"]] * 2,
        dilations=[case["dil"]] * 2, pads=case["pads"], group=case["group"]))
    b.qdq("c", STEP, out="y")
    ref, got, ops = _run_both(b, [1, case["cin"], case["h"], case["w"]])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= STEP * 1.001, case
    depthwise = case["group"] == case["cin"] and case["group"] > 1
    assert ("DEPTHWISE_CONV_2D" in ops) == depthwise, ops


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["MaxPool", "AveragePool"]), k=st.sampled_from([2, 3]),
       stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]), size=st.integers(4, 9))
def test_pool_geometry_matches_onnxruntime(kind: str, k: int, stride: int, pad: int, size: int) -> None:
    b = QdqBuilder()
    x = b.qdq("x", 0.04, -128)  # a ReLU'd input: explicit MaxPool pads are exact with PAD
    attrs = {"count_include_pad": 1} if kind == "AveragePool" else {}
    b.nodes.append(helper.make_node(kind, [x], ["p"], kernel_shape=[k, k], strides=[stride] * 2,
                                    pads=[pad] * 4, **attrs))
    b.qdq("p", 0.04, -128, out="y")
    ref, got, _ = _run_both(b, [1, 3, size, size])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.04 * 1.001
