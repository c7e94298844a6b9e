"""Crash safety: SIGKILL the agent inside every phase of 30 updates (download, after the
download, install, switch, health check). After each restart it must serve a model that
is exactly a verified release, and the update must complete (or be cleanly retried)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    make_keys,
    make_release,
    offer_bytes,
    served_version,
    version_bias,
    write_config,
)

UPDATES = 30
POINTS = ("chunk", "downloaded", "install", "switch", "health")
# how long the agent waits at each point, and the span the kill is aimed at within it: the
# kill comes that much after this test has read the point's log line, and reading it takes
# a loaded machine a while, so the window stays open well past the span (the agent is
# killed in it every round: a long window costs nothing)
PAUSES = {"chunk": 0.04, "downloaded": 1.5, "install": 1.5, "switch": 1.5, "health": 1.5}
KILL_WITHIN = {"chunk": 0.036, "downloaded": 0.225, "install": 0.225, "switch": 0.225,
               "health": 0.27}


def _version(k: int) -> str:
    return f"1.0.{k}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1.0.0 .. v1.0.30, each a new set of weights (so each download is several chunks)."""
    tmp = tmp_path_factory.mktemp("chain")
    keys = make_keys(tmp)
    dirs = [make_release(tmp, keys, _version(0), seed=0)]
    for k in range(1, UPDATES + 1):
        dirs.append(make_release(tmp, keys, _version(k), base=dirs[-1], seed=k))
    return {"dirs": dirs, "root": keys / "root.pub"}


def _check_serving(agent: AgentProc, allowed: set[str]) -> str:
    agent.wait_ready()
    version, y = served_version(agent.url)
    assert version in allowed, (version, allowed)
    seed = int(version.split(".")[2])  # type: ignore[union-attr]
    want = expected(version_bias(version), GOLDEN_X, seed=seed)  # type: ignore[arg-type]
    np.testing.assert_allclose(y, want, rtol=1e-5)  # exactly the verified release's model
    return version  # type: ignore[return-value]


def _wait_point(agent: AgentProc, point: str) -> None:
    if point == "health":  # the pause is inside the health-check child
        agent.wait_log(lambda line: line.get("event") == "health_check", timeout=30)
    else:
        agent.wait_log(lambda line: line.get("event") == "pause" and line.get("point") == point,
                       timeout=30)


def test_sigkill_at_random_points_of_30_updates(tmp_path: Path, mosquitto: Mosquitto,
                                                 chain: dict[str, Any]) -> None:
    dirs = chain["dirs"]
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                               mosquitto.url, "--releases", *map(str, dirs)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=chain["root"],
                       initial=dirs[0], chunk_size=512)
    pause_file = tmp_path / "pause"  # only the window this round aims at is slowed down
    agent = AgentProc(cfg, port, env={"EDGESHIP_AGENT_PAUSE_FILE": str(pause_file)}).start()
    watch = Watcher(mosquitto.url)
    rng = random.Random(7)
    kills, retries = 0, 0
    resumed: dict[str, int] = {}  # phase found in state.json at each restart
    try:
        _check_serving(agent, {_version(0)})
        for k in range(1, UPDATES + 1):
            point = POINTS[k % len(POINTS)]
            while not agent.lines.empty():
                agent.lines.get()
            pause_file.write_text(f"{point}={PAUSES[point]}")
            watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(dirs[k]), retain=True)
            _wait_point(agent, point)
            if rng.random() < 0.8:  # mostly inside the window, sometimes right at its start
                time.sleep(rng.uniform(0.0, KILL_WITHIN[point]))
            agent.kill()
            pause_file.unlink()
            kills += 1
            agent.start()
            started = agent.wait_log(lambda line: line.get("event") == "started")
            resumed[started["phase"]] = resumed.get(started["phase"], 0) + 1
            _check_serving(agent, {_version(k - 1), _version(k)})
            status = watch.wait(lambda s, k=k: s["target"] == _version(k) and s["state"] in
                                ("committed", "rolled-back", "failed"), timeout=60)
            if status["state"] != "committed":  # cleanly retried: offer it again
                retries += 1
                watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(dirs[k]), retain=True)
                status = watch.wait(lambda s, k=k: s["version"] == _version(k)
                                    and s["state"] == "committed", timeout=60)
            assert status["version"] == _version(k), status
            assert _check_serving(agent, {_version(k)}) == _version(k)
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
    print(f"crash test: {kills} kills, {retries} updates offered again; resumed in {resumed}")
    assert kills == UPDATES
    for phase in ("downloading", "verifying", "installing", "health-checking"):
        assert resumed.get(phase, 0) >= 3, resumed  # the kills landed in every window
    assert retries <= UPDATES // 3, retries  # most updates finish by themselves after a kill
