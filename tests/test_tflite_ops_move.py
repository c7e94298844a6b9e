"""Data-movement and structural ops (issue 14) through the real pipeline: a float graph
built with onnx.helper -> ``convert`` (calibration npz) -> QDQ ONNX and TFLite. Each case
checks that the op is quantized (not in the report's float ops), that the INT8 ONNX agrees
with fp32 within a few quantization steps, and that LiteRT running the TFLite agrees with
onnxruntime running the INT8 ONNX within one int8 step (exactly where the kernels are
exact). Cases TFLite cannot express raise UnsupportedOpError naming the node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, FormatsNotWritten, convert
from edgeship.sdk import Model
from onnx import TensorProto, helper, numpy_helper

from edgeship import UnsupportedOpError

REFUSED = (UnsupportedOpError, FormatsNotWritten)  # write_tflite / convert

INT_MAX = 2**63 - 1


class G:
    """A float graph under construction: input ``x``, nodes, initializers."""

    def __init__(self, x_shape: list[int], seed: int = 0) -> None:
        self.x_shape = x_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def const(self, value: np.ndarray | list, dtype: type = np.int64) -> str:
        self.n += 1
        name = f"k{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outs: int | list[str] = 1, **attrs: object) -> list[str]:
        self.n += 1
        names = outs if isinstance(outs, list) else [f"{op_type.lower()}{self.n}_{i}" for i in range(outs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self.n}", **attrs))
        return names

    def conv(self, x: str, cin: int, cout: int, k: int = 3, **attrs: object) -> str:
        w = self.const(self.rng.normal(size=(cout, cin, k, k)) * 0.4, np.float32)
        b = self.const(self.rng.normal(size=cout) * 0.2, np.float32)
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], **attrs)[0]

    def save(self, path: Path, outputs: list[str], opset: int = 13) -> Path:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.x_shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # output shapes
        onnx.save(model, path)
        return path


def _rename_outputs(g: G, outputs: list[str]) -> list[str]:
    """Graph outputs named y0, y1, ... (the producers write them directly)."""
    names = [f"y{i}" for i in range(len(outputs))]
    for node in g.nodes:
        for i, o in enumerate(node.output):
            if o in outputs:
                node.output[i] = names[outputs.index(o)]
        for i, o in enumerate(node.input):
            if o in outputs:
                node.input[i] = names[outputs.index(o)]
    return names


def run(tmp: Path, g: G, outputs: list[str], ops: set[str], *, opset: int = 13, onnx_steps: float = 3.0,
        tflite_steps: float = 1.0, n: int = 24) -> dict:
    """Convert, then check (a) quantized, (b) INT8 ONNX ~ fp32, (c) LiteRT ~ INT8 ONNX."""
    outputs = _rename_outputs(g, outputs)
    model = g.save(tmp / "m.onnx", outputs, opset)
    x = np.random.default_rng(1).normal(size=(n, *g.x_shape[1:])).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x)  # the test rows too: no clipping, only rounding
    report = convert(model, tmp / "calib.npz", tmp / "out", ConvertOptions(formats=("onnx", "tflite")))
    left = [f for f in report.float_ops if f["op"] in ops]
    assert not left, left  # (a)
    params = json.loads((tmp / "out" / "quant_params.json").read_text())["activations"]
    test = {"x": x[n // 2 :]}
    fp32 = Model.load(model).predict_all(test)
    int8 = Model.load(tmp / "out" / "model.int8.onnx").predict_all(test)
    lite = Model.load(tmp / "out" / "model.int8.tflite").predict_all(test)
    worst = {}
    for name in outputs:
        step = params[name][0]
        assert lite[name].shape == int8[name].shape == fp32[name].shape
        assert np.abs(int8[name] - fp32[name]).max() <= onnx_steps * step * 1.001, name  # (b)
        worst[name] = float(np.abs(lite[name] - int8[name]).max() / step)
        assert worst[name] <= tflite_steps + 1e-3, (name, worst[name])  # (c)
    return {"report": report, "worst": worst, "ops": report.tflite["op_counts"]}


def refused(tmp: Path, g: G, outputs: list[str], match: str, *, opset: int = 13) -> None:
    outputs = _rename_outputs(g, outputs)
    model = g.save(tmp / "m.onnx", outputs, opset)
    x = np.random.default_rng(1).normal(size=(8, *g.x_shape[1:])).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x)
    with pytest.raises(REFUSED, match=match):  # (d)
        convert(model, tmp / "calib.npz", tmp / "out", ConvertOptions(formats=("onnx", "tflite")))
    report = convert(model, tmp / "calib.npz", tmp / "out2", ConvertOptions(formats=("onnx",)))
    assert report.tflite is None  # the INT8 ONNX itself is fine


# ---- Split --------------------------------------------------------------------------
def test_split_unequal_channels_of_nhwc_conv_output(tmp_path: Path) -> None:
    g = G([1, 3, 8, 8])
    c = g.conv("x", 3, 6)
    a, b = g.op("Split", [c, g.const([2, 4])], 2, axis=1)
    r = run(tmp_path, g, [g.conv(a, 2, 3), b], {"Split"})
    assert r["ops"].get("STRIDED_SLICE") == 2 and "SPLIT_V" not in r["ops"]


def test_split_num_outputs_opset18_and_3d_split(tmp_path: Path) -> None:
    g = G([1, 3, 6, 8])
    c = g.conv("x", 3, 4)
    parts = g.op("Split", [c], 3, axis=2, num_outputs=3)  # H: 2 + 2 + 2
    flat = g.op("Reshape", [parts[1], g.const([1, 4, 16])])[0]
    head = g.op("Split", [flat, g.const([1, 3])], 2, axis=1)  # YOLOv8: box / class channels
    r = run(tmp_path, g, [parts[0], parts[2], *head], {"Split"}, opset=18)
    assert r["ops"].get("SPLIT") == 1


# ---- Slice --------------------------------------------------------------------------
def test_slice_focus_concat_then_conv(tmp_path: Path) -> None:
    """YOLOv5's Focus: four strided slices of the input, Concat on channels, Conv."""
    g = G([1, 3, 8, 8])
    parts = []
    for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
        parts.append(g.op("Slice", ["x", g.const([dy, dx]), g.const([INT_MAX, INT_MAX]),
                                    g.const([2, 3]), g.const([2, 2])])[0])
    cat = g.op("Concat", parts, axis=1)[0]
    run(tmp_path, g, [g.conv(cat, 12, 4)], {"Slice", "Concat"})


