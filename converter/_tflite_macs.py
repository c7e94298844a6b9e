"""The ops of a TFLite flatbuffer in execution order, each with its multiply-accumulates
(pure reading, no interpreter): what NPU compilers' op and MAC shares are counted over.

MACs are counted for the ops that hold them (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
TRANSPOSE_CONV, BATCH_MATMUL), from the tensor shapes: ``output elements x kernel
elements x input channels per output`` and the like; every other op counts 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from edgeship._errors import InputError

_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


@dataclass(frozen=True, kw_only=True)
class TfliteOp:
    index: int  # position in the execution order
    op: str  # builtin name (CONV_2D) or the custom code (ethos-u)
    outputs: tuple[str, ...]  # output tensor names (compilers keep them)
    macs: int
    edge: bool  # a float QUANTIZE of a model input / DEQUANTIZE to a model output


def read_ops(data: bytes) -> list[TfliteOp]:
    """The first subgraph's ops with their MACs."""
    if data[4:8] != b"TFL3":
        raise InputError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    fb = tflite.Model.GetRootAs(data, 0)
    graph = fb.Subgraphs(0)
    inputs = set(graph.InputsAsNumpy().tolist()) if not graph.InputsIsNone() else set()
    outputs = set(graph.OutputsAsNumpy().tolist()) if not graph.OutputsIsNone() else set()
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = _op_name(fb, op)
        ins = [t for t in op.InputsAsNumpy().tolist() if t >= 0] if not op.InputsIsNone() else []
        outs = op.OutputsAsNumpy().tolist() if not op.OutputsIsNone() else []
        edge = (name == "QUANTIZE" and bool(ins) and ins[0] in inputs) or (
            name == "DEQUANTIZE" and bool(outs) and outs[0] in outputs
        )
        ops.append(TfliteOp(
            index=i, op=name,
            outputs=tuple(graph.Tensors(t).Name().decode(errors="replace") for t in outs),
            macs=_macs(name, op, [_shape(graph, t) for t in ins], [_shape(graph, t) for t in outs]),
            edge=edge,
        ))
    return ops


def _op_name(fb: Any, op: Any) -> str:
    code = fb.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == tflite.BuiltinOperator.CUSTOM:
        return (code.CustomCode() or b"CUSTOM").decode(errors="replace")
    return str(_NAMES.get(builtin, f"BUILTIN_{builtin}"))


def _shape(graph: Any, index: int) -> list[int]:
    tensor = graph.Tensors(index)
    return [] if tensor.ShapeIsNone() else [int(d) for d in tensor.ShapeAsNumpy().tolist()]


def _elements(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 0


def _macs(name: str, op: Any, ins: list[list[int]], outs: list[list[int]]) -> int:
    out = _elements(outs[0]) if outs else 0
    if name == "CONV_2D" and len(ins) > 1 and len(ins[1]) == 4:
        _, kh, kw, cin = ins[1]  # [Cout, kh, kw, Cin per group]
        return out * kh * kw * cin
    if name == "DEPTHWISE_CONV_2D" and len(ins) > 1 and len(ins[1]) == 4:
        return out * ins[1][1] * ins[1][2]  # [1, kh, kw, Cout]
    if name == "FULLY_CONNECTED" and len(ins) > 1 and ins[1]:
        return out * ins[1][-1]  # [units, K]
    if name == "TRANSPOSE_CONV" and len(ins) > 2 and len(ins[1]) == 4:
        cout, kh, kw, _ = ins[1]  # inputs: output_shape, weights, input
        return _elements(ins[2]) * kh * kw * cout
    if name == "BATCH_MATMUL" and len(ins) > 1 and len(ins[0]) >= 2:
        return out * ins[0][-2 if _adj_x(op) else -1]
    return 0


def _adj_x(op: Any) -> bool:
    raw = op.BuiltinOptions()
    if raw is None:
        return False
    options = tflite.BatchMatMulOptions()
    options.Init(raw.Bytes, raw.Pos)
    return bool(options.AdjX())
