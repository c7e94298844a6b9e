"""``--max-drop``'s probe: one session that computes the INT8 model of any set of nodes
kept float, without a conversion per attempt (the search over it: converter/_mixed_search.py).

The probe is the optimized fp32 graph with a switchable Q/DQ behind every tensor the
all-int8 plan quantizes and a switchable weight and bias in every int8 weight layer; the
switches, scales and zero points are graph inputs (:class:`FloatProbe`). Any set of nodes
kept float is read by planning it (``make_plan`` with ``keep_float``, the parameters the
real build would use) and feeding that plan: a tensor the plan quantizes gets its Q/DQ
with the plan's scale and zero point, any other passes through in float; a layer the plan
keeps int8 reads the int8 weight and bias the conversion wrote (learned rounding and bias
correction included), any other its float ones. A Relu/Clip the plan folds into its
producer stays in the probe as a float op in front of the Q/DQ (the same values: the
fusion is kept only where it is exact).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._ir import Graph
from ._mixed import WEIGHT_OPS, _group_nodes

SUFFIX = "__mx"  # names the probe adds end with it (no clash with the graph's)


# ----------------------------------------------------------------------------- the probe
@dataclass
class FloatProbe:
    """The probe model, what it can switch, and its session."""

    model: onnx.ModelProto
    tensors: list[str]  # activation tensors with a switchable Q/DQ
    weight_nodes: list[str]  # layers with a switchable int8 / float weight and bias
    sess: Any = None
    _off: dict[str, np.ndarray] = field(default_factory=dict)

    def feeds(self, plan: Any) -> dict[str, np.ndarray]:
        """The inputs that make the probe compute ``plan``'s model."""
        return self.switches({t: plan.params[t] for t in self.tensors if t in plan.params},
                             [n for n in self.weight_nodes if n in plan.rules])

    def switches(self, params: dict[str, Any], int8_nodes: Collection[str]) -> dict[str, np.ndarray]:
        """``params`` (tensor -> QParams): those tensors int8, the others float;
        ``int8_nodes``: those layers read their int8 weights, the others float ones."""
        out = dict(self._off)
        for t, p in params.items():
            if t + "__s" + SUFFIX in self._off:
                out[t + "__s" + SUFFIX] = np.array(p.scale, np.float32)
                out[t + "__z" + SUFFIX] = np.array(int(p.zero_point) + 128, np.uint8)
                out[t + "__a" + SUFFIX] = np.array(1.0, np.float32)
        for n in int8_nodes:
            if n + "__m" + SUFFIX in self._off:  # a layer with weights
                out[n + "__m" + SUFFIX] = np.array(1.0, np.float32)
        return out


