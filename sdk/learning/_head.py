"""The float head of a model: the last Gemm, which devices fine-tune and the fleet averages.

A head is found in the float ONNX model the converter started from; its input tensor keeps
its name in the INT8 QDQ model (the converter quantizes after it), so a device computes the
head's features from the model it already runs, and only the head's weights travel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgeship._errors import EdgeshipError

if TYPE_CHECKING:
    import numpy as np
    import onnx

_ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}


class HeadError(EdgeshipError):
    """The model has no head that federated fine-tuning can train."""


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """Where the head is and what it computes; shipped with a learning run."""

    output: str  # the Gemm's output tensor (names the node even when it has no name)
    features: str  # the tensor feeding the head: what a device computes and keeps
    weight: str  # initializer names
    bias: str
    trans_b: bool  # Gemm stores W as (classes, features) when set
    n_features: int
    n_classes: int
    activation: str  # "softmax", "sigmoid" or "none": how logits become answers

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HeadSpec:
        data: dict[str, Any] = json.loads(text)
        return cls(output=str(data["output"]), features=str(data["features"]),
                   weight=str(data["weight"]), bias=str(data["bias"]),
                   trans_b=bool(data["trans_b"]), n_features=int(data["n_features"]),
                   n_classes=int(data["n_classes"]), activation=str(data["activation"]))


def find_head(model: onnx.ModelProto) -> HeadSpec:
    """The last Gemm with constant weight and bias whose output reaches a graph output
    through at most one activation (Softmax / Sigmoid)."""
    from onnx import helper, numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    consumers = {name: n for n in model.graph.node for name in n.input}
    for node in reversed(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 3:
            continue
        if node.input[1] not in consts or node.input[2] not in consts:
            continue
        activation = _head_activation(node.output[0], outputs, consumers)
        if activation is None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise HeadError(f"head {node.output[0]!r}: a Gemm with transA/alpha/beta is not trained")
        trans_b = bool(attrs.get("transB", 0))
        weight = consts[node.input[1]]
        classes, features = weight.shape if trans_b else weight.shape[::-1]
        return HeadSpec(output=node.output[0], features=node.input[0], weight=node.input[1],
                        bias=node.input[2], trans_b=trans_b, n_features=int(features),
                        n_classes=int(classes), activation=activation)
    raise HeadError("no head to train: the model must end in a Gemm with constant weights "
                    "(optionally followed by Softmax or Sigmoid)")


def _head_activation(tensor: str, outputs: set[str], consumers: dict[str, Any]) -> str | None:
    if tensor in outputs:
        return "none"
    nxt = consumers.get(tensor)
    if nxt is not None and nxt.op_type in _ACTIVATIONS and nxt.output[0] in outputs:
        return _ACTIVATIONS[nxt.op_type]
    return None


def read_head(model: onnx.ModelProto, spec: HeadSpec) -> tuple[np.ndarray, np.ndarray]:
    """The head's weights as ``W (classes, features)`` and ``b (classes,)``, float32."""
    import numpy as np
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(consts[spec.weight]).astype(np.float32)
    bias = numpy_helper.to_array(consts[spec.bias]).astype(np.float32).reshape(-1)
    return (weight if spec.trans_b else weight.T).copy(), bias.copy()


def write_head(model: onnx.ModelProto, spec: HeadSpec, weight: np.ndarray,
               bias: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with the head's initializers replaced; nothing else changes, so
    ``convert --base`` keeps every other layer's bytes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if weight.shape != (spec.n_classes, spec.n_features) or bias.shape != (spec.n_classes,):
        raise HeadError(f"head weights of shape {weight.shape}/{bias.shape} do not fit "
                        f"({spec.n_classes}, {spec.n_features})")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stored = weight if spec.trans_b else weight.T
    for i, tensor in enumerate(out.graph.initializer):
        if tensor.name == spec.weight:
            new = numpy_helper.from_array(np.ascontiguousarray(stored, np.float32), spec.weight)
        elif tensor.name == spec.bias:
            new = numpy_helper.from_array(bias.astype(np.float32).reshape(list(tensor.dims)), spec.bias)
        else:
            continue
        out.graph.initializer[i].CopyFrom(new)
    return out
