"""Model protection at rest (library): X25519-wrapped data keys, AES-256-GCM payloads,
encrypted deltas, encrypted releases and in-memory loading, on real keys, files and
runtimes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeship.sdk import Manifest, Model, Offer, check_payload
from edgeship.sdk.release._crypt import (
    SCHEME,
    Encryption,
    decrypt,
    encrypt,
    generate_key,
    keyid_of_public,
    load_private_key,
    make_encryption,
    new_data_key,
    new_nonce,
    unwrap_data_key,
    write_key_pair,
)
from edgeship.sdk.release._delta import best_delta
from edgeship.sdk.release._manifest import ArtifactInfo, DeltaInfo
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeship import (
    DecryptionError,
    DigestMismatchError,
    InputError,
    MalformedError,
    VerificationError,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_key_pair_files_ids_and_permissions(tmp_path: Path) -> None:
    key_path, pub_path, keyid = write_key_pair(tmp_path / "fleet", "dev-001")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    private = load_private_key(key_path.read_bytes())
    assert keyid_of_public(private) == keyid == keyid_of_public(pub_path.read_bytes())
    raw = private.public_key().public_bytes_raw()
    assert keyid == hashlib.sha256(raw).hexdigest()
    with pytest.raises(InputError, match="already exists"):
        write_key_pair(tmp_path / "fleet", "dev-001")
    with pytest.raises(InputError, match="--name"):
        write_key_pair(tmp_path / "fleet", "../evil")
    # an Ed25519 signing key is not an encryption key: said so, not a traceback
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(InputError, match="X25519"):
        load_private_key(ed)


def test_wrap_unwrap_and_wrong_key_names_the_key_ids() -> None:
    (priv_a, pub_a), (priv_b, pub_b), (priv_c, _) = (generate_key() for _ in range(3))
    data_key = new_data_key()
    enc = make_encryption(data_key, [pub_a, pub_b, pub_a])
    assert len(enc.recipients) == 2  # a key listed twice is wrapped once
    assert unwrap_data_key(enc, priv_a) == data_key == unwrap_data_key(enc, priv_b)
    with pytest.raises(DecryptionError) as info:
        unwrap_data_key(enc, priv_c)
    text = str(info.value)
    for keyid in enc.keyids:
        assert keyid[:16] in text
    assert f"this device's key is {keyid_of_public(priv_c)[:16]}" in text
    # a wrapped key moved to another recipient's entry fails authentication
    a, b = enc.recipients
    swapped = Encryption(artifact_nonce=enc.artifact_nonce, recipients=(
        type(a)(keyid=a.keyid, ephemeral=b.ephemeral, wrapped=b.wrapped), b))
    mine = priv_a if a.keyid == keyid_of_public(priv_a) else priv_b
    with pytest.raises(DecryptionError, match="fails authentication"):
        unwrap_data_key(swapped, mine)
    assert Encryption.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    assert enc.only(a.keyid).recipients == (a,)


def test_encrypt_decrypt_round_trip_and_tamper() -> None:
    key, nonce = new_data_key(), new_nonce()
    plain = os.urandom(5000)
    blob = encrypt(plain, key, nonce)
    assert blob[:12] == nonce and len(blob) == len(plain) + 28
    assert encrypt(plain, key, nonce) == blob  # deterministic: a device re-encrypts to it
    assert decrypt(blob, key) == plain
    for i in (0, 12, 2000, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(DecryptionError, match="tampered or truncated"):
            decrypt(bytes(bad), key)
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt(blob[:20], key)
    with pytest.raises(DecryptionError):
        decrypt(blob[:-1], key)
    with pytest.raises(DecryptionError):
        decrypt(blob, new_data_key())


def _valid_encryption() -> dict[str, Any]:
    _, pub = generate_key()
    return make_encryption(new_data_key(), [pub]).to_dict()


@pytest.mark.parametrize("edit", [
    lambda d: d.update(scheme="x25519-aes-128"),
    lambda d: d.update(artifact_nonce=base64.b64encode(bytes(8)).decode()),
    lambda d: d.update(artifact_nonce=d["artifact_nonce"] + "\n"),
    lambda d: d.update(recipients=[]),
    lambda d: d.update(recipients=d["recipients"] * 2),
    lambda d: d.update(extra=1),
    lambda d: d["recipients"][0].update(keyid="AB" * 32),
    lambda d: d["recipients"][0].update(ephemeral=base64.b64encode(bytes(31)).decode()),
    lambda d: d["recipients"][0].update(wrapped="not base64!"),
    lambda d: d["recipients"][0].pop("wrapped"),
])
def test_encryption_section_is_strict(edit: Any) -> None:
    doc = _valid_encryption()
    Encryption.from_dict(doc)
    edit(doc)
    with pytest.raises(MalformedError):
        Encryption.from_dict(doc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=20), kids,
                                                              max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=_json, base=st.sampled_from([None, "valid"]), key=st.sampled_from(
    ["scheme", "artifact_nonce", "recipients", "keyid", "ephemeral", "wrapped"]))
def test_encryption_from_arbitrary_json_is_parsed_or_malformed(doc: Any, base: Any,
                                                               key: str) -> None:
    if base == "valid":  # one field of a valid section replaced by arbitrary JSON
        valid = _VALID
        target = valid if key in valid else valid["recipients"][0]
        doc = {**valid, **({key: doc} if key in valid else
                           {"recipients": [{**target, key: doc}]})}
    try:
        parsed = Encryption.from_dict(doc)
    except MalformedError:
        return
    assert parsed.scheme == SCHEME and Encryption.from_dict(parsed.to_dict()) == parsed


_VALID = _valid_encryption()


def _manifest(version: str, artifact: bytes, *, enc: Encryption | None = None,
              deltas: tuple[DeltaInfo, ...] = ()) -> Manifest:
    return Manifest(model="m", version=version, created="2026-11-24T00:00:00Z",
                    expires="2027-11-24T00:00:00Z", deltas=deltas, encryption=enc,
                    artifact=ArtifactInfo(name="m.onnx", sha256=_sha(artifact),
                                          size=len(artifact), format="onnx"))


def test_encrypted_delta_applies_to_the_base_ciphertext_and_yields_the_signed_bytes() -> None:
    device_priv, device_pub = generate_key()
    v1 = (FIXTURES / "mobilenet.onnx").read_bytes()
    v2 = bytearray(v1)
    v2[-5000:-4000] = bytes(1000)
    key1, key2 = new_data_key(), new_data_key()
    enc1 = make_encryption(key1, [device_pub])
    enc2 = make_encryption(key2, [device_pub])
    c1, c2 = encrypt(v1, key1, enc1.nonce), encrypt(bytes(v2), key2, enc2.nonce)
    fmt, plain_delta = best_delta(v1, bytes(v2))
    delta = encrypt(plain_delta, key2, new_nonce())
    info = DeltaInfo(name="deltas/from-1.0.0." + fmt, base_version="1.0.0",
                     base_sha256=_sha(c1), sha256=_sha(delta), size=len(delta), format=fmt)
    m2 = _manifest("1.1.0", c2, enc=enc2, deltas=(info,))
    got = check_payload(m2, delta, base=c1, private_key=device_priv, base_encryption=enc1)
    assert got == c2 and decrypt(got, key2) == bytes(v2)
    assert check_payload(m2, c2) == c2  # full payload: digest alone, no key needed
    assert check_payload(m2, c2, private_key=device_priv) == c2
    with pytest.raises(DecryptionError, match="private key"):
        check_payload(m2, delta, base=c1, base_encryption=enc1)
    other_priv, _ = generate_key()
    with pytest.raises(DecryptionError, match="encrypted for keys"):
        check_payload(m2, delta, base=c1, private_key=other_priv, base_encryption=enc1)
    bad = bytearray(c2)
    bad[100] ^= 0xFF
    with pytest.raises(DigestMismatchError):
        check_payload(m2, bytes(bad), private_key=device_priv)
    # a release key that signed corrupt ciphertext: the digest matches, decryption does not
    m_bad = _manifest("1.1.0", bytes(bad), enc=enc2)
    assert check_payload(m_bad, bytes(bad)) == bytes(bad)
    with pytest.raises(DecryptionError, match="fails authentication"):
        check_payload(m_bad, bytes(bad), private_key=device_priv)


def test_plaintext_base_to_encrypted_release_delta() -> None:
    device_priv, device_pub = generate_key()
    v1 = os.urandom(30_000)
    v2 = v1[:10_000] + bytes(500) + v1[10_500:]
    key = new_data_key()
    enc = make_encryption(key, [device_pub])
    c2 = encrypt(v2, key, enc.nonce)
    fmt, plain_delta = best_delta(v1, v2)
    delta = encrypt(plain_delta, key, new_nonce())
    info = DeltaInfo(name=f"deltas/from-1.0.0.{fmt}", base_version="1.0.0",
                     base_sha256=_sha(v1), sha256=_sha(delta), size=len(delta), format=fmt)
    m2 = _manifest("1.1.0", c2, enc=enc, deltas=(info,))
    assert check_payload(m2, delta, base=v1, private_key=device_priv) == c2


def test_plaintext_manifest_round_trip_gains_no_keys() -> None:
    plain = _manifest("1.0.0", b"x" * 100)
    doc = plain.to_dict()
    assert "encryption" not in doc and "profile" not in doc
    assert Manifest.from_dict(doc) == plain and Manifest.from_dict(doc).to_dict() == doc
    _, pub = generate_key()
    enc = make_encryption(new_data_key(), [pub])
    doc = _manifest("1.0.0", b"x" * 100, enc=enc).to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(doc))).encryption == enc
    for bad in (None, {}, [], "x"):
        with pytest.raises(MalformedError):
            Manifest.from_dict({**doc, "encryption": bad})


def test_offer_mode_is_carried_only_when_shadow() -> None:
    offer = Offer(manifest={"signed": {}}, keyset={"signed": {}})
    assert b"mode" not in offer.to_bytes()
    shadow = Offer(manifest={"signed": {}}, keyset={"signed": {}}, mode="shadow")
    wire = shadow.to_bytes()
    assert b'"mode":"shadow"' in wire and Offer.from_bytes(wire) == shadow
    assert Offer.from_bytes(offer.to_bytes()).mode == "active"
    for bad in (b'"canary"', b"1", b"null"):
        doc = wire.replace(b'"shadow"', bad)
        with pytest.raises(MalformedError):
            Offer.from_bytes(doc)
    with pytest.raises(VerificationError):
        Offer(manifest={}, keyset={}, mode="Shadow")


def test_load_bytes_runs_decrypted_models_from_memory_only(tmp_path: Path) -> None:
    x = np.load(FIXTURES / "mlp_calib.npz")["input"][:2]
    key = new_data_key()
    blob = encrypt((FIXTURES / "mlp.onnx").read_bytes(), key, new_nonce())
    model = Model.load_bytes(decrypt(blob, key), format="onnx", threads=1)
    assert model.path is None and model.runtime == "onnxruntime"
    np.testing.assert_allclose(model.predict(x), Model.load(FIXTURES / "mlp.onnx").predict(x),
                               rtol=0, atol=0)
    tflite = _small_tflite(tmp_path)
    blob = encrypt(tflite.read_bytes(), key, new_nonce())
    lite = Model.load_bytes(decrypt(blob, key), format="tflite")
    assert lite.runtime == "litert"
    xs = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(lite.predict(xs), Model.load(tflite).predict(xs), atol=0)


def _small_tflite(tmp_path: Path) -> Path:
    """A tiny real int8 TFLite model (FULLY_CONNECTED 4 -> 3 between QUANTIZE/DEQUANTIZE),
    written with the converter's flatbuffer layer."""
    from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor, serialize

    g = FbGraph()
    x = g.add_tensor(FbTensor("x", (1, 4), "float32"))
    xq = g.add_tensor(FbTensor("x/int8", (1, 4), "int8", quant=FbQuant([0.02], [0])))
    g.add_op(FbOp("QUANTIZE", 1, [x], [xq]))
    w = g.add_tensor(FbTensor("w", (3, 4), "int8", quant=FbQuant([0.01], [0])),
                     np.arange(-6, 6, dtype=np.int8).reshape(3, 4) * 9)
    b = g.add_tensor(FbTensor("b", (3,), "int32", quant=FbQuant([0.0002], [0])),
                     np.array([100, 0, -100], np.int32))
    yq = g.add_tensor(FbTensor("y/int8", (1, 3), "int8", quant=FbQuant([0.005], [3])))
    g.add_op(FbOp("FULLY_CONNECTED", 4, [xq, w, b], [yq],
                  ("FullyConnectedOptions", {"FusedActivationFunction": 0})))
    y = g.add_tensor(FbTensor("y", (1, 3), "float32"))
    g.add_op(FbOp("DEQUANTIZE", 2, [yq], [y]))
    g.inputs, g.outputs = [x], [y]
    path = tmp_path / "fc.tflite"
    path.write_bytes(serialize(g))
    return path


