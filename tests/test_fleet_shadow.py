"""Shadow releases from the fleet side: `edgeship fleet push --shadow`, `promote`,
`discard` and the shadow/drift columns of `fleet status`, with a real mosquitto, a real
`fleet serve`, and simulated devices running the agent's own OTA core (tests/simulator.py)
on real signed releases; the pure parts of the rollout logic are tested directly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.fleet._rollout import (
    COMMITTED,
    SHADOWING,
    Rollout,
    RolloutPolicy,
    classify,
    discard_payload,
    discard_targets,
    discard_verdict,
    shadowing_devices,
    start_rollout,
    step,
)
from simulator import SwarmProc
from test_agent_support import (
    AgentProc,
    make_keys,
    make_release,
    served_swarm,
    served_version,
    start_fleet_serve,
    write_config,
)

FLEET = "shadowfleet"
DEVICES = [f"cam-{i}" for i in range(6)]


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shadow-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "1.2.0", seed=7)  # other weights: disagrees with 1.0.0
    return {"v1": v1, "v2": v2, "root": keys / "root.pub"}


def edgeship(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def fleet(mosquitto: Mosquitto, rels: dict[str, Path]) -> Iterator[SwarmProc]:
    with served_swarm(mosquitto.url, FLEET, rels, [rels["v1"], rels["v2"]], DEVICES,
                      2048) as sim:
        yield sim


def status_json(mosquitto: Mosquitto) -> dict[str, Any]:
    out = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def rollout(mosquitto: Mosquitto, command: str, reldir: Path, state: Path, *extra: str
            ) -> subprocess.CompletedProcess[str]:
    return edgeship("fleet", command, str(reldir), "--broker", mosquitto.url, "--fleet", FLEET,
                    "--state", str(state), "--wait", "--json", "--wave-timeout", "60", *extra)


def test_shadow_push_promote_and_discard(mosquitto: Mosquitto, rels: dict[str, Path],
                                         fleet: SwarmProc, tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    out = rollout(mosquitto, "push", rels["v2"], state, "--shadow", "--canary", "20%")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["mode"] == "shadow" and rep["status"] == "completed"
    assert rep["counts"]["shadowing"] == len(DEVICES) and rep["counts"]["committed"] == 0
    assert [w["devices"] for w in rep["waves"]] == [2, 4]

    doc = status_json(mosquitto)
    assert doc["summary"]["shadows"] == {"1.2.0": len(DEVICES)}
    for dev in doc["devices"]:
        assert dev["state"] == "shadowing" and dev["version"] == "1.0.0"  # still answering
        shadow = dev["shadow"]
        assert shadow["version"] == "1.2.0" and shadow["compared"] == 64
        assert shadow["agreement"] < 0.5  # other weights: mostly another top-1 class
    table = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET)
    assert table.returncode == 0, table.stderr
    assert f"1.2.0 {doc['devices'][0]['shadow']['agreement']:.1%} of 64" in table.stdout
    assert f"shadows   1.2.0: {len(DEVICES)}" in table.stdout

    # the same shadow push again resumes its own record; nothing is offered twice
    again = rollout(mosquitto, "push", rels["v2"], state, "--shadow")
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "completed"

    # promote two of them: a normal offer, switched without a download, committed
    out = rollout(mosquitto, "promote", rels["v2"], state, "--devices", "cam-0,cam-1")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["mode"] == "active" and rep["counts"]["committed"] == 2
    assert sorted(rep["devices"]) == ["cam-0", "cam-1"]

    # discard on the rest: by default every device still shadowing 1.2.0
    out = edgeship("fleet", "discard", "1.2.0", "--broker", mosquitto.url, "--fleet", FLEET,
                   "--json", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["devices"] == {d: "discarded" for d in DEVICES[2:]}

    by_dev = {d["device"]: d for d in status_json(mosquitto)["devices"]}
    for dev in ("cam-0", "cam-1"):
        assert by_dev[dev]["state"] == "committed" and by_dev[dev]["version"] == "1.2.0"
        assert by_dev[dev]["shadow"] is None
    for dev in DEVICES[2:]:
        s = by_dev[dev]
        assert s["state"] == "shadow-discarded" and s["version"] == "1.0.0", s
        assert s["shadow"] is None

    # nothing shadows 1.2.0 any more: a new promote record has no devices to go to
    out = rollout(mosquitto, "promote", rels["v2"], tmp_path / "other.sqlite")
    assert out.returncode == 2 and "runs 1.2.0 as its shadow" in out.stderr
    out = edgeship("fleet", "discard", "1.2.0", "--broker", mosquitto.url, "--fleet", FLEET)
    assert out.returncode == 2 and "runs or installs 1.2.0 as a shadow" in out.stderr
    out = edgeship("fleet", "discard", "1.2", "--broker", mosquitto.url, "--fleet", FLEET)
    assert out.returncode == 2 and "not semver" in out.stderr


def test_fleet_commands_drive_a_real_agent(mosquitto: Mosquitto, rels: dict[str, Path],
                                          tmp_path: Path) -> None:
    """The same commands against ``edgeship agent run`` (its shadow in a worker process):
    fleet status carries the real shadow tap's figures; promote commits."""
    server = start_fleet_serve(mosquitto.url, rels["v1"], rels["v2"])
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"], extra="\n[shadow]\nsample = 1.0\ncpu_budget = 2.0\n")
    agent = AgentProc(cfg, port).start()
    state = tmp_path / "fleet.sqlite"

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return edgeship("fleet", *args, "--broker", mosquitto.url, "--fleet", "t")

    try:
        agent.wait_ready()
        out = fleet("push", str(rels["v2"]), "--shadow", "--state", str(state), "--wait",
                    "--json", "--wave-timeout", "60")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["counts"]["shadowing"] == 1
        agent.wait_log(lambda line: line.get("event") == "shadow_ready")
        deadline = time.monotonic() + 60
        while True:  # requests until a status carries the compared figures
            assert [served_version(agent.url)[0] for _ in range(10)] == ["1.0.0"] * 10
            out = fleet("status", "--json")
            (dev,) = json.loads(out.stdout)["devices"]
            if (dev["shadow"] or {}).get("compared", 0) >= 5:
                break
            assert time.monotonic() < deadline, dev
        shadow = dev["shadow"]
        assert dev["state"] == "shadowing" and shadow["version"] == "1.2.0"
        assert shadow["state"] == "running" and 0 <= shadow["agreement"] <= 1
        out = fleet("promote", str(rels["v2"]), "--state", str(state), "--wait", "--json",
                    "--wave-timeout", "60")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["devices"] == {"dev-1": {"outcome": "committed",
                                                               "error": None}}
        assert served_version(agent.url)[0] == "1.2.0"
    finally:
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


