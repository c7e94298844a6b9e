"""Would this TFLite model run on a Coral Edge TPU? A check from Coral's documented model
requirements (https://coral.ai/docs/edgetpu/models-intro/#model-requirements), without
the compiler (which only exists for x86-64 Debian and is not needed to answer this):

- tensors are 8-bit (int8/uint8); only a bias may be int32;
- tensor sizes are constant (static shapes, no -1 in a shape signature);
- model parameters (weights, biases) are constant;
- tensors have at most 3 dimensions larger than 1, and those are the innermost ones;
- the op is in the supported list, with its documented restrictions.

The compiler maps the graph only up to the first op that breaks a rule; that op and
everything after it run on the CPU. QUANTIZE ops that take a float model input and
DEQUANTIZE ops that give a float model output sit on the graph's edges: they run on the
CPU but do not cut the graph (a model written with ``io="int8"`` has none).

To put the result in a conversion report::

    from edgeship.converter import check_edgetpu
    report["edgetpu"] = check_edgetpu(tflite_path).to_dict()

(``edgeship convert`` does this when it writes a .tflite: converter/_convert.py).

``to_dict()`` has ``fully_mappable`` (bool), ``verdict`` (one plain sentence),
``cpu_ops`` (each with index, op, reasons), ``cut`` (the first unsupported op or None)
and ``op_versions``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tflite

from edgeship._errors import InputError

__all__ = ["EdgeTpuOp", "EdgeTpuReport", "check_edgetpu"]

REQUIREMENTS_URL = "https://coral.ai/docs/edgetpu/models-intro/#model-requirements"
MAX_TFLITE_BYTES = 512 * 1024 * 1024
_EIGHT_BIT = (tflite.TensorType.INT8, tflite.TensorType.UINT8)
_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

# Coral's supported-operations table (TFLite op names); restrictions are checked below
SUPPORTED = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D",
    "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB",
    "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
_PARAM_INPUTS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2),
                 "TRANSPOSE_CONV": (1,)}
_NO_FUSED_ACT = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")


@dataclass(frozen=True, kw_only=True)
class EdgeTpuOp:
    """One op that would run on the CPU, and why."""

    index: int  # position in the TFLite execution order
    op: str
    version: int
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "version": self.version,
                "reasons": list(self.reasons)}


@dataclass(frozen=True, kw_only=True)
class EdgeTpuReport:
    """The verdict for one model; ``cut`` is where the compiler would stop mapping."""

    fully_mappable: bool
    verdict: str
    ops_total: int
    ops_on_tpu: int
    cpu_ops: tuple[EdgeTpuOp, ...]
    edge_ops: tuple[EdgeTpuOp, ...]  # float QUANTIZE/DEQUANTIZE at the model's edges
    cut: EdgeTpuOp | None
    op_versions: dict[str, int] = field(default_factory=dict)
    requirements: str = REQUIREMENTS_URL

    def to_dict(self) -> dict[str, Any]:
        return {
            "fully_mappable": self.fully_mappable, "verdict": self.verdict,
            "ops_total": self.ops_total, "ops_on_tpu": self.ops_on_tpu,
            "cpu_ops": [o.to_dict() for o in self.cpu_ops],
            "edge_ops": [o.to_dict() for o in self.edge_ops],
            "cut": self.cut.to_dict() if self.cut else None,
            "op_versions": dict(self.op_versions), "requirements": self.requirements,
        }


def check_edgetpu(model: bytes | str | os.PathLike[str]) -> EdgeTpuReport:
    """Check a TFLite flatbuffer (bytes or path) against the Edge TPU requirements."""
    data = model if isinstance(model, bytes) else _read(Path(model))
    if data[4:8] != b"TFL3":
        raise InputError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    fb = tflite.Model.GetRootAs(data, 0)
    graph = fb.Subgraphs(0)
    ctx = _Graph(fb, graph)
    results = [ctx.check(i) for i in range(graph.OperatorsLength())]
    return _report(results, ctx)


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TFLITE_BYTES:
            raise InputError(f"{path} is {size} bytes, over the limit of {MAX_TFLITE_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


class _Graph:
    """Read access to one subgraph, and the per-op rules."""

    def __init__(self, fb: Any, graph: Any) -> None:
        self.fb, self.graph = fb, graph
        self.inputs = set(graph.InputsAsNumpy().tolist())
        self.outputs = set(graph.OutputsAsNumpy().tolist())

    def op_name(self, op: Any) -> tuple[str, int]:
        code = self.fb.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return _NAMES.get(builtin, f"BUILTIN_{builtin}"), code.Version()

    def tensor(self, index: int) -> Any:
        return self.graph.Tensors(index)

    def is_const(self, index: int) -> bool:
        buffer = self.fb.Buffers(self.tensor(index).Buffer())
        return buffer is not None and buffer.DataLength() > 0

    def check(self, i: int) -> tuple[EdgeTpuOp, bool]:
        """(op with the reasons it cannot be mapped, whether it is a float edge op)."""
        op = self.graph.Operators(i)
        name, version = self.op_name(op)
        ins = [t for t in op.InputsAsNumpy().tolist() if t >= 0]
        outs = op.OutputsAsNumpy().tolist()
        reasons = [] if name in SUPPORTED else [f"{name} is not in the Edge TPU's supported ops"]
        reasons += self._tensor_rules(name, ins, outs)
        rule = _OP_RULES.get(name)
        if rule is not None and not reasons:
            reasons += rule(self, op, ins, outs)
        edge = (name == "QUANTIZE" and ins[0] in self.inputs) or (
            name == "DEQUANTIZE" and outs[0] in self.outputs)
        return EdgeTpuOp(index=i, op=name, version=version, reasons=tuple(reasons)), edge

    def _tensor_rules(self, name: str, ins: list[int], outs: list[int]) -> list[str]:
        reasons = []
        bias = _BIAS_INPUT.get(name)
        for pos, t in [*enumerate(ins), *((-1, o) for o in outs)]:
            tensor = self.tensor(t)
            label = tensor.Name().decode(errors="replace")
            is_bias = pos == bias and tensor.Type() == tflite.TensorType.INT32
            if tensor.Type() not in _EIGHT_BIT and not is_bias and not self._is_shape_operand(name, pos):
                reasons.append(f"tensor {label!r} is {_type_name(tensor.Type())}, not 8-bit")
            sig = tensor.ShapeSignatureAsNumpy() if not tensor.ShapeSignatureIsNone() else None
            shape = tensor.ShapeAsNumpy() if not tensor.ShapeIsNone() else np.zeros(0, np.int32)
            if (sig is not None and np.any(sig < 0)) or np.any(shape < 0):
                reasons.append(f"tensor {label!r} has a dynamic shape")
            # the rank rule is about activations: 4-D conv filters are fine
            if len(shape) > 3 and any(d > 1 for d in shape.tolist()[:-3]) and not self.is_const(t):
                reasons.append(f"tensor {label!r} {shape.tolist()} has more than 3 dimensions > 1")
        for pos in _PARAM_INPUTS.get(name, ()):
            if pos < len(ins) and not self.is_const(ins[pos]):
                reasons.append(f"parameter input {pos} is not constant")
        return reasons

    @staticmethod
    def _is_shape_operand(name: str, pos: int) -> bool:
        # int32 index operands (shapes, axes, paddings, permutations) are not data tensors
        operands = {"RESHAPE": (1,), "PAD": (1,), "TRANSPOSE": (1,), "SPLIT": (0,), "MEAN": (1,),
                    "SUM": (1,), "REDUCE_MAX": (1,), "REDUCE_MIN": (1,), "STRIDED_SLICE": (1, 2, 3),
                    "SLICE": (1, 2), "EXPAND_DIMS": (1,), "RESIZE_BILINEAR": (1,),
                    "RESIZE_NEAREST_NEIGHBOR": (1,), "TRANSPOSE_CONV": (0,)}
        return pos in operands.get(name, ())


def _options(op: Any, table: Any) -> Any:
    options = op.BuiltinOptions()
    if options is None:
        return None
    value = table()
    value.Init(options.Bytes, options.Pos)
    return value


def _no_fused(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
    name, _ = ctx.op_name(op)
    table = {"CONCATENATION": tflite.ConcatenationOptions}.get(name, tflite.Pool2DOptions)
    opts = _options(op, table)
    if opts is not None and opts.FusedActivationFunction() != 0:
        return [f"{name} with a fused activation"]
    if name == "CONCATENATION":
        consts = [t for t in ins if ctx.is_const(t)]
        if consts and (len(ins) != 2 or any(np.any(ctx.fb.Buffers(ctx.tensor(t).Buffer()).DataAsNumpy()) for t in consts)):
            return ["CONCATENATION with a constant input other than a 2-input zero pad"]
    return []


def _conv(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
    opts = _options(op, tflite.Conv2DOptions)
    if opts is not None and opts.DilationWFactor() != opts.DilationHFactor():
        return ["CONV_2D with different dilations in x and y"]
    return []


def _depthwise(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
    opts = _options(op, tflite.DepthwiseConv2DOptions)
    if opts is not None and (opts.DilationWFactor() != 1 or opts.DilationHFactor() != 1):
        return ["DEPTHWISE_CONV_2D with dilation"]
    return []


def _fully_connected(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
    opts = _options(op, tflite.FullyConnectedOptions)
    if opts is not None and opts.WeightsFormat() != 0:
        return ["FULLY_CONNECTED with a non-default weights format"]
    return []


def _softmax(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
    shape = ctx.tensor(ins[0]).ShapeAsNumpy().tolist()
    if sum(d > 1 for d in shape) > 1 or int(np.prod(shape)) > 16000:
        return [f"SOFTMAX on {shape}: only a 1-D input of at most 16,000 elements"]
    return []


def _axes_rule(what: str) -> Callable[[_Graph, Any, list[int], list[int]], list[str]]:
    """MEAN/PAD/SPLIT: not along the batch axis (MEAN and PAD: only along x and y)."""

    def rule(ctx: _Graph, op: Any, ins: list[int], outs: list[int]) -> list[str]:
        if what == "split":
            axis_t, data_t = ins[0], ins[1]
        else:
            data_t, axis_t = ins[0], ins[1]
        if not ctx.is_const(axis_t):
            return [f"{what} parameters are not constant"]
        raw = ctx.fb.Buffers(ctx.tensor(axis_t).Buffer()).DataAsNumpy().tobytes()
        values = np.frombuffer(raw, np.int32)
        rank = len(ctx.tensor(data_t).ShapeAsNumpy())
        if what == "pad":
            padded = [d for d, (lo, hi) in enumerate(values.reshape(-1, 2).tolist()) if lo or hi]
            if any(d not in (1, 2) for d in padded) or rank != 4:
                return ["PAD only along x and y"]
        elif what == "mean":
            axes = sorted({int(a) % rank for a in values})
            if rank != 4 or any(a not in (1, 2) for a in axes):
                return ["MEAN only along x and/or y"]
        elif any(int(a) % rank == 0 for a in values):
            return ["SPLIT along the batch axis"]
        return []

    return rule


_OP_RULES: dict[str, Callable[[_Graph, Any, list[int], list[int]], list[str]]] = {
    "AVERAGE_POOL_2D": _no_fused, "MAX_POOL_2D": _no_fused, "CONCATENATION": _no_fused,
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected,
    "SOFTMAX": _softmax, "PAD": _axes_rule("pad"), "MEAN": _axes_rule("mean"),
    "SPLIT": _axes_rule("split"),
}


def _type_name(code: int) -> str:
    names = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    return str(names.get(code, code)).lower()


def _report(results: list[tuple[EdgeTpuOp, bool]], ctx: _Graph) -> EdgeTpuReport:
    versions: dict[str, int] = {}
    for op, _ in results:
        versions[op.op] = max(op.version, versions.get(op.op, 0))
    edge_ops = tuple(op for op, edge in results if edge)
    inner = [op for op, edge in results if not edge]
    cut = next((op for op in inner if op.reasons), None)
    cpu: list[EdgeTpuOp] = []
    if cut is not None:
        for op in inner[inner.index(cut):]:
            reasons = op.reasons or (f"after the graph cut at op #{cut.index} ({cut.op})",)
            cpu.append(EdgeTpuOp(index=op.index, op=op.op, version=op.version, reasons=reasons))
    on_tpu = len(inner) - len(cpu)
    if cut is None:
        verdict = (f"Fully mappable: all {len(inner)} ops can run on the Edge TPU"
                   + (f" ({len(edge_ops)} float QUANTIZE/DEQUANTIZE at the edges stay on the CPU)."
                      if edge_ops else "."))
    else:
        verdict = (f"Partly mappable: {on_tpu} of {len(inner)} ops run on the Edge TPU; the graph is "
                   f"cut at op #{cut.index} {cut.op} ({cut.reasons[0]}), and {len(cpu)} ops from there "
                   "on run on the CPU.")
    return EdgeTpuReport(
        fully_mappable=cut is None, verdict=verdict, ops_total=len(results), ops_on_tpu=on_tpu,
        cpu_ops=tuple(cpu), edge_ops=edge_ops, cut=cut, op_versions=dict(sorted(versions.items())),
    )
