"""Encrypted releases under attack and operator mistakes (review of issue 10): a device
key changed on a device holding an encrypted model, key files that are not what they seem,
manifests with unusual encryption sections. Real agent subprocesses, real mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from edgeship.agent._config import EncryptionConfig
from edgeship.agent._device_key import key_file_problem, load_device_key
from edgeship.sdk.release._crypt import keyid_of_public, write_key_pair
from edgeship.sdk.release._release import Release
from test_agent_encrypted import encrypted_release, serve
from test_agent_support import (
    AgentProc,
    Watcher,
    make_keys,
    make_model,
    offer_bytes,
    served_version,
    write_config,
)

from edgeship import ConfigError


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("attacks")
    keys = make_keys(tmp)
    old_key, old_pub, _ = write_key_pair(tmp / "device-keys", "old")
    new_key, new_pub, new_id = write_key_pair(tmp / "device-keys", "new")
    v1, _ = encrypted_release(tmp, keys, "1.0.0", [old_pub])
    v2, _ = encrypted_release(tmp, keys, "2.0.0", [new_pub], base=v1)  # has a delta from v1
    many = [X25519PrivateKey.generate().public_key() for _ in range(12)]
    v3 = tmp / "releases" / "3.0.0"  # for twelve device keys, none of them this device's
    Release.build(make_model(tmp / "build" / "m3.onnx", 3.0), version="3.0.0", keydir=keys,
                  out=v3, model_name="model", encrypt_for=many)
    return {"tmp": tmp, "keys": keys, "root": keys / "root.pub", "old_key": old_key,
            "new_key": new_key, "new_id": new_id, "v1": v1, "v2": v2, "v3": v3}


def _agent(tmp: Path, mosquitto: Mosquitto, fleet: dict[str, Any], key: Path,
           port: int) -> AgentProc:
    cfg = write_config(tmp, broker_url=mosquitto.url, port=port, root_pub=fleet["root"],
                       initial=fleet["v1"], extra=f'\n[encryption]\nkey_file = "{key}"\n')
    return AgentProc(cfg, port).start()


def test_device_key_changed_under_an_encrypted_model_then_a_release_for_the_new_key(
        tmp_path: Path, mosquitto: Mosquitto, fleet: dict[str, Any]) -> None:
    """The installed slot is encrypted for the old key: after a restart with the new key
    the agent stays up and says why it serves nothing; the next release (encrypted for
    the new key, with a delta from the installed version) is fetched whole, since that
    delta's base cannot be opened any more, and serves."""
    assert Release.load(fleet["v2"]).manifest.deltas  # the delta that must not be used
    port = free_port()
    agent = _agent(tmp_path, mosquitto, fleet, fleet["old_key"], port)
    agent.wait_ready()
    assert served_version(agent.url)[0] == "1.0.0"
    agent.terminate()

    server = serve(mosquitto, fleet["v2"])
    agent = _agent(tmp_path, mosquitto, fleet, fleet["new_key"], port)
    watch = Watcher(mosquitto.url)
    try:
        status = watch.wait(lambda s: s["state"] == "failed" and s["version"] == "1.0.0")
        assert "DecryptionError" in status["error"]
        assert fleet["new_id"][:16] in status["error"]  # names this device's (new) key
        assert agent.proc is not None and agent.proc.poll() is None  # no crash loop
        watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(fleet["v2"]), retain=True)
        status = watch.wait(lambda s: s["target"] == "2.0.0"
                            and s["state"] in ("committed", "failed"), timeout=60)
        assert status["state"] == "committed", status["error"]
        assert served_version(agent.url)[0] == "2.0.0"
        assert keyid_of_public(fleet["new_key"].read_bytes()) == fleet["new_id"]
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


