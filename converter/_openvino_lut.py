"""Chains of int8 elementwise ops as one 256-entry table, in the form written for OpenVINO.

A chain that starts at one int8 (or uint8) tensor, applies elementwise ops with scalar
constants only (each op's output rounded to int8 by its own Q/DQ) and ends in one int8
tensor is a function of that one byte: 256 inputs, 256 outputs. PP-LCNet's blocks (PP-OCR
rec and det) hold one after every convolution: a learnable affine (Mul, Add by scalars),
hardswish (Add 3, its Q clipping at 0..6, Mul by x), another affine, six roundings over
the whole feature map. onnxruntime runs each step as an int8 kernel (QLinearMul,
QLinearAdd); OpenVINO fuses the chain into one int8 "Subgraph" of float JIT code that
dequantizes, computes and requantizes at every step: 0.556 ms for PP-OCR rec's
[1, 240, 12, 80] chain where onnxruntime takes 0.228 ms. As ``Gather(table, x)`` OpenVINO
takes 0.243 ms (same run, one thread).

The table is the chain itself, run by onnxruntime with its graph optimizations off (the
QDQ model's own arithmetic, op by op) on every input code, so the rewritten model gives
bit-identical outputs: the model's function is unchanged. A chain qualifies when every
tensor inside it is read only inside it, every constant it reads has one element, and
it has at least :data:`MIN_OPS` compute ops (shorter ones OpenVINO runs about as fast
itself). Applied to the form written for OpenVINO (converter/_openvino_prep.py), whose
choice is measured at each convert.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_OPS", "int8_tables"]

MIN_OPS = 3
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid",
                         "HardSwish", "Tanh", "LeakyRelu", "Max", "Min", "Neg", "Abs"})
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def int8_tables(graph: Any) -> int:
    """Replace each qualifying chain of ``graph`` (onnx.GraphProto, changed in place) by
    ``Gather(table, Cast(x))``; how many were replaced."""
    consts = _Consts(graph)
    outputs = {o.name for o in graph.output}
    read_before = {i for n in graph.node for i in n.input}
    taken: set[int] = set()
    instead: dict[int, list[Any]] = {}  # a chain's first node -> the nodes that replace it
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or id(q) in taken or not consts.scalar_qdq(q):
            continue
        chain = _chain(graph, q.output[0], consts, outputs)
        if chain is None or any(id(n) in taken for n in chain):
            continue
        table = _table(graph, q.output[0], chain, consts)
        if table is None:
            continue
        instead[id(chain[0])] = _lookup(graph, q.output[0], chain[-1].output[0], *table)
        taken.update(id(n) for n in chain)
    if instead:  # one rebuild: the node list copies its messages
        nodes = [new for n in graph.node for new in instead.get(id(n), [n] if id(n) not in taken else [])]
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unread(graph, read_before)
    return len(instead)


def _drop_unread(graph: Any, before: set[str]) -> None:
    """Remove the constants (and the nodes making them) that only the replaced chains
    read; ``before``: what the graph read before."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("Constant", "DequantizeLinear", "Cast")
                and all(o in before and o not in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in before and i.name not in read]:
        graph.initializer.remove(init)


