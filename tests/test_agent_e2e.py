"""The agent as a real process against a real mosquitto and a real release server:
delta update end to end, rollback on a failing health check, forged and replayed offers
on the wire, hot swap under load, no broker / no model, v2 clients (ours and tritonclient)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.serving._client import AgentClient
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    Watcher,
    expected,
    http_json,
    infer_body,
    make_keys,
    make_release,
    offer_bytes,
    served_version,
    version_bias,
    write_config,
)

from edgeship import InferenceError


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "2.0.0", base=v1)
    bad = make_release(tmp, keys, "2.1.0", base=v2, bad_golden=True)
    return {"v1": v1, "v2": v2, "bad": bad, "root": keys / "root.pub"}


@pytest.fixture
def fleet_server(mosquitto: Mosquitto, rels: dict[str, Path]) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", mosquitto.url,
         "--releases", str(rels["v1"]), str(rels["v2"]), str(rels["bad"])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def agent(tmp_path: Path, mosquitto: Mosquitto, rels: dict[str, Path]) -> Any:
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=rels["root"],
                       initial=rels["v1"])
    proc = AgentProc(cfg, port).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def push(mosquitto: Mosquitto, reldir: Path, devices: str = "dev-1") -> None:
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "push", str(reldir),
                          "--broker", mosquitto.url, "--fleet", "t", "--devices", devices],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_delta_update_end_to_end(mosquitto: Mosquitto, fleet_server: Any, agent: AgentProc,
                                 rels: dict[str, Path]) -> None:
    watch = Watcher(mosquitto.url)
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        push(mosquitto, rels["v2"])
        status = watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
        states = [s["state"] for s in watch.history]
        assert "downloading" in states and "health-checking" in states
    finally:
        watch.close()
    assert status["error"] is None
    version, y = served_version(agent.url)
    assert version == "2.0.0"
    np.testing.assert_allclose(y, expected(version_bias("2.0.0"), GOLDEN_X), rtol=1e-5)
    code, meta = http_json(f"{agent.url}/v2/models/model")
    assert code == 200 and meta["versions"] == ["2.0.0"] and meta["platform"]
    # the delta, not the artifact, went over the wire
    delta_size = sum(p.stat().st_size for p in (rels["v2"] / "deltas").iterdir())
    assert delta_size < (rels["v2"] / "model.onnx").stat().st_size
    totals = {line["progress"]["total"] for line in agent.log
              if line.get("event") == "status" and line.get("progress")}
    assert totals == {delta_size}


def test_clients_and_bad_input(agent: AgentProc) -> None:
    client = AgentClient(agent.url)
    answer = client.infer({"x": GOLDEN_X})
    assert answer.source == "local" and answer.version == "1.0.0"
    np.testing.assert_allclose(client.predict(GOLDEN_X), expected(100.0, GOLDEN_X), rtol=1e-5)
    assert client.metadata().versions == ("1.0.0",)
    with pytest.raises(InferenceError, match=r"shape \[1, 3\]"):
        client.infer({"x": np.zeros((1, 3), np.float32)})
    code, doc = http_json(f"{agent.url}/v2/models/model/infer",
                          {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT32",
                                       "data": [1] * 64}]})
    assert code == 400 and "datatype" in doc["error"]
    code, doc = http_json(f"{agent.url}/v2/models/model/infer",
                          {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                       "data": [1.0] * 3}]})
    assert code == 400 and "do not match shape" in doc["error"]
    code, _ = http_json(f"{agent.url}/v2/models/other")
    assert code == 404

    import tritonclient.http as triton

    tc = triton.InferenceServerClient(f"127.0.0.1:{agent.port}")
    assert tc.is_server_live() and tc.is_model_ready("model")
    assert tc.get_model_metadata("model")["versions"] == ["1.0.0"]
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(GOLDEN_X)
    result = tc.infer("model", [inp])
    np.testing.assert_allclose(result.as_numpy("y"), expected(100.0, GOLDEN_X), rtol=1e-5)
    assert result.get_response()["parameters"]["source"] == "local"

    import urllib.request

    with urllib.request.urlopen(f"{agent.url}/metrics") as resp:
        text = resp.read().decode()
    assert 'edgeship_model_info{version="1.0.0"} 1.0' in text
    assert 'edgeship_infer_requests_total{outcome="ok",source="local"}' in text


def test_failing_health_check_rolls_back(mosquitto: Mosquitto, fleet_server: Any,
                                         agent: AgentProc, rels: dict[str, Path]) -> None:
    watch = Watcher(mosquitto.url)
    try:
        push(mosquitto, rels["bad"])
        status = watch.wait(lambda s: s["state"] == "rolled-back")
    finally:
        watch.close()
    assert status["version"] == "1.0.0" and status["target"] == "2.1.0"
    assert "golden output differs" in status["error"]
    version, y = served_version(agent.url)
    assert version == "1.0.0"
    np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)


def test_forged_and_replayed_offers_are_rejected_on_the_wire(
        mosquitto: Mosquitto, fleet_server: Any, agent: AgentProc, rels: dict[str, Path]) -> None:
    watch = Watcher(mosquitto.url)
    topic = "edgeship/t/dev-1/ota/offer"
    try:
        watch.wait(lambda s: s["state"] == "committed")
        forged = offer_bytes(rels["v2"]).replace(b'"version":"2.0.0"', b'"version":"7.0.0"')
        watch.publish(topic, forged)
        status = watch.wait(lambda s: s["state"] == "failed")
        assert "SignatureError" in status["error"] and status["version"] == "1.0.0"
        push(mosquitto, rels["v2"])
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
        watch.publish(topic, offer_bytes(rels["v1"]))  # replay the old, validly signed offer
        status = watch.wait(lambda s: s["state"] == "failed")
        assert "RollbackError" in status["error"] and status["version"] == "2.0.0"
    finally:
        watch.close()
    assert served_version(agent.url)[0] == "2.0.0"


def test_hot_swap_loses_no_request(mosquitto: Mosquitto, fleet_server: Any, agent: AgentProc,
                                   rels: dict[str, Path]) -> None:
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        client = AgentClient(agent.url)
        while not stop.is_set():
            try:
                answer = client.infer({"x": GOLDEN_X})
                y = answer.outputs["y"]
                want = expected(version_bias(answer.version), GOLDEN_X)
                if not np.allclose(y, want, rtol=1e-5):
                    failures.append(f"wrong output for {answer.version}")
                seen[answer.version] = seen.get(answer.version, 0) + 1
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    watch = Watcher(mosquitto.url)
    try:
        push(mosquitto, rels["v2"])
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
        before = seen.get("2.0.0", 0)
        deadline = threading.Event()
        while seen.get("2.0.0", 0) < before + 20 and not deadline.wait(0.05):
            pass
    finally:
        stop.set()
        for t in threads:
            t.join()
        watch.close()
    assert failures == []
    assert seen.get("1.0.0", 0) > 10 and seen.get("2.0.0", 0) > 10


def test_starts_with_no_broker_and_no_model(tmp_path: Path, rels: dict[str, Path]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=rels["root"])
    import socket

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # plays systemd's part
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    proc = AgentProc(cfg, port, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).start()
    try:
        got = {notify.recv(64).decode() for _ in range(2)}
        assert got == {"READY=1", "WATCHDOG=1"}
        code, doc = http_json(f"{proc.url}/v2/models/model/infer", infer_body(GOLDEN_X))
        assert code == 503 and "no model installed" in doc["error"]
        code, _ = http_json(f"{proc.url}/v2/health/ready")
        assert code == 503
        code, meta = http_json(f"{proc.url}/v2/models/model")
        assert code == 200 and meta["versions"] == []
    finally:
        notify.close()
        assert proc.terminate() == 0  # SIGTERM: a clean exit
    assert any(line.get("event") == "stopping" for line in proc.log)


def test_no_model_answers_from_the_cloud_fallback(tmp_path: Path, rels: dict[str, Path]) -> None:
    from conftest import FIXTURES, wait_for_port

    cloud_port = free_port()
    cloud = subprocess.Popen([sys.executable, "-m", "edgeship", "cloud", "serve",
                              str(FIXTURES / "mlp.onnx"), "--name", "model", "--port",
                              str(cloud_port)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    cfg = write_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=rels["root"],
                       fallback=f'[fallback]\nurl = "http://127.0.0.1:{cloud_port}"\n'
                                'deadline_ms = 2000\npolicy = ["no_model", "on_error"]\n')
    proc = AgentProc(cfg, port).start()
    try:
        wait_for_port(cloud_port, timeout=30)
        proc.wait_ready()  # ready: the cloud can answer although no model is installed
        x = np.random.default_rng(0).standard_normal((1, 30)).astype(np.float32)
        answer = AgentClient(proc.url).infer({"input": x})
        assert answer.source == "cloud"
        from edgeship.sdk.runtime._model import Model

        want = Model.load(FIXTURES / "mlp.onnx").predict(x)
        np.testing.assert_allclose(next(iter(answer.outputs.values())), want, rtol=1e-4)
    finally:
        proc.kill()
        cloud.terminate()
        cloud.wait(timeout=10)


def test_a_signed_release_that_is_not_a_model_rolls_back(
        tmp_path: Path, mosquitto: Mosquitto, agent: AgentProc, rels: dict[str, Path]) -> None:
    from edgeship.sdk.fleet._release_server import ReleaseServer, push_offer
    from edgeship.sdk.release._release import Release

    junk = tmp_path / "junk" / "model.onnx"
    junk.parent.mkdir()
    junk.write_bytes(b"\x08\x07not an onnx model at all" * 40)
    rel = tmp_path / "rel-junk"
    Release.build(junk, version="3.0.0", keydir=rels["root"].parent, out=rel, model_name="model")
    server = ReleaseServer(mosquitto.url, [rel]).start()
    watch = Watcher(mosquitto.url)
    try:
        push_offer(mosquitto.url, "t", rel, ["dev-1"])
        status = watch.wait(lambda s: s["state"] == "rolled-back")
    finally:
        watch.close()
        server.stop()
    assert status["version"] == "1.0.0" and "ModelLoadError" in status["error"]
    assert served_version(agent.url)[0] == "1.0.0"


def test_serves_its_model_with_no_broker(tmp_path: Path, rels: dict[str, Path]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=rels["root"], initial=rels["v1"])
    proc = AgentProc(cfg, port).start()
    try:
        proc.wait_ready()
        version, y = served_version(proc.url)
        assert version == "1.0.0"
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
    finally:
        assert proc.terminate() == 0


def test_delta_on_a_deleted_active_slot_fetches_the_full_artifact(
        tmp_path: Path, mosquitto: Mosquitto, fleet_server: Any, agent: AgentProc,
        rels: dict[str, Path]) -> None:
    """The active slot's file is lost on disk while the model serves from memory: the
    delta's base cannot be read, so the agent must fetch the whole artifact (it crashed
    on the missing file and then crashed at every restart)."""
    watch = Watcher(mosquitto.url)
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        (tmp_path / "data-dev-1" / "slots" / "a" / "model.onnx").unlink()
        push(mosquitto, rels["v2"])
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0")
    finally:
        watch.close()
    assert served_version(agent.url)[0] == "2.0.0"
    assert any(line.get("event") == "delta_base_unreadable" for line in agent.log)


def test_a_slot_that_cannot_be_written_fails_the_update_not_the_agent(
        tmp_path: Path, mosquitto: Mosquitto, fleet_server: Any, agent: AgentProc,
        rels: dict[str, Path]) -> None:
    """An I/O error while installing (disk full, a broken slot dir; here slot b is a file):
    the update fails with the reason and v1 keeps serving. The error escaped the loop,
    the agent exited, and every restart retried the install into the same error."""
    slot_b = tmp_path / "data-dev-1" / "slots" / "b"
    slot_b.rmdir()
    slot_b.write_bytes(b"not a directory")
    watch = Watcher(mosquitto.url)
    try:
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        push(mosquitto, rels["v2"])
        status = watch.wait(lambda s: s["state"] == "failed")
    finally:
        watch.close()
    assert status["version"] == "1.0.0" and "cannot write the slot b" in status["error"]
    assert agent.proc is not None and agent.proc.poll() is None
    assert served_version(agent.url)[0] == "1.0.0"
