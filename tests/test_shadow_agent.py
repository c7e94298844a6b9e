"""Shadow releases on a real agent (real mosquitto, ``edgeship agent run`` and
``edgeship fleet serve`` subprocesses, the shadow in its own worker process): installed
next to the active model, answers stay the active model's, agreement is reported,
a restart brings the shadow back, promote switches without a download, discard drops it.
(A crashing shadow leaving answers unchanged is tests/test_shadow_runtime.py.)"""

from __future__ import annotations

import json
import threading
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


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shadow-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "2.0.0", base=v1)
    v3 = make_release(tmp, keys, "3.0.0", base=v2)
    return {"v1": v1, "v2": v2, "v3": v3, "root": keys / "root.pub"}


class Telemetry:
    """The device's heartbeats (a real MQTT subscriber)."""

    def __init__(self, url: str) -> None:
        from edgeship.sdk.transport._mqtt import MqttEdge

        self.beats: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.edge = MqttEdge(url, client_id=f"tele-{id(self)}",
                             subscriptions=["edgeship/t/dev-1/telemetry"],
                             on_message=self._on)
        self.edge.start()
        assert self.edge.wait_connected(30)

    def _on(self, msg: Any) -> None:
        with self._lock:
            self.beats.append(json.loads(msg.payload))

    def wait(self, pred: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [b for b in self.beats if pred(b)]
            if found:
                return found[-1]
            time.sleep(0.1)
        raise TimeoutError(f"no matching heartbeat; last {self.beats[-1:]}")


def infer_many(url: str, n: int) -> list[tuple[str | None, np.ndarray | None]]:
    return [served_version(url) for _ in range(n)]


def test_shadow_push_restart_promote_and_discard(tmp_path: Path, mosquitto: Mosquitto,
                                                 rels: dict[str, Path]) -> None:
    server = start_fleet_serve(mosquitto.url, rels["v1"], rels["v2"], rels["v3"])
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"],
                       extra="\n[shadow]\nsample = 1.0\ncpu_budget = 2.0\nqueue = 64\n")
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    tele = Telemetry(mosquitto.url)
    try:
        agent.wait_ready()
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        # 1. shadow push: installed and running next to v1
        watch.publish(TOPIC, shadow_offer(rels["v2"]), retain=True)
        status = watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "2.0.0")
        assert status["version"] == "1.0.0" and status["shadow"]["version"] == "2.0.0"
        ready = agent.wait_log(lambda line: line.get("event") == "shadow_ready")
        # 2. answers are v1's, unchanged; the shadow sees them and agrees on the top class
        for version, y in infer_many(agent.url, 30):
            assert version == "1.0.0"
            np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        status = watch.wait(lambda s: (s.get("shadow") or {}).get("compared", 0) >= 10)
        shadow = status["shadow"]
        assert shadow["state"] == "running" and shadow["agreement"] == 1.0
        assert shadow["max_abs_diff"] == pytest.approx(100.0, abs=1e-3)  # bias 200 vs 100
        assert shadow["dropped"] == 0 and shadow["errors"] == 0
        assert len(json.dumps(status)) < 4096
        beat = tele.wait(lambda b: (b.get("shadow") or {}).get("compared", 0) >= 10)
        assert beat["shadow"]["version"] == "2.0.0" and beat["state"] == "shadowing"
        # 3. a restart loads the shadow again
        agent.kill()
        assert not (tmp_path / "data-dev-1" / "download.part").exists()
        mark = len(agent.log)
        agent.start()
        agent.wait_ready()
        started = agent.wait_log(lambda line: line.get("event") == "started")
        assert started["phase"] == "shadowing"
        again = agent.wait_log(lambda line: line.get("event") == "shadow_ready")
        assert again["pid"] != ready["pid"]
        assert served_version(agent.url)[0] == "1.0.0"
        # 4. promote: the same release offered normally; switches with no download
        watch.publish(TOPIC, offer_bytes(rels["v2"]), retain=True)
        status = watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
        assert status["shadow"] is None and status["error"] is None
        version, y = served_version(agent.url)
        assert version == "2.0.0"
        np.testing.assert_allclose(y, expected(200.0, GOLDEN_X), rtol=1e-5)
        statuses = [line for line in agent.log[mark:] if line.get("event") == "status"]
        assert all(line["ota_bytes_received"] == 0 for line in statuses)  # since the restart
        assert "downloading" not in {line["state"] for line in statuses}
        assert any(line.get("event") == "shadow_stopped" for line in agent.log)
        assert gone(again["pid"])
        # 5. discard: a shadow of v3, then dropped; v2 keeps answering
        watch.publish(TOPIC, shadow_offer(rels["v3"]), retain=True)
        watch.wait(lambda s: s["state"] == "shadowing" and s["target"] == "3.0.0")
        third = agent.wait_log(lambda line: line.get("event") == "shadow_ready"
                               and line.get("version") == "3.0.0")
        discard = json.dumps({"type": "shadow-discard", "version": "3.0.0"}).encode()
        watch.publish(TOPIC, discard, retain=True)
        status = watch.wait(lambda s: s["state"] == "shadow-discarded")
        assert status["target"] == "3.0.0" and status["shadow"] is None
        assert status["version"] == "2.0.0" and served_version(agent.url)[0] == "2.0.0"
        assert gone(third["pid"])
    finally:
        tele.edge.stop()
        watch.close()
        agent.kill()
        server.terminate()
        server.wait(timeout=10)
