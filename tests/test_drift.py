"""Reference profiles and the drift monitor (pure: no agent, no broker).

PSI and KS are checked against hand-computed values and against plain-Python references
written here; the monitor against shifted and unshifted streams over several seeds.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from edgeship.sdk.monitor._drift_monitor import DriftConfig, DriftMonitor, ks, psi
from edgeship.sdk.monitor._profile import (
    MAX_PROFILE_BYTES,
    FeatureProfile,
    Profile,
    build_profile,
    profile_from_file,
)

from edgeship import ConfigError, InputError, MalformedError

FIXTURES = Path(__file__).parent / "fixtures"


def ref_psi(reference: list[float], current: list[float], eps: float = 1e-4) -> float:
    total = 0.0
    for q, p in zip(reference, current, strict=True):
        p, q = max(p, eps), max(q, eps)
        total += (p - q) * math.log(p / q)
    return total


def ref_ks(reference: list[float], current: list[float]) -> float:
    best, a, b = 0.0, 0.0, 0.0
    for q, p in list(zip(reference, current, strict=True))[:-1]:
        a, b = a + q, b + p
        best = max(best, abs(a - b))
    return best


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Synthetic:
    """Five gaussian features and a 3-class linear 'model' on them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = np.random.default_rng(99).normal(size=(5, 3))

    def draw(self, n: int, shift: float = 0.0, feature: int = 2) -> tuple[dict, dict]:
        x = self.rng.normal(size=(n, 5))
        x[:, feature] += shift
        return {"x": x.astype(np.float32)}, {"p": softmax(x @ self.w).astype(np.float32)}


# ------------------------------------------------------------------ PSI / KS math
def test_psi_and_ks_against_hand_computed_values() -> None:
    # (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.878890, abs=1e-6)
    assert ks([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4)
    assert psi([0.25] * 4, [0.25] * 4) == 0.0 and ks([0.25] * 4, [0.25] * 4) == 0.0
    # an empty reference bin is floored at 1e-4, not ln(0)
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.5 * math.log(2) + 0.4999 * math.log(
        0.5 / 1e-4))
    # KS reads the CDFs at the edges: [.2,.3,.5] vs [.5,.3,.2] -> max(|.2-.5|, |.5-.8|) = .3
    assert ks([0.2, 0.3, 0.5], [0.5, 0.3, 0.2]) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", range(5))
def test_monitor_psi_ks_match_plain_python_reference(seed: int) -> None:
    data = Synthetic(seed)
    profile = build_profile(*data.draw(800))
    monitor = DriftMonitor(profile, DriftConfig(window=10_000, min_samples=10))
    stream = [data.draw(int(n), shift=0.3) for n in data.rng.integers(1, 40, size=20)]
    for inputs, outputs in stream:
        monitor.observe(inputs, outputs)
    report = monitor.report()
    counts, start = monitor.counts(), 0
    for f, got in zip(profile.features, report.features, strict=True):
        c = [int(v) for v in counts[start:start + f.bins]]
        start += f.bins
        share = [v / sum(c) for v in c]
        assert got.samples == sum(c)
        assert got.psi == pytest.approx(ref_psi(list(f.proportions), share), abs=1e-4)
        assert got.ks == pytest.approx(ref_ks(list(f.proportions), share), abs=1e-4)
    assert report.window == sum(len(i["x"]) for i, _ in stream)


def test_counts_follow_bin_edges() -> None:
    """Bin i holds edges[i-1] < x <= edges[i]; every value lands in exactly one bin."""
    profile = build_profile({"x": np.arange(1, 101, dtype=np.float64)}, bins=4)
    (f,) = profile.features
    assert f.edges == (25.0, 50.0, 75.0) and f.proportions == (0.25, 0.25, 0.25, 0.25)
    monitor = DriftMonitor(profile, DriftConfig(window=100, slices=2, min_samples=1))
    monitor.observe({"x": np.array([-5.0, 25.0, 25.5, 50.0, 75.0, 75.01, 1e9])})
    assert monitor.counts().tolist() == [2, 2, 1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_binned_ks_never_exceeds_the_exact_two_sample_ks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=500), rng.normal(0.2, 1.3, size=300)
    profile = build_profile({"x": a}, bins=16)
    monitor = DriftMonitor(profile, DriftConfig(window=1000, min_samples=1))
    monitor.observe({"x": b})
    grid = np.sort(np.concatenate([a, b]))
    exact = np.max(np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                          - np.searchsorted(np.sort(b), grid, side="right") / len(b)))
    binned = monitor.report().features[0].ks
    assert binned is not None and 0.0 < binned <= exact + 1e-3


