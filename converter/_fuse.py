"""Float-graph pattern fusions run by :func:`._optimize.optimize`: decomposed activations
and divisions rewritten as the one op an int8 kernel exists for.

- ``x * Relu6(x + 3) / 6`` (MobileNetV3, PP-OCR; the /6 as Div or Mul(1/6), before or
  after the product) and ``x * HardSigmoid(x)`` with alpha 1/6, beta 0.5 -> ``HardSwish``;
  on an NCHW tensor, HardSwish is then written as ``x * Clip(DepthwiseConv1x1(x), 0, 1)``
  and HardSigmoid as ``Clip(DepthwiseConv1x1(x), 0, 1)`` (int8 in onnxruntime, TFLite and
  the Edge TPU; see :func:`_hardswish_as_gate`);
- Conv -> Add(per-channel constant) -> the Conv's bias;
- ``Pow(x, 2)`` -> ``Mul(x, x)``; ``Sub(x, c)`` -> ``Add(x, -c)``;
- ``Div(x, c)`` by a constant -> ``Mul(x, 1/c)`` (int8 MUL exists, int8 DIV does not);
- ``x * 0.5 * (1 + Erf(x / sqrt 2))`` -> ``Gelu`` (an opset-20 op: only where the graph's
  opset can be raised to 20 without changing another op, e.g. not over a ReduceMean
  with an ``axes`` attribute);
- the decomposed LayerNorm (ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul
  gamma, Add beta) -> one ``LayerNormalization`` (opset 17).

Each rewrite computes the same function up to float32 rounding (``1/c`` is rounded once;
the fused ops are the exact functions of their patterns). A fusion that needs a newer
opset than the graph has raises the graph's opset only when every op in the graph keeps
its meaning across the bump (:func:`bump_opset`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import defs, helper

from ._ir import Graph

# op -> the lowest opset from which its newer versions (up to opset 20) only add types or
# optional inputs/attributes whose defaults keep the old behaviour (onnx/docs/Changelog.md),
# so raising the graph's opset cannot change what the node computes. Ops not listed must
# keep the same version across the bump (checked with onnx.defs).
_BENIGN_FROM = {
    **dict.fromkeys((
        "Add", "Sub", "Mul", "Div", "Relu", "Reshape", "Identity", "BatchNormalization",
        "CumSum", "GRU", "LSTM", "RNN", "Pow", "Shape", "LeakyRelu", "PRelu", "Where",
        "GreaterOrEqual", "LessOrEqual", "If", "Loop", "Scan", "ScatterND", "ScatterElements",
        "Cast", "CastLike", "Constant", "ConstantOfShape", "Equal", "Size", "IsInf", "IsNaN",
        "Pad", "Resize", "AveragePool", "QuantizeLinear", "DequantizeLinear",
    ), 13),
    "ReduceMax": 18, "ReduceMin": 18,  # axes became an input at 18
}
MAX_BUMP = 20
_ATOL = 1e-6


def fuse(graph: Graph, log: list[str]) -> None:
    """Run every fusion in place (the graph is reindexed after each rewrite)."""
    _sub_constant_to_add(graph, log)  # first: a Conv's Sub(c) then folds into its bias
    _conv_add_to_bias(graph, log)
    _fuse_hardswish(graph, log)
    _hardswish_as_gate(graph, log)
    _fuse_layernorm(graph, log)
    _fuse_gelu(graph, log)
    _div_by_constant(graph, log)
    _square_to_mul(graph, log)


# ---- helpers ---------------------------------------------------------------------
def scalar(graph: Graph, name: str) -> float | None:
    """The value of a one-element float constant, else None."""
    if not graph.is_const(name):
        return None
    value = graph.inits[name]
    if value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _near(value: float | None, target: float, tol: float = _ATOL) -> bool:
    return value is not None and abs(value - target) <= tol * max(1.0, abs(target))


def _only_user(graph: Graph, tensor: str) -> onnx.NodeProto | None:
    """The single consumer of an inner tensor (None if it has several or is an output)."""
    users = graph.consumers.get(tensor, [])
    if len(users) != 1 or tensor in graph.output_names:
        return None
    return users[0]


def _other(node: onnx.NodeProto, name: str) -> str:
    """The other input of a binary node."""
    return str(node.input[1] if node.input[0] == name else node.input[0])


def _scaled_by(graph: Graph, node: onnx.NodeProto, tensor: str, factor: float) -> bool:
    """Whether ``node`` computes ``tensor * factor`` (Mul by factor or Div by 1/factor)."""
    if node.op_type == "Mul" and tensor in node.input:
        return _near(scalar(graph, _other(node, tensor)), factor)
    if node.op_type == "Div" and node.input[0] == tensor:
        return _near(scalar(graph, node.input[1]), 1.0 / factor)
    return False


def bump_opset(graph: Graph, target: int) -> bool:
    """Raise the graph's opset to ``target`` (<= 20) if that changes no op's meaning."""
    if graph.opset >= target:
        return True
    if target > MAX_BUMP:
        return False
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        if graph.opset >= _BENIGN_FROM.get(node.op_type, MAX_BUMP + 1):
            continue
        try:
            old = defs.get_schema(node.op_type, graph.opset).since_version
            new = defs.get_schema(node.op_type, target).since_version
        except Exception:  # an op unknown to this onnx: do not touch the graph
            return False
        if old != new:
            return False
    graph.opset = target
    # the IR version that first carries the opset (onnx/docs/Versioning.md)
    graph.ir_version = max(graph.ir_version, 9 if target >= 19 else 8 if target >= 15 else 7)
    return True


def _replace(graph: Graph, first: onnx.NodeProto, gone: list[onnx.NodeProto],
             new: onnx.NodeProto) -> None:
    """Put ``new`` where ``first`` was and drop every node in ``gone``."""
    ids = {id(n) for n in gone}
    at = next(i for i, n in enumerate(graph.nodes) if n is first)
    graph.nodes[at] = new
    graph.nodes = [n for n in graph.nodes if id(n) not in ids or n is new]
    graph.reindex()


Match = tuple[str, list[onnx.NodeProto]]  # (the pattern's input, its nodes, output node last)


def _fuse_patterns(graph: Graph, anchors: tuple[str, ...],
                   match: Callable[[Graph, onnx.NodeProto], Match | None],
                   op_type: str, opset: int) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Replace each pattern ``match`` finds at a node of ``anchors`` by one ``op_type`` node
    on the pattern's input (when the graph may be raised to ``opset``, where the op exists).
    Returns (anchor, replaced nodes) for each fusion, in graph order."""
    fused = []
    for anchor in list(graph.nodes):
        if anchor.op_type not in anchors or graph.producer.get(anchor.output[0]) is not anchor:
            continue
        found = match(graph, anchor)
        if found is None or not bump_opset(graph, opset):
            continue
        x, nodes = found
        node = helper.make_node(op_type, [x], [nodes[-1].output[0]], name=nodes[-1].name)
        _replace(graph, nodes[-1], nodes, node)
        fused.append((anchor, nodes))
    return fused


