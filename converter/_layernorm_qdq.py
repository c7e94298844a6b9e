"""The written INT8 ONNX computes each quantized LayerNormalization the way the TFLite file
does: the nine steps of the int8 lowering (converter/_tflite_ops_math.py ``layer_norm``),
each rounded to the int8 parameters calibrated for it (converter/_layernorm.py)::

    mean = ReduceMean(x)                  -> Q/DQ      centered = Sub(x, mean)      -> Q/DQ
    squared = Mul(centered, centered)     -> Q/DQ      variance = ReduceMean(squared) -> Q/DQ
    variance_eps = Add(variance, eps)     -> Q/DQ      rstd = Reciprocal(Sqrt(.))   -> Q/DQ
    normalized = Mul(centered, rstd)      -> Q/DQ      scaled = Mul(normalized, gamma) -> Q/DQ
    y = Add(scaled, beta)                 -> the node's own Q

with gamma, beta and eps as the same int8 constants the TFLite file holds (per tensor,
symmetric). Without this, onnxruntime ran DQ -> LayerNormalization -> Q in float while
LiteRT rounded eight intermediates: PP-OCRv4's recognizer read one line in 32 differently.

Applied to the file only (like converter/_ort_layout.py): the TFLite writer reads the
model before it, where LayerNormalization is one node. The intermediates are named
``<output>/<step>`` as in the TFLite file, so hw-bench/litert_vs_onnx_layers.py compares
them one by one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import _layernorm
from ._layernorm_ties import int8_vector

SEP = "|"  # <LayerNormalization node name>|<step>: the chain's node names


def decompose_layernorms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every quantized LayerNormalization that has calibrated intermediates
    written as the int8 chain above, and how many were."""
    params = _layernorm.read(model)
    if not params:
        return model, 0
    out = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes: list[onnx.NodeProto] = []
    done = 0
    for node in out.graph.node:
        if node.op_type != "LayerNormalization" or node.name not in params or not _last_axis(node, out):
            nodes.append(node)
            continue
        chain = _Chain(node, params[node.name], inits, opset)
        nodes.extend(chain.nodes)
        out.graph.initializer.extend(chain.inits)
        done += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, done


def _last_axis(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    return axis == -1 or _rank(model, node.input[0]) == axis + 1


def _rank(model: onnx.ModelProto, name: str) -> int:
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return -1  # unknown: not decomposed unless axis is -1


class _Chain:
    """The nodes and constants of one decomposed LayerNormalization."""

    def __init__(self, node: onnx.NodeProto, params: dict[str, list[float]],
                 inits: dict[str, np.ndarray], opset: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.params, self.opset = params, opset
        x, y = node.input[0], node.output[0]
        self.base, self.node_name = y, node.name
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        width_of = {1: 1.0, 2: 0.0}
        consts = {}
        for index, default in width_of.items():
            name = node.input[index] if len(node.input) > index else ""
            values = inits[name].astype(np.float32).reshape(-1) if name else np.array([default], np.float32)
            consts[index] = self._const_vector(("gamma", "beta")[index - 1], values)
        mean = self._qdq("mean", self._reduce_mean(x, "mean"))
        centered = self._qdq("centered", self._op("Sub", [x, mean], "centered"))
        squared = self._qdq("squared", self._op("Mul", [centered, centered], "squared"))
        variance = self._qdq("variance", self._reduce_mean(squared, "variance"))
        eps_c = self._const_vector("eps", np.array([eps], np.float32))
        variance_eps = self._qdq("variance_eps", self._op("Add", [variance, eps_c], "variance_eps"))
        rstd = self._qdq("rstd", self._op("Reciprocal", [self._op("Sqrt", [variance_eps], "std")], "rstd"))
        normalized = self._qdq("normalized", self._op("Mul", [centered, rstd], "normalized"))
        scaled = self._qdq("scaled", self._op("Mul", [normalized, consts[1]], "scaled"))
        self.nodes.append(helper.make_node("Add", [scaled, consts[2]], [y], name=self._node("add_beta")))

    def _name(self, step: str) -> str:
        return f"{self.base}/{step}"

    def _node(self, step: str) -> str:
        return f"{self.node_name}{SEP}{step}"

    def _op(self, op: str, inputs: list[str], step: str) -> str:
        out = self._name(step)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._node(f"{step}/{op}")))
        return out

    def _reduce_mean(self, x: str, step: str) -> str:
        out = self._name(step)
        if self.opset >= 18:
            axes = self._init(f"{out}/axes", np.array([-1], np.int64))
            self.nodes.append(helper.make_node("ReduceMean", [x, axes], [out], name=self._node(f"{step}/mean"),
                                               keepdims=1))
        else:
            self.nodes.append(helper.make_node("ReduceMean", [x], [out], name=self._node(f"{step}/mean"),
                                               axes=[-1], keepdims=1))
        return out

    def _qdq(self, step: str, t: str) -> str:
        """Q -> DQ of ``t`` with the step's calibrated parameters (stored as uint8 =
        int8 + 128, like the converter's other activations)."""
        scale, zero = self.params[step]
        s = self._init(f"{t}_s", np.array(scale, np.float32))
        z = self._init(f"{t}_z", np.array(int(zero) + 128, np.uint8))
        self.nodes.append(helper.make_node("QuantizeLinear", [t, s, z], [f"{t}_q"], name=self._node(f"{step}/Q")))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", s, z], [f"{t}_dq"],
                                           name=self._node(f"{step}/DQ")))
        return f"{t}_dq"

    def _const_vector(self, what: str, values: np.ndarray) -> str:
        """``values`` as the TFLite writer stores them (:func:`int8_vector`, as
        ``_const_vector`` in converter/_tflite_ops_math.py)."""
        q, scale = int8_vector(values)
        base = self._name(what)
        qn = self._init(f"{base}_q", q)
        s = self._init(f"{base}_s", np.array(scale, np.float32))
        z = self._init(f"{base}_z", np.array(0, np.int8))
        self.nodes.append(helper.make_node("DequantizeLinear", [qn, s, z], [f"{base}_dq"],
                                           name=self._node(f"{what}/const")))
        return f"{base}_dq"

    def _init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name


def recompose_layernorms(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse, for the TFLite writer when it is given the written file: each chain
    back to one LayerNormalization (gamma and beta as their int8 constants, epsilon as
    the int8 eps constant holds it), lowered as before. ``model`` when it has none."""
    params = _layernorm.read(model)
    chains: dict[str, dict[str, onnx.NodeProto]] = {}
    for node in model.graph.node:
        head, sep, step = node.name.partition(SEP)
        if sep and head in params:
            chains.setdefault(head, {})[step] = node
    if not chains:
        return model
    out: onnx.ModelProto = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        head, sep, step = node.name.partition(SEP)
        if not (sep and head in chains):
            nodes.append(node)
        elif step == "add_beta":
            chain = chains[head]
            eps_dq = chain["eps/const"]
            eps = float(inits[eps_dq.input[0]].astype(np.float64).reshape(-1)[0] * inits[eps_dq.input[1]])
            nodes.append(helper.make_node(
                "LayerNormalization", [chain["mean/mean"].input[0], chain["gamma/const"].output[0],
                                       chain["beta/const"].output[0]], [node.output[0]],
                name=head, axis=-1, epsilon=eps))
        elif step in ("gamma/const", "beta/const"):
            nodes.append(node)  # the int8 constants the LayerNormalization reads
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