# ------------------------------------------------------------------ shifted vs unshifted
@pytest.mark.parametrize("seed", range(6))
def test_unshifted_stream_raises_no_alert(seed: int) -> None:
    data = Synthetic(seed)
    monitor = DriftMonitor(build_profile(*data.draw(2000)), DriftConfig())
    for _ in range(60):
        monitor.observe(*data.draw(25))
    report = monitor.report()
    assert report.window >= report.min_samples
    assert not report.alert, report.status()
    assert report.max_psi < 0.1


@pytest.mark.parametrize("seed", range(6))
def test_shifted_stream_raises_the_alert_on_the_shifted_feature(seed: int) -> None:
    data = Synthetic(seed)
    monitor = DriftMonitor(build_profile(*data.draw(2000)), DriftConfig())
    for _ in range(60):
        monitor.observe(*data.draw(25, shift=0.8, feature=3))
    report = monitor.report()
    assert report.alert and report.worst == "x[3]", report.status()
    by_name = {f.name: f for f in report.features}
    assert by_name["x[3]"].psi > 0.3 and by_name["x[3]"].ks > 0.25
    assert max(by_name[f"x[{i}]"].psi for i in (0, 1, 2, 4)) < 0.1


def test_outputs_alone_shift_the_output_features() -> None:
    data = Synthetic(0)
    monitor = DriftMonitor(build_profile(*data.draw(2000)), DriftConfig())
    for _ in range(40):
        inputs, _ = data.draw(25)
        monitor.observe(inputs, {"p": np.tile([[0.05, 0.05, 0.9]], (25, 1)).astype(np.float32)})
    by_name = {f.name: f for f in monitor.report().features}
    assert by_name["p:class"].psi > 1.0 and by_name["x[0]"].psi < 0.1


def test_no_alert_before_min_samples_and_the_window_forgets() -> None:
    data = Synthetic(1)
    config = DriftConfig(window=400, slices=4, min_samples=300)
    monitor = DriftMonitor(build_profile(*data.draw(2000)), config)
    monitor.observe(*data.draw(200, shift=2.0))
    early = monitor.report()
    assert early.max_psi > 1.0 and not early.alert  # 200 < min_samples
    monitor.observe(*data.draw(200, shift=2.0))
    assert monitor.report().alert
    for _ in range(25):  # 500 unshifted samples push the shifted ones out of the window
        monitor.observe(*data.draw(20))
    late = monitor.report()
    assert 300 <= late.window <= 400 and not late.alert, late.status()


def test_memory_is_bounded_by_the_profile_not_by_traffic() -> None:
    data = Synthetic(2)
    monitor = DriftMonitor(build_profile(*data.draw(500)), DriftConfig(window=1000))
    batch = data.draw(16)
    monitor.observe(*batch)
    shape, nbytes = monitor._counts.shape, monitor._counts.nbytes
    tracemalloc.start()
    for _ in range(200):
        monitor.observe(*batch)
    first, _ = tracemalloc.get_traced_memory()
    for _ in range(2000):
        monitor.observe(*batch)
    second, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert monitor._counts.shape == shape and monitor._counts.nbytes == nbytes
    assert second - first < 16 * 1024  # 32k more samples, no growth
    assert monitor.window <= 1000 and int(monitor.counts().sum()) <= 1000 * 7


# ------------------------------------------------------------------ features
def test_nchw_images_reduce_to_per_channel_means() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((300, 3, 6, 5)).astype(np.float32)
    x[:, 1] += 1.0
    profile = build_profile({"img": x})
    assert [f.name for f in profile.features] == ["img[0]", "img[1]", "img[2]"]
    assert profile.tensors[0].channel_axis == 0
    means = x.mean(axis=(2, 3))
    f1 = profile.features[1]
    assert f1.edges[0] > 1.0 and np.mean(means[:, 1] <= f1.edges[0]) == pytest.approx(
        f1.proportions[0], abs=1 / 300)  # a mean summed in float32 may sit across the edge


