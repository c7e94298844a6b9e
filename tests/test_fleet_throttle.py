"""--max-concurrent as pure logic: a wave is offered a few devices at a time, the next
ones as verdicts come in; each device's timeout runs from its own offer; a queued device's
old status is not read as a verdict; a restart re-offers only devices offered before."""

from __future__ import annotations

from typing import Any

from edgeship.sdk.fleet._rollout import (
    Rollout,
    RolloutPolicy,
    open_wave_devices,
    start_rollout,
    step,
)

DEVS = [f"d{i}" for i in range(6)]


def _rollout(cap: int, timeout: float = 60.0) -> Rollout:
    return start_rollout(fleet="f", model="model", version="2.0.0", reldir="/r", devices=DEVS,
                         policy=RolloutPolicy(max_concurrent=cap, wave_timeout_s=timeout),
                         now=0.0)


def committed(ts: float) -> dict[str, Any]:
    return {"state": "committed", "version": "2.0.0", "target": "2.0.0", "ts": ts}


def test_offers_at_most_n_at_once_and_refills_as_verdicts_come() -> None:
    r, offer = step(_rollout(2), {}, 10.0)
    assert offer == ["d0", "d1"] and open_wave_devices(r) == ["d0", "d1"]
    r, offer = step(r, {}, 11.0)
    assert offer == []  # two in flight: nobody else yet
    r, offer = step(r, {"d0": committed(12.0)}, 12.0)
    assert offer == ["d2"] and r.outcomes["d0"] == "committed"
    statuses = {d: committed(20.0) for d in DEVS[:3]}
    r, offer = step(r, statuses, 20.0)
    assert offer == ["d3", "d4"]
    statuses.update({d: committed(30.0) for d in DEVS[3:5]})
    r, offer = step(r, statuses, 30.0)
    assert offer == ["d5"]
    statuses["d5"] = committed(40.0)
    r, offer = step(r, statuses, 40.0)
    assert offer == [] and r.status == "completed" and r.counts()["committed"] == 6
    assert Rollout.from_dict(r.to_dict()) == r


def test_timeout_runs_from_each_devices_own_offer() -> None:
    r, _ = step(_rollout(2, timeout=30.0), {}, 0.0)  # d0, d1 offered at 0
    r, offer = step(r, {"d0": committed(5.0)}, 25.0)  # d2 offered at 25
    assert offer == ["d2"]
    r, _ = step(r, {"d0": committed(5.0)}, 31.0)
    assert r.outcomes["d1"] == "timeout" and r.outcomes["d2"] == "updating"
    assert r.outcomes["d3"] == "updating"  # d1's slot freed: d3 offered at 31


def test_a_queued_devices_old_failure_is_not_its_verdict() -> None:
    old_failure = {"state": "failed", "target": "2.0.0", "version": "1.0.0", "ts": 9.0,
                   "error": "an earlier try"}
    r, offer = step(_rollout(1), {"d5": old_failure}, 10.0)
    assert offer == ["d0"] and r.outcomes["d5"] == "pending"
    assert r.failure_rate() == 0.0
