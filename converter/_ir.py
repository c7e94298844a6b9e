"""A small mutable view of an ONNX graph that the converter's passes edit.

Nodes stay ``onnx.NodeProto``; initializers are numpy arrays keyed by name; value types
come from shape inference. ``to_model`` writes a new ModelProto in node order, so the
same passes on the same input give byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class Graph:
    """Nodes in topological order, initializers as arrays, plus the model's envelope."""

    nodes: list[onnx.NodeProto]
    inits: dict[str, np.ndarray]
    inputs: list[onnx.ValueInfoProto]
    outputs: list[onnx.ValueInfoProto]
    value_info: dict[str, onnx.ValueInfoProto]
    opset: int
    ir_version: int
    name: str = "graph"
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    # custom-domain opsets the model imports (com.microsoft ...): kept for nodes that use them
    domains: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> Graph:
        g = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        vi = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
        init_names = {t.name for t in g.initializer}
        graph = cls(
            nodes=list(g.node),
            inits={t.name: numpy_helper.to_array(t) for t in g.initializer},
            inputs=[i for i in g.input if i.name not in init_names],
            outputs=list(g.output),
            value_info=vi,
            opset=opset,
            ir_version=model.ir_version,
            name=g.name or "graph",
            domains={o.domain: o.version for o in model.opset_import
                     if o.domain not in ("", "ai.onnx")},
        )
        graph.reindex()
        return graph

    def reindex(self) -> None:
        self.producer = {}
        self.consumers = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)

    # ---- queries
    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def shape(self, name: str) -> list[int | str] | None:
        if name in self.inits:
            return list(self.inits[name].shape)
        vi = self.value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return None
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
        ]

    def elem_type(self, name: str) -> int:
        if name in self.inits:
            return int(helper.np_dtype_to_tensor_dtype(self.inits[name].dtype))
        vi = self.value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return 0
        return int(vi.type.tensor_type.elem_type)

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) == onnx.TensorProto.FLOAT

    def activations(self) -> list[str]:
        """Float tensors computed at run time, in a deterministic (topological) order."""
        names = [n for n in self.input_names if self.is_float(n)]
        for node in self.nodes:
            names.extend(o for o in node.output if o and self.is_float(o))
        return names

    # ---- edits
    def remove_node(self, node: onnx.NodeProto) -> None:
        self.nodes = [n for n in self.nodes if n is not node]

    def rename_input(self, old: str, new: str) -> None:
        """Point every consumer of ``old`` at ``new``."""
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def prune_unused(self) -> None:
        """Drop initializers no node reads any more."""
        self.reindex()
        used = set(self.consumers) | set(self.output_names)
        self.inits = {k: v for k, v in self.inits.items() if k in used}

    def to_model(self, *, extra_outputs: list[str] | None = None) -> onnx.ModelProto:
        outputs = list(self.outputs)
        for name in extra_outputs or []:
            outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.inputs,
            outputs,
            [numpy_helper.from_array(arr, name) for name, arr in self.inits.items()],
        )
        keep = {o.name for o in outputs} | {i.name for i in self.inputs}
        live = {o for n in self.nodes for o in n.output}
        graph.value_info.extend(
            v for k, v in self.value_info.items() if k in live and k not in keep
        )
        used = sorted({n.domain for n in self.nodes} - {"", "ai.onnx"})
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)]
            + [helper.make_opsetid(d, self.domains.get(d, 1)) for d in used],
            producer_name="edgeship",
        )
        model.ir_version = self.ir_version
        return model
