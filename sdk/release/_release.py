"""Release directories: build one on the host, load and verify one anywhere (thin I/O).

Layout of ``RELDIR``::

    manifest.json              manifest envelope signed by a release key (_manifest.py)
    keyset.json                key set envelope signed by the root key (_keys.py)
    model.int8.tflite          the artifact, under its own name
    deltas/from-1.1.0.<fmt>    one delta per base version, fmt bsdiff4 | edgeship-tensor

Encrypted releases (``encrypt_for=``, see :mod:`edgeship.sdk.release._crypt`): the artifact and
every delta are stored encrypted under one fresh data key, wrapped for each recipient
public key *and* for the key dir's ``archive.key`` (created on first use), so that a later
``--base`` of this release can be decrypted on the host to compute the next delta
without any device's private key. Deltas are computed on plaintext. A plaintext release
never gets a delta from an encrypted base (the delta would reveal the base model).

:func:`verify_release` runs :func:`~edgeship.sdk.release._trust.check_offer` and
:func:`~edgeship.sdk.release._trust.check_payload` on these files, i.e. exactly what a device
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
from typing import TYPE_CHECKING, Any

from edgeship.sdk._fileio import make_output_dir, write_atomic
from edgeship.sdk.release._crypt import (
    MAX_RECIPIENTS,
    Encryption,
    decrypt,
    encrypt,
    keyid_of_public,
    load_public_key,
    make_encryption,
    new_data_key,
    new_nonce,
    read_key_file,
    unwrap_data_key,
)
from edgeship.sdk.release._delta import best_delta
from edgeship.sdk.release._keydir import KeyDir
from edgeship.sdk.release._keys import (
    KeySet,
    format_time,
    keyid_of,
    public_key_from_bytes,
    sign_envelope,
    verify_envelope,
)
from edgeship.sdk.release._manifest import ArtifactInfo, DeltaInfo, Golden, Manifest, parse_version
from edgeship.sdk.release._trust import (
    MAX_OFFER_SIZE,
    Offer,
    TrustedState,
    check_offer,
    check_payload,
    check_sized,
    load_json,
)
from edgeship.sdk.release._variants import load_variants, write_variants

from edgeship._errors import (
    DecryptionError,
    InputError,
    LengthMismatchError,
    MalformedError,
    SignatureError,
    VerificationError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from edgeship.sdk.monitor._profile import Profile

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
        """Read the release in ``reldir`` (manifest and key set; nothing is verified here)."""
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

    def offer(self, *, mode: str = "active") -> Offer:
        """The wire offer; ``mode="shadow"`` asks devices to run it as a shadow."""
        return Offer(manifest=self.manifest_envelope, keyset=self.keyset_envelope, mode=mode)

    def read_artifact(self) -> bytes:
        """The artifact's bytes (at most its signed size)."""
        art = self.manifest.artifact
        return read_bounded(self.path / art.name, art.size, art.name)

    def read_variant(self, target: str) -> bytes:
        """The bytes of the artifact compiled for hardware ``target`` (at most its size)."""
        art = self.manifest.select(target).artifact
        return read_bounded(self.path / art.name, art.size, art.name)

    def read_delta(self, info: DeltaInfo) -> bytes:
        """The bytes of the delta ``info`` (at most its signed size)."""
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
        encrypt_for: Sequence[str | Path | X25519PublicKey] = (),
        profile: Profile | None = None,
        variants: Mapping[str, str | Path] | None = None,
    ) -> Release:
        """Write a signed release of ``artifact`` to ``out`` (see the module docstring).

        ``encrypt_for``: X25519 public keys (or their .pub files) the release is encrypted
        for; ``profile``: the reference profile for drift monitoring (signed, plaintext);
        ``variants``: hardware target -> the file compiled for it (manifest ``variants``;
        a non-empty ``hardware`` list gets the variants' targets added).
        """
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
        loaded = load_variants(variants or {})
        if hardware and loaded:
            hardware = [*hardware, *(t for t, _, _ in loaded if t not in hardware)]
        if encrypt_for:  # before _Seal.new, which makes an archive key if there is none
            _check_archive(keys, bases)
        seal = _Seal.new(keys, encrypt_for) if encrypt_for else None
        make_output_dir(out, "--out")
        (out / "deltas").mkdir(exist_ok=True)
        deltas = tuple(_write_delta(out, data, version, name, Path(b), keys, seal) for b in bases)
        stored = data if seal is None else seal.artifact(data)
        taken = {artifact.name, *(d.name for d in deltas)}
        manifest = Manifest(
            model=name,
            version=version,
            artifact=ArtifactInfo(name=artifact.name, sha256=_sha256(stored), size=len(stored),
                                  format=artifact.suffix.lstrip(".") or "bin"),
            deltas=deltas,
            golden=golden_check,
            hardware=tuple(hardware),
            created=format_time(moment),
            expires=format_time(moment + timedelta(days=expires_days)),
            keyid=keyid_of(signer),
            encryption=None if seal is None else seal.encryption,
            profile=profile,
            variants=write_variants(out, loaded, taken, None if seal is None else seal.payload),
        )
        write_atomic(out / artifact.name, stored)
        write_atomic(out / "keyset.json", json.dumps(keyset_env, indent=1).encode())
        envelope = sign_envelope(manifest.to_dict(), signer)
        write_atomic(out / "manifest.json", json.dumps(envelope, indent=1).encode())
        # what a device would say about it, before anyone ships it (the archive key opens
        # this release and any encrypted base made with this key dir)
        verify_release(out, keys.root_pub, bases=bases, now=moment,
                       private_key=keys.archive_key())
        return cls.load(out)