def test_status_shows_shadow_and_drift_fields(mosquitto: Mosquitto) -> None:
    """Statuses as the agent daemon publishes them (compact shadow stats and drift verdict
    merged in, per the issue's contract), retained on the broker."""
    from edgeship.sdk.transport._mqtt import MqttEdge

    docs = {
        "d-drift": {"state": "committed", "version": "1.0.0", "target": "1.0.0", "ts": 1.0,
                    "drift": {"alert": True, "max_psi": 0.41, "max_ks": 0.3,
                              "worst": "input[3]", "window": 500}},
        "d-calm": {"state": "shadowing", "version": "1.0.0", "target": "1.1.0", "ts": 1.0,
                   "drift": {"alert": False, "max_psi": 0.02, "max_ks": 0.05, "worst": None,
                             "window": 500},
                   "shadow": {"version": "1.1.0", "state": "running", "sampled": 120,
                              "compared": 118, "agreement": 0.9746, "max_abs_diff": 0.2}},
        "d-old": {"state": "committed", "version": "0.9.0", "ts": 1.0},
    }
    edge = MqttEdge(mosquitto.url, client_id="test-statuses")
    edge.start()
    assert edge.wait_connected(30)
    for dev, doc in docs.items():
        info = edge.publish(f"edgeship/{FLEET}/{dev}/status", json.dumps(doc).encode(),
                            retain=True)
        assert info is not None
        info.wait_for_publish(10)
    edge.stop()

    doc = status_json(mosquitto)
    by_dev = {d["device"]: d for d in doc["devices"]}
    assert by_dev["d-drift"]["drift"]["alert"] is True and by_dev["d-drift"]["shadow"] is None
    assert by_dev["d-calm"]["shadow"]["agreement"] == 0.9746
    assert by_dev["d-old"]["drift"] is None and by_dev["d-old"]["shadow"] is None
    assert doc["summary"]["drift_alerts"] == 1 and doc["summary"]["shadows"] == {"1.1.0": 1}
    out = edgeship("fleet", "status", "--broker", mosquitto.url, "--fleet", FLEET)
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines()
            if line.count("│") > 3 and line.split("│")[1].strip() in docs}
    assert "ALERT psi 0.41 input[3]" in rows["d-drift"]
    assert "1.1.0 97.5% of 118" in rows["d-calm"] and "ok psi 0.02" in rows["d-calm"]
    assert "drift     1 device(s) alerting" in out.stdout