def test_nhwc_images_use_the_last_axis_and_wide_inputs_pool_to_64() -> None:
    x = np.random.default_rng(1).random((100, 16, 16, 3))
    assert build_profile({"img": x}).tensors[0].channel_axis == 2
    wide = np.random.default_rng(2).random((200, 300))
    profile = build_profile({"v": wide})
    layout = profile.tensors[0]
    assert layout.width == 300 and layout.groups == 64 and len(profile.features) == 64
    # pooled feature 0 is the mean of the first contiguous group of columns (300*1//64 = 4)
    monitor = DriftMonitor(profile, DriftConfig(window=1000, slices=2, min_samples=1))
    row = np.zeros((1, 300))
    row[0, :4] = 1e6  # only group 0 gets a huge mean -> its top bin
    monitor.observe({"v": row})
    first = profile.features[0]
    assert monitor.counts()[first.bins - 1] == 1
    two = build_profile({"a": wide, "b": wide})  # two inputs share 64 features
    assert sum(t.groups for t in two.tensors) == 64


def test_constant_features_and_ties_give_fewer_bins_not_empty_ones() -> None:
    x = np.zeros((100, 3))
    x[:, 1] = 7.0
    x[:, 2] = np.repeat([0.0, 1.0, 1.0, 2.0], 25)
    profile = build_profile({"x": x})
    const, ties = profile.features[1], profile.features[2]
    assert const.edges == (7.0,) and const.proportions == (1.0, 0.0)
    assert ties.edges == (0.0, 1.0, 2.0) and ties.proportions == (0.25, 0.5, 0.25, 0.0)
    monitor = DriftMonitor(profile, DriftConfig(window=200, slices=2, min_samples=50))
    monitor.observe({"x": x})
    assert monitor.report().max_psi == 0.0 and not monitor.report().alert
    monitor.observe({"x": x + 0.5})  # a constant that moves is drift
    assert monitor.report().alert


def test_class_scores_logits_and_many_classes() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 4)) * 3
    profile = build_profile({"x": rng.random((500, 2))}, {"y": logits})
    layout = profile.tensors[1]
    assert layout.kind == "class_scores" and layout.probabilities is False
    top1 = softmax(logits).max(axis=1)
    conf = profile.features[-1]
    assert conf.name == "y:top1" and np.mean(top1 <= conf.edges[0]) == pytest.approx(
        conf.proportions[0])
    cls = profile.features[-2]
    assert cls.kind == "categorical" and cls.proportions == pytest.approx(
        np.bincount(logits.argmax(1), minlength=4) / 500, abs=1e-5)
    many = build_profile({"x": rng.random((300, 2))}, {"y": softmax(rng.normal(size=(300, 1000)))})
    assert many.tensors[1].groups == 64 and many.features[-2].bins == 64


# ------------------------------------------------------------------ serialization
def test_profile_round_trips_and_keeps_unknown_keys() -> None:
    profile = build_profile(*Synthetic(0).draw(300))
    assert Profile.from_json(profile.to_json()) == profile
    assert Profile.from_dict(json.loads(profile.to_json())) == profile
    d = profile.to_dict()
    d["future"] = {"a": 1}
    again = Profile.from_dict(d)
    assert again.extra == {"future": {"a": 1}} and again.to_dict()["future"] == {"a": 1}
    assert len(profile.to_json()) < MAX_PROFILE_BYTES


def _mutations() -> list[tuple[str, object]]:
    def edit(path: str, value: object) -> object:
        return (path, value)

    return [
        edit("features.0.edges", [2.0, 1.0]),
        edit("features.0.edges", [0.1, float("nan")]),
        edit("features.0.proportions", [0.5] * 10),
        edit("features.0.proportions", [-0.1, 1.1] + [0.0] * 8),
        edit("features.0.kind", "text"),
        edit("bins", 65),
        edit("bins", True),
        edit("samples", 0),
        edit("version", 2),
        edit("tensors.0.groups", 65),
        edit("tensors.0.role", "hidden"),
        edit("tensors.0.shape", [0]),
        edit("tensors.0.width", 4),
        edit("tensors", []),
        edit("features", "x"),
        edit("features.0.name", "y" * 200),
    ]


