"""Model protection at rest: X25519 recipient keys, wrapped data keys, AES-256-GCM files.

An encrypted release carries a fresh random 256-bit *data key*. Every payload file
(the artifact and each delta) is ``nonce (12 bytes) || AES-256-GCM(ciphertext + tag)``
under that key (:func:`encrypt` / :func:`decrypt`). The data key is *wrapped* once per
recipient public key (a fleet key, per-device keys, the host's archive key)::

    eph      = fresh X25519 key pair, one per recipient
    shared   = X25519(eph.private, recipient.public)
    kek      = HKDF-SHA256(shared, salt = eph.public || recipient.public,
                           info = b"edgeship data key v1", length 32)
    wrapped  = AES-256-GCM(kek, nonce = 12 zero bytes, data_key, aad = recipient key id)

A zero nonce is safe because each ``kek`` encrypts exactly one message (the ephemeral key
is new for every wrap). The manifest's signed ``encryption`` section (:class:`Encryption`)
lists ``{keyid, ephemeral, wrapped}`` per recipient and the artifact's nonce.

No associated data on payload files, on purpose: the signed manifest lists the sha256 of
every encrypted file and a device checks it *before* decrypting, so a file cannot be
swapped for another role (delta for artifact) or another release; a data key is never
reused across releases, so splicing across releases fails authentication as well; and a
device rebuilding the artifact from a delta must be able to re-encrypt it to exactly the
signed bytes with ``artifact_nonce`` and nothing else.

A key id is the sha256 hex of the raw 32-byte X25519 public key. Private key files are
PEM PKCS#8 (unencrypted; written 0600), public key files PEM SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeship.sdk._fileio import make_output_dir, read_head, write_atomic

from edgeship._errors import DecryptionError, InputError, MalformedError

__all__ = [
    "ENCRYPTION_OVERHEAD",
    "SCHEME",
    "Encryption",
    "Recipient",
    "decrypt",
    "encrypt",
    "generate_key",
    "keyid_of_public",
    "load_private_key",
    "load_public_key",
    "make_encryption",
    "unwrap_data_key",
    "write_key_pair",
]

SCHEME = "x25519-hkdf-sha256-aes-256-gcm"
NONCE_SIZE = 12
TAG_SIZE = 16
ENCRYPTION_OVERHEAD = NONCE_SIZE + TAG_SIZE  # bytes an encrypted file adds to its plaintext
DATA_KEY_SIZE = 32
MAX_RECIPIENTS = 10_000
MAX_KEY_FILE = 16 * 1024  # bytes
_HKDF_INFO = b"edgeship data key v1"
_WRAP_NONCE = bytes(NONCE_SIZE)
_KEYID = re.compile(r"^[0-9a-f]{64}\Z")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

# cryptography is imported where it is used: reading a manifest's ``encryption`` section
# needs none of it, and a device serving an unencrypted release never maps it (+7.6 MB
# of RSS; see _ed25519)
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, size: int, what: str) -> bytes:
    """Strict base64 of exactly ``size`` bytes, in its one canonical spelling."""
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != size or _b64(raw) != value:
        raise MalformedError(f"{what}: expected base64 of {size} bytes")
    return raw


def short(keyid: str) -> str:
    """The 16-hex-digit prefix used in messages (as for release key ids)."""
    return keyid[:16]


@dataclass(frozen=True, kw_only=True)
class Recipient:
    """One wrapped copy of the data key: for the X25519 key ``keyid``."""

    keyid: str
    ephemeral: str  # base64 of the 32-byte ephemeral public key
    wrapped: str  # base64 of AES-256-GCM(data key) = 48 bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not _KEYID.match(self.keyid):
            raise MalformedError("encryption.recipients[].keyid: expected 64 lowercase hex")
        _unb64(self.ephemeral, 32, "encryption.recipients[].ephemeral")
        _unb64(self.wrapped, DATA_KEY_SIZE + TAG_SIZE, "encryption.recipients[].wrapped")

    @classmethod
    def from_dict(cls, d: Any) -> Recipient:
        if not isinstance(d, dict) or set(d) != {"keyid", "ephemeral", "wrapped"}:
            raise MalformedError("encryption.recipients[]: expected exactly "
                                 "{keyid, ephemeral, wrapped}")
        return cls(keyid=d["keyid"], ephemeral=d["ephemeral"], wrapped=d["wrapped"])

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "ephemeral": self.ephemeral, "wrapped": self.wrapped}


@dataclass(frozen=True, kw_only=True)
class Encryption:
    """The signed ``encryption`` section of a manifest (see the module docstring)."""

    scheme: str = SCHEME
    artifact_nonce: str  # base64 of 12 bytes: the artifact file starts with it
    recipients: tuple[Recipient, ...]

    def __post_init__(self) -> None:
        if self.scheme != SCHEME:
            raise MalformedError(f"encryption.scheme: {str(self.scheme)[:60]!r} is not "
                                 f"supported (want {SCHEME!r})")
        _unb64(self.artifact_nonce, NONCE_SIZE, "encryption.artifact_nonce")
        if not isinstance(self.recipients, tuple) or not 1 <= len(self.recipients) <= \
                MAX_RECIPIENTS:
            raise MalformedError(f"encryption.recipients: expected 1 to {MAX_RECIPIENTS}")
        if len({r.keyid for r in self.recipients}) != len(self.recipients):
            raise MalformedError("encryption.recipients: a key id is listed twice")

    @classmethod
    def from_dict(cls, d: Any) -> Encryption:
        if not isinstance(d, dict) or set(d) != {"scheme", "artifact_nonce", "recipients"}:
            raise MalformedError("manifest.encryption: expected exactly "
                                 "{scheme, artifact_nonce, recipients}")
        recipients = d["recipients"]
        if not isinstance(recipients, list) or len(recipients) > MAX_RECIPIENTS:
            raise MalformedError(f"encryption.recipients: expected a list of at most "
                                 f"{MAX_RECIPIENTS}")
        return cls(scheme=d["scheme"], artifact_nonce=d["artifact_nonce"],
                   recipients=tuple(Recipient.from_dict(r) for r in recipients))

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "artifact_nonce": self.artifact_nonce,
                "recipients": [r.to_dict() for r in self.recipients]}

    @property
    def nonce(self) -> bytes:
        """The artifact's AES-GCM nonce, decoded."""
        return base64.b64decode(self.artifact_nonce)

    @property
    def keyids(self) -> tuple[str, ...]:
        """Ids of the X25519 keys the data key is wrapped for."""
        return tuple(r.keyid for r in self.recipients)

    def recipient(self, keyid: str) -> Recipient | None:
        """The wrapped data key for ``keyid``, or None if the release is not encrypted for it."""
        return next((r for r in self.recipients if r.keyid == keyid), None)

    def only(self, keyid: str) -> Encryption:
        """This section reduced to one recipient (what a device keeps with its slot)."""
        mine = self.recipient(keyid)
        if mine is None:
            raise DecryptionError(_not_for_me(self, keyid))
        return Encryption(scheme=self.scheme, artifact_nonce=self.artifact_nonce,
                          recipients=(mine,))