def test_slice_nhwc_negative_ends_and_reverse(tmp_path: Path) -> None:
    g = G([1, 3, 8, 8])
    c = g.conv("x", 3, 6)
    s1 = g.op("Slice", [c, g.const([1, 2]), g.const([-1, INT_MAX]), g.const([1, -1])])[0]
    s2 = g.op("Slice", [c, g.const([-1]), g.const([-INT_MAX]), g.const([3]), g.const([-2])])[0]
    run(tmp_path, g, [g.conv(s1, 4, 2), s2], {"Slice"}, tflite_steps=0)


# ---- Transpose ----------------------------------------------------------------------
def test_transpose_yolo_head_and_channel_shuffle_are_exact(tmp_path: Path) -> None:
    g = G([1, 4, 4, 4])
    c = g.conv("x", 4, 18)
    head = g.op("Reshape", [c, g.const([1, 3, 6, 16])])[0]
    head = g.op("Transpose", [head], perm=[0, 1, 3, 2])[0]  # [1, 3, 16, 6]
    d = g.conv("x", 4, 8)
    shuffled = g.op("Reshape", [d, g.const([1, 2, 4, 4, 4])])[0]
    shuffled = g.op("Transpose", [shuffled], perm=[0, 2, 1, 3, 4])[0]
    shuffled = g.op("Reshape", [shuffled, g.const([1, 8, 4, 4])])[0]
    five = g.op("Reshape", [d, g.const([1, 2, 4, 4, 4])])[0]
    five = g.op("Transpose", [five], perm=[0, 3, 1, 4, 2])[0]  # any 5-D transpose
    r = run(tmp_path, g, [head, g.conv(shuffled, 8, 3), five, shuffled],
            {"Transpose", "Reshape", "Gather"})
    assert r["worst"]["y0"] == r["worst"]["y2"] == r["worst"]["y3"] == 0.0  # moving bytes
    # the shuffle is one Gather of channels (a GATHER of NHWC channels in TFLite)
    assert any("channel shuffle" in line for line in r["report"].optimizations)
    assert r["ops"]["GATHER"] == 1
    assert r["report"].tflite["op_versions"]["TRANSPOSE"] == 4  # 5-D


