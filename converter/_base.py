"""Delta-friendly quantization (``--base PREV_OUT/``): reuse a previous conversion's
parameters and int8 values wherever they still fit, so that an update of the model
changes as few bytes of the int8 artifact as possible.

- Activations: a tensor (or parameter-sharing group) keeps its previous (scale, zero
  point) when the new calibrated range fits inside what the old parameters represent
  (no extra clipping: measured, clipping even 5% of a logit range cost a top-1 decision)
  and the old scale is at most ``base_scale_tolerance`` coarser than a fresh one. A
  tensor made exact for a folded Relu keeps zero point -128.
- Weight scales: per channel (Conv) or per tensor, the previous scale is kept when no
  weight of the channel would clip under it and it is at most ``base_scale_tolerance``
  coarser than a fresh scale.
- Update-aware rounding: where the scale was kept, a weight may keep its previous int8
  value when the new real value (in steps) is within ``base_weight_tolerance`` steps of
  it. Keeping costs extra squared error, (r - q_old)^2 - (r - round(r))^2; per channel
  the cheapest such weights are kept while their summed cost stays within
  ``base_noise_budget`` x the channel's round-to-nearest error, which bounds the SQNR
  loss. Unchanged weights therefore give identical bytes, and small changes give few,
  small int8 differences.

PREV_OUT must hold ``quant_params.json`` and ``model.int8.onnx`` from edgeship convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeship._errors import InputError

from ._options import ConvertOptions
from ._plan import MIN_RANGE, QMAX, QMIN, Plan, QParams
from ._quantize import WeightInfo, WeightPolicy, _bcast, symmetric_scales

MAX_PARAMS_BYTES = 64 * 1024 * 1024


@dataclass
class BaseParams:
    """The previous conversion's parameters, and the counters of what was reused."""

    activations: dict[str, QParams]
    weight_scales: dict[str, np.ndarray]
    weight_values: dict[str, np.ndarray]
    scale_tol: float
    weight_tol: float
    noise_budget: float
    clip_tol: float = 0.0  # activations: how far (x range) a new range may exceed the old
    kept_scales: dict[str, int] = field(default_factory=dict)  # weight -> channels kept
    kept_values: dict[str, int] = field(default_factory=dict)  # weight -> int8 values kept
    # cross-layer equalization scales per pair (converter/_equalize.py pair_key)
    equalization: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, opts: ConvertOptions) -> BaseParams:
        params_file, model_file = path / "quant_params.json", path / "model.int8.onnx"
        for f in (params_file, model_file):
            if not f.is_file():
                raise InputError(
                    f"--base {path}: {f.name} not found (is it an edgeship convert OUT/?)"
                )
        if params_file.stat().st_size > MAX_PARAMS_BYTES:
            raise InputError(
                f"--base {path}: quant_params.json is larger than {MAX_PARAMS_BYTES} bytes"
            )
        if model_file.stat().st_size > opts.max_model_bytes:
            raise InputError(f"--base {path}: model.int8.onnx is over {opts.max_model_bytes} bytes")
        try:
            data = json.loads(params_file.read_text())
            acts = {t: QParams(float(v[0]), int(v[1])) for t, v in data["activations"].items()}
            scales = {w: np.asarray(v["scales"], np.float32) for w, v in data["weights"].items()}
            equalization = {
                k: np.asarray(v, np.float64) for k, v in data.get("equalization", {}).items()
            }
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"--base {path}: quant_params.json is malformed ({exc})") from exc
        try:
            model = onnx.load_from_string(model_file.read_bytes())
        except Exception as exc:
            raise InputError(f"--base {path}: model.int8.onnx is not an ONNX model") from exc
        values = {}
        for t in model.graph.initializer:
            if (
                t.name.endswith("_q")
                and t.name[:-2] in scales
                and t.data_type == onnx.TensorProto.INT8
            ):
                values[t.name[:-2]] = numpy_helper.to_array(t)
        return cls(
            acts,
            scales,
            values,
            opts.base_scale_tolerance,
            opts.base_weight_tolerance,
            opts.base_noise_budget,
            equalization=equalization,
        )

    # ---- activations (called by make_plan for every parameter group)
    def __call__(self, root: str, span: tuple[float, float]) -> QParams | None:
        old = self.activations.get(root)
        if old is None:
            return None
        lo, hi = min(span[0], 0.0), max(span[1], 0.0)
        old_lo, old_hi = old.scale * (QMIN - old.zero_point), old.scale * (QMAX - old.zero_point)
        slack = self.clip_tol * (old_hi - old_lo) + 1e-6 * old.scale
        if lo < old_lo - slack or hi > old_hi + slack:
            return None  # would clip the new range by more than the tolerance
        fresh = max(hi - lo, MIN_RANGE) / (QMAX - QMIN)
        if old.scale > fresh * (1.0 + self.scale_tol):
            return None  # would waste resolution
        if lo >= 0.0 and old.zero_point != QMIN:
            return None  # a non-negative (Relu) tensor must keep 0.0 at -128
        return old

    def policy(self) -> WeightPolicy:
        return _BasePolicy(self)

    def summary(self, weights: list[WeightInfo], plan: Plan) -> dict[str, Any]:
        acts_kept = sum(1 for t in plan.quantized if self.activations.get(t) == plan.params[t])
        w_kept = sum(1 for w in weights if w.kept_scales)
        values = sum(int(np.prod(w.shape)) for w in weights)
        return {
            "activation_tensors": len(plan.quantized),
            "activation_tensors_kept": acts_kept,
            "weight_tensors": len(weights),
            "weight_tensors_kept_scales": w_kept,
            "channels": sum(len(w.scales) for w in weights),
            "channels_kept": sum(self.kept_scales.values()),
            "tensors_total": len(plan.quantized) + len(weights),
            "tensors_kept": acts_kept + w_kept,
            "weights_total": values,
            "weights_kept": sum(w.kept_values for w in weights),
            "scale_tolerance": self.scale_tol,
            "weight_tolerance_steps": self.weight_tol,
        }