class _Consts:
    """Values of the constant subgraphs of a QDQ model: initializers, DequantizeLinear
    and Mul of constants (a weight, a bias and its per-channel scale product)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.memo: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.memo:
            self.memo[name] = self._value(name)
        return self.memo[name]

    def _value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return np.asarray(self.inits[name])
        node = self.producer.get(name)
        if node is None:
            return None
        args = [self.value(i) if i else None for i in node.input]
        if node.op_type == "Mul" and len(args) == 2 and all(a is not None for a in args):
            return np.asarray(args[0] * args[1], np.float32)  # type: ignore[operator]
        if node.op_type != "DequantizeLinear" or args[0] is None or args[1] is None:
            return None
        q, scale = args[0].astype(np.float32), args[1].astype(np.float32)
        zero = args[2].astype(np.float32) if len(args) > 2 and args[2] is not None else np.float32(0)
        if scale.ndim == 1 and q.ndim > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape if np.ndim(zero) else ())
        return np.asarray((q - zero) * scale, np.float32)


def build_probe(graph: Graph, plan: Any, qmodel: onnx.ModelProto) -> FloatProbe:
    """The probe of ``graph`` (the optimized fp32 graph the conversion quantized) for the
    all-int8 ``plan`` and its float-io QDQ model ``qmodel`` (where the int8 weights and
    biases are read)."""
    consts = _Consts(qmodel)
    qnodes = {n.name: n for n in qmodel.graph.node if n.name}
    probed = list(plan.quantized)
    probed_set = set(probed)
    outputs = set(graph.output_names)
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = dict(graph.inits)
    extra_inputs: list[onnx.ValueInfoProto] = []
    off: dict[str, np.ndarray] = {}
    read_as: dict[str, str] = {}

    def switch(name: str, dtype: int, value: np.ndarray) -> str:
        extra_inputs.append(helper.make_tensor_value_info(name, dtype, []))
        off[name] = value
        return name

    def qdq(t: str, src: str, dst: str) -> None:
        s = switch(t + "__s" + SUFFIX, TensorProto.FLOAT, np.array(1.0, np.float32))
        z = switch(t + "__z" + SUFFIX, TensorProto.UINT8, np.array(128, np.uint8))
        a = switch(t + "__a" + SUFFIX, TensorProto.FLOAT, np.array(0.0, np.float32))
        p = t + "__"
        # a blend, not a Where: onnxruntime's Where with a broadcast condition measured
        # 1.6x slower than these three passes
        nodes.extend([
            helper.make_node("QuantizeLinear", [src, s, z], [p + "q" + SUFFIX]),
            helper.make_node("DequantizeLinear", [p + "q" + SUFFIX, s, z], [p + "dq" + SUFFIX]),
            helper.make_node("Sub", [p + "dq" + SUFFIX, src], [p + "e" + SUFFIX]),
            helper.make_node("Mul", [p + "e" + SUFFIX, a], [p + "ea" + SUFFIX]),
            helper.make_node("Add", [src, p + "ea" + SUFFIX], [dst]),
        ])

    def mixed(n: str, what: str, f32: np.ndarray, int8: np.ndarray, m: str) -> str:
        """float + m (int8 - float), a constant pair behind the switch ``m``."""
        base = f"{n}__{what}"
        inits[base + "f" + SUFFIX] = np.asarray(f32, np.float32)
        inits[base + "d" + SUFFIX] = np.asarray(int8 - f32, np.float32)
        nodes.extend([
            helper.make_node("Mul", [base + "d" + SUFFIX, m], [base + "dm" + SUFFIX]),
            helper.make_node("Add", [base + "f" + SUFFIX, base + "dm" + SUFFIX], [base + SUFFIX]),
        ])
        return base + SUFFIX

    for t in graph.input_names:
        if t in probed_set:
            qdq(t, t, t + SUFFIX)
            read_as[t] = t + SUFFIX
    weight_nodes: list[str] = []
    for node in graph.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = read_as.get(name, name)
        swapped = _weights(graph, node, qnodes.get(node.name), consts) if node.name in plan.rules else None
        if swapped is not None:
            m = switch(node.name + "__m" + SUFFIX, TensorProto.FLOAT, np.array(0.0, np.float32))
            (w_f, w_q), bias = swapped
            copy.input[1] = mixed(node.name, "w", w_f, w_q, m)
            if bias is not None:
                b_name = mixed(node.name, "b", *bias, m)
                if len(copy.input) > 2:
                    copy.input[2] = b_name
                else:
                    copy.input.append(b_name)
            weight_nodes.append(node.name)
        pending = []
        for i, out in enumerate(copy.output):
            if out not in probed_set:
                continue
            if out in outputs:  # the graph output keeps its name: the op writes a raw copy
                copy.output[i] = out + "__raw" + SUFFIX
                pending.append((out, out + "__raw" + SUFFIX, out))
            else:
                pending.append((out, out, out + SUFFIX))
                read_as[out] = out + SUFFIX
        nodes.append(copy)
        for t, src, dst in pending:
            qdq(t, src, dst)
    g = helper.make_graph(
        nodes, graph.name, [*graph.inputs, *extra_inputs], list(graph.outputs),
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", max(graph.opset, 13))]
    opsets += [helper.make_opsetid(d, v) for d, v in graph.domains.items()]
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = graph.ir_version
    tensors = [t for t in probed if t + "__s" + SUFFIX in off]
    return FloatProbe(model, tensors, weight_nodes, None, off)


def _weights(
    graph: Graph, node: onnx.NodeProto, qnode: onnx.NodeProto | None, consts: _Consts
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None] | None:
    """((float weight, int8 weight as real values), (float bias, int8 bias) or None) of an
    int8 weight layer, read from the QDQ model's node of the same name; None when it has
    no constant weight there (the layer then reads its float weight in every attempt)."""
    if qnode is None or node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    if not graph.is_const(node.input[1]) or len(qnode.input) < 2:
        return None
    w_f = np.asarray(graph.inits[node.input[1]], np.float32)
    w_q = consts.value(qnode.input[1])
    if w_q is None or w_q.shape != w_f.shape:
        return None
    if len(qnode.input) < 3 or not qnode.input[2]:
        return (w_f, w_q), None
    b_q = consts.value(qnode.input[2])
    if b_q is None:
        return (w_f, w_q), None
    has_bias = len(node.input) > 2 and node.input[2] and graph.is_const(node.input[2])
    b_f = np.asarray(graph.inits[node.input[2]], np.float32) if has_bias else np.zeros_like(b_q)
    if b_f.size != b_q.size and b_f.size != 1:
        return (w_f, w_q), None
    return (w_f, w_q), (np.broadcast_to(b_f.reshape(-1), b_q.shape).astype(np.float32), b_q)


class _Runner:
    """The probe session with one set of switches, behind the two session calls the
    drop measure makes (``get_outputs()[0].name``, ``run([name], feed)``)."""

    def __init__(self, sess: Any, extra: dict[str, np.ndarray]) -> None:
        self.sess, self.extra = sess, extra

    def get_outputs(self) -> Any:
        return self.sess.get_outputs()

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.sess.run(names, {**feed, **self.extra}))


# ----------------------------------------------------------------------------- groups
def candidate_groups(
    graph: Graph, plan: Any, floatable: Collection[str] | None
) -> list[dict[str, Any]]:
    """Quantized tensor groups that may go float: {root, tensors, nodes (every node that
    writes or reads them, with its folded Relu/Clip), head, op, owns (the int8 layers
    whose weights count in this group's sensitivity: those writing its tensors)}.
    ``floatable``: the op types the TFLite can run in float (a group touching another op
    is no candidate when a TFLite is written)."""
    by_name = {n.name: n for n in graph.nodes}
    partners: dict[str, set[str]] = {}
    for act, prod in plan.fused.items():
        partners.setdefault(act, set()).add(prod)
        partners.setdefault(prod, set()).add(act)
    groups: dict[str, list[str]] = {}
    for t in plan.quantized:
        groups.setdefault(plan.group_of.get(t, t), []).append(t)
    out = []
    for root, tensors in groups.items():
        nodes = _group_nodes(graph, plan, tensors, partners)
        if not nodes:
            continue
        if floatable is not None and any(by_name[n].op_type not in floatable for n in nodes):
            continue
        writers = {graph.producer[t].name for t in tensors if t in graph.producer}
        owns = {plan.fused.get(w, w) for w in writers} & set(plan.rules)
        producer = graph.producer.get(tensors[0])
        head = producer.name if producer is not None and producer.name in nodes else sorted(nodes)[0]
        if head in plan.fused:  # name the layer, not its folded Relu
            head = plan.fused[head]
        out.append({"root": root, "tensors": tensors, "nodes": sorted(nodes), "head": head,
                    "op": by_name[head].op_type, "owns": sorted(owns)})
    return out
