"""Broker access control from `edgeship fleet credentials`, enforced by a real mosquitto:
a device is refused other devices' topics (MQTT 5 reason codes on SUBACK / PUBACK), only
the manager may offer, a rollout still works under the ACL, and a forged offer that a
leaked manager password gets past the broker is still rejected by the device."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import Mosquitto
from edgeship.sdk.fleet._acl import hash_password, verify_password, write_credentials
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from simulator import SwarmProc
from test_agent_support import make_keys, make_release

FLEET = "secure"
DEVICES = ["dev-a", "dev-b", "dev-c"]
NOT_AUTHORIZED = 0x87


class Probe:
    """A bare paho MQTT 5 client that records the broker's reason codes."""

    def __init__(self, broker: Mosquitto, user: str, password: str) -> None:
        self.acks: dict[int, list[int]] = {}
        self.connack: int | None = None
        self.event = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{user}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._ack(mid, codes)
        self.client.on_publish = lambda c, u, mid, code, p: self._ack(mid, [code])
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.event.wait(10), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = code.value
        self.event.set()

    def _ack(self, mid: int, codes: list[Any]) -> None:
        self.acks[mid] = [c.value for c in codes]

    def _wait(self, mid: int) -> int:
        deadline = time.monotonic() + 30
        while mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[mid][0]

    def subscribe(self, topic: str) -> int:
        return self._wait(self.client.subscribe(topic, qos=1)[1])

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False,
                response_topic: str | None = None, correlation: bytes | None = None,
                wait: bool = True) -> int:
        props = None
        if response_topic is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation or b""
        mid = self.client.publish(topic, payload, qos=1, retain=retain, properties=props).mid
        return self._wait(mid) if wait else 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "credentials", "--fleet",
                          FLEET, "--devices", ",".join(DEVICES), "-o", str(tmp_path / "creds"),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    info["secrets"] = json.loads((tmp_path / "creds" / "secrets.json").read_text())
    return info


# mosquitto started as root drops to the user "mosquitto" before it reads passwd and acl,
# and pytest's temp dirs are private to root: keep the test broker root
AS_ROOT = "user root\n"


@pytest.fixture
def secure_broker(tmp_path: Path, creds: dict[str, Any]) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path, extra_config=Path(creds["conf"]).read_text() + AS_ROOT)
    broker.start()
    yield broker
    broker.stop()


def test_password_hashes_are_mosquittos_format(tmp_path: Path) -> None:
    hashed = hash_password("s3cret", salt=b"0123456789ab")
    assert hashed.startswith("$7$101$MDEyMzQ1Njc4OWFi$") and verify_password("s3cret", hashed)
    assert not verify_password("other", hashed)
    # the hand-written hashes (no mosquitto_passwd) are accepted by a real mosquitto
    creds = write_credentials(tmp_path / "c", FLEET, ["dev-x"], use_binary=False)
    assert creds.hasher == "edgeship"
    broker = Mosquitto(tmp_path, extra_config=creds.conf.read_text() + AS_ROOT)
    broker.start()
    try:
        good = Probe(broker, "dev-x", creds.users["dev-x"])
        assert good.connack == 0
        assert good.publish(f"edgeship/{FLEET}/dev-x/status") in (0, 0x10)
        good.close()
        bad = Probe(broker, "dev-x", "wrong")
        assert bad.connack != 0
        bad.close()
    finally:
        broker.stop()
    # re-running keeps existing passwords and adds the new device
    again = write_credentials(tmp_path / "c", FLEET, ["dev-x", "dev-y"], use_binary=False)
    assert again.users["dev-x"] == creds.users["dev-x"] and "dev-y" in again.users


