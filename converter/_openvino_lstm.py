"""A wide float LSTM written as per-gate MatMuls in steps, in the form written for
OpenVINO, with each step reading the gates' weights in the reverse order of the step
before, so that part of them is still in the core's L2 cache.

Why the LSTM itself is slow in OpenVINO: its CPU plugin runs every RNN/LSTMSequence node
with oneDNN's ``ref:any`` implementation (``ref_any_f32`` in the layer counters). Its
oneDNN fork turns the brgemm RNN off for every form ("WA: Brgemm implementation has perf
degradation for RNN node", ref_rnn.hpp init_brgemm), so no attribute of the ONNX LSTM
(sequence lengths, activations, clip, layout, direction, initial states, its Q/DQ
neighbours) selects another kernel; ``ref:any`` is the gemm-based one, not a naive loop.
At batch 1 each step multiplies the hidden state by R (4H x H floats, 4 MB per direction
at H = 512), more than this CPU's 2 MB of L2 per core: every step streams all of R from
L3, in both runtimes (ddddocr_ocr's bidirectional LSTM, 64 steps: 11.1 ms in
onnxruntime, 12.3 ms in OpenVINO, ~23 GB/s; unrolled in the same order 12.1 ms).

Unrolled here, one MatMul per gate and step, the four gates taken in the order
o, f, i, c at even steps and c, i, f, o at odd ones: the 1 MB blocks read last are the
first read next, while they are still in L2. OpenVINO executes a node's inputs depth
first in input order, so the order is the operand order of the cell's Mul/Add nodes (its
execution order, read back: o f i c, c i f o, ...). The same LSTM, same run: 9.8 ms vs
12.3 ms as LSTMSequence (onnxruntime's LSTM 11.4 ms).

The same function in float: the input projections of all steps are one MatMul per gate
with the two biases summed, the rest is the ONNX LSTM's own equations (default
activations, no clip, no peepholes); sums in another order, so equal within float
rounding (max |diff| 2e-6 on ddddocr's LSTM output). Applied only to an LSTM of hidden
size >= :data:`MIN_HIDDEN` (smaller R fits in L2 and the unrolled graph only adds
nodes), static shapes, weights as initializers, full-length sequences.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_HIDDEN", "unrolled_lstms"]

MIN_HIDDEN = 256  # 4H x H floats = 1 MB per direction: below, R stays in L2 anyway
MAX_STEPS = 128  # more steps: a graph of thousands of nodes (~18 per step and direction) to compile
GATES = ("i", "o", "f", "c")  # the ONNX LSTM's gate order in W, R and B
_DEFAULT_ACTIVATIONS = (b"Sigmoid", b"Tanh", b"Tanh")


def unrolled_lstms(model: Any) -> int:
    """Rewrite each eligible LSTM node of ``model`` (onnx.ModelProto) in place; how many."""
    from onnx import numpy_helper, shape_inference

    graph = model.graph
    lstms = [n for n in graph.node if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]
    if not lstms:
        return 0
    shapes = _static_shapes(shape_inference.infer_shapes(model))
    inits = {i.name: i for i in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    count = 0
    for node in lstms:
        found = _eligible(node, shapes, inits)
        if found is None:
            continue
        arrays = {k: numpy_helper.to_array(inits[v]) if v else None for k, v in found.items()}
        nodes, consts = _unrolled(node, arrays, shapes[node.input[0]], opset)
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for k, new in enumerate(nodes):
            graph.node.insert(at + k, new)
        graph.initializer.extend(consts)
        _drop_unread(graph, set(found.values()) - {""})
        count += 1
    return count


def _static_shapes(model: Any) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            found[value.name] = [d.dim_value for d in tensor.shape.dim]
    return found


def _eligible(node: Any, shapes: dict[str, list[int]], inits: dict[str, Any]) -> dict[str, str] | None:
    """The names of W, R, B, initial_h, initial_c ("" when absent) when ``node`` is an LSTM
    this rewrite reproduces; else None."""
    import numpy as np
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    if set(attrs) - {"direction", "hidden_size", "activations", "input_forget", "layout"}:
        return None  # clip, activation alpha/beta: not the default equations
    if "activations" in attrs and tuple(attrs["activations"].strings) not in (
            _DEFAULT_ACTIVATIONS, _DEFAULT_ACTIVATIONS * 2):
        return None
    if any(attrs[k].i for k in ("input_forget", "layout") if k in attrs):
        return None
    names = [*node.input, *[""] * (8 - len(node.input))]
    x, w, r, b, lens, h0, c0, peep = names[:8]
    shape = shapes.get(x)
    if peep or not all(n in inits for n in (w, r)) or shape is None or len(shape) != 3:
        return None
    if any(n and n not in inits for n in (b, h0, c0)):
        return None
    if inits[w].data_type != 1 or inits[r].data_type != 1:  # float weights only
        return None
    hidden = attrs["hidden_size"].i if "hidden_size" in attrs else 0
    if hidden < MIN_HIDDEN or not 0 < shape[0] <= MAX_STEPS:
        return None
    if lens and (lens not in inits or not np.all(numpy_helper.to_array(inits[lens]) == shape[0])):
        return None  # sequence lengths: only when every one is the whole sequence
    return {"w": w, "r": r, "b": b, "h0": h0, "c0": c0}


def _unrolled(node: Any, arrays: dict[str, Any], x_shape: list[int], opset: int
              ) -> tuple[list[Any], list[Any]]:
    """The nodes and constants that compute ``node``'s outputs step by step."""
    import numpy as np
    from onnx import helper, numpy_helper

    steps, batch, size = x_shape
    w, r = arrays["w"], arrays["r"]
    dirs, hidden = w.shape[0], w.shape[1] // 4
    direction = next((a.s for a in node.attribute if a.name == "direction"), b"forward")
    bias = arrays["b"] if arrays["b"] is not None else np.zeros((dirs, 8 * hidden), np.float32)
    base = (node.name or node.output[0]) + "_steps"
    nodes: list[Any] = []
    consts: list[Any] = []

    def const(name: str, value: Any) -> str:
        consts.append(numpy_helper.from_array(np.ascontiguousarray(value), f"{base}_{name}"))
        return f"{base}_{name}"

    def add(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    flat = add("Reshape", [node.input[0], const("flat", np.array([steps * batch, size], np.int64))], f"{base}_x")
    pieces = [f"{base}_x{d}{g}_{t}" for d in range(dirs) for g in GATES for t in range(steps)]
    split = const("split", np.full(steps, batch, np.int64))
    outputs: dict[tuple[int, int], str] = {}
    finals: list[tuple[str, str]] = []
    for d in range(dirs):
        weights = {}
        for k, gate in enumerate(GATES):
            rows = slice(k * hidden, (k + 1) * hidden)
            projected = add("MatMul", [flat, const(f"w{d}{gate}", w[d][rows].T)], f"{base}_xw{d}{gate}")
            summed = bias[d][rows] + bias[d][4 * hidden:][rows]
            projected = add("Add", [projected, const(f"b{d}{gate}", summed)], f"{base}_xb{d}{gate}")
            names = pieces[(d * 4 + k) * steps:(d * 4 + k + 1) * steps]
            if opset >= 13:
                nodes.append(helper.make_node("Split", [projected, split], names, name=f"{base}_s{d}{gate}", axis=0))
            else:
                nodes.append(helper.make_node("Split", [projected], names, name=f"{base}_s{d}{gate}", axis=0,
                                              split=[batch] * steps))
            weights[gate] = const(f"r{d}{gate}", r[d][rows].T)
        h = const(f"h0{d}", arrays["h0"][d]) if arrays["h0"] is not None and np.any(arrays["h0"][d]) else ""
        c = const(f"c0{d}", arrays["c0"][d]) if arrays["c0"] is not None and np.any(arrays["c0"][d]) else ""
        backward = direction == b"reverse" or (direction == b"bidirectional" and d == 1)
        order = range(steps - 1, -1, -1) if backward else range(steps)
        for n, t in enumerate(order):
            p = f"{base}_d{d}t{t}_"
            gates = {}
            for k, gate in enumerate(GATES):
                piece = pieces[(d * 4 + k) * steps + t]
                gates[gate] = add("Add", [piece, add("MatMul", [h, weights[gate]], p + gate + "r")], p + "g" + gate) if h else piece
            h, c = _cell(add, p, gates, c, reverse=n % 2 == 1)
            outputs[(t, d)] = h
        finals.append((h, c))
    _outputs(node, add, const, outputs, finals, steps, dirs, batch, hidden)
    return nodes, consts


def _cell(add: Any, p: str, gates: dict[str, str], c_prev: str, reverse: bool) -> tuple[str, str]:
    """One step's cell and hidden state from its gate sums. The operand order sets the
    order OpenVINO runs the four gate MatMuls in (depth first): o f i c, or with
    ``reverse`` c i f o."""
    i = add("Sigmoid", [gates["i"]], p + "is")
    o = add("Sigmoid", [gates["o"]], p + "os")
    f = add("Sigmoid", [gates["f"]], p + "fs")
    g = add("Tanh", [gates["c"]], p + "ct")
    ig = add("Mul", [g, i] if reverse else [i, g], p + "ig")
    if c_prev:
        fc = add("Mul", [c_prev, f] if reverse else [f, c_prev], p + "fc")
        c = add("Add", [ig, fc] if reverse else [fc, ig], p + "cell")
    else:  # a zero initial cell: f * 0 + i * g
        c = ig
    t = add("Tanh", [c], p + "cT")
    return add("Mul", [t, o] if reverse else [o, t], p + "h"), c


def _outputs(node: Any, add: Any, const: Any, outputs: dict[tuple[int, int], str],
             finals: list[tuple[str, str]], steps: int, dirs: int, batch: int, hidden: int) -> None:
    """The LSTM's Y [T, D, B, H], Y_h and Y_c [D, B, H] under their own names."""
    import numpy as np

    names = [*node.output, "", ""][:3]
    base = (node.name or node.output[0]) + "_steps"
    if names[0]:
        stacked = add("Concat", [outputs[(t, d)] for t in range(steps) for d in range(dirs)], f"{base}_y", axis=0)
        add("Reshape", [stacked, const("y_shape", np.array([steps, dirs, batch, hidden], np.int64))], names[0])
    shape = const("state_shape", np.array([dirs, batch, hidden], np.int64))
    for k, name in ((0, names[1]), (1, names[2])):
        if name:
            state = add("Concat", [f[k] for f in finals], f"{base}_state{k}", axis=0)
            add("Reshape", [state, shape], name)


def _drop_unread(graph: Any, names: set[str]) -> None:
    """The LSTM's former weights and states, unless something else reads them."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name in names and i.name not in read]:
        graph.initializer.remove(init)
