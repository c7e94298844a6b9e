"""Cloud fallback through the agent: real ``edgeship agent run`` processes with a
``[fallback]`` section, a real ``edgeship cloud serve`` (killed and restarted) and a
misbehaving HTTP server, asked over the agent's v2 API by tritonclient and AgentClient.
No broker is running: the agent must serve and fall back without one."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from edgeship.sdk.serving._client import AgentClient
from test_agent_support import (
    GOLDEN_X,
    IN,
    OUT,
    AgentProc,
    expected,
    http_json,
    make_keys,
    make_model,
    make_release,
    write_config,
)
from test_cloud_serve import start_cloud, stop
from test_fallback_cloud import MARGIN_S, start_faulty

CLOUD_BIAS = 7.0  # the cloud model is the local one with another bias: answers tell apart
LOW_X = np.zeros((1, IN), np.float32)  # all logits equal: confidence 1/16
HIGH_X = GOLDEN_X * 20  # one logit far ahead: confidence ~1


def _confidence(y: np.ndarray) -> float:
    e = np.exp(y - y.max())
    return float((e / e.sum()).max())


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fallback-agent")
    keys = make_keys(tmp)
    cloud_model = make_model(tmp / "cloud" / "model.onnx", CLOUD_BIAS)
    return {"v1": make_release(tmp, keys, "1.0.0"), "root": keys / "root.pub", "cloud": cloud_model}


def _fallback(port: int, **keys: Any) -> str:
    values = {"deadline_ms": 300, "policy": '["no_model", "on_error", "low_confidence"]',
              "confidence": 0.5, "failures": 3, "cooldown_s": 0.5, **keys}  # fmt: skip
    lines = [f'url = "http://127.0.0.1:{port}"'] + [f"{k} = {v}" for k, v in values.items()]
    return "[fallback]\n" + "\n".join(lines) + "\n"


def _agent(tmp: Path, release: dict[str, Path], fallback: str, initial: bool) -> AgentProc:
    port = free_port()
    cfg = write_config(tmp, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=release["root"], initial=release["v1"] if initial else None,
                       fallback=fallback)  # fmt: skip
    proc = AgentProc(cfg, port).start()
    proc.wait_ready()  # ready comes early with a fallback: wait for the local model too
    deadline = time.monotonic() + 30
    while initial and http_json(f"{proc.url}/v2/models/model")[1].get("versions") != ["1.0.0"]:
        assert time.monotonic() < deadline, f"v1 never served: {proc.log[-5:]}"
        time.sleep(0.05)
    return proc


def _ask(agent: AgentProc, x: np.ndarray) -> tuple[str, str, np.ndarray, float]:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{agent.port}")
    try:
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        began = time.monotonic()
        result = client.infer("model", [inp])
        took = time.monotonic() - began
    finally:
        client.close()
    params = result.get_response()["parameters"]
    return params["source"], params["version"], result.as_numpy("y"), took


def _breaker_gauge(agent: AgentProc) -> float:
    with urllib.request.urlopen(f"{agent.url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("edgeship_fallback_breaker_state "):
                return float(line.split()[1])
    raise AssertionError("no edgeship_fallback_breaker_state in /metrics")


@pytest.fixture
def cloud(release: dict[str, Path]) -> Iterator[tuple[Any, int]]:
    proc, port = start_cloud(release["cloud"], "--name", "model", "--model-version", "cloud-1")
    handle = [proc]
    yield handle, port
    stop(handle[0])


def test_agent_without_model_answers_from_cloud(
    tmp_path: Path, release: dict[str, Path], cloud: tuple[Any, int]
) -> None:
    _, port = cloud
    agent = _agent(tmp_path, release, _fallback(port), initial=False)
    try:
        source, version, y, _ = _ask(agent, GOLDEN_X)
        assert (source, version) == ("cloud", "cloud-1")
        np.testing.assert_allclose(y, expected(CLOUD_BIAS, GOLDEN_X), rtol=1e-4, atol=1e-3)
        answer = AgentClient(agent.url).infer({"x": GOLDEN_X})
        assert answer.source == "cloud"
    finally:
        agent.kill()


def test_agent_escalates_low_confidence_and_survives_cloud_restart(
    tmp_path: Path, release: dict[str, Path], cloud: tuple[Any, int]
) -> None:
    handle, port = cloud
    assert _confidence(expected(100.0, LOW_X)) < 0.5 < _confidence(expected(100.0, HIGH_X))
    agent = _agent(tmp_path, release, _fallback(port), initial=True)
    try:
        source, _, y, _ = _ask(agent, HIGH_X)
        assert source == "local"
        np.testing.assert_allclose(y, expected(100.0, HIGH_X), rtol=1e-4, atol=1e-3)
        source, version, y, _ = _ask(agent, LOW_X)
        assert (source, version) == ("cloud", "cloud-1")
        np.testing.assert_allclose(y, expected(CLOUD_BIAS, LOW_X), rtol=1e-4, atol=1e-3)
        assert _breaker_gauge(agent) == 0

        stop(handle[0])  # the cloud dies: local answers, breaker opens after 3 failures
        answers = [_ask(agent, LOW_X) for _ in range(8)]
        assert {a[0] for a in answers} == {"local-degraded"}
        assert {a[1] for a in answers} == {"1.0.0"}
        np.testing.assert_allclose(answers[-1][2], expected(100.0, LOW_X), rtol=1e-4, atol=1e-3)
        assert _breaker_gauge(agent) in (1, 2)  # open (half-open once the cool-down passed)
        assert max(a[3] for a in answers[3:]) < 0.3  # no waiting on the dead cloud

        handle[0], _ = start_cloud(release["cloud"], "--name", "model",
                                   "--model-version", "cloud-1", port=port)  # fmt: skip
        time.sleep(0.6)  # past the cool-down
        assert _ask(agent, LOW_X)[0] == "cloud"
        assert _breaker_gauge(agent) == 0
    finally:
        agent.kill()


def test_agent_answers_in_time_whatever_the_cloud_does(
    tmp_path: Path, release: dict[str, Path]
) -> None:
    mode = tmp_path / "mode"
    mode.write_text("slow")
    proc, port = start_faulty(f"@{mode}", "y", str(OUT))
    agent = _agent(tmp_path, release, _fallback(port, failures=1000), initial=True)
    try:
        for fault in ["slow", "drip", "500", "malformed", "wrong-shape", "wrong-rows", "reset"]:
            mode.write_text(fault)
            source, version, y, took = _ask(agent, LOW_X)
            assert (source, version) == ("local-degraded", "1.0.0"), fault
            assert took <= 0.3 + MARGIN_S, f"{fault}: answer took {took:.3f}s"
            np.testing.assert_allclose(y, expected(100.0, LOW_X), rtol=1e-4, atol=1e-3)
        mode.write_text("ok")  # a well-formed answer is taken
        assert _ask(agent, LOW_X)[0] == "cloud"
    finally:
        agent.kill()
        stop(proc)
    # refused: nothing listens on the cloud port any more
    (tmp_path / "refused").mkdir()
    agent = _agent(tmp_path / "refused", release, _fallback(port), initial=True)
    try:
        source, _, _, took = _ask(agent, LOW_X)
        assert source == "local-degraded" and took <= 0.3 + MARGIN_S
    finally:
        agent.kill()
