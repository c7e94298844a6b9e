"""A device's view of its examples: the head's input features, from the model it runs.

The INT8 QDQ model keeps the float tensor that feeds the head under its original name, so
asking onnxruntime for it as an extra output gives exactly what the deployed model computes
before its head, quantization noise included: the head is trained on what it will see.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeship.sdk.learning._head import HeadError, HeadSpec

if TYPE_CHECKING:
    import numpy as np
    from edgeship.sdk.learning._store import Example


def model_features(model_path: str | Path, spec: HeadSpec,
                   inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Features ``(rows, n_features)`` of a batch of inputs (every input has the same rows)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    if spec.features not in {o for n in model.graph.node for o in n.output} | \
            {i.name for i in model.graph.input}:
        raise HeadError(f"{model_path}: no tensor {spec.features!r} feeds a head here; "
                        "the model is not the one the learning run was planned for")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(spec.features))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rows = len(next(iter(inputs.values())))
    found = [session.run(None, {k: v[i:i + 1] for k, v in inputs.items()})[0].reshape(-1)
             for i in range(rows)]
    return np.asarray(found, dtype=np.float32).reshape(rows, spec.n_features)


def example_features(model_path: str | Path, spec: HeadSpec,
                     examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the labelled examples, one row each."""
    import numpy as np

    labelled = [e for e in examples if e.label is not None]
    if not labelled:
        return np.zeros((0, spec.n_features), np.float32), np.zeros(0, np.int64)
    names = list(labelled[0].inputs)
    batch = {n: np.concatenate([e.inputs[n] for e in labelled]) for n in names}
    labels = np.asarray([e.label for e in labelled], dtype=np.int64)
    return model_features(model_path, spec, batch), labels
