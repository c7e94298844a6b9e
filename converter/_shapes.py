"""Input shapes and shape subgraphs.

Exporters write dynamic dimensions three ways: a name (``dim_param``), ``-1`` (tf2onnx,
Paddle2ONNX) or nothing. :func:`normalize_dims` turns every negative ``dim_value`` into
a name, :func:`fix_input_shapes` pins dimensions the user gave with ``--input-shape``,
and :func:`fold_shapes` replaces ``Shape`` of a tensor whose shape is known by a constant,
so that constant folding turns ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
chains into constant ``Reshape`` shapes (what TFLite and the int8 plan need).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import shape_inference

from edgeship._errors import ConversionError

from ._ir import Graph

MAX_FOLD_ROUNDS = 8  # each round exposes one more level of Shape; real models need 2-3
# float initializers up to this many elements go into shape inference as data (a Resize's
# scales, a constant folded into a shape computation); larger ones are weights, typed only
SHAPE_OPERAND_LIMIT = 64

InputShapes = tuple[tuple[str, tuple[int, ...]], ...]


def format_shape(dims: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in dims)


def normalize_dims(model: onnx.ModelProto) -> None:
    """Give every negative ``dim_value`` (dynamic, as tf2onnx and Paddle2ONNX write it)
    a name, and drop stale ``value_info`` (shape inference writes it again)."""
    del model.graph.value_info[:]
    count = 0
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = f"dynamic_{count}"
                count += 1


def fix_input_shapes(model: onnx.ModelProto, shapes: InputShapes) -> list[str]:
    """Pin the dynamic dims of the inputs named in ``shapes``; returns report lines."""
    inits = {t.name for t in model.graph.initializer}
    by_name = {v.name: v for v in model.graph.input if v.name not in inits}
    notes = []
    for name, dims in shapes:
        value = by_name.get(name)
        if value is None:
            raise ConversionError(
                f"--input-shape {name}=...: the model has no input {name!r} "
                f"(its inputs: {', '.join(by_name) or '(none)'})"
            )
        have = value.type.tensor_type.shape.dim
        if len(have) != len(dims):
            raise ConversionError(
                f"--input-shape {name}={format_shape(dims)}: input {name!r} has rank "
                f"{len(have)}, not {len(dims)} ({_describe(have)})"
            )
        for pos, (dim, want) in enumerate(zip(have, dims, strict=True)):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != want:
                raise ConversionError(
                    f"--input-shape {name}={format_shape(dims)}: dimension {pos} of input "
                    f"{name!r} is fixed at {dim.dim_value} in the model ({_describe(have)})"
                )
        was = _describe(have)
        for dim, want in zip(have, dims, strict=True):
            dim.Clear()
            dim.dim_value = want
        notes.append(f"input {name} shape {was} fixed to {format_shape(dims)} (--input-shape)")
    if notes:
        del model.graph.value_info[:]  # inference writes it again from the fixed inputs
    return notes


def pin_batch_for_shape_reads(model: onnx.ModelProto) -> list[str]:
    """Batch 1 for every dynamic-batch input of a graph that reads shapes at run time
    (``Shape``/``Size``): TFLite runs batch 1 anyway, and only a static batch lets the
    shape subgraphs fold (torch's ``x.view(x.size(0), -1)``)."""
    if not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        return []
    inits = {t.name for t in model.graph.initializer}
    notes = []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in inits or not dims:
            continue
        if not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            was = dims[0].dim_param or "?"
            dims[0].Clear()
            dims[0].dim_value = 1
            notes.append(f"input {value.name} batch {was} fixed to 1 (TFLite; the graph reads "
                         "its shapes at run time)")
    if notes:
        del model.graph.value_info[:]
    return notes


def dynamic_dims(model: onnx.ModelProto) -> list[tuple[str, int, str]]:
    """(input, dimension index, dimension name) of every dynamic non-batch input dim."""
    inits = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        for pos, dim in enumerate(value.type.tensor_type.shape.dim):
            if pos > 0 and not (dim.HasField("dim_value") and dim.dim_value > 0):
                found.append((value.name, pos, dim.dim_param or "?"))
    return found


def _describe(dims: Iterable[onnx.TensorShapeProto.Dimension]) -> str:
    return "x".join(
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
    )


# ---------------------------------------------------------------- shape subgraphs
def fold_shapes(graph: Graph, log: list[str], fold: Callable[[Graph, list[str]], None]) -> None:
    """Shape inference, ``Shape``/``Size`` of known shapes -> constants, constant folding
    (``fold``), again until nothing changes (at most MAX_FOLD_ROUNDS rounds)."""
    for _ in range(MAX_FOLD_ROUNDS):
        if not infer_graph_shapes(graph):
            return
        replaced = _shapes_to_constants(graph, log)
        if not replaced:
            return
        fold(graph, log)
    infer_graph_shapes(graph)


def infer_graph_shapes(graph: Graph) -> bool:
    """Refresh ``graph.value_info`` from onnx shape inference; False when it fails."""
    # float weights larger than any shape operand go in as typed inputs, not data: the
    # inferred shapes are the same, without copying a model's megabytes into and out of
    # onnx's C++ side on every round (fold_shapes runs this up to MAX_FOLD_ROUNDS times)
    weights = {
        name for name, arr in graph.inits.items()
        if arr.size > SHAPE_OPERAND_LIMIT and arr.dtype.kind == "f"
    }
    model = _typed_weights(graph, weights).to_model()
    del model.graph.value_info[:]  # from the inputs and constants only: a wrong declared
    for out in model.graph.output:  # shape (onnxruntime runs such models) folds nothing
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # an op onnx cannot infer: keep what we have, fold no further
        return False
    g = inferred.graph
    graph.value_info = {
        v.name: v for v in [*g.value_info, *g.input, *g.output] if v.name not in weights
    }
    return True


def _typed_weights(graph: Graph, names: set[str]) -> Graph:
    """A view of ``graph`` whose initializers ``names`` are graph inputs of their type and
    shape (nodes and other arrays shared; ``graph`` itself is not changed)."""
    if not names:
        return graph
    typed = [
        onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(graph.inits[n].dtype), graph.inits[n].shape
        )
        for n in graph.inits
        if n in names
    ]
    return dataclasses.replace(
        graph,
        inits={k: v for k, v in graph.inits.items() if k not in names},
        inputs=[*graph.inputs, *typed],
    )


