"""Two rewrites of the written QDQ ONNX model for onnxruntime's x86/ARM int8 kernels. Each
computes the same integers for every real channel; neither touches the TFLite file, which
is written from the model before them (see ``for_onnxruntime``).

1. Depthwise channels padded to a multiple of 16. onnxruntime runs a depthwise
   QLinearConv with its fast symmetric kernel (MLAS ``ConvSym`` depthwise) only when the
   group count is a multiple of 16 (8 on ARM64); any other count falls back to a generic
   kernel measured ~3x slower here (200 channels 5x5: 71 us; 208 channels: 24 us). MobileNet
   widths such as 40, 88, 104, 200 (PP-OCR's x0.35 classifier) and 72, 88, 120
   (MobileNetV3-Small) all miss it. A *region* is the set of tensors that only channel-wise
   ops connect to a depthwise Conv (depthwise and 1x1 gate Convs, Clip, Relu, Add / Mul of two
   region tensors or with a scalar, pools, Q/DQ); it is bounded by ordinary Convs. The
   bounding producers get extra output channels (zero weights, zero bias), the depthwise
   Convs extra groups (zero kernels), the bounding consumers extra input channels with zero
   weights. Whatever the padded channels hold, a zero weight drops it where channels mix,
   and no other op in a region mixes channels, so every real channel keeps its integers.

2. The 1x1 gate of HardSwish / HardSigmoid (``Clip(DepthwiseConv1x1(x; alpha, beta), 0, 1)``,
   converter/_fuse.py) as ``Add(x, beta / alpha)`` quantized with scale ``s / alpha``
   (``s`` the gate's scale; the DequantizeLinear after it keeps ``s``, so it reads the sum
   back divided by alpha: ``alpha x + beta``, clipped to [0, 1] by the int8 range as
   before). onnxruntime fuses DQ -> Add(scalar) -> Q into one QLinearAdd, ~4x cheaper than
   the per-channel QLinearConv for the same function (16 x 112 x 112: 20 us vs 85 us). This
   is the one place where a QuantizeLinear and its DequantizeLinear carry different
   scales; the TFLite reader (``converter/_tflite_qdq.py``) turns it back into the 1x1 gate.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, shape_inference

from ._ir import Graph

CHANNEL_ALIGN = 16  # onnxruntime MLAS: 16 on x86-64, 8 on ARM64 (16 serves both)
GATE_SCALE_SUFFIX = "_s_ort"  # the Q scale of a gate written as Add (scale / alpha)
_CHANNEL_WISE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "MaxPool",
                 "AveragePool", "GlobalAveragePool", "QuantizeLinear", "DequantizeLinear")
_BINARY = ("Add", "Mul")


def for_onnxruntime(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model with both rewrites applied, and one log line per rewrite kind."""
    graph = Graph.from_model(onnx.ModelProto.FromString(model.SerializeToString()))  # edited
    gates = _gates_as_add(graph)
    padded = _pad_depthwise(graph, _shapes(graph.to_model()))
    out = graph.to_model()
    del out.graph.value_info[:]
    out.producer_name = model.producer_name
    out.metadata_props.extend(model.metadata_props)
    log = []
    if gates:
        log.append(f"onnxruntime: {gates} HardSwish/HardSigmoid gates written as QLinearAdd "
                   "(instead of a 1x1 depthwise QLinearConv)")
    if padded:
        log.append(f"onnxruntime: {len(padded)} depthwise Conv(s) padded to a multiple of "
                   f"{CHANNEL_ALIGN} channels for its fast int8 kernel ("
                   + ", ".join(f"{n} {a}->{b}" for n, a, b in padded[:6])
                   + (", ..." if len(padded) > 6 else "") + ")")
    return out, log


# ---- helpers ---------------------------------------------------------------------------
def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [int(d.dim_value) for d in dims]
    return shapes


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    return next(([int(v) for v in a.ints] for a in node.attribute if a.name == name), default)


def _set_group(node: onnx.NodeProto, group: int) -> None:
    for a in node.attribute:
        if a.name == "group":
            a.i = group
            return
    node.attribute.append(helper.make_attribute("group", group))