# -- pure parts ---------------------------------------------------------------------------

def _status(**kw: Any) -> dict[str, Any]:
    return {"state": "idle", "version": "1.0.0", "target": None, "ts": 100.0, **kw}


def test_classify_in_shadow_mode() -> None:
    shadowing = _status(state="shadowing", target="1.1.0", shadow={"version": "1.1.0"})
    assert classify(shadowing, "1.1.0", 50.0, mode="shadow") == SHADOWING
    assert classify(shadowing, "1.1.0", 50.0) is None  # a normal rollout waits for commit
    assert classify(shadowing, "1.2.0", 50.0, mode="shadow") is None  # another shadow
    failed = _status(state="rolled-back", target="1.1.0", error="health check failed: x")
    assert classify(failed, "1.1.0", 50.0, mode="shadow") == "rolled-back"
    assert classify(_status(version="1.1.0", state="committed"), "1.1.0", 50.0,
                    mode="shadow") == COMMITTED  # already runs it: nothing to shadow
    busy = _status(state="downloading", target="1.1.0")
    assert classify(busy, "1.1.0", 50.0, mode="shadow") is None


def test_shadow_rollout_steps_and_keys() -> None:
    policy = RolloutPolicy(canary=0.5, waves=(1.0,))
    ro = start_rollout(fleet="f", model="m", version="1.1.0", reldir="/r", devices=["a", "b"],
                       policy=policy, now=0.0, release_id="abc", broker="h:1", mode="shadow")
    normal = start_rollout(fleet="f", model="m", version="1.1.0", reldir="/r",
                           devices=["a", "b"], policy=policy, now=0.0, release_id="abc",
                           broker="h:1")
    assert ro.key != normal.key and ro.key.endswith("#shadow")
    assert Rollout.from_dict(json.loads(json.dumps(ro.to_dict()))) == ro
    old = {k: v for k, v in normal.to_dict().items() if k != "mode"}  # recorded before modes
    assert Rollout.from_dict(old) == normal
    ro, offer = step(ro, {}, 1.0)
    assert offer == ["a"]
    ro, offer = step(ro, {"a": _status(state="shadowing", target="1.1.0",
                                       shadow={"version": "1.1.0"})}, 2.0)
    assert offer == ["b"] and ro.outcomes["a"] == SHADOWING
    # a shadow that is later discarded stays counted as this rollout's success
    ro, offer = step(ro, {"a": _status(state="shadow-discarded", target="1.1.0"),
                          "b": _status(state="shadowing", target="1.1.0",
                                       shadow={"version": "1.1.0"})}, 3.0)
    assert ro.status == "completed" and ro.counts()["shadowing"] == 2


def test_discard_targets_and_verdicts() -> None:
    statuses = {
        "a": _status(state="shadowing", target="1.1.0", shadow={"version": "1.1.0"}),
        "b": _status(state="downloading", target="1.1.0"),
        "c": _status(state="shadowing", target="1.2.0", shadow={"version": "1.2.0"}),
        "d": _status(state="committed", version="1.1.0", target="1.1.0"),
    }
    assert discard_targets(statuses, "1.1.0") == ["a", "b"]
    assert shadowing_devices(statuses, "1.1.0") == ["a"]
    assert json.loads(discard_payload("1.1.0")) == {"type": "shadow-discard",
                                                    "version": "1.1.0"}
    assert discard_verdict(statuses["a"], "1.1.0") is None  # not confirmed yet
    assert discard_verdict(statuses["b"], "1.1.0") is None
    assert discard_verdict(statuses["c"], "1.1.0") == "no-shadow"
    assert discard_verdict(_status(state="shadow-discarded", target="1.1.0"),
                           "1.1.0") == "discarded"
    assert discard_verdict(None, "1.1.0") is None