def fold_into(graph: Graph, node: onnx.NodeProto, inputs: list[str],
              folded: onnx.NodeProto) -> None:
    """``node`` (its weights/bias now holding what ``folded`` computed) reads ``inputs`` and
    writes ``folded``'s output; ``folded`` leaves the graph."""
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = folded.output[0]
    graph.remove_node(folded)
    graph.reindex()


# ---- Conv + Add(constant) -----------------------------------------------------------
def _channel_constant(graph: Graph, name: str, channels: int, rank: int) -> np.ndarray | None:
    """A constant that adds one value per channel of a rank-``rank`` NCHW tensor."""
    if not graph.is_const(name) or graph.inits[name].dtype != np.float32:
        return None
    c = graph.inits[name]
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), np.float32)
    shape = (1,) * (rank - c.ndim) + c.shape
    if len(shape) != rank or shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return c.reshape(-1)


def _conv_add_to_bias(graph: Graph, log: list[str]) -> None:
    """Conv -> Add(per-channel constant) -> the Conv's bias (Paddle exports SE-block convs
    this way): one int8 op instead of a QLinearAdd, a Transpose and a Reshape in
    onnxruntime."""
    for conv in list(graph.nodes):
        if conv.op_type != "Conv" or not graph.is_const(conv.input[1]):
            continue
        add = _only_user(graph, conv.output[0])
        if add is None or add.op_type != "Add":
            continue
        w = graph.inits[conv.input[1]]
        shape = graph.shape(conv.output[0])
        rank = len(shape) if shape is not None else w.ndim
        extra = _channel_constant(graph, _other(add, conv.output[0]), w.shape[0], rank)
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if extra is None or (has_bias and not graph.is_const(conv.input[2])):
            continue
        bias = graph.inits[conv.input[2]].astype(np.float64) if has_bias else 0.0
        name = f"{conv.name}_bias_add"
        graph.inits[name] = (bias + extra.astype(np.float64)).astype(np.float32)
        fold_into(graph, conv, [conv.input[0], conv.input[1], name], add)
        log.append(f"folded Add {add.name} (a per-channel constant) into the bias of Conv {conv.name}")