# ---------------------------------------------------------------- keys

def generate_key() -> tuple[bytes, bytes]:
    """A new X25519 key pair as ``(private PEM PKCS#8, public PEM)``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    return _private_pem(key), _public_pem(key.public_key())


def _private_pem(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _raw_public(key: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(data: bytes | str | X25519PrivateKey) -> X25519PrivateKey:
    """An X25519 private key from PEM PKCS#8 or 32 raw bytes (InputError otherwise)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if isinstance(data, X25519PrivateKey):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) == 32:
        return X25519PrivateKey.from_private_bytes(raw)
    if b"PUBLIC KEY-----" in raw:
        raise InputError("this is a public key; decrypting needs the private key (.key)")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (TypeError, ValueError) as exc:
        raise InputError("not an X25519 private key (PEM PKCS#8 without passphrase, or 32 "
                         "raw bytes)") from exc
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"not an X25519 private key ({type(key).__name__.lstrip('_')}); "
                         "make one with 'edgeship keys fleet-key'")
    return key


def load_public_key(data: bytes | str | X25519PublicKey) -> X25519PublicKey:
    """An X25519 public key from PEM SubjectPublicKeyInfo or 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    if isinstance(data, X25519PublicKey):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) == 32:
        return X25519PublicKey.from_public_bytes(raw)
    if b"PRIVATE KEY-----" in raw:  # the .key given for the .pub: say so, name no bytes
        raise InputError("this is a private key; give its public half (the .pub beside "
                         "it): a private key is never needed here")
    try:
        key = serialization.load_pem_public_key(raw)
    except (TypeError, ValueError) as exc:
        raise InputError("not an X25519 public key (PEM, as 'edgeship keys fleet-key' "
                         "writes)") from exc
    if not isinstance(key, X25519PublicKey):
        raise InputError("not an X25519 public key; encryption needs the .pub written by "
                         "'edgeship keys fleet-key', not a signing key")
    return key


def keyid_of_public(key: X25519PublicKey | X25519PrivateKey | bytes | str) -> str:
    """sha256 hex of the raw 32-byte public key (of a private key or private PEM: of its
    public half; 32 raw bytes are taken as a public key)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if isinstance(key, (bytes, str)) and "PRIVATE KEY" in str(key[:40]):
        key = load_private_key(key)
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(_raw_public(load_public_key(key))).hexdigest()


def read_key_file(path: str | Path, what: str) -> bytes:
    """A key file's bytes, bounded (InputError naming ``what`` and the path)."""
    try:
        data = read_head(path, MAX_KEY_FILE)
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE:
        raise InputError(f"{what} {path}: larger than {MAX_KEY_FILE} bytes, not a key")
    return data


def write_key_pair(directory: str | Path, name: str, *,
                   force: bool = False) -> tuple[Path, Path, str]:
    """Write ``directory/<name>.key`` (0600) and ``<name>.pub``; return both paths and
    the key id. An existing key is kept unless ``force`` (it may be in use by devices)."""
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise InputError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    directory = Path(directory)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if key_path.exists() and not force:
        raise InputError(f"{key_path} already exists (use --force to replace it)")
    make_output_dir(directory, "key dir", mode=0o700)
    private_pem, public_pem = generate_key()
    write_atomic(key_path, private_pem, mode=0o600)
    write_atomic(pub_path, public_pem)
    return key_path, pub_path, keyid_of_public(public_pem)