@pytest.mark.parametrize(("path", "value"), _mutations())
def test_profile_validation_rejects_malformed_fields(path: str, value: object) -> None:
    d = json.loads(build_profile(*Synthetic(0).draw(300)).to_json())
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    with pytest.raises(MalformedError, match="profile"):
        Profile.from_dict(d)


def test_profile_size_and_shape_limits() -> None:
    d = json.loads(build_profile(*Synthetic(0).draw(300)).to_json())
    d["notes"] = "x" * MAX_PROFILE_BYTES
    with pytest.raises(MalformedError, match="over the limit"):
        Profile.from_dict(d)
    with pytest.raises(MalformedError, match="over the limit"):
        Profile.from_json(json.dumps(d))
    d = json.loads(build_profile(*Synthetic(0).draw(300)).to_json())
    d["features"].pop()
    with pytest.raises(MalformedError, match="one per tensor feature"):
        Profile.from_dict(d)
    with pytest.raises(MalformedError, match="not JSON"):
        Profile.from_json("{")
    with pytest.raises(MalformedError):
        FeatureProfile(name="f", kind="numeric", edges=(1.0,), proportions=(1.0,))
    with pytest.raises(InputError, match="bins"):
        build_profile({"x": np.zeros((10, 2))}, bins=65)
    with pytest.raises(InputError, match="same number of samples"):
        build_profile({"x": np.zeros((10, 2))}, {"y": np.zeros((9, 1))})
    with pytest.raises(InputError, match="finite"):
        build_profile({"x": np.array([[1.0], [np.nan]])})
    with pytest.raises(InputError, match="fewer bins"):  # 64 features x 64 bins of noise
        build_profile({"x": np.random.default_rng(0).random((1300, 64))}, bins=64)


def test_profile_from_file_runs_the_model_on_an_npz(tmp_path: Path) -> None:
    profile = profile_from_file(FIXTURES / "cnn_eval.npz", FIXTURES / "cnn.onnx")
    assert profile.samples == 400
    assert [f.name for f in profile.features] == ["input", "probs:class", "probs:top1"]
    assert profile.tensors[1].probabilities is True
    inputs_only = profile_from_file(FIXTURES / "mlp_eval.npz")
    assert len(inputs_only.features) == 30 and inputs_only.samples == 228
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    assert profile_from_file(path) == profile
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable"):
        profile_from_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "wrong.npz", other=np.zeros((4, 1, 8, 8), np.float32),
             more=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="do not match the model"):
        profile_from_file(tmp_path / "wrong.npz", FIXTURES / "cnn.onnx")
    # one array for a single-input model is that input, whatever its key (as CALIB / EVAL)
    with np.load(FIXTURES / "cnn_eval.npz") as data:
        np.savez(tmp_path / "anykey.npz", pixels=data["input"])
    assert profile_from_file(tmp_path / "anykey.npz", FIXTURES / "cnn.onnx") == profile
    (tmp_path / "big.json").write_text(" " * (MAX_PROFILE_BYTES + 1))
    with pytest.raises(MalformedError, match="limit"):
        profile_from_file(tmp_path / "big.json")


def test_monitor_rejects_a_sample_shape_the_profile_does_not_have() -> None:
    monitor = DriftMonitor(build_profile(*Synthetic(0).draw(100)))
    with pytest.raises(InputError, match="sample shape"):
        monitor.observe({"x": np.zeros((2, 4), np.float32)})


def test_drift_config_from_an_agent_toml_table() -> None:
    assert DriftConfig.from_dict({}) == DriftConfig()
    c = DriftConfig.from_dict({"window": 500, "psi_alert": 0.3, "min_samples": 100})
    assert (c.window, c.psi_alert, c.min_samples, c.ks_alert) == (500, 0.3, 100, 0.25)
    assert DriftConfig.from_dict(c.to_dict()) == c
    assert DriftConfig.from_dict({"windw": 5}) == DriftConfig()  # skipped; the agent logs it
    with pytest.raises(ConfigError, match=r"drift\.window"):
        DriftConfig.from_dict({"window": "big"})
    with pytest.raises(ConfigError, match=r"drift\.min_samples"):
        DriftConfig.from_dict({"window": 100, "min_samples": 500})
    with pytest.raises(ConfigError, match=r"drift\.sample"):
        DriftConfig(sample=0.0)


