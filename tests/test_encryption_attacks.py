"""Encrypted releases under attack and operator mistakes (review of issue 10): a device
key changed on a device holding an encrypted model, key files that are not what they seem,
manifests with unusual encryption sections. Real agent subprocesses, real mosquitto."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from edgeship.agent._config import EncryptionConfig
from edgeship.agent._device_key import key_file_problem, load_device_key
from edgeship.sdk._crypt import keyid_of_public, write_key_pair
from edgeship.sdk._release import Release
from test_agent_encrypted import encrypted_release, serve
from test_agent_support import (
    AgentProc,
    Watcher,
    make_keys,
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
    return {"tmp": tmp, "root": keys / "root.pub", "old_key": old_key, "new_key": new_key,
            "new_id": new_id, "v1": v1, "v2": v2}


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
