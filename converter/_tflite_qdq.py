"""Read a QDQ INT8 ONNX model into what the TFLite writer needs, without running it.

The converter's ``model.int8.onnx`` marks every quantized activation with a
QuantizeLinear -> DequantizeLinear pair and every weight / bias with an integer
initializer feeding a DequantizeLinear. This module collapses those pairs: it answers
"which quantization parameters does float tensor F carry", "which integer constant
stands behind DQ output D", and "which compute nodes remain", with static shapes
(a symbolic batch dimension is fixed to 1; TFLite and the Edge TPU want static shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgeship._errors import ConversionError, UnsupportedOpError

from ._ort_layout import gates_as_conv

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MAX_NODES = 100_000  # a bound on what we walk; edge models are far smaller


@dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantization."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class QConst:
    """An integer initializer behind a DequantizeLinear (weights, bias, constants)."""

    values: np.ndarray  # int8 or int32, ONNX layout
    scales: np.ndarray  # float32, shape (1,) or (n,) along ``axis``
    zero_points: np.ndarray  # int64, same shape as scales
    axis: int

    @property
    def per_tensor(self) -> bool:
        return self.scales.size == 1

    def dequantized(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        if not self.per_tensor:
            shape[self.axis] = -1
        zp = self.zero_points.reshape(shape) if not self.per_tensor else self.zero_points[0]
        sc = self.scales.reshape(shape) if not self.per_tensor else self.scales[0]
        real: np.ndarray = (self.values.astype(np.float64) - zp) * sc
        return real.astype(np.float32)


@dataclass
class QdqGraph:
    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]  # compute nodes (no Q/DQ), topological order
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]
    initializers: dict[str, np.ndarray]
    qconsts: dict[str, QConst]  # DQ output name -> integer constant
    alias: dict[str, str]  # DQ output name -> the float tensor its Q pair quantized
    qparams: dict[str, QParams]  # float tensor -> params of its (first) QuantizeLinear
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)

    def source(self, name: str) -> str:
        """The float tensor a DQ output stands for (itself when not a DQ output)."""
        return self.alias.get(name, name)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(self.source(name)) or self.shapes.get(name)
        if shape is None:
            raise ConversionError(f"no static shape known for tensor {name!r}")
        return shape


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or its first output when the exporter left it unnamed."""
    return node.name or f"(unnamed, output {node.output[0] if node.output else '?'})"


def read_qdq(model: onnx.ModelProto) -> QdqGraph:
    """Collapse the Q/DQ pairs of ``model``; raises ConversionError on a malformed graph."""
    if len(model.graph.node) > MAX_NODES:
        raise ConversionError(f"model has {len(model.graph.node)} nodes, over {MAX_NODES}")
    model = _with_static_batch(model)
    try:  # a gate the onnxruntime pass wrote as Add (converter/_ort_layout.py), as its Conv
        model = gates_as_conv(model)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folded: set[str] = set()  # outputs of constant Mul nodes folded into inits
    for node in graph.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Mul" and all(i in inits for i in node.input):
            # a per-channel bias scale = weight scales x input scale (converter/_quantize.py)
            a, b = (np.asarray(inits[i], np.float32) for i in node.input)
            inits[node.output[0]] = (a * b).astype(np.float32)
            folded.add(node.output[0])
    q_nodes = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    qparams: dict[str, QParams] = {}
    for node in q_nodes.values():
        qparams.setdefault(node.input[0], _qparams(node, inits))
    qconsts: dict[str, QConst] = {}
    # a Q output and its DQ outputs all stand for the float tensor the Q quantized
    alias = {q_out: node.input[0] for q_out, node in q_nodes.items()}
    graph_inputs = {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        src = node.input[0]
        if src in inits:
            qconsts[node.output[0]] = _qconst(node, inits)
        elif src in q_nodes:
            alias[node.output[0]] = q_nodes[src].input[0]
        elif src in graph_inputs:  # an int8 model input (converted with io="int8")
            alias[node.output[0]] = src
            qparams.setdefault(src, _qparams(node, inits))
        else:
            raise UnsupportedOpError(
                "DequantizeLinear", node_label(node), "input is neither a constant, a graph input nor a QuantizeLinear output"
            )
    skip = set(QDQ_OPS) | {"Constant"}
    nodes = [n for n in graph.node if n.op_type not in skip and n.output[0] not in folded]
    result = QdqGraph(
        model=model,
        nodes=nodes,
        inputs=[i.name for i in graph.input if i.name not in inits],
        outputs=[o.name for o in graph.output],
        shapes=_shapes(model),
        initializers=inits,
        qconsts=qconsts,
        alias=alias,
        qparams=qparams,
    )
    for node in nodes:
        for name in node.input:
            result.consumers.setdefault(result.source(name), []).append(node)
    return result


def _qparams(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> QParams:
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        raise UnsupportedOpError(node.op_type, node_label(node), "scale and zero point must be constants")
    scale = np.asarray(inits[node.input[1]], dtype=np.float32).ravel()
    zero = inits[node.input[2]]
    if zero.dtype == np.uint8:  # the converter stores int8 zero points + 128 (same reals)
        zero = (np.asarray(zero).astype(np.int16) - 128).astype(np.int8)
    if zero.dtype != np.int8:
        raise UnsupportedOpError(
            node.op_type, node_label(node),
            f"activations are {zero.dtype}; the TFLite INT8 spec needs int8 activations",
        )
    if scale.size != 1:
        raise UnsupportedOpError(node.op_type, node_label(node), "activations must be per-tensor")
    return QParams(scale=float(scale[0]), zero_point=int(np.asarray(zero).ravel()[0]))


def _qconst(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> QConst:
    values = inits[node.input[0]]
    shift = 128 if values.dtype == np.uint8 else 0  # stored as int8 + 128 (converter)
    if shift:
        values = (values.astype(np.int16) - shift).astype(np.int8)
    if values.dtype not in (np.int8, np.int32):
        raise UnsupportedOpError(
            "DequantizeLinear", node_label(node), f"constant {node.input[0]!r} is {values.dtype}, not int8/int32"
        )
    scales = np.asarray(inits[node.input[1]], dtype=np.float32).ravel()
    if len(node.input) > 2 and node.input[2]:
        zeros = np.asarray(inits[node.input[2]]).astype(np.int64).ravel() - shift
    else:
        zeros = np.zeros_like(scales, dtype=np.int64)
    axis = 1
    for attr in node.attribute:
        if attr.name == "axis":
            axis = int(attr.i)
    if values.ndim:
        axis %= values.ndim
    return QConst(values=values, scales=scales, zero_points=zeros, axis=axis)


def _with_static_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose symbolic leading input dims are 1; other symbolic dims are an error."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        for pos, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if pos != 0:
                dims = value.type.tensor_type.shape.dim
                shape = "x".join(
                    "1" if i == 0 else str(d.dim_value) if d.dim_value > 0 else "?"
                    for i, d in enumerate(dims)
                )
                raise ConversionError(
                    f"input {value.name!r} has dynamic dimension {pos} "
                    f"({dim.dim_param or '?'!r}); TFLite needs static shapes: "
                    f"fix it with --input-shape {value.name}={shape}"
                )
            dim.Clear()
            dim.dim_value = 1
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and friends
        raise ConversionError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes
