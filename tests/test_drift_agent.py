"""Drift in the agent: the DriftTap inside a real AgentService answering with a real
onnxruntime model (in process), and end to end through a real ``edgeship agent run``
with a real mosquitto, a release signed with ``--profile`` and requests over the v2 API.

Streams: "unshifted" = the fixture's eval images (the profile's own reference data)
resampled in a random order; "shifted" = the same images made brighter (+0.25 on every
pixel), which moves the per-channel mean and the model's output distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.agent._api import AgentService, Metrics, Serving, describe
from edgeship.agent._drift import DriftTap
from edgeship.sdk.monitor._drift_monitor import DriftConfig
from edgeship.sdk.monitor._profile import profile_from_file
from edgeship.sdk.runtime._model import Model
from edgeship.sdk.serving._client import AgentClient
from prometheus_client import generate_latest
from test_agent_support import AgentProc, Watcher, make_keys, write_config

FIXTURES = Path(__file__).parent / "fixtures"
SHIFT = 0.25


def eval_images() -> np.ndarray:
    with np.load(FIXTURES / "cnn_eval.npz") as data:
        return data["input"]


def stream(n: int, *, shift: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    x = eval_images()
    picks = np.random.default_rng(seed).integers(0, len(x), size=n)
    return [x[i : i + 1] + np.float32(shift) for i in picks]


@pytest.fixture(scope="module")
def cnn() -> tuple[Model, Any]:
    model = Model.load(FIXTURES / "cnn.onnx", threads=1)
    return model, profile_from_file(FIXTURES / "cnn_eval.npz", FIXTURES / "cnn.onnx")


def _service(model: Model) -> AgentService:
    service = AgentService("model", Metrics())
    service.swap(Serving(model=model, version="1.0.0", sha256="0" * 64,
                         metadata=describe("model", model, "1.0.0")))
    return service


class Events:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.lines.append((event, level, fields))

    @property
    def names(self) -> list[str]:
        return [e for e, _, _ in self.lines]


# ------------------------------------------------------------------ the tap in process
def test_tap_in_the_service_flags_a_shifted_stream_and_clears(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    service = _service(model)
    events, changes = Events(), []
    config = DriftConfig(max_rate=0, window=400, slices=4, min_samples=250, batch=16)
    tap = DriftTap(profile, config, service.metrics.registry, version="1.0.0", log=events,
                   on_change=changes.append)
    service.taps = (tap,)
    assert tap.status() is None  # nothing seen yet

    for x in stream(400, seed=1):
        _, params = service.infer("model", {"input": x})
        assert params["source"] == "local"
    calm = tap.status()
    assert calm is not None and calm["alert"] is False and calm["window"] >= 250, calm
    assert calm["max_psi"] < 0.1 and events.names == []

    for x in stream(400, shift=SHIFT, seed=2):
        service.infer("model", {"input": x})
    hot = tap.telemetry()
    assert hot["alert"] is True and hot["worst"] == "input" and hot["version"] == "1.0.0"
    by_name = {f["name"]: f for f in hot["features"]}
    assert by_name["input"]["psi"] > 1.0 and by_name["input"]["ks"] > 0.5
    assert events.names == ["drift_alert"] and events.lines[0][1] == "warning"
    assert events.lines[0][2]["worst"] == "input" and changes[-1]["alert"] is True
    metrics = generate_latest(service.metrics.registry).decode()
    assert "edgeship_drift_alert 1.0" in metrics
    assert 'edgeship_drift_psi{feature="input"}' in metrics
    tap.status()
    assert events.names == ["drift_alert"]  # logged once per flip, not per report

    for x in stream(500, seed=3):
        service.infer("model", {"input": x})
    assert tap.status()["alert"] is False
    assert events.names == ["drift_alert", "drift_cleared"] and changes[-1]["alert"] is False
    assert "edgeship_drift_alert 0.0" in generate_latest(service.metrics.registry).decode()
    assert service.metrics.tap_errors._value.get() == 0


def test_cloud_answers_count_inputs_but_not_outputs(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=1000, min_samples=10, batch=8), log=Events())
    images = stream(40, seed=4)
    y = model.predict_all({"input": images[0]})
    for i, x in enumerate(images):
        source = ("local", "local-degraded", "cloud", "cloud")[i % 4]
        tap.observe({"input": x}, y, source=source, version="1.0.0", seconds=0.001)
    samples = {f["name"]: f["samples"] for f in tap.telemetry()["features"]}
    assert samples == {"input": 40, "probs:class": 20, "probs:top1": 20}


def test_sampling_counts_a_fraction_and_the_buffer_stays_bounded(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=10_000, min_samples=10, sample=0.25, batch=16),
                   log=Events())
    x = stream(1, seed=5)[0]
    y = model.predict_all({"input": x})
    for _ in range(4000):
        tap.observe({"input": x}, y, source="local", version="1", seconds=0.0)
        assert len(tap._pending) < 16
    assert tap.telemetry()["window"] == 1000


def test_max_rate_bounds_the_requests_counted_per_second(cnn: tuple[Model, Any]) -> None:
    """A busy device counts a steady ``max_rate`` per second (its accounting's CPU is
    bounded whatever the traffic); a quiet one counts every request."""
    model, profile = cnn
    tap = DriftTap(profile, DriftConfig(window=10_000, min_samples=10, max_rate=50, batch=4),
                   log=Events())
    x = stream(1, seed=9)[0]
    y = model.predict_all({"input": x})
    began = time.monotonic()
    for _ in range(3000):  # a burst, far over 50/s
        tap.observe({"input": x}, y, source="local", version="1", seconds=0.0)
    burst = tap.telemetry()
    allowed = 1 + 50 * (time.monotonic() - began)  # the first token, then 50 per second
    assert 1 <= burst["window"] <= allowed + 1
    assert burst["skipped"] == 3000 - burst["window"]
    for _ in range(5):  # quiet: one request every 50 ms is under the rate, all counted
        time.sleep(0.05)
        tap.observe({"input": x}, y, source="local", version="1", seconds=0.0)
    assert tap.telemetry()["window"] == burst["window"] + 5


def test_concurrent_requests_are_all_accounted_for(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    service = _service(model)
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=100_000, min_samples=10, batch=8), log=Events())
    service.taps = (tap,)
    x = stream(1, seed=6)[0]

    def hammer() -> None:
        for _ in range(500):
            service.infer("model", {"input": x})

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = tap.telemetry()
    # counted or (if the counting fell behind on a busy box) dropped, never lost silently
    assert report["window"] + report["dropped"] == 2000 and report["window"] >= 1000
    assert tap.errors == 0


def test_a_request_the_profile_cannot_count_is_an_error_not_a_failure(
        cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    events = Events()
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=1000, min_samples=10, batch=4), log=events)
    good = stream(6, seed=7)
    y = model.predict_all({"input": good[0]})
    for x in good[:3]:
        tap.observe({"input": x}, y, source="local", version="1", seconds=0.0)
    tap.observe({"input": np.zeros((1, 2, 8, 8), np.float32)}, y, source="local", version="1",
                seconds=0.0)  # fills the batch: counted one by one, the odd one refused
    report = tap.telemetry()
    assert report["window"] == 3 and report["errors"] == 1
    assert events.names == ["drift_error"]


def test_a_new_tap_on_the_same_registry_takes_over_the_gauges(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    metrics = Metrics()
    first = DriftTap(profile, DriftConfig(max_rate=0, window=100, min_samples=10, batch=4),
                     metrics.registry, log=Events())
    y = model.predict_all({"input": stream(1)[0]})
    for x in stream(50, shift=SHIFT, seed=8):
        first.observe({"input": x}, y, source="local", version="1", seconds=0.0)
    assert first.status()["alert"] is True
    assert "edgeship_drift_alert 1.0" in generate_latest(metrics.registry).decode()
    DriftTap(profile, DriftConfig(max_rate=0), metrics.registry, log=Events())  # the next model's tap
    text = generate_latest(metrics.registry).decode()
    assert "edgeship_drift_alert 0.0" in text and "edgeship_drift_psi{" not in text


# ------------------------------------------------------------------ end to end
DRIFT_TOML = "[drift]\nmax_rate = 0\nwindow = 400\nslices = 4\nmin_samples = 250\nbatch = 16\n"


def _cli(*args: str | Path) -> None:
    res = subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def profiled_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """convert --eval (writes profile.json) -> release --profile profile.json, by the CLI."""
    tmp = tmp_path_factory.mktemp("drift-release")
    conv = tmp / "conv"
    _cli("convert", FIXTURES / "cnn.onnx", "--calib", FIXTURES / "cnn_calib.npz",
         "--eval", FIXTURES / "cnn_eval.npz", "--format", "onnx", "-o", conv, "-q")
    keys = make_keys(tmp)
    rel = tmp / "rel"
    _cli("release", conv / "model.int8.onnx", "--version", "1.0.0", "--keys", keys,
         "-o", rel, "--model-name", "model", "--profile", conv / "profile.json")
    signed = json.loads((rel / "manifest.json").read_text())["signed"]
    assert signed["profile"] == json.loads((conv / "profile.json").read_text())
    return {"release": rel, "root": keys / "root.pub"}


class Telemetry:
    """Heartbeats of one device (a real MQTT subscriber), with their arrival time."""

    def __init__(self, broker_url: str, device: str = "dev-1", fleet: str = "t") -> None:
        from edgeship.sdk.transport._mqtt import MqttEdge

        self.beats: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.edge = MqttEdge(broker_url, client_id=f"drift-{os.getpid()}-{id(self)}",
                             subscriptions=[f"edgeship/{fleet}/{device}/telemetry"],
                             on_message=self._on_message)
        self.edge.start()
        assert self.edge.wait_connected(30)

    def _on_message(self, msg: Any) -> None:
        with self._cond:
            self.beats.append((time.monotonic(), json.loads(msg.payload)))
            self._cond.notify_all()

    def next_drift(self, after: float, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 30.0) -> dict[str, Any]:
        """The drift report of the first beat sent after ``after`` that matches."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, beat in self.beats:
                    if at > after and "drift" in beat and pred(beat["drift"]):
                        return beat["drift"]
                left = deadline - time.monotonic()
                if left <= 0:
                    last = [b.get("drift", {}).get("window") for _, b in self.beats[-3:]]
                    raise TimeoutError(f"no matching drift telemetry; last windows {last}")
                self._cond.wait(left)

    def close(self) -> None:
        self.edge.stop()


