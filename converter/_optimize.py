"""Float graph passes run before calibration: constants to initializers, Identity/Dropout
removal, constant folding, BatchNormalization folded into Conv/Gemm, MatMul+Add to Gemm,
Gemm alpha/beta folded into its weights. Every pass keeps the graph's function exactly
(up to float rounding), so the optimized float graph is the fp32 reference."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._fuse import fold_into, fuse
from ._ir import Graph
from ._optimize_move import (
    channel_shuffle_to_gather,
    fold_into_conv_transpose,
    fold_pad_into_conv,
    spatial_mean_to_pool,
)
from ._shapes import fold_shapes

# ops that must not be constant-folded (random, or too large to be worth it)
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def optimize(graph: Graph) -> list[str]:
    """Run every pass in place; returns a log line per change for the report."""
    log: list[str] = []
    _unique_names(graph, log)
    _constants_to_inits(graph, log)
    _drop_identity(graph, log)
    _fold_constants(graph, log)
    fold_shapes(graph, log, _fold_constants)
    _fold_batchnorm(graph, log)
    fuse(graph, log)  # HardSwish, LayerNorm, Gelu patterns; Div by constants
    _matmul_add_to_gemm(graph, log)
    _normalize_gemm(graph, log)
    fold_into_conv_transpose(graph, log)
    spatial_mean_to_pool(graph, log)
    channel_shuffle_to_gather(graph, log)
    fold_pad_into_conv(graph, log)
    graph.prune_unused()
    return log


def _unique_names(graph: Graph, log: list[str]) -> None:
    """Names key the quantization plan and the report: name unnamed nodes, rename repeats."""
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        if node.name and name != node.name:
            log.append(f"renamed duplicate node name {node.name} -> {name}")
        node.name = name
        seen.add(name)


def _constants_to_inits(graph: Graph, log: list[str]) -> None:
    for node in list(graph.nodes):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        value = _constant_value(node)
        if value is None:
            continue
        graph.inits[node.output[0]] = value
        graph.remove_node(node)
        log.append(f"constant {node.output[0]} -> initializer")
    graph.reindex()


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant in any of its forms (value, value_float(s), value_int(s))."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    dtypes = {"value_float": np.float32, "value_floats": np.float32,
              "value_int": np.int64, "value_ints": np.int64}
    if a.name not in dtypes:  # sparse_value, strings: leave the node to the runtime
        return None
    return np.asarray(helper.get_attribute_value(a), dtypes[a.name])


def _drop_identity(graph: Graph, log: list[str]) -> None:
    outputs = set(graph.output_names)
    for node in list(graph.nodes):
        if node.op_type not in ("Identity", "Dropout"):
            continue
        if node.op_type == "Dropout" and len([o for o in node.output if o]) > 1:
            continue
        if node.output[0] in outputs:
            if not _rename_producer_output(graph, node, outputs):
                continue
        else:
            graph.rename_input(node.output[0], node.input[0])
        graph.remove_node(node)
        log.append(f"removed {node.op_type} {node.name}")
    graph.reindex()


def _rename_producer_output(graph: Graph, node: onnx.NodeProto, outputs: set[str]) -> bool:
    """An Identity that names a graph output (tf2onnx, Paddle2ONNX write them): its
    producer writes the output name directly, when nothing else reads the old name."""
    src = node.input[0]
    prod = graph.producer.get(src)
    if prod is None or src in outputs or len(graph.consumers.get(src, [])) != 1:
        return False
    prod.output[list(prod.output).index(src)] = node.output[0]
    graph.producer[node.output[0]] = prod
    return True


def _fold_constants(graph: Graph, log: list[str]) -> None:
    """Evaluate nodes whose inputs are all constant with onnxruntime, one node at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: a node ORT refuses stays as it is, silently
    for node in list(graph.nodes):
        ins = [i for i in node.input if i]
        if node.op_type in _NO_FOLD or node.domain not in ("", "ai.onnx") or not ins:
            continue
        if not all(graph.is_const(i) for i in ins):
            continue
        feeds = {i: graph.inits[i] for i in ins}
        g = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for i, a in feeds.items()
            ],
            # outputs without a type: onnxruntime refuses elem_type 0 (UNDEFINED)
            [onnx.ValueInfoProto(name=o) for o in node.output if o],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset)])
        m.ir_version = graph.ir_version
        try:
            sess = ort.InferenceSession(
                m.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
            values = sess.run(None, feeds)
        except Exception:  # leave the node as it is; the runtime will evaluate it
            continue
        for name, value in zip([o for o in node.output if o], values, strict=True):
            graph.inits[name] = np.asarray(value)
        graph.remove_node(node)
        log.append(f"folded constant {node.op_type} {node.name}")
    graph.reindex()


def _bn_scale_shift(graph: Graph, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    if len(bn.input) < 5 or not all(graph.is_const(i) for i in bn.input[1:5]):
        return None
    if any(o for o in bn.output[1:]):
        return None  # training-mode outputs
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (graph.inits[i].astype(np.float64) for i in bn.input[1:5])
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _fold_batchnorm(graph: Graph, log: list[str]) -> None:
    outputs = set(graph.output_names)
    for bn in list(graph.nodes):
        if bn.op_type != "BatchNormalization":
            continue
        prod = graph.producer.get(bn.input[0])
        if prod is None or prod.op_type not in ("Conv", "Gemm") or prod.output[0] in outputs:
            continue
        if len(graph.consumers.get(prod.output[0], [])) != 1 or not graph.is_const(prod.input[1]):
            continue
        ss = _bn_scale_shift(graph, bn)
        if ss is None or (prod.op_type == "Gemm" and _attr(prod, "transA", 0)):
            continue
        scale, shift = ss
        w = graph.inits[prod.input[1]].astype(np.float64)
        cout = len(scale)
        if prod.op_type == "Conv":
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        elif _attr(prod, "transB", 0):
            w = w * scale[:, None]
        else:
            w = w * scale[None, :]
        has_b = len(prod.input) > 2 and prod.input[2]
        if has_b and not graph.is_const(prod.input[2]):
            continue
        b = graph.inits[prod.input[2]] if has_b else np.zeros(cout)
        bias = np.broadcast_to(np.asarray(b, np.float64).reshape(-1), (cout,)) * scale + shift
        # reuse the names when nothing else reads them (short names keep the file small)
        wname = prod.input[1] if len(graph.consumers[prod.input[1]]) == 1 else prod.input[1] + "_bn"
        bname = (
            prod.input[2]
            if has_b and len(graph.consumers[prod.input[2]]) == 1
            else prod.name + "_bias"
        )
        graph.inits[wname] = w.astype(np.float32)
        graph.inits[bname] = bias.astype(np.float32)
        fold_into(graph, prod, [prod.input[0], wname, bname], bn)
        log.append(f"folded BatchNormalization {bn.name} into {prod.op_type} {prod.name}")


def _matmul_add_to_gemm(graph: Graph, log: list[str]) -> None:
    outputs = set(graph.output_names)
    for mm in list(graph.nodes):
        if mm.op_type != "MatMul" or not graph.is_const(mm.input[1]) or mm.output[0] in outputs:
            continue
        a_shape, w = graph.shape(mm.input[0]), graph.inits[mm.input[1]]
        users = graph.consumers.get(mm.output[0], [])
        if a_shape is None or len(a_shape) != 2 or w.ndim != 2 or len(users) != 1:
            continue
        add = users[0]
        if add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        if not graph.is_const(other) or graph.inits[other].size != w.shape[1]:
            continue
        bname = (mm.name or mm.output[0]) + "_bias"
        graph.inits[bname] = graph.inits[other].reshape(-1).astype(np.float32)
        gemm = helper.make_node(
            "Gemm", [mm.input[0], mm.input[1], bname], [add.output[0]], name=mm.name or mm.output[0]
        )
        graph.nodes[graph.nodes.index(mm)] = gemm
        graph.remove_node(add)
        graph.reindex()
        log.append(f"MatMul {mm.name} + Add {add.name} -> Gemm")


def _normalize_gemm(graph: Graph, log: list[str]) -> None:
    """Fold alpha and beta into the constant weight and bias so that both are 1."""
    for node in graph.nodes:
        if node.op_type != "Gemm" or not graph.is_const(node.input[1]):
            continue
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        if alpha == 1.0 and beta == 1.0:
            continue
        has_bias = len(node.input) > 2 and node.input[2] and graph.is_const(node.input[2])
        if beta != 1.0 and not has_bias:
            continue
        wname = node.input[1] + "_alpha"
        graph.inits[wname] = (graph.inits[node.input[1]] * alpha).astype(np.float32)
        node.input[1] = wname
        if has_bias:
            bname = node.input[2] + "_beta"
            graph.inits[bname] = (graph.inits[node.input[2]] * beta).astype(np.float32)
            node.input[2] = bname
        keep = [a for a in node.attribute if a.name not in ("alpha", "beta")]
        del node.attribute[:]
        node.attribute.extend(keep)
        log.append(f"folded alpha/beta of Gemm {node.name}")
    graph.reindex()


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(helper.get_attribute_value(a))
    return default
