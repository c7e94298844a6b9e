"""Reference profiles of a model's data and on-device drift accounting (PSI and KS).

A :class:`Profile` is what a release signs about the data its model was built for: per
feature, reference bin edges and the share of the reference data in each bin. It is pure
data (parsed and validated without numpy, serialized under 64 KiB) so that it can sit in
a signed manifest. :func:`build_profile` makes one from arrays, :func:`profile_from_file`
from a ``profile.json`` or a ``DATA.npz``; :class:`DriftMonitor` counts what a device sees
into the same bins over a sliding window and reports PSI and KS per feature
(:class:`DriftReport`); those three live in :mod:`edgeship.sdk.monitor._drift_monitor` and are
importable from here too.

Features (``TensorLayout`` says how each tensor becomes features; the device applies the
same rule):

* a tensor ``[N]`` is one feature, ``[N, F]`` is F features (one per column);
* a higher rank is reduced per channel: the mean over every axis but the channel axis,
  which is axis 1 (NCHW images: one feature per colour channel) unless the sample shape
  looks like NHWC (``[H, W, C]`` with ``C <= 4 < H``), then the last axis;
* more than the tensor's share of 64 features (64 per role, split evenly between the
  role's tensors) are pooled: contiguous groups of columns averaged into that many;
* an output ``[N, K]`` with ``K >= 2`` is class scores and gives two features: the
  predicted class (categorical, K categories; with ``K > 64`` class ids are grouped
  contiguously into 64) and the top-1 confidence (softmax first when the scores are not
  probabilities).

Numeric bins are equal-mass: the edges are quantiles of the reference data (so PSI has
no near-empty reference bin), deduplicated, so ties and constant features give fewer,
wider bins instead of empty ones. Bin ``i`` holds ``edges[i-1] < x <= edges[i]``.
A small reference gets fewer bins (one per ``SAMPLES_PER_BIN`` samples, at least 2): the
noise of a reference share is what an unshifted stream is judged against, and 10 bins of
50 samples put PSI over 0.2 on most unshifted streams.
numpy is imported only in the functions that compute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship._errors import InputError, MalformedError

__all__ = [
    "FeatureProfile",
    "Profile",
    "TensorLayout",
    "batch_first",
    "build_profile",
    "check_model",
    "profile_from_file",
]

PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 64 * 1024
MAX_FEATURES = 64  # per role: inputs and outputs each
MAX_BINS = 64
MAX_TENSORS = 16
MAX_NAME = 128  # a tensor's name
MAX_FEATURE_NAME = MAX_NAME + 8  # its name + ":class", ":top1" or "[63]"
MAX_RANK = 8
DEFAULT_BINS = 10
SAMPLES_PER_BIN = 20  # reference samples per numeric bin, at least (2 bins at least)
_ROLES = ("input", "output")
_KINDS = ("values", "class_scores")


def _fail(what: str, msg: str) -> MalformedError:
    return MalformedError(f"profile.{what}: {msg}")


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(what, f"expected an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _str(v: Any, what: str, limit: int = MAX_NAME) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise _fail(what, f"expected a name of 1..{limit} characters, got {str(v)[:40]!r}")
    return v


def _floats(v: Any, what: str, max_len: int) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or len(v) > max_len:
        raise _fail(what, f"expected a list of at most {max_len} numbers")
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
             for x in v)
    if not ok:
        raise _fail(what, "every value must be a finite number")
    return tuple(float(x) for x in v)


def _mapping(v: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _fail(what, f"expected an object, got {type(v).__name__}")
    return v


@dataclass(frozen=True, kw_only=True)
class TensorLayout:
    """How one model tensor becomes features (see the module docstring)."""

    name: str
    role: str  # "input" | "output"
    kind: str  # "values" | "class_scores"
    shape: tuple[int, ...]  # one sample's shape (no batch axis); checked on observe
    channel_axis: int  # in ``shape``; used when len(shape) >= 2
    width: int  # columns before pooling (values) or classes (class_scores)
    groups: int  # features after pooling (values) or categories (class_scores)
    probabilities: bool = True  # class_scores: rows are already softmax outputs

    def __post_init__(self) -> None:
        w = f"tensors[{str(self.name)[:MAX_NAME]}]"
        _str(self.name, w + ".name")
        if self.role not in _ROLES or self.kind not in _KINDS:
            raise _fail(w, f"role must be one of {_ROLES} and kind one of {_KINDS}")
        if len(self.shape) > MAX_RANK or any(d < 1 for d in self.shape):
            raise _fail(w + ".shape", f"{list(self.shape)} is not a sample shape")
        if self.shape and not 0 <= self.channel_axis < max(len(self.shape), 1):
            raise _fail(w + ".channel_axis", f"{self.channel_axis} is outside {list(self.shape)}")
        if self.width != _width(self.shape, self.channel_axis):
            raise _fail(w + ".width", f"{self.width} does not match shape {list(self.shape)}")
        if not 1 <= self.groups <= min(self.width, MAX_BINS if self.is_scores else MAX_FEATURES):
            raise _fail(w + ".groups", f"{self.groups} is not in [1, {self.width}]")
        if self.is_scores and (self.role != "output" or len(self.shape) != 1 or self.width < 2):
            raise _fail(w + ".kind", "class_scores needs an output of shape [N, K>=2]")

    @property
    def is_scores(self) -> bool:
        return self.kind == "class_scores"

    @property
    def n_features(self) -> int:
        return 2 if self.is_scores else self.groups

    def feature_names(self) -> list[str]:
        if self.is_scores:
            return [f"{self.name}:class", f"{self.name}:top1"]
        if self.groups == 1 and self.width == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.groups)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "kind": self.kind,
                "shape": list(self.shape), "channel_axis": self.channel_axis,
                "width": self.width, "groups": self.groups,
                "probabilities": self.probabilities}

    @classmethod
    def from_dict(cls, d: Any) -> TensorLayout:
        d = _mapping(d, "tensors[]")
        shape = d.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise _fail("tensors[].shape", f"expected a list of at most {MAX_RANK} sizes")
        if not isinstance(d.get("probabilities"), bool):
            raise _fail("tensors[].probabilities", "expected true or false")
        return cls(name=_str(d.get("name"), "tensors[].name"), role=d.get("role"),
                   kind=d.get("kind"),
                   shape=tuple(_int(s, "tensors[].shape", 1, 1 << 24) for s in shape),
                   channel_axis=_int(d.get("channel_axis"), "tensors[].channel_axis", 0, 7),
                   width=_int(d.get("width"), "tensors[].width", 1, 1 << 24),
                   groups=_int(d.get("groups"), "tensors[].groups", 1, MAX_FEATURES),
                   probabilities=d["probabilities"])


@dataclass(frozen=True, kw_only=True)
class FeatureProfile:
    """One feature's reference distribution: ``numeric`` (bin edges + shares of the
    ``len(edges) + 1`` bins) or ``categorical`` (shares of each category)."""

    name: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        w = f"features[{str(self.name)[:MAX_FEATURE_NAME]}]"
        _str(self.name, w + ".name", MAX_FEATURE_NAME)
        if self.kind not in ("numeric", "categorical"):
            raise _fail(w + ".kind", f"{self.kind!r} is not numeric or categorical")
        bins = len(self.proportions)
        if not 1 <= bins <= MAX_BINS:
            raise _fail(w + ".proportions", f"{bins} bins, expected 1..{MAX_BINS}")
        if self.kind == "numeric" and len(self.edges) != bins - 1:
            raise _fail(w + ".edges", f"{len(self.edges)} edges for {bins} bins (want bins-1)")
        if self.kind == "categorical" and self.edges:
            raise _fail(w + ".edges", "a categorical feature has no edges")
        if any(not math.isfinite(x) for x in self.edges + self.proportions):
            raise _fail(w, "edges and proportions must be finite")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise _fail(w + ".edges", "edges must be strictly increasing")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1) > 1e-3:
            raise _fail(w + ".proportions", "shares must be >= 0 and sum to 1")

    @property
    def bins(self) -> int:
        return len(self.proportions)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "edges": list(self.edges),
                "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, d: Any) -> FeatureProfile:
        d = _mapping(d, "features[]")
        return cls(name=_str(d.get("name"), "features[].name", MAX_FEATURE_NAME),
                   kind=d.get("kind"),
                   edges=_floats(d.get("edges"), "features[].edges", MAX_BINS - 1),
                   proportions=_floats(d.get("proportions"), "features[].proportions",
                                       MAX_BINS))


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A model's reference data profile (signed in a release manifest as ``profile``).

    ``features`` lists every tensor's features in ``tensors`` order. Unknown top-level
    keys survive a round trip (``extra``) so a newer profile still loads.
    """

    samples: int
    bins: int
    tensors: tuple[TensorLayout, ...]
    features: tuple[FeatureProfile, ...]
    version: int = PROFILE_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _int(self.samples, "samples", 1, 1 << 40)
        _int(self.bins, "bins", 2, MAX_BINS)
        _int(self.version, "version", PROFILE_VERSION, PROFILE_VERSION)
        if not 1 <= len(self.tensors) <= MAX_TENSORS:
            raise _fail("tensors", f"{len(self.tensors)} tensors, expected 1..{MAX_TENSORS}")
        if len({t.name for t in self.tensors}) != len(self.tensors):
            raise _fail("tensors", "tensor names must be unique")
        for role in _ROLES:
            n = sum(t.n_features for t in self.tensors if t.role == role)
            if n > MAX_FEATURES:
                raise _fail("tensors", f"{n} {role} features, over the limit of {MAX_FEATURES}")
        if not any(t.role == "input" for t in self.tensors):
            raise _fail("tensors", "no input tensor")
        names = [n for t in self.tensors for n in t.feature_names()]
        if [f.name for f in self.features] != names:
            raise _fail("features", f"expected features {names[:8]}..., one per tensor feature")
        kinds = [k for t in self.tensors
                 for k in (("categorical", "numeric") if t.is_scores else ("numeric",) * t.groups)]
        if [f.kind for f in self.features] != kinds:
            raise _fail("features", "feature kinds do not match their tensors")
        if any(f.bins > self.bins and f.kind == "numeric" for f in self.features):
            raise _fail("features", f"a numeric feature has more than bins={self.bins} bins")

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "version": self.version, "samples": self.samples,
                "bins": self.bins, "tensors": [t.to_dict() for t in self.tensors],
                "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, d: Any) -> Profile:
        d = _mapping(d, "(top)")
        tensors, features = d.get("tensors"), d.get("features")
        if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
            raise _fail("tensors", f"expected a list of at most {MAX_TENSORS} tensors")
        if not isinstance(features, list) or len(features) > 2 * MAX_FEATURES:
            raise _fail("features", f"expected a list of at most {2 * MAX_FEATURES} features")
        profile = cls(samples=d.get("samples"), bins=d.get("bins"), version=d.get("version"),
                      tensors=tuple(TensorLayout.from_dict(t) for t in tensors),
                      features=tuple(FeatureProfile.from_dict(f) for f in features),
                      extra={k: v for k, v in d.items() if k not in _KEYS})
        size = len(profile.to_json())
        if size > MAX_PROFILE_BYTES:
            raise _fail("(top)", f"{size} bytes serialized, over the limit of {MAX_PROFILE_BYTES}")
        return profile

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        if len(text) > MAX_PROFILE_BYTES:
            raise _fail("(top)", f"{len(text)} bytes, over the limit of {MAX_PROFILE_BYTES}")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail("(top)", f"not JSON: {exc}") from exc
        return cls.from_dict(data)

    def features_of(self, role: str) -> list[FeatureProfile]:
        """The feature profiles of the ``role`` ("input" or "output") tensors, in order."""
        out: list[FeatureProfile] = []
        i = 0
        for t in self.tensors:
            if t.role == role:
                out.extend(self.features[i:i + t.n_features])
            i += t.n_features
        return out


