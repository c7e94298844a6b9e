"""The search that converter/_add_ties.py and converter/_rsqrt_ties.py share: of the
output scales ``s / (1 + k step)``, k = 0, 1, ..., the first on which onnxruntime's float
kernel and LiteRT's integer kernel give the same code for every input they can see.

onnxruntime is run on a small probe graph that evaluates a batch of candidate scales at
once (one session per batch); the integer side is whatever the caller compares against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper


def first_agreeing_scale(
    scale: float,
    step: float,
    tries: int,
    batch: int,
    onnxruntime_codes: Callable[[list[float]], Sequence[np.ndarray]],
    agrees: Callable[[float, np.ndarray], bool],
) -> float | None:
    """The first float32 ``scale / (1 + k step)`` (k < ``tries``) for which
    ``agrees(candidate, onnxruntime's codes at candidate)``; None if none does."""
    for start in range(0, tries, batch):
        candidates = [float(np.float32(scale / (1.0 + k * step))) for k in range(start, start + batch)]
        for candidate, codes in zip(candidates, onnxruntime_codes(candidates), strict=True):
            if agrees(candidate, codes):
                return candidate
    return None


def run_litert_int8(graph: Any, codes: np.ndarray) -> np.ndarray:
    """The int8 output of a one-input, one-output LiteRT graph (an ``FbGraph``) fed
    ``codes``, as int64 (the default interpreter, one thread: the kernels a device runs)."""
    from edgeship.sdk.runtime._runtime_litert import interpreter_module

    from ._tflite_fb import serialize

    interp = interpreter_module().Interpreter(model_content=serialize(graph), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], codes.astype(np.int8))
    interp.invoke()
    out: np.ndarray = interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.int64)
    return out


def run_probe(graph: onnx.GraphProto, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``graph`` (opset 13) on ``feed``, in one single-threaded
    onnxruntime session."""
    import onnxruntime as ort

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, dict(feed))]
