"""Fallback logic: circuit breaker transitions on a fake clock, the confidence measure,
policy parsing, and FallbackModel routing with a real local model and a refused port."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, free_port
from edgeship.sdk import Answer, CircuitBreaker, CloudClient, FallbackModel, FallbackPolicy, Model
from edgeship.sdk.serving._fallback import confidence

from edgeship import ConfigError, InferenceError, ModelLoadError, TransportError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_k_failures_in_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, window_s=10, cooldown_s=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
        clock.now += 6  # failures spread beyond the window never add up to 3
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "open" and breaker.opened_total == 1
    assert not breaker.allow() and breaker.rejected_total == 1


def test_breaker_half_open_probe_closes_or_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, window_s=10, cooldown_s=5, clock=clock)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.record_failure()
    assert breaker.state == "open" and breaker.opened_total == 2
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    assert breaker.snapshot()["state_code"] == 0


def test_breaker_stale_probe_does_not_wedge() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, window_s=10, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()  # probe goes out and its result is lost
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(failures=0)


def test_confidence_measures() -> None:
    assert confidence({"p": np.array([[0.1, 0.9]])}) == pytest.approx(0.9)
    # logits go through softmax
    logits = np.array([[2.0, 0.0, 0.0]])
    assert confidence({"y": logits}) == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    # binary: probability as is, logit through a sigmoid; max(p, 1 - p)
    assert confidence({"p": np.array([[0.2]])}) == pytest.approx(0.8)
    assert (
        confidence({"z": np.array([[0.0]]), "w": np.ones(1)}, output="z", activation="sigmoid")
        == 0.5
    )
    assert confidence({"z": np.array([[-3.0]])}) == pytest.approx(1 - 1 / (1 + np.exp(3.0)))
    # a batch is as sure as its least sure row; NaN is never sure
    assert confidence({"p": np.array([[0.1, 0.9], [0.45, 0.55]])}) == pytest.approx(0.55)
    assert confidence({"p": np.array([[np.nan, 1.0]])}) == 0.0


def test_policy_from_names_and_dict() -> None:
    policy = FallbackPolicy.from_names(["no_model", "low_confidence"], confidence=0.7)
    assert (policy.no_model, policy.on_error, policy.low_confidence) == (True, False, True)
    assert FallbackPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="unknown"):
        FallbackPolicy.from_names(["sometimes"])
    with pytest.raises(ConfigError, match="within"):
        FallbackPolicy(threshold=1.5)


def test_no_cloud_means_local_only() -> None:
    model = Model.load(FIXTURES / "cnn.onnx")
    x = np.load(FIXTURES / "cnn_eval.npz")["input"][:1].astype(np.float32)
    fm = FallbackModel(
        model, None, FallbackPolicy(low_confidence=True, threshold=1.0), version="1.0.0"
    )
    answer = fm.answer({"input": x})
    assert isinstance(answer, Answer)
    assert (answer.source, answer.version) == ("local", "1.0.0")
    np.testing.assert_allclose(answer.outputs["probs"], model.predict(x))
    np.testing.assert_allclose(fm.predict(x), model.predict(x))
    with pytest.raises(InferenceError):
        fm.answer({"input": np.zeros((1, 2), np.float32)})
    fm.set_local(None)
    with pytest.raises(ModelLoadError, match="no local model"):
        fm.answer({"input": x})
    assert fm.stats()["answers"]["local"] == 2


def test_routing_and_breaker_with_a_failing_cloud() -> None:
    model = Model.load(FIXTURES / "cnn.onnx")
    x = np.load(FIXTURES / "cnn_eval.npz")["input"][:1].astype(np.float32)
    clock = Clock()
    cloud = CloudClient(f"http://127.0.0.1:{free_port()}", "cnn", deadline_ms=500)  # refused
    breaker = CircuitBreaker(failures=2, window_s=10, cooldown_s=30, clock=clock)
    policy = FallbackPolicy(low_confidence=True, threshold=1.0)  # always escalate
    fm = FallbackModel(model, cloud, policy, breaker, version="v1", clock=clock)
    sources = [fm.answer({"input": x}).source for _ in range(5)]
    assert sources == ["local-degraded"] * 5
    assert breaker.state == "open"
    stats = fm.stats()
    assert stats["cloud_requests"] == stats["cloud_failures"] == 2
    assert stats["breaker"]["rejected_total"] == 3
    assert "refused" in stats["last_cloud_error"].lower()
    assert stats["escalations"]["low_confidence"] == 5
    # no model and a dead cloud: a clear TransportError, not a hang
    fm.set_local(None)
    with pytest.raises(TransportError, match="no local model"):
        fm.answer({"input": x})
    # a local model swapped in per call
    assert fm.answer({"input": x}, local=model, version="v2").version == "v2"
