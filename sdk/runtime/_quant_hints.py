"""What a runtime needs to know about a quantized ONNX model's edges, carried in the model
itself so that a device need not parse the graph.

Two things are read from the Q/DQ nodes at a model's edges: the scale and zero point of
each int8/uint8 input or output (a model converted with ``io="int8"``: the caller hands
and gets float32), and the step of each float output made by a per-tensor
DequantizeLinear (its values are multiples of it: the confidence fallback reads an INT8
softmax by it). Reading them needs the ``onnx`` package and a second parse of the model
(~180 ms and ~15 MB on a device). The converter therefore writes them into the model's
``metadata_props`` (:data:`METADATA_KEY`), which onnxruntime hands out with the session;
a model without that entry (an older or foreign one) is parsed as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

METADATA_KEY = "edgeship.edge_quant"
_INT_TYPES = {2: "uint8", 3: "int8"}  # onnx.TensorProto.UINT8 / INT8


@dataclass(frozen=True)
class EdgeParams:
    """An int8/uint8 model edge: its storage type, scale and zero point."""

    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class QuantHints:
    """The edge parameters and dequantized-output steps of one model."""

    edges: dict[str, EdgeParams] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "edges": {n: [e.dtype, e.scale, e.zero_point] for n, e in sorted(self.edges.items())},
            "steps": dict(sorted(self.steps.items())),
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> QuantHints:
        """Parse :meth:`to_json`'s text; ValueError when it is not that."""
        try:
            doc = json.loads(text)
            edges = {str(n): EdgeParams(_int_type(d), float(s), int(z))
                     for n, (d, s, z) in doc["edges"].items()}
            steps = {str(n): float(s) for n, s in doc["steps"].items()}
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed {METADATA_KEY} entry") from exc
        return cls(edges=edges, steps=steps)

    @classmethod
    def from_graph(cls, graph: Any) -> QuantHints:
        """Read an ``onnx.GraphProto``'s edge Q/DQ nodes (per-tensor parameters only)."""
        from onnx import numpy_helper

        scalars = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                   if math.prod(i.dims) == 1}
        int_inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type in _INT_TYPES}
        outputs = {v.name: v.type.tensor_type.elem_type for v in graph.output}
        edges: dict[str, EdgeParams] = {}
        steps: dict[str, float] = {}
        for node in graph.node:
            params = [scalars.get(n) for n in node.input[1:3]]
            if len(params) != 2 or params[0] is None or params[1] is None:
                continue
            scale, zero = float(params[0].ravel()[0]), params[1]
            edge = EdgeParams(str(zero.dtype), scale, int(zero.ravel()[0]))
            if node.op_type == "DequantizeLinear" and node.input[0] in int_inputs:
                edges.setdefault(node.input[0], edge)
            elif node.op_type == "QuantizeLinear" and outputs.get(node.output[0]) in _INT_TYPES:
                edges.setdefault(node.output[0], edge)
            elif node.op_type == "DequantizeLinear" and node.output[0] in outputs:
                steps[node.output[0]] = scale
        return cls(edges=edges, steps=steps)


def hints_from_metadata(metadata: dict[str, str]) -> QuantHints | None:
    """The hints a converted model carries, None when it carries none (or unreadable ones)."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        return QuantHints.from_json(text)
    except ValueError:
        return None


def hints_from_model_bytes(data: bytes) -> QuantHints:
    """Parse the model for its hints; empty without the ``onnx`` package, for a model that
    has no Q/DQ node at all (not even parsed) or one that ``onnx`` cannot read."""
    if b"QuantizeLinear" not in data:  # also the tail of every DequantizeLinear
        return QuantHints()
    try:
        import onnx
    except ImportError:
        return QuantHints()
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # onnxruntime loaded it; this is only a hint
        return QuantHints()
    hints = hints_from_metadata({p.key: p.value for p in model.metadata_props})
    return hints if hints is not None else QuantHints.from_graph(model.graph)


def _int_type(name: Any) -> str:
    if name not in _INT_TYPES.values():
        raise TypeError(f"edge type {name!r}")
    return str(name)

