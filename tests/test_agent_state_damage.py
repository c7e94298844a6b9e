"""Issue 16, defect 1: a damaged ``state.json`` must not stop the device.

A real agent installs v1.0.0 (initial) and v1.0.1 (over MQTT from ``fleet serve``); its
data dir is the template. Each variant damages ``state.json`` of a copy in one way and
starts a real agent on it: it must come up serving v1.0.1 (the newest slot that verifies
against the root key), keep the damaged file aside, log one line, report it in the
status, and keep the rollback floor at or above what it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.release._manifest import parse_version
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    make_keys,
    make_release,
    offer_bytes,
    served_version,
    start_fleet_serve,
    version_bias,
    write_config,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory,
             shared_mosquitto: Mosquitto) -> dict[str, Any]:
    """A data dir with v1.0.0 in slot a and v1.0.1 (committed, active) in slot b."""
    tmp = tmp_path_factory.mktemp("damage")
    keys = make_keys(tmp)
    rel0 = make_release(tmp, keys, "1.0.0")
    rel1 = make_release(tmp, keys, "1.0.1", seed=1)
    rel2 = make_release(tmp, keys, "1.0.2", seed=2)
    fleet = "dmg"
    server = start_fleet_serve(shared_mosquitto.url, rel1, fleet=fleet)
    port = free_port()
    cfg = write_config(tmp, broker_url=shared_mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=rel0, fleet=fleet)
    agent = AgentProc(cfg, port).start()
    watch = Watcher(shared_mosquitto.url, fleet=fleet)
    try:
        agent.wait_ready()
        watch.publish(f"edgeship/{fleet}/dev-1/ota/offer", offer_bytes(rel1), retain=True)
        watch.wait(lambda s: s["version"] == "1.0.1" and s["state"] == "committed", timeout=60)
        assert agent.terminate() == 0
        watch.publish(f"edgeship/{fleet}/dev-1/ota/offer", b"", retain=True)
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
    data = tmp / "data-dev-1"
    return {"data": data, "root": keys / "root.pub", "rel0": rel0, "offer2": offer_bytes(rel2),
            "offer1": offer_bytes(rel1),
            "state": json.loads((data / "state.json").read_bytes())}


def _doc(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any], Any], bytes]:
    def make(state: dict[str, Any], t: dict[str, Any]) -> bytes:
        doc = json.loads(json.dumps(state))
        change(doc)
        return json.dumps(doc).encode()
    return make


def _job(t: dict[str, Any], **over: Any) -> dict[str, Any]:
    job = {"offer": t["offer2"].decode(), "version": "1.0.2", "file": "model.onnx",
           "size": 5000, "sha256": "0" * 64, "delta": False, "chunk_size": 4096, "received": 0,
           "slot": "a", "switched": False, "switch_attempts": 0, "mode": "active"}
    return {**job, **over}


def _with_job(**over: Any) -> Callable[[dict[str, Any], Any], bytes]:
    def make(state: dict[str, Any], t: dict[str, Any]) -> bytes:
        doc = {**state, "phase": "downloading", "job": _job(t, **over)}
        return json.dumps(doc).encode()
    return make


def _raw(data: bytes) -> Callable[[dict[str, Any], Any], bytes]:
    return lambda state, t: data


def _higher_floor(doc: dict[str, Any]) -> None:
    doc["active"] = 5  # unusable, but the floor it holds must survive
    doc["trusted"]["seen"] = {k: "1.0.7" for k in doc["trusted"]["seen"]}


VARIANTS: dict[str, Callable[[dict[str, Any], Any], bytes] | None] = {
    "empty": _raw(b""),
    "truncated": lambda s, t: json.dumps(s).encode()[: len(json.dumps(s)) // 2],
    "nul_filled": lambda s, t: b"\0" * len(json.dumps(s)),
    "list": _raw(b"[]"),
    "null": _raw(b"null"),
    "empty_object": _raw(b"{}"),
    "no_trusted": _doc(lambda d: d.pop("trusted")),
    "no_active": _doc(lambda d: d.pop("active")),
    "trusted_5": _doc(lambda d: d.update(trusted=5)),
    "seen_not_versions": _doc(lambda d: d["trusted"].update(seen={"k": "latest"})),
    "active_5": _doc(lambda d: d.update(active=5)),
    "active_slot_c": _doc(lambda d: d["active"].update(slot="c")),
    "unknown_phase": _doc(lambda d: d.update(phase="exploded")),
    "bad_job": _doc(lambda d: d.update(phase="downloading", job={"version": 1})),
    "job_string": _doc(lambda d: d.update(phase="downloading", job="x")),
    "chunk_size_0": _with_job(chunk_size=0),
    "received_negative": _with_job(received=-3),
    "not_utf8": _raw(b"\xff\xfe{\"phase\": \x80}"),
    "nested_100000": _raw(b"[" * 100_000),
    "over_8_mib": _raw(b" " * (8 * 1024 * 1024 + 1)),
    "directory": None,
    "floor_higher_than_slots": _doc(_higher_floor),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_damaged_state_serves_newest_verified_slot(variant: str, tmp_path: Path,
                                                   shared_mosquitto: Mosquitto,
                                                   template: dict[str, Any]) -> None:
    data = tmp_path / "data-dev-1"
    shutil.copytree(template["data"], data)
    state_path = data / "state.json"
    make = VARIANTS[variant]
    damaged = b""
    if make is None:
        state_path.unlink()
        (state_path / "junk").mkdir(parents=True)
    else:
        damaged = make(template["state"], template)
        state_path.write_bytes(damaged)
    port = free_port()
    cfg = write_config(tmp_path, broker_url=shared_mosquitto.url, port=port,
                       root_pub=template["root"], initial=template["rel0"], fleet=f"v-{variant}")
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        version, y = served_version(agent.url)
        assert version == "1.0.1", (variant, agent.log[-5:])
        np.testing.assert_allclose(y, expected(version_bias("1.0.1"), GOLDEN_X, seed=1),
                                   rtol=1e-5)
        status = agent.wait_log(lambda line: line.get("event") == "status", timeout=60)
    finally:
        agent.terminate()
    notes = [line for line in agent.log if line.get("event") == "state_damaged"]
    assert len(notes) == 1, agent.log
    assert "state.json was damaged" in status["error"] and status["version"] == "1.0.1"
    kept = list(data.glob("state.json.damaged-*"))
    assert len(kept) == 1
    if make is not None:
        assert kept[0].read_bytes() == damaged
    else:
        assert (kept[0] / "junk").is_dir()
    floor = max(parse_version(v) for v in
                json.loads(state_path.read_bytes())["trusted"]["seen"].values())
    want = (1, 0, 7) if variant == "floor_higher_than_slots" else (1, 0, 1)
    assert floor == want
    assert not (data / "download.part").exists()


def _serves_slot_a(tmp_path: Path, broker: Mosquitto, root_pub: Path, *, fleet: str,
                   initial: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a real agent on the damaged copy in ``tmp_path``: it must serve 1.0.0 from
    slot a and say so in one state_damaged line. Returns that line and the agent's log."""
    port = free_port()
    cfg = write_config(tmp_path, broker_url=broker.url, port=port, root_pub=root_pub,
                       initial=initial, fleet=fleet)
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        assert served_version(agent.url)[0] == "1.0.0"
    finally:
        agent.terminate()
    note = next(line for line in agent.log if line.get("event") == "state_damaged")
    assert note["slot"] == "a" and note["version"] == "1.0.0"
    return note, agent.log


