"""The TUF attack list, one test each: every attack is rejected with its own error type and
nothing is written where a device would install.

A small real repository is built per test (real Ed25519 keys, real files); the "device" is
``_device_install``: parse the offer bytes, ``check_offer``, then ``write_verified`` into a
slot directory — the same calls the agent makes.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgeship.sdk import (
    KeyDir,
    Manifest,
    Offer,
    PayloadVerifier,
    Release,
    TrustedState,
    check_offer,
    write_verified,
)
from edgeship.sdk.release._keys import sign_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeship import (
    DigestMismatchError,
    ExpiredError,
    KeyRevokedError,
    LengthMismatchError,
    MalformedError,
    MismatchError,
    RollbackError,
    SignatureError,
    VerificationError,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def _artifact(seed: int, size: int = 24_000) -> bytes:
    import random

    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))


@dataclass
class Repo:
    """A fleet manager's key dir plus helpers to make signed releases and offers."""

    tmp: Path
    keys: KeyDir

    @property
    def root_pub(self) -> bytes:
        return self.keys.root_pub.read_bytes()

    def release(self, version: str, data: bytes, *, bases: tuple[Path, ...] = (),
                model: str = "net", **kw: Any) -> Release:
        art = self.tmp / f"src-{model}-{version}" / "model.int8.onnx"
        art.parent.mkdir(parents=True, exist_ok=True)
        art.write_bytes(data)
        return Release.build(art, version=version, keydir=self.keys.path,
                             out=self.tmp / f"rel-{model}-{version}", bases=bases,
                             model_name=model, now=NOW, **kw)

    def resign(self, rel: Release, key: Ed25519PrivateKey | None = None,
               **changes: Any) -> Offer:
        """The release's offer with manifest fields changed and re-signed (by ``key``)."""
        signed = {**copy.deepcopy(dict(rel.manifest_envelope["signed"])), **changes}
        key = key or self.keys.release_key(None)
        if "keyid" not in changes:
            from edgeship.sdk.release._keys import keyid_of

            signed["keyid"] = keyid_of(key)
        return Offer(manifest=sign_envelope(signed, key), keyset=self.keys.keyset_envelope())


@pytest.fixture()
def repo(tmp_path: Path) -> Repo:
    keys = KeyDir(tmp_path / "keys")
    keys.init(now=NOW - timedelta(days=1))
    return Repo(tmp_path, keys)


@pytest.fixture()
def slot(tmp_path: Path) -> Path:
    path = tmp_path / "device" / "slot-b"
    path.mkdir(parents=True)
    return path


def _device_install(repo: Repo, offer: Offer | bytes, payload: bytes, slot: Path,
                    state: TrustedState | None = None, *, base: bytes | None = None,
                    hardware: str = "cpu", now: datetime = NOW) -> TrustedState:
    wire = offer if isinstance(offer, bytes) else offer.to_bytes()
    parsed = Offer.from_bytes(wire)
    state = state or TrustedState()
    manifest = check_offer(parsed, repo.root_pub, state, model_name="net", hardware=hardware,
                           now=now)
    write_verified(manifest, payload, slot / manifest.artifact.name, base=base)
    return state.accept(parsed, manifest).installed(manifest)


def _rejects(error: type[VerificationError], slot: Path, fn: Any, *args: Any,
             **kw: Any) -> None:
    with pytest.raises(error) as info:
        fn(*args, **kw)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert os.listdir(slot) == [], "something was written to the install slot"


