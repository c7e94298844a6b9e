"""Drift in the agent: the DriftTap inside a real AgentService answering with a real
onnxruntime model (in process), and end to end through a real ``edgeship agent run``
with a real mosquitto, a release signed with ``--profile`` and requests over the v2 API.

Streams: "unshifted" = the fixture's eval images (the profile's own reference data)
resampled in a random order; "shifted" = the same images made brighter (+0.25 on every
pixel), which moves the per-channel mean and the model's output distribution.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeship.agent._api import AgentService, Metrics, Serving, describe
from edgeship.agent._drift import DriftTap
from edgeship.sdk._model import Model
from edgeship.sdk._profile import DriftConfig, profile_from_file
from prometheus_client import generate_latest

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
    config = DriftConfig(window=400, slices=4, min_samples=250, batch=16)
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
    tap = DriftTap(profile, DriftConfig(window=1000, min_samples=10, batch=8), log=Events())
    images = stream(40, seed=4)
    y = model.predict_all({"input": images[0]})
    for i, x in enumerate(images):
        source = ("local", "local-degraded", "cloud", "cloud")[i % 4]
        tap.observe({"input": x}, y, source=source, version="1.0.0", seconds=0.001)
    samples = {f["name"]: f["samples"] for f in tap.telemetry()["features"]}
    assert samples == {"input": 40, "probs:class": 20, "probs:top1": 20}


def test_sampling_counts_a_fraction_and_the_buffer_stays_bounded(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    tap = DriftTap(profile, DriftConfig(window=10_000, min_samples=10, sample=0.25, batch=16),
                   log=Events())
    x = stream(1, seed=5)[0]
    y = model.predict_all({"input": x})
    for _ in range(4000):
        tap.observe({"input": x}, y, source="local", version="1", seconds=0.0)
        assert len(tap._pending) < 16
    assert tap.telemetry()["window"] == 1000


def test_concurrent_requests_are_all_accounted_for(cnn: tuple[Model, Any]) -> None:
    model, profile = cnn
    service = _service(model)
    tap = DriftTap(profile, DriftConfig(window=100_000, min_samples=10, batch=8), log=Events())
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
    tap = DriftTap(profile, DriftConfig(window=1000, min_samples=10, batch=4), log=events)
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
    first = DriftTap(profile, DriftConfig(window=100, min_samples=10, batch=4),
                     metrics.registry, log=Events())
    y = model.predict_all({"input": stream(1)[0]})
    for x in stream(50, shift=SHIFT, seed=8):
        first.observe({"input": x}, y, source="local", version="1", seconds=0.0)
    assert first.status()["alert"] is True
    assert "edgeship_drift_alert 1.0" in generate_latest(metrics.registry).decode()
    DriftTap(profile, DriftConfig(), metrics.registry, log=Events())  # the next model's tap
    text = generate_latest(metrics.registry).decode()
    assert "edgeship_drift_alert 0.0" in text and "edgeship_drift_psi{" not in text