# ---- HardSwish ---------------------------------------------------------------------
def _relu6_of_x_plus_3(graph: Graph, clip: onnx.NodeProto) -> str | None:
    """x when ``clip`` is Clip(Add(x, 3), 0, 6), else None."""
    if clip.op_type != "Clip" or len(clip.input) < 3:
        return None
    if not (_near(scalar(graph, clip.input[1]), 0.0) and _near(scalar(graph, clip.input[2]), 6.0)):
        return None
    add = graph.producer.get(clip.input[0])
    if add is None or add.op_type != "Add" or _only_user(graph, add.output[0]) is not clip:
        return None
    for x in add.input:
        if not graph.is_const(x) and _near(scalar(graph, _other(add, x)), 3.0):
            return str(x)
    return None


def _hardswish_at(graph: Graph, gate: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, nodes) when ``gate`` starts a HardSwish pattern ending in nodes[-1]."""
    if gate.op_type == "HardSigmoid":
        x = gate.input[0]
        alpha = float(_attr(gate, "alpha", 0.2))
        beta = float(_attr(gate, "beta", 0.5))
        mul = _only_user(graph, gate.output[0])
        if not (_near(alpha, 1 / 6) and _near(beta, 0.5)) or mul is None:
            return None
        if mul.op_type == "Mul" and _other(mul, gate.output[0]) == x:
            return x, [gate, mul]
        return None
    x = _relu6_of_x_plus_3(graph, gate)
    if x is None:
        return None
    add = graph.producer[gate.input[0]]
    nxt = _only_user(graph, gate.output[0])
    if nxt is None:
        return None
    if nxt.op_type == "Mul" and _other(nxt, gate.output[0]) == x:  # (x * relu6) / 6
        last = _only_user(graph, nxt.output[0])
        if last is not None and _scaled_by(graph, last, nxt.output[0], 1 / 6):
            return x, [add, gate, nxt, last]
        return None
    if _scaled_by(graph, nxt, gate.output[0], 1 / 6):  # x * (relu6 / 6)
        last = _only_user(graph, nxt.output[0])
        if last is not None and last.op_type == "Mul" and _other(last, nxt.output[0]) == x:
            return x, [add, gate, nxt, last]
    return None


def _fuse_hardswish(graph: Graph, log: list[str]) -> None:
    for _, nodes in _fuse_patterns(graph, ("Clip", "HardSigmoid"), _hardswish_at, "HardSwish", 14):
        log.append(f"fused {'+'.join(n.op_type for n in nodes)} ({nodes[0].name}) -> HardSwish")


def _hardswish_as_gate(graph: Graph, log: list[str]) -> None:
    """HardSwish(x) on an NCHW tensor -> x * Clip(DepthwiseConv1x1(x; 1/6, +0.5), 0, 1),
    and HardSigmoid(x; alpha, beta) -> Clip(DepthwiseConv1x1(x; alpha, beta), 0, 1).

    The same functions, written with ops that are int8 in every target: onnxruntime runs
    them as QLinearConv (+ QLinearMul) (a float HardSwish between DQ and Q costs extra
    passes and made MobileNetV3 slower in INT8 than in fp32), TFLite as
    DEPTHWISE_CONV_2D (+ MUL), which the Edge TPU maps (HARD_SWISH it does not). The
    gate's range is [0, 1]: the Clip folds into the conv with zero point -128."""
    for node in list(graph.nodes):
        if node.op_type not in ("HardSwish", "HardSigmoid"):
            continue
        shape = graph.shape(node.input[0])
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
            continue
        swish = node.op_type == "HardSwish"
        alpha = 1.0 / 6.0 if swish else float(_attr(node, "alpha", 0.2))
        beta = 0.5 if swish else float(_attr(node, "beta", 0.5))
        x, c, base = node.input[0], shape[1], node.name
        gate_out = f"{base}_gate_out" if swish else node.output[0]
        graph.inits[f"{base}_gate_w"] = np.full((c, 1, 1, 1), alpha, np.float32)
        graph.inits[f"{base}_gate_b"] = np.full(c, beta, np.float32)
        graph.inits[f"{base}_gate_lo"] = np.array(0.0, np.float32)
        graph.inits[f"{base}_gate_hi"] = np.array(1.0, np.float32)
        nodes = [
            helper.make_node("Conv", [x, f"{base}_gate_w", f"{base}_gate_b"], [f"{base}_gate_lin"],
                             name=f"{base}_gate", group=c, kernel_shape=[1, 1]),
            helper.make_node("Clip", [f"{base}_gate_lin", f"{base}_gate_lo", f"{base}_gate_hi"],
                             [gate_out], name=f"{base}_gate_clip" if swish else base),
        ]
        if swish:
            nodes.append(helper.make_node("Mul", [x, gate_out], [node.output[0]], name=base))
        for name in (f"{base}_gate_lin", gate_out):  # typed: the plan quantizes floats
            graph.value_info[name] = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
        at = next(i for i, n in enumerate(graph.nodes) if n is node)
        graph.nodes[at : at + 1] = nodes
        log.append(f"{node.op_type} {base} -> {'x * ' if swish else ''}Clip(depthwise 1x1 conv, 0, 1) "
                   "(int8 in every target)")
    graph.reindex()