def _const_dq(graph: Graph, name: str) -> onnx.NodeProto | None:
    """The DequantizeLinear of a constant behind tensor ``name`` (used by one node only)."""
    dq = graph.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in graph.inits:
        return None
    if len(graph.consumers.get(name, [])) != 1:
        return None
    if len([n for n in graph.nodes if dq.input[0] in n.input]) != 1:
        return None
    return dq


def _dequantized(graph: Graph, dq: onnx.NodeProto) -> np.ndarray | None:
    q = graph.inits[dq.input[0]].astype(np.float64)
    scale = graph.inits.get(dq.input[1])
    if scale is None:  # a bias scale computed by Mul(weight scales, input scale)
        mul = graph.producer.get(dq.input[1])
        if mul is None or mul.op_type != "Mul" or not all(i in graph.inits for i in mul.input):
            return None
        scale = graph.inits[mul.input[0]].astype(np.float64) * graph.inits[mul.input[1]]
    zero = graph.inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = _int(dq, "axis", 1)
    shape = [1] * q.ndim
    if np.size(scale) > 1:
        shape[axis] = -1
    return np.asarray((q - np.reshape(zero, shape if np.size(zero) > 1 else ())) * np.reshape(
        scale, shape if np.size(scale) > 1 else ()))


def _is_depthwise(graph: Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    dq = graph.producer.get(node.input[1])
    if dq is None or dq.input[0] not in graph.inits:
        return False
    w = graph.inits[dq.input[0]]
    return bool(w.ndim == 4 and w.shape[1] == 1 and _int(node, "group", 1) == w.shape[0] > 1)


# ---- 2. gates as Add -------------------------------------------------------------------
def _gates_as_add(graph: Graph) -> int:
    count = 0
    for node in list(graph.nodes):
        gate = _gate_params(graph, node)
        if gate is None:
            continue
        alpha, beta, q = gate
        c = beta / alpha
        base = node.name or node.output[0]
        # c as a constant operand (converter/_quantize.py): int8 127, scale c / 127, stored + 128
        graph.inits[f"{base}_c_q"] = np.array(255, np.uint8)
        graph.inits[f"{base}_c_s"] = np.array(c / 127.0, np.float32)
        graph.inits[f"{base}_c_z"] = np.array(128, np.uint8)
        scale = f"{q.output[0]}{GATE_SCALE_SUFFIX}"
        graph.inits[scale] = np.array(float(graph.inits[q.input[1]]) / alpha, np.float32)
        q.input[1] = scale
        dq = helper.make_node("DequantizeLinear", [f"{base}_c_q", f"{base}_c_s", f"{base}_c_z"],
                              [f"{base}_c_dq"])
        add = helper.make_node("Add", [node.input[0], f"{base}_c_dq"], list(node.output), name=node.name)
        at = next(i for i, n in enumerate(graph.nodes) if n is node)
        graph.nodes[at:at + 1] = [dq, add]
        count += 1
    _drop_dead(graph)
    return count


def _drop_dead(graph: Graph) -> None:
    """Remove the nodes (the replaced gates' weight / bias DQs and bias-scale Muls) and
    initializers that nothing reads any more: onnxruntime would still run such nodes."""
    while True:
        graph.reindex()
        live = set(graph.consumers) | set(graph.output_names)
        kept = [n for n in graph.nodes if any(o in live for o in n.output)]
        if len(kept) == len(graph.nodes):
            break
        graph.nodes = kept
    graph.prune_unused()


def _gate_params(graph: Graph, node: onnx.NodeProto) -> tuple[float, float, onnx.NodeProto] | None:
    """(alpha, beta, its QuantizeLinear) when ``node`` is a 1x1 depthwise Conv whose every
    channel computes the same ``alpha x + beta`` (alpha > 0) into one QuantizeLinear."""
    if not _is_depthwise(graph, node) or len(node.input) < 3:
        return None
    if (_ints(node, "kernel_shape", [1, 1]) != [1, 1] or any(_ints(node, "pads", []))
            or any(s != 1 for s in _ints(node, "strides", []))):
        return None
    users = graph.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].input[1] not in graph.inits:
        return None
    w_dq, b_dq = graph.producer.get(node.input[1]), graph.producer.get(node.input[2])
    if w_dq is None or b_dq is None or b_dq.op_type != "DequantizeLinear":
        return None
    w, b = _dequantized(graph, w_dq), _dequantized(graph, b_dq)
    if w is None or b is None or not np.allclose(w, w.flat[0], rtol=1e-6, atol=0):
        return None
    if not np.allclose(b, b.flat[0], rtol=1e-4, atol=1e-7):
        return None
    alpha, beta = float(w.flat[0]), float(np.mean(b))
    if alpha <= 0 or beta <= 0 or not all(_stays_nhwc(graph, m.output[0])
                                          for m in _readers(graph, users[0].output[0])):
        return None
    return alpha, beta, users[0]


