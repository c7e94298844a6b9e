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
