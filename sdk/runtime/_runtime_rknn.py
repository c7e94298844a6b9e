"""Rockchip NPU adapter for :class:`edgeship.sdk.Model` (``runtime="rknn"``): a ``.rknn``
file (``edgeship convert --target rk3588``) run by ``rknn-toolkit-lite2`` (``rknnlite``,
the board-side package: aarch64/armhf only) on the board's NPU.

The hardware boundary: :func:`rknn_io` reads the model's inputs and outputs from the
file itself (the toolkit stores them as a Python literal, ``{'attrs': {name: {'idx',
'shape', 'dtype', 'is_output'}}, ...}``), so a model is checked and described without
the NPU; :class:`RknnBackend` then needs ``rknnlite`` and the NPU driver. The model's
inputs and outputs are float32 (the ``.rknn`` quantizes and dequantizes at its edges
with our own scales), 4-D inputs in NCHW like the ONNX it was built from.
"""

from __future__ import annotations

import ast
import os
import tempfile
import threading
from typing import Any

import numpy as np
from edgeship.sdk.runtime._model import TensorSpec

from edgeship._errors import InferenceError, ModelLoadError

__all__ = ["RknnBackend", "rknn_io"]

MAGIC = b"RKNN"
_ATTRS = b"{'attrs': {"
_MAX_ATTRS = 1 << 20


def rknn_io(data: bytes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a ``.rknn`` file, read from the bytes; ModelLoadError when
    it is not one or its description cannot be read."""
    if not data.startswith(MAGIC):
        raise ModelLoadError("not an RKNN model (no 'RKNN' header)")
    start = data.find(_ATTRS)
    if start < 0:
        raise ModelLoadError("the RKNN model carries no input/output description "
                             "(made by an rknn-toolkit2 other than 2.x?)")
    end = _closing(data, start)
    try:
        attrs = ast.literal_eval(data[start:end].decode("utf-8"))["attrs"]
        tensors = sorted(attrs.items(), key=lambda kv: (bool(kv[1]["is_output"]), kv[1]["idx"]))
        specs = [(bool(v["is_output"]), TensorSpec(name=str(k), shape=tuple(int(d) for d in v["shape"]),
                                                   dtype="float32")) for k, v in tensors]
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read the RKNN model's inputs and outputs: {exc}") from exc
    return (tuple(s for out, s in specs if not out), tuple(s for out, s in specs if out))


def _closing(data: bytes, start: int) -> int:
    depth = 0
    for end in range(start, min(len(data), start + _MAX_ATTRS)):
        char = data[end]
        depth += char == ord("{")
        depth -= char == ord("}")
        if depth == 0:
            return end + 1
    raise ModelLoadError("the RKNN model's input/output description is cut short")


class RknnBackend:
    """One RKNNLite context on the NPU behind a lock."""

    runtime = "rknn"

    def __init__(self, source: str | bytes, *, device: str, threads: int | None) -> None:
        data = source if isinstance(source, bytes) else _read(source)
        self.inputs, self.outputs = rknn_io(data)
        if device not in ("cpu", "npu"):  # "cpu": what Model.load passes by default
            raise ModelLoadError(f"an RKNN model runs on device 'npu', not {device!r}")
        try:
            from rknnlite.api import RKNNLite
        except ImportError as exc:
            raise ModelLoadError("runtime 'rknn' needs rknn-toolkit-lite2 on a Rockchip board "
                                 "(pip install rknn-toolkit-lite2; aarch64/armhf only)") from exc
        self._rknn = RKNNLite()
        self._load(RKNNLite, source, data)
        self._lock = threading.Lock()

    def _load(self, api: Any, source: str | bytes, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="edgeship-rknn-") as tmp:
            path = source if isinstance(source, str) else os.path.join(tmp, "model.rknn")
            if isinstance(source, bytes):  # RKNNLite loads from a path only
                with open(path, "wb") as handle:
                    handle.write(data)
            if self._rknn.load_rknn(path) != 0:
                raise ModelLoadError("rknn-toolkit-lite2 cannot load the model")
        if self._rknn.init_runtime(core_mask=getattr(api, "NPU_CORE_AUTO", 0)) != 0:
            raise ModelLoadError("the RKNN runtime did not start: is this a Rockchip board with "
                                 "the NPU driver and librknnrt.so?")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = [np.ascontiguousarray(feeds[s.name], np.float32) for s in self.inputs]
        layout = {"data_format": "nchw"} if all(v.ndim == 4 for v in values) else {}
        with self._lock:
            got = self._rknn.inference(inputs=values, **layout)
        if got is None or len(got) != len(self.outputs):
            raise InferenceError("the RKNN runtime returned no result")
        return {s.name: np.asarray(v, np.float32).reshape(s.shape)
                for s, v in zip(self.outputs, got, strict=True)}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc.strerror}") from exc