def _readers(graph: Graph, tensor: str) -> list[onnx.NodeProto]:
    """The compute nodes that read ``tensor``, looking through QuantizeLinear/DequantizeLinear."""
    found = []
    for node in graph.consumers.get(tensor, []):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found += _readers(graph, node.output[0])
        else:
            found.append(node)
    return found


def _stays_nhwc(graph: Graph, tensor: str) -> bool:
    """Whether every op reading ``tensor`` keeps onnxruntime's NHWC layout. Its layout pass
    leaves a QLinearAdd with a constant operand in NCHW; where a MaxPool (or another op the
    pass would have made NHWC) reads the gated tensor, that moves a Transpose in front of
    the gate and the pool falls back to its slow NCHW uint8 kernel (PP-OCR's classifier
    head: 134 us instead of 5 us)."""
    return all(n.op_type in ("Conv", "Add", "Mul", "GlobalAveragePool", "Concat")
               for n in _readers(graph, tensor))


# ---- 1. depthwise channel padding ------------------------------------------------------
def _pad_depthwise(graph: Graph, shapes: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    padded: list[tuple[str, int, int]] = []
    done: set[str] = set()
    for node in list(graph.nodes):
        if node.name in done or not _is_depthwise(graph, node):
            continue
        channels = _int(node, "group", 1)
        if channels % CHANNEL_ALIGN == 0:
            continue
        region = _region(graph, node, channels, shapes)
        if region is None:
            continue
        members, producers, consumers = region
        new = -(-channels // CHANNEL_ALIGN) * CHANNEL_ALIGN
        for conv in producers:
            _pad_const(graph, conv.input[1], 0, new)
            if len(conv.input) > 2 and conv.input[2]:
                _pad_const(graph, conv.input[2], 0, new)
        for conv in consumers:
            _pad_const(graph, conv.input[1], 1, new)
        for member in members:
            if member.op_type == "Conv":
                _pad_const(graph, member.input[1], 0, new)
                if len(member.input) > 2 and member.input[2]:
                    _pad_const(graph, member.input[2], 0, new)
                _set_group(member, new)
                done.add(member.name)
                padded.append((member.name or member.output[0], channels, new))
    return padded


def _region(graph: Graph, start: onnx.NodeProto, channels: int, shapes: dict[str, list[int]]
            ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """(channel-wise members, bounding producer Convs, bounding consumer Convs) of the
    region around depthwise Conv ``start``, or None when anything else touches it."""
    members: dict[int, onnx.NodeProto] = {id(start): start}
    producers: dict[int, onnx.NodeProto] = {}
    consumers: dict[int, onnx.NodeProto] = {}
    tensors: list[str] = [start.input[0], start.output[0]]
    seen: set[str] = set()
    outputs = {o.name for o in graph.outputs}
    while tensors:
        t = tensors.pop()
        if t in seen:
            continue
        seen.add(t)
        shape = shapes.get(t)
        if t in outputs or shape is None or len(shape) != 4 or shape[1] != channels:
            return None
        producer = graph.producer.get(t)
        if producer is None:
            return None
        for node, is_producer in [(producer, True), *((c, False) for c in graph.consumers.get(t, []))]:
            kind = _role(graph, node, t, is_producer, channels)
            if kind is None:
                return None
            if kind == "member":
                members[id(node)] = node
                tensors += [i for i in _activation_inputs(graph, node)] + list(node.output[:1])
            elif kind == "producer":
                producers[id(node)] = node
            else:
                consumers[id(node)] = node
    if set(producers) & set(consumers):
        return None
    return list(members.values()), list(producers.values()), list(consumers.values())


def _activation_inputs(graph: Graph, node: onnx.NodeProto) -> list[str]:
    if node.op_type == "Conv":
        return [node.input[0]]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Clip"):
        return [node.input[0]]
    return [i for i in node.input if i and not _scalar_const(graph, i)]


def _scalar_const(graph: Graph, name: str) -> bool:
    if name in graph.inits:
        return graph.inits[name].size == 1
    dq = graph.producer.get(name)
    return bool(dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in graph.inits
                and graph.inits[dq.input[0]].size == 1)


def _role(graph: Graph, node: onnx.NodeProto, t: str, is_producer: bool, channels: int) -> str | None:
    """How ``node`` touches region tensor ``t``: "member", "producer", "consumer" or None."""
    if node.op_type == "Conv":
        group = _int(node, "group", 1)
        if _is_depthwise(graph, node) and group == channels:
            return "member" if _weights_private(graph, node) else None
        if group != 1 or not _weights_private(graph, node):
            return None
        return "producer" if is_producer else ("consumer" if node.input[0] == t else None)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return "member" if node.input[1] in graph.inits and graph.inits[node.input[1]].size == 1 else None
    if node.op_type in _CHANNEL_WISE:
        return "member"
    if node.op_type in _BINARY and len(node.input) == 2:
        return "member"  # the other input joins the region unless it is a scalar constant
    return None


def _weights_private(graph: Graph, node: onnx.NodeProto) -> bool:
    """Weight and bias constants used by this node alone (padding them touches nothing else)."""
    return all(_const_dq(graph, name) is not None for name in node.input[1:3] if name)


def _pad_const(graph: Graph, name: str, axis: int, size: int) -> None:
    """Pad the integer constant behind DQ output ``name`` with zeros along ``axis`` (its
    per-channel scale, when that axis is the DQ's, with the last scale repeated; a bias
    scale computed by Mul(weight scales, input scale) follows the padded weight scales)."""
    dq = graph.producer[name]
    values = graph.inits[dq.input[0]]
    extra = size - values.shape[axis]
    widths = [(0, 0)] * values.ndim
    widths[axis] = (0, extra)
    graph.inits[dq.input[0]] = np.pad(values, widths)
    dq_axis = _int(dq, "axis", 1) % max(values.ndim, 1)
    scale = graph.inits.get(dq.input[1])
    if dq_axis == axis and scale is not None and scale.size > 1:
        graph.inits[dq.input[1]] = np.concatenate([scale, np.repeat(scale[-1:], extra)])
    if len(dq.input) > 2 and dq.input[2] and graph.inits[dq.input[2]].size > 1 and dq_axis == axis:
        zp = graph.inits[dq.input[2]]
        graph.inits[dq.input[2]] = np.concatenate([zp, np.zeros(extra, zp.dtype)])


# ---- the way back (for the TFLite reader) ----------------------------------------------
def gates_as_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse of the gate rewrite: each ``Add(x, c)`` whose QuantizeLinear scale ``s_q``
    differs from its DequantizeLinear's ``s`` becomes the 1x1 depthwise gate Conv
    ``alpha x + alpha c`` (alpha = s / s_q) with int8 weights 127 at scale alpha / 127 and an
    int32 bias, as converter/_quantize.py writes a gate. A QuantizeLinear read back with
    another scale anywhere else raises ValueError (no TFLite tensor can hold that)."""
    graph = Graph.from_model(onnx.ModelProto.FromString(model.SerializeToString()))
    relabels = [q for q in graph.nodes if q.op_type == "QuantizeLinear" and _relabelled(graph, q)]
    if not relabels:
        return model
    shapes = _shapes(graph.to_model())
    for q in relabels:
        found = _add_gate(graph, q, shapes)
        if found is None:
            raise ValueError(f"QuantizeLinear of {q.input[0]!r} is read back with another scale; "
                             "only a HardSwish/HardSigmoid gate written as Add can be")
        add, x_dq, c_dq, shape = found
        c = float(np.asarray(_dequantized(graph, c_dq)).ravel()[0])
        s_q, s = float(graph.inits[q.input[1]]), float(graph.inits[_dq_of(graph, q).input[1]])
        alpha, s_x, channels = s / s_q, float(graph.inits[x_dq.input[1]]), shape[1]
        base = add.name or add.output[0]
        steps = _gate_weight_steps(c, s_x)
        w_scale = np.full(channels, alpha / steps, np.float32)
        b_scale = (np.float32(s_x) * w_scale).astype(np.float32)
        graph.inits[f"{base}_w_q"] = np.full((channels, 1, 1, 1), steps, np.int8)
        graph.inits[f"{base}_w_s"] = w_scale
        bias = np.round(alpha * c / b_scale.astype(np.float64))
        graph.inits[f"{base}_b_q"] = np.clip(bias, -_INT32_MAX, _INT32_MAX).astype(np.int32)
        graph.inits[f"{base}_b_s"] = b_scale
        q.input[1] = _dq_of(graph, q).input[1]
        at = next(i for i, n in enumerate(graph.nodes) if n is add)
        graph.nodes[at:at + 1] = [
            helper.make_node("DequantizeLinear", [f"{base}_w_q", f"{base}_w_s"], [f"{base}_w_dq"], axis=0),
            helper.make_node("DequantizeLinear", [f"{base}_b_q", f"{base}_b_s"], [f"{base}_b_dq"], axis=0),
            helper.make_node("Conv", [add.input[0], f"{base}_w_dq", f"{base}_b_dq"], list(add.output),
                             name=add.name, group=channels, kernel_shape=[1, 1]),
        ]
    _drop_dead(graph)
    out = graph.to_model()
    out.metadata_props.extend(model.metadata_props)
    return out


_INT32_MAX = 2**31 - 1


def _gate_weight_steps(c: float, s_x: float) -> int:
    """The gate's int8 weight (127 unless its int32 bias ``c * weight / s_x`` would
    overflow: a tiny input scale, as in a network whose activations shrink): the weight
    is ``weight * (alpha / weight)`` = alpha either way. Below 1 the gate cannot move
    (x's whole range is far under c) and the bias is clipped."""
    if c == 0.0 or s_x <= 0.0:
        return 127
    return int(np.clip(np.floor(_INT32_MAX * s_x / abs(c)), 1, 127))


def _add_gate(graph: Graph, q: onnx.NodeProto, shapes: dict[str, list[int]]
              ) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, list[int]] | None:
    """(Add, its input's DQ, its constant's DQ, input shape) when ``q`` quantizes Add(x, c)."""
    add = graph.producer.get(q.input[0])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    x_dq, c_dq = graph.producer.get(add.input[0]), graph.producer.get(add.input[1])
    shape = shapes.get(add.input[0])
    if x_dq is None or c_dq is None or shape is None or len(shape) != 4:
        return None
    if x_dq.op_type != "DequantizeLinear" or c_dq.op_type != "DequantizeLinear":
        return None
    if c_dq.input[0] not in graph.inits or x_dq.input[1] not in graph.inits:
        return None
    return add, x_dq, c_dq, shape


def _dq_of(graph: Graph, q: onnx.NodeProto) -> onnx.NodeProto:
    return next(n for n in graph.consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear")


def _relabelled(graph: Graph, q: onnx.NodeProto) -> bool:
    """Whether a DequantizeLinear reads ``q``'s output with a scale other than q's."""
    if q.input[1] not in graph.inits:
        return False
    s_q = float(np.asarray(graph.inits[q.input[1]]).ravel()[0])
    return any(dq.op_type == "DequantizeLinear" and dq.input[1] in graph.inits
               and float(np.asarray(graph.inits[dq.input[1]]).ravel()[0]) != s_q
               for dq in graph.consumers.get(q.output[0], []))