class _Consts:
    """Which tensors of a graph are constants, and the nodes that make them."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.sizes = {i.name: int(numpy_helper.to_array(i).size) for i in graph.initializer}
        self.users: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def makers(self, name: str) -> list[Any] | None:
        """The nodes that compute constant ``name`` (none for an initializer); None when
        it is not a constant."""
        if name in self.inits or not name:
            return []
        node = self.producer.get(name)
        if node is None or node.op_type not in ("Constant", "DequantizeLinear", "Cast"):
            return None
        found = [node]
        for i in node.input:
            more = self.makers(i)
            if more is None:
                return None
            found += more
        return found

    def size(self, name: str) -> int | None:
        """Elements of constant ``name`` (None: not a constant or not known)."""
        if name in self.sizes:
            return self.sizes[name]
        node = self.producer.get(name)
        if node is None or self.makers(name) is None:
            return None
        if node.op_type == "Constant":
            from onnx import numpy_helper

            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else int(numpy_helper.to_array(value).size)
        return self.size(node.input[0])

    def scalar_qdq(self, node: Any) -> bool:
        return all(self.size(i) == 1 for i in node.input[1:3]) and len(node.input) >= 2


def _chain(graph: Any, source: str, consts: _Consts, outputs: set[str]) -> list[Any] | None:
    """The longest closed chain from int8 tensor ``source`` to a Q output (its nodes in
    graph order), or None."""
    inside, nodes, best = {source}, [], None
    for node in graph.node:
        live = [i for i in node.input if i in inside]
        if not live:
            continue
        if not _fits(node, live, consts):
            continue
        nodes.append(node)
        inside.update(node.output)
        if node.op_type == "QuantizeLinear" and node.output[0] not in outputs:
            closed = _closed(nodes, source, node.output[0], consts, outputs)
            if closed is not None and sum(n.op_type not in _QDQ for n in closed) >= MIN_OPS:
                best = closed
    return best


def _fits(node: Any, live: list[str], consts: _Consts) -> bool:
    others = [i for i in node.input if i and i not in live]
    if node.op_type in _QDQ:
        return node.input[0] in live and consts.scalar_qdq(node) and len(live) == 1
    if node.op_type not in ELEMENTWISE:
        return False
    return all(consts.size(i) == 1 for i in others)


def _closed(nodes: list[Any], source: str, end: str, consts: _Consts, outputs: set[str]
            ) -> list[Any] | None:
    """The nodes of ``nodes`` that ``end`` depends on, when every tensor they make other
    than ``end`` is read by them only and is no graph output (then the chain can be cut
    out whole)."""
    by_output = {o: n for n in nodes for o in n.output}
    needed, todo = [], [end]
    seen: set[int] = set()
    while todo:
        node = by_output.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        todo += [i for i in node.input if i != source]
    made = {o for n in needed for o in n.output} - {end}
    if made & outputs or any(id(u) not in seen for t in made for u in consts.users.get(t, [])):
        return None
    order = {id(n): k for k, n in enumerate(nodes)}
    return sorted(needed, key=lambda n: order[id(n)])


def _table(graph: Any, source: str, chain: list[Any], consts: _Consts) -> tuple[Any, bool] | None:
    """(the chain's output for each of the 256 codes of its input, whether that input is
    int8), by onnxruntime running the chain alone with graph optimizations off; None when
    its input or output is not 8-bit."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    eight_bit: dict[int, Any] = {int(onnx.TensorProto.UINT8): np.uint8, int(onnx.TensorProto.INT8): np.int8}
    dtype = eight_bit.get(_q_type(consts.producer[source], consts))
    out_elem = _q_type(chain[-1], consts)
    if dtype is None or out_elem not in eight_bit:
        return None
    end = chain[-1].output[0]
    makers: list[Any] = []
    for node in chain:
        for i in node.input:
            if i != source and i not in {o for n in chain for o in n.output}:
                makers += consts.makers(i) or []
    needed = {i for n in [*chain, *makers] for i in n.input}
    inits = [consts.inits[i] for i in sorted(needed) if i in consts.inits]
    order = {id(n): k for k, n in enumerate(graph.node)}
    body = sorted({id(n): n for n in [*makers, *chain]}.values(), key=lambda n: order[id(n)])
    elem = onnx.TensorProto.UINT8 if dtype == np.uint8 else onnx.TensorProto.INT8
    sub = helper.make_graph(body, "chain", [helper.make_tensor_value_info(source, elem, [256])],
                            [helper.make_tensor_value_info(end, out_elem, [256])], inits)
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    codes = np.arange(256, dtype=np.int16) + (0 if dtype == np.uint8 else -128)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {source: codes.astype(dtype)})[0]), dtype == np.int8


def _q_type(q: Any, consts: _Consts) -> int:
    """The element type a QuantizeLinear writes: its zero point's (uint8 without one)."""
    import onnx

    if len(q.input) < 3 or not q.input[2]:
        return onnx.TensorProto.UINT8
    zero = consts.inits.get(q.input[2])
    if zero is not None:
        return int(zero.data_type)
    node = consts.producer.get(q.input[2])
    value = next((a.t for a in node.attribute if a.name == "value"), None) if node else None
    return int(value.data_type) if value is not None else onnx.TensorProto.UINT8


def _lookup(graph: Any, source: str, end: str, table: Any, signed: bool) -> list[Any]:
    """The nodes computing ``end`` as ``table[source]`` (the table added to ``graph``).
    An int8 source indexes with its code as is: Gather counts a negative index from the
    end, so the table is stored rotated (row ``c mod 256`` for code ``c``). The Cast is
    what ONNX's Gather needs; the IR drops it (converter/_openvino_ir.py): OpenVINO's
    Gather reads 8-bit indices, and an int32 index tensor cost PP-OCR rec a layout
    reorder four times the size."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    name = f"{end}_table"
    rows = np.roll(table, 128) if signed else table
    graph.initializer.append(numpy_helper.from_array(rows, name))
    return [helper.make_node("Cast", [source], [f"{name}_i"], name=f"{name}_i", to=TensorProto.INT32),
            helper.make_node("Gather", [name, f"{name}_i"], [end], name=name, axis=0)]
