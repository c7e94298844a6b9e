"""Hardswish blocks on a convolution's output as one HardSwish, in the form written for
OpenVINO, so that its CPU plugin runs each as a post-op of the int8 convolution.

Our QDQ ONNX writes hardswish as the int8 runtimes need it: the convolution's output
rounded to int8 (Q/DQ), ``Add 3``, a uint8 Q whose range clips at 0 and 6 and whose DQ
divides by 6, and ``Mul`` by the rounded input (MobileNetV3, PP-OCR's direction
classifier: 17 blocks). OpenVINO cannot fuse that chain into the convolution: it runs each
as a separate int8 "Subgraph" of float JIT code over the whole feature map, a node more
per block. ``Conv -> HardSwish -> Q`` is one int8 convolution with a hardswish post-op.
PP-OCR cls, same run, onnxruntime / OpenVINO: 0.98 as written, 1.22 with the blocks as
HardSwish (1.08 when only the gate's rounding goes and the convolution's output keeps its
Q/DQ: the Subgraph stays).

As the SiLU blocks of converter/_openvino_prep.py, the numbers change by the two skipped
roundings (the convolution's output and the gate stay float inside the fused op); the
target reports top-1 agreement with onnxruntime on the generic INT8 ONNX, and the form is
kept only where it ran faster (converter/_target_openvino.py). On the 100 eval lines of
the PP-OCR cls bench: top-1 agreement 96 % (the generic form in OpenVINO: 98 %), mean
|diff| of the output probabilities 0.027 (generic 0.018).
A block qualifies only when its constants are hardswish's own (Add 3, the gate's Q
clipping at 6 and its DQ dividing by 6, each within 1 %) and nothing else reads its
inner tensors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hardswish_blocks"]

TOLERANCE = 0.01  # relative, on hardswish's constants 3, 6 and 1/6


def hardswish_blocks(graph: Any) -> int:
    """Rewrite each hardswish block on a Conv's output in ``graph`` (onnx.GraphProto,
    changed in place) as ``HardSwish(conv output)``; how many."""
    from onnx import helper

    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    consts = _constants(graph)
    outputs = {o.name for o in graph.output}
    dropped: set[int] = set()
    instead: dict[int, Any] = {}
    for add in graph.node:
        block = _block(add, producer, users, consts, outputs)
        if block is None or any(id(n) in dropped for n in block):
            continue
        conv_out, mul = block[0].input[0], block[-1]
        instead[id(mul)] = helper.make_node("HardSwish", [conv_out], [mul.output[0]], name=f"{mul.name or mul.output[0]}_hardswish")
        dropped.update(id(n) for n in block)
    if instead:
        kept = [instead.get(id(n), n) for n in graph.node if id(n) in instead or id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unread(graph, outputs)
    return len(instead)


def _drop_unread(graph: Any, outputs: set[str]) -> None:
    """Constant DequantizeLinear nodes (the dropped Adds' 3) and initializers nothing
    reads any more."""
    inits = {i.name for i in graph.initializer}
    read = {i for n in graph.node for i in n.input} | outputs
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read
            and all(i in inits for i in n.input if i)]
    for node in dead:
        graph.node.remove(node)
    read = {i for n in graph.node for i in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def _block(add: Any, producer: dict[str, Any], users: dict[str, list[Any]], consts: dict[str, Any],
           outputs: set[str]) -> list[Any] | None:
    """[x's Q, x's DQ, Add, the gate's Q, its DQ, Mul] when ``add`` starts a hardswish
    block on a Conv's output; else None."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    x_dq = producer.get(add.input[0])
    three = _value(add.input[1], producer, consts)
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or three is None or not _near(three, 3.0):
        return None
    x_q = producer.get(x_dq.input[0])
    if x_q is None or x_q.op_type != "QuantizeLinear" or len(users.get(x_q.output[0], [])) != 1:
        return None
    conv = producer.get(x_q.input[0])
    if conv is None or conv.op_type != "Conv" or len(users.get(x_q.input[0], [])) != 1:
        return None
    gate_q = _only_user(add.output[0], users, "QuantizeLinear")
    gate_dq = _only_user(gate_q.output[0], users, "DequantizeLinear") if gate_q is not None else None
    mul = _only_user(gate_dq.output[0], users, "Mul") if gate_dq is not None else None
    if gate_q is None or gate_dq is None or mul is None or x_dq.output[0] not in mul.input:
        return None
    if sorted(id(u) for u in users.get(x_dq.output[0], [])) != sorted({id(add), id(mul)}):
        return None  # x feeds the block's Add and Mul only
    inner = [x_q.input[0], x_q.output[0], x_dq.output[0], add.output[0], gate_q.output[0], gate_dq.output[0]]
    if outputs & set(inner) or not _clips_at_six(gate_q, gate_dq, consts):
        return None
    return [x_q, x_dq, add, gate_q, gate_dq, mul]


def _clips_at_six(gate_q: Any, gate_dq: Any, consts: dict[str, Any]) -> bool:
    """The gate's Q is uint8 from 0 (clipping x + 3 at 0 and at 255 steps = 6) and its DQ
    divides by 6."""
    import numpy as np

    names = [*gate_q.input[1:3], *gate_dq.input[1:3]]
    if len(names) != 4 or not all(n in consts and consts[n].size == 1 for n in names):
        return False
    q_scale, q_zero, dq_scale, dq_zero = (consts[n] for n in names)
    if q_zero.dtype != np.uint8 or dq_zero.dtype != np.uint8 or int(q_zero) != 0 or int(dq_zero) != 0:
        return False
    return _near(float(q_scale) * 255.0, 6.0) and _near(float(dq_scale) * 6.0, float(q_scale))


def _only_user(name: str, users: dict[str, list[Any]], op: str) -> Any:
    found = users.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op else None


def _value(name: str, producer: dict[str, Any], consts: dict[str, Any]) -> float | None:
    """A one-element constant, directly or through a DequantizeLinear of constants."""
    if name in consts:
        value = consts[name]
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    node = producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or not all(i in consts for i in node.input):
        return None
    data, scale = consts[node.input[0]], consts[node.input[1]]
    zero = consts[node.input[2]] if len(node.input) > 2 else 0
    if data.size != 1:
        return None
    return float((float(data.reshape(-1)[0]) - float(zero)) * float(scale))


def _constants(graph: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _near(value: float, want: float) -> bool:
    return abs(value - want) <= TOLERANCE * abs(want)
