"""The dashboard on the fleet database: its pause / resume / cancel are the fleet's own
controls (``_rollout_control.operate``, what ``fleet pause|resume|cancel`` run), followed
by a real ``run_rollout`` push on a real mosquitto; and ``fleet dashboard --db URL`` keeps
its history and the fleet's ``devices`` table on SQLite and on PostgreSQL (a throwaway
cluster, tests/pgcluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port, wait_for_port
from edgeship.sdk.fleet._dashboard import Dashboard, DashboardConfig
from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.fleet._history import History
from edgeship.sdk.fleet._rollout import Rollout, RolloutPolicy
from edgeship.sdk.fleet._rollout_run import run_rollout
from edgeship.sdk.transport._mqtt import MqttEdge
from test_agent_support import make_keys, make_release

from edgeship._errors import ConfigError

FLEET = "ctl"
GHOSTS = ["ghost-1", "ghost-2"]  # no device answers: a wave waits until its timeout
TOKEN = "t" * 16


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ctl-rels")
    keys = make_keys(tmp)
    return {v: make_release(tmp, keys, v) for v in ("2.0.0", "2.1.0", "2.2.0")}


def push(broker: Mosquitto, reldir: Path, db_url: str, timeout: float = 60.0, **kw: Any
         ) -> Rollout:
    with FleetDB(db_url) as db:
        return run_rollout(broker_url=broker.url, fleet=FLEET, reldir=reldir, db=db,
                           policy=RolloutPolicy(waves=(0.5, 1.0), wave_timeout_s=timeout),
                           devices=GHOSTS, poll_s=0.05, **kw)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def events(db_url: str, key: str) -> list[tuple[str, dict[str, Any]]]:
    with FleetDB(db_url) as db:
        return [(kind, detail) for _, kind, detail in db.events(key)]


def wait_for(what: str, ok: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := ok()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return got


def offered(db_url: str) -> str | None:
    """The key of the fleet's rollout once its first wave was offered."""
    with FleetDB(db_url) as db:
        keys = [k for k, _, _ in db.list(FLEET)]
        return next((k for k in keys if any(kind == "offered" for _, kind, _ in db.events(k))),
                    None)


def dashboard(broker: Mosquitto, db_url: str) -> Dashboard:
    return Dashboard(DashboardConfig(broker_url=broker.url, fleet=FLEET, db=db_url, port=0,
                                     allow_actions=True, tokens={TOKEN: "ops"})).start()


def page(dash: Dashboard, path: str) -> str:
    with urllib.request.urlopen(dash.url + path, timeout=5) as resp:
        return str(resp.read().decode())