# ---------------------------------------------------------------- wrap / unwrap

def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient,
                info=_HKDF_INFO)
    return hkdf.derive(shared)


def _wrap(data_key: bytes, public: X25519PublicKey) -> Recipient:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    eph = X25519PrivateKey.generate()
    eph_raw, rec_raw = _raw_public(eph.public_key()), _raw_public(public)
    keyid = hashlib.sha256(rec_raw).hexdigest()
    kek = _kek(eph.exchange(public), eph_raw, rec_raw)
    wrapped = AESGCM(kek).encrypt(_WRAP_NONCE, data_key, keyid.encode())
    return Recipient(keyid=keyid, ephemeral=_b64(eph_raw), wrapped=_b64(wrapped))


def new_data_key() -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM.generate_key(bit_length=256)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def make_encryption(data_key: bytes, public_keys: Iterable[X25519PublicKey | bytes | str],
                    *, artifact_nonce: bytes | None = None) -> Encryption:
    """The manifest section wrapping ``data_key`` for each key (duplicates once)."""
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError("data key must be 32 bytes")
    keys = {keyid_of_public(k): load_public_key(k) for k in public_keys}
    if not keys:
        raise InputError("encryption needs at least one recipient public key")
    return Encryption(artifact_nonce=_b64(artifact_nonce or new_nonce()),
                      recipients=tuple(_wrap(data_key, k) for k in keys.values()))


def listed_keys(encryption: Encryption) -> str:
    """The recipients' short key ids for a message: at most five, then a count (a
    release may list thousands of device keys; a status line must stay short)."""
    ids = encryption.keyids
    return ", ".join(short(k) for k in ids[:5]) + (f" and {len(ids) - 5} more"
                                                   if len(ids) > 5 else "")


def _not_for_me(encryption: Encryption, keyid: str) -> str:
    return (f"release is encrypted for keys {listed_keys(encryption)}; this device's key "
            f"is {short(keyid)}")


def unwrap_data_key(encryption: Encryption,
                    private_key: X25519PrivateKey | bytes | str) -> bytes:
    """The release's data key, unwrapped with this device's private key.

    DecryptionError when the key is not a recipient (the message lists who is) or its
    wrapped copy fails authentication.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = load_private_key(private_key)
    rec_raw = _raw_public(key.public_key())
    keyid = hashlib.sha256(rec_raw).hexdigest()
    mine = encryption.recipient(keyid)
    if mine is None:
        raise DecryptionError(_not_for_me(encryption, keyid))
    eph_raw = base64.b64decode(mine.ephemeral)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(eph_raw))
        kek = _kek(shared, eph_raw, rec_raw)
        return AESGCM(kek).decrypt(_WRAP_NONCE, base64.b64decode(mine.wrapped),
                                   keyid.encode())
    except (InvalidTag, ValueError) as exc:  # ValueError: a low-order ephemeral point
        raise DecryptionError(f"wrapped data key for key {short(keyid)} fails "
                              "authentication (tampered manifest?)") from exc


# ---------------------------------------------------------------- payload files

def encrypt(plaintext: bytes, data_key: bytes, nonce: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext)``; deterministic for a given key and nonce."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    try:
        return bytes(nonce) + AESGCM(data_key).encrypt(nonce, plaintext, None)
    except OverflowError as exc:  # cryptography's one-shot AES-GCM stops below 2 GiB
        raise InputError(f"{len(plaintext)} bytes are too large to encrypt") from exc


def decrypt(file_bytes: bytes, data_key: bytes, *, what: str = "ciphertext") -> bytes:
    """The plaintext of an encrypted file; DecryptionError if it fails authentication."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(file_bytes) < ENCRYPTION_OVERHEAD:
        raise DecryptionError(f"{what} fails authentication: truncated "
                              f"({len(file_bytes)} bytes)")
    try:
        return AESGCM(data_key).decrypt(file_bytes[:NONCE_SIZE], file_bytes[NONCE_SIZE:], None)
    except InvalidTag as exc:
        raise DecryptionError(f"{what} fails authentication: tampered or truncated, or "
                              "encrypted under another key") from exc


def recipients_of(paths: Sequence[str | Path]) -> list[X25519PublicKey]:
    """Load ``--encrypt-for`` public key files (InputError naming the bad one)."""
    keys = []
    for path in paths:
        data = read_key_file(path, "--encrypt-for")
        try:
            keys.append(load_public_key(data))
        except InputError as exc:
            raise InputError(f"--encrypt-for {path}: {exc}") from exc
    return keys


def private_key_file(path: str | Path, what: str) -> X25519PrivateKey:
    """Load a private key file, naming ``what`` and the path if it is not one."""
    data = read_key_file(path, what)
    try:
        return load_private_key(data)
    except InputError as exc:
        raise InputError(f"{what} {path}: {exc}") from exc