def _check_signer_listed(keys: KeyDir, keyid: str) -> None:
    keyset = keys.keyset()
    if keyid not in keyset.keys:
        raise InputError(
            f"release key {keyid[:16]} is not in key set v{keyset.version} of {keys.path}"
        )


@dataclass(frozen=True)
class _Seal:
    """The data key and manifest section of one encrypted release being built."""

    data_key: bytes
    encryption: Encryption

    @classmethod
    def new(cls, keys: KeyDir, recipients: Sequence[Any]) -> _Seal:
        publics = [_recipient_key(r) for r in recipients]
        distinct = {keyid_of_public(p) for p in publics}
        if len(distinct) >= MAX_RECIPIENTS:  # the archive key takes one more wrap
            raise InputError(f"--encrypt-for: {len(distinct)} keys, at most "
                             f"{MAX_RECIPIENTS - 1} (one more wrap is for the archive key); "
                             "encrypt for a fleet key instead")
        archive = keys.archive_key(create=True).public_key()
        if distinct == {keyid_of_public(archive)}:  # archive.pub given as --encrypt-for
            raise InputError("--encrypt-for: only this key dir's archive key, which never "
                             "leaves this host: no device could decrypt the release; give "
                             "the fleet's or the devices' .pub")
        data_key = new_data_key()
        return cls(data_key=data_key, encryption=make_encryption(data_key, [*publics, archive]))

    def artifact(self, plaintext: bytes) -> bytes:
        return encrypt(plaintext, self.data_key, self.encryption.nonce)

    def delta(self, plaintext: bytes) -> bytes:
        return self.payload(plaintext)

    def payload(self, plaintext: bytes) -> bytes:
        """A delta or a per-target artifact: the release's data key, a nonce of its own
        (the file starts with it; a device decrypts a variant as it does the artifact)."""
        return encrypt(plaintext, self.data_key, new_nonce())


def _recipient_key(value: Any) -> X25519PublicKey:
    if not isinstance(value, (str, Path)):
        return load_public_key(value)
    data = read_key_file(value, "--encrypt-for")
    try:
        return load_public_key(data)
    except InputError as exc:
        raise InputError(f"--encrypt-for {value}: {exc}") from exc