def test_transpose_of_nhwc_stored_value_and_nhwc_input(tmp_path: Path) -> None:
    g = G([1, 8, 8, 3])  # an NHWC model input: the Transpose to NCHW costs nothing
    t = g.op("Transpose", ["x"], perm=[0, 3, 1, 2])[0]
    c = g.conv(t, 3, 5)
    back = g.op("Transpose", [c], perm=[0, 2, 3, 1])[0]  # NCHW -> NHWC of a stored-NHWC value
    odd = g.op("Transpose", [c], perm=[0, 3, 1, 2])[0]  # [1, 8, 5, 8]
    r = run(tmp_path, g, [back, odd], {"Transpose"}, tflite_steps=0)
    assert r["worst"] == {"y0": 0.0, "y1": 0.0}


# ---- Squeeze / Unsqueeze ------------------------------------------------------------
def test_squeeze_unsqueeze(tmp_path: Path) -> None:
    g = G([1, 3, 6, 6])
    p = g.op("GlobalAveragePool", [g.conv("x", 3, 4)])[0]
    s = g.op("Squeeze", [p, g.const([2, 3])])[0]
    u = g.op("Unsqueeze", [s, g.const([1])])[0]
    c = g.conv("x", 3, 4)
    f2 = g.op("Flatten", [c], axis=2)[0]  # [4, 36] from an NHWC-stored value
    f3 = g.op("Flatten", [g.op("Reshape", [c, g.const([1, 4, 36])])[0]], axis=1)[0]  # of a 3-D
    r = run(tmp_path, g, [u, f2, f3], {"Squeeze", "Unsqueeze", "Flatten"}, tflite_steps=0)
    assert r["worst"] == {"y0": 0.0, "y1": 0.0, "y2": 0.0}


# ---- Resize -------------------------------------------------------------------------
RESIZES = [
    ("nearest", "asymmetric", "floor", "scales", 0),  # YOLO / FPN 2x upsampling
    ("nearest", "asymmetric", "round_prefer_floor", "scales", 0),
    ("nearest", "half_pixel", "round_prefer_floor", "sizes", 0),
    ("nearest", "align_corners", "round_prefer_floor", "sizes", 0),
    ("linear", "half_pixel", "", "scales", 1),
    ("linear", "pytorch_half_pixel", "", "sizes", 1),
    ("linear", "align_corners", "", "sizes", 1),
    ("linear", "asymmetric", "", "scales", 1),
]


@pytest.mark.parametrize(("mode", "coord", "nearest", "given", "steps"), RESIZES)
def test_resize(tmp_path: Path, mode: str, coord: str, nearest: str, given: str, steps: int) -> None:
    g = G([1, 3, 5, 6])
    c = g.conv("x", 3, 4)
    scales = g.const([1, 1, 2, 2], np.float32) if given == "scales" else ""
    sizes = g.const([1, 4, 10, 12]) if given == "sizes" else ""
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    up = g.op("Resize", [c, "", scales, sizes] if sizes else [c, "", scales], **attrs)[0]
    r = run(tmp_path, g, [up], {"Resize"}, tflite_steps=steps)
    assert ("RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR") in r["ops"]