# ---- Div by a constant ----------------------------------------------------------------
def _div_by_constant(graph: Graph, log: list[str]) -> None:
    for node in graph.nodes:
        if node.op_type != "Div" or not graph.is_const(node.input[1]):
            continue
        c = graph.inits[node.input[1]]
        if c.dtype != np.float32 or not np.all(np.isfinite(c)) or np.any(c == 0):
            continue
        name = node.input[1] + "_reciprocal"
        graph.inits[name] = (1.0 / c.astype(np.float64)).astype(np.float32)
        node.op_type = "Mul"
        node.input[1] = name
        log.append(f"Div {node.name} by a constant -> Mul by its reciprocal")
    graph.reindex()


def _sub_constant_to_add(graph: Graph, log: list[str]) -> None:
    """Sub(x, c) -> Add(x, -c): exact (negation is), and onnxruntime has a QLinearAdd but
    no quantized Sub, so the int8 model keeps no float island there (YOLO box decode)."""
    for node in graph.nodes:
        if node.op_type != "Sub" or graph.is_const(node.input[0]) or not graph.is_const(node.input[1]):
            continue
        c = graph.inits[node.input[1]]
        if c.dtype != np.float32:
            continue
        name = node.input[1] + "_negated"
        graph.inits[name] = -c
        node.op_type = "Add"
        node.input[1] = name
        log.append(f"Sub {node.name} of a constant -> Add of its negation")
    graph.reindex()


def _square_to_mul(graph: Graph, log: list[str]) -> None:
    """Pow(x, 2) -> Mul(x, x): the same float32 product, and an int8 MUL exists."""
    for node in graph.nodes:
        if node.op_type != "Pow" or not graph.is_float(node.input[0]):
            continue
        if not _near(scalar(graph, node.input[1]), 2.0, 0.0):
            continue
        node.op_type = "Mul"
        node.input[1] = node.input[0]
        log.append(f"Pow {node.name} (x^2) -> Mul(x, x)")
    graph.reindex()


