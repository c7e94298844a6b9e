"""Float rewrites for the data-movement ops (issue 14), run with the other float passes.

A per-channel Add and a BatchNormalization after a ConvTranspose are folded into it (the
generic BatchNormalization fold handles Conv and Gemm only): no float island in DBNet's head.

A ReduceMean over H and W of a 4-D tensor (torch's default exporter writes it for
``x.mean((2, 3))``, ResNet's head) is a GlobalAveragePool (followed by a Flatten when
keepdims=0): the same function, and onnxruntime then runs it as QLinearGlobalAveragePool
whose halfway rounding the converter makes match TFLite's MEAN (``exact_pool_scales``);
onnxruntime runs an int8 ReduceMean in float between DQ and Q.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._ir import Graph


def _spatial_axes(node: onnx.NodeProto, graph: Graph) -> bool:
    shape = graph.shape(node.input[0])
    if shape is None or len(shape) != 4:
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        if not graph.is_const(node.input[1]):
            return False
        axes = [int(a) for a in graph.inits[node.input[1]].ravel()]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def _single_user(graph: Graph, tensor: str) -> onnx.NodeProto | None:
    users = graph.consumers.get(tensor, [])
    return users[0] if len(users) == 1 and tensor not in graph.output_names else None


def _channel_vector(graph: Graph, name: str, channels: int) -> np.ndarray | None:
    """A constant that adds or scales per channel of an NCHW tensor, as a [C] vector."""
    if not graph.is_const(name):
        return None
    c = graph.inits[name]
    if c.size == channels and (c.ndim == 1 or (c.ndim == 4 and c.shape[1] == channels)
                               or (c.ndim == 3 and c.shape[0] == channels)):
        return c.reshape(-1).astype(np.float64)
    return None


def fold_into_conv_transpose(graph: Graph, log: list[str]) -> None:
    """Fold a per-channel constant Add and a BatchNormalization that follow a ConvTranspose
    (Paddle2ONNX writes DBNet's upsampling head as ConvTranspose -> Add(bias) -> BN) into
    its weight (ONNX [I, O, kh, kw], output channels on axis 1) and bias."""
    for node in list(graph.nodes):
        if node.op_type != "ConvTranspose" or not graph.is_const(node.input[1]):
            continue
        if graph.inits[node.input[1]].ndim != 4 or any(
            a.name == "group" and a.i != 1 for a in node.attribute
        ):
            continue
        has_bias = len(node.input) > 2 and node.input[2]
        if has_bias and not graph.is_const(node.input[2]):
            continue
        channels = graph.inits[node.input[1]].shape[1]
        w = graph.inits[node.input[1]].astype(np.float64)
        b = graph.inits[node.input[2]].astype(np.float64) if has_bias else np.zeros(channels)
        changed = False
        while (user := _single_user(graph, node.output[0])) is not None:
            if user.op_type == "Add" and len(user.input) == 2:
                other = user.input[1] if user.input[0] == node.output[0] else user.input[0]
                add = _channel_vector(graph, other, channels)
                if add is None:
                    break
                b = b + add
            elif user.op_type == "BatchNormalization":
                from ._optimize import _bn_scale_shift  # here: _optimize imports this module

                ss = _bn_scale_shift(graph, user)
                if ss is None:
                    break
                w, b = w * ss[0].reshape(1, -1, 1, 1), b * ss[0] + ss[1]
            else:
                break
            node.output[0] = user.output[0]
            graph.remove_node(user)
            graph.reindex()
            log.append(f"folded {user.op_type} {user.name} into ConvTranspose {node.name}")
            changed = True
        if changed:
            graph.inits[node.name + "_w"] = w.astype(np.float32)
            graph.inits[node.name + "_b"] = b.astype(np.float32)
            new_inputs = [node.input[0], node.name + "_w", node.name + "_b"]
            del node.input[:]
            node.input.extend(new_inputs)
    graph.reindex()


def spatial_mean_to_pool(graph: Graph, log: list[str]) -> None:
    """Rewrite ReduceMean(axes=[2, 3]) of a 4-D float tensor as GlobalAveragePool."""
    for node in list(graph.nodes):
        if node.op_type != "ReduceMean" or not _spatial_axes(node, graph):
            continue
        if not graph.is_float(node.input[0]):
            continue
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        at = graph.nodes.index(node)
        if keep:
            new = [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]],
                                    name=node.name)]
        else:
            pooled = node.output[0] + "_pooled"
            n, c = (graph.shape(node.input[0]) or [])[:2]
            graph.value_info[pooled] = helper.make_tensor_value_info(
                pooled, onnx.TensorProto.FLOAT, [n, c, 1, 1]
            )
            new = [
                helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name),
                helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flat",
                                 axis=1),
            ]
        graph.nodes[at : at + 1] = new
        log.append(f"ReduceMean {node.name} over H, W -> GlobalAveragePool")
    graph.reindex()


def _shuffle_groups(graph: Graph, first: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
    """(Transpose, last Reshape, groups) when ``first`` starts a channel shuffle:
    Reshape [N, C, H, W] -> [N, g, C/g, H, W], Transpose(0, 2, 1, 3, 4), Reshape back."""
    src, mid = graph.shape(first.input[0]), graph.shape(first.output[0])
    if src is None or mid is None or len(src) != 4 or len(mid) != 5:
        return None
    if not all(isinstance(d, int) for d in (*src[1:], *mid[1:])):
        return None
    g, c = int(mid[1]), int(src[1])
    if list(mid[3:]) != list(src[2:]) or g * int(mid[2]) != c or g in (1, c):
        return None
    transpose = _single_user(graph, first.output[0])
    if transpose is None or transpose.op_type != "Transpose":
        return None
    if next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None) != [0, 2, 1, 3, 4]:
        return None
    last = _single_user(graph, transpose.output[0])
    if last is None or last.op_type != "Reshape" or graph.shape(last.output[0]) != src:
        return None
    return transpose, last, g


def channel_shuffle_to_gather(graph: Graph, log: list[str]) -> None:
    """ShuffleNet's channel shuffle (Reshape -> Transpose -> Reshape through a 5-D tensor)
    is a fixed permutation of channels: one Gather on axis 1 with constant indices. The
    same values; lowered to TFLite as one GATHER of NHWC channels instead of two layout
    TRANSPOSEs around a 5-D TRANSPOSE."""
    for first in list(graph.nodes):
        if first.op_type != "Reshape" or first not in graph.nodes:
            continue
        found = _shuffle_groups(graph, first)
        if found is None:
            continue
        transpose, last, g = found
        shape = graph.shape(first.input[0])
        assert shape is not None  # _shuffle_groups found it 4-D
        c = int(shape[1])
        per_group = c // g
        indices = first.name + "_shuffle"
        graph.inits[indices] = np.array([(k % g) * per_group + k // g for k in range(c)], np.int64)
        at = graph.nodes.index(first)
        gather = helper.make_node("Gather", [first.input[0], indices], [last.output[0]],
                                  name=first.name, axis=1)
        graph.nodes[at] = gather
        graph.remove_node(transpose)
        graph.remove_node(last)
        graph.reindex()
        log.append(f"channel shuffle {first.name} -> {transpose.name} -> {last.name} -> Gather")


def _zero_spatial_pads(node: onnx.NodeProto, graph: Graph) -> list[int] | None:
    """[top, left, bottom, right] of a Pad that adds only zeros around H and W of a 4-D
    tensor, else None."""
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    shape = graph.shape(node.input[0])
    if mode != b"constant" or shape is None or len(shape) != 4:
        return None
    extra = [i for i in node.input[1:] if i]
    if not all(graph.is_const(i) for i in extra):
        return None
    if len(node.input) > 2 and node.input[2] and graph.inits[node.input[2]].any():
        return None  # a non-zero padding value
    if len(node.input) > 3 and node.input[3]:
        return None  # axes (opset 18): rare; left as a Pad
    pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), None)
    if pads is None and len(node.input) > 1 and node.input[1]:
        pads = [int(p) for p in graph.inits[node.input[1]].ravel()]
    if pads is None or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def fold_pad_into_conv(graph: Graph, log: list[str]) -> None:
    """A zero Pad of H and W whose only reader is a Conv becomes the Conv's own pads (TF
    exporters write explicit Pads): no DQ/Q island in onnxruntime (it has no int8 Pad
    fusion) and no separate PAD in TFLite."""
    for node in list(graph.nodes):
        if node.op_type != "Pad":
            continue
        pads = _zero_spatial_pads(node, graph)
        conv = _single_user(graph, node.output[0]) if pads is not None else None
        if pads is None or conv is None or conv.op_type != "Conv" or conv.input[0] != node.output[0]:
            continue
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        merged = [a + b for a, b in zip(old, pads, strict=True)]
        keep = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*keep, helper.make_attribute("pads", merged)])
        conv.input[0] = node.input[0]
        graph.remove_node(node)
        graph.reindex()
        log.append(f"folded Pad {node.name} into Conv {conv.name}")
