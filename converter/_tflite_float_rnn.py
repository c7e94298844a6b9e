"""ONNX ``LSTM`` as a float island of the TFLite model: DEQUANTIZE, the recurrence
unrolled into float builtin ops, QUANTIZE.

A full-integer LSTM needs calibrated per-gate scales that the converter does not have,
so the LSTM stays float (the QDQ ONNX quantizes around it). TFLite's own
UNIDIRECTIONAL_SEQUENCE_LSTM is not used: its hidden and cell states are variable
tensors that carry over from one ``invoke`` to the next unless the caller resets them,
which a stateless ONNX LSTM (a CRNN's recognizer) never does. Unrolled, every call starts
from the ONNX initial state, and the numbers are onnxruntime's up to float rounding.

Per time step (ONNX gate order i, o, f, c; default activations)::

    gates = X[t] W^T + (Wb + Rb)  [computed for all steps at once] + h R^T
    i, o, f, g = sigmoid, sigmoid, sigmoid, tanh of the four quarters
    c = f * c + i * g ;  h = o * tanh(c)

Both directions of a bidirectional LSTM run this way (the backward one over reversed
steps), and Y stacks them as [T, directions, batch, hidden].
"""

from __future__ import annotations

import numpy as np
import onnx
from edgeship.converter._tflite_float import (
    FloatVal,
    bind_float,
    emit_binary,
    emit_concat,
    emit_float,
    emit_reshape,
    float_input,
    float_rule,
    float_tensor,
)
from edgeship.converter._tflite_lower import Lowering

MAX_UNROLLED_STEPS = 1024  # ~11 ops a step and direction; longer sequences are refused


@float_rule("LSTM")
def lstm(ctx: Lowering, node: onnx.NodeProto) -> None:
    _check(ctx, node)
    x = float_input(ctx, node.input[0])
    steps, batch, _ = x.shape
    hidden = int(ctx.attr("hidden_size"))
    weights = _weights(ctx, node, hidden)
    directions = [False, True] if len(weights[0]) == 2 else [_direction(ctx) == "reverse"]
    outs = []
    for d, backward in enumerate(directions):
        w, r, b, h0, c0 = (part[d] for part in weights)
        outs.append(_direction_y(ctx, node, x, (w, r, b, h0, c0), backward, d))
    name = node.output[0]
    y = float_tensor(ctx, name, (steps, len(directions), batch, hidden))
    if len(outs) == 1:
        emit_reshape(ctx, outs[0], y)
    else:
        emit_concat(ctx, outs, y, axis=1)
    bind_float(ctx, name, y)


def _direction(ctx: Lowering) -> str:
    value = ctx.attr("direction", b"forward")
    return value.decode() if isinstance(value, bytes) else str(value)


def _check(ctx: Lowering, node: onnx.NodeProto) -> None:
    if int(ctx.attr("layout", 0)) != 0:
        raise ctx.fail("LSTM with layout=1 (batch first) is not lowered")
    if ctx.attr("activations") is not None or ctx.attr("clip") is not None:
        raise ctx.fail("LSTM with custom activations or a cell clip is not lowered")
    if int(ctx.attr("input_forget", 0)):
        raise ctx.fail("LSTM with input_forget=1 is not lowered")
    optional = list(node.input[4:5]) + list(node.input[7:8])  # sequence_lens, peepholes
    if any(optional):
        raise ctx.fail("LSTM with sequence_lens or peepholes is not lowered")
    for name in node.output[1:]:
        if name and (ctx.qdq.consumers.get(name) or name in ctx.qdq.outputs):
            raise ctx.fail("LSTM final states (Y_h, Y_c) are read; only Y is lowered")
    steps = ctx.out_shape(node.output[0])[0]
    if steps > MAX_UNROLLED_STEPS:
        raise ctx.fail(f"LSTM over {steps} steps (more than {MAX_UNROLLED_STEPS} to unroll)")


