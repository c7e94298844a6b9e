"""Ed25519 keys, signed envelopes and the root-signed key set (pure logic, no files).

Every signed document edgeship ships is an *envelope*::

    {"signed": {...}, "signatures": [{"keyid": "<hex>", "sig": "<hex>"}]}

The signature covers the *canonical* bytes of ``signed``: JSON with sorted keys, no
whitespace, UTF-8 (:func:`canonical_bytes`). A key id is the sha256 hex of the raw
32-byte Ed25519 public key (:func:`keyid_of`).

The key set (``keyset.json``) is an envelope signed by the **root** key. Its ``signed``
part is::

    {"type": "keyset", "version": 3, "created": "...Z", "expires": "...Z",
     "keys": {"<keyid>": {"keytype": "ed25519", "public": "<hex raw key>"}},
     "revoked": ["<keyid>", ...]}

``keys`` are the release keys allowed to sign manifests; ``revoked`` lists ids that
must never be trusted again (a device that sees one gets :class:`KeyRevokedError`).
Devices trust only the root public key (``root.pub``, PEM or raw 32 bytes); the root
never rotates in this design, release keys do.

Public keys read here are :class:`~edgeship.sdk.release._ed25519.PublicKey` values, checked
without loading ``cryptography`` (see _ed25519: the device agent's RSS); signing and
private keys (the host) use ``cryptography``, imported where they are used.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edgeship.sdk.release._ed25519 import PublicKey, raw_from_pem

from edgeship._errors import (
    ExpiredError,
    KeyRevokedError,
    MalformedError,
    SignatureError,
)

__all__ = [
    "KeySet",
    "canonical_bytes",
    "format_time",
    "keyid_of",
    "parse_envelope",
    "parse_time",
    "public_key_from_bytes",
    "public_key_pem",
    "sign_envelope",
    "verify_envelope",
]

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MAX_SIGNATURES = 16
_MAX_KEYS = 64  # release keys listed at once
_MAX_REVOKED = 4096
_KEYID = re.compile(r"^[0-9a-f]{64}\Z")

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def canonical_bytes(obj: Any) -> bytes:
    """The exact bytes a signature covers: sorted keys, no spaces, UTF-8.

    JSON lets a string hold a lone UTF-16 surrogate (``"\\ud800"``), which has no UTF-8
    form: such a document is malformed (it reaches here from the wire before any
    signature is checked, so it must not escape as a UnicodeEncodeError).
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except RecursionError as exc:
        raise MalformedError("signed document is nested too deeply") from exc
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise MalformedError("signed document holds a lone surrogate (not UTF-8 text)") from exc


def format_time(moment: datetime) -> str:
    """UTC, second resolution, ``Z`` suffix: the only time format in signed documents."""
    return moment.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def parse_time(text: Any, what: str) -> datetime:
    """Parse a ``...Z`` time from a signed document; MalformedError names the field."""
    if not isinstance(text, str):
        raise MalformedError(f"{what}: expected a time string, got {type(text).__name__}")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise MalformedError(f"{what}: bad time {text!r} (want YYYY-MM-DDTHH:MM:SSZ)") from exc


