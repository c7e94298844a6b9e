"""Release directories: build one on the host, load and verify one anywhere (thin I/O).

Layout of ``RELDIR``::

    manifest.json              manifest envelope signed by a release key (_manifest.py)
    keyset.json                key set envelope signed by the root key (_keys.py)
    model.int8.tflite          the artifact, under its own name
    deltas/from-1.1.0.<fmt>    one delta per base version, fmt bsdiff4 | edgeship-tensor

:func:`verify_release` runs :func:`~edgeship.sdk._trust.check_offer` and
:func:`~edgeship.sdk._trust.check_payload` on these files, i.e. exactly what a device
runs on the bytes it receives. :meth:`Release.offer` gives the wire form the fleet
server sends (``Offer.to_bytes()``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edgeship.sdk._delta import best_delta
from edgeship.sdk._fileio import make_output_dir, write_atomic
from edgeship.sdk._keydir import KeyDir
from edgeship.sdk._keys import (
    KeySet,
    format_time,
    keyid_of,
    public_key_from_bytes,
    sign_envelope,
    verify_envelope,
)
from edgeship.sdk._manifest import ArtifactInfo, DeltaInfo, Golden, Manifest, parse_version
from edgeship.sdk._trust import (
    MAX_OFFER_SIZE,
    Offer,
    TrustedState,
    check_offer,
    check_payload,
    check_sized,
    load_json,
)

from edgeship._errors import (
    InputError,
    LengthMismatchError,
    MalformedError,
    SignatureError,
    VerificationError,
)

__all__ = ["Release", "verify_release", "write_verified"]

DEFAULT_EXPIRES_DAYS = 90
MAX_ARTIFACT_SIZE = 1 << 31  # bytes; 2 GiB, the largest file a TFLite flatbuffer addresses


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes; a larger file is a LengthMismatchError, not a hang."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise LengthMismatchError(f"{what}: {path} is larger than {limit} bytes")
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Release:
    """A release directory as parsed from disk (parsed, *not* verified: see verify)."""

    path: Path
    manifest: Manifest
    manifest_envelope: Mapping[str, Any]
    keyset_envelope: Mapping[str, Any]

    @classmethod
    def load(cls, reldir: str | Path, *, max_size: int = MAX_OFFER_SIZE) -> Release:
        path = Path(reldir)
        if not path.is_dir():
            raise InputError(f"{path} is not a release directory")
        envelope = load_json(read_bounded(path / "manifest.json", max_size, "manifest"),
                             "manifest", max_size=max_size)
        keyset = load_json(read_bounded(path / "keyset.json", max_size, "key set"),
                           "key set", max_size=max_size)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict):
            raise MalformedError("manifest: not a signed envelope")
        if not isinstance(keyset, dict):
            raise MalformedError("key set: not a signed envelope")
        manifest = Manifest.from_dict(envelope["signed"])
        return cls(path=path, manifest=manifest, manifest_envelope=envelope,
                   keyset_envelope=keyset)

    def offer(self) -> Offer:
        return Offer(manifest=self.manifest_envelope, keyset=self.keyset_envelope)

    def read_artifact(self) -> bytes:
        art = self.manifest.artifact
        return read_bounded(self.path / art.name, art.size, art.name)

    def read_delta(self, info: DeltaInfo) -> bytes:
        return read_bounded(self.path / info.name, info.size, info.name)

    @classmethod
    def build(
        cls,
        artifact: str | Path,
        *,
        version: str,
        keydir: str | Path,
        out: str | Path,
        bases: Sequence[str | Path] = (),
        golden: str | Path | None = None,
        expires_days: int = DEFAULT_EXPIRES_DAYS,
        model_name: str | None = None,
        hardware: Sequence[str] = (),
        passphrase: bytes | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> Release:
        """Write a signed release of ``artifact`` to ``out`` (see the module docstring)."""
        artifact, out, moment = Path(artifact), Path(out), now or datetime.now(timezone.utc)
        data = read_bounded(artifact, MAX_ARTIFACT_SIZE, "artifact")
        try:
            parse_version(version)
        except MalformedError as exc:
            raise InputError(f"--version: {exc}") from exc
        name = model_name or artifact.name.split(".")[0]
        keys = KeyDir(Path(keydir))
        signer, keyset_env = keys.release_key(passphrase), keys.keyset_envelope()
        _check_signer_listed(keys, keyid_of(signer))
        if (out / "manifest.json").exists() and not force:
            raise InputError(f"{out} already holds a release (use --force to overwrite)")
        # the golden check runs the artifact: a bad --golden must fail before --out is made
        golden_check = None if golden is None else load_golden(Path(golden), artifact)
        make_output_dir(out, "--out")
        (out / "deltas").mkdir(exist_ok=True)
        deltas = tuple(_write_delta(out, data, version, name, Path(b)) for b in bases)
        manifest = Manifest(
            model=name,
            version=version,
            artifact=ArtifactInfo(name=artifact.name, sha256=_sha256(data), size=len(data),
                                  format=artifact.suffix.lstrip(".") or "bin"),
            deltas=deltas,
            golden=golden_check,
            hardware=tuple(hardware),
            created=format_time(moment),
            expires=format_time(moment + timedelta(days=expires_days)),
            keyid=keyid_of(signer),
        )
        write_atomic(out / artifact.name, data)
        write_atomic(out / "keyset.json", json.dumps(keyset_env, indent=1).encode())
        envelope = sign_envelope(manifest.to_dict(), signer)
        write_atomic(out / "manifest.json", json.dumps(envelope, indent=1).encode())
        # what a device would say about it, before anyone ships it
        verify_release(out, keys.root_pub, bases=bases, now=moment)
        return cls.load(out)


def _check_signer_listed(keys: KeyDir, keyid: str) -> None:
    keyset = keys.keyset()
    if keyid not in keyset.keys:
        raise InputError(
            f"release key {keyid[:16]} is not in key set v{keyset.version} of {keys.path}"
        )


def _write_delta(out: Path, new: bytes, version: str, model: str, base_dir: Path) -> DeltaInfo:
    base = Release.load(base_dir)
    if base.manifest.model != model:
        raise InputError(f"--base {base_dir} is model {base.manifest.model!r}, not {model!r}")
    if parse_version(base.manifest.version) >= parse_version(version):
        raise InputError(f"--base {base_dir} has version {base.manifest.version}, not older "
                         f"than {version}")
    base_bytes = base.read_artifact()
    try:
        check_sized(base_bytes, size=base.manifest.artifact.size,
                    sha256=base.manifest.artifact.sha256, what=f"--base {base_dir}")
    except VerificationError as exc:
        raise InputError(str(exc)) from exc
    fmt, delta = best_delta(base_bytes, new)
    rel = f"deltas/from-{base.manifest.version}.{fmt}"
    write_atomic(out / rel, delta)
    return DeltaInfo(name=rel, base_version=base.manifest.version,
                     base_sha256=base.manifest.artifact.sha256, sha256=_sha256(delta),
                     size=len(delta), format=fmt)


# INT8 noise against an fp32 reference stays within a few steps of the output's
# magnitude (softmax outputs: up to ~8 steps measured on the fixtures, see the TFLite tests)
_MAX_GOLDEN_STEPS = 16


def load_golden(path: Path, artifact: Path | None = None) -> Golden:
    """GOLDEN.npz: input array(s) by name, ``output``, optional ``atol``.

    Without ``atol`` the tolerance comes from the artifact itself: it is run on the golden
    input, and the tolerance is 1.5x its deviation from ``output`` but at least two
    INT8 steps of the output's magnitude (kernels on another CPU may differ by a step).
    A deviation beyond quantization noise (more than ``_MAX_GOLDEN_STEPS`` steps) means the
    golden output belongs to another model: deriving a tolerance from it would make the
    health check pass anything, so that is refused (give ``atol`` to insist).
    """
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"--golden {path}: not a readable .npz ({exc})") from exc
    if "output" not in arrays:
        raise InputError(f"--golden {path}: needs an 'output' array (keys: {sorted(arrays)})")
    output = arrays.pop("output")
    atol_arr = arrays.pop("atol", None)
    if not arrays:
        raise InputError(f"--golden {path}: needs at least one input array besides 'output'")
    if atol_arr is not None:
        return Golden.from_arrays(arrays, output, float(atol_arr))
    # one INT8 step of an output quantized symmetrically over its magnitude
    step = max(float(np.max(np.abs(output))) if output.size else 0.0, 1e-3) / 127
    deviation = _artifact_deviation(artifact, arrays, output) if artifact else None
    if deviation is None:
        return Golden.from_arrays(arrays, output, 4 * step)
    # an INT8 output step is never finer than 1/256 (the fixed softmax/sigmoid scale)
    noise_step = max(step, 1 / 256)
    if deviation > _MAX_GOLDEN_STEPS * noise_step:
        raise InputError(f"--golden {path}: the artifact's output differs from 'output' by "
                         f"{deviation:.4g}, {deviation / noise_step:.0f} INT8 steps; is it the "
                         "golden output of another model? (add 'atol' to the npz to insist)")
    return Golden.from_arrays(arrays, output, max(1.5 * deviation, 2 * step))


def _artifact_deviation(artifact: Path, inputs: dict[str, Any], expected: Any, *,
                        strict: bool = False) -> float | None:
    """Max |artifact(inputs) - expected|; None if the artifact cannot be run here (an
    InputError naming why, when ``strict``)."""
    import numpy as np
    from edgeship.sdk._model import Model

    from edgeship._errors import EdgeshipError

    try:
        model = Model.load(artifact)
        if len(inputs) == 1 and len(model.inputs) == 1:
            inputs = {model.inputs[0].name: next(iter(inputs.values()))}
        got = model.predict_all(inputs)[model.outputs[0].name]
    except EdgeshipError as exc:
        if strict:
            raise InputError(f"cannot run {artifact.name}: {exc}") from exc
        return None
    if got.shape != expected.shape:
        raise InputError(f"--golden: output shape {list(expected.shape)}, the artifact gives "
                         f"{list(got.shape)}")
    return float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0


def verify_release(
    reldir: str | Path,
    root_public_key: str | Path | bytes,
    *,
    model_name: str | None = None,
    hardware: str | None = None,
    state: TrustedState | None = None,
    bases: Sequence[str | Path] = (),
    golden: bool = False,
    now: datetime | None = None,
) -> Manifest:
    """Run every device check on a release directory; return the verified manifest.

    Each delta is checked against its signed size and sha256; for each ``bases`` entry
    (a release dir of an earlier version) the matching delta is applied and the result
    checked against the artifact digest. With ``golden``, the artifact is also run on the
    manifest's golden input, as the device's health check does (HealthCheckError).
    """
    root = (root_public_key if isinstance(root_public_key, bytes)
            else read_bounded(Path(root_public_key), 16 * 1024, "root key"))
    try:
        public_key_from_bytes(root)
    except SignatureError as exc:  # name the file: "cannot read public key" alone is a riddle
        where = "" if isinstance(root_public_key, bytes) else f" {root_public_key}"
        raise SignatureError(f"root key{where}: {exc}") from exc
    release = Release.load(reldir)
    manifest = check_offer(release.offer(), root, state or TrustedState(),
                           model_name=model_name, hardware=hardware, now=now)
    check_payload(manifest, release.read_artifact())
    for info in manifest.deltas:
        check_sized(release.read_delta(info), size=info.size, sha256=info.sha256, what=info.name)
    for base_dir in bases:
        base = Release.load(base_dir).read_artifact()
        info = manifest.delta_for(_sha256(base))
        data = release.read_delta(info) if info else b""
        check_payload(manifest, data, base=base)
    if golden and manifest.golden is not None:
        check_golden(manifest.golden, release.path / manifest.artifact.name)
    return manifest


def self_check(reldir: str | Path) -> Release:
    """What a host can check of a release without the root key: the manifest is signed
    by a key of the key set shipped with it, and every payload matches it. Catches a
    tampered manifest, artifact or delta before it is served or offered to a fleet."""
    release = Release.load(reldir)
    keyset_doc = release.keyset_envelope.get("signed")
    if not isinstance(keyset_doc, Mapping):
        raise MalformedError(f"{release.path}: key set is not a signed envelope")
    try:
        keyset = KeySet.from_dict(keyset_doc)
        verify_envelope(release.manifest_envelope, keyset.public_keys(), "manifest",
                        revoked=frozenset(keyset.revoked))
        check_payload(release.manifest, release.read_artifact())
        for info in release.manifest.deltas:
            check_sized(release.read_delta(info), size=info.size, sha256=info.sha256,
                        what=info.name)
    except VerificationError as exc:  # same class, but say which release
        raise type(exc)(f"release {release.path}: {exc}") from exc
    return release


def check_golden(golden: Golden, artifact: Path) -> None:
    """Run ``artifact`` on the golden input; HealthCheckError when it cannot or differs."""
    from edgeship._errors import HealthCheckError

    inputs, expected = golden.arrays()
    try:
        deviation = _artifact_deviation(artifact, inputs, expected, strict=True)
    except InputError as exc:
        raise HealthCheckError(f"golden check: {exc}") from exc
    if deviation is None:
        raise HealthCheckError(f"golden check: cannot run {artifact.name}")
    if not deviation <= golden.atol:
        raise HealthCheckError(f"golden check: {artifact.name} differs from the golden output "
                               f"by {deviation:.4g} (atol {golden.atol:.4g})")


def write_verified(
    manifest: Manifest, data: bytes, dest: str | Path, *, base: bytes | None = None
) -> Path:
    """Check ``data`` (artifact or delta on ``base``), then write the artifact atomically.

    Nothing is written unless every check passes.
    """
    artifact = check_payload(manifest, data, base=base)
    write_atomic(Path(dest), artifact)
    return Path(dest)
