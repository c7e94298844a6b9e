"""Issue 16, defect 2: a full disk during an update. A real agent (real mosquitto, real
``fleet serve``, real files) whose chunk, state or slot writes fail with ENOSPC (injected
at the storage boundary by ``disk_full_agent.py``): the update fails and frees its partial
files, the active model keeps serving, a restart on the still-full disk is no crash loop,
and once there is room again the same update lands."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from test_agent_support import (
    AgentProc,
    Watcher,
    make_keys,
    make_release,
    offer_bytes,
    served_version,
    start_fleet_serve,
    write_config,
)

WRAPPER = Path(__file__).parent / "disk_full_agent.py"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("diskfull")
    keys = make_keys(tmp)
    return {"root": keys / "root.pub", "v0": make_release(tmp, keys, "1.0.0"),
            "v1": make_release(tmp, keys, "1.0.1", seed=1)}


@pytest.mark.parametrize("kind", ["chunk", "state", "slot"])
def test_full_disk_fails_the_update_not_the_device(kind: str, tmp_path: Path,
                                                   mosquitto: Mosquitto,
                                                   releases: dict[str, Any]) -> None:
    flag = tmp_path / "disk-full"
    pause = tmp_path / "pause"
    pause.write_text("chunk=0.2")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=releases["root"],
                       initial=releases["v0"], chunk_size=1024)
    env = {"EDGESHIP_TEST_DISK_FULL": str(flag), "EDGESHIP_AGENT_PAUSE_FILE": str(pause)}
    agent = AgentProc(cfg, port, env=env, launcher=[sys.executable, str(WRAPPER)])
    server = start_fleet_serve(mosquitto.url, releases["v1"])
    watch = Watcher(mosquitto.url)
    data = tmp_path / "data-dev-1"
    try:
        agent.start().wait_ready()
        if kind != "state":
            flag.write_text(kind)
        watch.publish("edgeship/t/dev-1/ota/offer", offer_bytes(releases["v1"]), retain=True)
        if kind == "state":  # the state write right after a chunk, as in the issue
            agent.wait_log(lambda line: line.get("event") == "pause", timeout=30)
            flag.write_text("state")
        else:
            pause.unlink()
        status = watch.wait(lambda s: s["state"] == "failed", timeout=60)
        assert "storage" in status["error"] and "No space left" in status["error"], status
        assert served_version(agent.url)[0] == "1.0.0"  # the active model keeps serving
        # the failed state is reported before the partial files are removed
        def leftovers() -> list[Path]:
            return [p for p in (data / "download.part",) if p.exists()] + \
                list(data.glob("slots/*/.*.tmp")) + list(data.glob(".*.tmp"))
        deadline = time.monotonic() + 30
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftovers()
        assert agent.proc is not None and agent.proc.poll() is None
        # a restart on the still-full disk: up, serving, and still up a while later
        agent.kill()
        pause.unlink(missing_ok=True)
        agent.start().wait_ready()
        time.sleep(3)
        assert agent.proc.poll() is None, agent.log[-5:]
        assert served_version(agent.url)[0] == "1.0.0"
        # room again: the same (retained) offer lands after a restart
        flag.unlink()
        agent.kill()
        agent.start()
        watch.wait(lambda s: s["version"] == "1.0.1" and s["state"] == "committed", timeout=60)
        assert served_version(agent.url)[0] == "1.0.1"
    finally:
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
    internal = [line for line in agent.log if "internal error" in str(line)]
    assert not internal, internal
