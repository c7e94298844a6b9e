"""The fleet database on PostgreSQL (a throwaway cluster, tests/pgcluster.py) and SQLite:
leases, one-transaction wave decisions without double offers, and two real `fleet push`
workers on one rollout, one SIGKILLed mid-wave, the other finishing it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto
from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.fleet._rollout import RolloutPolicy, start_rollout, step
from edgeship.sdk.transport._mqtt import MqttEdge
from simulator import SwarmProc
from test_agent_support import make_keys, make_release, served_swarm

from edgeship._errors import ConfigError

FLEET = "site"
DEVICES = [f"dev-{i:04d}" for i in range(12)]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def _rollout(n: int = 6) -> Any:
    policy = RolloutPolicy(waves=(0.5, 1.0))
    return start_rollout(fleet=FLEET, model="model", version="2.0.0", reldir="/r",
                         devices=[f"d{i}" for i in range(n)], policy=policy, now=100.0,
                         release_id="abc", broker="h:1")


def test_lease_is_exclusive_until_it_expires(db_url: str) -> None:
    with FleetDB(db_url) as a, FleetDB(db_url) as b:
        assert a.take_lease("k", "worker-a", 0.6)[0]
        taken, holder, left = b.take_lease("k", "worker-b", 0.6)
        assert not taken and holder == "worker-a" and 0 < left <= 0.6
        assert a.renew_lease("k", "worker-a", 0.6)
        time.sleep(0.8)  # worker-a stopped renewing: it died
        taken, previous, _ = b.take_lease("k", "worker-b", 0.6)
        assert taken and previous == "worker-a"
        assert not a.renew_lease("k", "worker-a", 0.6)  # a late heartbeat finds it gone
        assert [e[1] for e in b.events("k")] == ["taken-over"]
        b.release_lease("k", "worker-b")
        assert a.take_lease("k", "worker-a", 0.6) == (True, "", 0.0)


def test_wave_decision_is_one_transaction_and_never_offers_twice(db_url: str) -> None:
    rollout = _rollout()
    with FleetDB(db_url) as db:
        db.save(rollout, event="created")
        assert db.take_lease(rollout.key, "w1", 30)[0]

        def decide(current: Any) -> Any:
            new, offer = step(current, {}, 200.0)
            return new, offer, "offered" if offer else None, {"devices": offer}

        new, offer, attempt = db.decide(rollout.key, "w1", 30, decide)
        assert offer == ["d0", "d1", "d2"] and attempt == 0
        assert db.offered(rollout.key, 0) == dict.fromkeys(offer, "due")
        # the same decision again (a worker re-deciding from a stale copy): nothing new
        _, again, _ = db.decide(rollout.key, "w1", 30, lambda cur: (new, offer, None, None))
        assert again == []
        db.mark_sent(rollout.key, 0, offer, holder="w1")
        assert set(db.offered(rollout.key, 0).values()) == {"sent"}
        assert db.offer_counts(rollout.key) == dict.fromkeys(offer, 1)
        # a worker that does not hold the lease may decide nothing
        with pytest.raises(ConfigError, match="lost the lease"):
            db.decide(rollout.key, "w2", 30, decide)
        recorded = db.load(rollout.key)
        assert recorded is not None and recorded.waves[0].offered_at == 200.0


def test_a_failing_decision_leaves_nothing_behind(db_url: str) -> None:
    rollout = _rollout()
    with FleetDB(db_url) as db:
        db.save(rollout)
        db.take_lease(rollout.key, "w1", 30)

        def broken(current: Any) -> Any:
            step(current, {}, 200.0)
            db.db.execute("INSERT INTO offers(key, device, attempt, state, ts, holder) "
                          "VALUES (?, 'x', 0, 'due', 0, 'w1')", (rollout.key,))
            raise RuntimeError("crash inside the decision")

        with pytest.raises(RuntimeError):
            db.decide(rollout.key, "w1", 30, broken)
        assert db.offered(rollout.key, 0) == {}
        recorded = db.load(rollout.key)
        assert recorded is not None and recorded.waves[0].offered_at is None


def test_concurrent_deciders_offer_each_device_once(pg_url: str) -> None:
    """Eight threads with their own connections race for the same wave decision; the
    row lock makes them take turns, so the first offers and the rest find it done."""
    rollout = _rollout(40)
    with FleetDB(pg_url) as db:
        db.save(rollout)
        db.take_lease(rollout.key, "w1", 30)
    offers: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            with FleetDB(pg_url) as mine:
                barrier.wait()

                def decide(current: Any) -> Any:
                    new, offer = step(current, {}, 200.0)
                    time.sleep(0.05)  # a slow decision: the others must wait on the lock
                    return new, offer, None, None

                _, offer, _ = mine.decide(rollout.key, "w1", 30, decide)
                offers.extend(offer)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(offers) == sorted(f"d{i}" for i in range(20))  # wave 1 = 50 %: once each


def test_device_records_keep_the_newest_last_seen(db_url: str) -> None:
    with FleetDB(db_url) as db:
        db.record_devices(FLEET, {"d1": {"state": "idle", "version": "1.0.0", "ts": 10.0,
                                         "last_seen": 50.0}})
        db.record_devices(FLEET, {"d1": {"state": "committed", "version": "2.0.0",
                                         "ts": 20.0, "last_seen": 20.0}})
        got = db.devices(FLEET)
    assert got["d1"]["version"] == "2.0.0" and got["d1"]["last_seen"] == 50.0


def test_bad_database_urls_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a fleet database URL"):
        FleetDB("mysql://x/y")
    with pytest.raises(ConfigError, match="cannot connect"):
        FleetDB("postgresql://nobody@127.0.0.1:1/none")
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "rollouts", "--db",
                          "postgresql://nobody:secret@127.0.0.1:1/none"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "cannot connect" in out.stderr
    assert "secret" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


# -- two real push workers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pg-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "1.1.0", base=v1)
    return {"v1": v1, "v2": v2, "root": keys / "root.pub"}


class OfferCounter:
    """Counts every offer published to the fleet's devices (a subscriber from the start)."""

    def __init__(self, url: str) -> None:
        self.counts: Counter[str] = Counter()
        self.edge = MqttEdge(url, client_id="test-offer-counter",
                             subscriptions=[f"edgeship/{FLEET}/+/ota/offer"],
                             on_message=self._on)

    def _on(self, msg: Any) -> None:
        if msg.payload:
            self.counts[msg.topic.split("/")[2]] += 1

    def __enter__(self) -> OfferCounter:
        self.edge.start()
        assert self.edge.wait_connected(30)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.edge.stop()

    def wait_for(self, total: int, timeout: float = 60) -> None:
        """Until ``total`` offers came in (the broker forwards them a little later than
        they were acknowledged to the publisher; a loaded machine, much later)."""
        deadline = time.monotonic() + timeout
        while sum(dict(self.counts).values()) < total and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def fleet_env(mosquitto: Mosquitto, rels: dict[str, Path]) -> Iterator[SwarmProc]:
    with served_swarm(mosquitto.url, FLEET, rels, [rels["v2"]], DEVICES, 512) as sim:
        yield sim


