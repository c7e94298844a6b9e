"""YOLOX's "Focus" stem (space to depth by four stride-2 Slice pairs and a Concat) as one
Reshape -> Transpose -> Reshape in the form written for OpenVINO.

``Concat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])``:
OpenVINO's CPU plugin runs strided Slices with a slow reference kernel (ddddocr_det: 3.7
ms of 46.4 in its layer counters, onnxruntime 0.7 of 23.8). A stride of 2 is not a
Split; it is a reshape of each spatial axis into (n/2, 2) and a transpose that moves the
two offsets before the channels, which OpenVINO runs as one permute.

Bit-identical: the rewrite applies only when every Q/DQ pair between the source and the
Concat rounds to the grid the source already holds (same scale, zero point and type as
the source's own DequantizeLinear), so those roundings are no-ops and dropping them
changes no number; the Concat's own output Q/DQ stays.
"""

from __future__ import annotations

from typing import Any

__all__ = ["focus_as_transpose"]

BIG = 2**31 - 1  # an end at or beyond this reads "to the end" for any real axis


def focus_as_transpose(graph: Any) -> int:
    """Rewrite every Focus block of ``graph`` (onnx.GraphProto, QDQ, static input shape);
    how many."""
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    count = 0
    for concat in list(graph.node):
        if concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        found = _focus(concat, producer, inits, graph)
        if found is not None:
            _rewrite(graph, concat, *found)
            count += 1
    return count


def _focus(concat: Any, producer: dict[str, Any], inits: dict[str, Any], graph: Any
           ) -> tuple[str, list[int], list[int]] | None:
    """(the source DQ's output, its NCHW shape, the Transpose's perm) when ``concat`` is
    a Focus block whose inner roundings are no-ops; else None."""
    if _attr(concat, "axis") not in (1, -3):
        return None
    offsets: list[tuple[int, int]] = []
    source: Any = None
    for name in concat.input:
        path = _strided_pair(name, producer, inits)
        if path is None:
            return None
        dq, h, w = path
        if source is not None and dq is not source:
            return None
        source = dq
        offsets.append((h, w))
    if source is None:
        return None
    shape = _shape_of(graph, source)
    if shape is None or len(shape) != 4 or shape[2] % 2 or shape[3] % 2:
        return None
    if offsets == [(0, 0), (1, 0), (0, 1), (1, 1)]:  # block index 2*w + h: YOLOX
        perm = [0, 5, 3, 1, 2, 4]
    elif offsets == [(0, 0), (0, 1), (1, 0), (1, 1)]:  # 2*h + w
        perm = [0, 3, 5, 1, 2, 4]
    else:
        return None
    return source.output[0], shape, perm


def _strided_pair(name: str, producer: dict[str, Any], inits: dict[str, Any]
                  ) -> tuple[Any, int, int] | None:
    """(the source DQ, h offset, w offset) when ``name`` is (through no-op Q/DQ pairs)
    Slice(axis 3, step 2) of Slice(axis 2, step 2) of the source DQ (either order)."""
    offset: dict[int, int] = {}
    node = producer.get(name)
    grid: tuple[Any, ...] | None = None
    for _ in range(2):
        node, q_grid = _through_qdq(node, producer, inits)
        if node is None or node.op_type != "Slice":
            return None
        cut = _slice_cut(node, inits)
        if cut is None or cut[0] in offset:
            return None
        offset[cut[0]] = cut[1]
        if q_grid is not None and grid is not None and q_grid != grid:
            return None
        grid = q_grid or grid
        node = producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or set(offset) != {2, 3}:
        return None
    if grid is not None and grid != _grid(node, inits):
        return None
    return node, offset[2], offset[3]


def _through_qdq(node: Any, producer: dict[str, Any], inits: dict[str, Any]
                 ) -> tuple[Any, tuple[Any, ...] | None]:
    """The node under a Q -> DQ pair on top of ``node`` (and the pair's grid), or ``node``."""
    if node is None or node.op_type != "DequantizeLinear":
        return node, None
    q = producer.get(node.input[0])
    if q is None or q.op_type != "QuantizeLinear" or _grid(q, inits) != _grid(node, inits):
        return None, None
    return producer.get(q.input[0]), _grid(node, inits)


def _grid(node: Any, inits: dict[str, Any]) -> tuple[Any, ...] | None:
    """A Q or DQ node's (scale, zero point, type) as comparable values; None if not constant."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    scale, zero = (numpy_helper.to_array(inits[node.input[i]]) for i in (1, 2))
    if scale.size != 1 or zero.size != 1:
        return None
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), str(zero.dtype)


def _slice_cut(node: Any, inits: dict[str, Any]) -> tuple[int, int] | None:
    """(axis, start) of a one-axis step-2 Slice to the end whose start is 0 or 1."""
    from onnx import numpy_helper

    if len(node.input) != 5 or not all(i in inits for i in node.input[1:]):
        return None
    starts, ends, axes, steps = (numpy_helper.to_array(inits[i]).reshape(-1).tolist() for i in node.input[1:])
    if len(axes) != 1 or steps != [2] or starts[0] not in (0, 1) or ends[0] < BIG:
        return None
    axis = int(axes[0])
    return (axis + 4 if axis < 0 else axis), int(starts[0])


def _shape_of(graph: Any, dq: Any) -> list[int] | None:
    """The static shape of the tensor the source DQ reads (a graph input, via its Q)."""
    dims: dict[str, list[int]] = {}
    for value in list(graph.input) + list(graph.value_info):
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            dims[value.name] = [d.dim_value for d in tensor.shape.dim]
    name = dq.input[0]
    if name not in dims:
        q = next((n for n in graph.node if name in n.output), None)
        name = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name
    return dims.get(name)


def _rewrite(graph: Any, concat: Any, source: str, shape: list[int], perm: list[int]) -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    n, c, h, w = shape
    base = f"{concat.output[0]}_focus"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([n, c, h // 2, 2, w // 2, 2], np.int64), f"{base}_split"),
        numpy_helper.from_array(np.array([n, 4 * c, h // 2, w // 2], np.int64), f"{base}_shape")])
    nodes = [helper.make_node("Reshape", [source, f"{base}_split"], [f"{base}_6d"], name=f"{base}_split"),
             helper.make_node("Transpose", [f"{base}_6d"], [f"{base}_t"], name=f"{base}_t", perm=perm),
             helper.make_node("Reshape", [f"{base}_t", f"{base}_shape"], [concat.output[0]], name=f"{base}_shape")]
    at = list(graph.node).index(concat)
    graph.node.remove(concat)
    for k, node in enumerate(nodes):
        graph.node.insert(at + k, node)
    _drop_unread(graph)


def _drop_unread(graph: Any) -> None:
    """Remove nodes (the old Slices and their Q/DQ) whose outputs nothing reads, and the
    constants only they read."""
    outputs = {o.name for o in graph.output}
    freed: set[str] = set()
    while True:
        read = {i for node in graph.node for i in node.input} | outputs
        dead = [node for node in graph.node if not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            freed.update(node.input)
            graph.node.remove(node)
    read = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name in freed and i.name not in read]:
        graph.initializer.remove(init)


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)