def test_tampered_slot_is_not_served(tmp_path: Path, shared_mosquitto: Mosquitto,
                                     template: dict[str, Any]) -> None:
    """Slot b's model changed on disk: only slot a is served, and the floor still holds
    what the stored offers show (1.0.1 was accepted once), never lowered to 1.0.0."""
    data = tmp_path / "data-dev-1"
    shutil.copytree(template["data"], data)
    (data / "state.json").write_bytes(b"")
    model_b = data / "slots" / "b" / "model.onnx"
    model_b.write_bytes(model_b.read_bytes()[:-1] + b"\x01")
    note, _ = _serves_slot_a(tmp_path, shared_mosquitto, template["root"], fleet="v-tampered")
    assert "1.0.1" in note["floor"].values()


def test_slot_of_an_older_agent_is_verified_against_the_initial_release(
        tmp_path: Path, shared_mosquitto: Mosquitto, template: dict[str, Any]) -> None:
    """Slots installed by an agent that did not keep offers: slot a holds exactly the
    initial release, so it verifies against that root-signed offer and is served; slot b
    (an OTA install) has nothing to verify against and is not."""
    data = tmp_path / "data-dev-1"
    shutil.copytree(template["data"], data)
    for offer in data.glob("slots/*/offer.json"):
        offer.unlink()
    (data / "state.json").write_bytes(b"\0" * 64)
    _, log = _serves_slot_a(tmp_path, shared_mosquitto, template["root"], fleet="v-older",
                            initial=template["rel0"])
    assert not any(line.get("event") == "installing_initial" for line in log)


def test_an_older_agents_ota_slot_gets_its_offer_back_and_survives_state_loss(
        tmp_path: Path, shared_mosquitto: Mosquitto, template: dict[str, Any]) -> None:
    """Slot b (1.0.1, active) was installed OTA by an agent that kept no offers. The
    retained offer of 1.0.1 the broker re-delivers is root-signed and names exactly that
    model: it is stored beside it, so after state.json is lost the device still serves
    1.0.1 instead of falling back to the initial release's 1.0.0."""
    data = tmp_path / "data-dev-1"
    shutil.copytree(template["data"], data)
    for offer in data.glob("slots/*/offer.json"):
        offer.unlink()
    fleet = "v-backfill"
    port = free_port()
    cfg = write_config(tmp_path, broker_url=shared_mosquitto.url, port=port,
                       root_pub=template["root"], initial=template["rel0"], fleet=fleet)
    watch = Watcher(shared_mosquitto.url, fleet=fleet)
    topic = f"edgeship/{fleet}/dev-1/ota/offer"
    try:
        agent = AgentProc(cfg, port).start()
        agent.wait_ready()
        assert not (data / "slots" / "b" / "offer.json").exists()
        watch.publish(topic, template["offer1"], retain=True)
        line = agent.wait_log(lambda x: x.get("event") == "slot_offer_restored")
        assert line["slot"] == "b" and line["version"] == "1.0.1"
        assert (data / "slots" / "b" / "offer.json").read_bytes() == template["offer1"]
        agent.terminate()
        watch.publish(topic, b"", retain=True)
    finally:
        watch.close()
    (data / "state.json").write_bytes(b"{")
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        version, y = served_version(agent.url)
    finally:
        agent.terminate()
    assert version == "1.0.1"
    np.testing.assert_allclose(y, expected(version_bias("1.0.1"), GOLDEN_X, seed=1), atol=1e-4)