def test_a_good_release_installs(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    state = _device_install(repo, rel.offer(), data, slot)
    assert (slot / "model.int8.onnx").read_bytes() == data
    assert state.version == "1.0.0" and state.keyset_version == 1
    assert TrustedState.from_json(state.to_json()) == state


# arbitrary installation -------------------------------------------------------------------


def test_arbitrary_payload_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    evil = bytearray(data)
    evil[100] ^= 0xFF
    _rejects(DigestMismatchError, slot, _device_install, repo, rel.offer(), bytes(evil), slot)


def test_tampered_delta_is_rejected(repo: Repo, slot: Path) -> None:
    v1, v2 = _artifact(1), _artifact(1)[:20_000] + _artifact(2, 4_000)
    r1 = repo.release("1.0.0", v1)
    r2 = repo.release("1.1.0", v2, bases=(r1.path,))
    delta = bytearray(r2.read_delta(r2.manifest.deltas[0]))
    delta[-5] ^= 0x01
    state = TrustedState(version="1.0.0", keyid=r1.manifest.keyid, model="net")
    _rejects(DigestMismatchError, slot, _device_install, repo, r2.offer(), bytes(delta), slot,
             state, base=v1)


def test_unsigned_manifest_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    envelope = {"signed": rel.manifest_envelope["signed"], "signatures": []}
    offer = Offer(manifest=envelope, keyset=rel.keyset_envelope)
    _rejects(SignatureError, slot, _device_install, repo, offer, data, slot)


# rollback -----------------------------------------------------------------------------------


@pytest.mark.parametrize("offered", ["1.1.0", "1.0.9"])
def test_rollback_to_equal_or_older_version_is_rejected(repo: Repo, slot: Path,
                                                        offered: str) -> None:
    data = _artifact(1)
    rel = repo.release(offered, data)
    state = TrustedState(model="net", version="1.1.0", keyid=rel.manifest.keyid,
                         seen={rel.manifest.keyid: "1.1.0"})
    _rejects(RollbackError, slot, _device_install, repo, rel.offer(), data, slot, state)


def test_rollback_of_the_key_set_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    old_keyset = repo.keys.keyset_envelope()
    repo.keys.rotate(now=NOW)  # key set v2
    rel = repo.release("1.0.0", data)
    state = TrustedState().accept(rel.offer(), rel.manifest)
    assert state.keyset_version == 2
    replay = Offer(manifest=rel.manifest_envelope, keyset=old_keyset)
    _rejects(RollbackError, slot, _device_install, repo, replay, data, slot, state)


# fast-forward -------------------------------------------------------------------------------


@pytest.mark.parametrize("recover", ["rotate", "revoke"])
def test_fast_forward_is_recovered_by_rotating_the_key_set(repo: Repo, slot: Path,
                                                           recover: str) -> None:
    leaked = repo.keys.release_key(None)
    evil = repo.release("999.0.0", _artifact(9))
    state = _device_install(repo, evil.offer(), _artifact(9), slot)  # the leak succeeded
    (slot / "model.int8.onnx").unlink()
    good = repo.release("1.2.0", _artifact(2))
    _rejects(RollbackError, slot, _device_install, repo, good.offer(), _artifact(2), slot, state)

    # the root rotates the leaked key out (and, with revoke, bars it for good)
    getattr(repo.keys, recover)(now=NOW)
    good = repo.release("1.2.1", _artifact(2))
    state = _device_install(repo, good.offer(), _artifact(2), slot, state)
    assert state.version == "1.2.1" and state.keyset_version == 2
    (slot / "model.int8.onnx").unlink()
    replay = repo.resign(evil, key=leaked, version="999.0.1")
    error = KeyRevokedError if recover == "revoke" else SignatureError
    _rejects(error, slot, _device_install, repo, replay, _artifact(9), slot, state)
    older = repo.release("1.2.0", _artifact(3), model="net", force=True)
    _rejects(RollbackError, slot, _device_install, repo, older.offer(), _artifact(3), slot, state)


# indefinite freeze --------------------------------------------------------------------------


def test_expired_manifest_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data, expires_days=3)
    _rejects(ExpiredError, slot, _device_install, repo, rel.offer(), data, slot,
             now=NOW + timedelta(days=4))


def test_expired_key_set_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    repo.keys.rotate(days=2, now=NOW)
    rel = repo.release("1.0.0", data, expires_days=30)
    _rejects(ExpiredError, slot, _device_install, repo, rel.offer(), data, slot,
             now=NOW + timedelta(days=3))


# endless data -------------------------------------------------------------------------------


def test_payload_larger_than_signed_size_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    _rejects(LengthMismatchError, slot, _device_install, repo, rel.offer(), data + b"\0" * 9,
             slot)
    art = rel.manifest.artifact
    stream = PayloadVerifier(size=art.size, sha256=art.sha256)
    stream.update(data)
    with pytest.raises(LengthMismatchError):  # stops at the first byte past the size
        stream.update(b"x")


def test_oversized_offer_is_rejected(repo: Repo, slot: Path) -> None:
    rel = repo.release("1.0.0", _artifact(1))
    wire = rel.offer().to_bytes()
    _rejects(LengthMismatchError, slot, Offer.from_bytes, wire, max_size=len(wire) - 1)


# mix-and-match ------------------------------------------------------------------------------


def test_delta_for_another_base_is_rejected(repo: Repo, slot: Path) -> None:
    v1, v2 = _artifact(1), _artifact(1)[:20_000] + _artifact(2, 4_000)
    r1 = repo.release("1.0.0", v1)
    r2 = repo.release("1.1.0", v2, bases=(r1.path,))
    delta = r2.read_delta(r2.manifest.deltas[0])
    _rejects(MismatchError, slot, _device_install, repo, r2.offer(), delta, slot,
             base=_artifact(3))


def test_manifest_of_another_model_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    other = repo.release("2.0.0", data, model="othernet")
    _rejects(MismatchError, slot, _device_install, repo, other.offer(), data, slot)


def test_payload_of_another_release_is_rejected(repo: Repo, slot: Path) -> None:
    r1 = repo.release("1.0.0", _artifact(1))
    repo.release("1.1.0", _artifact(2))
    _rejects(DigestMismatchError, slot, _device_install, repo, r1.offer(), _artifact(2), slot)


# wrong software -----------------------------------------------------------------------------


def test_release_for_other_hardware_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data, hardware=["edgetpu"])
    _rejects(MismatchError, slot, _device_install, repo, rel.offer(), data, slot,
             hardware="cpu")
    _device_install(repo, rel.offer(), data, slot, hardware="edgetpu")


# key compromise -----------------------------------------------------------------------------


