"""Issue 18, device side: a real agent keeps examples worth learning from ([learning]).

Low-confidence local answers, answers the cloud gave (the cloud's argmax as the label),
labels the application posts by an answer's id or with the inputs; the store's bounds,
its wipe, its encryption under a key derived from the device key; the SuperNode child
the agent runs for a SuperLink (started on the active model, killed with the agent)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from test_agent_support import (
    IN,
    OUT,
    AgentProc,
    canned_cloud,
    expected,
    gone,
    http_json,
    infer_body,
    make_keys,
    make_release,
    version_bias,
    write_config,
)

TEACHER = 7  # the class the cloud always answers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("learning")
    keys = make_keys(tmp)
    return {"root": keys / "root.pub", "v1": make_release(tmp, keys, "1.0.0")}


@pytest.fixture(scope="module")
def cloud() -> Iterator[int]:
    scores = [0.0] * OUT
    scores[TEACHER] = 1.0
    body = json.dumps({"model_name": "model", "model_version": "cloud", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, OUT], "data": scores}]}).encode()

    with canned_cloud(body) as port:
        yield port


def _agent(tmp: Path, world: dict[str, Path], learning: str, extra: str = "",
           fallback: str = "") -> AgentProc:
    port = free_port()
    cfg = write_config(tmp, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=world["root"], initial=world["v1"],
                       extra=f"{extra}\n[learning]\n{learning}\n", fallback=fallback)
    agent = AgentProc(cfg, port).start()
    agent.wait_log(lambda e: e["event"] == "serving")
    return agent


def _confidence(x: np.ndarray) -> float:
    logits = expected(version_bias("1.0.0"), x).astype(np.float64)[0]
    p = np.exp(logits - logits.max())
    return float((p / p.sum()).max())


def _input_with_confidence(low: float, high: float) -> np.ndarray:
    """An input the 1.0.0 model answers with a top probability in (low, high)."""
    direction = np.random.default_rng(3).standard_normal((1, IN)).astype(np.float32)
    for scale in np.geomspace(1e-3, 10, 400):
        x = (direction * scale).astype(np.float32)
        if low < _confidence(x) < high:
            return x
    raise AssertionError("no input in that confidence band")


def _stored(agent: AgentProc, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60  # the agent's writer thread: late on a loaded machine
    while True:
        status, doc = http_json(f"{agent.url}/v2/models/model/examples")
        assert status == 200
        if doc["examples"] == count or time.monotonic() > deadline:
            return dict(doc)
        time.sleep(0.05)


def _post(url: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _delete(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _store(agent: AgentProc, key: bytes | None = None) -> Any:
    from edgeship.sdk.learning._store import ExampleStore

    data_dir = agent.config.parent / "data-dev-1"
    return ExampleStore(data_dir / "examples", key=key)


def test_capture_feedback_and_wipe(tmp_path: Path, world: dict[str, Path], cloud: int) -> None:
    fallback = (f'[fallback]\nurl = "http://127.0.0.1:{cloud}"\npolicy = ["low_confidence"]\n'
                "confidence = 0.2\n")
    agent = _agent(tmp_path, world, "low_confidence = 0.9\ncloud = true\n", fallback=fallback)
    try:
        unsure = _input_with_confidence(0.3, 0.8)  # local answer, kept as low_confidence
        sure = _input_with_confidence(0.99, 1.0)  # local answer, not kept
        escalated = np.zeros((1, IN), np.float32)  # uniform: 1/16 < 0.2, the cloud answers
        sources, ids = [], []
        for x in (unsure, sure, escalated):
            status, answer = http_json(f"{agent.url}/v2/models/model/infer", infer_body(x))
            assert status == 200 and answer["id"]  # every answer carries an id
            sources.append(answer["parameters"]["source"])
            ids.append(answer["id"])
        assert sources == ["local", "local", "cloud"]
        _stored(agent, 2)
        assert [(e.source, e.label) for e in _store(agent).examples()] == [
            ("low_confidence", None), ("cloud", TEACHER)]  # the unsure one: no label yet

        # feedback by the id of the sure answer, and with inputs (v2 style)
        url = f"{agent.url}/v2/models/model/feedback"
        status, answer = http_json(f"{agent.url}/v2/models/model/infer",
                                   {**infer_body(sure), "id": "req-42"})
        assert answer["id"] == "req-42"
        assert http_json(url, {"id": "req-42", "label": 3}) == (200, {"stored": 1})
        # feedback on the unsure answer labels the example kept for it, in place
        assert http_json(url, {"id": ids[0], "label": 5}) == (200, {"stored": 1,
                                                                    "relabelled": 1})
        other = np.full((1, IN), 0.25, np.float32)
        assert http_json(url, {**infer_body(other), "label": 2}) == (200, {"stored": 1})
        bad = [(b"not json", 400), (b'{"label": 2}', 400), (b'{"id": "nope", "label": 1}', 404),
               (json.dumps({"id": "req-42", "label": OUT}).encode(), 400),
               (json.dumps({"id": "req-42", "label": "cat"}).encode(), 400),
               (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                        "data": [1, 2, 3]}], "label": 1}).encode(), 400)]
        for body, code in bad:
            status, doc = _post(url, body)
            assert status == code and "\n" not in doc["error"], (body, doc)
        assert _stored(agent, 4)["examples"] == 4

        kept = _store(agent).examples()
        assert [(e.source, e.label) for e in kept] == [
            ("low_confidence", 5), ("cloud", TEACHER), ("feedback", 3), ("feedback", 2)]
        for example, x in zip(kept, (unsure, escalated, sure, other), strict=True):
            np.testing.assert_array_equal(example.inputs["x"], x)
        with urllib.request.urlopen(f"{agent.url}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        for line in ('edgeship_learning_examples_total{source="cloud"} 1.0',
                     'edgeship_learning_feedback_total{outcome="stored"} 3.0',
                     "edgeship_learning_labelled_total 1.0",
                     'edgeship_learning_feedback_total{outcome="refused"} 6.0',
                     "edgeship_learning_store_examples 4.0"):
            assert line in metrics

        assert _delete(f"{agent.url}/v2/models/model/examples") == (200, {"removed": 4})
        assert _stored(agent, 0)["examples"] == 0
        assert http_json(url, {"id": "req-42", "label": 3})[0] == 404  # forgotten too
    finally:
        agent.terminate()


def test_bounded_encrypted_store_and_cli_wipe(tmp_path: Path, world: dict[str, Path]) -> None:
    from edgeship.agent._learning import store_key
    from edgeship.sdk.release._crypt import load_private_key, write_key_pair

    key_file, _, _ = write_key_pair(tmp_path / "device-keys", "dev-1")
    agent = _agent(tmp_path, world, "max_examples = 3\nfeedback = true\n",
                   extra=f'\n[encryption]\nkey_file = "{key_file}"\n')
    try:
        marker = np.full((1, IN), 12345.5, np.float32)
        for label in range(5):
            status, _ = http_json(f"{agent.url}/v2/models/model/feedback",
                                  {**infer_body(marker), "label": label})
            assert status == 200
        assert _stored(agent, 3)["examples"] == 3
        files = sorted((agent.config.parent / "data-dev-1" / "examples").glob("*.npz"))
        assert len(files) == 3
        for file in files:  # sealed: no zip header, no input bytes
            data = file.read_bytes()
            assert not data.startswith(b"PK") and marker.tobytes()[:16] not in data
        key = store_key(load_private_key(Path(key_file).read_bytes()))
        assert [e.label for e in _store(agent, key).examples()] == [2, 3, 4]  # oldest out
    finally:
        agent.terminate()
    result = subprocess.run([sys.executable, "-m", "edgeship", "agent", "wipe-examples",
                             "--config", str(agent.config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "removed 3 examples" in result.stdout
    assert not list(files[0].parent.glob("*.npz"))


def test_supernode_follows_the_active_model_and_dies_with_the_agent(
        tmp_path: Path, world: dict[str, Path]) -> None:
    superlink = f"127.0.0.1:{free_port()}"  # nobody there: the SuperNode keeps retrying
    agent = _agent(tmp_path, world, f'superlink = "{superlink}"\n')
    try:
        # logged just before "serving", which _agent waited for
        started = [e["pid"] for e in agent.log if e["event"] == "supernode_started"]
        assert len(started) == 1, agent.log  # loaded once, started once
        pid = started[0]
        cmdline = _wait_cmdline(pid, "edgeship.sdk.learning._node")
        assert f"--superlink {superlink}" in cmdline and "--insecure" in cmdline
        model = tmp_path / "data-dev-1" / "slots"
        assert re.search(rf'store="{tmp_path}/data-dev-1/examples" model="{model}/[ab]/model'
                         r'\.onnx" cpu-budget=0.25', cmdline), cmdline
        # the node runs Flower's SuperNode, whose ClientApps it runs itself (warm, forked)
        supernode = _wait_child(pid, "flower-supernode")
        assert "--isolation process" in _cmdline(supernode)
    finally:
        agent.terminate()
    assert gone(pid) and gone(supernode)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_cmdline(pid: int, part: str) -> str:
    deadline = time.monotonic() + 20
    while part not in (cmdline := _cmdline(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return cmdline


def _wait_child(pid: int, part: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in task.read_text().split():
                if part in _cmdline(int(child)):
                    return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no child {part!r} of {pid}")


def test_a_full_queue_drops_and_counts_and_drift_inputs_are_kept(tmp_path: Path) -> None:
    """The answer path never waits: with the writer held, the bounded queue drops."""
    from edgeship.agent._learning import LearningConfig, LearningTap
    from edgeship.sdk.learning._store import ExampleStore
    from prometheus_client import CollectorRegistry

    alert = threading.Event()
    tap = LearningTap(LearningConfig(queue=4, drift=True, drift_sample=1.0, cloud=True),
                      ExampleStore(tmp_path / "examples"), CollectorRegistry(),
                      serving=lambda: None, drift_alert=alert.is_set, log=lambda *a, **k: None)
    x = np.ones((1, IN), np.float32)
    y = {"y": np.eye(OUT, dtype=np.float32)[5:6]}
    with tap._store_lock:  # the writer is stuck on a slow disk
        for _ in range(10):
            tap.observe({"x": x}, y, source="cloud", version="1", seconds=0.0)
        time.sleep(0.2)
        dropped = tap.metrics.dropped._value.get()
        assert dropped in (5, 6)  # 4 queued, maybe 1 taken by the stuck writer
    while not tap._queue.empty():  # the writer catches up
        time.sleep(0.01)
    tap.observe({"x": x}, y, source="local", version="1", seconds=0.0)  # calm: not kept
    alert.set()
    tap.observe({"x": x}, y, source="local", version="1", seconds=0.0)  # drifting: kept
    tap.close()
    sources = [(e.source, e.label) for e in tap.store.examples()]
    assert sources == [("cloud", 5)] * (10 - int(dropped)) + [("drift", None)]


def test_an_encrypted_model_gets_no_supernode(tmp_path: Path, world: dict[str, Path]) -> None:
    """The SuperNode would need the model in the clear on disk: not started, said why."""
    from edgeship.sdk.release._crypt import write_key_pair
    from test_agent_encrypted import encrypted_release

    key_file, device_pub, _ = write_key_pair(tmp_path / "device-keys", "dev-1")
    sealed, _ = encrypted_release(tmp_path, world["root"].parent, "2.0.0", [device_pub])
    agent = _agent(tmp_path, {**world, "v1": sealed}, f'superlink = "127.0.0.1:{free_port()}"\n',
                   extra=f'\n[encryption]\nkey_file = "{key_file}"\n')
    try:
        refused = [e for e in agent.log if e["event"] == "supernode_not_started"]
        assert refused and "encrypted" in refused[0]["reason"]
        assert not any(e["event"] == "supernode_started" for e in agent.log)
        assert http_json(f"{agent.url}/v2/models/model")[1]["versions"] == ["2.0.0"]
    finally:
        agent.terminate()


def test_the_client_app_opens_a_sealed_store_with_the_key_the_agent_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperNode's ClientApp gets the store key in its environment (KEY_ENV)."""
    from edgeship.agent._supernode import KEY_ENV
    from edgeship.sdk.learning._apps import HeadClient
    from edgeship.sdk.learning._store import Example, ExampleStore

    key = bytes(range(32))
    ExampleStore(tmp_path / "examples", key=key).add(
        Example(inputs={"x": np.ones((1, IN), np.float32)}, label=4, source="feedback"))
    import shutil

    shutil.copytree(tmp_path / "examples", tmp_path / "copy")
    assert ExampleStore(tmp_path / "copy").examples() == []  # the control: no key, nothing
    monkeypatch.setenv(KEY_ENV, key.hex())
    client = HeadClient({"store": str(tmp_path / "examples"), "model": "unused.onnx"})
    assert [e.label for e in client._store.labelled()] == [4]