@pytest.mark.parametrize("coord", ["asymmetric", "half_pixel", "pytorch_half_pixel",
                                   "align_corners", "tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest", ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"])
def test_resize_nearest_every_mode_is_exact(tmp_path: Path, coord: str, nearest: str) -> None:
    """Up 5 -> 8 and down 6 -> 4: RESIZE_NEAREST_NEIGHBOR when its flags give ONNX's
    index map, else two GATHERs; either way LiteRT equals onnxruntime."""
    g = G([1, 2, 5, 6])
    c = g.conv("x", 2, 3)
    up = g.op("Resize", [c, "", "", g.const([1, 3, 8, 4])], mode="nearest",
              coordinate_transformation_mode=coord, nearest_mode=nearest)[0]
    run(tmp_path, g, [up], {"Resize"}, tflite_steps=0)


def test_resize_nearest_without_tflite_flags_gathers_rows_and_columns(tmp_path: Path) -> None:
    g = G([1, 3, 4, 4])
    c = g.conv("x", 3, 4)
    up = g.op("Resize", [c, "", g.const([1, 1, 3, 3], np.float32)], mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="round_prefer_ceil")[0]
    r = run(tmp_path, g, [up], {"Resize"}, tflite_steps=0)
    assert r["ops"]["GATHER"] == 2 and "RESIZE_NEAREST_NEIGHBOR" not in r["ops"]


def test_resize_tflite_cannot_express(tmp_path: Path) -> None:
    g = G([1, 3, 4, 4])
    c = g.conv("x", 3, 4)
    up = g.op("Resize", [c, "", g.const([1, 1, 2.5, 2.5], np.float32)], mode="linear",
              coordinate_transformation_mode="tf_half_pixel_for_nn")[0]
    refused(tmp_path, g, [up], r"Resize at node 'Resize_\d+': linear resize with "
            r"coordinate_transformation_mode='tf_half_pixel_for_nn'")


# ---- ConvTranspose ------------------------------------------------------------------
@pytest.mark.parametrize(("k", "pads", "out_pad"), [(2, [0, 0, 0, 0], 0), (4, [1, 1, 1, 1], 0),
                                                    (3, [1, 1, 1, 1], 1), (3, [0, 1, 2, 0], 0)])
def test_conv_transpose_stride2(tmp_path: Path, k: int, pads: list[int], out_pad: int) -> None:
    g = G([1, 3, 5, 5])
    c = g.conv("x", 3, 6)
    w = g.const(g.rng.normal(size=(6, 4, k, k)) * 0.3, np.float32)
    b = g.const(g.rng.normal(size=4) * 0.2, np.float32)
    up = g.op("ConvTranspose", [c, w, b], kernel_shape=[k, k], strides=[2, 2], pads=pads,
              output_padding=[out_pad, out_pad])[0]
    relu = g.op("Relu", [up])[0]
    r = run(tmp_path, g, [relu, g.conv(relu, 4, 2)], {"ConvTranspose"}, onnx_steps=5)
    assert "TRANSPOSE_CONV" in r["ops"]
    assert r["report"].tflite["op_versions"]["TRANSPOSE_CONV"] == 3


def test_conv_transpose_add_batchnorm_are_folded(tmp_path: Path) -> None:
    """Paddle2ONNX's DBNet head: ConvTranspose (no bias) -> Add(bias) -> BN -> Relu."""
    g = G([1, 3, 5, 5])
    c = g.conv("x", 3, 6)
    w = g.const(g.rng.normal(size=(6, 4, 2, 2)) * 0.3, np.float32)
    up = g.op("ConvTranspose", [c, w], kernel_shape=[2, 2], strides=[2, 2])[0]
    added = g.op("Add", [up, g.const(g.rng.normal(size=(1, 4, 1, 1)), np.float32)])[0]
    bn = [g.const(v, np.float32) for v in (g.rng.uniform(0.5, 2, 4), g.rng.normal(size=4),
                                             g.rng.normal(size=4), g.rng.uniform(0.5, 2, 4))]
    normed = g.op("BatchNormalization", [added, *bn])[0]
    r = run(tmp_path, g, [g.op("Relu", [normed])[0]], {"ConvTranspose", "Add", "BatchNormalization"})
    folded = [line for line in r["report"].optimizations if "into ConvTranspose" in line]
    assert len(folded) == 2, r["report"].optimizations
    assert r["ops"].keys() >= {"TRANSPOSE_CONV"} and "ADD" not in r["ops"]


# ---- Pad ----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "pads"), [("constant", [0, 0, 1, 2, 0, 0, 2, 1]),
                                            ("reflect", [0, 0, 2, 1, 0, 0, 1, 2]),
                                            ("edge", [0, 0, 1, 1, 0, 0, 1, 0])])