# ---------------------------------------------------------------- releases on disk

_OLD_MANIFEST_KEYS = {"type", "spec_version", "model", "version", "artifact", "deltas", "golden",
                      "hardware", "created", "expires", "keyid"}


@pytest.fixture()
def keys(tmp_path: Path) -> Any:
    from edgeship.sdk import KeyDir

    kd = KeyDir(tmp_path / "keys")
    kd.init()
    return kd


def _no_plaintext_window(stored: bytes, plain: bytes, width: int = 64) -> bool:
    """True when no ``width``-byte run of ``plain`` occurs in ``stored``: any such run
    contains a whole aligned block of ``width // 2`` plaintext bytes, so checking those
    against every window of ``stored`` is exhaustive."""
    half = width // 2
    windows = {stored[i:i + half] for i in range(len(stored) - half + 1)}
    return not any(plain[i:i + half] in windows for i in range(0, len(plain) - half + 1, half))


def _golden(tmp_path: Path) -> Path:
    x = np.load(FIXTURES / "mlp_calib.npz")["input"][:1]
    path = tmp_path / "golden.npz"
    np.savez(path, input=x, output=Model.load(FIXTURES / "mlp.onnx").predict(x))
    return path


def test_encrypted_release_round_trip_and_no_plaintext_on_disk(tmp_path: Path, keys: Any) -> None:
    from edgeship.sdk import Release, verify_release
    from edgeship.sdk.release._crypt import private_key_file

    fleet_key, fleet_pub, fleet_id = write_key_pair(tmp_path / "fleet", "fleet")
    rel = Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                        out=tmp_path / "r1", golden=_golden(tmp_path), encrypt_for=[fleet_pub])
    enc = rel.manifest.encryption
    assert enc is not None and fleet_id in enc.keyids and len(enc.keyids) == 2  # + archive
    assert stat.S_IMODE((keys.path / "archive.key").stat().st_mode) == 0o600
    plain = (FIXTURES / "mlp.onnx").read_bytes()
    for path in rel.path.rglob("*"):
        if path.is_file():
            assert _no_plaintext_window(path.read_bytes(), plain), path
    stored = rel.read_artifact()
    assert len(stored) == len(plain) + 28 and rel.manifest.artifact.sha256 == _sha(stored)
    assert rel.manifest.artifact.format == "onnx"
    # a device: signature and digest first (no key), then decrypt in memory and run
    assert verify_release(rel.path, keys.root_pub).version == "1.0.0"
    device = private_key_file(fleet_key, "key")
    assert verify_release(rel.path, keys.root_pub, golden=True, private_key=device)
    model = Model.load_bytes(decrypt(stored, unwrap_data_key(enc, device)), format="onnx")
    x = np.load(FIXTURES / "mlp_calib.npz")["input"][:3]
    np.testing.assert_array_equal(model.predict(x),
                                  Model.load(FIXTURES / "mlp.onnx").predict(x))
    signed = json.loads((rel.path / "manifest.json").read_text())["signed"]
    assert set(signed) == _OLD_MANIFEST_KEYS | {"encryption"}