# ---- [encryption] key_file: what is actually opened is what is checked ------------------
def test_key_file_fifo_other_owner_and_symlink(tmp_path: Path, fleet: dict[str, Any]) -> None:
    pem = fleet["new_key"].read_bytes()
    fifo = tmp_path / "device.key.fifo"
    os.mkfifo(fifo, 0o600)  # nobody writes to it: reading it by mistake would hang
    started = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_device_key(EncryptionConfig(key_file=str(fifo)))
    assert time.monotonic() - started < 10

    key = tmp_path / "device.key"
    key.write_bytes(pem)
    key.chmod(0o600)
    link = tmp_path / "link.key"  # a symlink is followed; its target is what is checked
    link.symlink_to(key)
    assert keyid_of_public(load_device_key(EncryptionConfig(key_file=str(link)))) \
        == fleet["new_id"]
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        load_device_key(EncryptionConfig(key_file=str(link)))
    key.chmod(0o600)

    other = os.stat(key)
    fake = os.stat_result((other.st_mode, 0, 0, 1, os.geteuid() + 4242, 0, 0, 0, 0, 0))
    assert "belongs to uid" in (key_file_problem(fake, os.geteuid()) or "")
    root_owned = os.stat_result((other.st_mode, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    assert key_file_problem(root_owned, os.geteuid()) is None
    if os.geteuid() == 0:  # as root, a real file of another account, mode 0600
        os.chown(key, 4242, 4242)
        with pytest.raises(ConfigError, match="belongs to uid 4242") as info:
            load_device_key(EncryptionConfig(key_file=str(key)))
        assert "PRIVATE" not in str(info.value)


def test_keyless_device_refuses_a_release_for_many_keys_in_one_short_line(
        tmp_path: Path, mosquitto: Mosquitto, fleet: dict[str, Any]) -> None:
    """A device without [encryption] gets a release encrypted for thousands of device keys:
    refused before any download, with a status line that lists a few ids and a count."""
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=fleet["root"])
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    try:
        watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(fleet["v3"]), retain=True)
        status = watch.wait(lambda s: s["state"] == "failed" and s["target"] == "3.0.0")
        error = status["error"]
        assert "no [encryption] key" in error and "and 8 more" in error  # 13 with archive
        assert len(error) < 300 and "\n" not in error
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        watch.close()
        agent.kill()


