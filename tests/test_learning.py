"""Federated learning's pure parts (issue 18): the head, local training, the plan, the
device's example store. Flower itself runs in test_agent_learning_federated.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.sdk.learning._features import model_features
from edgeship.sdk.learning._head import HeadError, HeadSpec, find_head, read_head, write_head
from edgeship.sdk.learning._plan import LearningPlan, PlanError
from edgeship.sdk.learning._store import Example, ExampleStore, StoreError, StoreLimits
from edgeship.sdk.learning._train import TrainConfig, head_accuracy, train_head
from onnx import helper

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from digits import digits_split  # noqa: E402


def dim_camera(x: np.ndarray) -> np.ndarray:
    """Low-contrast digits: what a device sees that the model was not trained on."""
    return np.clip(x * 0.5 + 0.3, 0, 1).astype(np.float32)


def test_the_head_of_each_fixture_is_its_last_gemm() -> None:
    cnn = find_head(onnx.load(FIXTURES / "cnn.onnx"))
    assert (cnn.features, cnn.n_features, cnn.n_classes, cnn.activation) == \
        ("flatten_42", 128, 10, "softmax")
    mlp = find_head(onnx.load(FIXTURES / "mlp.onnx"))
    assert (mlp.n_classes, mlp.activation) == (1, "sigmoid")


def test_a_model_without_a_gemm_head_is_refused_in_words() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])])
    with pytest.raises(HeadError, match="no head to train"):
        find_head(helper.make_model(graph))


def test_writing_a_head_changes_only_the_head() -> None:
    model = onnx.load(FIXTURES / "cnn.onnx")
    spec = find_head(model)
    weight, bias = read_head(model, spec)
    new = write_head(model, spec, weight * 2, bias + 1)
    w2, b2 = read_head(new, spec)
    np.testing.assert_array_equal(w2, weight * 2)
    np.testing.assert_array_equal(b2, bias + 1)
    untouched = [(a.name, a.raw_data) for a in model.graph.initializer
                 if a.name not in (spec.weight, spec.bias)]
    assert untouched == [(a.name, a.raw_data) for a in new.graph.initializer
                         if a.name not in (spec.weight, spec.bias)]
    with pytest.raises(HeadError, match="do not fit"):
        write_head(model, spec, weight[:3], bias)


@pytest.fixture(scope="module")
def shifted_features() -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = digits_split()
    spec = find_head(onnx.load(FIXTURES / "cnn.onnx"))
    train = model_features(FIXTURES / "cnn.onnx", spec, {"input": dim_camera(xtr[:300])})
    test = model_features(FIXTURES / "cnn.onnx", spec, {"input": dim_camera(xte)})
    return train, ytr[:300], test, yte


def test_local_training_recovers_a_head_on_data_the_model_never_saw(
        shifted_features: tuple[np.ndarray, ...]) -> None:
    train, ytr, test, yte = shifted_features
    weight, bias = read_head(onnx.load(FIXTURES / "cnn.onnx"),
                             find_head(onnx.load(FIXTURES / "cnn.onnx")))
    before = head_accuracy(weight, bias, test, yte)
    update = train_head(weight, bias, train, ytr, TrainConfig(epochs=10))
    after = head_accuracy(update.weight, update.bias, test, yte)
    assert before < 30 and after > 85, (before, after)
    assert update.samples == 300


def test_fedprox_keeps_a_skewed_device_nearer_the_global_head(
        shifted_features: tuple[np.ndarray, ...]) -> None:
    train, ytr, _, _ = shifted_features
    skewed = np.isin(ytr, [0, 1])
    weight, bias = read_head(onnx.load(FIXTURES / "cnn.onnx"),
                             find_head(onnx.load(FIXTURES / "cnn.onnx")))
    plain = train_head(weight, bias, train[skewed], ytr[skewed], TrainConfig(epochs=10))
    prox = train_head(weight, bias, train[skewed], ytr[skewed],
                      TrainConfig(epochs=10, proximal_mu=1.0))
    assert np.linalg.norm(prox.weight - weight) < 0.7 * np.linalg.norm(plain.weight - weight)


def test_a_plan_is_checked_and_its_privacy_counted() -> None:
    with pytest.raises(PlanError, match="strategy"):
        LearningPlan(strategy="fedsgd")
    with pytest.raises(PlanError, match="at least 2 devices"):
        LearningPlan(min_devices=1)
    assert LearningPlan().epsilon() is None
    loose, tight = LearningPlan(noise_multiplier=0.5, min_devices=10).epsilon(), LearningPlan(
        noise_multiplier=2.0, clipping="fixed").epsilon()
    assert loose is not None and tight is not None and tight < loose
    # adaptive clipping's norm count takes devices/20 of noise: too few devices for z
    with pytest.raises(PlanError, match="noise multiplier below 1"):
        LearningPlan(noise_multiplier=1.0, min_devices=10)
    with pytest.raises(PlanError, match="clipping 'soft'"):
        LearningPlan(clipping="soft")
    assert LearningPlan.from_json(LearningPlan(rounds=7).to_json()).rounds == 7
    with pytest.raises(PlanError, match="unknown fields"):
        LearningPlan.from_json('{"rounds": 3, "secret": 1}')


def _example(value: float, label: int | None = 1) -> Example:
    return Example(inputs={"input": np.full((1, 1, 8, 8), value, np.float32)}, label=label,
                   source="feedback")


def test_the_store_keeps_the_newest_within_its_count_and_bytes(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path, StoreLimits(max_examples=3, max_bytes=1 << 20))
    for i in range(5):
        store.add(_example(float(i)))
    kept = [float(e.inputs["input"].flat[0]) for e in store.examples()]
    assert kept == [2.0, 3.0, 4.0]
    one = len(next(tmp_path.glob("*.npz")).read_bytes())
    small = ExampleStore(tmp_path / "small", StoreLimits(max_examples=100, max_bytes=2 * one))
    for i in range(4):
        small.add(_example(float(i)))
    assert small.size()[0] == 2 and small.size()[1] <= 2 * one
    assert [e.label for e in store.labelled()] == [1, 1, 1]
    store.add(_example(9.0, label=None))
    assert len(store.labelled()) == 2
    assert store.wipe() == 3 and store.examples() == []


def test_stored_examples_are_sealed_under_the_device_key(tmp_path: Path) -> None:
    key = bytes(range(32))
    store = ExampleStore(tmp_path, key=key)
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    store.add(Example(inputs={"input": pixels}, label=7, source="cloud"))
    raw = next(tmp_path.glob("*.npz")).read_bytes()
    assert pixels.tobytes()[:32] not in raw
    back = store.examples()
    assert back[0].label == 7 and back[0].source == "cloud"
    np.testing.assert_array_equal(back[0].inputs["input"], pixels)
    assert ExampleStore(tmp_path, key=bytes(32)).examples() == []  # another key: dropped


def test_a_damaged_example_is_dropped_and_a_bad_source_refused(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path)
    store.add(_example(1.0))
    path = store.add(_example(2.0))
    path.write_bytes(path.read_bytes()[:40])
    assert len(store.examples()) == 1 and not path.exists()
    with pytest.raises(StoreError, match="unknown example source"):
        store.add(Example(inputs={}, label=None, source="camera"))


def test_features_come_from_the_model_without_the_onnx_package(tmp_path: Path) -> None:
    """The extra output appended to the model's bytes (no onnx parse) gives the same
    features as the head's input computed by hand: the float model up to the head, and
    the head applied to them gives the model's own answers."""
    import onnxruntime as ort

    spec = find_head(onnx.load(FIXTURES / "cnn.onnx"))
    weight, bias = read_head(onnx.load(FIXTURES / "cnn.onnx"), spec)
    _, _, xte, _ = digits_split()
    features = model_features(FIXTURES / "cnn.onnx", spec, {"input": xte[:20]})
    session = ort.InferenceSession(str(FIXTURES / "cnn.onnx"), providers=["CPUExecutionProvider"])
    probs = np.concatenate([session.run(None, {"input": xte[i:i + 1]})[0] for i in range(20)])
    logits = features @ weight.T + bias
    assert np.array_equal(logits.argmax(1), probs.argmax(1))
    # a model that has no such tensor: one error that says so
    other = tmp_path / "other.onnx"
    other.write_bytes((FIXTURES / "cnn.onnx").read_bytes())
    wrong = HeadSpec.from_json(spec.to_json().replace(spec.features, "not_here"))
    with pytest.raises(HeadError, match="not the one the learning run was planned for"):
        model_features(other, wrong, {"input": xte[:1]})


