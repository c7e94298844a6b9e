"""Drift accounting against a :class:`~edgeship.sdk.monitor._profile.Profile`: a sliding window
of per-bin counts (:class:`DriftMonitor`), PSI and KS per feature, and the verdict
(:class:`DriftReport`) judged with the thresholds of :class:`DriftConfig`.

PSI = sum((p - q) * ln(p / q)) with both shares floored at ``EPSILON``; KS is the
largest difference of the two CDFs over the bin edges (a binned KS: a lower bound of the
exact two-sample statistic). A NaN feature value (e.g. inputs a cloud fallback answered)
is counted in no bin, only in ``nan_values``: it is not the lowest value. Memory is fixed by the profile (``slices`` x bins counts),
never by traffic; no input is kept. numpy is imported only when a monitor is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeship.sdk.monitor._profile import Profile, TensorLayout, _columns, _pool, _scores

from edgeship._errors import ConfigError, InputError

__all__ = ["EPSILON", "DriftConfig", "DriftMonitor", "DriftReport", "FeatureDrift", "ks", "psi"]

EPSILON = 1e-4  # floor of a bin's share in PSI (an empty bin would give ln(0))
_REDUCE_EACH = 1024  # values per sample from which list parts are reduced one by one


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """``[drift]`` in agent.toml. The sliding window is a ring of ``slices`` (>= 2)
    count arrays of ``ceil(window / slices)`` input samples each: once full it holds
    between ``held = (slices - 1) * ceil(window / slices)`` (a slice just forgotten) and
    ``held + ceil(window / slices) - 1`` samples. PSI / KS are judged once ``min_samples``
    are in it, so ``min_samples`` must be at most ``held`` (else no verdict, ever)."""

    window: int = 1000
    slices: int = 8
    psi_alert: float = 0.2
    ks_alert: float = 0.25
    min_samples: int = 500  # PSI noise of an unshifted stream is ~(bins-1)/n: small by 500
    sample: float = 1.0  # fraction of answered requests counted (the tap samples)
    batch: int = 32  # requests the tap buffers before counting them in one numpy pass
    # at most this many requests counted per second (0: no limit): a quiet device counts
    # every request, a busy one a steady sample, so the accounting's CPU stays bounded
    # (~15 us per counted 96x96 image here) and the answers' p50 stays clear of it
    max_rate: float = 100.0

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("window", 10 <= self.window <= 10_000_000),
            ("slices", 2 <= self.slices <= 64 and self.slices <= self.window),
            ("psi_alert", 0 < self.psi_alert <= 100),
            ("ks_alert", 0 < self.ks_alert <= 1),
            ("min_samples", 1 <= self.min_samples <= self.window),
            ("sample", 0 < self.sample <= 1),
            ("batch", 1 <= self.batch <= 4096),
            ("max_rate", 0 <= self.max_rate <= 1e6),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"drift.{name}: {getattr(self, name)!r} is out of range")
        held = (self.slices - 1) * -(-self.window // self.slices)
        if self.min_samples > held:
            raise ConfigError(
                f"drift.min_samples: {self.min_samples} is more than the {held} samples the "
                f"window keeps once it slides (window {self.window} in {self.slices} slices): "
                "it would never give a verdict")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftConfig:
        """From the ``[drift]`` table. Keys this version does not know are skipped, as
        everywhere in agent.toml (a newer file still loads; the agent logs them)."""
        known = cls.__dataclass_fields__
        values = {k: v for k, v in d.items() if k in known}
        for key, value in values.items():
            want = int if key in ("window", "slices", "min_samples", "batch") else (int, float)
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigError(f"drift.{key}: expected a number, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True)
class FeatureDrift:
    name: str
    kind: str
    samples: int
    psi: float | None  # None with no sample yet
    ks: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "samples": self.samples,
                "psi": self.psi, "ks": self.ks}


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """The verdict over the current window. ``alert`` needs ``min_samples`` and a
    feature over ``psi_alert`` (PSI) or, numeric only, over ``ks_alert`` (KS)."""

    window: int  # input samples now in the window
    alert: bool
    max_psi: float
    max_ks: float
    worst: str  # the feature with the highest PSI ("" before any sample)
    features: tuple[FeatureDrift, ...]
    psi_alert: float
    ks_alert: float
    min_samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "alert": self.alert, "max_psi": self.max_psi,
                "max_ks": self.max_ks, "worst": self.worst, "psi_alert": self.psi_alert,
                "ks_alert": self.ks_alert, "min_samples": self.min_samples,
                "features": [f.to_dict() for f in self.features]}

    def status(self) -> dict[str, Any]:
        """The short form carried in a device's status: alert, worst PSI / KS, worst feature,
        window."""
        return {"alert": self.alert, "max_psi": self.max_psi, "max_ks": self.max_ks,
                "worst": self.worst, "window": self.window}


def psi(reference: Any, current: Any, epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors (each floored at ``epsilon``)."""
    import numpy as np

    p = np.maximum(np.asarray(current, np.float64), epsilon)
    q = np.maximum(np.asarray(reference, np.float64), epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def ks(reference: Any, current: Any) -> float:
    """Largest CDF difference over the bin edges of two share vectors."""
    import numpy as np

    diff = np.cumsum(np.asarray(current, np.float64) - np.asarray(reference, np.float64))
    return float(np.max(np.abs(diff[:-1]))) if len(diff) > 1 else 0.0


def _reduces_each(layout: TensorLayout) -> bool:
    """Whether samples of ``layout`` are large images reduced per channel one by one."""
    return len(layout.shape) >= 2 and math.prod(layout.shape) >= _REDUCE_EACH


class Reduced:
    """A large input already reduced to its per-channel means ``[n, width]`` (not yet
    pooled): what :meth:`DriftMonitor.reduce` hands back, so that a caller buffering
    requests keeps a few floats per row instead of each request's whole array."""

    __slots__ = ("means",)

    def __init__(self, means: Any) -> None:
        self.means = means

    def __len__(self) -> int:
        return len(self.means)


class DriftMonitor:
    """Counts samples into the profile's bins over a sliding window (a ring of
    ``config.slices`` count arrays; memory is fixed by the profile, never by traffic)
    and reports PSI / KS. Not thread-safe: the caller serializes ``observe``/``report``."""

    def __init__(self, profile: Profile, config: DriftConfig | None = None) -> None:
        import numpy as np

        self._np = np
        self.profile, self.config = profile, config or DriftConfig()
        self._plan: list[tuple[TensorLayout, Any, Any]] = []  # layout, padded edges, offset
        # inputs reduced per channel on arrival: layout, (before, channels, after) split
        self._reduced: list[tuple[TensorLayout, tuple[int, int, int]]] = []
        offset = 0
        feats = iter(profile.features)
        for t in profile.tensors:
            fs = [next(feats) for _ in range(t.n_features)]
            num = [f for f in fs if f.kind == "numeric"]
            pad = np.full((len(num), max((len(f.edges) for f in num), default=0)), np.inf)
            for i, f in enumerate(num):
                pad[i, :len(f.edges)] = f.edges
            self._plan.append((t, pad, np.cumsum([offset] + [f.bins for f in fs])[:-1]))
            if t.role == "input" and not t.is_scores and _reduces_each(t):
                k = t.channel_axis
                self._reduced.append((t, (math.prod(t.shape[:k]), t.width,
                                          math.prod(t.shape[k + 1:]))))
            offset += sum(f.bins for f in fs)
        self._bins = offset
        self._ref = np.concatenate([f.proportions for f in profile.features])
        self._widths = np.array([f.bins for f in profile.features])
        self._starts = np.cumsum(self._widths) - self._widths
        self._not_last = np.ones(offset)  # KS is read at the edges: not after the last bin
        self._not_last[self._starts + self._widths - 1] = 0.0
        self._slice_size = -(-self.config.window // self.config.slices)
        self._counts = np.zeros((self.config.slices, offset), np.int64)
        self._samples = np.zeros(self.config.slices, np.int64)
        self._slot = 0
        self.nan_values = 0  # feature values that were NaN (counted in no bin)

    def observe(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                *, answered: Any = None) -> None:
        """Count a batch: ``inputs`` (and optionally the answers' ``outputs``, which may
        have fewer rows) by tensor name, each a batch ``[n, *sample shape]`` or a list of
        such batches (counted together without joining large tensors first). Tensors the
        profile lacks are ignored; ``outputs`` alone count nothing (the window is input
        rows). Output rows share the window of their input rows: row by row when there
        are as many, or ``answered`` (one bool per input row, true for the rows the
        outputs answer, in order) says which input rows they belong to."""
        np = self._np
        rows: list[Any] = []
        answers: list[Any] = []
        for layout, pad, offs in self._plan:
            data = inputs if layout.role == "input" else outputs
            if data is None or layout.name not in data:
                continue
            idx = self._bin(layout, pad, offs, self._parts(layout, data[layout.name]))
            (rows if layout.role == "input" else answers).append(idx)
        if not rows:
            return
        n = len(rows[0])
        if answers and answered is not None:
            mask = np.asarray(answered, bool)
            if mask.shape == (n,) and all(len(a) == mask.sum() for a in answers):
                full = np.full((n, sum(a.shape[1] for a in answers)), self._bins)  # not counted
                full[mask] = np.concatenate(answers, axis=1)
                answers = [full]
        if answers and all(len(a) == n for a in answers):  # row by row: the same window
            self._count(np.concatenate(rows + answers, axis=1), n)
            return
        self._count(np.concatenate(rows, axis=1), n)
        if answers:  # fewer answer rows than inputs: counted into the current slice
            self._counts[self._slot] += np.bincount(np.concatenate([a.ravel() for a in answers]),
                                                    minlength=self._bins + 1)[: self._bins]

    def reduce(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``inputs`` with every large input the profile reduces per channel replaced by
        its :class:`Reduced` means (thread-safe: counts nothing). InputError for a sample
        shape the profile does not have."""
        if not self._reduced:
            return dict(inputs)
        np, out = self._np, dict(inputs)
        for layout, split in self._reduced:  # lean: this runs on the answer path
            x = inputs.get(layout.name)
            if x is None or isinstance(x, Reduced):
                continue
            x = np.asarray(x)
            if x.shape[1:] != layout.shape:
                self._parts(layout, x)  # raises the InputError naming both shapes
            out[layout.name] = Reduced(np.einsum("nacb->nc", x.reshape(len(x), *split))
                                       / (split[0] * split[2]))
        return out

    def _parts(self, layout: TensorLayout, value: Any) -> list[Any]:
        np = self._np
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if items and all(isinstance(v, Reduced) for v in items):
            return items
        parts = [np.asarray(v) for v in items]
        for x in parts:
            if x.shape[1:] != layout.shape:
                raise InputError(f"drift: {layout.name!r} has sample shape {list(x.shape[1:])},"
                                 f" the profile has {list(layout.shape)}")
        return parts

    def _bin(self, layout: TensorLayout, pad: Any, offs: Any, parts: list[Any]) -> Any:
        """Global bin index of every feature of every row: ``[n, features]``."""
        np = self._np
        if layout.is_scores:
            cat, conf = _scores(layout, parts[0] if len(parts) == 1 else np.concatenate(parts))
            idx = np.stack([cat, (conf[:, None] > pad[0]).sum(axis=1)], axis=1)
            nan = np.repeat(np.isnan(conf)[:, None], 2, axis=1)  # argmax picks a NaN
        else:
            if isinstance(parts[0], Reduced):
                cols = _pool(layout, np.concatenate([p.means for p in parts]))
            elif len(parts) == 1:
                cols = _columns(layout, parts[0])
            elif _reduces_each(layout):
                cols = _pool(layout, self._means(layout, parts))  # no copy of large inputs
            else:
                cols = _columns(layout, np.concatenate(parts))
            idx = (cols[:, :, None] > pad[None]).sum(axis=2)
            nan = np.isnan(cols)
        idx = idx + offs
        if nan.any():  # no bin: NaN is not the lowest value (+-inf are the extremes, binned)
            idx[nan] = self._bins
            self.nan_values += int(nan.sum())
        return idx

    def _means(self, layout: TensorLayout, parts: list[Any]) -> Any:
        """Per-channel means ``[n, width]`` of many image batches, each summed where it
        lies into one array (``_columns`` before pooling)."""
        np = self._np
        k = layout.channel_axis
        before, after = math.prod(layout.shape[:k]), math.prod(layout.shape[k + 1 :])
        sums = np.empty((sum(len(p) for p in parts), layout.width), np.float64)
        row = 0
        for p in parts:
            view = p.reshape(len(p), before, layout.width, after)
            sums[row : row + len(p)] = np.einsum("nacb->nc", view)
            row += len(p)
        return sums / (before * after)

    def _count(self, idx: Any, n: int) -> None:
        """Add ``n`` input rows to the current slice, moving on to the next (and
        forgetting its old counts) whenever a slice is full."""
        while n:
            room = int(self._slice_size - self._samples[self._slot])
            take = min(room, n)
            self._counts[self._slot] += self._np.bincount(  # index _bins: a row not answered
                idx[:take].ravel(), minlength=self._bins + 1)[: self._bins]
            self._samples[self._slot] += take
            idx, n = idx[take:], n - take
            if take == room:
                self._slot = (self._slot + 1) % self.config.slices
                self._counts[self._slot] = 0
                self._samples[self._slot] = 0

    @property
    def window(self) -> int:
        """Samples counted in the current window."""
        return int(self._samples.sum())

    def counts(self) -> Any:
        """Per-bin counts over the window (all features, concatenated)."""
        return self._counts.sum(axis=0)

    def report(self) -> DriftReport:
        """PSI and KS per feature over the current window, and whether they raise an alert."""
        np, c = self._np, self.config
        got, ref, starts = self.counts(), self._ref, self._starts
        n = np.add.reduceat(got, starts)
        share = got / np.repeat(np.maximum(n, 1), self._widths)
        p, q = np.maximum(share, EPSILON), np.maximum(ref, EPSILON)
        psis = np.add.reduceat((p - q) * np.log(p / q), starts)
        cum = np.cumsum(share - ref)
        before = np.repeat(np.concatenate([[0.0], cum[starts[1:] - 1]]), self._widths)
        kss = np.maximum.reduceat(np.abs(cum - before) * self._not_last, starts)
        rows = tuple(
            FeatureDrift(name=f.name, kind=f.kind, samples=int(k),
                         psi=round(float(a), 4) if k else None,
                         ks=round(float(b), 4) if k else None)
            for f, k, a, b in zip(self.profile.features, n, psis, kss, strict=True))
        judged = [r for r in rows if r.samples >= c.min_samples]
        max_psi = max((r.psi or 0.0 for r in rows), default=0.0)
        max_ks = max((r.ks or 0.0 for r in rows if r.kind == "numeric"), default=0.0)
        worst = max(rows, key=lambda r: r.psi or 0.0).name if self.window else ""
        alert = any((r.psi or 0) > c.psi_alert or (r.kind == "numeric" and (r.ks or 0) > c.ks_alert)
                    for r in judged)
        return DriftReport(window=self.window, alert=alert, max_psi=max_psi, max_ks=max_ks,
                           worst=worst, features=rows, psi_alert=c.psi_alert,
                           ks_alert=c.ks_alert, min_samples=c.min_samples)
