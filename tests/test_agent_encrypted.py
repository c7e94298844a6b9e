"""Encrypted releases on a real agent (real mosquitto, real ``edgeship agent run`` and
``edgeship fleet serve`` subprocesses): install and serve, an encrypted delta, no
plaintext anywhere under data_dir at any point, a wrong device key, a flipped ciphertext
byte; and the ``[encryption]`` key sources (0600 file, env, systemd credential, command)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.agent._config import EncryptionConfig
from edgeship.agent._device_key import load_device_key
from edgeship.sdk.release._crypt import keyid_of_public, write_key_pair
from edgeship.sdk.release._release import Release
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    make_golden,
    make_keys,
    make_model,
    offer_bytes,
    served_version,
    start_fleet_serve,
    version_bias,
    write_config,
)

from edgeship import ConfigError

WINDOW = 64


def encrypted_release(tmp: Path, keys: Path, version: str, recipients: list[Path], *,
                      base: Path | None = None) -> tuple[Path, bytes]:
    """A signed release encrypted for ``recipients``; returns it and the model plaintext."""
    bias = version_bias(version)
    work = tmp / "build" / version
    model = make_model(work / "model.onnx", bias)
    golden = make_golden(work / "golden.npz", bias)
    out = tmp / "releases" / version
    Release.build(model, version=version, keydir=keys, out=out, golden=golden,
                  bases=[base] if base else [], model_name="model", encrypt_for=recipients)
    return out, model.read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("enc")
    keys = make_keys(tmp)
    device_key, device_pub, _ = write_key_pair(tmp / "device-keys", "dev-1")
    _, other_pub, other_id = write_key_pair(tmp / "device-keys", "dev-2")
    v1, p1 = encrypted_release(tmp, keys, "1.0.0", [device_pub])
    v2, p2 = encrypted_release(tmp, keys, "2.0.0", [device_pub], base=v1)
    v3, _ = encrypted_release(tmp, keys, "3.0.0", [other_pub])  # not for this device
    v4, p4 = encrypted_release(tmp, keys, "4.0.0", [device_pub])
    v5, p5 = encrypted_release(tmp, keys, "5.0.0", [device_pub])  # after 4.0.0: a shadow
    tampered = tmp / "tampered" / "4.0.0"  # a byte of it is flipped once it is served
    shutil.copytree(v4, tampered)
    return {"tmp": tmp, "root": keys / "root.pub", "key": device_key, "other_id": other_id,
            "v1": v1, "v2": v2, "v3": v3, "v5": v5, "tampered": tampered,
            "plain": {"1.0.0": p1, "2.0.0": p2, "4.0.0": p4, "5.0.0": p5}}


def windows(data: bytes) -> set[bytes]:
    return {data[i:i + WINDOW] for i in range(len(data) - WINDOW + 1)}


def plaintext_hits(root: Path, plaintexts: list[bytes]) -> list[str]:
    """Files under ``root`` holding any 64-byte window of any of ``plaintexts``."""
    wanted = set().union(*(windows(p) for p in plaintexts))
    hits = []
    for path in sorted(root.rglob("*")):
        try:
            data = path.read_bytes() if path.is_file() else b""
        except FileNotFoundError:  # a temp file renamed while we looked
            continue
        if any(data[i:i + WINDOW] in wanted for i in range(len(data) - WINDOW + 1)):
            hits.append(str(path.relative_to(root)))
    return hits


def start_agent(tmp: Path, mosquitto: Mosquitto, world: dict[str, Any], *,
                pause_file: Path | None = None) -> AgentProc:
    port = free_port()
    extra = f'\n[encryption]\nkey_file = "{world["key"]}"\n'
    cfg = write_config(tmp, broker_url=mosquitto.url, port=port, root_pub=world["root"],
                       initial=world["v1"], extra=extra)
    env = {"EDGESHIP_AGENT_PAUSE_FILE": str(pause_file)} if pause_file else None
    agent = AgentProc(cfg, port, env=env).start()
    agent.wait_ready()
    return agent


def serve(mosquitto: Mosquitto, *reldirs: Path) -> subprocess.Popen[bytes]:
    return start_fleet_serve(mosquitto.url, *reldirs)


def test_search_finds_plaintext_where_it_is(world: dict[str, Any], tmp_path: Path) -> None:
    """The no-plaintext check below can fail: it finds a model copied among other bytes."""
    (tmp_path / "x.bin").write_bytes(b"\x00" * 100 + world["plain"]["2.0.0"][500:600])
    assert plaintext_hits(tmp_path, [world["plain"]["2.0.0"]]) == ["x.bin"]
    assert plaintext_hits(tmp_path, [world["plain"]["1.0.0"][:63]]) == []


def test_encrypted_release_and_delta_serve_with_no_plaintext_on_disk(
        tmp_path: Path, mosquitto: Mosquitto, world: dict[str, Any]) -> None:
    data_dir = tmp_path / "data-dev-1"
    plain = [world["plain"]["1.0.0"], world["plain"]["2.0.0"]]
    pause = tmp_path / "pause"
    server = serve(mosquitto, world["v1"], world["v2"])
    agent = start_agent(tmp_path, mosquitto, world, pause_file=pause)
    watch = Watcher(mosquitto.url)
    try:
        version, y = served_version(agent.url)
        assert version == "1.0.0"
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        slot_a = (data_dir / "slots" / "a" / "model.onnx").read_bytes()
        assert slot_a == Release.load(world["v1"]).read_artifact()  # the signed ciphertext
        assert plaintext_hits(data_dir, plain) == []
        # look while the download is complete on disk, and while the slot is half written
        # each pause long enough for this test to see its log line and look (seconds late
        # on a loaded machine: at 1.5 s the install could be over before the look)
        pause.write_text("downloaded=4,install=4")
        watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(world["v2"]), retain=True)
        for point in ("downloaded", "install"):
            agent.wait_log(lambda line, p=point: line.get("event") == "pause"
                           and line.get("point") == p)
            names = {p.name for p in data_dir.rglob("*")}
            deadline = time.monotonic() + 3.0  # the install pauses half way through the write
            while point == "install" and not any(n.endswith(".tmp") for n in names) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
                names = {p.name for p in data_dir.rglob("*")}
            assert "download.part" in names
            if point == "install":
                assert any(n.endswith(".tmp") for n in names), names  # the slot being written
            assert plaintext_hits(data_dir, plain) == [], point
        status = watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
    assert status["error"] is None
    totals = {line["progress"]["total"] for line in agent.log
              if line.get("event") == "status" and line.get("progress")}
    delta = Release.load(world["v2"]).manifest.deltas[0]
    assert totals == {delta.size}  # the encrypted delta went over the wire, not the model
    assert any(line.get("event") == "health_check_done" and line.get("ok")
               for line in agent.log)  # the child decrypted it with the key from its stdin
    assert any(line.get("event") == "serving" and line.get("encrypted") for line in agent.log)
    assert plaintext_hits(data_dir, plain) == []
    slot_b = (data_dir / "slots" / "b" / "model.onnx").read_bytes()
    assert slot_b == Release.load(world["v2"]).read_artifact()
    agent.start()  # after a restart the encrypted active slot is decrypted again
    try:
        agent.wait_ready()
        version, y = served_version(agent.url)
        assert version == "2.0.0"
        np.testing.assert_allclose(y, expected(200.0, GOLDEN_X), rtol=1e-5)
    finally:
        agent.kill()


def test_wrong_key_and_flipped_ciphertext_are_refused_old_model_serves(
        tmp_path: Path, mosquitto: Mosquitto, world: dict[str, Any]) -> None:
    server = serve(mosquitto, world["v1"], world["v3"], world["v5"], world["tampered"])
    agent = start_agent(tmp_path, mosquitto, world)
    watch = Watcher(mosquitto.url)
    topic = "edgeship/t/dev-1/ota/offer"
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        watch.publish(topic, offer_bytes(world["v3"]), retain=True)
        status = watch.wait(lambda s: s["state"] == "failed" and s["target"] == "3.0.0")
        assert "DecryptionError" in status["error"] and world["other_id"][:16] in status["error"]
        mine = keyid_of_public((world["key"]).read_bytes())
        assert mine[:16] in status["error"] and status["version"] == "1.0.0"
        assert served_version(agent.url)[0] == "1.0.0"
        assert not [line for line in agent.log if line.get("event") == "status"
                    and line.get("target") == "3.0.0" and line.get("state") == "downloading"]
        assert not (tmp_path / "data-dev-1" / "download.part").exists()

        # fleet serve checks a release when it starts; the byte flips on its disk later
        art = world["tampered"] / Release.load(world["tampered"]).manifest.artifact.name
        data = bytearray(art.read_bytes())
        data[len(data) // 2] ^= 0x01
        art.write_bytes(bytes(data))
        watch.publish(topic, offer_bytes(world["tampered"]), retain=True)
        status = watch.wait(lambda s: s["state"] == "failed" and s["target"] == "4.0.0")
        assert "DigestMismatchError" in status["error"] or "sha256" in status["error"]
        assert status["version"] == "1.0.0"
        version, y = served_version(agent.url)
        assert version == "1.0.0"
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)

        # an encrypted shadow: decrypted into memory and handed to its worker over a pipe
        shadow = replace(Release.load(world["v5"]).offer(), mode="shadow").to_bytes()
        watch.publish(topic, shadow, retain=True)
        watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "5.0.0")
        agent.wait_log(lambda line: line.get("event") == "shadow_ready")
        assert served_version(agent.url)[0] == "1.0.0"
        assert plaintext_hits(tmp_path / "data-dev-1",
                              [world["plain"]["1.0.0"], world["plain"]["5.0.0"]]) == []
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


# ---- [encryption] key sources ------------------------------------------------------------
def test_key_file_must_be_owner_only(tmp_path: Path, world: dict[str, Any]) -> None:
    key = tmp_path / "device.key"
    key.write_bytes(world["key"].read_bytes())
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        load_device_key(EncryptionConfig(key_file=str(key)))
    key.chmod(0o600)
    loaded = load_device_key(EncryptionConfig(key_file=str(key)))
    assert keyid_of_public(loaded) == keyid_of_public(world["key"].read_bytes())
    key.chmod(0o400)
    assert load_device_key(EncryptionConfig(key_file=str(key))) is not None


def test_agent_refuses_to_start_with_a_readable_key_file(tmp_path: Path,
                                                         world: dict[str, Any]) -> None:
    key = tmp_path / "device.key"
    key.write_bytes(world["key"].read_bytes())
    key.chmod(0o640)
    cfg = write_config(tmp_path, broker_url="mqtt://127.0.0.1:1", port=free_port(),
                       root_pub=world["root"], extra=f'\n[encryption]\nkey_file = "{key}"\n')
    out = subprocess.run([sys.executable, "-m", "edgeship", "agent", "run", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "chmod 600" in out.stderr
    assert "PRIVATE KEY" not in out.stderr


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_key_from_env_credential_and_command(tmp_path: Path, world: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pem = world["key"].read_bytes()
    want = keyid_of_public(pem)
    monkeypatch.setenv("EDGESHIP_TEST_DEVICE_KEY", pem.decode())
    assert keyid_of_public(load_device_key(EncryptionConfig(key_env="EDGESHIP_TEST_DEVICE_KEY"))) \
        == want
    # taken out of the environment: no child of the agent inherits the key
    assert "EDGESHIP_TEST_DEVICE_KEY" not in os.environ
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "edgeship-device-key").write_bytes(pem)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    got = load_device_key(EncryptionConfig(key_credential="edgeship-device-key"))
    assert keyid_of_public(got) == want
    argv = (sys.executable, "-c", f"print(open({str(world['key'])!r}).read())")
    assert keyid_of_public(load_device_key(EncryptionConfig(key_command=argv))) == want
    with pytest.raises(ConfigError, match="exited with 3"):
        load_device_key(EncryptionConfig(key_command=(sys.executable, "-c",
                                                      "import sys; sys.exit(3)")))
    with pytest.raises(ConfigError, match="not an X25519 private key"):
        load_device_key(EncryptionConfig(key_command=(sys.executable, "-c", "print('junk')")))
    # a key command that hangs is stopped with what it started (its process group)
    marker = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(p.pid)); "
            "time.sleep(60)")
    with pytest.raises(ConfigError, match="did not finish"):
        load_device_key(EncryptionConfig(key_command=(sys.executable, "-c", hang, str(marker)),
                                         command_timeout_s=2))
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 30
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(grandchild)
    with pytest.raises(ConfigError, match="not set"):
        load_device_key(EncryptionConfig(key_env="EDGESHIP_TEST_DEVICE_KEY"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_device_key(EncryptionConfig(key_credential="edgeship-device-key"))
    with pytest.raises(ConfigError, match="one key source"):
        EncryptionConfig(key_env="A", key_file="b")
    assert load_device_key(EncryptionConfig()) is None
    assert os.environ.get("EDGESHIP_TEST_DEVICE_KEY") is None


def test_config_sections_encryption_drift_shadow(tmp_path: Path) -> None:
    from edgeship.agent._config import load_config

    base = ('device_id = "d"\nfleet = "f"\ndata_dir = "data"\nroot_key = "root.pub"\n')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(base + '[encryption]\nkey_file = "keys/device.key"\n'
                   "[drift]\nwindow = 200\npsi_alert = 0.3\nmin_samples = 100\n"
                   "[shadow]\nsample = 0.5\ncpu_budget = 1\nqueue = 4\nsampel = 1\n")
    config = load_config(cfg)
    assert config.encryption.key_file == str(tmp_path.resolve() / "keys" / "device.key")
    assert config.drift.window == 200 and config.drift.psi_alert == 0.3
    assert config.shadow.sample == 0.5 and config.shadow.cpu_budget == 1.0
    assert config.ignored_keys == ("shadow.sampel",)  # a typo is logged, not silently used
    assert config.to_dict()["shadow"]["queue"] == 4
    default = tmp_path / "plain.toml"
    default.write_text(base)
    plain = load_config(default)
    assert plain.drift is None and plain.shadow is None and not plain.encryption.enabled
    for table, message in (("[shadow]\nsample = 2.0\n", "shadow.sample"),
                           ("[drift]\nwindow = true\n", "drift.window"),
                           ('[encryption]\nkey_command = "tool"\n', "encryption.key_command"),
                           ('[encryption]\nkey_env = "A"\nkey_credential = "c"\n',
                            "one key source")):
        cfg.write_text(base + table)
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)


# ---- the pure core with encrypted releases (in-memory shell of test_ota_core) -------------
def core_shell(world: dict[str, Any], *, key: bool = True, require: bool = False) -> Any:
    from edgeship.agent._health import golden_check
    from edgeship.agent._ota import HealthChecked, LocalRelease, OtaCore, RunHealthCheck
    from edgeship.sdk.release._crypt import Encryption, decrypt, load_private_key, unwrap_data_key
    from edgeship.sdk.runtime._model import Model
    from test_ota_core import MemoryShell

    private = load_private_key(world["key"].read_bytes()) if key else None

    class DecryptingShell(MemoryShell):
        def perform(self, action: Any) -> list[Any]:
            if isinstance(action, RunHealthCheck) and action.encryption is not None:
                data_key = unwrap_data_key(Encryption.from_dict(action.encryption), private)
                plain = decrypt(self.slots[action.slot], data_key)
                reason = golden_check(Model.load_bytes(plain, format=action.format),
                                      action.golden)
                return [HealthChecked(ok=reason is None, reason=reason or "")]
            return super().perform(action)

    core = OtaCore(device="d1", model="model", root_key=world["root"].read_bytes(),
                   chunk_size=1024, private_key=private, require_encryption=require)
    shell = DecryptingShell(core, [world["v1"], world["v2"], world["v3"]])
    rel = Release.load(world["v1"])
    shell.run(LocalRelease(offer=offer_bytes(world["v1"]), artifact=rel.read_artifact()))
    return shell


def test_core_refuses_plaintext_releases_when_encryption_is_required(
        world: dict[str, Any], tmp_path: Path) -> None:
    """A release built without --encrypt-for would put the model on the disk in the
    clear: with ``[encryption] require`` the device refuses it before downloading."""
    from edgeship.agent._config import EncryptionConfig
    from edgeship.agent._ota import OfferReceived

    work = tmp_path / "build"
    model = make_model(work / "model.onnx", version_bias("6.0.0"))
    plain = Release.build(model, version="6.0.0", keydir=world["root"].parent,
                          out=tmp_path / "6.0.0", model_name="model")
    shell = core_shell(world, require=True)  # the encrypted 1.0.0 is taken
    assert shell.state.phase == "committed" and shell.serving == "1.0.0"
    shell.run(OfferReceived(offer_bytes(plain.path)))
    assert shell.state.phase == "failed" and shell.serving == "1.0.0"
    assert "MismatchError" in shell.state.error and "not encrypted" in shell.state.error
    assert shell.served_bytes == 0 and shell.state.job is None
    lax = core_shell(world)  # without require the same offer is taken (download starts)
    lax.run(OfferReceived(offer_bytes(plain.path)))
    assert "not encrypted" not in lax.state.error and lax.state.target == "6.0.0"
    with pytest.raises(ConfigError, match="needs a key source"):
        EncryptionConfig(require=True)


def test_core_encrypted_delta_and_refusals(world: dict[str, Any]) -> None:
    from edgeship.agent._ota import OfferReceived

    shell = core_shell(world)
    assert shell.state.phase == "committed" and shell.serving == "1.0.0"
    active = shell.state.active
    assert active.encryption is not None and len(active.encryption["recipients"]) == 1
    assert active.encryption["recipients"][0]["keyid"] == keyid_of_public(
        world["key"].read_bytes())  # reduced to this device (the release also lists others)
    assert len(Release.load(world["v1"]).manifest.encryption.recipients) > 1
    shell.run(OfferReceived(offer_bytes(world["v3"])))  # not for this device's key
    assert shell.state.phase == "failed" and "DecryptionError" in shell.state.error
    assert shell.served_bytes == 0 and shell.state.job is None
    assert shell.state.trusted.seen == shell.disk_state.trusted.seen
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "committed", shell.state.error
    assert shell.serving == "2.0.0"
    assert shell.slots["b"] == Release.load(world["v2"]).read_artifact()  # ciphertext kept
    assert shell.served_bytes < Release.load(world["v2"]).manifest.artifact.size // 4  # delta

    keyless = core_shell(world, key=False)  # no [encryption] key: refused, nothing fetched
    assert keyless.state.phase == "failed" and "no [encryption] key" in keyless.state.error
    assert keyless.slots == {}


def test_health_check_child_decrypts_with_the_key_from_its_pipe(
        world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship.agent._child import child_env
    from edgeship.agent._health import run_health_check

    monkeypatch.setenv("EDGESHIP_TEST_DEVICE_KEY", world["key"].read_text())  # key_env
    monkeypatch.setenv("EDGESHIP_TEST_OTHER", "kept")
    env = child_env()
    assert "EDGESHIP_TEST_DEVICE_KEY" not in env and env["EDGESHIP_TEST_OTHER"] == "kept"
    from edgeship.sdk.release._crypt import load_private_key, unwrap_data_key

    rel = Release.load(world["v1"])
    path = rel.path / rel.manifest.artifact.name
    golden = rel.manifest.golden.to_dict()
    data_key = unwrap_data_key(rel.manifest.encryption,
                               load_private_key(world["key"].read_bytes()))
    assert run_health_check(path, golden, data_key=data_key, timeout=60) == (True, "")
    ok, reason = run_health_check(path, golden, data_key=bytes(32), timeout=60)
    assert not ok and "DecryptionError" in reason and "fails authentication" in reason
    ok, reason = run_health_check(path, golden, timeout=60)  # ciphertext is no model
    assert not ok and reason
