"""The operator's side of the fleet database with real processes: `fleet status` answering
from the database once the broker's retained statuses are gone, heartbeats as "last
seen" (`fleet record`), pausing and resuming a running `fleet push`, and `push
--retry-failed` for a device that was offline during its wave."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto
from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.transport._mqtt import MqttEdge
from simulator import SwarmProc
from test_agent_support import make_keys, make_release

FLEET = "depot"
DEVICES = [f"dev-{i:04d}" for i in range(8)]


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("dbops-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "1.1.0", base=v1)
    return {"v1": v1, "v2": v2, "root": keys / "root.pub"}


@pytest.fixture
def server(mosquitto: Mosquitto, rels: dict[str, Path]) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                             mosquitto.url, "--fleet", FLEET, "--releases", str(rels["v2"])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    yield
    proc.terminate()
    proc.wait(timeout=10)


def swarm(mosquitto: Mosquitto, rels: dict[str, Path], devices: list[str]) -> SwarmProc:
    sim = SwarmProc(broker_url=mosquitto.url, fleet=FLEET, root=rels["root"],
                    initial=rels["v1"], devices=devices, chunk_size=512, request_timeout_s=1.0)
    assert sim.wait_ready() == len(devices)
    return sim


def edgeship(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def publish(url: str, items: list[tuple[str, bytes, bool]]) -> None:
    edge = MqttEdge(url, client_id=f"test-pub-{time.monotonic_ns()}")
    edge.start()
    assert edge.wait_connected(30)
    for topic, payload, retain in items:
        info = edge.publish(topic, payload, retain=retain)
        assert info is not None
        info.wait_for_publish(5)
    edge.stop()


def status_json(url: str, db: str) -> dict[str, dict[str, Any]]:
    out = edgeship("fleet", "status", "--broker", url, "--fleet", FLEET, "--db", db, "--json",
                   "--timeout", "3")
    assert out.returncode == 0, out.stderr
    return {d["device"]: d for d in json.loads(out.stdout)["devices"]}


def test_status_answers_from_the_database_with_heartbeats(
        mosquitto: Mosquitto, rels: dict[str, Path], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    sim = swarm(mosquitto, rels, DEVICES)
    recorder = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "record", "--broker",
                                 mosquitto.url, "--fleet", FLEET, "--db", db, "--interval",
                                 "0.2"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    try:
        # connected, retained statuses recorded (a loaded machine may take seconds to start it)
        _wait_recorded(db, lambda devs: sorted(devs) == DEVICES)
        beat = time.time() + 1000  # a heartbeat newer than any status
        heartbeat = [(f"edgeship/{FLEET}/dev-0002/telemetry",
                      json.dumps({"ts": beat, "requests": 3}).encode(), False)]
        # telemetry is not retained: sent again until recorded, as a device beats on
        _wait_recorded(db, lambda devs: devs["dev-0002"]["last_seen"] == beat,
                       every=lambda: publish(mosquitto.url, heartbeat))
    finally:
        recorder.terminate()
        _, err = recorder.communicate(timeout=20)
        sim.stop()
    assert recorder.returncode == 0 and f"recorded {len(DEVICES)} devices" in err, err
    # the broker forgets every retained status (as after a restart without persistence)
    publish(mosquitto.url, [(f"edgeship/{FLEET}/{d}/status", b"", True) for d in DEVICES])
    time.sleep(0.3)
    got = status_json(mosquitto.url, db)
    assert sorted(got) == DEVICES
    assert all(s["version"] == "1.0.0" and s["source"] == "database" for s in got.values())
    assert got["dev-0002"]["last_seen"] == pytest.approx(beat)
    assert got["dev-0001"]["last_seen"] == got["dev-0001"]["ts"]  # no heartbeat: its status
    # the broker gone altogether: the database alone answers, with a warning
    mosquitto.stop()
    out = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET, "--db", db,
                   "--timeout", "1")
    assert out.returncode == 0 and "answering from the fleet database" in out.stderr
    assert "dev-0007" in out.stdout and "versions  1.0.0: 8" in out.stdout


def _wait_recorded(db: str, ok: Any, every: Any = None, timeout: float = 60) -> None:
    """Polls the devices `fleet record` wrote until ``ok(devices)``; calls ``every()``
    about once a second meanwhile."""
    path = Path(db.removeprefix("sqlite:///"))
    deadline, last = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if every is not None and time.monotonic() - last > 1.0:
            every()
            last = time.monotonic()
        if path.exists():  # created by the recorder: the test only reads it
            with FleetDB(db) as fdb:
                if ok(fdb.devices(FLEET)):
                    return
        time.sleep(0.05)
    raise AssertionError("fleet record never recorded that")


def test_pause_holds_a_running_push_and_resume_lets_it_finish(
        mosquitto: Mosquitto, rels: dict[str, Path], server: None, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    sim = swarm(mosquitto, rels, DEVICES)
    cmd = [sys.executable, "-m", "edgeship", "fleet", "push", str(rels["v2"]), "--broker",
           mosquitto.url, "--fleet", FLEET, "--db", db, "--devices", ",".join(DEVICES),
           "--canary", "25%", "--waves", "100%", "--json"]
    try:
        out = edgeship(*cmd[3:])  # without --wait: offers the canary and returns
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["waves"][0]["offered_at"] is not None
        out = edgeship("fleet", "pause", "--db", db, f"{FLEET}/model/1.1.0")
        assert out.returncode == 0 and out.stdout.strip().endswith("paused"), out.stderr
        push = subprocess.Popen([*cmd, "--wait"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rollout = _wait_for(db, lambda r: r.outcomes["dev-0000"] == "committed")
        time.sleep(3.0)  # the canary is done; paused, the next wave must not open
        with FleetDB(db) as fdb:
            held = fdb.load(rollout.key)
        assert held is not None and held.status == "paused"
        assert held.waves[1].offered_at is None and push.poll() is None
        out = edgeship("fleet", "resume", "--db", db, f"{FLEET}/model/1.1.0")
        assert out.returncode == 0 and out.stdout.strip().endswith("running"), out.stderr
        out_s, err = push.communicate(timeout=120)
        assert push.returncode == 0, err
        rep = json.loads(out_s)
        assert rep["status"] == "completed" and rep["counts"]["committed"] == len(DEVICES)
        listed = json.loads(edgeship("fleet", "rollouts", "--db", db, "--json").stdout)
        assert [(r["status"], r["done"]) for r in listed["rollouts"]] == \
            [("completed", len(DEVICES))]
    finally:
        sim.stop()


def test_retry_failed_offers_again_only_to_devices_that_failed(
        mosquitto: Mosquitto, rels: dict[str, Path], server: None, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    online, offline = DEVICES[:6], DEVICES[6:]
    sim = swarm(mosquitto, rels, online)
    late = None
    try:
        # the wave's timeout is what fails the two offline devices; the six online ones
        # must all commit within it, on a loaded machine too
        out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                       FLEET, "--db", db, "--devices", ",".join(DEVICES), "--wave-timeout", "12",
                       "--wait", "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["counts"]["committed"] == 6 and rep["counts"]["timeout"] == 2
        # the two come online; they see the retained offer by themselves, so to prove the
        # retry we clear it first (as a broker restart without persistence would)
        publish(mosquitto.url, [(f"edgeship/{FLEET}/{d}/ota/offer", b"", True)
                                for d in offline])
        late = swarm(mosquitto, rels, offline)
        time.sleep(1.0)
        out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                       FLEET, "--db", db, "--retry-failed", "--wave-timeout", "60", "--wait",
                       "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["status"] == "completed" and rep["counts"]["committed"] == len(DEVICES)
        assert rep["waves"][-1]["name"] == "retry 1" and rep["waves"][-1]["devices"] == 2
        with FleetDB(db) as fdb:
            (key, _, _), = fdb.list(FLEET)
            counts = fdb.offer_counts(key)
        assert counts == {**dict.fromkeys(online, 1), **dict.fromkeys(offline, 2)}
        out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                       FLEET, "--db", db, "--retry-failed")
        assert out.returncode == 2 and "nothing to retry" in out.stderr
    finally:
        sim.stop()
        if late is not None:
            late.stop()


def _wait_for(db: str, ok: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with FleetDB(db) as fdb:
            rows = fdb.list(FLEET)
            rollout = fdb.load(rows[0][0]) if rows else None
        if rollout is not None and ok(rollout):
            return rollout
        time.sleep(0.05)
    raise AssertionError("the rollout never got there")


def test_ongoing_rollout_offers_devices_that_join_later(
        mosquitto: Mosquitto, rels: dict[str, Path], server: None, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    first, later = DEVICES[:4], DEVICES[4:6]
    sim = swarm(mosquitto, rels, first)
    late = None
    push = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "push", str(rels["v2"]), "--broker",
         mosquitto.url, "--fleet", FLEET, "--db", db, "--canary", "25%", "--waves", "100%",
         "--ongoing", "--wait", "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the planned waves end; an ongoing rollout stays running
        rollout = _wait_for(db, lambda r: all(w.closed_at for w in r.waves)
                            and r.counts()["committed"] == len(first))
        assert rollout.status == "running" and sorted(rollout.outcomes) == first
        late = swarm(mosquitto, rels, later)  # two devices join the fleet
        rollout = _wait_for(db, lambda r: r.counts()["committed"] == len(first) + len(later))
        # the two may report in one look or in two: a joined wave per look that saw any
        joined = rollout.waves[2:]
        assert [w.name for w in rollout.waves[:2]] == ["canary", "wave 1"]
        assert [w.name for w in joined] == [f"joined {i + 1}" for i in range(len(joined))]
        assert sorted(d for w in joined for d in w.devices) == later
        out = edgeship("fleet", "cancel", "--db", db, f"{FLEET}/model/1.1.0")
        assert out.returncode == 0, out.stderr
        out_s, err = push.communicate(timeout=60)
        assert push.returncode == 3, err  # cancelled: the way an ongoing rollout ends
        rep = json.loads(out_s)
        assert rep["ongoing"] is True and rep["status"] == "cancelled"
        rep_joined = [w for w in rep["waves"] if w["name"].startswith("joined ")]
        assert len(rep_joined) == len(joined)
        assert sum(w["devices"] for w in rep_joined) == 2
        assert sum(w["done"] for w in rep_joined) == 2
        assert sum(w["failed"] for w in rep_joined) == 0
    finally:
        if push.poll() is None:
            push.kill()
        sim.stop()
        if late is not None:
            late.stop()


def test_max_concurrent_caps_devices_updating_at_once(
        mosquitto: Mosquitto, rels: dict[str, Path], server: None, tmp_path: Path) -> None:
    """A subscriber sees the offers and the devices' statuses in the order the broker got
    them: whenever an offer goes out, at most two offered devices lack a verdict."""
    import threading

    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    sim = swarm(mosquitto, rels, DEVICES)
    lock = threading.Lock()
    offered: list[str] = []
    done: set[str] = set()
    retained: set[str] = set()
    peak = [0]

    def on_message(msg: Any) -> None:
        _, _, dev, *kind = msg.topic.split("/")
        with lock:
            if kind == ["ota", "offer"] and msg.payload and not msg.retain:
                offered.append(dev)
                peak[0] = max(peak[0], len(set(offered) - done))
            elif kind == ["status"] and msg.payload:
                if msg.retain:
                    retained.add(dev)
                doc = json.loads(msg.payload)
                if doc.get("state") in ("committed", "rolled-back", "failed"):
                    done.add(dev)

    edge = MqttEdge(mosquitto.url, client_id="test-watch-cap", on_message=on_message,
                    subscriptions=[f"edgeship/{FLEET}/+/ota/offer", f"edgeship/{FLEET}/+/status"])
    edge.start()
    try:
        assert edge.wait_connected(30)
        # every retained status from before (committed to 1.0.0) is in before it is forgotten
        _until(lambda: retained == set(DEVICES), lock)
        with lock:
            done.clear()
        out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                       FLEET, "--db", db, "--max-concurrent", "2", "--wave-timeout", "60",
                       "--wait", "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["status"] == "completed" and rep["counts"]["committed"] == len(DEVICES)
        assert rep["policy"]["max_concurrent"] == 2
        # the watcher sees each offer before that device's verdict: once it has every
        # verdict, it has every offer
        _until(lambda: done == set(DEVICES), lock)
    finally:
        edge.stop()
        sim.stop()
    assert sorted(offered) == DEVICES  # each once
    assert peak[0] == 2, peak  # the cap was reached and never passed


def _until(ok: Any, lock: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            if ok():
                return
        time.sleep(0.05)
    raise AssertionError("the watcher never saw that")
