"""Shadow releases under a field engineer's abuse (review of issue 10): real mosquitto,
real ``edgeship agent run`` / ``fleet serve`` subprocesses, the shadow in its own worker
process. No shadow worker outlives its agent; fleet commands tell the truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.release._release import Release
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    gone,
    make_keys,
    make_release,
    offer_bytes,
    served_version,
    shadow_offer,
    start_fleet_serve,
    write_config,
)

TOPIC = "edgeship/t/dev-1/ota/offer"
SHADOW = "\n[shadow]\nsample = 1.0\ncpu_budget = 2.0\nqueue = 64\n"


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shadow-review")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "2.0.0", base=v1)
    return {"v1": v1, "v2": v2, "root": keys / "root.pub"}


@pytest.fixture
def world(tmp_path: Path, mosquitto: Mosquitto, rels: dict[str, Path]
          ) -> Iterator[tuple[AgentProc, Watcher]]:
    """A fleet server, an agent serving v1 (shadow sampling every request), a watcher."""
    server = start_fleet_serve(mosquitto.url, rels["v1"], rels["v2"])
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"], extra=SHADOW)
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        yield agent, watch
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


def test_a_hung_shadow_worker_dies_with_a_killed_agent(world: tuple[AgentProc, Watcher],
                                                       rels: dict[str, Path]) -> None:
    """A worker stuck in the runtime never reads the EOF its dead agent leaves on stdin:
    it used to stay behind (reparented to init) after ``kill -9`` of the agent."""
    agent, watch = world
    watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
    watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
    pid = agent.wait_log(lambda line: line.get("event") == "shadow_ready")["pid"]
    os.kill(pid, signal.SIGSTOP)  # hung: it reads nothing any more
    try:
        for _ in range(5):  # the active model keeps answering, unchanged
            version, y = served_version(agent.url)
            assert version == "1.0.0"
            np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        agent.kill()
        assert gone(pid), "the shadow worker outlived its SIGKILLed agent"
    finally:
        if not gone(pid, 0.0):
            os.kill(pid, signal.SIGKILL)


def fleet(url: str, state_home: Path, *args: str, timeout: float = 120.0
          ) -> subprocess.CompletedProcess[str]:
    """``edgeship fleet ARGS --broker URL --fleet t`` with its own rollout database."""
    return subprocess.run([sys.executable, "-m", "edgeship", "fleet", *args, "--broker", url,
                           "--fleet", "t"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "XDG_STATE_HOME": str(state_home)})


def test_a_discarded_shadow_can_be_pushed_again(world: tuple[AgentProc, Watcher],
                                               mosquitto: Mosquitto, rels: dict[str, Path],
                                               tmp_path: Path) -> None:
    """push --shadow, discard, push --shadow of the same release: the second push used
    to resume the recorded (completed) rollout, offer nothing and still print
    '1 shadowing' while the device reported shadow-discarded."""
    agent, watch = world
    push = ("push", str(rels["v2"]), "--shadow", "--wait", "--wave-timeout", "60")
    first = fleet(mosquitto.url, tmp_path, *push)
    assert first.returncode == 0 and "1 shadowing" in first.stdout, first.stderr
    gone_ = fleet(mosquitto.url, tmp_path, "discard", "2.0.0", "--timeout", "30")
    assert gone_.returncode == 0 and "1 discarded" in gone_.stdout, gone_.stderr
    watch.wait(lambda s: s["state"] == "shadow-discarded" and s["shadow"] is None)
    again = fleet(mosquitto.url, tmp_path, *push)
    assert again.returncode == 0 and "1 shadowing" in again.stdout, again.stderr
    status = watch.wait(lambda s: s["state"] == "shadowing", timeout=60)
    assert status["shadow"]["version"] == "2.0.0" and status["version"] == "1.0.0"
    assert served_version(agent.url)[0] == "1.0.0"


def test_shadow_ended_is_pure_and_only_for_completed_shadow_rollouts() -> None:
    from edgeship.sdk.fleet._rollout import RolloutPolicy, shadow_ended, start_rollout

    policy = RolloutPolicy(canary=0.0, waves=(1.0,), max_failure_rate=1.0, wave_timeout_s=60)
    ro = start_rollout(fleet="t", model="m", version="2.0.0", reldir="r", devices=["a", "b"],
                       policy=policy, now=0.0, mode="shadow")
    done = replace(ro, status="completed", outcomes={"a": "shadowing", "b": "shadowing"})
    shadowing = {"state": "shadowing", "version": "1.0.0", "shadow": {"version": "2.0.0"}}
    dropped = {"state": "shadow-discarded", "version": "1.0.0", "target": "2.0.0",
               "shadow": None}
    promoted = {"state": "committed", "version": "2.0.0", "shadow": None}
    assert not shadow_ended(done, {"a": shadowing, "b": promoted})
    assert shadow_ended(done, {"a": shadowing, "b": dropped})
    assert not shadow_ended(done, {"a": shadowing})  # b silent: nothing known
    assert not shadow_ended(replace(done, status="running"), {"a": dropped, "b": dropped})
    assert not shadow_ended(replace(done, mode="active"), {"a": dropped, "b": dropped})


def test_fleet_status_sees_every_device_of_a_large_fleet(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    """With QoS 1 subscriptions a stock mosquitto (max_queued_messages 1000) delivered
    only ~1020 of the retained statuses: fleet status, and the device lists of push and
    promote, silently missed the rest of the fleet."""
    import json

    from edgeship.sdk.transport._mqtt import MqttEdge

    n = 1500
    edge = MqttEdge(mosquitto.url, client_id="many-devices")
    edge.start()
    try:
        assert edge.wait_connected(30)
        infos = []
        for i in range(n):
            status = {"device": f"d{i:04d}", "state": "shadowing", "version": "1.0.0",
                      "target": "2.0.0", "error": None, "progress": None, "ts": time.time(),
                      "shadow": {"version": "2.0.0", "state": "running", "agreement": 0.99,
                                 "compared": 100}}
            info = edge.publish(f"edgeship/t/d{i:04d}/status", json.dumps(status).encode(),
                                retain=True)
            assert info is not None
            infos.append(info)
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        edge.stop()
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "status", "--broker",
                          mosquitto.url, "--fleet", "t", "--json"], capture_output=True,
                         text=True, timeout=120,  # no fleet database: the broker alone
                         env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["summary"]["devices"] == n
    assert doc["summary"]["shadows"] == {"2.0.0": n}
    assert len(doc["devices"]) == n


def test_the_shadow_queue_is_bounded_in_bytes() -> None:
    """A slow or hung shadow keeps the queued requests' arrays alive: with big inputs a
    queue of N requests held N x 16 MiB in the agent. Now what waits is bounded in bytes
    (max_queue_bytes) and a request over max_request_bytes is not queued at all."""
    from edgeship.agent._shadow import ShadowConfig, ShadowTap

    mlp = Path(__file__).parent / "fixtures" / "mlp.onnx"
    tap = ShadowTap(ShadowConfig(sample=1.0, cpu_budget=8.0, queue=64, max_queue_bytes=4 << 20,
                                 max_request_bytes=2 << 20), log=lambda *a, **k: None)
    tap.start(mlp.read_bytes(), fmt="onnx", version="2.0.0", runtime="onnxruntime")
    try:
        assert tap.wait_ready(60), tap.stats()
        pid = tap.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hung: nothing leaves the queue
        big = {"input": np.zeros((1, 1 << 18), np.float32)}  # 1 MiB
        out = {"probs": np.zeros((1, 10), np.float32)}
        for _ in range(20):
            tap.observe(big, out, source="local", version="1.0.0", seconds=0.001)
        stats = tap.stats()
        assert stats["sampled"] == 20
        assert stats["dropped"] >= 15, stats  # at most 4 MiB wait (+1 taken by the feeder)
        huge = {"input": np.zeros((1, 3 << 18), np.float32)}  # 3 MiB > max_request_bytes
        tap.stop()
        tap.start(mlp.read_bytes(), fmt="onnx", version="2.0.0", runtime="onnxruntime")
        assert tap.wait_ready(60)
        tap.observe(huge, out, source="local", version="1.0.0", seconds=0.001)
        assert tap.stats()["dropped"] == 1
    finally:
        tap.stop()


def test_a_shadow_that_cannot_load_says_failed(world: tuple[AgentProc, Watcher],
                                              rels: dict[str, Path], tmp_path: Path,
                                              mosquitto: Mosquitto) -> None:
    """The shadow slot damaged on disk (SD card) while the agent was down: the shadow no
    longer runs, but the status used to show it as a healthy shadow with no figures yet,
    so an operator could promote a release that never ran. Now its state is 'failed'
    (status, heartbeat, fleet status); answers stay v1's, and a promote rolls back."""
    import json

    agent, watch = world
    watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
    watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
    started = agent.wait_log(lambda line: line.get("event") == "shadow_started")
    agent.wait_log(lambda line: line.get("event") == "shadow_ready")
    agent.kill()
    slot = tmp_path / "data-dev-1" / "slots" / started["slot"] / "model.onnx"
    data = bytearray(slot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    slot.write_bytes(bytes(data))
    agent.start()
    agent.wait_ready()
    agent.wait_log(lambda line: line.get("event") == "shadow_load_failed")
    status = watch.wait(lambda s: (s.get("shadow") or {}).get("state") == "failed")
    assert status["shadow"]["version"] == "2.0.0" and "does not hold" in status["shadow"]["error"]
    assert len(json.dumps(status)) < 2048
    assert served_version(agent.url)[0] == "1.0.0"
    out = fleet(mosquitto.url, tmp_path, "status")
    assert out.returncode == 0 and "2.0.0 (failed)" in out.stdout, out.stdout + out.stderr
    watch.publish(TOPIC, offer_bytes(rels["v2"]), retain=True)  # promote anyway
    status = watch.wait(lambda s: s["state"] == "rolled-back")
    assert status["version"] == "1.0.0" and served_version(agent.url)[0] == "1.0.0"


def _seen(shadow: dict[str, int]) -> int:
    return shadow.get("compared", 0) + shadow.get("dropped", 0)


def test_local_answers_of_a_fallback_agent_reach_the_shadow(
        tmp_path: Path, mosquitto: Mosquitto, rels: dict[str, Path]) -> None:
    """An agent with a cloud fallback that is away answers from its own model
    ('local-degraded'): those are the active model's outputs, yet the shadow ignored
    them (the drift tap counts them), so it compared nothing during a cloud outage."""
    from test_agent_support import http_json, infer_body

    server = start_fleet_serve(mosquitto.url, rels["v1"], rels["v2"])
    port = free_port()
    fallback = (f'[fallback]\nurl = "http://127.0.0.1:{free_port()}"\ndeadline_ms = 300\n'
                'policy = ["low_confidence"]\nconfidence = 0.999\nfailures = 3\n'
                "cooldown_s = 0.5\n")
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"], extra=SHADOW, fallback=fallback)
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
        watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
        agent.wait_log(lambda line: line.get("event") == "shadow_ready")
        for _ in range(10):
            code, doc = http_json(f"{agent.url}/v2/models/model/infer", infer_body(GOLDEN_X))
            assert code == 200 and doc["parameters"]["source"] == "local-degraded", doc
            y = np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
            np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        # a sample the niced worker's CPU budget drops on a busy machine is counted as such
        status = watch.wait(lambda s: _seen(s.get("shadow") or {}) >= 10)
        assert status["shadow"]["compared"] >= 8 and status["shadow"]["agreement"] == 1.0
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)


