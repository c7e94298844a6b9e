"""The fleet manager's key directory: create, rotate and revoke keys (thin file I/O).

Layout of ``KEYDIR``::

    root.key         root private key, PEM PKCS#8, mode 0600 (encrypted with a passphrase if given)
    root.pub         root public key, PEM: the only key a device trusts
    release.key      current release private key, 0600
    release.pub      its public key
    keyset.json      the current key set envelope, signed by root (see _keys.py)
    retired/         earlier release keys, ``<keyid>.key`` (0600), kept for audit
    archive.key      X25519 key (0600) made by the first encrypted release: every encrypted
    archive.pub      release also wraps its data key for it, so that ``release --base`` of
                     an encrypted release (which needs the base's plaintext) works on this
                     host without any device's private key. It never leaves the host.

``rotate`` makes a new release key, drops the old one from the key set (optionally
revoking it) and bumps the key set version; ``revoke`` revokes a key id (by default the
current release key, which is then replaced). Each change re-signs the key set with the
root key; releases made afterwards carry the new key set, and devices that see it stop
trusting what it revoked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from edgeship.sdk._fileio import make_output_dir, read_head, write_atomic
from edgeship.sdk.release._ed25519 import PublicKey
from edgeship.sdk.release._keys import (
    KeySet,
    format_time,
    keyid_of,
    public_key_from_bytes,
    public_key_pem,
    raw_public,
    sign_envelope,
    verify_envelope,
)

from edgeship._errors import ConfigError, InputError, MalformedError, VerificationError

__all__ = [
    "PASSPHRASE_ENV",
    "KeyDir",
]

PASSPHRASE_ENV = "EDGESHIP_KEY_PASSPHRASE"
DEFAULT_KEYSET_DAYS = 365
_MAX_KEY_FILE = 16 * 1024  # bytes


def _private_pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _load_private(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    try:
        data = read_head(path, _MAX_KEY_FILE)
    except OSError as exc:
        raise InputError(f"cannot read key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:  # encrypted without passphrase, or passphrase for plain key
        raise ConfigError(f"{path}: {exc} (use --passphrase-file or ${PASSPHRASE_ENV})") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot load private key (wrong passphrase?)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class KeyDir:
    """A key directory on disk; see the module docstring for its files."""

    path: Path

    @property
    def root_pub(self) -> Path:
        """The root public key devices trust."""
        return self.path / "root.pub"

    @property
    def keyset_path(self) -> Path:
        """The root-signed key set."""
        return self.path / "keyset.json"

    def init(self, *, passphrase: bytes | None = None, days: int = DEFAULT_KEYSET_DAYS,
             force: bool = False, now: datetime | None = None) -> KeySet:
        """Create root + release keys and the first key set (version 1)."""
        if (self.path / "root.key").exists() and not force:
            raise InputError(f"{self.path} already holds keys (use --force to replace them)")
        make_output_dir(self.path, "key dir", mode=0o700)
        root, release = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self._write_key("root", root, passphrase)
        self._write_key("release", release, passphrase)
        keyset = KeySet(
            version=1,
            keys={keyid_of(release): raw_public(release.public_key()).hex()},
            created=format_time(now or _now()),
            expires=format_time((now or _now()) + timedelta(days=days)),
        )
        self._sign_keyset(keyset, root)
        return keyset

    def rotate(self, *, passphrase: bytes | None = None, revoke_old: bool = False,
               days: int = DEFAULT_KEYSET_DAYS, now: datetime | None = None) -> KeySet:
        """New release key; the old one leaves the key set (and is revoked if asked)."""
        root = self.root_key(passphrase)
        old = self.release_key(passphrase)
        keyset = self.keyset(root.public_key())
        self._retire(old, passphrase)
        new = Ed25519PrivateKey.generate()
        self._write_key("release", new, passphrase)
        keys = {keyid_of(new): raw_public(new.public_key()).hex()}
        revoked = keyset.revoked + ((keyid_of(old),) if revoke_old else ())
        return self._bump(keyset, root, keys=keys, revoked=revoked, days=days, now=now)

    def revoke(self, keyid: str | None = None, *, passphrase: bytes | None = None,
               days: int = DEFAULT_KEYSET_DAYS, now: datetime | None = None) -> KeySet:
        """Revoke ``keyid`` (default: the current release key, which is then replaced)."""
        current = keyid_of(self.release_key(passphrase))
        if keyid is None or keyid == current:
            return self.rotate(passphrase=passphrase, revoke_old=True, days=days, now=now)
        root = self.root_key(passphrase)
        keyset = self.keyset(root.public_key())
        known = {*keyset.keys, *(p.stem for p in (self.path / "retired").glob("*.key"))}
        matches = sorted(k for k in known if k.startswith(keyid.lower()))
        if len(matches) != 1 and (len(keyid) != 64 or keyid.strip("0123456789abcdefABCDEF")):
            raise InputError(f"key id {keyid!r} matches {len(matches)} known keys (want one)")
        matches = matches or [keyid.lower()]
        keys = {k: v for k, v in keyset.keys.items() if k != matches[0]}
        revoked = (*keyset.revoked, matches[0])
        return self._bump(keyset, root, keys=keys, revoked=revoked,
                          days=days, now=now)

    def archive_key(self, *, create: bool = False) -> Any:
        """The host's X25519 archive key (see the module docstring); None if there is
        none yet and not ``create``."""
        from edgeship.sdk.release._crypt import private_key_file, write_key_pair

        path = self.path / "archive.key"
        if not path.exists():
            if not create:
                return None
            write_key_pair(self.path, "archive")
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:  # it opens every encrypted release ever made with this key dir
            raise InputError(f"{path} has mode {mode:04o}; it opens every encrypted "
                             f"release: make it readable by its owner only (chmod 600 {path})")
        return private_key_file(path, "archive key")

    def root_key(self, passphrase: bytes | None) -> Ed25519PrivateKey:
        """The root signing key (decrypted with ``passphrase`` if it is encrypted)."""
        return _load_private(self.path / "root.key", passphrase)

    def release_key(self, passphrase: bytes | None) -> Ed25519PrivateKey:
        """The current release signing key (decrypted with ``passphrase`` if it is encrypted)."""
        return _load_private(self.path / "release.key", passphrase)

    def keyset_envelope(self) -> dict[str, Any]:
        """The signed key set as stored (``signed`` and ``signature``)."""
        try:
            data = self.keyset_path.read_bytes()
        except OSError as exc:
            raise InputError(f"{self.keyset_path}: {exc.strerror} (run 'edgeship keys init')") \
                from exc
        try:
            doc: dict[str, Any] = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedError(f"{self.keyset_path}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
            raise MalformedError(f"{self.keyset_path}: not a signed key set envelope")
        return doc

    def keyset(self, root: Ed25519PublicKey | PublicKey | None = None) -> KeySet:
        """The current key set, checked against ``root`` (default ``root.pub``) first:
        rotate/revoke have the root sign what this returns, so an edited keyset.json must
        never get that far. They pass the root private key's own public half, since
        whoever can edit keyset.json may have replaced root.pub as well."""
        envelope = self.keyset_envelope()
        try:
            root = root if root is not None else public_key_from_bytes(
                read_head(self.root_pub, _MAX_KEY_FILE)[:_MAX_KEY_FILE])
        except OSError as exc:
            raise InputError(f"{self.root_pub}: {exc.strerror} (run 'edgeship keys init')") \
                from exc
        try:
            signed, _ = verify_envelope(envelope, {keyid_of(root): root}, "key set")
        except VerificationError as exc:
            raise type(exc)(f"{self.keyset_path}: {exc}; it was changed outside "
                            "'edgeship keys' (restore it or re-run 'keys init')") from exc
        return KeySet.from_dict(signed)

    def _bump(self, keyset: KeySet, root: Ed25519PrivateKey, *, keys: dict[str, str],
              revoked: tuple[str, ...], days: int, now: datetime | None) -> KeySet:
        moment = now or _now()
        new = replace(
            keyset,
            version=keyset.version + 1,
            keys=keys,
            revoked=tuple(dict.fromkeys(revoked)),
            created=format_time(moment),
            expires=format_time(moment + timedelta(days=days)),
        )
        self._sign_keyset(new, root)
        return new

    def _sign_keyset(self, keyset: KeySet, root: Ed25519PrivateKey) -> None:
        envelope = sign_envelope(keyset.to_dict(), root)
        write_atomic(self.keyset_path, json.dumps(envelope, indent=1).encode())

    def _write_key(self, stem: str, key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
        write_atomic(self.path / f"{stem}.key", _private_pem(key, passphrase), mode=0o600)
        write_atomic(self.path / f"{stem}.pub", public_key_pem(key.public_key()))

    def _retire(self, key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
        retired = self.path / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        write_atomic(retired / f"{keyid_of(key)}.key", _private_pem(key, passphrase), mode=0o600)


def _now() -> datetime:
    return datetime.now(timezone.utc)