def _push(url: str, rels: dict[str, Path], db: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "push", str(rels["v2"]), "--broker", url,
         "--fleet", FLEET, "--db", db, "--devices", ",".join(DEVICES), "--canary", "10%",
         "--waves", "25%,50%,75%,100%", "--wave-timeout", "60", "--lease", "3", "--wait",
         "--json", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_push_workers_one_killed_mid_wave(mosquitto: Mosquitto, rels: dict[str, Path],
                                              fleet_env: SwarmProc, pg_url: str) -> None:
    with OfferCounter(mosquitto.url) as counter:
        workers = [_push(mosquitto.url, rels, pg_url) for _ in range(2)]
        holder_pid = _holder_pid(pg_url, {p.pid for p in workers})
        holder = next(p for p in workers if p.pid == holder_pid)
        other = next(p for p in workers if p is not holder)
        # mid-rollout: the canary is done and a later wave has been offered, not all
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not 3 <= sum(counter.counts.values()) < 12:
            time.sleep(0.01)
        offered_before = sum(counter.counts.values())
        assert 3 <= offered_before < len(DEVICES), counter.counts
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        out, err = other.communicate(timeout=180)
        assert other.returncode == 0, err
        rep = json.loads(out)
        time.sleep(0.5)  # the counter's last messages
        counts = dict(counter.counts)
    assert rep["status"] == "completed" and rep["counts"]["committed"] == len(DEVICES)
    assert counts == dict.fromkeys(DEVICES, 1), counts  # every device offered exactly once
    with FleetDB(pg_url) as db:
        (key, status, _), = db.list(FLEET)
        assert status == "completed"
        assert db.offer_counts(key) == dict.fromkeys(DEVICES, 1)
        kinds = [kind for _, kind, _ in db.events(key)]
        assert "taken-over" in kinds and kinds.count("created") == 1
    print(f"killed the holder after {offered_before} offers; the other finished")


def _holder_pid(db_url: str, pids: set[int], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    with FleetDB(db_url) as db:
        while time.monotonic() < deadline:
            rows = db.db.execute("SELECT holder FROM leases WHERE holder <> ''") \
                if _has_leases(db) else []
            for (holder,) in rows:
                pid = int(holder.split(":")[1])
                if pid in pids:
                    return pid
            time.sleep(0.05)
    raise AssertionError("no push worker took the lease")


def _has_leases(db: FleetDB) -> bool:
    return bool(db.db.execute("SELECT 1 FROM information_schema.tables "
                              "WHERE table_name = 'leases'"))


def test_a_takeover_publishes_only_offers_that_never_reached_the_broker(
        mosquitto: Mosquitto, rels: dict[str, Path], tmp_path: Path) -> None:
    """The dead worker recorded wave 1 (four devices) but published only two offers before
    it died; the next worker publishes the other two and leaves the first two alone."""
    from edgeship.sdk.fleet._rollout_run import publish_offers, run_rollout
    from edgeship.sdk.release._release import Release

    db_path = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    devices = DEVICES[:4]
    policy = RolloutPolicy(waves=(1.0,), wave_timeout_s=60)
    payload = Release.load(rels["v2"]).offer().to_bytes()
    with OfferCounter(mosquitto.url) as counter, FleetDB(db_path) as db:
        # a first worker that dies right after its decision (wait=False stops after it)
        run_rollout(broker_url=mosquitto.url, fleet=FLEET, reldir=rels["v2"], db=db,
                    policy=policy, devices=devices, wait=False, lease_s=2)
        (key, _, _), = db.list(FLEET)
        assert set(db.offered(key, 0).values()) == {"sent"}
        counter.wait_for(len(devices))
        assert dict(counter.counts) == dict.fromkeys(devices, 1)
        # rewind to "decided, half published": only two offers retained, all four 'due'
        edge = MqttEdge(mosquitto.url, client_id="test-clear")
        edge.start()
        assert edge.wait_connected(30)
        for dev in devices[2:]:
            edge.publish(f"edgeship/{FLEET}/{dev}/ota/offer", b"", retain=True).wait_for_publish(5)
        edge.stop()
        db.db.execute("UPDATE offers SET state = 'due'")
        time.sleep(0.3)
        counter.counts.clear()
        run_rollout(broker_url=mosquitto.url, fleet=FLEET, reldir=rels["v2"], db=db,
                    policy=policy, wait=False, lease_s=2)
        counter.wait_for(len(devices[2:]))
        assert dict(counter.counts) == dict.fromkeys(devices[2:], 1)
        assert set(db.offered(key, 0).values()) == {"sent"}
    del publish_offers, payload


def test_rollouts_pause_resume_cancel_cli(tmp_path: Path, pg_url: str) -> None:
    rollout = _rollout()
    with FleetDB(pg_url) as db:
        db.save(rollout, event="created")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgeship", "fleet", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "EDGESHIP_FLEET_DB": pg_url})

    listed = json.loads(cli("rollouts", "--json").stdout)["rollouts"]
    assert [(r["fleet"], r["version"], r["status"]) for r in listed] == \
        [(FLEET, "2.0.0", "running")]
    rid = listed[0]["id"]
    out = cli("pause", rid)
    assert out.returncode == 0 and "paused" in out.stdout, out.stderr
    out = cli("pause", f"{FLEET}/model/2.0.0")
    assert out.returncode == 0 and "paused" in out.stdout  # pausing twice is harmless
    assert cli("resume", rid[:4]).stdout.strip().endswith("running")
    out = cli("cancel", rid)
    assert out.returncode == 0 and out.stdout.strip().endswith("cancelled")
    out = cli("resume", rid)
    assert out.returncode == 2 and "rollout is cancelled" in out.stderr
    out = cli("cancel", "nope")
    assert out.returncode == 2 and "no rollout match" in out.stderr
    with FleetDB(pg_url) as db:
        kinds = [k for _, k, _ in db.events(rollout.key)]
    assert kinds == ["created", "paused", "paused", "resumed", "cancelled"]