def test_a_shadow_push_counts_a_device_that_already_shadows_it(
        world: tuple[AgentProc, Watcher], mosquitto: Mosquitto, rels: dict[str, Path],
        tmp_path: Path) -> None:
    """A device shadowing v2 whose last offer was refused reports state 'failed' with
    its shadow still v2. A shadow push of v2 (it ignores the repeat) waited for a
    'shadowing' state that never came and timed the device out."""
    agent, watch = world
    watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
    watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
    watch.publish(TOPIC, b'{"manifest": "garbage"}', retain=True)
    status = watch.wait(lambda s: s["state"] == "failed")
    assert status["shadow"]["version"] == "2.0.0"
    out = fleet(mosquitto.url, tmp_path / "fresh", "push", str(rels["v2"]), "--shadow",
                "--wait", "--wave-timeout", "15")
    assert out.returncode == 0 and "1 shadowing" in out.stdout, out.stdout + out.stderr
    assert served_version(agent.url)[0] == "1.0.0"


def test_classify_trusts_the_shadow_over_the_phase() -> None:
    from edgeship.sdk.fleet._rollout import classify

    failed_beside = {"state": "failed", "version": "1.0.0", "target": None, "ts": 100.0,
                     "error": "offer rejected", "shadow": {"version": "2.0.0"}}
    assert classify(failed_beside, "2.0.0", 99.0, mode="shadow") == "shadowing"
    assert classify(failed_beside, "3.0.0", 99.0, mode="shadow") == "failed"
    assert classify(failed_beside, "2.0.0", 99.0) == "failed"  # a normal push: not a shadow