def _write_delta(out: Path, new: bytes, version: str, model: str, base_dir: Path,
                 keys: KeyDir, seal: _Seal | None) -> DeltaInfo:
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
    if base.manifest.encryption is not None:
        base_bytes = _base_plaintext(base_dir, base_bytes, base.manifest.encryption, keys, seal)
    fmt, delta = best_delta(base_bytes, new)
    if seal is not None:
        delta = seal.delta(delta)
    rel = f"deltas/from-{base.manifest.version}.{fmt}"
    write_atomic(out / rel, delta)
    return DeltaInfo(name=rel, base_version=base.manifest.version,
                     base_sha256=base.manifest.artifact.sha256, sha256=_sha256(delta),
                     size=len(delta), format=fmt)


def _check_archive(keys: KeyDir, bases: Sequence[str | Path]) -> None:
    """An encrypted ``--base`` needs the archive key that release was made with: refuse
    early when this key dir has none (a copy without archive.key) instead of silently
    making a new one that opens no earlier release."""
    if (keys.path / "archive.key").exists():
        return
    for base_dir in bases:
        if Release.load(Path(base_dir)).manifest.encryption is not None:
            raise InputError(f"--base {base_dir} is encrypted and {keys.path} has no "
                             "archive.key to open it: copy archive.key (and archive.pub) "
                             "from the key dir that released it")


