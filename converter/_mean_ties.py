"""Output scales for an int8 mean (MEAN / ReduceMean of ``n`` values with its own output
parameters) on which no possible mean lies near a rounding half, so that onnxruntime and
LiteRT round every mean the same way.

The mean of ``n`` int8 values is ``S * r + zo`` with ``S`` the integer sum of (q - zi) and
``r = si / (n so)``: a function of one integer. Both runtimes compute it to ~1e-6 of an
output step (LiteRT's MEAN from the int32 sum, onnxruntime's ReduceMean in float32 between
DQ and Q), so they differ only where the exact value is within that of a half, and there
they go either way: PP-OCRv4's recognizer has 6-7 such sums of 30 601 per LayerNorm mean
and variance, and one of them, hit once in 128 eval lines, rescaled a token row and
changed its string (hw-bench/litert_vs_onnx_layers.py).

If ``r`` is a fraction ``a / b`` with ``b`` odd, ``S a / b`` is a multiple of ``1 / b``,
never closer to a half than ``1 / (2 b)``. So the scale is moved (up only: the range
still covers the calibrated one) to the nearest ``si / (n a / b)`` with ``b <= MAX_DENOMINATOR``
whose float32 value keeps every sum at least ``MARGIN`` of a step from a half. That is a
move of well under 1 % for the scales seen (the distance is checked on the float32
scale, exactly, for every ``S``). Pure numpy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MARGIN = 1e-3  # of an output step; both runtimes are within ~1e-5 of the exact mean
MAX_DENOMINATOR = 499  # odd denominators up to this: a / b is >= 1/998 from a half
MAX_MOVE = 0.02  # relative: the output scale grows by at most 2 %


def half_distance(s_in: float, z_in: int, n: int, s_out: float) -> float:
    """The smallest distance (in output steps) of any possible mean of ``n`` int8 values
    to a rounding half, with float32 scales as the runtimes hold them."""
    sums = np.arange(n * (-128 - z_in), n * (127 - z_in) + 1, dtype=np.float64)
    ratio = np.float64(np.float32(s_in)) / (n * np.float64(np.float32(s_out)))
    value = sums * ratio
    return float(np.abs(value - np.floor(value) - 0.5).min())


@lru_cache(maxsize=1024)
def tie_free_mean_scale(s_in: float, z_in: int, n: int, s_out: float) -> float:
    """``s_out`` if no mean is within ``MARGIN`` of a half, else the least larger
    float32 scale (within ``MAX_MOVE``) of the form ``s_in / (n a / b)``, b odd, that
    keeps them all ``MARGIN`` away; ``s_out`` unchanged when none does."""
    if n <= 1 or half_distance(s_in, z_in, n, s_out) >= MARGIN:
        return s_out
    ratio = float(np.float32(s_in)) / (n * float(np.float32(s_out)))
    candidates = set()
    for b in range(1, MAX_DENOMINATOR + 1, 2):
        a = int(np.floor(ratio * b))  # a / b <= ratio: the scale only grows
        if a >= 1:
            scale = float(np.float32(s_in / (n * a / b)))
            if s_out <= scale <= s_out * (1.0 + MAX_MOVE):
                candidates.add(scale)
    for scale in sorted(candidates):
        if half_distance(s_in, z_in, n, scale) >= MARGIN:
            return scale
    return s_out
