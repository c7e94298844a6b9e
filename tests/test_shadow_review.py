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
from edgeship.sdk._release import Release
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    make_keys,
    make_release,
    served_version,
    write_config,
)

TOPIC = "edgeship/t/dev-1/ota/offer"
SHADOW = "\n[shadow]\nsample = 1.0\ncpu_budget = 2.0\nqueue = 64\n"


def shadow_offer(reldir: Path) -> bytes:
    return replace(Release.load(reldir).offer(), mode="shadow").to_bytes()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "Z (zombie)" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


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
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                               mosquitto.url, "--releases", str(rels["v1"]), str(rels["v2"])],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
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