def test_kept_inputs_get_the_teachers_label_or_the_feedback_that_comes_later(
        tmp_path: Path) -> None:
    """An escalated answer's input is kept with the cloud's label (low_confidence on,
    cloud capture off); a drift input answered locally is kept unlabelled, and feedback
    on its answer's id labels it, even when it comes while the example still waits for
    the writer."""
    from types import SimpleNamespace

    from edgeship.agent._learning import LearningConfig, LearningTap
    from edgeship.sdk.learning._store import ExampleStore
    from edgeship.sdk.serving._v2server import _REQUEST_ID
    from prometheus_client import CollectorRegistry

    tap = LearningTap(LearningConfig(low_confidence=0.5, cloud=False, drift=True,
                                     drift_sample=1.0),
                      ExampleStore(tmp_path / "examples"), CollectorRegistry(),
                      serving=lambda: None, drift_alert=lambda: True, log=lambda *a, **k: None)
    x = np.ones((1, IN), np.float32)
    sure = {"y": np.eye(OUT, dtype=np.float32)[5:6]}  # one-hot probabilities: sure
    token = _REQUEST_ID.set("escalated")
    tap.observe({"x": x}, sure, source="cloud", version="1", seconds=0.0)
    _REQUEST_ID.reset(token)
    with tap._store_lock:  # the writer is stuck on a slow disk
        token = _REQUEST_ID.set("drifting")
        tap.observe({"x": x * 2}, sure, source="local", version="1", seconds=0.0)
        _REQUEST_ID.reset(token)
        time.sleep(0.1)
        reply = tap._feedback(SimpleNamespace(body=b'{"id": "drifting", "label": 3}'))
        assert json.loads(reply.body) == {"stored": 1, "relabelled": 1}
    tap.close()
    kept = [(e.source, e.label, float(e.inputs["x"].flat[0])) for e in tap.store.examples()]
    assert kept == [("low_confidence", 5, 1.0), ("drift", 3, 2.0)]
    assert tap.metrics.labelled._value.get() == 1
