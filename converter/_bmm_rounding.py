"""The written INT8 ONNX rounds a MatMul of two activations the way LiteRT's int8
BATCH_MATMUL does.

LiteRT's BATCH_MATMUL kernel (no XNNPACK path for two int8 activations) requantizes its
int32 accumulator with gemmlowp's two roundings: ``SaturatingRoundingDoublingHighMul``
rounds ``acc * M0`` (M0 the 31-bit multiplier) to an integer in units of 2^-shift of an
output step, then ``RoundingDivideByPOT`` rounds that to a step. onnxruntime's
QLinearMatMul rounds ``acc * M`` once. Every value within ~2^-(shift+1) of a half goes
different ways: 0.4 % of the attention scores of PP-OCRv4's recognizer (shift 7), which
then move its softmax and its strings. No output scale avoids it (acc takes every value),
so the ONNX computes the same integers instead::

    acc = MatMulInteger(a, b, za, zb)                     (int32, exact)
    t   = (acc * M0 + nudge) / 2^31  (int64, truncating)  nudge = 2^30 or 1 - 2^30
    y   = floor(t / 2^s) + (t mod 2^s > 2^(s-1) - 1 + [t < 0]) + zo, clipped to int8

(in float64 from ``t`` on, exact for |t| < 2^53), written where the QuantizeLinear of the
MatMul's output was. Only when a TFLite file is written, like the LayerNorm chain; the
TFLite writer puts the MatMul back when it reads the file (:func:`recompose_matmuls`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEP = "|bmm/"  # <MatMul node name>|bmm/<step>: the chain's node names


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: (31-bit fixed-point multiplier, power-of-two shift)."""
    q, shift = math.frexp(real)
    fixed = round(q * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    return fixed, shift


def tflite_requantize(acc: np.ndarray, real: float, zero_point: int) -> np.ndarray:
    """LiteRT's int8 result for int32 accumulators ``acc`` (pure numpy, for tests)."""
    fixed, shift = quantize_multiplier(real)
    x = acc.astype(np.int64) << max(shift, 0)
    ab = x * fixed
    t = np.where(ab >= 0, ab + (1 << 30), ab + 1 - (1 << 30))
    t = np.sign(t) * (np.abs(t) >> 31)  # C++ division truncates toward zero
    right = max(-shift, 0)
    mask = (1 << right) - 1
    out = (t >> right) + ((t & mask) > (mask >> 1) + (t < 0))
    result: np.ndarray = np.clip(out + zero_point, -128, 127)
    return result


def emulate_matmuls(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each quantized MatMul of two activations requantized as above."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    plans = {}
    for node in model.graph.node:
        found = _match(node, producer, readers, inits)
        if found is not None:
            plans[found[2].output[0]] = (node, *found)
    if not plans:
        return model, 0
    out = onnx.ModelProto.FromString(model.SerializeToString())
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.op_type == "MatMul" and any(p[0].name == node.name for p in plans.values()):
            continue  # replaced by the chain at its QuantizeLinear
        if node.op_type == "QuantizeLinear" and node.output[0] in plans:
            chain, chain_inits = _chain(*plans[node.output[0]], inits)
            nodes.extend(chain)
            out.graph.initializer.extend(chain_inits)
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, len(plans)


def _match(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
           readers: dict[str, list[onnx.NodeProto]], inits: dict[str, np.ndarray],
           ) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    """(DQ a, DQ b, Q y) of a MatMul of two per-tensor uint8 activations, else None."""
    if node.op_type != "MatMul" or not node.name:
        return None
    dqs = [producer.get(i) for i in node.input]
    users = readers.get(node.output[0], [])
    if any(d is None or d.op_type != "DequantizeLinear" for d in dqs) or len(users) != 1:
        return None
    q = users[0]
    if q.op_type != "QuantizeLinear":
        return None
    for d in (*dqs, q):
        assert d is not None
        if d.input[0] in inits or inits.get(d.input[2], np.zeros(2)).dtype != np.uint8:
            return None  # a constant operand (FULLY_CONNECTED in TFLite) or not uint8
        if inits[d.input[1]].size != 1:
            return None
    a, b = dqs
    assert a is not None and b is not None
    return a, b, q


def _chain(mm: onnx.NodeProto, a: onnx.NodeProto, b: onnx.NodeProto, q: onnx.NodeProto,
           inits: dict[str, np.ndarray]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    scale = [float(inits[d.input[1]]) for d in (a, b, q)]
    real = float(np.float64(np.float32(scale[0])) * np.float64(np.float32(scale[1])) / np.float64(np.float32(scale[2])))
    fixed, shift = quantize_multiplier(real)
    right = max(-shift, 0)
    zo = int(inits[q.input[2]]) - 128
    base, nodes, consts = mm.name + SEP, [], []

    def const(name: str, value: np.ndarray) -> str:
        consts.append(numpy_helper.from_array(value, base + name))
        return base + name

    def op(kind: str, inputs: list[str], step: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [base + step], name=base + step, **attrs))
        return base + step

    acc = op("MatMulInteger", [a.input[0], b.input[0], a.input[2], b.input[2]], "acc")
    nodes[-1].doc_string = f"{mm.input[0]},{mm.input[1]},{mm.output[0]}"  # for recompose_matmuls
    ab = op("Mul", [op("Cast", [acc], "acc64", to=TensorProto.INT64),
                    const("m0", np.array(fixed << max(shift, 0), np.int64))], "ab")
    nudge = op("Where", [op("GreaterOrEqual", [ab, const("zero", np.array(0, np.int64))], "pos"),
                         const("up", np.array(1 << 30, np.int64)), const("down", np.array(1 - (1 << 30), np.int64))],
               "nudge")
    t = op("Cast", [op("Div", [op("Add", [ab, nudge], "nudged"), const("two31", np.array(1 << 31, np.int64))],
                       "t")], "t64f", to=TensorProto.DOUBLE)
    step = float(1 << right)
    floor = op("Floor", [op("Div", [t, const("pot", np.array(step, np.float64))], "scaled")], "floor")
    rem = op("Sub", [t, op("Mul", [floor, const("pot2", np.array(step, np.float64))], "back")], "rem")
    neg = op("Cast", [op("Less", [t, const("zerof", np.array(0.0, np.float64))], "neg")], "negf",
             to=TensorProto.DOUBLE)
    threshold = op("Add", [neg, const("half", np.array(float(((1 << right) - 1) >> 1), np.float64))], "thr")
    up = op("Cast", [op("Greater", [rem, threshold], "over")], "overf", to=TensorProto.DOUBLE)
    y = op("Add", [op("Add", [floor, up], "rounded"), const("zo", np.array(float(zo + 128), np.float64))], "y")
    clipped = op("Clip", [y, const("lo", np.array(0.0, np.float64)), const("hi", np.array(255.0, np.float64))],
                 "clip")
    nodes.append(helper.make_node("Cast", [clipped], [q.output[0]], name=base + "u8", to=TensorProto.UINT8))
    nodes[-1].doc_string = f"{q.input[1]},{q.input[2]}"
    return nodes, consts


def recompose_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse, for the TFLite writer reading the written file: DQ a, DQ b -> MatMul
    -> QuantizeLinear again (``model`` when it has no chain)."""
    if not any(SEP in n.name for n in model.graph.node):
        return model
    out: onnx.ModelProto = onnx.ModelProto.FromString(model.SerializeToString())
    nodes: list[onnx.NodeProto] = []
    products: dict[str, str] = {}  # MatMul name -> its float output
    for node in out.graph.node:
        head, sep, step = node.name.partition(SEP)
        if not sep:
            nodes.append(node)
        elif step == "acc":
            a, b, y = node.doc_string.split(",")
            nodes.append(helper.make_node("MatMul", [a, b], [y], name=head))
            products[head] = y
        elif step == "u8":
            s, z = node.doc_string.split(",")
            nodes.append(helper.make_node("QuantizeLinear", [products[head], s, z], [node.output[0]],
                                          name=f"{head}/Q"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