class _BasePolicy(WeightPolicy):
    def __init__(self, base: BaseParams) -> None:
        self.base = base

    def scales(self, name: str, w: np.ndarray, axis: int | None) -> np.ndarray:
        fresh = symmetric_scales(w, axis)
        old = self.base.weight_scales.get(name)
        if old is None or old.shape != fresh.shape:
            self.base.kept_scales[name] = 0
            return fresh
        absmax = fresh.astype(np.float64) * 127.0
        # the largest weight may clip by at most the rounding tolerance (in steps)
        room = old.astype(np.float64) * (127.0 + self.base.weight_tol) * (1 + 1e-6)
        fits = (absmax <= room) & (old <= fresh * (1.0 + self.base.scale_tol))
        self.base.kept_scales[name] = int(fits.sum())
        return np.where(fits, old, fresh).astype(np.float32)

    def round(self, name: str, w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
        q = super().round(name, w, scales, axis)
        old_q, old_s = self.base.weight_values.get(name), self.base.weight_scales.get(name)
        if old_q is None or old_s is None or old_q.shape != w.shape or old_s.shape != scales.shape:
            self.base.kept_values[name] = (
                int(np.sum(q == old_q)) if old_q is not None and old_q.shape == q.shape else 0
            )
            return q
        same_scale = _bcast(scales == old_s, w, axis)
        steps = w.astype(np.float64) / _bcast(scales, w, axis).astype(np.float64)
        if np.all(same_scale) and np.all(np.abs(steps - old_q) < 1.0):
            # every old value is still one of its weight's two neighbours: a rounding as
            # valid as nearest (learned rounding, the default, chose it by the layer's
            # output error), so the whole tensor is kept and the delta stays empty
            self.base.kept_values[name] = int(old_q.size)
            return np.asarray(old_q, np.int8)
        near = (steps - q) ** 2
        cost = (steps - old_q) ** 2 - near  # extra squared error of keeping the old value
        candidate = same_scale & (q != old_q) & (np.abs(steps - old_q) <= self.base.weight_tol)
        candidate &= w != 0  # a pruned weight stays exactly zero
        keep = _within_budget(np.where(candidate, cost, np.inf), near, axis, self.base.noise_budget)
        q = np.where(keep | (q == old_q), old_q, q).astype(np.int8)
        self.base.kept_values[name] = int(np.sum(q == old_q))
        return q

    def report(self, name: str) -> tuple[bool, int]:
        channels = len(self.base.weight_scales.get(name, []))
        kept = self.base.kept_scales.get(name, 0)
        return (channels > 0 and kept == channels), self.base.kept_values.get(name, 0)


def _within_budget(
    cost: np.ndarray, near: np.ndarray, axis: int | None, budget: float
) -> np.ndarray:
    """Per channel (or per tensor), keep the cheapest candidates while their summed extra
    squared error stays within ``budget`` x the channel's round-to-nearest error."""
    moved = np.moveaxis(cost, axis, 0) if axis is not None else cost.reshape(1, -1)
    base = np.moveaxis(near, axis, 0) if axis is not None else near.reshape(1, -1)
    flat, allowed = moved.reshape(len(moved), -1), budget * base.reshape(len(base), -1).sum(axis=1)
    order = np.argsort(flat, axis=1, kind="stable")
    sorted_cost = np.take_along_axis(flat, order, axis=1)
    ok_sorted = np.cumsum(sorted_cost, axis=1) <= allowed[:, None]
    ok = np.zeros_like(ok_sorted)
    np.put_along_axis(ok, order, ok_sorted, axis=1)
    ok = ok.reshape(moved.shape)
    return np.moveaxis(ok, 0, axis) if axis is not None else ok.reshape(cost.shape)