_KEYS = ("version", "samples", "bins", "tensors", "features")


def _width(shape: tuple[int, ...], channel_axis: int) -> int:
    if not shape:
        return 1
    return shape[0] if len(shape) == 1 else shape[channel_axis]


# ------------------------------------------------------------------ building (numpy)
def _layout(name: str, role: str, array: Any, budget: int) -> TensorLayout:
    import numpy as np

    shape = tuple(int(d) for d in array.shape[1:])
    if array.ndim == 0 or array.shape[0] == 0 or len(shape) > MAX_RANK or 0 in shape:
        raise InputError(f"{role} {name!r}: expected a batch [N, ...] with N >= 1, got "
                         f"shape {list(array.shape)}")
    nhwc = len(shape) == 3 and shape[-1] <= 4 < shape[0]
    axis = len(shape) - 1 if nhwc else 0
    width = _width(shape, axis)
    if role == "output" and len(shape) == 1 and width >= 2:
        rows = array.astype(np.float64)
        probs = bool(rows.min() >= 0 and rows.max() <= 1
                     and np.allclose(rows.sum(axis=1), 1.0, atol=0.05))  # int8 grids
        return TensorLayout(name=name, role=role, kind="class_scores", shape=shape,
                            channel_axis=0, width=width, groups=min(width, MAX_BINS),
                            probabilities=probs)
    return TensorLayout(name=name, role=role, kind="values", shape=shape, channel_axis=axis,
                        width=width, groups=min(width, budget))


