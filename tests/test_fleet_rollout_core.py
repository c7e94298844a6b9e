"""The pure rollout planner: wave shapes, verdicts from agent statuses, the abort rule,
resumption. Statuses are the JSON the agent's OTA core publishes (built with it)."""

from __future__ import annotations

from typing import Any

import pytest
from edgeship.sdk.fleet._rollout import (
    Rollout,
    RolloutPolicy,
    classify,
    parse_percent,
    parse_waves,
    plan_waves,
    resume,
    start_rollout,
    step,
)

from edgeship import ConfigError

DEVICES = [f"dev-{i:02d}" for i in range(20)]


def status(dev: str, state: str, *, version: str | None, target: str | None, ts: float,
           error: str | None = None) -> dict[str, Any]:
    return {"device": dev, "state": state, "version": version, "target": target,
            "progress": None, "error": error, "ts": ts}


def test_parse_percent_and_waves() -> None:
    assert parse_percent("10%") == pytest.approx(0.1)
    assert parse_percent("0.25") == pytest.approx(0.25)
    assert parse_percent("25") == pytest.approx(0.25)
    assert parse_waves("10%,50%,100%") == pytest.approx((0.1, 0.5, 1.0))
    assert parse_waves("10%,50%")[-1] == 1.0  # always ends with the whole fleet
    for bad in ("50%,10%", "abc", "150%", ""):
        with pytest.raises(ConfigError):
            parse_waves(bad)


def test_plan_waves_grow_and_cover_every_device_once() -> None:
    groups = plan_waves(DEVICES, 0.1, (0.25, 0.5, 1.0))
    assert [len(g) for g in groups] == [2, 3, 5, 10]
    assert [d for g in groups for d in g] == DEVICES
    assert [len(g) for g in plan_waves(DEVICES[:3], 0.01, (0.1, 1.0))] == [1, 1, 1]
    assert [len(g) for g in plan_waves(DEVICES, 0.0, (1.0,))] == [20]  # a plain push


def test_classify_ignores_statuses_from_before_the_offer() -> None:
    t0 = 1000.0
    old = status("d", "committed", version="1.0.0", target="1.0.0", ts=t0 - 500)
    assert classify(old, "1.1.0", t0) is None
    assert classify(status("d", "downloading", version="1.0.0", target="1.1.0", ts=t0 + 1),
                    "1.1.0", t0) is None
    assert classify(status("d", "committed", version="1.1.0", target="1.1.0", ts=t0 + 2),
                    "1.1.0", t0) == "committed"
    assert classify(status("d", "rolled-back", version="1.0.0", target="1.1.0", ts=t0 + 2),
                    "1.1.0", t0) == "rolled-back"
    # an old failure of an earlier attempt does not count, nor a fresh one about another
    # release (the agent names the refused offer's version); a fresh refusal of ours does
    assert classify(status("d", "failed", version="1.0.0", target="0.9.0", ts=t0 - 100),
                    "1.1.0", t0) is None
    assert classify(status("d", "failed", version="1.0.0", target="9.0.0", ts=t0 + 1,
                           error="offer rejected"), "1.1.0", t0) is None
    assert classify(status("d", "failed", version="1.0.0", target="1.1.0", ts=t0 + 3,
                           error="offer rejected"), "1.1.0", t0) == "failed"
    # an offer too malformed to name a version: a fresh failure still counts
    assert classify(status("d", "failed", version="1.0.0", target=None, ts=t0 + 3,
                           error="offer rejected"), "1.1.0", t0) == "failed"


def _run(rollout: Rollout, statuses: dict[str, dict[str, Any]], now: float
         ) -> tuple[Rollout, list[str]]:
    return step(rollout, statuses, now)


def _answer(devices: list[str], broken: set[str], now: float) -> dict[str, dict[str, Any]]:
    out = {}
    for d in devices:
        if d in broken:
            out[d] = status(d, "rolled-back", version="1.0.0", target="1.1.0", ts=now,
                            error="health check failed: golden output differs")
        else:
            out[d] = status(d, "committed", version="1.1.0", target="1.1.0", ts=now)
    return out


def test_rollout_halts_past_threshold_and_resumes_under_a_new_one() -> None:
    policy = RolloutPolicy(canary=0.1, waves=(0.25, 0.5, 1.0), max_failure_rate=0.25,
                           wave_timeout_s=60)
    r = start_rollout(fleet="f", model="model", version="1.1.0", reldir="/r", devices=DEVICES,
                      policy=policy, now=0)
    broken = {"dev-03", "dev-04", "dev-15"}
    statuses: dict[str, dict[str, Any]] = {}
    r, offer = _run(r, statuses, 1)
    assert offer == ["dev-00", "dev-01"]  # the canary
    r, offer = _run(r, statuses, 2)
    assert offer == []  # waits for the canary
    statuses.update(_answer(["dev-00", "dev-01"], broken, 3))
    r, offer = _run(r, statuses, 4)
    assert offer == ["dev-02", "dev-03", "dev-04"]
    statuses.update(_answer(["dev-03"], broken, 5))
    r, offer = _run(r, statuses, 6)
    assert r.status == "running"  # 1 failure of 5 offered: not decided yet
    statuses.update(_answer(["dev-04"], broken, 7))
    r, offer = _run(r, statuses, 8)
    assert r.status == "halted" and offer == []
    assert "passed the limit of 25%" in r.reason
    assert r.counts()["pending"] == 15
    assert r.errors["dev-03"].startswith("health check failed")
    # a halted rollout stays halted: nothing more is offered
    assert _run(r, statuses, 9) == (r, [])
    # the operator accepts a higher rate; the rollout runs to the end
    r = Rollout.from_dict(r.to_dict())  # as read back from the state file
    r = resume(r, max_failure_rate=0.5, now=10)
    statuses.update(_answer(["dev-02"], broken, 11))
    offered: list[str] = []
    now = 12.0
    while r.status == "running":
        r, offer = _run(r, statuses, now)
        offered += offer
        statuses.update(_answer(offer, broken, now))
        now += 1
    assert r.status == "completed"
    assert offered == DEVICES[5:]
    assert r.counts()["committed"] == 17 and r.counts()["rolled-back"] == 3