def test_pause_from_the_dashboard_holds_the_push_and_resume_lets_it_finish(
        shared_mosquitto: Mosquitto, rels: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    dash = dashboard(shared_mosquitto, url)
    try:
        # the pause must land within the wave's timeout: 3 s, not 1.5 (a loaded machine)
        thread, out = in_thread(lambda: push(shared_mosquitto, rels["2.0.0"], url, wait=True,
                                             timeout=3.0))
        key = wait_for("wave 1 offered", lambda: offered(url))
        assert dash.act("alice (ops)", {"action": "pause", "key": key}) == \
            "rollout of 2.0.0 paused"
        time.sleep(3.5)  # past the wave timeout: running, ghost-1 would have timed out
        with FleetDB(url) as db:
            held = db.load(key)
        assert held is not None and held.status == "paused" and thread.is_alive()
        assert held.outcomes["ghost-1"] == "updating" and held.waves[1].offered_at is None
        card = page(dash, "/rollouts")
        assert 'class="rollout paused"' in card and "paused by alice (ops)" in card
        assert 'data-action="resume"' in card and 'data-action="pause"' not in card
        dash.act("alice (ops)", {"action": "resume", "key": key})
        thread.join(timeout=60)
    finally:
        dash.stop()
    assert out and out[0].status == "completed"
    assert out[0].outcomes == {"ghost-1": "timeout", "ghost-2": "timeout"}
    kinds = events(url, key)
    assert ("paused", {"was": "running", "now": "paused", "by": "alice (ops)"}) in kinds
    assert ("resumed", {"was": "paused", "now": "running", "by": "alice (ops)"}) in kinds


def test_cancel_from_the_dashboard_ends_the_running_push(
        shared_mosquitto: Mosquitto, rels: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    thread, out = in_thread(lambda: push(shared_mosquitto, rels["2.1.0"], url, wait=True))
    key = wait_for("wave 1 offered", lambda: offered(url))
    dash = dashboard(shared_mosquitto, url)
    try:
        said = dash.act("bob (ops)", {"action": "cancel", "key": key})
        thread.join(timeout=20)
        card = wait_for("cancelled on the page", lambda: (p := page(dash, "/rollouts"))
                        and 'class="rollout cancelled"' in p and p)
    finally:
        dash.stop()
    assert said == "rollout of 2.1.0 cancelled"
    assert out and out[0].status == "cancelled"
    assert out[0].reason == "cancelled by bob (ops); 1 devices never offered"
    assert "cancelled by bob (ops)" in card
    again = push(shared_mosquitto, rels["2.1.0"], url, wait=False)  # a new rollout
    assert again.status == "running" and again.created_at > out[0].created_at


def test_actions_on_a_rollout_no_push_runs_and_their_refusals(
        shared_mosquitto: Mosquitto, rels: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    first = push(shared_mosquitto, rels["2.2.0"], url, wait=False)
    with FleetDB(url) as db:  # a rollout of another fleet in the same database
        other = replace(first, fleet="elsewhere")
        db.save(other, event="created")
    dash = dashboard(shared_mosquitto, url)
    try:
        assert dash.act("carol", {"action": "cancel", "key": first.key}) == \
            "rollout of 2.2.0 cancelled"
        with pytest.raises(ConfigError, match="rollout is cancelled; nothing to pause"):
            dash.act("carol", {"action": "pause", "key": first.key})
        with pytest.raises(ConfigError, match="no rollout 'nope'"):
            dash.act("carol", {"action": "pause", "key": "nope"})
        with pytest.raises(ConfigError, match="no rollout"):
            dash.act("carol", {"action": "cancel", "key": other.key})
    finally:
        dash.stop()
    with FleetDB(url) as db:
        done, untouched = db.load(first.key), db.load(other.key)
    assert done is not None and done.status == "cancelled"
    assert done.reason == "cancelled by carol; 1 devices never offered"
    assert untouched is not None and untouched.status == "running"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def publish(url: str, items: list[tuple[str, dict[str, Any], bool]]) -> None:
    edge = MqttEdge(url, client_id=f"test-pub-{time.monotonic_ns()}")
    edge.start()
    assert edge.wait_connected(30)
    for topic, doc, retain in items:
        info = edge.publish(topic, json.dumps(doc).encode(), retain=retain)
        assert info is not None
        info.wait_for_publish(5)
    edge.stop()


def page_of(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?q=", timeout=30) as resp:
        return str(resp.read().decode())


def test_dashboard_db_url_keeps_history_and_devices(mosquitto: Mosquitto, db_url: str) -> None:
    """`fleet dashboard --db URL` (the fleet's option): a device recorded before the
    dashboard started is listed from the database; what devices say over MQTT lands in
    the history tables and the fleet's devices table."""
    with FleetDB(db_url) as db:
        db.record_devices(FLEET, {"old-1": {"state": "committed", "version": "0.9.0",
                                            "ts": 50.0}})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "dashboard", "--broker", mosquitto.url,
         "--fleet", FLEET, "--db", db_url, "--listen", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, timeout=30)
        now = time.time()
        publish(mosquitto.url, [
            (f"edgeship/{FLEET}/dev-1/status", {"state": "committed", "version": "1.0.0",
                                                "ts": now - 5}, True)])
        # the page listens before the MQTT session has subscribed: the heartbeat (not
        # retained) is sent once the retained status showed that it has
        wait_for("dev-1 on the page", lambda: 'data-device="dev-1"' in page_of(port), 60)
        publish(mosquitto.url, [
            (f"edgeship/{FLEET}/dev-1/telemetry", {"ts": now, "version": "1.0.0",
                                                   "latency": {"p50_ms": 2.5, "p99_ms": 7.0}},
             False)])

        def recorded() -> Any:
            with FleetDB(db_url) as db:
                samples = History(db.db).samples(FLEET, "dev-1")
                return samples and db.devices(FLEET).get("dev-1", {}).get("last_seen") \
                    and (samples, db.devices(FLEET))

        samples, devices = wait_for("history and devices recorded", recorded, 60)
        assert [(s.p50_ms, s.p99_ms, s.version) for s in samples] == [(2.5, 7.0, "1.0.0")]
        assert devices["dev-1"]["version"] == "1.0.0"
        assert devices["dev-1"]["last_seen"] == pytest.approx(now)  # the heartbeat's
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?q=", timeout=5) as resp:
            body = resp.read().decode()
        assert 'data-device="old-1"' in body and 'data-device="dev-1"' in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/device/dev-1", timeout=5) as resp:
            assert "from nothing" in resp.read().decode()  # its version event, from history
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, -15), err
    assert "history not recorded" not in err