def test_pad(tmp_path: Path, mode: str, pads: list[int]) -> None:
    g = G([1, 3, 6, 6])
    p = g.op("Pad", [g.conv("x", 3, 4), g.const(pads)], mode=mode)[0]
    r = run(tmp_path, g, [p], {"Pad"}, tflite_steps=0)
    assert ("PAD" if mode == "constant" else "MIRROR_PAD") in r["ops"]


def test_zero_pad_before_a_conv_is_folded_into_it(tmp_path: Path) -> None:
    g = G([1, 3, 6, 6])
    p = g.op("Pad", [g.conv("x", 3, 4), g.const([0, 0, 1, 0, 0, 0, 2, 1])])[0]
    r = run(tmp_path, g, [g.conv(p, 4, 2, pads=[1, 1, 1, 1])], {"Pad", "Conv"})
    assert any(line.startswith("folded Pad") for line in r["report"].optimizations)
    assert not any(f["op"] == "Pad" for f in r["report"].layers if "op" in f)


def test_pad_edge_wider_than_one_is_refused(tmp_path: Path) -> None:
    g = G([1, 3, 6, 6])
    p = g.op("Pad", [g.conv("x", 3, 4), g.const([0, 0, 2, 2, 0, 0, 2, 2])], mode="edge")[0]
    refused(tmp_path, g, [p], r"Pad at node 'Pad_\d+': mode 'edge'")


# ---- ReduceMean ---------------------------------------------------------------------
def test_reduce_mean_opset18_axes_input_is_a_global_pool(tmp_path: Path) -> None:
    """torch's default exporter (ResNet head): ReduceMean(x, axes=[2, 3], keepdims=0)."""
    g = G([1, 3, 6, 6])
    m = g.op("ReduceMean", [g.op("Relu", [g.conv("x", 3, 8)])[0], g.const([-2, -1])], keepdims=0)[0]
    w = g.const(g.rng.normal(size=(8, 4)), np.float32)
    r = run(tmp_path, g, [m, g.op("MatMul", [m, w])[0]], {"ReduceMean", "GlobalAveragePool"},
            opset=18, onnx_steps=5, tflite_steps=0)
    assert any("ReduceMean" in line for line in r["report"].optimizations)


def test_reduce_mean_other_axes(tmp_path: Path) -> None:
    g = G([1, 3, 6, 6])
    c = g.conv("x", 3, 8)
    channel = g.op("ReduceMean", [c], axes=[1], keepdims=0)[0]  # [1, 6, 6] from NHWC
    flat = g.op("Reshape", [c, g.const([1, 8, 36])])[0]
    last = g.op("ReduceMean", [flat], axes=[-1], keepdims=1)[0]  # a LayerNorm's mean
    run(tmp_path, g, [channel, last], {"ReduceMean"})


# ---- Concat with constants ----------------------------------------------------------
def test_concat_with_constant_inputs(tmp_path: Path) -> None:
    g = G([1, 3, 4, 4])
    flat = g.op("Reshape", [g.conv("x", 3, 6), g.const([1, 6, 16])])[0]
    anchors = g.const(np.linspace(-3.0, 5.0, 12).reshape(1, 6, 2), np.float32)  # beyond the data
    boxes = g.op("Concat", [flat, anchors], axis=2)[0]
    token = g.const(np.full((1, 1, 16), 0.5), np.float32)  # a class token
    tokens = g.op("Concat", [token, flat], axis=1)[0]
    c = g.conv("x", 3, 2)  # stored NHWC: the constant is written NHWC too
    plane = g.const(np.linspace(-1.0, 1.0, 32).reshape(1, 2, 4, 4), np.float32)
    planes = g.op("Concat", [plane, c], axis=1)[0]
    r = run(tmp_path, g, [boxes, tokens, g.conv(planes, 4, 2)], {"Concat"}, tflite_steps=0)
    assert r["worst"] == {"y0": 0.0, "y1": 0.0, "y2": 0.0}


