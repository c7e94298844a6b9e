"""A last pass over the lowered TFLite graph: consecutive TRANSPOSE ops become one.

Layout changes meet the ONNX model's own Transposes (YOLOv8's DFL: Transpose, then the
NHWC that SOFTMAX over channels wants): TRANSPOSE(p2) of TRANSPOSE(p1) of x is one
TRANSPOSE of x with the composed permutation, none when that is the identity. Ops whose
outputs nobody reads any more are dropped. Moving bytes in another order changes no
value, so the pass is exact; it only requires both TRANSPOSEs to keep one set of int8
parameters (every lowering writes them so).
"""

from __future__ import annotations

import numpy as np
from edgeship.converter._tflite_fb import FbGraph, FbOp


def _perm(graph: FbGraph, op: FbOp) -> list[int] | None:
    tensor = graph.tensors[op.inputs[1]]
    if not tensor.buffer:
        return None
    return [int(p) for p in np.frombuffer(graph.buffers[tensor.buffer], np.int32)]


def _same_quant(graph: FbGraph, a: int, b: int) -> bool:
    qa, qb = graph.tensors[a].quant, graph.tensors[b].quant
    if qa is None or qb is None:
        return qa is qb
    return qa.scales == qb.scales and qa.zero_points == qb.zero_points


def fold_transposes(graph: FbGraph) -> int:
    """Compose TRANSPOSE chains in place; returns how many ops were removed."""
    before = len(graph.ops)
    producer = {out: op for op in graph.ops for out in op.outputs}
    rename: dict[int, int] = {}  # tensor -> the tensor that holds the same bytes
    for op in list(graph.ops):
        op.inputs = [rename.get(i, i) for i in op.inputs]
        first = producer.get(op.inputs[0]) if op.opcode == "TRANSPOSE" else None
        if first is None or first.opcode != "TRANSPOSE":
            continue
        p1, p2 = _perm(graph, first), _perm(graph, op)
        src = first.inputs[0]
        if p1 is None or p2 is None or not _same_quant(graph, src, op.outputs[0]):
            continue
        composed = [p1[i] for i in p2]
        if composed == list(range(len(composed))) and op.outputs[0] not in graph.outputs:
            rename[op.outputs[0]] = src
            graph.ops.remove(op)
            continue
        data = np.asarray(composed, np.int32)
        graph.buffers.append(data.tobytes())
        perm = graph.tensors[op.inputs[1]]
        graph.tensors.append(type(perm)(f"{perm.name}_folded", (len(composed),), "int32",
                                        buffer=len(graph.buffers) - 1))
        op.inputs = [src, len(graph.tensors) - 1]
    _drop_dead(graph)
    return before - len(graph.ops)


def _drop_dead(graph: FbGraph) -> None:
    while True:
        read = {i for op in graph.ops for i in op.inputs} | set(graph.outputs)
        dead = [op for op in graph.ops if not any(o in read for o in op.outputs)]
        if not dead:
            return
        for op in dead:
            graph.ops.remove(op)