# ---- operator mistakes on the host ---------------------------------------------------------
def _edgeship(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _one_line(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2 and out.stderr.startswith("error: "), out
    assert out.stderr.strip().count("\n") == 0 and "PRIVATE KEY" not in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)


def test_wrong_key_files_given_to_release_verify_and_fleet_key(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    keys, model = fleet["keys"], make_model(tmp_path / "m.onnx", 4.0)
    # the device's private key given to --encrypt-for instead of its .pub
    _one_line(_edgeship("release", model, "--version", "4.0.0", "--keys", keys, "-o",
                        tmp_path / "r", "--encrypt-for", fleet["new_key"]),
              "--encrypt-for", "private key", ".pub")
    assert not (tmp_path / "r").exists()
    # verify --key: the .pub instead of the .key; a signing key instead of an X25519 one
    _one_line(_edgeship("verify", fleet["v2"], "--root", fleet["root"], "--key",
                        fleet["new_key"].with_suffix(".pub")), "public key", "(.key)")
    _one_line(_edgeship("verify", fleet["v2"], "--root", fleet["root"], "--key",
                        keys / "release.key"), "(Ed25519PrivateKey)")
    # keys fleet-key --force with a name of the key dir's own keys would destroy them
    before = {name: (keys / name).read_bytes() for name in
              ("root.key", "release.key", "archive.key")}
    for name in ("root", "release", "archive"):
        _one_line(_edgeship("keys", "fleet-key", keys, "--name", name, "--force"),
                  f"--name {name}", "key dir")
    assert {name: (keys / name).read_bytes() for name in before} == before


def test_key_dir_copied_without_archive_key(tmp_path: Path, fleet: dict[str, Any]) -> None:
    """release --base of an encrypted release from a key dir without its archive.key:
    refused at once, and no new archive key is made (it would open no earlier release)."""
    copy = tmp_path / "keys"
    shutil.copytree(fleet["keys"], copy)
    (copy / "archive.key").unlink()
    (copy / "archive.pub").unlink()
    model = make_model(tmp_path / "m.onnx", 5.0)
    args = ("release", model, "--version", "5.0.0", "--keys", copy, "-o", tmp_path / "r",
            "--model-name", "model",
            "--base", fleet["v2"], "--encrypt-for", fleet["new_key"].with_suffix(".pub"))
    _one_line(_edgeship(*args), "no archive.key", "copy archive.key")
    assert not (copy / "archive.key").exists() and not (tmp_path / "r").exists()
    # another key dir's archive key in its place: said so, not "this device's key is"
    write_key_pair(copy, "archive")
    _one_line(_edgeship(*args), "not released with this key dir's archive key")


def test_agent_with_a_device_key_makes_no_core_dumps(
        tmp_path: Path, mosquitto: Mosquitto, fleet: dict[str, Any]) -> None:
    """A core file of the agent would hold the device key and the decrypted model: with
    [encryption] the agent turns core dumps off (inherited by its children) and is not
    dumpable."""
    port = free_port()
    agent = _agent(tmp_path, mosquitto, fleet, fleet["old_key"], port)
    try:
        agent.wait_ready()
        line = agent.wait_log(lambda li: li.get("event") == "core_dumps_off")
        assert line["done"] == ["rlimit_core", "not_dumpable"]
        assert agent.proc is not None
        limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
        core = next(li for li in limits.splitlines() if li.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        child = subprocess.run(  # what the health-check child and shadow worker inherit
            [sys.executable, "-c", "import resource, sys; from edgeship.agent._device_key "
             "import no_core_dumps; print(no_core_dumps(), resource.getrlimit("
             "resource.RLIMIT_CORE)); import ctypes; print(ctypes.CDLL(None).prctl(3,0,0,0,0))"],
            capture_output=True, text=True, timeout=60, check=True)
        assert child.stdout.split("\n")[:2] == ["['rlimit_core', 'not_dumpable'] (0, 0)", "0"]
    finally:
        agent.kill()


def test_raw_32_byte_key_with_whitespace_bytes_loads(tmp_path: Path) -> None:
    """A raw X25519 key is any 32 bytes: one beginning with a space or ending with a
    newline byte is still the key (stripping it as if it were PEM broke ~5% of keys)."""
    raw = b" " + os.urandom(30) + b"\n"
    want = keyid_of_public(X25519PrivateKey.from_private_bytes(raw))
    key = tmp_path / "raw.key"
    key.write_bytes(raw)
    key.chmod(0o600)
    assert keyid_of_public(load_device_key(EncryptionConfig(key_file=str(key)))) == want
    argv = (sys.executable, "-c", f"import sys; sys.stdout.buffer.write({raw!r})")
    assert keyid_of_public(load_device_key(EncryptionConfig(key_command=argv))) == want


def test_release_for_too_many_keys_says_how_many_fit(tmp_path: Path,
                                                      fleet: dict[str, Any]) -> None:
    """MAX_RECIPIENTS counts the archive key's wrap too: 10000 device keys are refused as
    the user's input, naming the limit they can use, before any output is made."""
    from edgeship.sdk.release._crypt import MAX_RECIPIENTS

    from edgeship import InputError

    publics = [X25519PrivateKey.generate().public_key() for _ in range(MAX_RECIPIENTS)]
    with pytest.raises(InputError, match=f"{MAX_RECIPIENTS} keys, at most {MAX_RECIPIENTS - 1}"):
        Release.build(make_model(tmp_path / "m.onnx", 6.0), version="6.0.0",
                      keydir=fleet["keys"], out=tmp_path / "r", model_name="model",
                      encrypt_for=publics)
    assert not (tmp_path / "r").exists()


def test_a_delta_encrypted_with_the_artifact_nonce_is_refused_before_shipping(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    """A release whose delta reuses the artifact's nonce under the same data key (another
    tool, a broken random source) gives away the XOR of both plaintexts to anyone on the
    broker: verify (run by release before anything ships) refuses it."""
    import hashlib
    import json

    from edgeship.sdk.release._crypt import decrypt, encrypt, unwrap_data_key
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._keys import sign_envelope
    from edgeship.sdk.release._release import verify_release

    from edgeship import MalformedError

    reldir = tmp_path / "2.0.0"
    shutil.copytree(fleet["v2"], reldir)
    rel, keys = Release.load(reldir), KeyDir(fleet["keys"])
    enc, info = rel.manifest.encryption, rel.manifest.deltas[0]
    data_key = unwrap_data_key(enc, keys.archive_key())
    reused = encrypt(decrypt(rel.read_delta(info), data_key), data_key, enc.nonce)
    (reldir / info.name).write_bytes(reused)
    signed = json.loads(json.dumps(rel.manifest_envelope["signed"]))
    signed["deltas"][0].update(sha256=hashlib.sha256(reused).hexdigest(), size=len(reused))
    (reldir / "manifest.json").write_text(json.dumps(sign_envelope(signed,
                                                                   keys.release_key(None))))
    with pytest.raises(MalformedError, match="same nonce as"):
        verify_release(reldir, fleet["root"])
    _one_line(_edgeship("verify", reldir, "--root", fleet["root"]), "same nonce", info.name)
    verify_release(fleet["v2"], fleet["root"])  # the release as built passes

    # the artifact under another nonce than artifact_nonce: every delta update would fail
    shutil.rmtree(reldir)
    shutil.copytree(fleet["v2"], reldir)
    art = reldir / rel.manifest.artifact.name
    other = encrypt(decrypt(art.read_bytes(), data_key), data_key, os.urandom(12))
    art.write_bytes(other)
    signed = json.loads(json.dumps(rel.manifest_envelope["signed"]))
    signed["artifact"].update(sha256=hashlib.sha256(other).hexdigest())
    (reldir / "manifest.json").write_text(json.dumps(sign_envelope(signed,
                                                                   keys.release_key(None))))
    with pytest.raises(MalformedError, match="artifact_nonce"):
        verify_release(reldir, fleet["root"])


def test_release_encrypted_only_for_the_archive_key_is_refused(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    """--encrypt-for KEYS/archive.pub alone makes a release no device can open."""
    out = _edgeship("release", make_model(tmp_path / "m.onnx", 7.0), "--version", "7.0.0",
                    "--keys", fleet["keys"], "-o", tmp_path / "r", "--model-name", "model",
                    "--encrypt-for", fleet["keys"] / "archive.pub")
    _one_line(out, "archive key", "no device could decrypt")
    assert not (tmp_path / "r").exists()


def test_signed_corrupt_ciphertext_fails_verification_and_old_model_serves(
        tmp_path: Path, mosquitto: Mosquitto, fleet: dict[str, Any]) -> None:
    """A release key signed a ciphertext that does not authenticate (a broken build, a
    leaked key): the digest passes, the decrypt at verification fails, the update ends
    before the slot is written, the old model keeps serving and the agent stays up."""
    import hashlib
    import json

    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._keys import sign_envelope

    reldir, _ = encrypted_release(tmp_path, fleet["keys"], "2.0.0",
                                  [fleet["old_key"].with_suffix(".pub")])
    rel = Release.load(reldir)
    art = reldir / rel.manifest.artifact.name
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    signed = json.loads(json.dumps(rel.manifest_envelope["signed"]))
    signed["artifact"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (reldir / "manifest.json").write_text(json.dumps(
        sign_envelope(signed, KeyDir(fleet["keys"]).release_key(None))))

    port = free_port()
    agent = _agent(tmp_path, mosquitto, fleet, fleet["old_key"], port)
    server = serve(mosquitto, reldir)
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(reldir), retain=True)
        status = watch.wait(lambda s: s["target"] == "2.0.0"
                            and s["state"] in ("committed", "failed", "rolled-back"), timeout=60)
        # authenticated in memory at verification, before anything is written to a slot
        assert status["state"] == "failed", status
        assert status["error"].startswith("verification: ") and \
            "fails authentication" in status["error"], status
        assert status["version"] == "1.0.0" and served_version(agent.url)[0] == "1.0.0"
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


def test_archive_key_readable_by_others_is_refused(tmp_path: Path,
                                                  fleet: dict[str, Any]) -> None:
    """archive.key opens every encrypted release of the key dir: a copy that lost its
    mode (a checkout, an archive) is refused with the fix, like a device key file."""
    copy = tmp_path / "keys"
    shutil.copytree(fleet["keys"], copy)
    (copy / "archive.key").chmod(0o644)
    out = _edgeship("release", make_model(tmp_path / "m.onnx", 8.0), "--version", "8.0.0",
                    "--keys", copy, "-o", tmp_path / "r", "--model-name", "model",
                    "--encrypt-for", fleet["new_key"].with_suffix(".pub"))
    _one_line(out, "mode 0644", "chmod 600")
    assert not (tmp_path / "r").exists()
    (copy / "archive.key").chmod(0o600)
    ok = _edgeship("release", make_model(tmp_path / "m.onnx", 8.0), "--version", "8.0.0",
                   "--keys", copy, "-o", tmp_path / "r", "--model-name", "model",
                   "--encrypt-for", fleet["new_key"].with_suffix(".pub"))
    assert ok.returncode == 0, ok.stderr
