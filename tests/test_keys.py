"""KeyDir: init / rotate / revoke produce root-signed key sets with rising versions, and
private keys never leave mode 0600."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgeship.sdk import KeyDir, KeySet
from edgeship.sdk.release._keys import (
    keyid_of,
    public_key_from_bytes,
    sign_envelope,
    verify_envelope,
)

from edgeship import ConfigError, InputError, MalformedError, SignatureError

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _root_verifies(kd: KeyDir) -> KeySet:
    root = public_key_from_bytes(kd.root_pub.read_bytes())
    signed, _ = verify_envelope(kd.keyset_envelope(), {keyid_of(root): root}, "key set")
    return KeySet.from_dict(signed)


def test_init_rotate_revoke_versions_and_modes(tmp_path: Path) -> None:
    kd = KeyDir(tmp_path / "k")
    first = kd.init(days=10, now=NOW)
    assert first.version == 1 and first.expires == "2026-01-11T00:00:00Z"
    old = keyid_of(kd.release_key(None))
    second = kd.rotate(now=NOW)
    new = keyid_of(kd.release_key(None))
    assert second.version == 2 and set(second.keys) == {new} and second.revoked == ()
    third = kd.revoke(old[:10], now=NOW)
    assert third.version == 3 and third.revoked == (old,) and set(third.keys) == {new}
    fourth = kd.revoke(now=NOW)  # the current key: revoked and replaced
    assert fourth.version == 4 and fourth.revoked == (old, new)
    assert keyid_of(kd.release_key(None)) not in (old, new)
    assert _root_verifies(kd) == fourth
    keys = [*tmp_path.joinpath("k").glob("*.key"), *tmp_path.joinpath("k/retired").glob("*.key")]
    assert len(keys) == 4
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
    assert stat.S_IMODE(kd.path.stat().st_mode) & 0o077 == 0


def test_passphrase_is_required_and_checked(tmp_path: Path) -> None:
    kd = KeyDir(tmp_path / "k")
    kd.init(passphrase=b"s3cret")
    with pytest.raises(ConfigError, match="passphrase"):
        kd.release_key(None)
    with pytest.raises(ConfigError):
        kd.root_key(b"wrong")
    assert isinstance(kd.rotate(passphrase=b"s3cret"), KeySet)


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    kd = KeyDir(tmp_path / "k")
    kd.init()
    root = kd.root_pub.read_bytes()
    with pytest.raises(InputError):
        kd.init()
    kd.init(force=True)
    assert kd.root_pub.read_bytes() != root


def test_keyset_rejects_inconsistent_content() -> None:
    key = Ed25519PrivateKey.generate()
    good = {"type": "keyset", "version": 1, "expires": "2030-01-01T00:00:00Z",
            "keys": {keyid_of(key): {"keytype": "ed25519",
                                     "public": key.public_key().public_bytes_raw().hex()}},
            "revoked": []}
    assert KeySet.from_dict(good).to_dict()["keys"] == good["keys"]
    for bad in ({**good, "version": 0}, {**good, "expires": "soon"},
                {**good, "keys": {"0" * 64: good["keys"][keyid_of(key)]}},
                {**good, "revoked": [keyid_of(key)]}, {**good, "type": "manifest"}):
        with pytest.raises(MalformedError):
            KeySet.from_dict(bad)
    envelope = sign_envelope(good, key)
    envelope["signatures"][0]["sig"] = "00" * 64
    with pytest.raises(SignatureError, match="bad signature"):
        verify_envelope(envelope, {keyid_of(key): key.public_key()}, "key set")


def test_expiry_is_enforced() -> None:
    keyset = KeySet(version=1, keys={}, expires="2026-01-02T00:00:00Z")
    keyset.check_not_expired(NOW)
    from edgeship import ExpiredError

    with pytest.raises(ExpiredError):
        keyset.check_not_expired(NOW + timedelta(days=1))


def test_signatures_are_checked_by_the_loaded_libcrypto_as_cryptography_checks_them() -> None:
    """Issue 16 (the agent's RSS): public keys verify through the process's libcrypto
    (no cryptography import); on every case it answers as cryptography does."""
    import os
    import subprocess
    import sys

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from edgeship.sdk.release import _ed25519

    assert _ed25519.backend() == "libcrypto"  # glibc Linux with OpenSSL 3 here
    for size in (0, 1, 64, 100_000):
        private = Ed25519PrivateKey.generate()
        message = os.urandom(size)
        signature = private.sign(message)
        pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        key = public_key_from_bytes(pem)
        other = Ed25519PrivateKey.generate().sign(message)
        flips = [bytes([b ^ (1 << (i % 8)) if j == i else b for j, b in enumerate(signature)])
                 for i in (0, 31, 32, 63)]
        cases = [(signature, message), (signature, message + b"x"), (other, message),
                 (signature[:63], message), (signature + b"\0", message), (b"", message),
                 *((flip, message) for flip in flips)]
        for sig, msg in cases:
            try:
                private.public_key().verify(sig, msg)
                expected = True
            except InvalidSignature:
                expected = False
            assert key.verify(sig, msg) is expected, (size, sig.hex()[:16])
        assert key.verify(signature, message)
    # a key that is no valid curve point verifies nothing
    assert not _ed25519.PublicKey(b"\xff" * 32).verify(signature, message)
    # an agent-side check of a signature loads no cryptography at all
    signature = private.sign(b"m")
    code = ("import sys; from edgeship.sdk.release._keys import public_key_from_bytes;"
            f"k = public_key_from_bytes({pem!r}); assert k.verify({signature!r}, b'm');"
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_public_key_files_other_than_ed25519_are_one_clear_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    x25519 = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        public_key_from_bytes(x25519)
    with pytest.raises(SignatureError, match="cannot read public key"):
        public_key_from_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match="cannot read public key"):
        public_key_from_bytes(b"\x01" * 31)
