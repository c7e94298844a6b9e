"""A device's view of its examples: the head's input features, from the model it runs.

The INT8 QDQ model keeps the float tensor that feeds the head under its original name, so
asking onnxruntime for it as an extra output gives exactly what the deployed model computes
before its head, quantization noise included: the head is trained on what it will see.

The extra output is added without the ``onnx`` package (a device has onnxruntime, and
importing onnx and parsing the model cost memory and time for nothing): protobuf merges
a repeated embedded field, so the model's bytes followed by a second ``graph`` field that
holds only ``output { name }`` are the model with one more graph output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeship.sdk.learning._head import HeadError, HeadSpec

if TYPE_CHECKING:
    import numpy as np
    from edgeship.sdk.learning._store import Example

_MODEL_GRAPH, _GRAPH_OUTPUT, _VALUE_INFO_NAME = 7, 12, 1  # onnx.proto field numbers


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_output(model: bytes, tensor: str) -> bytes:
    """A serialized ModelProto with ``tensor`` appended to its graph's outputs."""
    value_info = _field(_VALUE_INFO_NAME, tensor.encode())
    return model + _field(_MODEL_GRAPH, _field(_GRAPH_OUTPUT, value_info))


def model_features(model_path: str | Path, spec: HeadSpec, inputs: dict[str, np.ndarray],
                   pace: Callable[[], None] | None = None) -> np.ndarray:
    """Features ``(rows, n_features)`` of a batch of inputs (every input has the same
    rows), one row at a time on one thread; ``pace`` is called after each row."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False  # a handful of small runs: no arena to keep
    try:
        session = ort.InferenceSession(with_output(Path(model_path).read_bytes(), spec.features),
                                       options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph: no such tensor here
        raise HeadError(f"{model_path}: no tensor {spec.features!r} feeds a head here; "
                        "the model is not the one the learning run was planned for") from exc
    rows = len(next(iter(inputs.values())))
    found = []
    for i in range(rows):
        found.append(session.run([spec.features], {k: v[i:i + 1] for k, v in inputs.items()})
                     [0].reshape(-1))
        if pace is not None:
            pace()
    return np.asarray(found, dtype=np.float32).reshape(rows, spec.n_features)


def example_features(model_path: str | Path, spec: HeadSpec, examples: list[Example],
                     pace: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the labelled examples, one row each."""
    import numpy as np

    labelled = [e for e in examples if e.label is not None]
    if not labelled:
        return np.zeros((0, spec.n_features), np.float32), np.zeros(0, np.int64)
    names = list(labelled[0].inputs)
    batch = {n: np.concatenate([e.inputs[n] for e in labelled]) for n in names}
    labels = np.asarray([e.label for e in labelled], dtype=np.int64)
    return model_features(model_path, spec, batch, pace), labels