def test_convert_eval_writes_a_reproducible_profile(tmp_path: Path) -> None:
    from edgeship.converter import ConvertOptions, convert

    def run(out: Path) -> dict:
        report = convert(FIXTURES / "cnn.onnx", FIXTURES / "cnn_calib.npz", out,
                         ConvertOptions(formats=("onnx",)), eval_path=FIXTURES / "cnn_eval.npz")
        return report.to_dict()

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    data = (tmp_path / "a" / "profile.json").read_bytes()
    assert data == (tmp_path / "b" / "profile.json").read_bytes()
    profile = profile_from_file(tmp_path / "a" / "profile.json")
    assert profile.samples == 400 and first["profile"] == second["profile"]
    assert first["profile"]["features"] == ["input", "probs:class", "probs:top1"]
    # the outputs profiled are the INT8 model's: it agrees with the fp32 one on >= 99%
    ref = profile_from_file(FIXTURES / "cnn_eval.npz", FIXTURES / "cnn.onnx")
    assert profile.features[0] == ref.features[0]
    assert psi(ref.features[1].proportions, profile.features[1].proportions) < 0.01
    monitor = DriftMonitor(profile, DriftConfig(window=1000, min_samples=100))
    with np.load(FIXTURES / "cnn_eval.npz") as ev:
        x = ev["input"]
    from edgeship.sdk.runtime._model import Model

    monitor.observe({"input": x}, Model.load(tmp_path / "a" / "model.int8.onnx").predict_all(
        {"input": x}))
    assert monitor.report().max_psi < 0.01  # the same data through the same model: no drift
    no_eval = convert(FIXTURES / "cnn.onnx", FIXTURES / "cnn_calib.npz", tmp_path / "c",
                      ConvertOptions(formats=("onnx",)))
    assert "profile" not in no_eval.to_dict() and not (tmp_path / "c" / "profile.json").exists()


@pytest.mark.parametrize("shape", [(3, 40, 40), (40, 40, 3), (1, 8, 8), (30,)])
def test_a_list_of_batches_counts_like_one_batch(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    profile = build_profile({"x": rng.random((300, *shape)).astype(np.float32)})
    parts = [rng.random((int(n), *shape)).astype(np.float32) for n in (1, 3, 1, 7, 2)]
    joined = DriftMonitor(profile, DriftConfig(window=1000, min_samples=1))
    joined.observe({"x": np.concatenate(parts)})
    listed = DriftMonitor(profile, DriftConfig(window=1000, min_samples=1))
    listed.observe({"x": parts})
    assert listed.counts().tolist() == joined.counts().tolist() and listed.window == 14


def test_a_time_major_output_is_left_out_of_the_profile_not_fatal(tmp_path: Path) -> None:
    """A CTC recognizer's output is [T, 1, C] a sample: stacked it has T x N rows that
    belong to no one sample (ddddocr's recognizer made `convert --eval` fail)."""
    import onnx
    from edgeship.converter import ConvertOptions, convert
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Transpose", ["h"], ["logits"], perm=[1, 0, 2])],
        "time_major", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, 1, 5])], [weight])
    model = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 1, 8, 16)).astype(np.float32)[:, 0])
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(40, 8, 16)).astype(np.float32))
    report = convert(model, tmp_path / "calib.npz", tmp_path / "out",
                     ConvertOptions(formats=("onnx",)), eval_path=tmp_path / "eval.npz")
    features = report.to_dict()["profile"]["features"]
    assert features and all(f.startswith("x") for f in features)  # the input's only
    assert profile_from_file(tmp_path / "out" / "profile.json").samples == 40
    again = profile_from_file(tmp_path / "eval.npz", model)  # `edgeship drift profile` too
    assert [f.name for f in again.features] == features and again.samples == 40