def _send(url: str, images: list[np.ndarray]) -> float:
    """Ask the agent over its v2 API; the time once every answer is in."""
    client = AgentClient(url)
    for x in images:
        answer = client.infer({"input": x})
        assert answer.source == "local" and answer.version == "1.0.0"
        assert answer.outputs["probs"].shape == (1, 10)
    return time.monotonic()


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_agent_reports_drift_of_a_shifted_stream_over_mqtt(
        tmp_path: Path, mosquitto: Mosquitto, profiled_release: dict[str, Path]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=profiled_release["root"], initial=profiled_release["release"],
                       extra=DRIFT_TOML)
    telemetry, status = Telemetry(mosquitto.url), Watcher(mosquitto.url)
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        agent.wait_log(lambda e: e.get("event") == "drift_watching")

        sent = _send(agent.url, stream(400, seed=11))  # unshifted: the profile's own data
        calm = telemetry.next_drift(sent, lambda d: d["window"] >= 250)
        assert calm["alert"] is False and calm["max_psi"] < 0.1, calm
        assert calm["version"] == "1.0.0"
        assert {f["name"] for f in calm["features"]} == {"input", "probs:class", "probs:top1"}
        assert _metric(agent.url, "edgeship_drift_alert") == 0
        assert not [e for e in agent.log if e.get("event") == "drift_alert"]

        sent = _send(agent.url, stream(400, shift=SHIFT, seed=12))  # brighter images
        hot = telemetry.next_drift(sent, lambda d: d["window"] >= 250)
        assert hot["alert"] is True and hot["worst"] == "input", hot
        by_name = {f["name"]: f for f in hot["features"]}
        assert by_name["input"]["psi"] > 1.0 and by_name["input"]["ks"] > 0.5
        line = agent.wait_log(lambda e: e.get("event") == "drift_alert", timeout=60)
        assert line["level"] == "warning" and line["worst"] == "input"
        flagged = status.wait(lambda s: (s.get("drift") or {}).get("alert") is True, timeout=60)
        assert flagged["drift"]["worst"] == "input"
        assert _metric(agent.url, "edgeship_drift_alert") == 1

        sent = _send(agent.url, stream(500, seed=13))  # the window forgets the shift
        cleared = telemetry.next_drift(sent, lambda d: d["window"] >= 250)
        assert cleared["alert"] is False, cleared
        agent.wait_log(lambda e: e.get("event") == "drift_cleared", timeout=60)
        status.wait(lambda s: (s.get("drift") or {}).get("alert") is False, timeout=60)
    finally:
        agent.kill()
        telemetry.close()
        status.close()
