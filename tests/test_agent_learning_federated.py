"""Issue 18 end to end with a real agent: one agent among simulated devices in a real
Flower federation. Its store is filled through its feedback endpoint, its SuperNode is the
one the agent starts on its active model; `edgeship learn serve` raises held-out accuracy
and releases a head-only delta, which `fleet push` sends and the agent commits (and its
SuperNode follows the new model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Mosquitto, free_port
from flower_federation import federation
from test_agent_support import AgentProc, http_json, start_fleet_serve, write_config
from test_learning_federated import (
    DEVICES,
    FIXTURES,
    edgeship,
    release_digits,
    skewed_stores,
)

AGENT_DEVICE = DEVICES - 1  # the agent takes this device's examples; the others simulate


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_digits(tmp_path_factory.mktemp("learn-agent"), "model")


def _feed(agent: AgentProc, store: Path) -> int:
    """Post the simulated device's examples to the agent's feedback endpoint."""
    from edgeship.sdk.learning._store import ExampleStore

    examples = ExampleStore(store).examples()
    for e in examples:
        x = e.inputs["input"]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.flatten().tolist()}], "label": e.label}
        assert http_json(f"{agent.url}/v2/models/model/feedback", body) == (200, {"stored": 1})
    return len(examples)


@pytest.mark.timeout(900)
def test_a_real_agent_learns_in_a_round_and_commits_the_head_delta(
        released: Path, mosquitto: Mosquitto) -> None:
    root = released
    stores = skewed_stores(root)
    simulated = [{"store": s, "model": root / "out" / "model.int8.onnx"}
                 for s in stores[:AGENT_DEVICE]]
    with federation(root, simulated) as (superlink, _):
        port = free_port()
        cfg = write_config(root, broker_url=mosquitto.url, port=port,
                           root_pub=root / "keys" / "root.pub", initial=root / "rel-1.0.0",
                           extra=f'\n[learning]\nsuperlink = "{superlink}"\n')
        agent = AgentProc(cfg, port).start()
        try:
            agent.wait_log(lambda e: e["event"] == "serving")
            assert any(e["event"] == "supernode_started" for e in agent.log)
            kept = _feed(agent, stores[AGENT_DEVICE])
            assert http_json(f"{agent.url}/v2/models/model/examples")[1]["examples"] == kept
            proc = edgeship("learn", "serve", "--release", root / "rel-1.0.0",
                            "--model", FIXTURES / "cnn.onnx", "--converted", root / "out",
                            "--calib", FIXTURES / "cnn_calib.npz",
                            "--heldout", root / "heldout.npz", "--superlink", superlink,
                            "--rounds", 2, "--min-devices", DEVICES,
                            "--keys", root / "keys", "--version", "1.1.0", "-o", root / "work",
                            "--timeout", 420)
            assert proc.returncode == 0, proc.stderr + proc.stdout
            log = (root / "data-dev-1" / "supernode.log").read_text(errors="replace")
            assert "fit" in log.lower() or "message" in log.lower(), log[-2000:]

            server = start_fleet_serve(mosquitto.url, root / "rel-1.0.0", root / "work" / "release",
                                       fleet="t")
            try:
                pushed = edgeship("fleet", "push", root / "work" / "release", "--broker",
                                  mosquitto.url, "--fleet", "t", "--state", root / "fleet.sqlite")
                assert pushed.returncode == 0, pushed.stderr
                committed = agent.wait_log(lambda e: e["event"] == "status"
                                           and e.get("state") == "committed"
                                           and e.get("version") == "1.1.0", timeout=120)
            finally:
                server.terminate()
                server.wait(timeout=10)
            assert http_json(f"{agent.url}/v2/models/model")[1]["versions"] == ["1.1.0"]
            # a head-only delta went over the air, and the SuperNode now runs on 1.1.0
            assert committed["ota_bytes_received"] < 3000, committed
            assert any(e["event"] == "supernode_started" and e.get("version") == "1.1.0"
                       for e in agent.log)  # logged just before the commit
        finally:
            agent.terminate()
    report = json.loads((root / "work" / "learn-report.json").read_text())
    accuracy = [r["accuracy"] for r in report["rounds"]]
    assert accuracy[-1] > accuracy[0] + 40, accuracy