def test_wrong_key_and_flipped_byte(tmp_path: Path, keys: Any) -> None:
    from edgeship.sdk import Release, verify_release

    _, fleet_pub, fleet_id = write_key_pair(tmp_path / "fleet", "fleet")
    rel = Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                        out=tmp_path / "r1", encrypt_for=[fleet_pub])
    stranger, _ = generate_key()
    with pytest.raises(DecryptionError) as info:
        verify_release(rel.path, keys.root_pub, private_key=load_private_key(stranger))
    assert fleet_id[:16] in str(info.value)
    assert keyid_of_public(stranger)[:16] in str(info.value)
    art = rel.path / "mlp.onnx"
    blob = bytearray(art.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    art.write_bytes(bytes(blob))
    with pytest.raises(DigestMismatchError, match=r"mlp\.onnx"):
        verify_release(rel.path, keys.root_pub)
    archive = keys.archive_key()
    with pytest.raises(DecryptionError, match="tampered or truncated"):
        decrypt(bytes(blob), unwrap_data_key(rel.manifest.encryption, archive))


def test_encrypted_delta_release_from_encrypted_base(tmp_path: Path, keys: Any) -> None:
    from edgeship.sdk import Offer, Release, TrustedState, check_offer, verify_release

    dev1, dev1_pub, _ = write_key_pair(tmp_path / "devs", "dev-001")
    dev2, dev2_pub, _ = write_key_pair(tmp_path / "devs", "dev-002")
    v1 = (FIXTURES / "mobilenet.onnx").read_bytes()
    v2 = bytearray(v1)
    v2[-5000:-4000] = bytes(1000)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/model.onnx").write_bytes(bytes(v2))
    r1 = Release.build(FIXTURES / "mobilenet.onnx", version="1.0.0", keydir=keys.path,
                       out=tmp_path / "r1", model_name="model", encrypt_for=[dev1_pub, dev2_pub])
    # the base is opened on this host with archive.key: no device key is needed here
    r2 = Release.build(tmp_path / "a/model.onnx", version="1.1.0", keydir=keys.path,
                       out=tmp_path / "r2", bases=[r1.path], encrypt_for=[dev1_pub, dev2_pub])
    (info,) = r2.manifest.deltas
    delta = r2.read_delta(info)
    assert info.size < 10_000 and info.base_sha256 == r1.manifest.artifact.sha256
    assert _no_plaintext_window(delta, bytes(v2)) and _no_plaintext_window(delta, v1)
    offer = Offer.from_bytes(r2.offer().to_bytes())
    manifest = check_offer(offer, keys.root_pub.read_bytes(),
                           TrustedState().installed(r1.manifest), model_name="model",
                           hardware=None)
    for dev in (dev1, dev2):  # each device, from the ciphertext it holds
        key = load_private_key(dev.read_bytes())
        got = check_payload(manifest, delta, base=r1.read_artifact(), private_key=key,
                            base_encryption=r1.manifest.encryption)
        assert got == r2.read_artifact()
        assert decrypt(got, unwrap_data_key(manifest.encryption, key)) == bytes(v2)
    assert verify_release(r2.path, keys.root_pub, bases=[r1.path],
                          private_key=load_private_key(dev2.read_bytes()))
    # a plaintext release must not ship a delta from an encrypted base (it would reveal it)
    with pytest.raises(InputError, match="reveal"):
        Release.build(tmp_path / "a/model.onnx", version="1.2.0", keydir=keys.path,
                      out=tmp_path / "r3", bases=[r1.path])
    # another key dir (no archive key of r1's) cannot open the base: said so
    from edgeship.sdk import KeyDir

    other = KeyDir(tmp_path / "other")
    other.init()
    with pytest.raises(InputError, match="archive"):
        Release.build(tmp_path / "a/model.onnx", version="1.2.0", keydir=other.path,
                      out=tmp_path / "r4", bases=[r1.path], encrypt_for=[dev1_pub])


def test_plaintext_releases_are_unchanged(tmp_path: Path, keys: Any) -> None:
    """A plaintext release signs exactly the fields it signed before encryption existed,
    and an encrypted release can carry a delta from a plaintext base."""
    from edgeship.sdk import Release, verify_release
    from edgeship.sdk.release._crypt import private_key_file

    r1 = Release.build(FIXTURES / "cnn.onnx", version="1.0.0", keydir=keys.path,
                       out=tmp_path / "r1")
    signed = json.loads((r1.path / "manifest.json").read_text())["signed"]
    assert set(signed) == _OLD_MANIFEST_KEYS
    assert r1.read_artifact() == (FIXTURES / "cnn.onnx").read_bytes()
    assert verify_release(r1.path, keys.root_pub, golden=True).encryption is None
    dev, dev_pub, _ = write_key_pair(tmp_path / "devs", "dev")
    new = bytearray((FIXTURES / "cnn.onnx").read_bytes())
    new[-200:-100] = bytes(100)
    (tmp_path / "b").mkdir()
    (tmp_path / "b/cnn.onnx").write_bytes(bytes(new))
    r2 = Release.build(tmp_path / "b/cnn.onnx", version="1.1.0", keydir=keys.path,
                       out=tmp_path / "r2", bases=[r1.path], encrypt_for=[dev_pub])
    (info,) = r2.manifest.deltas
    got = check_payload(r2.manifest, r2.read_delta(info), base=r1.read_artifact(),
                        private_key=private_key_file(dev, "key"))
    assert got == r2.read_artifact()
    # and plaintext releases made after the archive key exists are still plaintext
    r3 = Release.build(tmp_path / "b/cnn.onnx", version="1.2.0", keydir=keys.path,
                       out=tmp_path / "r3", bases=[r1.path])
    assert set(json.loads((r3.path / "manifest.json").read_text())["signed"]) == \
        _OLD_MANIFEST_KEYS


def test_release_signs_a_profile_and_it_survives_the_round_trip(tmp_path: Path,
                                                                keys: Any) -> None:
    from edgeship.sdk import Release, verify_release
    from edgeship.sdk.monitor._profile import profile_from_file

    profile = profile_from_file(FIXTURES / "mlp_eval.npz", model_path=FIXTURES / "mlp.onnx")
    _, pub, _ = write_key_pair(tmp_path / "fleet", "fleet")
    rel = Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                        out=tmp_path / "r", profile=profile, encrypt_for=[pub])
    manifest = verify_release(rel.path, keys.root_pub)
    assert manifest.profile == profile and Release.load(rel.path).manifest.profile == profile
    assert Offer.from_bytes(rel.offer(mode="shadow").to_bytes()).mode == "shadow"
    signed = json.loads((rel.path / "manifest.json").read_text())["signed"]
    assert signed["profile"] == profile.to_dict()
    with pytest.raises(MalformedError):
        Manifest.from_dict({**signed, "profile": {"version": 1, "samples": "many"}})
    with pytest.raises(MalformedError):
        Manifest.from_dict({**signed, "profile": None})
