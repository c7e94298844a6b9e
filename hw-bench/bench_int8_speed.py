"""INT8 vs fp32 latency in onnxruntime (issue 14: "an INT8 model is never slower than its
fp32 model"), fp32 baseline measured in the same run.

    python hw-bench/bench_int8_speed.py
    EDGESHIP_BENCH_QUICK=1 python hw-bench/bench_int8_speed.py

Models: a MobileNetV3-style block stack built here (HardSwish exported as Paddle does:
Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6); a squeeze-excite gate with HardSigmoid and a
Conv + Add(bias) pair), and the real PP-OCR orientation classifier
``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (MobileNetV3, opset 11; upgraded here to opset 13
with a fixed 1x3x48x192 input; directory from ``EDGESHIP_REALMODELS``, default
/work/realmodels; skipped when absent). Each model is converted by edgeship (this tree)
and, for reference, by onnxruntime's ``quantize_static`` (QDQ, per-channel, int8). Every
session runs one sample at a time with 1 and 2 intra-op threads; the table gives the
median of many runs, and the ratio INT8 / fp32 (> 1 means INT8 is slower).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ort_quantize_static, print_machine, print_table, quick, write_result

REAL_DIR = Path(os.environ.get("EDGESHIP_REALMODELS", "/work/realmodels"))
CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_SHAPE = [1, 3, 48, 192]
RNG = np.random.default_rng(0)


# ---- models ----------------------------------------------------------------------------
class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, value: np.ndarray | float) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1,
             bias: bool = True) -> str:
        w = RNG.normal(size=(cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        inputs = [x, self.const(w)] + ([self.const(RNG.normal(size=cout) * 0.1)] if bias else [])
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group)

    def hardswish(self, x: str) -> str:  # as Paddle2ONNX exports it
        r = self.node("Clip", [self.node("Add", [x, self.const(3.0)]), self.const(0.0), self.const(6.0)])
        return self.node("Div", [self.node("Mul", [x, r]), self.const(6.0)])

    def se(self, x: str, c: int) -> str:
        g = self.node("GlobalAveragePool", [x])
        g = self.node("Relu", [self.node("Add", [self.conv(g, c, c // 4, bias=False),
                                                 self.const(RNG.normal(size=(1, c // 4, 1, 1)))])])
        g = self.node("Add", [self.conv(g, c // 4, c, bias=False), self.const(RNG.normal(size=(1, c, 1, 1)))])
        return self.node("Mul", [x, self.node("HardSigmoid", [g], alpha=0.2, beta=0.5)])


def mnv3_blocks(path: Path) -> list[int]:
    """Stem + four inverted-residual blocks with HardSwish and squeeze-excite."""
    b = _Builder()
    x = b.hardswish(b.conv("x", 3, 16, k=3, stride=2))
    c = 16
    for cout, expand, k, stride in ((24, 64, 3, 2), (24, 72, 5, 1), (40, 96, 5, 2), (40, 120, 3, 1)):
        h = b.hardswish(b.conv(x, c, expand))
        h = b.hardswish(b.conv(h, expand, expand, k=k, stride=stride, group=expand))
        h = b.conv(b.se(h, expand), expand, cout)
        x = b.node("Add", [x, h]) if stride == 1 and cout == c else h
        c = cout
    b.nodes[-1].output[0] = "y"
    shape = [1, 3, 96, 192]
    graph = helper.make_graph(b.nodes, "mnv3_blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(onnx.shape_inference.infer_shapes(model), path)
    return shape


def ppocr_cls(path: Path) -> list[int] | None:
    """The real classifier, upgraded to opset 13 with a static 1x3x48x192 input."""
    src = REAL_DIR / CLS_MODEL
    if not src.is_file():
        return None
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(src), 13)
    edges = [(v, CLS_SHAPE) for v in model.graph.input] + [(v, [1]) for v in model.graph.output]
    for value, sizes in edges:  # fixed sizes; an output keeps its other dims
        dims = value.type.tensor_type.shape.dim
        for i, size in enumerate(sizes):
            dims[i].Clear()
            dims[i].dim_value = size
    del model.graph.value_info[:]
    onnx.save(onnx.shape_inference.infer_shapes(model), path)
    return CLS_SHAPE


# ---- conversions -------------------------------------------------------------------------
def edgeship_int8(fp32: Path, calib: Path, out: Path) -> Path:
    from edgeship.converter import ConvertOptions, convert

    convert(fp32, calib, out, ConvertOptions(formats=("onnx",)))
    return out / "model.int8.onnx"


def ort_int8(fp32: Path, data: np.ndarray, out: Path) -> Path:
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    ort_quantize_static(fp32, out, [{"x": row[None]} for row in data])
    return out


def median_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(max(10, runs // 10)):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - began) * 1000.0)
    return statistics.median(times)


def measure(name: str, fp32: Path, shape: list[int], tmp: Path, runs: int) -> list[dict[str, Any]]:
    data = RNG.uniform(-1, 1, size=(16, *shape[1:])).astype(np.float32)
    np.savez(tmp / f"{name}_calib.npz", x=data)
    models = {"fp32": fp32,
              "edgeship int8": edgeship_int8(fp32, tmp / f"{name}_calib.npz", tmp / f"{name}_out"),
              "ort quantize_static": ort_int8(fp32, data, tmp / f"{name}_ort.onnx")}
    x = data[:1]
    rows = []
    for threads in (1, 2):
        # interleaved rounds: the fp32 baseline sees the same machine load as the INT8 models
        samples: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(3):
            for label, path in models.items():
                samples[label].append(median_ms(path, x, threads, runs))
        base = statistics.median(samples["fp32"])
        for label in models:
            ms = statistics.median(samples[label])
            rows.append({"model": name, "threads": threads, "variant": label, "ms": round(ms, 3),
                         "ratio_vs_fp32": round(ms / base, 3)})
    return rows


def main() -> None:
    runs = 60 if quick() else 300
    print_machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rows += measure("mnv3_blocks", tmp / "mnv3.onnx", mnv3_blocks(tmp / "mnv3.onnx"), tmp, runs)
        shape = ppocr_cls(tmp / "cls.onnx")
        if shape is None:
            print(f"skipped {CLS_MODEL}: not found in {REAL_DIR} (set EDGESHIP_REALMODELS)")
        else:
            rows += measure("ppocr_cls", tmp / "cls.onnx", shape, tmp, runs)
    print_table(rows, title="onnxruntime latency, one sample (median ms; ratio > 1: slower than fp32)")
    write_result("int8_speed", {"rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
