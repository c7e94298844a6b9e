"""Issue 18 end to end: 10 devices with strongly skewed (non-IID) low-contrast digits in a
real Flower federation under SecAgg+, one of them a real agent (its store filled through
its feedback endpoint, its device node the one it starts on its active model). `edgeship
learn serve` runs 5 rounds that raise held-out accuracy over the model as shipped, converts
with --base and releases a delta from the installed release; `fleet push` sends it and the
agent commits it: a head-sized delta, and only the head's tensors changed. A relay in
front of one device checks every byte it sent: no sample, no label, no clear update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.learning._head import find_head, read_head
from edgeship.sdk.release._release import Release
from flower_federation import (
    FIXTURES,
    assert_nothing_private_was_sent,
    changed_tensors,
    edgeship,
    federation,
    release_digits,
    skewed_stores,
)
from test_agent_support import AgentProc, http_json, start_fleet_serve, write_config

DEVICES = 10
ROUNDS = 5
AGENT_DEVICE = DEVICES - 1  # the agent takes this device's examples; the others simulate


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_digits(tmp_path_factory.mktemp("learn-agent"), "model")


def _feed(agent: AgentProc, store: Path) -> int:
    """Post the device's examples to the agent's feedback endpoint."""
    from edgeship.sdk.learning._store import ExampleStore

    examples = ExampleStore(store).examples()
    for e in examples:
        x = e.inputs["input"]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.flatten().tolist()}], "label": e.label}
        assert http_json(f"{agent.url}/v2/models/model/feedback", body) == (200, {"stored": 1})
    return len(examples)


@pytest.mark.timeout(900)  # ~2-3 min on a 2-core machine: Flower polls every 3 s, and
# SecAgg+ takes four exchanges a round
def test_ten_skewed_devices_and_a_real_agent_learn_and_the_agent_commits_the_head_delta(
        released: Path, mosquitto: Mosquitto) -> None:
    root = released
    stores = skewed_stores(root, DEVICES)
    model = root / "out" / "model.int8.onnx"
    simulated = [{"store": s, "model": model} for s in stores[:AGENT_DEVICE]]
    with federation(root, simulated, relay_device=0) as (superlink, relay):
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
                            "--rounds", ROUNDS, "--min-devices", DEVICES,
                            "--keys", root / "keys", "--version", "1.1.0", "-o", root / "work",
                            "--timeout", 700, timeout=800)
            assert proc.returncode == 0, proc.stderr + proc.stdout
            log = (root / "data-dev-1" / "supernode.log").read_text(errors="replace")
            assert log.lower().count("receiving: train message") >= 4 * ROUNDS, log[-2000:]

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
            # a head-only delta went over the air, and the device node now runs on 1.1.0
            assert committed["ota_bytes_received"] < 3000, committed
            assert any(e["event"] == "supernode_started" and e.get("version") == "1.1.0"
                       for e in agent.log)  # logged just before the commit
        finally:
            agent.terminate()

    accuracy = [r["accuracy"] for r in
                json.loads((root / "work" / "learn-report.json").read_text())["rounds"]]
    assert len(accuracy) == ROUNDS + 1
    assert accuracy[0] < 30 and accuracy[-1] > accuracy[0] + 50, accuracy
    assert max(accuracy[1:]) - accuracy[-1] < 5, accuracy  # no round undoes the others

    manifest = Release.load(root / "work" / "release").manifest
    delta = {d.base_version: d.size for d in manifest.deltas}["1.0.0"]
    head_bytes = 10 * 128 + 10 * 4  # int8 weights + int32 biases
    assert delta < 1.5 * head_bytes < manifest.artifact.size / 5, (delta, manifest.artifact)
    assert changed_tensors(root / "out", root / "work" / "converted") <= {
        "w_43_q", "w_43_s", "gemm_45_node_b_q", "gemm_45_node_b_s", "gemm_45_s", "gemm_45_z"}

    assert relay is not None
    # the control: the global head the SuperLink sends is readable on this wire, so an
    # update sent in the clear would be found the same way
    fp32 = onnx.load(FIXTURES / "cnn.onnx")
    weight, _ = read_head(fp32, find_head(fp32))
    assert weight.astype(np.float32).tobytes()[:64] in relay.received
    assert_nothing_private_was_sent(bytes(relay.sent), stores[0], model)