def _columns(layout: TensorLayout, array: Any) -> Any:
    """``[n, groups]`` float64 feature values of a batch (values tensors)."""
    import numpy as np

    x = np.asarray(array)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)  # e.g. uint8 images: sums must not wrap
    n = x.shape[0]
    if x.ndim <= 2:
        cols = x.reshape(n, -1).astype(np.float64)
    else:  # mean over all but the channel axis; einsum sums in place (no float64 copy)
        k = layout.channel_axis + 1
        before, after = math.prod(x.shape[1:k]), math.prod(x.shape[k + 1 :])
        sums = np.einsum("nacb->nc", x.reshape(n, before, x.shape[k], after))
        cols = sums.astype(np.float64) / (before * after)
    return _pool(layout, cols)


def _pool(layout: TensorLayout, cols: Any) -> Any:
    """More columns than features: contiguous groups of columns averaged."""
    import numpy as np

    if layout.groups == layout.width:
        return cols
    starts = (np.arange(layout.groups) * layout.width) // layout.groups
    sizes = np.diff(np.append(starts, layout.width))
    return np.add.reduceat(cols, starts, axis=1) / sizes


def _scores(layout: TensorLayout, array: Any) -> tuple[Any, Any]:
    """Predicted category and top-1 confidence of a batch of class scores."""
    import numpy as np

    x = np.asarray(array, dtype=np.float64).reshape(array.shape[0], layout.width)
    top = x.argmax(axis=1)
    peak = x[np.arange(len(x)), top]
    conf = peak if layout.probabilities else 1.0 / np.exp(x - peak[:, None]).sum(axis=1)
    cat = top if layout.groups == layout.width else (top * layout.groups) // layout.width
    return cat, conf


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _numeric(name: str, values: Any, bins: int) -> FeatureProfile:
    import numpy as np

    qs = np.quantile(values, np.arange(1, bins) / bins, method="lower")  # data values
    edges = sorted({_round(float(q)) for q in qs})
    if values.max() <= edges[0]:  # constant (or nearly): one edge at the value
        edges = [edges[0]]
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    shares = np.bincount(idx, minlength=len(edges) + 1) / len(values)
    return FeatureProfile(name=name, kind="numeric", edges=tuple(edges),
                          proportions=tuple(_round(float(s)) for s in shares))


