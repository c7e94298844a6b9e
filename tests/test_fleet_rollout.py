"""Staged rollouts end to end: a real mosquitto, real `edgeship fleet serve` and
`edgeship fleet push` processes, and 20 simulated devices running the agent's own OTA
core (tests/simulator.py) with real signed releases and deltas."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto
from edgeship.sdk.fleet._fleetdb import FleetDB
from simulator import SwarmProc
from test_agent_support import make_keys, make_release

FLEET = "plant"
DEVICES = [f"dev-{i:04d}" for i in range(20)]
BROKEN = ["dev-0003", "dev-0004", "dev-0015"]


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fleet-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "1.1.0", base=v1)
    return {"v1": v1, "v2": v2, "root": keys / "root.pub"}


def edgeship(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def server(mosquitto: Mosquitto, rels: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                             mosquitto.url, "--fleet", FLEET, "--releases", str(rels["v1"]),
                             str(rels["v2"])], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def swarm(mosquitto: Mosquitto, rels: dict[str, Path]) -> Iterator[SwarmProc]:
    sim = SwarmProc(broker_url=mosquitto.url, fleet=FLEET, root=rels["root"],
                    initial=rels["v1"], devices=DEVICES, broken=BROKEN, chunk_size=512,
                    request_timeout_s=1.0)
    assert sim.wait_ready() == len(DEVICES)
    yield sim
    sim.stop()


def fleet_status(mosquitto: Mosquitto) -> dict[str, dict[str, Any]]:
    out = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET, "--json")
    assert out.returncode == 0, out.stderr
    return {d["device"]: d for d in json.loads(out.stdout)["devices"]}


def retained_offers(mosquitto: Mosquitto) -> set[str]:
    """Devices that have a retained offer waiting on their offer topic."""
    from edgeship.sdk.transport._mqtt import MqttEdge

    got: set[str] = set()
    edge = MqttEdge(mosquitto.url, client_id="test-offers",
                    subscriptions=[f"edgeship/{FLEET}/+/ota/offer"],
                    on_message=lambda m: got.add(m.topic.split("/")[2]) if m.payload else None)
    edge.start()
    assert edge.wait_connected(30)
    time.sleep(1.0)
    edge.stop()
    return got


def push(mosquitto: Mosquitto, rels: dict[str, Path], state: Path, *extra: str
         ) -> subprocess.CompletedProcess[str]:
    return edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                    FLEET, "--state", str(state), "--wait", "--json", *extra)


def test_rollout_halts_at_failure_rate_then_resumes_to_the_end(
        mosquitto: Mosquitto, rels: dict[str, Path], server: Any, swarm: SwarmProc,
        tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    before = fleet_status(mosquitto)
    assert sorted(before) == DEVICES and {d["version"] for d in before.values()} == {"1.0.0"}

    # no --devices: the 20 devices that report a status, in name order
    out = push(mosquitto, rels, state, "--canary", "10%", "--waves", "25%,50%,100%",
               "--max-failure-rate", "0.25", "--wave-timeout", "60")
    assert out.returncode == 3, out.stderr  # halted
    rep = json.loads(out.stdout)
    assert rep["status"] == "halted" and "passed the limit of 25%" in rep["reason"]
    assert [w["devices"] for w in rep["waves"]] == [2, 3, 5, 10]
    assert rep["waves"][2]["offered_at"] is None  # the halt came before wave 2
    failed = {d for d, v in rep["devices"].items() if v["outcome"] in ("rolled-back", "failed")}
    assert failed == {"dev-0003", "dev-0004"}
    assert "health check failed" in rep["devices"]["dev-0003"]["error"]

    # the remaining 15 devices were left alone: no offer, still on 1.0.0 and idle on it
    untouched = DEVICES[5:]
    assert retained_offers(mosquitto) == set(DEVICES[:5])
    now = fleet_status(mosquitto)
    for dev in untouched:
        assert now[dev]["version"] == "1.0.0" and now[dev]["target"] == "1.0.0", now[dev]
    for dev in ("dev-0003", "dev-0004"):
        assert now[dev]["state"] == "rolled-back" and now[dev]["version"] == "1.0.0"
        assert "golden output differs" in now[dev]["error"]

    # the operator accepts a higher rate: the same push resumes from the recorded state
    out = push(mosquitto, rels, state, "--max-failure-rate", "0.5")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["status"] == "completed" and [w["devices"] for w in rep["waves"]] == [2, 3, 5, 10]
    assert rep["counts"]["committed"] == 17 and rep["counts"]["rolled-back"] == 3
    final = fleet_status(mosquitto)
    assert {d for d, s in final.items() if s["version"] == "1.1.0"} == set(DEVICES) - set(BROKEN)
    assert all(final[d]["version"] == "1.0.0" for d in BROKEN)
    with FleetDB(state) as db:
        (key, status, _), = db.list(FLEET)
        kinds = [kind for _, kind, _ in db.events(key)]
    assert status == "completed"
    assert kinds[0] == "created" and "halted" in kinds and "resumed" in kinds


def test_killed_push_resumes_where_it_stopped(mosquitto: Mosquitto, rels: dict[str, Path],
                                              server: Any, swarm: SwarmProc,
                                              tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    devices = [d for d in DEVICES if d not in BROKEN][:12]
    cmd = [sys.executable, "-m", "edgeship", "fleet", "push", str(rels["v2"]), "--broker",
           mosquitto.url, "--fleet", FLEET, "--state", str(state), "--devices",
           ",".join(devices), "--canary", "10%", "--waves",
           ",".join(f"{p}%" for p in range(10, 101, 10)), "--wait"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    closed = 0
    while time.monotonic() < deadline and closed < 3:
        time.sleep(0.05)
        if state.exists():
            with FleetDB(state) as db:
                rows = db.list(FLEET)
                rollout = db.load(rows[0][0]) if rows else None
            closed = sum(w.closed_at is not None for w in rollout.waves) if rollout else 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rollout is not None and rollout.status == "running" and closed >= 3
    assert rollout.counts()["pending"] > 0  # killed mid-rollout

    out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                   FLEET, "--state", str(state), "--wait", "--json")  # same release: resumes
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["status"] == "completed" and sorted(rep["devices"]) == sorted(devices)
    assert rep["counts"]["committed"] == len(devices)
    # the waves already done were not redone: the recorded offer times survived the kill
    done_before = [w for w in rollout.waves if w.closed_at is not None]
    for old, new in zip(done_before, rep["waves"], strict=False):
        assert new["offered_at"] == old.offered_at
    final = fleet_status(mosquitto)
    assert all(final[d]["version"] == "1.1.0" for d in devices)
    assert all(final[d]["version"] == "1.0.0" for d in DEVICES if d not in devices)


def test_status_table_and_bad_input(mosquitto: Mosquitto, swarm: SwarmProc,
                                    rels: dict[str, Path], tmp_path: Path) -> None:
    out = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET)
    assert out.returncode == 0, out.stderr
    assert "dev-0019" in out.stdout and "versions  1.0.0: 20" in out.stdout
    out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                   "nobody-here", "--state", str(tmp_path / "s.sqlite"))
    assert out.returncode == 2 and "no devices of fleet 'nobody-here'" in out.stderr
    out = edgeship("fleet", "push", str(rels["v2"]), "--broker", mosquitto.url, "--fleet",
                   FLEET, "--waves", "50%,10%", "--state", str(tmp_path / "s.sqlite"))
    assert out.returncode == 2 and out.stderr.startswith("error: --waves")