# ---- Gather -------------------------------------------------------------------------
def test_gather_constant_indices(tmp_path: Path) -> None:
    g = G([1, 3, 4, 5])
    c = g.conv("x", 3, 6)
    one = g.op("Gather", [c, g.const(2)], axis=1)[0]  # scalar: [1, 4, 5]
    run_ = g.op("Gather", [c, g.const([0, 2, 4])], axis=1)[0]  # evenly spaced: a slice
    any_ = g.op("Gather", [c, g.const([4, -1])], axis=3)[0]  # any list: GATHER
    r = run(tmp_path, g, [one, g.conv(run_, 3, 2), any_], {"Gather"}, tflite_steps=0)
    assert r["ops"].get("GATHER") == 1


# ---- Softmax on any axis ------------------------------------------------------------
def test_softmax_any_axis_and_yolov8_dfl(tmp_path: Path) -> None:
    g = G([1, 64, 12])
    box = g.op("Reshape", ["x", g.const([1, 4, 16, 12])])[0]
    box = g.op("Transpose", [box], perm=[0, 2, 1, 3])[0]  # [1, 16, 4, 12]
    soft = g.op("Softmax", [box], axis=1)[0]
    w = g.const(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), np.float32)
    dfl = g.op("Conv", [soft, w], kernel_shape=[1, 1])[0]  # expected bin: 0..15
    dist = g.op("Reshape", [dfl, g.const([1, 4, 12])])[0]
    mid = g.op("Softmax", ["x"], axis=1)[0]  # a middle axis of a 3-D tensor
    r = run(tmp_path, g, [dist, mid], {"Softmax", "Transpose", "Conv"}, onnx_steps=6)
    assert r["ops"]["SOFTMAX"] == 2
    # DFL: the model's Transpose and the one to NHWC are one TRANSPOSE; the conv's output
    # back to logical; the middle-axis softmax: there and back
    assert r["ops"]["TRANSPOSE"] == 4


def test_transposes_that_cancel_out_are_dropped(tmp_path: Path) -> None:
    g = G([1, 3, 4, 5])
    there = g.op("Transpose", ["x"], perm=[0, 2, 3, 1])[0]
    back = g.op("Transpose", [there], perm=[0, 3, 1, 2])[0]
    r = run(tmp_path, g, [g.conv(back, 3, 2)], {"Transpose"})
    assert r["ops"]["TRANSPOSE"] == 2  # x to NHWC for the conv, its output back to NCHW
    assert r["report"].tflite["op_versions"]["TRANSPOSE"] == 2


# ---- the plan: every output of a "same" op, constant Concat operands -------------------
def test_plan_split_outputs_share_the_input_params_and_constants_widen_concat() -> None:
    from edgeship.converter._ir import Graph
    from edgeship.converter._plan import make_plan

    g = G([1, 6, 4, 4])
    a, b, c = g.op("Split", ["x"], 3, axis=1)
    anchors = g.const(np.array([[[[-9.0]]], [[[40.0]]]]).reshape(1, 2, 1, 1).repeat(4, 2).repeat(4, 3),
                      np.float32)
    cat = g.op("Concat", [c, anchors], axis=1)[0]
    model = onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph(
        g.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in (a, b, cat)],
        g.inits), opset_imports=[helper.make_opsetid("", 13)]))
    graph = Graph.from_model(model)
    ranges = {"x": (-2.0, 3.0), a: (-1.0, 1.0), b: (-2.0, 0.5), c: (0.0, 3.0), cat: (-1.0, 2.0)}
    plan = make_plan(graph, ranges)
    assert {plan.group_of[t] for t in ("x", a, b, c)} == {"x"}
    assert plan.params[a] == plan.params[b] == plan.params[c] == plan.params["x"]
    lo, hi = plan.ranges[cat]
    assert lo <= -9.0 and hi >= 40.0  # the anchors are not clipped


