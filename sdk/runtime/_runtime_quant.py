"""Quantized model edges as float32 for the caller: the arithmetic both runtime adapters
share. An int8/uint8 input is quantized with its own scale and zero point
(round half to even, as ONNX QuantizeLinear does), an output is dequantized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class EdgeQuant:
    """How a model's int8/uint8 edge tensor maps to float; scale 0.0 = not quantized."""

    storage: np.dtype[Any]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    @property
    def caller_dtype(self) -> str:
        return "float32" if self.quantized else self.storage.name


def to_storage(edge: EdgeQuant, value: np.ndarray) -> np.ndarray:
    if not edge.quantized:
        return np.ascontiguousarray(value, dtype=edge.storage)
    info = np.iinfo(edge.storage)
    q = np.round(value.astype(np.float32) / np.float32(edge.scale)) + edge.zero_point
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(edge.storage))


def from_storage(edge: EdgeQuant, value: np.ndarray) -> np.ndarray:
    if not edge.quantized:
        return value
    return ((value.astype(np.float32) - edge.zero_point) * np.float32(edge.scale)).astype(np.float32)
