"""The op registry: op type -> the small rule that says how it is quantized.

A rule says which inputs are weights (and how: per-channel axis or per-tensor), which
input is an int32 bias, how the output's parameters relate to the input's (``own``:
calibrated; ``same``: exactly the first input's; ``unify``: all inputs and the output
share one set; ``fixed``: a constant scale/zero point), and a ``check`` that returns why
a particular node cannot be quantized (or None). Adding an op is adding one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from . import _oprules_move as move
from ._ir import Graph
from ._oprules_math import (
    FLOAT_LSTM,
    NO_INT8_ERF,
    NO_INT8_POW,
    NO_INT8_RECIPROCAL,
    NO_INT8_SQRT,
    RECURRENT,
    TANH_PARAMS,
    check_div,
    check_layernorm,
    check_prelu,
    check_sub,
    stays_float,
)

Check = Callable[[onnx.NodeProto, Graph], "str | None"]


@dataclass(frozen=True, kw_only=True)
class OpRule:
    """How one op type is quantized (see the module docstring)."""

    output: str = "own"  # own | same | unify | fixed
    weight_input: int | None = None  # index of a constant weight input
    weight_axis: int | None = None  # per-channel axis, None = per-tensor
    bias_input: int | None = None  # index of the int32 bias input
    fixed: tuple[float, int] | None = None  # (scale, zero point) when output == "fixed"
    activation_inputs: tuple[int, ...] | None = None  # None = every non-constant input
    can_fuse_activation: bool = False  # a following Relu/Clip(0,x) may be folded in
    check: Check | None = None


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Attribute ``name``'s value (its type is the op schema's: int, float, bytes, a list of
    them, a tensor), or ``default``; the caller converts it to what it expects."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _check_conv(node: onnx.NodeProto, g: Graph) -> str | None:
    if not g.is_const(node.input[1]):
        return "weight is not a constant"
    if g.inits[node.input[1]].ndim != 4:
        return "only 2-D convolutions are quantized"
    if len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
        return "bias is not a constant"
    return None


def _check_gemm(node: onnx.NodeProto, g: Graph) -> str | None:
    if attr(node, "transA", 0):
        return "transA=1 is not supported"
    if not g.is_const(node.input[1]) or g.inits[node.input[1]].ndim != 2:
        return "weight is not a constant 2-D matrix"
    if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
        return "alpha/beta could not be folded into the weights"
    if len(node.input) > 2 and node.input[2]:
        b = g.inits.get(node.input[2])
        if b is None or b.size not in (
            1,
            g.inits[node.input[1]].shape[1 if attr(node, "transB", 0) == 0 else 0],
        ):
            return "bias is not a constant vector"
    return None


def _check_matmul(node: onnx.NodeProto, g: Graph) -> str | None:
    if g.is_const(node.input[1]) and g.inits[node.input[1]].ndim != 2:
        return "constant weight is not 2-D"
    return None


def _check_clip(node: onnx.NodeProto, g: Graph) -> str | None:
    bounds = [i for i in node.input[1:] if i]
    if not all(g.is_const(i) for i in bounds):
        return "min/max are not constants"
    return None


def _check_reshape(node: onnx.NodeProto, g: Graph) -> str | None:
    return None if g.is_const(node.input[1]) else "target shape is not a constant"


def _check_pool(node: onnx.NodeProto, g: Graph) -> str | None:
    if len([o for o in node.output if o]) > 1:
        return "MaxPool with an indices output"
    shape = g.shape(node.input[0])
    if shape is not None and len(shape) != 4:
        return "only 2-D pooling is quantized"
    return None


def _check_binary(node: onnx.NodeProto, g: Graph) -> str | None:
    if all(g.is_const(i) for i in node.input):
        return "all inputs are constant"
    return None


SOFTMAX_SIGMOID_PARAMS = (1.0 / 256.0, -128)

REGISTRY: dict[str, OpRule] = {
    "Conv": OpRule(
        weight_input=1,
        weight_axis=0,
        bias_input=2,
        activation_inputs=(0,),
        can_fuse_activation=True,
        check=_check_conv,
    ),
    "Gemm": OpRule(
        weight_input=1,
        bias_input=2,
        activation_inputs=(0,),
        can_fuse_activation=True,
        check=_check_gemm,
    ),
    "MatMul": OpRule(check=_check_matmul, can_fuse_activation=True),
    "Add": OpRule(check=_check_binary, can_fuse_activation=True),
    "Mul": OpRule(check=_check_binary),
    "Relu": OpRule(),
    "Clip": OpRule(activation_inputs=(0,), check=_check_clip),
    "Sigmoid": OpRule(output="fixed", fixed=SOFTMAX_SIGMOID_PARAMS),
    "Softmax": OpRule(output="fixed", fixed=SOFTMAX_SIGMOID_PARAMS, check=move.check_softmax),
    "MaxPool": OpRule(output="same", check=_check_pool),
    "AveragePool": OpRule(output="same", check=_check_pool),
    "GlobalAveragePool": OpRule(output="same", check=_check_pool),
    "Flatten": OpRule(output="same"),
    "Reshape": OpRule(output="same", activation_inputs=(0,), check=_check_reshape),
    "Concat": OpRule(output="unify"),
    # ---- data movement (issue 14)
    "Split": OpRule(output="same", activation_inputs=(0,), check=move.check_split),
    "Slice": OpRule(output="same", activation_inputs=(0,), check=move.check_slice),
    "Transpose": OpRule(output="same"),
    "Squeeze": OpRule(output="same", activation_inputs=(0,), check=move.check_axes_input),
    "Unsqueeze": OpRule(output="same", activation_inputs=(0,), check=move.check_axes_input),
    "Resize": OpRule(output="same", activation_inputs=(0,), check=move.check_resize),
    "ConvTranspose": OpRule(
        weight_input=1,
        weight_axis=1,
        bias_input=2,
        activation_inputs=(0,),
        can_fuse_activation=True,
        check=move.check_conv_transpose,
    ),
    "Pad": OpRule(output="same", activation_inputs=(0,), check=move.check_pad),
    "ReduceMean": OpRule(output="same", activation_inputs=(0,), check=move.check_reduce_mean),
    "Gather": OpRule(output="same", activation_inputs=(0,), check=move.check_gather),
    "Expand": OpRule(output="same", activation_inputs=(0,), check=move.check_expand_tile),
    "Tile": OpRule(output="same", activation_inputs=(0,), check=move.check_expand_tile),
    # ---- arithmetic and activations (issue 14)
    "HardSwish": OpRule(),
    "HardSigmoid": OpRule(),
    "Sub": OpRule(check=check_sub),
    "Tanh": OpRule(output="fixed", fixed=TANH_PARAMS),
    "LeakyRelu": OpRule(),
    "PRelu": OpRule(check=check_prelu),
    "Gelu": OpRule(),
    "LayerNormalization": OpRule(activation_inputs=(0,), check=check_layernorm),
    "Div": OpRule(check=check_div),
    "Sqrt": OpRule(check=stays_float(NO_INT8_SQRT)),
    "Reciprocal": OpRule(check=stays_float(NO_INT8_RECIPROCAL)),
    "Pow": OpRule(check=stays_float(NO_INT8_POW)),
    "Erf": OpRule(check=stays_float(NO_INT8_ERF)),
    "LSTM": OpRule(check=stays_float(FLOAT_LSTM)),
    "GRU": OpRule(check=stays_float(RECURRENT)),
}


def rule_for(node: onnx.NodeProto, graph: Graph) -> tuple[OpRule | None, str | None]:
    """The rule for ``node`` and None, or None and the reason it stays float."""
    if node.domain not in ("", "ai.onnx"):
        return None, f"custom domain {node.domain!r}"
    rule = REGISTRY.get(node.op_type)
    if rule is None:
        return None, f"no quantization rule for {node.op_type}"
    outs = [o for o in node.output if o]
    if not outs or not all(graph.is_float(o) for o in outs):
        return None, "output is not float32"
    reason = rule.check(node, graph) if rule.check else None
    return (None, reason) if reason else (rule, None)


def fusable_clamp(node: onnx.NodeProto, graph: Graph) -> tuple[float, float] | None:
    """(0, max) if ``node`` is a Relu or a Clip(0, max>0) that a range can make exact."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    lo_name = node.input[1] if len(node.input) > 1 else ""
    hi_name = node.input[2] if len(node.input) > 2 else ""
    if (lo_name and not graph.is_const(lo_name)) or (hi_name and not graph.is_const(hi_name)):
        return None
    lo = float(graph.inits[lo_name]) if lo_name else float("-inf")
    hi = float(graph.inits[hi_name]) if hi_name else float("inf")
    return (0.0, hi) if lo == 0.0 and hi > 0.0 else None