def _base_plaintext(base_dir: Path, stored: bytes, encryption: Encryption, keys: KeyDir,
                    seal: _Seal | None) -> bytes:
    """An encrypted base, opened with the key dir's archive key."""
    if seal is None:
        raise InputError(f"--base {base_dir} is encrypted: a plaintext release cannot ship a "
                         "delta from it (the delta would reveal it); add --encrypt-for")
    archive = keys.archive_key()
    if archive is None:
        raise InputError(f"--base {base_dir} is encrypted and {keys.path} has no archive.key "
                         "to open it (was it released with another key dir?)")
    try:
        return decrypt(stored, unwrap_data_key(encryption, archive), what=f"--base {base_dir}")
    except DecryptionError as exc:
        from edgeship.sdk.release._crypt import short

        if encryption.recipient(keyid_of_public(archive)) is None:
            raise InputError(f"--base {base_dir} was not released with this key dir's "
                             f"archive key ({short(keyid_of_public(archive))}): use the key "
                             "dir (and archive.key) that released it") from exc
        raise InputError(f"--base {base_dir}: cannot decrypt with {keys.path}/archive.key: "
                         f"{exc}") from exc


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
                        strict: bool = False, data: bytes | None = None) -> float | None:
    """Max |artifact(inputs) - expected|; None if the artifact cannot be run here (an
    InputError naming why, when ``strict``). With ``data`` (a decrypted artifact) the
    model is loaded from those bytes in memory; ``artifact`` then only names it."""
    import numpy as np
    from edgeship.sdk.runtime._model import Model

    from edgeship._errors import EdgeshipError

    try:
        model = (Model.load(artifact) if data is None
                 else Model.load_bytes(data, format=artifact.suffix))
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
    private_key: X25519PrivateKey | bytes | None = None,
) -> Manifest:
    """Run every device check on a release directory; return the verified manifest.

    Each delta is checked against its signed size and sha256; for each ``bases`` entry
    (a release dir of an earlier version) the matching delta is applied and the result
    checked against the artifact digest. With ``golden``, the artifact is also run on the
    manifest's golden input, as the device's health check does (HealthCheckError).

    An encrypted release is checked without a key up to its signature and digests (the
    golden check is then skipped: it cannot be run). With ``private_key`` (a recipient's
    X25519 key) the artifact and deltas are also decrypted, deltas from ``bases`` applied
    on plaintext, and the golden check run on the plaintext in memory (DecryptionError
    for a key that is not a recipient or ciphertext that fails authentication).
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
    artifact = check_payload(manifest, release.read_artifact())
    data_key = None
    if manifest.encryption is not None and private_key is not None:
        data_key = unwrap_data_key(manifest.encryption, private_key)
    nonces = {artifact[:12]: manifest.artifact.name}
    if manifest.encryption is not None and artifact[:12] != manifest.encryption.nonce:
        # a device rebuilding the artifact from a delta encrypts with artifact_nonce: every
        # delta update would fail its digest check
        raise MalformedError(f"{manifest.artifact.name} does not start with the manifest's "
                             "encryption.artifact_nonce: rebuild the release")
    for info in manifest.deltas:
        delta = release.read_delta(info)
        check_sized(delta, size=info.size, sha256=info.sha256, what=info.name)
        if manifest.encryption is not None:
            _unique_nonce(nonces, delta[:12], info.name)
        if data_key is not None:
            decrypt(delta, data_key, what=info.name)
    for base_dir in bases:
        _verify_base(manifest, release, Path(base_dir), private_key)
    for target in manifest.variants:  # what a device of that hardware downloads
        variant = check_payload(manifest.select(target), release.read_variant(target))
        if manifest.encryption is not None:
            _unique_nonce(nonces, variant[:12], manifest.variants[target].name)
        if data_key is not None:
            decrypt(variant, data_key, what=manifest.variants[target].name)
    plaintext = None if data_key is None else decrypt(artifact, data_key,
                                                       what=manifest.artifact.name)
    if golden and manifest.golden is not None and (manifest.encryption is None or plaintext):
        check_golden(manifest.golden, release.path / manifest.artifact.name, data=plaintext)
    return manifest


def _unique_nonce(seen: dict[bytes, str], nonce: bytes, name: str) -> None:
    """Two files under one data key with one nonce give away the XOR of their plaintexts
    (and GCM's authentication key): refuse such a release before it ships (a tool other
    than this one, or a broken random source, could make it)."""
    if nonce in seen:
        raise MalformedError(f"{name} is encrypted with the same nonce as {seen[nonce]} "
                             "under the same data key: rebuild the release")
    seen[nonce] = name


def _verify_base(manifest: Manifest, release: Release, base_dir: Path,
                 private_key: Any) -> None:
    base_rel = Release.load(base_dir)
    base, base_enc = base_rel.read_artifact(), base_rel.manifest.encryption
    info = manifest.delta_for(_sha256(base))
    data = release.read_delta(info) if info else b""
    if (manifest.encryption or base_enc) and private_key is None and info is not None:
        raise InputError(f"--base {base_dir}: applying a delta of an encrypted release needs "
                         "a recipient's private key (--key)")
    check_payload(manifest, data, base=base, private_key=private_key, base_encryption=base_enc)


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
        for target in release.manifest.variants:
            check_payload(release.manifest.select(target), release.read_variant(target))
        for info in release.manifest.deltas:
            check_sized(release.read_delta(info), size=info.size, sha256=info.sha256,
                        what=info.name)
    except VerificationError as exc:  # same class, but say which release
        raise type(exc)(f"release {release.path}: {exc}") from exc
    return release


def check_golden(golden: Golden, artifact: Path, *, data: bytes | None = None) -> None:
    """Run ``artifact`` (or ``data``, its decrypted bytes, in memory) on the golden input;
    HealthCheckError when it cannot or differs."""
    from edgeship._errors import HealthCheckError

    inputs, expected = golden.arrays()
    try:
        deviation = _artifact_deviation(artifact, inputs, expected, strict=True, data=data)
    except InputError as exc:
        raise HealthCheckError(f"golden check: {exc}") from exc
    if deviation is None:
        raise HealthCheckError(f"golden check: cannot run {artifact.name}")
    if not deviation <= golden.atol:
        raise HealthCheckError(f"golden check: {artifact.name} differs from the golden output "
                               f"by {deviation:.4g} (atol {golden.atol:.4g})")


def write_verified(
    manifest: Manifest, data: bytes, dest: str | Path, *, base: bytes | None = None,
    private_key: Any = None, base_encryption: Encryption | None = None,
) -> Path:
    """Check ``data`` (artifact or delta on ``base``), then write the artifact atomically
    (as signed: ciphertext for an encrypted release; see ``check_payload``).

    Nothing is written unless every check passes.
    """
    artifact = check_payload(manifest, data, base=base, private_key=private_key,
                             base_encryption=base_encryption)
    write_atomic(Path(dest), artifact)
    return Path(dest)
