"""What a device checks before it trusts an update: pure functions on bytes, state and `now`.

This is edgeship's counterpart of python-tuf's ``TrustedMetadataSet``: no files, no
network, no clock of its own. The agent (and ``edgeship verify``) call exactly these.

Contract for the device agent
-----------------------------
1. The fleet sends ONE message on ``edgeship/<fleet>/<device>/ota/offer``: the bytes of
   :meth:`Offer.to_bytes`, a JSON document
   ``{"type": "edgeship-offer", "manifest": <manifest envelope>, "keyset": <keyset envelope>}``.
   Parse it with ``Offer.from_bytes(data, max_size=MAX_OFFER_SIZE)``.
2. ``manifest = check_offer(offer, root_pub_bytes, state, model_name=..., hardware=..., now=...)``
   verifies, in this order (each failure its own :class:`~edgeship.VerificationError`):

   - key set signed by the root key (``SignatureError``), well formed (``MalformedError``),
     version not below the trusted one (``RollbackError``), not expired (``ExpiredError``);
   - manifest signed by a release key of that key set (``KeyRevokedError`` for a revoked
     signer, ``SignatureError`` for an unknown key or bad signature), well formed, not
     expired, for this model name and hardware (``MismatchError``);
   - version newer than the installed one and not below any version seen before
     (``RollbackError``) — counting only versions signed by keys the key set still lists.
3. Record it: ``state = state.accept(offer, manifest)`` and persist ``state.to_json()``
   atomically. Download the artifact (``manifest.artifact``) or, when
   ``manifest.delta_for(sha256 of the installed artifact)`` names one, that delta.
   Bound the download by the signed size: feed chunks to :class:`PayloadVerifier`
   (``LengthMismatchError`` as soon as it grows past the size, ``DigestMismatchError`` at
   the end).
4. ``artifact = check_payload(manifest, data, base=installed_bytes_or_None)`` checks the
   delta or artifact, applies the delta (:func:`edgeship.sdk.apply_delta`) and checks the
   result's size and sha256 again. Only these returned bytes may be written to a slot.
   For an encrypted release (``manifest.encryption``, see :mod:`edgeship.sdk.release._crypt`)
   they are the signed *ciphertext*; a delta needs ``private_key=`` (and
   ``base_encryption=`` when the installed base is encrypted), and the plaintext lives
   only in memory: decrypt it with ``unwrap_data_key`` + ``decrypt`` to load the model.
5. After the install passed the golden check: ``state = state.installed(manifest)``.

Fast-forward recovery: if a leaked release key signed an absurd version (say 999.0.0),
``state.seen`` remembers it under that key id; once the root rotates the key out of a
newer key set (``keys rotate``, or ``keys revoke`` which also bars it for good), versions
seen or installed under keys the key set no longer lists stop counting, so the legitimate
next release installs again. This is what TUF does by deleting its trusted timestamp and
snapshot after their keys rotate. Rollback protection survives the rotation: releases
signed by the old key no longer verify, and key sets cannot go back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edgeship.sdk.release._keys import (
    KeySet,
    canonical_bytes,
    keyid_of,
    public_key_from_bytes,
    verify_envelope,
)
from edgeship.sdk.release._manifest import DeltaInfo, Manifest
from edgeship.sdk.release._trusted import MAX_STATE_SIZE, OFFER_MODES, TrustedState
from edgeship.sdk.release._version import parse_version

from edgeship._errors import (
    DecryptionError,
    DigestMismatchError,
    LengthMismatchError,
    MalformedError,
    MismatchError,
    RollbackError,
    SignatureError,
)

if TYPE_CHECKING:
    from edgeship.sdk.release._crypt import Encryption

__all__ = [
    "MAX_OFFER_SIZE",
    "MAX_STATE_SIZE",
    "OFFER_MODES",
    "Offer",
    "PayloadVerifier",
    "TrustedState",
    "check_installed",
    "check_offer",
    "check_payload",
    "check_sized",
    "load_json",
]

MAX_OFFER_SIZE = 4 * 1024 * 1024  # bytes; a golden input is carried inside the manifest
MAX_JSON_DEPTH = 32  # a manifest envelope is 5 deep


def load_json(data: bytes, what: str, *, max_size: int) -> Any:
    """Parse untrusted JSON bytes with a size bound; only Verification errors escape."""
    if len(data) > max_size:
        raise LengthMismatchError(f"{what}: {len(data)} bytes, over the limit of {max_size}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise MalformedError(f"{what}: JSON nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedError(f"{what}: not valid JSON ({type(exc).__name__})") from exc
    _check_depth(doc, what)
    return doc


def _check_depth(doc: Any, what: str) -> None:
    """Refuse nesting deeper than any edgeship document has. json.loads only stops at the
    recursion limit counted from its caller, so a document just under it would make the
    json.dumps in canonical_bytes, called a few frames deeper, raise RecursionError."""
    level: list[Any] = [doc]
    for _ in range(MAX_JSON_DEPTH):
        level = [v for c in level if isinstance(c, (dict, list))
                 for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return
    raise MalformedError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")




@dataclass(frozen=True, kw_only=True)
class Offer:
    """The wire form of "a new release is available": manifest + key set envelopes.

    ``mode`` is *not* signed: ``"shadow"`` asks a device to install the release next to
    the active one and run it off the answer path (a broker-only attacker flipping it can
    only delay an update, never install what the release key did not sign). It is in the
    JSON only when not ``"active"``, so active offers are byte for byte as before.
    """

    manifest: Mapping[str, Any]
    keyset: Mapping[str, Any]
    mode: str = "active"
    install_window: str = ""  # "02:00-04:00" device-local (unsigned, like mode); "" = now

    def __post_init__(self) -> None:
        if self.mode not in OFFER_MODES:
            raise MalformedError(f"offer: mode {str(self.mode)[:40]!r} is not one of "
                                 f"{', '.join(OFFER_MODES)}")
        if self.install_window:
            from edgeship.sdk.release._window import parse_window

            parse_window(self.install_window)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"type": "edgeship-offer", "manifest": self.manifest,
                               "keyset": self.keyset}
        if self.mode != "active":
            doc["mode"] = self.mode
        if self.install_window:
            doc["install_window"] = self.install_window
        return canonical_bytes(doc)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_OFFER_SIZE) -> Offer:
        doc = load_json(data, "offer", max_size=max_size)
        if not isinstance(doc, dict) or doc.get("type") != "edgeship-offer":
            raise MalformedError("offer: not an edgeship offer document")
        manifest, keyset = doc.get("manifest"), doc.get("keyset")
        if not isinstance(manifest, dict) or not isinstance(keyset, dict):
            raise MalformedError("offer: 'manifest' and 'keyset' must be signed envelopes")
        mode = doc.get("mode", "active")
        if not isinstance(mode, str):
            raise MalformedError("offer: 'mode' must be a string")
        window = doc.get("install_window", "")
        if not isinstance(window, str):
            raise MalformedError("offer: 'install_window' must be a string")
        return cls(manifest=manifest, keyset=keyset, mode=mode, install_window=window)


def check_offer(
    offer: Offer,
    root_public_key: bytes,
    state: TrustedState,
    *,
    model_name: str | None,
    hardware: str | None,
    now: datetime | None = None,
) -> Manifest:
    """Verify an offer against the trusted root key and the device state; see module doc.

    ``model_name`` / ``hardware`` of ``None`` skip that check (host-side ``verify``).
    """
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:  # a naive clock reading is taken as UTC, not compared blindly
        now = now.replace(tzinfo=timezone.utc)
    keyset = _check_keyset(offer.keyset, root_public_key, state, now)
    signed, signer = verify_envelope(
        offer.manifest, keyset.public_keys(), "manifest", revoked=frozenset(keyset.revoked)
    )
    manifest = Manifest.from_dict(signed)
    if manifest.keyid and manifest.keyid != signer:
        raise SignatureError(f"manifest names key {manifest.keyid[:16]} but is signed by another")
    manifest = replace(manifest, keyid=signer)
    manifest.check_not_expired(now)
    _check_target(manifest, model_name, hardware)
    _check_version(manifest, state, keyset)
    return manifest


def check_installed(offer: Offer, root_public_key: bytes, *, model_name: str | None,
                    hardware: str | None) -> Manifest:
    """The signatures and target of a release that was installed before: key set signed by
    the root key, manifest by a key of it that is not revoked, for this model and hardware.

    Unlike :func:`check_offer` it ignores expiry and the version floor: a device rebuilding
    its lost state from what its slots hold (the agent's recovery) asks only "did the root
    key sign this?"; the caller compares the slot's bytes with ``manifest.artifact``."""
    root_key = public_key_from_bytes(root_public_key)
    signed, _ = verify_envelope(offer.keyset, {keyid_of(root_key): root_key}, "key set")
    keyset = KeySet.from_dict(signed)
    signed, signer = verify_envelope(
        offer.manifest, keyset.public_keys(), "manifest", revoked=frozenset(keyset.revoked)
    )
    manifest = replace(Manifest.from_dict(signed), keyid=signer)
    _check_target(manifest, model_name, hardware)
    return manifest


def _check_keyset(envelope: Any, root: bytes, state: TrustedState, now: datetime) -> KeySet:
    root_key = public_key_from_bytes(root)
    signed, _ = verify_envelope(envelope, {keyid_of(root_key): root_key}, "key set")
    keyset = KeySet.from_dict(signed)
    if keyset.version < state.keyset_version:
        raise RollbackError(
            f"key set v{keyset.version} is older than the trusted v{state.keyset_version}"
        )
    digest = hashlib.sha256(canonical_bytes(signed)).hexdigest()
    if keyset.version == state.keyset_version and state.keyset_sha256 not in ("", digest):
        raise RollbackError(f"key set v{keyset.version} differs from the trusted one")
    keyset.check_not_expired(now)
    return keyset


def _check_target(manifest: Manifest, model_name: str | None, hardware: str | None) -> None:
    if model_name is not None and manifest.model != model_name:
        raise MismatchError(f"release is for model {manifest.model!r}, not {model_name!r}")
    if hardware is not None and manifest.hardware and hardware not in manifest.hardware:
        targets = ",".join(manifest.hardware)
        raise MismatchError(f"release targets hardware {targets}, not {hardware!r}")


def _check_version(manifest: Manifest, state: TrustedState, keyset: KeySet) -> None:
    offered = manifest.version_tuple
    installed_counts = state.version and state.keyid in keyset.keys
    if installed_counts and offered <= parse_version(state.version):
        raise RollbackError(
            f"version {manifest.version} is not newer than installed {state.version}"
        )
    floor, text = state.floor(keyset)
    if offered < floor:
        raise RollbackError(f"version {manifest.version} is older than {text}, seen before")


class PayloadVerifier:
    """Incremental length + sha256 check for a payload that arrives in chunks."""

    def __init__(self, *, size: int, sha256: str, what: str = "payload") -> None:
        self._size, self._sha256, self._what = size, sha256, what
        self._hash = hashlib.sha256()
        self.received = 0

    def update(self, chunk: bytes) -> None:
        """Hash the next ``chunk``; more bytes than signed is a LengthMismatchError."""
        if self.received + len(chunk) > self._size:
            raise LengthMismatchError(
                f"{self._what}: more than the signed {self._size} bytes (endless data)"
            )
        self._hash.update(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """Check the whole payload: its size and sha256 must be the signed ones."""
        if self.received != self._size:
            raise LengthMismatchError(
                f"{self._what}: {self.received} bytes, signed size is {self._size}"
            )
        if self._hash.hexdigest() != self._sha256:
            raise DigestMismatchError(f"{self._what}: sha256 does not match the manifest")


def check_sized(data: bytes, *, size: int, sha256: str, what: str) -> None:
    """Length first (cheap, stops endless data), then the digest."""
    verifier = PayloadVerifier(size=size, sha256=sha256, what=what)
    verifier.update(data)
    verifier.finish()


def check_payload(
    manifest: Manifest,
    data: bytes,
    *,
    base: bytes | None = None,
    private_key: Any = None,
    base_encryption: Encryption | None = None,
) -> bytes:
    """Return the verified artifact bytes, as signed, from a full payload or a delta.

    With ``base`` given, ``data`` is the delta the manifest lists for sha256(base)
    (``MismatchError`` if it lists none); the delta is checked, applied under a size
    bound, and the result checked against the artifact's size and sha256.

    Encrypted releases (``manifest.encryption``): the result is the *ciphertext* as
    signed. ``base`` is the base artifact as stored (ciphertext when ``base_encryption``,
    the base release's section, is given). A delta is decrypted, applied to the base's
    plaintext, and the result re-encrypted with ``artifact_nonce`` before the digest check,
    which needs ``private_key`` (this device's X25519 key: object, PEM or raw bytes). A
    full payload is only digest-checked, and also authenticated when ``private_key`` is
    given (``DecryptionError`` for a wrong key or corrupt ciphertext).
    """
    art = manifest.artifact
    if base is None:
        check_sized(data, size=art.size, sha256=art.sha256, what=art.name)
        if manifest.encryption is not None and private_key is not None:
            from edgeship.sdk.release._crypt import decrypt, unwrap_data_key

            decrypt(data, unwrap_data_key(manifest.encryption, private_key), what=art.name)
        return data
    base_sha = hashlib.sha256(base).hexdigest()
    info = manifest.delta_for(base_sha)
    if info is None:
        raise MismatchError(
            f"release {manifest.version} has no delta for base {base_sha[:16]} "
            "(delta for another base?)"
        )
    check_sized(data, size=info.size, sha256=info.sha256, what=info.name)
    if manifest.encryption is None and base_encryption is None:
        result = _apply(base, data, info.format, art.size)
    else:
        result = _apply_encrypted(manifest, info, base, data, private_key, base_encryption)
    check_sized(result, size=art.size, sha256=art.sha256, what=f"{art.name} (from delta)")
    return result


def _apply(base: bytes, delta: bytes, fmt: str, max_output: int) -> bytes:
    from edgeship.sdk.release._delta import apply_delta

    return apply_delta(base, delta, fmt, max_output=max_output)


def _apply_encrypted(manifest: Manifest, info: DeltaInfo, base: bytes, delta: bytes,
                     private_key: Any, base_encryption: Encryption | None) -> bytes:
    """Decrypt base and delta as needed, apply on plaintext, re-encrypt the result."""
    from edgeship.sdk.release._crypt import ENCRYPTION_OVERHEAD, decrypt, encrypt, unwrap_data_key

    if private_key is None:
        raise DecryptionError(f"{info.name}: applying a delta to or from an encrypted "
                              "release needs this device's private key")
    if base_encryption is not None:
        base_key = unwrap_data_key(base_encryption, private_key)
        base = decrypt(base, base_key, what=f"base {info.base_version}")
    art, enc = manifest.artifact, manifest.encryption
    if enc is None:
        return _apply(base, delta, info.format, art.size)
    key = unwrap_data_key(enc, private_key)
    plain_delta = decrypt(delta, key, what=info.name)
    plain = _apply(base, plain_delta, info.format, max(art.size - ENCRYPTION_OVERHEAD, 0))
    return encrypt(plain, key, enc.nonce)