def test_a_training_step_keeps_to_its_cpu_budget() -> None:
    """Real CPU work paced by the budget: a quarter of a core on average, the excess
    slept away (the machine may be slower, never faster than the budget)."""
    import time

    from edgeship.sdk.learning._budget import CpuBudget

    budget = CpuBudget(0.25)
    wall0, cpu0 = time.monotonic(), time.process_time()
    x = np.random.default_rng(0).random((300, 300))
    while time.process_time() - cpu0 < 0.6:
        # element-wise work runs on one thread: a BLAS product's threads would spend
        # CPU time faster than the wall clock between two paces
        x = np.tanh(x + 0.001)
        budget.pace()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    assert cpu / wall < 0.25 * 1.25 + 0.25 / wall, (cpu, wall)  # + the 1 s burst
    # the accounting, on a clock of its own (a loaded machine may never reach a budget):
    # 0.1 s of CPU per 0.1 s of wall at half a core -> it sleeps the excess, step by step
    now = {"wall": 0.0, "cpu": 0.0}
    paced = CpuBudget(0.5, clock=lambda: now["wall"], cpu=lambda: now["cpu"],
                      sleep=lambda s: now.__setitem__("wall", now["wall"] + s))
    for _ in range(50):
        now["wall"] += 0.1
        now["cpu"] += 0.1
        paced.pace()
    assert abs(now["cpu"] / now["wall"] - 0.5) < 0.05 and paced.slept > 4.0, (now, paced.slept)
    with pytest.raises(ValueError, match="fraction of a core"):
        CpuBudget(0)


def test_adaptive_clipping_grows_the_norm_when_devices_are_clipped_and_noises_with_its_own(
        ) -> None:
    """Andrew et al.'s rule on Flower's bit ("clipped"): most devices clipped -> a larger
    norm next round, none clipped -> a smaller one; the round itself keeps the norm its
    devices clipped to (its noise must match their sensitivity)."""
    from types import SimpleNamespace

    from edgeship.sdk.learning._apps import AdaptiveClipping
    from flwr.server.strategy import FedAvg
    from flwr.supercore.differential_privacy import KEY_NORM_BIT

    for clipped, grows in ((True, True), (False, False)):
        dp = AdaptiveClipping(FedAvg(), noise_multiplier=0.5, num_sampled_clients=10,
                              initial_clipping_norm=1.0, clip_norm_lr=0.5)
        dp._update_clip_norm([(None, SimpleNamespace(metrics={KEY_NORM_BIT: clipped}))] * 10)
        assert dp.clipping_norm == 1.0  # this round's noise: the norm the devices used
        assert (dp._next_norm > 1.2) if grows else (dp._next_norm < 0.85), dp._next_norm
