"""The onnxruntime side of the accuracy steps (the math is in converter/_equalize.py and
converter/_bias_correct.py): what each step needs measured on the calibration data."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship._errors import CalibrationError

from . import _equalize
from ._ir import Graph

MAXIMA_SAMPLES = 256  # calibration samples that bound a Clip pair's channels


def equalize(
    graph: Graph, calib: dict[str, np.ndarray], fixed: dict[str, np.ndarray] | None = None
) -> _equalize.Equalized:
    """Cross-layer equalization in place; a Clip(0, M) pair is bounded by the
    per-channel maxima of its input on (the first ``MAXIMA_SAMPLES``) calibration samples;
    ``fixed``: a previous conversion's scales (``--base``)."""
    pairs = _equalize.find_pairs(graph)
    clipped = sorted({p.tensor for p in pairs if p.clip is not None})
    maxima = channel_maxima(graph, calib, clipped) if clipped else {}
    return _equalize.equalize(graph, maxima, fixed)


def channel_maxima(
    graph: Graph, feeds: dict[str, np.ndarray], tensors: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel maximum of each tensor (axis 1 of a 4-D tensor, else the last axis)."""
    sess = _session(graph, tensors)
    count = min(MAXIMA_SAMPLES, len(next(iter(feeds.values()))))
    result: dict[str, np.ndarray] = {}
    for i in range(count):
        try:
            values = sess.run(tensors, {k: v[i : i + 1] for k, v in feeds.items()})
        except Exception as exc:
            raise CalibrationError(f"calibration sample {i} fails: {exc}") from exc
        for name, v in zip(tensors, values, strict=True):
            m = _per_channel_max(np.asarray(v))
            result[name] = m if name not in result else np.maximum(result[name], m)
    return result


def _per_channel_max(v: np.ndarray) -> np.ndarray:
    axis = 1 if v.ndim == 4 else v.ndim - 1
    return np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1).max(axis=1).astype(np.float64)


def _session(graph: Graph, tensors: list[str]) -> Any:
    import onnxruntime as ort

    model = graph.to_model(extra_outputs=[t for t in tensors if t not in graph.output_names])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # deterministic, like calibration
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def corrected_layers(graph: Graph) -> frozenset[str]:
    """Inputs of the layers bias correction touches (their means are collected)."""
    from ._bias_correct import CORRECTED_OPS

    return frozenset(
        n.input[0]
        for n in graph.nodes
        if n.op_type in CORRECTED_OPS and len(n.input) > 1 and graph.is_const(n.input[1])
    )
