"""Quantization checks for the arithmetic and activation ops of issue 14 (HardSwish,
HardSigmoid, Sub, Tanh, LeakyRelu, PRelu, Gelu, LayerNormalization, and the ops that
stay float with a reason: Div by a tensor, Sqrt, Reciprocal, Pow, Erf, LSTM, GRU).

Each check returns why a node stays float, or None. The rules themselves are entries
of ``REGISTRY`` in :mod:`._oprules`; this module does not import it (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from ._ir import Graph

TANH_PARAMS = (1.0 / 128.0, 0)  # TFLite INT8 spec: TANH output scale 1/128, zero point 0

# why these ops stay float (in the report, and the TFLite writer's error)
NO_INT8_DIV = "TFLite has no int8 DIV kernel (a Div by a nonzero float constant becomes Mul)"
NO_INT8_SQRT = "TFLite SQRT has no int8 kernel (a decomposed LayerNorm around it is fused)"
NO_INT8_RECIPROCAL = "no int8 reciprocal in TFLite (Div/Reciprocal stay float)"
NO_INT8_POW = "Pow with an exponent other than 2 (x*x) has no int8 kernel"
NO_INT8_ERF = "Erf outside the Gelu pattern x*0.5*(1+Erf(x/sqrt2)) has no int8 kernel"
RECURRENT = (
    "{op}: full-integer {op} needs per-gate intermediate scales (TFLite "
    "UNIDIRECTIONAL_SEQUENCE_LSTM with calibrated gate, cell and hidden ranges), which "
    "edgeship does not calibrate yet; it stays float in the ONNX (quantized around it); "
    "use --format onnx"
)
FLOAT_LSTM = (
    "LSTM stays float (a full-integer LSTM needs calibrated per-gate scales): the ONNX "
    "quantizes around it; the TFLite runs it unrolled in float32 (on the CPU, not an NPU)"
)


def _binary_consts(node: onnx.NodeProto, g: Graph) -> str | None:
    if all(g.is_const(i) for i in node.input):
        return "all inputs are constant"
    return None


def check_sub(node: onnx.NodeProto, g: Graph) -> str | None:
    return _binary_consts(node, g)


def check_div(node: onnx.NodeProto, g: Graph) -> str | None:
    return NO_INT8_DIV


def check_prelu(node: onnx.NodeProto, g: Graph) -> str | None:
    if not g.is_const(node.input[1]):
        return "slope is not a constant"
    return None


def check_layernorm(node: onnx.NodeProto, g: Graph) -> str | None:
    if any(i and not g.is_const(i) for i in node.input[1:]):
        return "scale/bias are not constants"
    if len([o for o in node.output if o]) > 1:
        return "LayerNormalization with mean/inv_std_dev outputs"
    shape = g.shape(node.input[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    if shape is not None and axis not in (-1, len(shape) - 1):
        return "LayerNormalization over more than the last axis"
    return None


def stays_float(reason: str) -> Callable[[onnx.NodeProto, Graph], str | None]:
    """A check that always keeps the node float with ``reason``."""

    def check(node: onnx.NodeProto, g: Graph) -> str | None:
        return reason.format(op=node.op_type)

    return check
