"""Float TFLite ops for the nodes the converter deliberately left in float.

The QDQ model keeps a node in float when int8 cannot hold it well (a detector's output
``Concat`` of pixel boxes and 0..1 scores, see :mod:`._tail`) or when no int8 kernel
exists. Such a node reads DequantizeLinear outputs and either feeds the graph's outputs
directly or a QuantizeLinear. Here it becomes DEQUANTIZE -> float op (-> QUANTIZE):
a model that is int8 up to that point and float after it. Nothing on the Edge TPU runs
in float: the Edge TPU check (:mod:`._edgetpu`) puts the cut at the first DEQUANTIZE,
so the report names what stays on the CPU.

Float values live in their logical (ONNX) layout; the rules here are table-driven
element-wise and data-movement ops, which is what a detector's tail holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from edgeship.converter._tflite_lower import Lowering, Val

FLOAT_VERSION = 1  # every float kernel used here exists since version 1


@dataclass(frozen=True)
class FloatVal:
    index: int  # tensor index in the FbGraph (float32, logical layout)
    shape: tuple[int, ...]


FloatRule = Callable[[Lowering, onnx.NodeProto], None]
FLOAT_RULES: dict[str, FloatRule] = {}


def float_rule(*op_types: str) -> Callable[[FloatRule], FloatRule]:
    def wrap(rule: FloatRule) -> FloatRule:
        for op_type in op_types:
            FLOAT_RULES[op_type] = rule
        return rule

    return wrap


def is_float_node(ctx: Lowering, node: onnx.NodeProto) -> bool:
    """True when no output of ``node`` is quantized: the converter kept it in float."""
    outs = [o for o in node.output if o]
    return not any(o in ctx.qdq.qparams for o in outs)


# ---- values ------------------------------------------------------------------------
def float_input(ctx: Lowering, name: str) -> FloatVal:
    """``name`` as a float32 tensor: a float value, a DEQUANTIZE of an int8 one, or a
    constant (float initializer or dequantized integer constant)."""
    cache: dict[str, FloatVal] = ctx.float_values
    if name in cache:
        return cache[name]
    source = ctx.qdq.source(name)
    if source in cache:
        return cache[source]
    if source in ctx.values:
        value = ctx.logical(ctx.values[source])
        out = float_tensor(ctx, f"{_tensor_name(ctx, value)}/float", value.shape)
        ctx.emit("DEQUANTIZE", [value.index], [out.index])
        cache[source] = out
        return out
    if name in ctx.qdq.qconsts:
        data = ctx.qdq.qconsts[name].dequantized()
    elif name in ctx.qdq.initializers:
        data = np.asarray(ctx.qdq.initializers[name])
    else:
        raise ctx.fail(f"input {name!r} is neither computed before this node nor a constant")
    if data.dtype == np.int64:
        data = data.astype(np.int32)  # TFLite shape/index tensors are int32
    elif data.dtype != np.int32:
        data = data.astype(np.float32)
    return FloatVal(ctx.const(name, data), tuple(data.shape))


def bind_float(ctx: Lowering, name: str, value: FloatVal) -> None:
    """Bind a float result; requantize it when a QuantizeLinear follows in the ONNX model
    (a float island between int8 ops)."""
    ctx.float_values[name] = value
    q = ctx.qdq.qparams.get(name)
    if q is not None:
        out = ctx.new_val(f"{name}/int8", value.shape, "logical", q)
        ctx.emit("QUANTIZE", [value.index], [out.index])
        ctx.bind(name, out)


def float_tensor(ctx: Lowering, name: str, shape: tuple[int, ...]) -> FloatVal:
    return FloatVal(ctx.act(name, shape, None, dtype="float32"), tuple(shape))


def _tensor_name(ctx: Lowering, value: Val | FloatVal) -> str:
    return ctx.graph.tensors[value.index].name


def _out(ctx: Lowering, node: onnx.NodeProto, i: int = 0) -> FloatVal:
    name = node.output[i]
    return float_tensor(ctx, name, ctx.out_shape(name))


def emit_float(ctx: Lowering, opcode: str, inputs: list[int], outputs: list[int],
                options: tuple[str, dict[str, object]] | None = None) -> None:
    ctx.emit(opcode, inputs, outputs, options, version=FLOAT_VERSION)


_OPTIONS = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}


def emit_binary(ctx: Lowering, opcode: str, a: FloatVal, b: FloatVal, out: FloatVal) -> None:
    emit_float(ctx, opcode, [a.index, b.index], [out.index],
               (_OPTIONS[opcode], {"FusedActivationFunction": 0}))


def emit_concat(ctx: Lowering, vals: list[FloatVal], out: FloatVal, axis: int) -> None:
    emit_float(ctx, "CONCATENATION", [v.index for v in vals], [out.index],
               ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}))


def emit_reshape(ctx: Lowering, src: FloatVal, dst: FloatVal) -> None:
    shape = list(dst.shape)
    emit_float(ctx, "RESHAPE", [src.index, ctx.int32("shape", shape)], [dst.index],
               ("ReshapeOptions", {"NewShape": shape}))


# ---- rules ----------------------------------------------------------------------------
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV"}


@float_rule(*_BINARY)
def binary(ctx: Lowering, node: onnx.NodeProto) -> None:
    a, b = (float_input(ctx, n) for n in node.input[:2])
    out = _out(ctx, node)
    emit_binary(ctx, _BINARY[node.op_type], a, b, out)
    bind_float(ctx, node.output[0], out)


@float_rule("Sigmoid", "Tanh", "Relu")
def unary(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    out = _out(ctx, node)
    opcode = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "Relu": "RELU"}[node.op_type]
    emit_float(ctx, opcode, [x.index], [out.index])
    bind_float(ctx, node.output[0], out)


@float_rule("Concat")
def concat(ctx: Lowering, node: onnx.NodeProto) -> None:
    vals = [float_input(ctx, n) for n in node.input]
    out = _out(ctx, node)
    emit_concat(ctx, vals, out, int(ctx.attr("axis")) % len(out.shape))
    bind_float(ctx, node.output[0], out)


@float_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
def reshape(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    out = _out(ctx, node)
    emit_reshape(ctx, x, out)
    bind_float(ctx, node.output[0], out)


@float_rule("Transpose")
def transpose(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    perm = list(ctx.attr("perm", list(range(len(x.shape)))[::-1]))
    out = _out(ctx, node)
    emit_float(ctx, "TRANSPOSE", [x.index, ctx.int32("perm", perm)], [out.index])
    bind_float(ctx, node.output[0], out)


@float_rule("Softmax")
def softmax(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = float_input(ctx, node.input[0])
    axis = int(ctx.attr("axis", -1)) % len(x.shape)
    if axis != len(x.shape) - 1:
        raise ctx.fail(f"float softmax over axis {axis} (only the last axis is lowered)")
    out = _out(ctx, node)
    emit_float(ctx, "SOFTMAX", [x.index], [out.index], ("SoftmaxOptions", {"Beta": 1.0}))
    bind_float(ctx, node.output[0], out)


FLOAT_ISLANDS = frozenset({"LSTM"})  # no int8 kernel: float between DEQUANTIZE and QUANTIZE

__all__ = ["FLOAT_ISLANDS", "FLOAT_RULES", "FloatVal", "bind_float", "emit_binary", "emit_concat",
           "emit_float", "emit_reshape", "float_input", "float_rule", "float_tensor",
           "is_float_node"]


@float_rule("LayerNormalization")
def layer_norm(ctx: Lowering, node: onnx.NodeProto) -> None:
    """LayerNormalization over the last axis in float32, as onnxruntime computes it
    between its DequantizeLinear and QuantizeLinear: MEAN, SUB, MUL, MEAN, ADD(eps),
    RSQRT, MUL, MUL(gamma), ADD(beta)."""
    x = float_input(ctx, node.input[0])
    rank = len(x.shape)
    if int(ctx.attr("axis", -1)) % rank != rank - 1:
        raise ctx.fail("only LayerNormalization over the last axis is lowered")
    base, reduced = node.output[0], (*x.shape[:-1], 1)
    axes = ctx.int32(f"{base}/axes", [rank - 1])

    def tensor(key: str, shape: tuple[int, ...]) -> FloatVal:
        return float_tensor(ctx, f"{base}/{key}", shape)

    def mean(src: FloatVal, key: str) -> FloatVal:
        out = tensor(key, reduced)
        emit_float(ctx, "MEAN", [src.index, axes], [out.index], ("ReducerOptions", {"KeepDims": True}))
        return out

    mu = mean(x, "mean")
    centered = tensor("centered", x.shape)
    emit_binary(ctx, "SUB", x, mu, centered)
    squared = tensor("squared", x.shape)
    emit_binary(ctx, "MUL", centered, centered, squared)
    var_eps = tensor("variance_eps", reduced)
    eps = float(ctx.attr("epsilon", 1e-5))
    emit_binary(ctx, "ADD", mean(squared, "variance"),
                FloatVal(ctx.const(f"{base}/eps", np.array([eps], np.float32)), (1,)), var_eps)
    rstd = tensor("rstd", reduced)
    emit_float(ctx, "RSQRT", [var_eps.index], [rstd.index])
    normalized = tensor("normalized", x.shape)
    emit_binary(ctx, "MUL", centered, rstd, normalized)
    result = normalized
    for index, opcode in ((1, "MUL"), (2, "ADD")):
        if len(node.input) > index and node.input[index]:
            nxt = tensor("scaled" if opcode == "MUL" else "shifted", x.shape)
            emit_binary(ctx, opcode, result, float_input(ctx, node.input[index]), nxt)
            result = nxt
    bind_float(ctx, node.output[0], result)