def _weights(ctx: Lowering, node: onnx.NodeProto, hidden: int) -> tuple[np.ndarray, ...]:
    """W [D, 4H, I], R [D, 4H, H], bias [D, 4H], initial h and c [D, B, H], as float32."""
    w, r = (_const(ctx, node.input[i]) for i in (1, 2))
    dirs = w.shape[0]
    b = _const(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    bias = np.zeros((dirs, 4 * hidden), np.float32) if b is None else b[:, :4 * hidden] + b[:, 4 * hidden:]
    batch = ctx.qdq.shape(node.input[0])[1]
    zeros = np.zeros((dirs, batch, hidden), np.float32)
    h0 = _const(ctx, node.input[5]) if len(node.input) > 5 and node.input[5] else zeros
    c0 = _const(ctx, node.input[6]) if len(node.input) > 6 and node.input[6] else zeros
    return w, r, bias, h0, c0


def _const(ctx: Lowering, name: str) -> np.ndarray:
    if name in ctx.qdq.initializers:
        return np.asarray(ctx.qdq.initializers[name], np.float32)
    if name in ctx.qdq.qconsts:
        return ctx.qdq.qconsts[name].dequantized()
    raise ctx.fail(f"LSTM input {name!r} is not a constant (weights and initial states must be)")


def _direction_y(ctx: Lowering, node: onnx.NodeProto, x: FloatVal,
                 params: tuple[np.ndarray, ...], backward: bool, d: int) -> FloatVal:
    """One direction's hidden states for every step, as [T, 1, B, H]."""
    w, r, bias, h0, c0 = params
    steps, batch, _ = x.shape
    hidden = r.shape[1]
    tag = f"{node.output[0]}/d{d}"
    flat = float_tensor(ctx, f"{tag}/x2d", (steps * batch, x.shape[2]))
    emit_reshape(ctx, x, flat)
    projected = _fully_connected(ctx, f"{tag}/xw", flat, w, bias, (steps * batch, 4 * hidden))
    rows = [float_tensor(ctx, f"{tag}/xw{t}", (batch, 4 * hidden)) for t in range(steps)]
    emit_float(ctx, "SPLIT", [ctx.int32("axis", [0]), projected.index], [v.index for v in rows],
               ("SplitOptions", {"NumSplits": steps}))
    h = FloatVal(ctx.const(f"{tag}/h0", np.ascontiguousarray(h0)), (batch, hidden))
    c = FloatVal(ctx.const(f"{tag}/c0", np.ascontiguousarray(c0)), (batch, hidden))
    r_index = ctx.const(f"{tag}/R", np.ascontiguousarray(r))
    states: dict[int, FloatVal] = {}
    for t in (reversed(range(steps)) if backward else range(steps)):
        h, c = _step(ctx, f"{tag}/t{t}", rows[t], h, c, r_index, hidden)
        states[t] = h
    y = float_tensor(ctx, f"{tag}/y", (steps * batch, hidden))
    emit_concat(ctx, [states[t] for t in range(steps)], y, axis=0)
    y4 = float_tensor(ctx, f"{tag}/y4", (steps, 1, batch, hidden))
    emit_reshape(ctx, y, y4)
    return y4


def _step(ctx: Lowering, tag: str, xw: FloatVal, h: FloatVal, c: FloatVal, r_index: int,
          hidden: int) -> tuple[FloatVal, FloatVal]:
    batch = xw.shape[0]
    quarter = (batch, hidden)
    hr = float_tensor(ctx, f"{tag}/hr", (batch, 4 * hidden))
    emit_float(ctx, "FULLY_CONNECTED", [h.index, r_index, -1], [hr.index],
               ("FullyConnectedOptions", {"FusedActivationFunction": 0, "KeepNumDims": False}))
    gates = _binary(ctx, "ADD", f"{tag}/gates", xw, hr, (batch, 4 * hidden))
    parts = [float_tensor(ctx, f"{tag}/{g}", quarter) for g in "iofc"]
    emit_float(ctx, "SPLIT", [ctx.int32("axis", [1]), gates.index], [p.index for p in parts],
               ("SplitOptions", {"NumSplits": 4}))
    i, o, f = (_unary(ctx, "LOGISTIC", p) for p in parts[:3])
    g = _unary(ctx, "TANH", parts[3])
    c_next = _binary(ctx, "ADD", f"{tag}/c", _binary(ctx, "MUL", f"{tag}/fc", f, c, quarter),
                     _binary(ctx, "MUL", f"{tag}/ig", i, g, quarter), quarter)
    h_next = _binary(ctx, "MUL", f"{tag}/h", o, _unary(ctx, "TANH", c_next), quarter)
    return h_next, c_next


def _fully_connected(ctx: Lowering, name: str, x: FloatVal, w: np.ndarray, bias: np.ndarray,
                     shape: tuple[int, ...]) -> FloatVal:
    out = float_tensor(ctx, name, shape)
    emit_float(ctx, "FULLY_CONNECTED",
               [x.index, ctx.const(f"{name}/W", np.ascontiguousarray(w)),
                ctx.const(f"{name}/b", np.ascontiguousarray(bias, np.float32))], [out.index],
               ("FullyConnectedOptions", {"FusedActivationFunction": 0, "KeepNumDims": False}))
    return out


def _binary(ctx: Lowering, opcode: str, name: str, a: FloatVal, b: FloatVal,
            shape: tuple[int, ...]) -> FloatVal:
    out = float_tensor(ctx, name, shape)
    emit_binary(ctx, opcode, a, b, out)
    return out


def _unary(ctx: Lowering, opcode: str, x: FloatVal) -> FloatVal:
    out = float_tensor(ctx, f"{ctx.graph.tensors[x.index].name}/{opcode.lower()}", x.shape)
    emit_float(ctx, opcode, [x.index], [out.index])
    return out


__all__ = ["MAX_UNROLLED_STEPS", "lstm"]