# ---- Gelu ---------------------------------------------------------------------------
def _gelu_at(graph: Graph, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """x * 0.5 * (1 + Erf(x / sqrt2)) in the orders torch and tf2onnx write it."""
    pre = graph.producer.get(erf.input[0])
    if pre is None or _only_user(graph, pre.output[0]) is not erf:
        return None
    x = pre.input[0] if not graph.is_const(pre.input[0]) else pre.input[1]
    if not _scaled_by(graph, pre, x, 1 / np.sqrt(2.0)):
        return None
    add = _only_user(graph, erf.output[0])
    if add is None or add.op_type != "Add" or not _near(scalar(graph, _other(add, erf.output[0])), 1.0):
        return None
    m1 = _only_user(graph, add.output[0])
    if m1 is None or m1.op_type != "Mul":
        return None
    other = _other(m1, add.output[0])
    if other == x:  # (x * (1 + erf)) * 0.5
        m2 = _only_user(graph, m1.output[0])
        if m2 is not None and _scaled_by(graph, m2, m1.output[0], 0.5):
            return x, [pre, erf, add, m1, m2]
        return None
    half = graph.producer.get(other)  # (x * 0.5) * (1 + erf)
    if half is not None and _scaled_by(graph, half, x, 0.5) and _only_user(graph, other) is m1:
        return x, [half, pre, erf, add, m1]
    return None


def _fuse_gelu(graph: Graph, log: list[str]) -> None:
    for erf, _ in _fuse_patterns(graph, ("Erf",), _gelu_at, "Gelu", 20):
        log.append(f"fused Erf pattern ({erf.name}) -> Gelu")


# ---- LayerNormalization ------------------------------------------------------------------
def _last_axis_mean(graph: Graph, node: onnx.NodeProto | None, rank: int | None) -> bool:
    if node is None or node.op_type != "ReduceMean" or not _attr(node, "keepdims", 1):
        return False
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and graph.is_const(node.input[1]):
        axes = graph.inits[node.input[1]].reshape(-1).tolist()
    if axes is None or len(axes) != 1:
        return False
    return int(axes[0]) == -1 or (rank is not None and int(axes[0]) == rank - 1)


def _layernorm_at(graph: Graph, mean: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[str], float] | None:
    """The nodes of x -> LN(x) * gamma + beta starting at the first ReduceMean."""
    x = mean.input[0]
    shape = graph.shape(x)
    rank = len(shape) if shape is not None else None
    if not _last_axis_mean(graph, mean, rank):
        return None
    subs = graph.consumers.get(mean.output[0], [])
    if len(subs) != 1 or subs[0].op_type != "Sub" or list(subs[0].input) != [x, mean.output[0]]:
        return None
    sub = subs[0]
    users = graph.consumers.get(sub.output[0], [])
    pow_ = next((u for u in users if u.op_type == "Pow" and u.input[0] == sub.output[0]), None)
    div = next((u for u in users if u.op_type == "Div" and u.input[0] == sub.output[0]), None)
    if len(users) != 2 or pow_ is None or div is None or not _near(scalar(graph, pow_.input[1]), 2.0):
        return None
    var = _only_user(graph, pow_.output[0])
    if var is None or not _last_axis_mean(graph, var, rank):
        return None
    add = _only_user(graph, var.output[0])
    if add is None or add.op_type != "Add":
        return None
    eps = scalar(graph, _other(add, var.output[0]))
    sqrt = _only_user(graph, add.output[0])
    if eps is None or sqrt is None or sqrt.op_type != "Sqrt" or _only_user(graph, sqrt.output[0]) is not div:
        return None
    nodes: list[onnx.NodeProto] = [mean, sub, pow_, var, add, sqrt, div]
    gamma_beta: list[str] = []
    tail = div
    for op in ("Mul", "Add"):
        nxt = _only_user(graph, tail.output[0])
        if nxt is None or nxt.op_type != op:
            break
        c = _other(nxt, tail.output[0])
        if not graph.is_const(c) or graph.inits[c].ndim > 1 or graph.inits[c].dtype != np.float32:
            break
        gamma_beta.append(c)
        nodes.append(nxt)
        tail = nxt
    return nodes, gamma_beta, eps


def _fuse_layernorm(graph: Graph, log: list[str]) -> None:
    for mean in list(graph.nodes):
        if mean.op_type != "ReduceMean" or graph.producer.get(mean.output[0]) is not mean:
            continue
        found = _layernorm_at(graph, mean)
        if found is None:
            continue
        nodes, gamma_beta, eps = found
        shape = graph.shape(mean.input[0])
        width = shape[-1] if shape else None
        if not isinstance(width, int) and gamma_beta:  # shape unknown: the affine's size
            width = int(graph.inits[gamma_beta[0]].size)
        if not isinstance(width, int) or width < 2 or not bump_opset(graph, 17):
            continue
        names = []
        for i, default in enumerate((1.0, 0.0)):
            if i < len(gamma_beta):
                value = np.broadcast_to(graph.inits[gamma_beta[i]].reshape(-1), (width,))
            else:
                value = np.full(width, default, np.float32)
            names.append(f"{nodes[-1].name}_{'gamma' if i == 0 else 'beta'}")
            graph.inits[names[-1]] = np.ascontiguousarray(value, np.float32)
        node = helper.make_node("LayerNormalization", [mean.input[0], *names], [nodes[-1].output[0]],
                                name=nodes[-1].name, axis=-1, epsilon=eps)
        _replace(graph, nodes[-1], nodes, node)
        log.append(f"fused decomposed LayerNorm ({mean.name}, {len(nodes)} nodes) -> LayerNormalization")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
