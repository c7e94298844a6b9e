"""The demo's model: a small MLP trained on scikit-learn's bundled digits data set.

Version 1 is trained for a few epochs; version 2 is the same network trained further
("retrained on more data"), so every weight moves a little — the case a delta update is
for. The network is exported with ``onnx.helper`` (no torch, no skl2onnx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship._errors import ConfigError

__all__ = ["DemoData", "export_mlp", "load_digits_data", "train_versions"]

INPUT_NAME = "pixels"
OUTPUT_NAME = "probs"


@dataclass(frozen=True, kw_only=True)
class DemoData:
    """Digits scaled to [0, 1], split into train and test."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


def load_digits_data() -> DemoData:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ConfigError(
            "the demo trains on scikit-learn's digits: pip install 'edgeship[demo]'"
        ) from exc
    import numpy as np

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    return DemoData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def train_versions(data: DemoData) -> tuple[Any, Any]:
    """Two fitted classifiers: v1, and v2 = v1 trained further on the same data."""
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=(48,), max_iter=40, random_state=0,
                          warm_start=True, learning_rate_init=0.003)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data.x_train, data.y_train)
        v1 = copy.deepcopy(model)
        model.set_params(max_iter=30)
        model.fit(data.x_train, data.y_train)
    return v1, model


def export_mlp(classifier: Any, path: Path) -> None:
    """Write a fitted ``MLPClassifier`` (ReLU hidden layers, softmax head) as ONNX opset 13."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    current = INPUT_NAME
    layers = list(zip(classifier.coefs_, classifier.intercepts_, strict=True))
    for i, (weight, bias) in enumerate(layers):
        w_name, b_name, out = f"fc{i}.weight", f"fc{i}.bias", f"fc{i}"
        inits += [numpy_helper.from_array(np.ascontiguousarray(weight.T, np.float32), w_name),
                  numpy_helper.from_array(bias.astype(np.float32), b_name)]
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [out], transB=1))
        current = out
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            current = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], axis=-1))
    n_in = classifier.coefs_[0].shape[0]
    n_out = classifier.coefs_[-1].shape[1]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edgeship-demo")
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