def test_fleet_status_shows_a_shadow_that_fails_every_request() -> None:
    """A shadow taking other inputs than the active model fails on every request: it
    showed as '2.0.0 of 0', like one that had no traffic yet."""
    from edgeship.sdk.fleet._fleetstatus import DeviceStatus

    failing = DeviceStatus.from_dict({"device": "d", "shadow": {
        "version": "2.0.0", "state": "running", "compared": 0, "agreement": None,
        "errors": 40}})
    assert failing.shadow_text() == "2.0.0 of 0, 40 errors"
    fine = DeviceStatus.from_dict({"device": "d", "shadow": {
        "version": "2.0.0", "state": "running", "compared": 10, "agreement": 1.0,
        "errors": 0}})
    assert fine.shadow_text() == "2.0.0 100.0% of 10"


def test_rare_worker_crashes_do_not_end_a_long_shadow() -> None:
    """max_restarts counted every crash of the shadow's life: a shadow run for days
    ended 'crashed' for good after a few rare crashes (an OOM kill a day). A worker
    that served healthy_s seconds now clears the count."""
    from edgeship.agent._shadow import ShadowConfig, ShadowTap

    mlp = Path(__file__).parent / "fixtures" / "mlp.onnx"
    # healthy_s well above the time the tap takes to notice a death (its feeder looks
    # every 0.5 s): the crash right after a restart below must not count as healthy
    tap = ShadowTap(ShadowConfig(sample=1.0, max_restarts=1, backoff_s=0.05, healthy_s=2.0),
                    log=lambda *a, **k: None)
    tap.start(mlp.read_bytes(), fmt="onnx", version="2.0.0", runtime="onnxruntime")
    try:
        for crash in range(3):  # each after more than healthy_s of service
            assert tap.wait_ready(60), tap.stats()
            time.sleep(2.3)
            pid = tap.worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while tap.stats()["restarts"] <= crash and tap.stats()["state"] == "running" \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tap.stats()["state"] == "running", (crash, tap.stats())
        assert tap.wait_ready(60) and tap.stats()["crashes"] == 3
        pid = tap.worker_pid  # a crash right after the restart: twice in a row, it ends
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while tap.stats()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tap.stats()["state"] == "crashed"
    finally:
        tap.stop()


