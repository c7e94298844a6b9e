"""The release manifest: what a release key signs about one model version (pure data).

``manifest.json`` is an envelope (see :mod:`edgeship.sdk.release._keys`) whose ``signed`` part is::

    {"type": "manifest", "spec_version": 1,
     "model": "mobilenet", "version": "1.2.0",
     "artifact": {"name": "model.int8.tflite", "sha256": "<hex>", "size": 1048576,
                  "format": "tflite"},
     "deltas": [{"name": "deltas/from-1.1.0.edgeship-tensor", "base_version": "1.1.0",
                 "base_sha256": "<hex>", "sha256": "<hex>", "size": 20480,
                 "format": "edgeship-tensor"}],          # or "bsdiff4"
     "golden": {"inputs": {"input": "<b64 .npy>"}, "output": "<b64 .npy>", "atol": 0.05},
     "hardware": ["cpu"],                                 # empty: any hardware
     "created": "2026-11-24T20:00:00Z", "expires": "2027-11-24T20:00:00Z",
     "keyid": "<release key id>",
     "encryption": {...},                               # optional, see _crypt.py
     "profile": {...},                                  # optional, see _profile.py
     "variants": {"ethos-u55-128": {"name": "model.int8.ethos-u55-128.tflite",
                                    "sha256": "<hex>", "size": 524288,
                                    "format": "tflite"}}}   # optional

``format`` of the artifact is its suffix without the dot (``tflite`` / ``onnx``; a variant
also ``rknn`` or ``ovir``, an OpenVINO IR packed as one file).
``golden`` may be ``null``; when present a device runs the model on ``inputs`` and
requires ``|y - output| <= atol`` before committing the install (:meth:`Golden.arrays`
decodes it; numpy is imported only then). ``encryption`` (an encrypted release: the
artifact and deltas are ciphertext, their sha256/size are of the encrypted files) and
``profile`` (the reference input/output distribution for drift monitoring) are written
only when set, so a plaintext release without a profile is exactly the manifest edgeship
wrote before they existed; ``null`` for either is refused. ``variants`` (optional, written
only when a release has any) maps a hardware target (``ethos-u55-128``, ``rk3588``, ...)
to an artifact compiled for that accelerator (a Vela TFLite, an ``.rknn``): a device whose
``hardware`` is one of them installs that file instead of ``artifact`` (see
:meth:`Manifest.select`); every other device, and every agent older than the field (it
keeps unknown fields and reads ``artifact``), installs ``artifact``. Deltas are between
generic artifacts only: a variant is always fetched whole. Unknown fields are kept on round trip so a
newer manifest still loads. Versions are semver ``X.Y.Z`` (no pre-release tags) and
compare numerically.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edgeship.sdk.release._crypt import Encryption
from edgeship.sdk.release._keys import parse_time
from edgeship.sdk.release._version import parse_version

from edgeship._errors import ExpiredError, MalformedError, MismatchError

if TYPE_CHECKING:
    from edgeship.sdk.monitor._profile import Profile

__all__ = [
    "DELTA_FORMATS",
    "ArtifactInfo",
    "DeltaInfo",
    "Golden",
    "Manifest",
    "parse_version",
]

DELTA_FORMATS = ("bsdiff4", "edgeship-tensor")
# \Z, not $ ($ also matches before a trailing newline), and [0-9], not \d (which matches
# any Unicode digit): one name or digest has exactly one spelling (versions: _version.py)
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
_MAX_DELTAS = 64
_MAX_VARIANTS = 16
_MAX_SIZE = 1 << 40


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise MalformedError(f"{what}: expected a lowercase sha256 hex digest")
    return value


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SIZE:
        raise MalformedError(f"{what}: expected a size in bytes, got {value!r}")
    return value


def _relpath(value: Any, what: str) -> str:
    """A file name inside the release dir: no absolute path, no '..' (path traversal)."""
    parts = value.split("/") if isinstance(value, str) else []
    if not parts or len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise MalformedError(f"{what}: {value!r} is not a plain file name in the release")
    return str(value)


def _spec_version(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value != 1:
        raise MalformedError(f"manifest.spec_version: {value!r} is not supported (want 1)")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedError(f"{what}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True, kw_only=True)
class ArtifactInfo:
    name: str
    sha256: str
    size: int
    format: str

    @classmethod
    def from_dict(cls, d: Any) -> ArtifactInfo:
        d = _mapping(d, "manifest.artifact")
        name = _relpath(d.get("name"), "manifest.artifact.name")
        fmt = d.get("format")
        # a device names the installed file model.<format>: no '/', '.', NUL or length
        if not isinstance(fmt, str) or not _FORMAT.match(fmt):
            raise MalformedError(f"manifest.artifact.format: {str(fmt)[:40]!r} is not a file "
                                 "suffix like 'tflite' (letters, digits, '_' or '-')")
        return cls(
            name=name,
            sha256=_sha(d.get("sha256"), "manifest.artifact.sha256"),
            size=_size(d.get("size"), "manifest.artifact.size"),
            format=fmt,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size, "format": self.format}


@dataclass(frozen=True, kw_only=True)
class DeltaInfo:
    name: str
    base_version: str
    base_sha256: str
    sha256: str
    size: int
    format: str

    @classmethod
    def from_dict(cls, d: Any) -> DeltaInfo:
        d = _mapping(d, "manifest.deltas[]")
        fmt = d.get("format")
        if fmt not in DELTA_FORMATS:
            raise MalformedError(f"manifest.deltas[].format: {fmt!r} not in {DELTA_FORMATS}")
        parse_version(d.get("base_version"))
        return cls(
            name=_relpath(d.get("name"), "manifest.deltas[].name"),
            base_version=d["base_version"],
            base_sha256=_sha(d.get("base_sha256"), "manifest.deltas[].base_sha256"),
            sha256=_sha(d.get("sha256"), "manifest.deltas[].sha256"),
            size=_size(d.get("size"), "manifest.deltas[].size"),
            format=fmt,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_version": self.base_version,
            "base_sha256": self.base_sha256,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
        }


@dataclass(frozen=True, kw_only=True)
class Golden:
    """Health-check data: inputs by name and the expected output, as base64 .npy."""

    inputs: Mapping[str, str]
    output: str
    atol: float

    @classmethod
    def from_dict(cls, d: Any) -> Golden:
        d = _mapping(d, "manifest.golden")
        inputs = _mapping(d.get("inputs"), "manifest.golden.inputs")
        atol = d.get("atol")
        ok = all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())
        if not inputs or not ok or not isinstance(d.get("output"), str):
            raise MalformedError("manifest.golden: inputs/output must be base64 .npy strings")
        if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
            raise MalformedError(f"manifest.golden.atol: expected a number >= 0, got {atol!r}")
        return cls(inputs=dict(inputs), output=d["output"], atol=float(atol))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": dict(self.inputs), "output": self.output, "atol": self.atol}

    @classmethod
    def from_arrays(cls, inputs: Mapping[str, Any], output: Any, atol: float) -> Golden:
        """A golden check from numpy arrays (stored as base64 .npy)."""
        return cls(
            inputs={k: _encode_npy(v) for k, v in inputs.items()},
            output=_encode_npy(output),
            atol=float(atol),
        )

    def arrays(self) -> tuple[dict[str, Any], Any]:
        """Decode to numpy: ``({input name: array}, expected output)``."""
        try:
            return {k: _decode_npy(v) for k, v in self.inputs.items()}, _decode_npy(self.output)
        except ValueError as exc:
            raise MalformedError(f"manifest.golden: cannot decode arrays: {exc}") from exc


def _encode_npy(array: Any) -> str:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_npy(text: str) -> Any:
    import numpy as np

    try:
        raw = base64.b64decode(text, validate=True)
        _check_npy_size(raw)
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(str(exc)) from exc


def _check_npy_size(raw: bytes) -> None:
    """The header's shape must fit in the bytes that follow it: numpy allocates the whole
    declared array before reading, so a 100-byte .npy declaring 4 TiB is a MemoryError."""
    import numpy as np

    buf = io.BytesIO(raw)
    major, _ = np.lib.format.read_magic(buf)
    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(buf)
    count = 1
    for dim in shape:
        count *= dim
    if count * max(dtype.itemsize, 1) > len(raw) - buf.tell():
        raise ValueError(f"array header declares shape {shape} of {dtype}, larger than "
                         f"the {len(raw)} bytes given")


def _variants(value: Any) -> dict[str, ArtifactInfo]:
    """``manifest.variants``: hardware target -> its artifact (a plain file name each)."""
    value = _mapping(value, "manifest.variants")
    if not value or len(value) > _MAX_VARIANTS:
        raise MalformedError(f"manifest.variants: 1 to {_MAX_VARIANTS} targets, "
                             f"got {len(value)}")
    out = {}
    for target, info in value.items():
        if not isinstance(target, str) or not _NAME.match(target):
            raise MalformedError(f"manifest.variants: {str(target)[:40]!r} is not a target name")
        try:
            out[target] = ArtifactInfo.from_dict(info)
        except MalformedError as exc:
            raise MalformedError(f"manifest.variants.{target}: {exc}") from exc
    return out


def _optional_encryption(signed: Mapping[str, Any]) -> Encryption | None:
    if "encryption" not in signed:
        return None
    return Encryption.from_dict(signed["encryption"])


def _optional_profile(signed: Mapping[str, Any]) -> Profile | None:
    if "profile" not in signed:
        return None
    value = _mapping(signed["profile"], "manifest.profile")
    from edgeship.sdk.monitor._profile import Profile

    try:
        return Profile.from_dict(value)
    except MalformedError:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # whatever the parser lets through
        raise MalformedError(f"manifest.profile: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The signed facts about one release; see the module docstring for the JSON."""

    model: str
    version: str
    artifact: ArtifactInfo
    deltas: tuple[DeltaInfo, ...] = ()
    golden: Golden | None = None
    hardware: tuple[str, ...] = ()
    created: str
    expires: str
    keyid: str = ""
    spec_version: int = 1
    encryption: Encryption | None = None
    profile: Profile | None = None
    variants: Mapping[str, ArtifactInfo] = field(default_factory=dict)
    unrecognized: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not _NAME.match(self.model):
            raise MalformedError(f"manifest.model: {self.model!r} is not a model name")
        parse_version(self.version)
        parse_time(self.created, "manifest.created")
        parse_time(self.expires, "manifest.expires")
        if len(self.deltas) > _MAX_DELTAS:
            raise MalformedError(f"manifest.deltas: {len(self.deltas)} (max {_MAX_DELTAS})")
        if not all(isinstance(h, str) and h for h in self.hardware):
            raise MalformedError("manifest.hardware: expected a list of target names")
        if self.encryption is not None and not isinstance(self.encryption, Encryption):
            raise MalformedError("manifest.encryption: expected an Encryption")
        names = [self.artifact.name, *(d.name for d in self.deltas),
                 *(v.name for v in self.variants.values())]
        if len(set(names)) != len(names):  # one file in the release dir, two meanings
            raise MalformedError("manifest: the artifact, deltas and variants must have "
                                 "distinct file names")

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        """The version as ``(major, minor, patch)``, for comparisons."""
        return parse_version(self.version)

    @classmethod
    def from_dict(cls, signed: Any) -> Manifest:
        signed = _mapping(signed, "manifest")
        if signed.get("type") != "manifest":
            raise MalformedError(f"manifest: type is {signed.get('type')!r}, expected 'manifest'")
        deltas, hardware = signed.get("deltas", []), signed.get("hardware", [])
        if not isinstance(deltas, list) or not isinstance(hardware, list):
            raise MalformedError("manifest: 'deltas' and 'hardware' must be lists")
        if len(deltas) > _MAX_DELTAS:
            raise MalformedError(f"manifest.deltas: {len(deltas)} (max {_MAX_DELTAS})")
        golden = signed.get("golden")
        known = {"type", "spec_version", "model", "version", "artifact", "deltas", "golden",
                 "hardware", "created", "expires", "keyid", "encryption", "profile",
                 "variants"}
        return cls(
            model=signed.get("model"),  # checked in __post_init__
            version=signed.get("version"),
            artifact=ArtifactInfo.from_dict(signed.get("artifact")),
            deltas=tuple(DeltaInfo.from_dict(d) for d in deltas),
            golden=None if golden is None else Golden.from_dict(golden),
            hardware=tuple(hardware),
            created=signed.get("created"),
            expires=signed.get("expires"),
            keyid=str(signed.get("keyid", "")),
            spec_version=_spec_version(signed.get("spec_version", 1)),
            encryption=_optional_encryption(signed),
            profile=_optional_profile(signed),
            variants=_variants(signed["variants"]) if "variants" in signed else {},
            unrecognized={k: v for k, v in signed.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        optional: dict[str, Any] = {}
        if self.encryption is not None:
            optional["encryption"] = self.encryption.to_dict()
        if self.profile is not None:
            optional["profile"] = self.profile.to_dict()
        if self.variants:
            optional["variants"] = {t: v.to_dict() for t, v in sorted(self.variants.items())}
        return {
            **self.unrecognized,
            **optional,
            "type": "manifest",
            "spec_version": self.spec_version,
            "model": self.model,
            "version": self.version,
            "artifact": self.artifact.to_dict(),
            "deltas": [d.to_dict() for d in self.deltas],
            "golden": None if self.golden is None else self.golden.to_dict(),
            "hardware": list(self.hardware),
            "created": self.created,
            "expires": self.expires,
            "keyid": self.keyid,
        }

    def expires_at(self) -> datetime:
        """When the manifest expires."""
        return parse_time(self.expires, "manifest.expires")

    def check_not_expired(self, now: datetime) -> None:
        """Raise ExpiredError if the manifest has expired at ``now``."""
        if now >= self.expires_at():
            raise ExpiredError(f"manifest {self.model} {self.version} expired at {self.expires}")

    def delta_for(self, base_sha256: str) -> DeltaInfo | None:
        """The delta whose base is the artifact with this sha256, if the release has one."""
        return next((d for d in self.deltas if d.base_sha256 == base_sha256), None)

    def select(self, target: str) -> Manifest:
        """This manifest as a device of hardware ``target`` installs it: with that target's
        variant as the artifact (no deltas: they apply to the generic artifact only; no
        variants: it is one device's view).
        MismatchError when the release has no variant for ``target``."""
        variant = self.variants.get(target)
        if variant is None:
            raise MismatchError(f"release {self.version} has no variant for {target!r}")
        return replace(self, artifact=variant, deltas=(), variants={})