def test_silent_devices_time_out_and_count_as_failures() -> None:
    policy = RolloutPolicy(canary=0.0, waves=(0.5, 1.0), max_failure_rate=0.2, wave_timeout_s=30)
    r = start_rollout(fleet="f", model="model", version="2.0.0", reldir="/r",
                      devices=DEVICES[:4], policy=policy, now=0)
    r, offer = _run(r, {}, 0)
    assert offer == DEVICES[:2]
    ok = _answer(DEVICES[:1], set(), 5)
    ok[DEVICES[0]]["version"] = ok[DEVICES[0]]["target"] = "2.0.0"
    r, _ = _run(r, ok, 10)
    assert r.status == "running"
    r, offer = _run(r, ok, 31)
    assert r.outcomes[DEVICES[1]] == "timeout" and r.status == "halted" and offer == []


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        RolloutPolicy(max_failure_rate=2)
    with pytest.raises(ConfigError):
        RolloutPolicy(waves=(0.5,))
    with pytest.raises(ConfigError):
        start_rollout(fleet="f", model="m", version="1.0.0", reldir="/r", devices=[],
                      policy=RolloutPolicy(), now=0)


def test_state_file_round_trip_and_progress_view(tmp_path: Any) -> None:
    import io

    from edgeship.sdk.fleet._fleetdb import FleetDB
    from rich.console import Console

    from edgeship._cli.fleet_rollout import _table, report

    policy = RolloutPolicy(canary=0.1, waves=(0.5, 1.0), max_failure_rate=0.3)
    r = start_rollout(fleet="f", model="model", version="1.1.0", reldir="/r", devices=DEVICES,
                      policy=policy, now=0, release_id="abc", broker="h:1")
    r, offer = step(r, {}, 1)
    path = tmp_path / "state" / "fleet.sqlite"
    with FleetDB(path) as db:
        db.save(r, event="offered", detail={"devices": offer})
    with FleetDB(path) as db:  # a new process reads the same rollout back
        assert db.load(r.key) == r
        assert [k for _, k, _ in db.events(r.key)] == ["offered"]
        assert db.list("f") == [(r.key, "running", pytest.approx(db.list("f")[0][2]))]
    doc = report(r)
    assert doc["waves"][0] == {"name": "canary", "devices": 2, "offered_at": 1, "closed_at": None,
                               "done": 0, "failed": 0}
    out = io.StringIO()
    Console(file=out, width=120).print(_table(r))
    assert "canary" in out.getvalue() and "running" in out.getvalue()


def test_one_push_at_a_time_per_rollout(tmp_path: Any) -> None:
    from edgeship.sdk.fleet._fleetdb import FleetDB

    path = tmp_path / "fleet.sqlite"
    with FleetDB(path) as a, FleetDB(path) as b:
        with a.lock("h:1|f/model/1.0.0@x"):
            with pytest.raises(ConfigError, match="another `fleet push` is running"):
                with b.lock("h:1|f/model/1.0.0@x"):
                    pass
            with b.lock("h:1|f/model/2.0.0@y"):  # another rollout is not held up
                pass
        with b.lock("h:1|f/model/1.0.0@x"):  # released
            pass
    # no lock file is left beside the database (they used to pile up, one per rollout)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == []


def test_rollout_lock_left_by_a_killed_push_is_taken_and_removed(tmp_path: Any) -> None:
    import fcntl
    import hashlib
    import os

    from edgeship.sdk.fleet._fleetdb import FleetDB

    path = tmp_path / "fleet.sqlite"
    key = "h:1|f/model/1.0.0@x"
    lock = tmp_path / f"fleet.sqlite.{hashlib.sha256(key.encode()).hexdigest()[:12]}.lock"
    lock.write_bytes(b"")  # a SIGKILLed push leaves its (unlocked) file behind
    with FleetDB(path) as db:
        with db.lock(key):
            assert lock.exists()
            # a second process that opened the path before the holder removed it, and
            # locks that old file afterwards, must not count as holding the rollout
            stale = os.open(lock, os.O_RDWR)
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the removed file ...
        try:
            assert not lock.exists()
            with db.lock(key):  # ... and a new push still takes the rollout
                pass
        finally:
            os.close(stale)
    assert not lock.exists()


def test_stale_lock_files_are_swept_but_a_held_one_is_kept(tmp_path: Any) -> None:
    from edgeship.sdk.fleet._fleetdb import FleetDB

    path = tmp_path / "fleet.sqlite"
    stale = [tmp_path / f"fleet.sqlite.{i:012x}.lock" for i in range(3)]
    for lock in stale:  # what older versions left, one per rollout ever pushed
        lock.write_bytes(b"")
    other = tmp_path / "other.sqlite.000000000000.lock"  # another database's: not ours
    other.write_bytes(b"")
    with FleetDB(path) as db, db.lock("h:1|f/model/1.0.0@x"):
        held = list(tmp_path.glob("fleet.sqlite.*.lock"))
        assert len(held) == 1  # the stale ones are gone, ours is there
        with FleetDB(path):  # a second manager opening the database keeps the held one
            assert list(tmp_path.glob("fleet.sqlite.*.lock")) == held
    assert list(tmp_path.glob("fleet.sqlite.*.lock")) == []
    assert other.exists()