def test_a_hung_worker_is_replaced_also_with_big_requests() -> None:
    """The hang deadline covered only the reply: a request larger than the pipe (64 KiB,
    any image) written to a hung worker blocked the feeder forever; the shadow stayed
    'running' and compared nothing again, and no restart came."""
    from edgeship.agent._shadow import ShadowConfig, ShadowTap

    mlp = Path(__file__).parent / "fixtures" / "mlp.onnx"
    tap = ShadowTap(ShadowConfig(sample=1.0, timeout_s=1.0, backoff_s=0.05),
                    log=lambda *a, **k: None)
    tap.start(mlp.read_bytes(), fmt="onnx", version="2.0.0", runtime="onnxruntime")
    try:
        assert tap.wait_ready(60), tap.stats()
        hung = tap.worker_pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        big = {"input": np.zeros((1, 1 << 18), np.float32)}  # 1 MiB
        tap.observe(big, {"probs": np.zeros((1, 10), np.float32)}, source="local",
                    version="1.0.0", seconds=0.001)
        deadline = time.monotonic() + 30
        while tap.stats()["crashes"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tap.stats()["crashes"] == 1 and tap.stats()["state"] == "running", tap.stats()
        assert tap.wait_ready(60) and tap.worker_pid not in (None, hung)
        assert gone(hung)
    finally:
        tap.stop()


def test_promote_skips_devices_whose_shadow_crashed(
        world: tuple[AgentProc, Watcher], mosquitto: Mosquitto, rels: dict[str, Path],
        tmp_path: Path) -> None:
    """fleet promote (no --devices) offered the release to every device whose status
    named it as the shadow, also where the shadow worker had crashed for good: the
    comparison promoting rests on never ran there (and the model may crash the agent).
    Named with --devices it is still promoted."""
    from edgeship.sdk.fleet._rollout import shadowing_devices

    assert shadowing_devices({"a": {"shadow": {"version": "2.0.0", "state": "running"}},
                              "b": {"shadow": {"version": "2.0.0", "state": "crashed"}},
                              "c": {"shadow": {"version": "2.0.0", "state": "failed"}},
                              "d": {"shadow": {"version": "2.0.0"}}}, "2.0.0") == ["a", "d"]
    agent, watch = world
    agent.kill()  # restart with a shadow worker that can never run: it crashes at once
    agent.config.write_text(agent.config.read_text().replace(
        "queue = 64\n", "queue = 64\nmax_restarts = 0\nload_timeout_s = 0.001\n"))
    agent.start()
    agent.wait_ready()
    watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
    watch.wait(lambda s: (s.get("shadow") or {}).get("state") == "crashed")
    out = fleet(mosquitto.url, tmp_path, "promote", str(rels["v2"]), "--wait",
                "--wave-timeout", "30")
    assert out.returncode == 2 and "crashed or failed" in out.stderr, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert served_version(agent.url)[0] == "1.0.0"
    out = fleet(mosquitto.url, tmp_path, "promote", str(rels["v2"]), "--devices", "dev-1",
                "--wait", "--wave-timeout", "30")
    assert out.returncode == 0 and "1 committed" in out.stdout, out.stdout + out.stderr
    assert served_version(agent.url)[0] == "2.0.0"


def test_fleet_status_prints_device_text_as_text(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A device's status text was read as rich markup: one error or version holding
    '[/]' made 'fleet status' fail for the whole fleet (internal error, exit 1)."""
    import json

    from edgeship.sdk.transport._mqtt import MqttEdge

    docs = {"d1": {"state": "failed", "version": "1.0.0", "ts": 1.0,
                   "error": "model at /data/[/x] unreadable"},
            "d2": {"state": "shadowing", "version": "1.0.0[/]", "ts": 1.0,
                   "shadow": {"version": "2.0.0[bold]", "compared": 3, "agreement": 1.0}}}
    edge = MqttEdge(mosquitto.url, client_id="markup-statuses")
    edge.start()
    try:
        assert edge.wait_connected(30)
        for dev, doc in docs.items():
            info = edge.publish(f"edgeship/t/{dev}/status", json.dumps(doc).encode(),
                                retain=True)
            assert info is not None
            info.wait_for_publish(10)
    finally:
        edge.stop()
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "status", "--broker",
                          mosquitto.url, "--fleet", "t"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "/data/[/x] unreadable" in out.stdout and "2.0.0[bold] 100.0% of 3" in out.stdout
    assert "versions  1.0.0: 1, 1.0.0[/]: 1" in out.stdout


def test_an_absurd_offer_version_cannot_hide_a_device(world: tuple[AgentProc, Watcher],
                                                     mosquitto: Mosquitto,
                                                     rels: dict[str, Path]) -> None:
    """The refused offer's unverified version went into the retained status as its
    target: a 30 KB version made a 30 KB status, and fleet status (16 KB limit) dropped
    the device from the fleet. Now the device names no such target, and a status over
    the limit still shows the device."""
    import json

    from edgeship.sdk.transport._mqtt import MqttEdge

    agent, watch = world
    doc = json.loads(offer_bytes(rels["v2"]))
    doc["manifest"]["signed"]["version"] = "9" * 30000
    watch.publish(TOPIC, json.dumps(doc).encode(), retain=True)
    status = watch.wait(lambda s: s["state"] == "failed")
    assert status["target"] is None and len(json.dumps(status)) < 2048
    assert served_version(agent.url)[0] == "1.0.0"
    edge = MqttEdge(mosquitto.url, client_id="huge-status")  # a device with a huge status
    edge.start()
    try:
        assert edge.wait_connected(30)
        huge = {"device": "dev-huge", "state": "committed", "version": "1.0.0",
                "error": "x" * 20000}
        info = edge.publish("edgeship/t/dev-huge/status", json.dumps(huge).encode(),
                            retain=True)
        assert info is not None
        info.wait_for_publish(10)
    finally:
        edge.stop()
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "status", "--broker",
                          mosquitto.url, "--fleet", "t", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    devices = {d["device"]: d for d in json.loads(out.stdout)["devices"]}
    assert devices["dev-1"]["state"] == "failed"
    assert "over the limit" in devices["dev-huge"]["error"]


def test_a_stop_signal_to_the_whole_group_stops_the_shadow_quietly(
        world: tuple[AgentProc, Watcher], rels: dict[str, Path]) -> None:
    """systemctl stop (KillMode=control-group) and Ctrl-C signal the agent and its
    shadow worker at once: the worker died first and every clean stop logged a
    'shadow_worker_died' warning. The agent stops it; no worker is left."""
    import threading

    agent, watch = world
    agent.kill()
    assert agent.proc is not None
    agent.proc = subprocess.Popen(  # its own process group, as systemd's cgroup
        [sys.executable, "-m", "edgeship", "agent", "run", "--config", str(agent.config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=agent.env, start_new_session=True)
    threading.Thread(target=agent._pump, args=(agent.proc,), daemon=True).start()
    agent.wait_ready()
    watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
    watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
    pid = agent.wait_log(lambda line: line.get("event") == "shadow_ready")["pid"]
    mark = len(agent.log)
    busy = threading.Event()

    def traffic() -> None:  # a busy device: the shadow is mid-request when the signal lands
        while not busy.is_set():
            try:
                served_version(agent.url)
            except OSError:  # the agent is gone
                return

    load = threading.Thread(target=traffic, daemon=True)
    load.start()
    time.sleep(1.0)
    os.killpg(agent.proc.pid, signal.SIGTERM)
    assert agent.proc.wait(timeout=30) == 0
    busy.set()
    load.join(timeout=10)
    assert gone(pid)
    events = [line.get("event") for line in agent.log[mark:]]
    assert "shadow_stopped" in events and "shadow_worker_died" not in events, events


def _health_children(config: Path) -> list[int]:
    """Pids of health-check children, told apart by the golden file's folder (our tmp)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"edgeship.agent._health" in cmd and str(config).encode() in env:
            found.append(int(entry.name))
    return found


def test_a_hung_health_check_dies_with_a_killed_agent(tmp_path: Path, mosquitto: Mosquitto,
                                                      rels: dict[str, Path]) -> None:
    """The health-check child, stuck (here: paused) in the runtime, used to outlive a
    SIGKILLed agent until its own work ended: a hung one for good."""
    server = start_fleet_serve(mosquitto.url, rels["v1"], rels["v2"])
    pause = tmp_path / "pause"
    pause.write_text("")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"])
    agent = AgentProc(cfg, port, env={"EDGESHIP_AGENT_PAUSE_FILE": str(pause),
                                      "EDGESHIP_TEST_CONFIG": str(cfg)}).start()
    watch = Watcher(mosquitto.url)
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        pause.write_text("health=120")
        watch.publish(TOPIC, Release.load(rels["v2"]).offer().to_bytes(), retain=True)
        watch.wait(lambda s: s["state"] == "health-checking" and s["target"] == "2.0.0")
        deadline = time.monotonic() + 20
        while not _health_children(cfg) and time.monotonic() < deadline:
            time.sleep(0.1)
        children = _health_children(cfg)
        assert len(children) == 1, children
        agent.kill()
        assert gone(children[0]), "the health check outlived its SIGKILLed agent"
    finally:
        for pid in _health_children(cfg):
            os.kill(pid, signal.SIGKILL)
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
