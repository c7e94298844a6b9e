"""Scales of a quantized LayerNormalization's int8 steps (converter/_layernorm.py) on which
onnxruntime (the written chain, converter/_layernorm_qdq.py) and LiteRT (the TFLite
lowering, ``layer_norm`` in converter/_tflite_ops_math.py) compute the same integers.

Measured on PP-OCRv4's recognizer (128 eval lines; each of these alone turned LiteRT's
string into another, checked by putting LiteRT's codes for that one tensor into the ONNX):
the final ``Add(scaled, beta)`` rounded 1-3 values apart in 4 lines, the two MEANs (mean,
variance) one value each in 2 lines. Per step:

- ``mean``, ``variance``: a mean of ``n`` int8 values, moved off every half
  (converter/_mean_ties.py);
- ``centered`` = Sub(x, mean): the Add/Sub search of converter/_add_ties.py;
- ``variance_eps`` = Add(variance, eps) and the output = Add(scaled, beta): an Add of an
  int8 constant. LiteRT runs it on XNNPACK (the fixed-point add of
  :func:`~._add_ties.xnnpack_add`, 0 mismatches against LiteRT on every pair), onnxruntime
  on the chain's DQ(uint8) + DQ(int8 constant) -> Q. The output scale is moved (< 1e-3) to
  the first on which the two agree for every int8 input and every code the constant
  holds, with onnxruntime run on that same form. The LayerNorm's output scale is the
  plan's: readers follow it as for a moved Add;
- ``rstd``: converter/_rsqrt_ties.py.
"""

from __future__ import annotations

import numpy as np
import onnx

from ._add_ties import agreeing_const_scale, agreeing_scale
from ._ir import Graph
from ._mean_ties import tie_free_mean_scale
from ._plan import Plan, QParams
from ._pool_ties import _set_downstream
from ._rsqrt_ties import match_rstd

Steps = dict[str, list[float]]  # step -> [scale, zero point], as converter/_layernorm.py keeps them


def int8_vector(values: np.ndarray) -> tuple[np.ndarray, float]:
    """A float vector as the QDQ chain and the TFLite file store it (both call this, so
    the tie search sees their codes): int8 per tensor, symmetric (zero -> scale 1)."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.round(values / scale), -127, 127).astype(np.int8), scale


def tie_free_layernorms(graph: Graph, plan: Plan, params: dict[str, Steps]) -> dict[str, Steps]:
    """``params`` (node -> step -> [scale, zero point]) with every step above moved where
    the two runtimes would round apart; moves each LayerNorm's output scale in ``plan``
    (and the data-movement readers after it)."""
    out = {}
    for node in graph.nodes:
        if node.name not in params:
            continue
        steps = dict(params[node.name])
        x = plan.params[node.input[0]]
        shape = graph.shape(node.input[0])
        width = int(shape[-1]) if shape and isinstance(shape[-1], int) else 0
        if width > 1:
            steps["mean"] = _mean(x.scale, x.zero_point, width, steps["mean"])
        mean = steps["mean"]
        centered = agreeing_scale(x.scale, x.zero_point, float(mean[0]), int(mean[1]),
                                  float(steps["centered"][0]), int(steps["centered"][1]), "Sub")
        if centered is not None:
            steps["centered"] = [centered, steps["centered"][1]]
        if width > 1:
            squared = steps["squared"]
            steps["variance"] = _mean(float(squared[0]), int(squared[1]), width, steps["variance"])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        steps["variance_eps"] = _const_add(steps["variance"], np.array([eps], np.float32), steps["variance_eps"])
        out[node.name] = steps
        _move_output(graph, plan, node, steps)
    return match_rstd(out)


def _mean(s_in: float, z_in: int, n: int, step: list[float]) -> list[float]:
    return [tie_free_mean_scale(float(s_in), int(z_in), n, float(step[0])), step[1]]


def _const_add(x: list[float], values: np.ndarray, step: list[float]) -> list[float]:
    codes, scale = int8_vector(values.reshape(-1))
    chosen = agreeing_const_scale(float(x[0]), int(x[1]), tuple(int(c) for c in np.unique(codes)), scale,
                                  float(step[0]), int(step[1]), const_int8=True)
    return [chosen if chosen is not None else step[0], step[1]]


def _move_output(graph: Graph, plan: Plan, node: onnx.NodeProto, steps: Steps) -> None:
    """The output = Add(scaled, beta) in the plan's output parameters: the first tie-free
    scale from the plan's (idempotent)."""
    y = node.output[0]
    if y in graph.output_names or y not in plan.params:
        return
    beta = graph.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    values = beta.astype(np.float32) if beta is not None else np.zeros(1, np.float32)
    old = plan.params[y]
    chosen = _const_add(steps["scaled"], values, [old.scale, old.zero_point])[0]
    if chosen != old.scale:
        _set_downstream(graph, plan, y, old, QParams(float(chosen), old.zero_point))
