"""Pause, resume and cancel of a rollout from outside its push: ``run_rollout`` (in this
process, on a real mosquitto, with real signed releases) honours the flag row in the
fleet database, and the dashboard cancels a rollout no push is driving by recording it
halted itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto
from edgeship.sdk.fleet._dashboard import Dashboard, DashboardConfig
from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.fleet._rollout import Rollout, RolloutPolicy
from edgeship.sdk.fleet._rollout_flags import RolloutFlags
from edgeship.sdk.fleet._rollout_run import run_rollout
from edgeship.sdk.fleet._sqlengine import engine_of
from test_agent_support import make_keys, make_release

from edgeship._errors import ConfigError

FLEET = "ctl"
GHOSTS = ["ghost-1", "ghost-2"]  # no device answers: a wave waits until its timeout


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ctl-rels")
    keys = make_keys(tmp)
    return {v: make_release(tmp, keys, v) for v in ("2.0.0", "2.1.0", "2.2.0")}


def rollout(broker: Mosquitto, reldir: Path, state: Path, **kw: Any) -> Rollout:
    with FleetDB(state) as db:
        return run_rollout(broker_url=broker.url, fleet=FLEET, reldir=reldir, db=db,
                           policy=RolloutPolicy(waves=(0.5, 1.0), wave_timeout_s=0.5),
                           devices=GHOSTS, poll_s=0.05, **kw)


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def events(state: Path, key: str) -> list[str]:
    with FleetDB(state) as db:
        return [kind for _, kind, _ in db.events(key)]


def wait_event(state: Path, key: str, kind: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while kind not in events(state, key):
        assert time.monotonic() < deadline, f"no {kind} event: {events(state, key)}"
        time.sleep(0.05)


def test_a_paused_rollout_offers_nothing_until_resumed(shared_mosquitto: Mosquitto,
                                                      rels: dict[str, Path],
                                                      tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    first = rollout(shared_mosquitto, rels["2.0.0"], state, wait=False)  # wave 1 offered
    assert first.waves[0].offered_at is not None and first.waves[1].offered_at is None
    with FleetDB(state) as db:
        RolloutFlags(engine_of(db)).set(first.key, "paused", "alice")
    thread, out = in_thread(lambda: rollout(shared_mosquitto, rels["2.0.0"], state, wait=True))
    wait_event(state, first.key, "paused")
    time.sleep(1.0)  # twice the wave timeout: running, ghost-1 would have timed out by now
    with FleetDB(state) as db:
        held = db.load(first.key)
        assert held is not None and held.outcomes["ghost-1"] == "updating"
        assert held.waves[1].offered_at is None
        RolloutFlags(engine_of(db)).set(first.key, None, "alice")
    thread.join(timeout=20)
    assert out and out[0].status == "completed"
    assert out[0].outcomes == {"ghost-1": "timeout", "ghost-2": "timeout"}
    assert "unpaused" in events(state, first.key)


def test_cancel_halts_the_running_push_with_who_and_when(shared_mosquitto: Mosquitto,
                                                         rels: dict[str, Path],
                                                         tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    first = rollout(shared_mosquitto, rels["2.1.0"], state, wait=False)
    thread, out = in_thread(lambda: rollout(shared_mosquitto, rels["2.1.0"], state, wait=True,
                                            wave_timeout_s=60))
    wait_event(state, first.key, "resumed")
    with FleetDB(state) as db:
        RolloutFlags(engine_of(db)).set(first.key, "cancelled", "bob")
    thread.join(timeout=20)
    assert out and out[0].status == "halted" and out[0].reason.startswith("cancelled by bob at ")
    with FleetDB(state) as db:
        assert RolloutFlags(engine_of(db)).get(first.key) is None  # consumed: a re-run resumes
    again = rollout(shared_mosquitto, rels["2.1.0"], state, wait=False)
    assert again.status == "running"


def test_the_dashboard_cancels_a_rollout_no_push_runs(shared_mosquitto: Mosquitto,
                                                      rels: dict[str, Path],
                                                      tmp_path: Path) -> None:
    state = tmp_path / "fleet.sqlite"
    first = rollout(shared_mosquitto, rels["2.2.0"], state, wait=False)
    dash = Dashboard(DashboardConfig(broker_url=shared_mosquitto.url, fleet=FLEET,
                                     db_path=state, port=0, allow_actions=True,
                                     tokens={"t" * 16: "ops"})).start()
    try:
        said = dash.act("carol (127.0.0.1)", {"action": "cancel", "key": first.key})
        assert "no push was running it" in said
        with pytest.raises(ConfigError, match="is halted"):
            dash.act("carol", {"action": "pause", "key": first.key})
        with pytest.raises(ConfigError, match="no rollout"):
            dash.act("carol", {"action": "pause", "key": "nope"})
    finally:
        dash.stop()
    with FleetDB(state) as db:
        halted = db.load(first.key)
        assert halted is not None and halted.status == "halted"
        assert halted.reason.startswith("cancelled by carol (127.0.0.1) at ")
        assert RolloutFlags(engine_of(db)).get(first.key) is None