def test_device_is_refused_other_devices_topics(secure_broker: Mosquitto,
                                                creds: dict[str, Any]) -> None:
    s = creds["secrets"]
    base = f"edgeship/{FLEET}"
    anon = Probe(secure_broker, "", "")
    assert anon.connack != 0  # no anonymous access
    anon.close()
    a = Probe(secure_broker, "dev-a", s["dev-a"])
    b = Probe(secure_broker, "dev-b", s["dev-b"])
    assert a.connack == 0 and b.connack == 0
    # its own topics
    assert b.subscribe(f"{base}/dev-b/ota/offer") == 1  # granted QoS 1
    assert b.subscribe(f"{base}/dev-b/ota/chunk") == 1
    assert a.publish(f"{base}/dev-a/status", retain=True) in (0, 0x10)
    assert a.publish(f"{base}/dev-a/telemetry") in (0, 0x10)
    assert a.publish(f"{base}/dev-a/ota/req") in (0, 0x10)
    # chunk requests only on its own request topic (a server answers on that device's
    # chunk topic); the fleet-wide topic of older agents is closed to devices
    assert a.publish(f"{base}/dev-b/ota/req") == NOT_AUTHORIZED
    assert a.publish(f"{base}/ota/req") == NOT_AUTHORIZED
    # publishing as another device, or an offer, or a chunk: PUBACK "not authorized"
    assert a.publish(f"{base}/dev-b/status", retain=True) == NOT_AUTHORIZED
    assert a.publish(f"{base}/dev-b/telemetry") == NOT_AUTHORIZED
    assert a.publish(f"{base}/dev-b/ota/chunk") == NOT_AUTHORIZED
    assert a.publish(f"{base}/dev-a/ota/offer", retain=True) == NOT_AUTHORIZED
    assert a.publish(f"{base}/dev-b/ota/offer", retain=True) == NOT_AUTHORIZED
    # reading: mosquitto's acl_file checks read access when it delivers (its SUBACK
    # grants any filter), so dev-a's subscriptions to dev-b's topics stay silent
    got: dict[str, list[str]] = {"dev-a": [], "dev-b": []}
    a.client.on_message = lambda c, u, m: got["dev-a"].append(m.topic)
    b.client.on_message = lambda c, u, m: got["dev-b"].append(m.topic)
    for topic in ("dev-b/ota/offer", "dev-b/ota/chunk", "+/ota/chunk", "+/status", "+/ota/req",
                  "#"):
        a.subscribe(f"{base}/{topic}")
    m = Probe(secure_broker, "edgeship-manager", s["edgeship-manager"])
    assert m.publish(f"{base}/dev-b/ota/offer", b"offer", retain=True) in (0, 0x10)
    assert m.publish(f"{base}/dev-b/ota/chunk") == NOT_AUTHORIZED  # only servers send chunks
    srv = Probe(secure_broker, "edgeship-server", s["edgeship-server"])
    assert srv.subscribe(f"$share/g/{base}/+/ota/req") == 1
    assert srv.publish(f"{base}/dev-b/ota/chunk", b"chunk") in (0, 0x10)
    assert srv.publish(f"{base}/dev-c/ota/offer") == NOT_AUTHORIZED  # only the manager offers
    assert b.publish(f"{base}/dev-b/status", b"{}", retain=True) in (0, 0x10)
    assert b.publish(f"{base}/dev-b/ota/req", b"{}") in (0, 0x10)
    deadline = time.monotonic() + 30
    while len(got["dev-b"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert sorted(got["dev-b"]) == [f"{base}/dev-b/ota/chunk", f"{base}/dev-b/ota/offer"]
    assert got["dev-a"] == []  # neither the live messages nor the retained offer
    for probe in (a, b, m, srv):
        probe.close()


def test_rollout_under_acl_and_forged_offer_rejected_by_device(
        secure_broker: Mosquitto, creds: dict[str, Any], tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    v2 = make_release(tmp_path, keys, "1.1.0", base=v1)
    secrets = Path(creds["out"]) / "secrets"
    server = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", secure_broker.url,
         "--fleet", FLEET, "--username", "edgeship-server", "--password-file",
         str(secrets / "edgeship-server.password"), "--releases", str(v1), str(v2)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = SwarmProc(broker_url=secure_broker.url, fleet=FLEET, root=keys / "root.pub",
                    initial=v1, devices=DEVICES, chunk_size=1024, request_timeout_s=1.0,
                    credentials=Path(creds["out"]) / "secrets.json")
    manager = ["--username", "edgeship-manager", "--password-file",
               str(secrets / "edgeship-manager.password")]
    try:
        assert sim.wait_ready() == len(DEVICES)
        out = subprocess.run(
            [sys.executable, "-m", "edgeship", "fleet", "push", str(v2), "--broker",
             secure_broker.url, "--fleet", FLEET, *manager, "--wait", "--json",
             "--wave-timeout", "60", "--state", str(tmp_path / "state.sqlite")],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["counts"]["committed"] == len(DEVICES)

        # an attacker with the manager's broker password but not the release keys
        evil_keys = make_keys(tmp_path / "attacker")
        forged = make_release(tmp_path / "attacker", evil_keys, "9.0.0")
        probe = Probe(secure_broker, "edgeship-manager", creds["secrets"]["edgeship-manager"])
        from edgeship.sdk.release._release import Release

        offer = Release.load(forged).offer().to_bytes()
        assert probe.publish(f"edgeship/{FLEET}/dev-b/ota/offer", offer, retain=True) in (0, 0x10)
        probe.close()
        status = _wait_status(secure_broker, manager, "dev-b",
                              lambda s: s["state"] == "failed")
        assert status["version"] == "1.1.0"  # still serving the genuine release
        assert "offer rejected" in status["error"] and "Signature" in status["error"], status
    finally:
        sim.stop()
        server.terminate()
        server.wait(timeout=10)


def _wait_status(broker: Mosquitto, auth: list[str], device: str, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "status", "--broker",
                              broker.url, "--fleet", FLEET, *auth, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        status = {d["device"]: d for d in json.loads(out.stdout)["devices"]}[device]
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_a_device_cannot_make_the_server_answer_on_another_devices_topics(
        secure_broker: Mosquitto, creds: dict[str, Any], tmp_path: Path) -> None:
    """Issue 16, defect 5 (the ACL half): under the generated ACL, dev-a keeps asking the
    release server for dev-b's chunks with another chunk size, answered on dev-b's chunk
    topic, on every request topic it can try. The broker refuses dev-b's and the fleet-wide
    request topics; the server does not answer a request naming dev-b that came in on
    dev-a's own topic. Nothing of it reaches dev-b's chunk topic, and dev-b (a real agent
    under the ACL) commits its update."""
    import struct

    from conftest import free_port
    from edgeship.sdk.release._release import Release
    from edgeship.sdk.transport._transfer import ChunkRequest, encode_request
    from test_agent_support import AgentProc, offer_bytes, write_config

    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    v2 = make_release(tmp_path, keys, "1.1.0", base=v1, seed=1)
    secrets = Path(creds["out"]) / "secrets"
    base = f"edgeship/{FLEET}"
    server = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", secure_broker.url,
         "--fleet", FLEET, "--username", "edgeship-server", "--password-file",
         str(secrets / "edgeship-server.password"), "--releases", str(v1), str(v2)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    cfg = write_config(tmp_path, broker_url=secure_broker.url, port=port, device="dev-b",
                       fleet=FLEET, root_pub=keys / "root.pub", initial=v1, chunk_size=256)
    cfg.write_text(cfg.read_text().replace(
        f'url = "{secure_broker.url}"\n', f'url = "{secure_broker.url}"\nusername = "dev-b"\n'
        f'password_file = "{secrets / "dev-b.password"}"\n'))
    pause = tmp_path / "pause"
    pause.write_text("chunk=0.05")
    agent = AgentProc(cfg, port, env={"EDGESHIP_AGENT_PAUSE_FILE": str(pause)}).start()
    s = creds["secrets"]
    seen: list[tuple[bytes, int]] = []  # (correlation, chunk length) on dev-b's chunk topic
    victim = Probe(secure_broker, "dev-b", s["dev-b"])
    victim.client.on_message = lambda c, u, m: seen.append(
        (getattr(m.properties, "CorrelationData", b""), struct.unpack(">I", m.payload[26:30])[0]))
    assert victim.subscribe(f"{base}/dev-b/ota/chunk") == 1
    states: list[dict[str, Any]] = []
    manager = Probe(secure_broker, "edgeship-manager", s["edgeship-manager"])
    manager.client.on_message = lambda c, u, m: states.append(json.loads(m.payload))
    assert manager.subscribe(f"{base}/dev-b/status") == 1
    attacker = Probe(secure_broker, "dev-a", s["dev-a"])
    art = Release.load(v2).manifest.artifact
    try:
        agent.wait_ready()
        assert manager.publish(f"{base}/dev-b/ota/offer", offer_bytes(v2), retain=True) in (0, 0x10)
        victim_chunk = f"{base}/dev-b/ota/chunk"
        for topic in (f"{base}/dev-b/ota/req", f"{base}/ota/req"):  # refused by the broker
            forged = ChunkRequest(device="dev-b", model="model", version="1.1.0",
                                  file=art.name, index=0, chunk_size=300)
            assert attacker.publish(topic, encode_request(forged), response_topic=victim_chunk,
                                    correlation=b"attack") == NOT_AUTHORIZED
        deadline = time.monotonic() + 60
        sent = 0
        while time.monotonic() < deadline and not any(
                st["state"] in ("committed", "failed") and st.get("target") == "1.1.0"
                for st in states):
            for index in range(art.size // 300):
                forged = ChunkRequest(device="dev-b", model="model", version="1.1.0",
                                      file=art.name, index=index, chunk_size=300)
                attacker.publish(f"{base}/dev-a/ota/req", encode_request(forged),
                                 response_topic=victim_chunk, correlation=b"attack", wait=False)
                sent += 1
            time.sleep(0.05)
        final = [st for st in states if st["state"] in ("committed", "failed")
                 and st.get("target") == "1.1.0"]
        assert final and final[0]["state"] == "committed", final[:1]
        assert final[0]["version"] == "1.1.0"
        time.sleep(0.5)
    finally:
        for probe in (attacker, victim, manager):
            probe.close()
        agent.terminate()
        server.terminate()
        server.wait(timeout=10)
    assert sent > 50
    assert seen, "the victim's own chunks were not seen on its topic"
    assert not [c for c, _ in seen if c == b"attack"]
    assert max(length for _, length in seen) <= 256, seen[:5]  # the victim's chunk size