def _categorical(name: str, cats: Any, count: int) -> FeatureProfile:
    import numpy as np

    shares = np.bincount(cats, minlength=count) / len(cats)
    return FeatureProfile(name=name, kind="categorical", edges=(),
                          proportions=tuple(_round(float(s)) for s in shares))


def build_profile(inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None, *,
                  bins: int = DEFAULT_BINS) -> Profile:
    """Profile of reference data: ``inputs`` (and the model's ``outputs`` on them), each
    a mapping of tensor name to a batch ``[N, ...]``; every tensor has the same N."""
    import numpy as np

    if not 2 <= bins <= MAX_BINS:
        raise InputError(f"bins must be in [2, {MAX_BINS}], not {bins}")
    roles = [("input", dict(inputs)), ("output", dict(outputs or {}))]
    if not roles[0][1] or len(roles[0][1]) + len(roles[1][1]) > MAX_TENSORS:
        raise InputError(f"a profile needs 1..{MAX_TENSORS} tensors, inputs first")
    arrays = {k: np.asarray(v) for _, d in roles for k, v in d.items()}
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"every tensor needs the same number of samples N >= 1, got {counts}")
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise InputError(f"tensor {name!r}: expected finite numbers, got {a.dtype}")
    tensors, features = [], []
    per = max(2, min(bins, next(iter(counts)) // SAMPLES_PER_BIN))  # numeric bins per feature
    for role, data in roles:
        budget = max(1, MAX_FEATURES // max(len(data), 1))
        for name, _ in data.items():
            layout = _layout(name, role, arrays[name], budget)
            tensors.append(layout)
            names = layout.feature_names()
            if layout.is_scores:
                cat, conf = _scores(layout, arrays[name])
                features += [_categorical(names[0], cat, layout.groups),
                             _numeric(names[1], conf, per)]
            else:
                cols = _columns(layout, arrays[name])
                features += [_numeric(n, cols[:, i], per) for i, n in enumerate(names)]
    profile = Profile(samples=counts.pop(), bins=bins, tensors=tuple(tensors),
                      features=tuple(features))
    size = len(profile.to_json())
    if size > MAX_PROFILE_BYTES:
        raise InputError(f"the profile is {size} bytes, over {MAX_PROFILE_BYTES}: use fewer bins")
    return profile


def batch_first(outputs: Mapping[str, Any], samples: int) -> dict[str, Any]:
    """The ``outputs`` (each stacked over ``samples`` samples on axis 0) that have one row
    per sample. A sequence model's time-major output (``[T, 1, C]`` a sample, CTC
    recognizers) stacks to ``T x samples`` rows that belong to no one sample: it is left
    out of the profile (the monitor ignores tensors the profile lacks) rather than
    making the whole profile fail."""
    return {name: value for name, value in outputs.items()
            if getattr(value, "ndim", 0) and len(value) == samples}


def profile_from_file(path: str | Path, model_path: str | Path | None = None, *,
                      bins: int = DEFAULT_BINS, max_bytes: int = 1 << 30) -> Profile:
    """A ``profile.json`` as is, or a ``DATA.npz`` of inputs keyed by input name (a
    ``label`` key is ignored; a single-input model takes any one key) profiled with the
    outputs of ``model_path`` on them."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if file.suffix.lower() == ".json":
            if size > MAX_PROFILE_BYTES:
                raise MalformedError(f"{file}: {size} bytes, over the profile limit of "
                                     f"{MAX_PROFILE_BYTES}")
            profile = Profile.from_json(file.read_bytes())
            if model_path is not None:  # a profile of another model would count nothing
                model = _load_model(model_path)
                check_model(profile, model.inputs, model.outputs, what=str(file))
            return profile
    except OSError as exc:
        raise InputError(f"cannot read profile data {file}: {exc.strerror}") from exc
    if size > max_bytes:
        raise InputError(f"{file} is {size} bytes, over the limit of {max_bytes}")
    inputs = _load_npz(file)
    outputs = None
    if model_path is not None:
        model = _load_model(model_path)
        names = {s.name for s in model.inputs}
        if len(inputs) == 1 and len(names) == 1:  # as CALIB / EVAL: any one key will do
            inputs = {next(iter(names)): next(iter(inputs.values()))}
        if set(inputs) != names:
            raise InputError(f"{file}: arrays {sorted(inputs)} do not match the model's "
                             f"inputs {sorted(names)}")
        first = next(iter(inputs.values()))
        outputs = batch_first(model.predict_all(inputs), len(first) if first.ndim else 0)
    return build_profile(inputs, outputs, bins=bins)


def _load_model(model_path: str | Path) -> Any:
    from edgeship.sdk.runtime._model import Model

    from edgeship._errors import ModelLoadError

    try:
        return Model.load(model_path)
    except ModelLoadError as exc:
        raise InputError(f"a drift profile needs a model to check it against: {exc}") from exc


def check_model(profile: Profile, inputs: Any, outputs: Any, *, what: str = "profile") -> None:
    """InputError unless every tensor of ``profile`` is one of the model's (``inputs`` /
    ``outputs``: specs with ``name`` and ``shape``, ``-1`` = any size) with the same sample
    shape, and the profile covers every model input: otherwise a device would count no
    request (or not the features the profile describes)."""
    specs = {"input": {s.name: tuple(s.shape) for s in inputs},
             "output": {s.name: tuple(s.shape) for s in outputs}}
    names = {t.name for t in profile.tensors if t.role == "input"}
    if names != set(specs["input"]):
        raise InputError(f"{what}: profile inputs {sorted(names)} do not match the model's "
                         f"inputs {sorted(specs['input'])} (a profile of another model?)")
    for t in profile.tensors:
        shape = specs[t.role].get(t.name)
        if shape is None:
            raise InputError(f"{what}: profile {t.role} {t.name!r} is not one of the model's "
                             f"{t.role}s {sorted(specs[t.role])}")
        sample = shape[1:]
        if len(sample) != len(t.shape) or any(w not in (-1, g) for w, g in
                                               zip(sample, t.shape, strict=True)):
            raise InputError(f"{what}: profile {t.role} {t.name!r} has sample shape "
                             f"{list(t.shape)}, the model's is {list(sample)} "
                             "(a profile of another model?)")


def _load_npz(file: Path) -> dict[str, Any]:
    import zipfile

    import numpy as np

    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files if k != "label"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{file}: not a readable .npz of arrays ({exc})") from exc
    if not arrays:
        raise InputError(f"{file}: holds no input arrays")
    return arrays


_MONITOR_NAMES = frozenset({"EPSILON", "DriftConfig", "DriftMonitor", "DriftReport",
                            "FeatureDrift", "ks", "psi"})


def __getattr__(name: str) -> Any:
    """The monitor's names, from their own module on first use (it imports this one)."""
    if name in _MONITOR_NAMES:
        import importlib

        return getattr(importlib.import_module("edgeship.sdk.monitor._drift_monitor"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