def test_fpn_and_dbnet_style_head_is_edge_tpu_mappable(tmp_path: Path) -> None:
    """Resize 2x + Concat (FPN), ConvTranspose 2x (DBNet), Pad, Split: all on the TPU."""
    g = G([1, 3, 16, 16])
    c1 = g.op("Relu", [g.conv("x", 3, 8, strides=[2, 2])])[0]  # 8x8
    c2 = g.op("Relu", [g.conv(c1, 8, 8, strides=[2, 2])])[0]  # 4x4
    up = g.op("Resize", [c2, "", g.const([1, 1, 2, 2], np.float32)], mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")[0]
    cat = g.op("Concat", [c1, up], axis=1)[0]
    w = g.const(g.rng.normal(size=(16, 4, 2, 2)) * 0.3, np.float32)
    tc = g.op("ConvTranspose", [cat, w], kernel_shape=[2, 2], strides=[2, 2])[0]  # 16x16
    padded = g.op("Pad", [tc, g.const([0, 0, 1, 1, 0, 0, 1, 1])])[0]
    left, right = g.op("Split", [padded, g.const([2, 2])], 2, axis=1)
    outs = [g.conv(left, 2, 1, pads=[0] * 4), g.conv(right, 2, 1, pads=[0] * 4)]
    outputs = _rename_outputs(g, outs)
    model = g.save(tmp_path / "m.onnx", outputs)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).normal(size=(8, 3, 16, 16)).astype(np.float32))
    report = convert(model, tmp_path / "calib.npz", tmp_path / "out",
                     ConvertOptions(formats=("onnx", "tflite"), io="int8"))
    assert not report.float_ops
    assert report.edgetpu["fully_mappable"], report.edgetpu["verdict"]
    assert {"RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV", "PAD", "SPLIT"} <= set(report.tflite["op_counts"])


# ---- MaxPool ceil_mode ----------------------------------------------------------------
@pytest.mark.parametrize(("k", "s", "pads", "size"), [(2, 2, [0, 0, 0, 0], 7), (3, 2, [0, 0, 0, 0], 8),
                                                       (3, 2, [1, 1, 1, 1], 6)])
def test_maxpool_ceil_mode_after_relu(tmp_path: Path, k: int, s: int, pads: list[int], size: int) -> None:
    g = G([1, 3, size, size])
    r = g.op("Relu", [g.conv("x", 3, 4)])[0]
    p = g.op("MaxPool", [r], kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=1)[0]
    out = run(tmp_path, g, [p], {"MaxPool"}, tflite_steps=0)
    assert out["ops"]["PAD"] >= 1


def test_node_left_float_by_the_plan_is_named_with_its_reason(tmp_path: Path) -> None:
    """A grouped ConvTranspose stays float (the report says why); TFLite refuses it by
    name rather than failing on a detail of the float node."""
    g = G([1, 4, 5, 5])
    w = g.const(g.rng.normal(size=(4, 2, 2, 2)), np.float32)
    up = g.op("ConvTranspose", [g.conv("x", 4, 4), w], kernel_shape=[2, 2], strides=[2, 2],
              group=2)[0]
    outputs = _rename_outputs(g, [up])
    model = g.save(tmp_path / "m.onnx", outputs)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(size=(4, 4, 5, 5)).astype(np.float32))
    report = convert(model, tmp_path / "calib.npz", tmp_path / "o1", ConvertOptions(formats=("onnx",)))
    assert [(f["op"], f["reason"]) for f in report.float_ops] == [("ConvTranspose", "group > 1")]
    with pytest.raises(REFUSED, match=r"ConvTranspose at node 'ConvTranspose_\d+'.*stayed float"):
        convert(model, tmp_path / "calib.npz", tmp_path / "o2", ConvertOptions(formats=("onnx", "tflite")))


# ---- Expand / Tile --------------------------------------------------------------------
def test_expand_and_tile(tmp_path: Path) -> None:
    g = G([1, 3, 4, 4])
    p = g.op("GlobalAveragePool", [g.conv("x", 3, 4)])[0]  # [1, 4, 1, 1], stored NHWC
    wide = g.op("Expand", [p, g.const([1, 4, 4, 4])])[0]
    flat = g.op("Reshape", [p, g.const([1, 4])])[0]
    ranked = g.op("Expand", [flat, g.const([2, 1, 4])])[0]  # a rank-2 input to rank 3
    tiled = g.op("Tile", [g.conv("x", 3, 2), g.const([1, 2, 1, 3])])[0]
    r = run(tmp_path, g, [wide, ranked, tiled], {"Expand", "Tile"}, tflite_steps=0)
    assert r["worst"] == {"y0": 0.0, "y1": 0.0, "y2": 0.0}
    assert r["ops"]["BROADCAST_TO"] == 2 and r["ops"]["TILE"] == 1
