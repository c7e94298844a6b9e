"""Attacks found in a security review of the release format and the device checks.

Each test is an attack that got past (or crashed) the checks before its fix. They drive
the same pure functions the agent runs on the bytes it receives (``Offer.from_bytes``,
``check_offer``, ``Manifest.from_dict``, ``TrustedState.from_json``), and each attack must
end in a :class:`~edgeship.VerificationError` subclass: anything else escapes the agent's
``except EdgeshipError`` and takes the OTA handler down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgeship.sdk import Offer, TrustedState, check_offer
from edgeship.sdk.release._keys import KeySet, canonical_bytes, keyid_of, raw_public, sign_envelope
from edgeship.sdk.release._manifest import ArtifactInfo
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeship import MalformedError, VerificationError

# --- broker attacker: no key at all -------------------------------------------------------


def _keyset(root: Ed25519PrivateKey) -> dict[str, object]:
    release = Ed25519PrivateKey.generate()
    keyset = KeySet(version=1, keys={keyid_of(release): raw_public(release.public_key()).hex()},
                    created="2026-01-01T00:00:00Z", expires="2099-01-01T00:00:00Z")
    return sign_envelope(keyset.to_dict(), root)


@pytest.mark.parametrize("where", ["keyset", "manifest"])
def test_offer_with_a_lone_surrogate_is_malformed_not_a_crash(where: str) -> None:
    # JSON allows "\ud800" (a lone UTF-16 surrogate); Python parses it into a str that
    # cannot be encoded as UTF-8, so computing the signed bytes raised UnicodeEncodeError
    # before any signature was checked: anyone who can publish on the broker (replaying
    # the public key set) could crash the device's offer handler.
    root = Ed25519PrivateKey.generate()
    hostile = {"signed": {"type": "\ud800"}, "signatures": [{"keyid": "ab", "sig": "00"}]}
    keyset = hostile if where == "keyset" else _keyset(root)
    doc = {"type": "edgeship-offer", "manifest": hostile, "keyset": keyset}
    offer = Offer.from_bytes(json.dumps(doc).encode())  # ensure_ascii: the wire has \ud800
    with pytest.raises(MalformedError, match="surrogate"):
        check_offer(offer, raw_public(root.public_key()), TrustedState(), model_name="net",
                    hardware="cpu")


def test_canonical_bytes_refuses_what_utf8_cannot_carry() -> None:
    with pytest.raises(MalformedError, match="surrogate"):
        canonical_bytes({"name": "\udfff"})


# --- leaked release key: it may install a model, it must not get more ---------------------


def _signed_offer(root: Ed25519PrivateKey, **changes: object) -> Offer:
    """An offer whose manifest is signed by a valid release key (say, a leaked one)."""
    release = Ed25519PrivateKey.generate()
    keyset = KeySet(version=1, keys={keyid_of(release): raw_public(release.public_key()).hex()},
                    created="2026-01-01T00:00:00Z", expires="2099-01-01T00:00:00Z")
    signed = {"type": "manifest", "spec_version": 1, "model": "net", "version": "1.0.0",
              "artifact": {"name": "model.onnx", "sha256": "0" * 64, "size": 10,
                           "format": "onnx"},
              "deltas": [], "golden": None, "hardware": [], "created": "2026-01-01T00:00:00Z",
              "expires": "2099-01-01T00:00:00Z", "keyid": keyid_of(release), **changes}
    return Offer(manifest=sign_envelope(signed, release),
                 keyset=sign_envelope(keyset.to_dict(), root))


def _check(offer: Offer, root: Ed25519PrivateKey) -> object:
    return check_offer(Offer.from_bytes(offer.to_bytes()), raw_public(root.public_key()),
                       TrustedState(), model_name="net", hardware="cpu")


def test_signed_offer_helper_is_accepted() -> None:
    root = Ed25519PrivateKey.generate()
    assert _check(_signed_offer(root), root).artifact.format == "onnx"  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["onnx/../../../../../tmp/evil", "../x", "onnx\x00", "a b",
                                 "." , "x" * 65])
def test_artifact_format_cannot_escape_the_slot(fmt: str) -> None:
    # The agent stores the artifact as slots/<slot>/model.<format>, so a format holding
    # '/' or '..' wrote a file anywhere the agent may write (a leaked release key turned
    # into arbitrary file write on every device); NUL made open() raise ValueError.
    root = Ed25519PrivateKey.generate()
    artifact = {"name": "model.onnx", "sha256": "0" * 64, "size": 10, "format": fmt}
    with pytest.raises(MalformedError, match="format"):
        _check(_signed_offer(root, artifact=artifact), root)


def test_agent_store_stays_in_its_dir_for_every_format_a_manifest_can_carry(
    tmp_path: Path,
) -> None:
    # the effect the check above prevents, on the agent's real store
    from edgeship.agent._store import Store

    store = Store(tmp_path / "device")
    artifact = {"name": "model.onnx", "sha256": "0" * 64, "size": 10, "format": "onnx"}
    for fmt in ["onnx", "tflite", "bin", "x/../../../../escaped"]:
        try:
            ArtifactInfo.from_dict({**artifact, "format": fmt})
        except MalformedError:
            continue
        store.write_slot("b", fmt, b"model")
    assert not (tmp_path / "escaped").exists()
    assert sorted(p.name for p in (tmp_path / "device" / "slots" / "b").iterdir()) == ["model.bin"]


@pytest.mark.parametrize("shape", [(1 << 40,), (1 << 20, 1 << 20), (1 << 62, 4)])
def test_golden_array_declaring_more_than_it_holds_is_malformed(shape: tuple[int, ...]) -> None:
    # A golden .npy is a header plus data; numpy allocates the declared shape before it
    # reads, so a few bytes declaring terabytes raised MemoryError out of Golden.arrays()
    # (the device's health check and `edgeship verify --golden`) instead of MalformedError.
    import base64
    import io

    import numpy as np
    from edgeship.sdk.release._manifest import Golden

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    bomb = base64.b64encode(header.getvalue() + b"\0" * 64).decode()
    good = Golden.from_arrays({"x": np.zeros((1, 4), np.float32)}, np.ones(3), 0.1)
    assert good.arrays()[1].tolist() == [1.0, 1.0, 1.0]
    for golden in (Golden(inputs={"x": bomb}, output=good.output, atol=0.1),
                   Golden(inputs=good.inputs, output=bomb, atol=0.1)):
        with pytest.raises(MalformedError, match="larger than"):
            golden.arrays()


# --- the device's own state on disk -------------------------------------------------------


@pytest.mark.parametrize("change", [{"version": "banana"}, {"version": "01.2.3"},
                                    {"keyset_version": True}, {"keyset_version": -3},
                                    {"sha256": "not-a-digest"}, {"keyset_sha256": "AB" * 32}])
def test_garbled_trusted_state_is_refused_when_read(change: dict[str, object]) -> None:
    # A state whose installed version is not semver used to load, and then every offer
    # failed with MalformedError in check_offer: the device could never update again.
    good = TrustedState(keyset_version=2, keyset_sha256="a" * 64, model="net",
                        version="1.2.3", sha256="b" * 64, keyid="c" * 64,
                        seen={"c" * 64: "1.2.3"})
    assert TrustedState.from_json(good.to_json()) == good
    assert TrustedState.from_json(TrustedState().to_json()) == TrustedState()
    with pytest.raises(MalformedError, match=r"trusted state|semver"):
        TrustedState.from_json(json.dumps({**good.to_dict(), **change}))


# --- one meaning, one spelling ------------------------------------------------------------


@pytest.mark.parametrize("text", ["1.2.3\n", "1\u0660.0.0", "1.2.3\u0663", "1.\u0662.3"])
def test_a_version_has_one_spelling(text: str) -> None:
    # '$' matched before a trailing newline and '\d' matched any Unicode digit, so
    # "1.2.3\n" and "1.<ARABIC-INDIC TWO>.3" were both version 1.2.3: distinct strings for
    # one version (the agent compares version strings to skip repeated offers and to name
    # chunk requests; delta file names embed them).
    from edgeship.sdk.release._manifest import parse_version

    with pytest.raises(MalformedError, match="semver"):
        parse_version(text)


@pytest.mark.parametrize(("field", "value"), [("model", "net\n"), ("sha256", "0" * 64 + "\n"),
                                              ("name", "model.onnx\n"), ("format", "onnx\n")])
def test_names_and_digests_refuse_a_trailing_newline(field: str, value: str) -> None:
    root = Ed25519PrivateKey.generate()
    artifact = {"name": "model.onnx", "sha256": "0" * 64, "size": 10, "format": "onnx"}
    changes: dict[str, object] = ({"model": value} if field == "model"
                                  else {"artifact": {**artifact, field: value}})
    with pytest.raises(MalformedError):
        _check(_signed_offer(root, **changes), root)


# --- the fleet manager's key dir ----------------------------------------------------------


@pytest.mark.parametrize(("operation", "fake_root_pub"), [
    ("revoke", False), ("rotate", False), ("release", False), ("revoke", True),
    ("rotate", True)])  # a release is signed by the release key, not the root
def test_root_never_re_signs_a_tampered_key_set(tmp_path: Path, operation: str,
                                                fake_root_pub: bool) -> None:
    # keys rotate / revoke load keyset.json, change it and sign the result with the root
    # key. The file was not checked first, so someone who could write keyset.json (but
    # not read the passphrase-protected root key) slipped in their own release key, or
    # struck a revoked one from 'revoked', and the next rotation had the root sign it.
    from edgeship.sdk import KeyDir

    from edgeship import SignatureError

    keys = KeyDir(tmp_path / "keys")
    keys.init()
    keys.rotate(revoke_old=True)  # a revoked key to un-revoke
    envelope = keys.keyset_envelope()
    attacker = Ed25519PrivateKey.generate()
    envelope["signed"]["keys"][keyid_of(attacker)] = {
        "keytype": "ed25519", "public": raw_public(attacker.public_key()).hex()}
    envelope["signed"]["revoked"] = []
    if fake_root_pub:  # who can edit keyset.json may also replace root.pub and re-sign
        fake_root = Ed25519PrivateKey.generate()
        keys.root_pub.write_bytes(raw_public(fake_root.public_key()))
        envelope = sign_envelope(envelope["signed"], fake_root)
    keys.keyset_path.write_text(json.dumps(envelope))
    with pytest.raises(SignatureError, match=r"keyset\.json"):
        if operation == "revoke":
            keys.revoke("ab" * 32)  # any other key: the attacker's stays in
        elif operation == "rotate":
            keys.rotate()
        else:
            keys.keyset()
    assert json.loads(keys.keyset_path.read_text()) == envelope  # not re-signed


def _nested_offer(depth: int) -> bytes:
    nested = "[" * depth + "]" * depth
    head = ('{"type":"edgeship-offer","manifest":{"signed":{},"signatures":[]},"keyset":'
            '{"signed":{"x":')
    return (head + nested + '},"signatures":[{"keyid":"ab","sig":"00"}]}}').encode()


def _deeper(frames: int, fn: object) -> object:
    return fn() if frames == 0 else _deeper(frames - 1, fn)  # type: ignore[operator]


def test_deeply_nested_offer_is_malformed_at_any_stack_depth() -> None:
    # json.loads and json.dumps both stop at the interpreter's recursion limit, counted
    # from wherever they are called: an offer nested just under the limit parsed in
    # Offer.from_bytes and then raised RecursionError from check_offer's canonical_bytes
    # a few frames deeper (broker-only attacker, before any signature check).
    root = raw_public(Ed25519PrivateKey.generate().public_key())
    for depth in (100, 400, 900, 980):
        def attempt(wire: bytes = _nested_offer(depth)) -> None:
            offer = Offer.from_bytes(wire)
            _deeper(20, lambda: check_offer(offer, root, TrustedState(), model_name="net",
                                            hardware="cpu"))
        with pytest.raises(MalformedError, match="nest"):
            attempt()
    with pytest.raises(MalformedError, match="nest"):
        canonical_bytes(_deep_list(5000))


def _deep_list(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_revoked_key_id_has_one_spelling() -> None:
    # 'revoked' is compared to signer ids exactly, and the listed-and-revoked check too:
    # a key set listing key K while revoking K spelled in upper case was accepted, and K
    # still signed releases (revoked, as far as anyone reading the key set could tell).
    release = Ed25519PrivateKey.generate()
    keyid = keyid_of(release)
    signed = {"type": "keyset", "version": 1, "created": "2026-01-01T00:00:00Z",
              "expires": "2099-01-01T00:00:00Z",
              "keys": {keyid: {"keytype": "ed25519",
                               "public": raw_public(release.public_key()).hex()}}}
    assert KeySet.from_dict({**signed, "revoked": []}).keys
    for spelling in (keyid.upper(), keyid + "\n", keyid[:16]):
        with pytest.raises(MalformedError, match="revoked"):
            KeySet.from_dict({**signed, "revoked": [spelling]})


def test_keys_revoke_refuses_an_id_that_is_not_hex(tmp_path: Path) -> None:
    from edgeship.sdk import KeyDir

    from edgeship import InputError

    keys = KeyDir(tmp_path / "keys")
    keys.init()
    with pytest.raises(InputError, match="matches 0 known keys"):
        keys.revoke("z" * 64)
    keys.revoke("AB" * 32)  # an unknown but well-formed id may be barred in advance
    assert keys.keyset().revoked == ("ab" * 32,)


# --- property: a broker attacker who edits any part of a real offer ------------------------

_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=8)  # surrogates too
_LEAF = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | _ANY_TEXT)
_VALUE = st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(_ANY_TEXT, kids, max_size=3), max_leaves=8)


def _paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_edit_of_a_real_offer_fails_only_with_verification_errors(data: st.DataObject
                                                                        ) -> None:
    root = _ROOT
    doc = json.loads(_GOOD_OFFER)
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(_VALUE)
    try:
        _check(Offer.from_bytes(json.dumps(doc).encode()), root)
    except VerificationError:
        return


_ROOT = Ed25519PrivateKey.generate()
_GOOD_OFFER = _signed_offer(_ROOT).to_bytes()