def _shapes_to_constants(graph: Graph, log: list[str]) -> int:
    replaced = 0
    for node in list(graph.nodes):
        if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx"):
            continue
        dims = graph.shape(node.input[0])
        if dims is None:
            continue
        value = _shape_value(node, dims)
        if value is not None:
            graph.inits[node.output[0]] = value
            graph.remove_node(node)
            log.append(f"folded {node.op_type} {node.name} to constant {value.tolist()}")
            replaced += 1
        elif node.op_type == "Shape":
            replaced += _fold_gathers(graph, node, dims, log)
            graph.reindex()
            if not graph.consumers.get(node.output[0]) and node.output[0] not in graph.output_names:
                graph.remove_node(node)  # every reader was folded
    graph.reindex()
    return replaced


def _shape_value(node: onnx.NodeProto, dims: list[int | str]) -> np.ndarray | None:
    if node.op_type == "Size":
        if not all(_known(d) for d in dims):
            return None
        return np.array(int(np.prod([int(d) for d in dims], dtype=np.int64)), np.int64)
    start, end = 0, len(dims)
    for a in node.attribute:  # opset 15: Shape(start, end), negative counts from the end
        if a.name == "start":
            start = a.i
        elif a.name == "end":
            end = a.i
    part = dims[slice(start, end)]
    if not all(_known(d) for d in part):
        return None
    return np.array(part, np.int64)


def _fold_gathers(graph: Graph, shape: onnx.NodeProto, dims: list[int | str], log: list[str]) -> int:
    """A partly dynamic shape (e.g. batch ``N``): fold the ``Gather``s that read only
    known dimensions (torch's ``x.size(1)``)."""
    if any(a.name in ("start", "end") for a in shape.attribute):
        return 0
    folded = 0
    for user in list(graph.consumers.get(shape.output[0], [])):
        if user.op_type != "Gather" or user.input[0] != shape.output[0]:
            continue
        if len(user.input) < 2 or not graph.is_const(user.input[1]):
            continue
        idx = np.asarray(graph.inits[user.input[1]]).astype(np.int64)
        if np.any(idx < -len(dims)) or np.any(idx >= len(dims)):
            continue
        picked = [dims[int(i)] for i in idx.reshape(-1)]
        if not all(_known(d) for d in picked):
            continue
        graph.inits[user.output[0]] = np.array(picked, np.int64).reshape(idx.shape)
        graph.remove_node(user)
        log.append(f"folded Gather {user.name} of Shape {shape.name} to constant {picked}")
        folded += 1
    return folded


def _known(dim: int | str) -> bool:
    return isinstance(dim, int) and dim > 0