def test_manifest_signed_by_revoked_key_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    old = repo.keys.release_key(None)
    rel = repo.release("1.0.0", data)
    repo.keys.revoke(now=NOW)
    offer = repo.resign(rel, key=old)  # carries the new key set that revokes ``old``
    _rejects(KeyRevokedError, slot, _device_install, repo, offer, data, slot)


def test_manifest_signed_by_unknown_key_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    offer = repo.resign(rel, key=Ed25519PrivateKey.generate())
    _rejects(SignatureError, slot, _device_install, repo, offer, data, slot)


def test_key_set_not_signed_by_root_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    attacker = Ed25519PrivateKey.generate()
    keyset = sign_envelope(rel.keyset_envelope["signed"], attacker)
    offer = Offer(manifest=rel.manifest_envelope, keyset=keyset)
    _rejects(SignatureError, slot, _device_install, repo, offer, data, slot)


# tampered or malformed metadata --------------------------------------------------------------


def test_tampered_manifest_field_is_rejected(repo: Repo, slot: Path) -> None:
    data, evil = _artifact(1), _artifact(2)
    rel = repo.release("1.0.0", data)
    envelope = copy.deepcopy(dict(rel.manifest_envelope))
    import hashlib

    envelope["signed"]["artifact"]["sha256"] = hashlib.sha256(evil).hexdigest()
    offer = Offer(manifest=envelope, keyset=rel.keyset_envelope)
    _rejects(SignatureError, slot, _device_install, repo, offer, evil, slot)


def test_tampered_key_set_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    keyset = copy.deepcopy(dict(rel.keyset_envelope))
    keyset["signed"]["expires"] = "2099-01-01T00:00:00Z"
    _rejects(SignatureError, slot, _device_install, repo,
             Offer(manifest=rel.manifest_envelope, keyset=keyset), data, slot)


@pytest.mark.parametrize("wire", [b"{not json", b"\xff\xfe", b"[]", b'{"type": "edgeship-offer"}',
                                  b"[" * 100_000, json.dumps({"type": "x"}).encode()])
def test_malformed_offer_is_rejected(repo: Repo, slot: Path, wire: bytes) -> None:
    _rejects(MalformedError, slot, _device_install, repo, wire, b"", slot)


def test_manifest_with_bad_field_types_is_rejected(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data)
    offer = repo.resign(rel, artifact={"name": "../../etc/passwd", "sha256": "0" * 64,
                                       "size": 1, "format": "onnx"})
    _rejects(MalformedError, slot, _device_install, repo, offer, data, slot)
    with pytest.raises(MalformedError):
        Manifest.from_dict({**rel.manifest_envelope["signed"], "version": "1.0"})


# property tests: parsing arbitrary bytes never escapes the VerificationError tree ----------


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                              max_size=4),
    max_leaves=20,
)
_PROPS = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def signed_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Release, bytes]:
    tmp = tmp_path_factory.mktemp("props")
    keys = KeyDir(tmp / "keys")
    keys.init(now=NOW - timedelta(days=1))
    rel = Repo(tmp, keys).release("1.0.0", _artifact(1))
    return rel, keys.root_pub.read_bytes()


@_PROPS
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_as_offer_raise_only_verification_errors(data: bytes) -> None:
    try:
        Offer.from_bytes(data)
    except VerificationError:
        return
    raise AssertionError("random bytes parsed as an offer")


@_PROPS
@given(doc=_JSON)
def test_arbitrary_json_as_manifest_raises_only_malformed(doc: Any) -> None:
    for candidate in (doc, {"type": "manifest", **doc} if isinstance(doc, dict) else doc):
        try:
            Manifest.from_dict(candidate)
        except MalformedError:
            continue
        raise AssertionError(f"accepted {candidate!r}")


@_PROPS
@given(field=st.sampled_from(["model", "version", "artifact", "deltas", "golden", "hardware",
                              "created", "expires", "keyid", "type", "spec_version"]),
       value=_JSON)
def test_any_field_value_parses_or_fails_as_malformed_and_never_verifies(
        signed_release: tuple[Release, bytes], field: str, value: Any) -> None:
    rel, root_pub = signed_release
    signed = {**rel.manifest_envelope["signed"], field: value}
    try:
        manifest = Manifest.from_dict(signed)
    except MalformedError:
        return
    assert Manifest.from_dict(manifest.to_dict()) == manifest  # lossless round trip
    envelope = {**rel.manifest_envelope, "signed": signed}
    if signed != rel.manifest_envelope["signed"]:
        with pytest.raises(SignatureError):
            check_offer(Offer(manifest=envelope, keyset=rel.keyset_envelope),
                        root_pub, TrustedState(), model_name=None, hardware=None, now=NOW)


def test_naive_clock_is_read_as_utc(repo: Repo, slot: Path) -> None:
    data = _artifact(1)
    rel = repo.release("1.0.0", data, expires_days=3)
    naive = (NOW + timedelta(days=4)).replace(tzinfo=None)
    _rejects(ExpiredError, slot, _device_install, repo, rel.offer(), data, slot, now=naive)