def raw_public(key: PublicKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, PublicKey):
        return key.raw
    from cryptography.hazmat.primitives import serialization

    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def keyid_of(key: PublicKey | Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """sha256 hex of the raw public key."""
    if not isinstance(key, PublicKey):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if isinstance(key, Ed25519PrivateKey):  # (cryptography is loaded: it made ``key``)
            key = key.public_key()
    return hashlib.sha256(raw_public(key)).hexdigest()


def public_key_pem(key: PublicKey | Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, PublicKey):
        key = Ed25519PublicKey.from_public_bytes(key.raw)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_bytes(data: bytes) -> PublicKey:
    """Load a public key given as PEM, raw 32 bytes, or 64 hex characters."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            raw = raw_from_pem(data)
            return PublicKey(raw) if raw is not None else _other_pem(data)
        stripped = data.strip()
        if len(stripped) == 64:
            return PublicKey(bytes.fromhex(stripped.decode("ascii")))
        return PublicKey(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"cannot read public key: {exc}") from exc


def _other_pem(data: bytes) -> PublicKey:
    """A PEM key that is not plainly an Ed25519 SubjectPublicKeyInfo: what cryptography
    reads it as (another key type, a damaged file -> one clear error)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("public key is not an Ed25519 key")
    return PublicKey(raw_public(key))


def sign_envelope(signed: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Wrap ``signed`` in an envelope with one signature by ``key``."""
    sig = key.sign(canonical_bytes(dict(signed)))
    return {"signed": dict(signed), "signatures": [{"keyid": keyid_of(key), "sig": sig.hex()}]}


def parse_envelope(obj: Any, what: str) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Check an envelope's shape; return ``signed`` and the (keyid, signature) pairs."""
    if not isinstance(obj, dict) or not isinstance(obj.get("signed"), dict):
        raise MalformedError(f"{what}: not a signed envelope (no 'signed' object)")
    sigs = obj.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError(f"{what}: unsigned (no signatures)")
    if len(sigs) > _MAX_SIGNATURES:
        raise MalformedError(f"{what}: {len(sigs)} signatures (max {_MAX_SIGNATURES})")
    pairs: list[tuple[str, bytes]] = []
    for entry in sigs:
        if not isinstance(entry, dict):
            raise SignatureError(f"{what}: malformed signature entry")
        keyid, sig = entry.get("keyid"), entry.get("sig")
        if not isinstance(keyid, str) or not isinstance(sig, str):
            raise SignatureError(f"{what}: malformed signature entry")
        try:
            pairs.append((keyid, bytes.fromhex(sig)))
        except ValueError as exc:
            raise SignatureError(f"{what}: signature is not hex") from exc
    return obj["signed"], pairs


def verify_envelope(
    obj: Any,
    trusted: Mapping[str, PublicKey | Ed25519PublicKey],
    what: str,
    *,
    revoked: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], str]:
    """Verify that one signature over ``signed`` comes from a ``trusted`` key.

    Returns ``(signed, keyid)``. Raises KeyRevokedError when the only signer is revoked,
    SignatureError for an unknown key or a signature that does not verify.
    """
    signed, pairs = parse_envelope(obj, what)
    message = canonical_bytes(signed)
    for keyid, sig in pairs:
        key = trusted.get(keyid)
        if key is None or keyid in revoked:
            continue
        if not isinstance(key, PublicKey):
            key = PublicKey(raw_public(key))
        if key.verify(sig, message):
            return signed, keyid
    signers = [keyid for keyid, _ in pairs]
    if any(keyid in revoked for keyid in signers):
        raise KeyRevokedError(f"{what}: signed by revoked key {signers[0][:16]}")
    if not any(keyid in trusted for keyid in signers):
        raise SignatureError(f"{what}: signed by unknown key {signers[0][:16]}")
    raise SignatureError(f"{what}: bad signature (content does not match its signature)")


@dataclass(frozen=True, kw_only=True)
class KeySet:
    """The release keys the root allows, with version, expiry and revoked ids."""

    version: int
    keys: Mapping[str, str]  # keyid -> raw public key, hex
    revoked: tuple[str, ...] = ()
    created: str = ""
    expires: str = ""
    unrecognized: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise MalformedError(f"keyset: version must be an integer >= 1, got {self.version!r}")
        parse_time(self.expires, "keyset.expires")
        for keyid, public in self.keys.items():
            key = public_key_from_bytes(bytes.fromhex(public)) if _is_hex(public) else None
            if key is None or keyid_of(key) != keyid:
                raise MalformedError(f"keyset: key {keyid[:16]} does not match its id")
        if set(self.keys) & set(self.revoked):
            raise MalformedError("keyset: a key is both listed and revoked")

    @classmethod
    def from_dict(cls, signed: Mapping[str, Any]) -> KeySet:
        if signed.get("type") != "keyset":
            raise MalformedError(f"keyset: type is {signed.get('type')!r}, expected 'keyset'")
        keys, revoked = signed.get("keys"), signed.get("revoked", [])
        if not isinstance(keys, dict) or not isinstance(revoked, list):
            raise MalformedError("keyset: 'keys' must be an object and 'revoked' a list")
        if len(keys) > _MAX_KEYS or len(revoked) > _MAX_REVOKED:
            raise MalformedError(f"keyset: more than {_MAX_KEYS} keys or {_MAX_REVOKED} revoked")
        public: dict[str, str] = {}
        for keyid, entry in keys.items():
            if not isinstance(entry, dict) or entry.get("keytype") != "ed25519":
                raise MalformedError(f"keyset: key {str(keyid)[:16]} is not an ed25519 entry")
            public[keyid] = entry.get("public", "")
        # compared to signer ids byte for byte: only the one spelling keyid_of gives
        if not all(isinstance(r, str) and _KEYID.match(r) for r in revoked):
            raise MalformedError("keyset: revoked ids must be key ids (64 lowercase hex)")
        known = {"type", "version", "keys", "revoked", "created", "expires"}
        version: Any = signed.get("version")  # JSON: __post_init__ checks both
        expires: Any = signed.get("expires")
        return cls(
            version=version,
            keys=public,
            revoked=tuple(revoked),
            created=str(signed.get("created", "")),
            expires=expires,
            unrecognized={k: v for k, v in signed.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "type": "keyset",
            "version": self.version,
            "created": self.created,
            "expires": self.expires,
            "keys": {k: {"keytype": "ed25519", "public": v} for k, v in self.keys.items()},
            "revoked": list(self.revoked),
        }

    def public_keys(self) -> dict[str, PublicKey]:
        """The release public keys, by key id."""
        return {k: public_key_from_bytes(bytes.fromhex(v)) for k, v in self.keys.items()}

    def expires_at(self) -> datetime:
        """When the key set expires."""
        return parse_time(self.expires, "keyset.expires")

    def check_not_expired(self, now: datetime) -> None:
        """Raise ExpiredError if the key set has expired at ``now``."""
        if now >= self.expires_at():
            raise ExpiredError(f"key set v{self.version} expired at {self.expires}")


def _is_hex(text: Any) -> bool:
    if not isinstance(text, str) or len(text) != 64:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
