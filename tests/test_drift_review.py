"""Review of drift monitoring: defects found by trying to break it (each test fails without
its fix). Real onnxruntime models from the fixtures, real CLI subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from edgeship.agent._api import AgentService, Metrics, Serving, describe
from edgeship.agent._ota_types import SlotInfo
from edgeship.agent._taps import Taps
from edgeship.sdk.monitor._drift_monitor import DriftConfig, DriftMonitor
from edgeship.sdk.monitor._profile import Profile, build_profile, profile_from_file
from edgeship.sdk.runtime._model import Model
from prometheus_client import generate_latest
from test_agent_support import make_keys
from test_drift_agent import Events

from edgeship._errors import MalformedError

FIXTURES = Path(__file__).parent / "fixtures"




@pytest.fixture(scope="module")
def cnn_profile() -> Any:
    return profile_from_file(FIXTURES / "cnn_eval.npz", FIXTURES / "cnn.onnx")


def _service(model: Model, version: str) -> AgentService:
    service = AgentService("model", Metrics())
    service.swap(Serving(model=model, version=version, sha256="0" * 64,
                         metadata=describe("model", model, version)))
    return service


def _slot(version: str, profile: Any) -> SlotInfo:
    return SlotInfo(slot="a", version=version, sha256="0" * 64, size=1, format="onnx",
                    profile=None if profile is None else profile.to_dict())


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_release_refuses_a_profile_json_of_another_model(tmp_path: Path,
                                                         cnn_profile: Any) -> None:
    """`release --profile profile.json` checked the JSON against nothing: a cnn profile was
    signed into an mlp release, whose devices then could count no request."""
    keys = make_keys(tmp_path)
    (tmp_path / "profile.json").write_text(cnn_profile.to_json())
    res = _run("release", FIXTURES / "mlp.onnx", "--version", "1.0.0", "--keys", keys,
               "-o", tmp_path / "rel", "--profile", tmp_path / "profile.json")
    assert res.returncode == 2, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "another model" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "rel" / "manifest.json").exists()
    ok = _run("release", FIXTURES / "cnn.onnx", "--version", "1.0.0", "--keys", keys,
              "-o", tmp_path / "rel", "--profile", tmp_path / "profile.json")
    assert ok.returncode == 0, ok.stderr
    signed = json.loads((tmp_path / "rel" / "manifest.json").read_text())["signed"]
    assert signed["profile"] == cnn_profile.to_dict()


def test_agent_ignores_a_signed_profile_of_another_model(cnn_profile: Any) -> None:
    """A release signed with a profile of another model (built before the release-time
    check, or by hand): the agent says so once and installs no tap, answers unchanged."""
    model = Model.load(FIXTURES / "mlp.onnx", threads=1)
    service, events = _service(model, "2.0.0"), Events()
    taps = Taps(service, service.metrics.registry, drift_config=DriftConfig(max_rate=0), log=events)
    taps.active_loaded(_slot("2.0.0", cnn_profile))
    assert taps.drift is None and service.taps == ()
    assert events.names == ["drift_unavailable"]
    assert "another model" in events.lines[0][2]["error"]
    x = np.random.default_rng(0).normal(size=(3, 30)).astype(np.float32)
    outputs, params = service.infer("model", {"input": x})
    np.testing.assert_array_equal(outputs["probs"], model.predict_all({"input": x})["probs"])
    assert params["source"] == "local"


def test_next_model_without_a_profile_clears_the_drift_gauges(cnn_profile: Any) -> None:
    """The gauges of an alerting model stayed on /metrics (edgeship_drift_alert 1) after a
    switch to a release without a profile."""
    model = Model.load(FIXTURES / "cnn.onnx", threads=1)
    service, events = _service(model, "1.0.0"), Events()
    config = DriftConfig(max_rate=0, window=200, slices=4, min_samples=100, batch=8)
    taps = Taps(service, service.metrics.registry, drift_config=config, log=events)
    taps.active_loaded(_slot("1.0.0", cnn_profile))
    with np.load(FIXTURES / "cnn_eval.npz") as data:
        images = data["input"][:200] + np.float32(0.5)  # far brighter: alert
    for i in range(0, 200, 4):
        service.infer("model", {"input": images[i : i + 4]})
    beat: dict[str, Any] = {}
    taps.heartbeat(beat)
    assert beat["drift"]["alert"] is True
    assert "edgeship_drift_alert 1.0" in generate_latest(service.metrics.registry).decode()

    service.swap(Serving(model=model, version="1.1.0", sha256="1" * 64,
                         metadata=describe("model", model, "1.1.0")))
    taps.active_loaded(_slot("1.1.0", None))
    metrics = generate_latest(service.metrics.registry).decode()
    assert "edgeship_drift_alert 0.0" in metrics and "edgeship_drift_window 0.0" in metrics
    assert "edgeship_drift_psi{" not in metrics and "edgeship_drift_ks{" not in metrics
    beat = {}
    taps.heartbeat(beat)
    assert "drift" not in beat and "drift" not in taps.status({"state": "idle"})


def test_answers_share_the_window_of_their_inputs() -> None:
    """Outputs of a large batch were all added to the current slice: the output features
    counted every row ever seen in one flush (1000 of them) while the window held 75."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 3)).astype(np.float32)
    profile = build_profile({"x": ref}, {"y": ref[:, :1] * 2})
    monitor = DriftMonitor(profile, DriftConfig(max_rate=0, window=100, slices=4, min_samples=10))
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    monitor.observe({"x": x}, {"y": x[:, :1] * 2})
    report = monitor.report()
    assert {f.name: f.samples for f in report.features} == {
        "x[0]": report.window, "x[1]": report.window, "x[2]": report.window,
        "y": report.window}
    assert report.window <= 100
    # the shifted output rows of the last batch are what the window judges: all of them
    monitor.observe({"x": x[:100]}, {"y": x[:100, :1] * 2 + 10})
    assert {f.name: f.psi for f in monitor.report().features}["y"] > 5


def test_tap_keeps_local_answers_in_the_window_when_cloud_answers_mix_in(
        cnn_profile: Any) -> None:
    from edgeship.agent._drift import DriftTap

    model = Model.load(FIXTURES / "cnn.onnx", threads=1)
    tap = DriftTap(cnn_profile, DriftConfig(max_rate=0, window=64, slices=4, min_samples=10, batch=32),
                   log=Events())
    with np.load(FIXTURES / "cnn_eval.npz") as data:
        images = data["input"][:256]
    for i in range(0, 256, 8):  # batches of 8 rows: one flush holds 256 rows
        x = images[i : i + 8]
        source = "cloud" if i % 16 else "local"
        tap.observe({"input": x}, model.predict_all({"input": x}), source=source,
                    version="1.0.0", seconds=0.001)
    telemetry = tap.telemetry()
    samples = {f["name"]: f["samples"] for f in telemetry["features"]}
    assert samples["input"] == telemetry["window"] <= 64
    assert 0 < samples["probs:class"] <= telemetry["window"], samples
    assert tap.errors == 0


@pytest.mark.parametrize("samples", [40, 60, 100])
def test_a_small_reference_does_not_alert_on_its_own_distribution(samples: int) -> None:
    """10 bins from 50-100 reference samples: the reference shares' own noise put PSI over
    0.2 on most unshifted streams (95% of seeds at 50 samples). A small reference now gets
    fewer bins; a real shift is still seen."""
    calm = shifted = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        profile = build_profile({"x": rng.normal(size=(samples, 8)).astype(np.float32)})
        assert all(f.bins <= max(2, samples // 20) for f in profile.features)
        monitor = DriftMonitor(profile, DriftConfig(max_rate=0))
        monitor.observe({"x": rng.normal(size=(1000, 8)).astype(np.float32)})
        calm += not monitor.report().alert
        monitor = DriftMonitor(profile, DriftConfig(max_rate=0))
        monitor.observe({"x": rng.normal(1.0, 1.0, size=(1000, 8)).astype(np.float32)})
        shifted += monitor.report().alert
    assert calm >= 9 and shifted == 10, (calm, shifted)


def test_nan_values_are_not_counted_as_the_lowest_bin() -> None:
    """NaN compared false with every edge and landed in bin 0: half the rows of a sensor
    gone NaN (inputs a cloud fallback still answers) read as a shift to low values."""
    from edgeship.agent._drift import DriftTap

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 3)).astype(np.float32)
    profile = build_profile({"x": ref}, {"y": np.stack([ref[:, 0], -ref[:, 0]], axis=1)})
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=1000, min_samples=200, batch=16), log=Events())
    for i in range(600):
        x = rng.normal(size=(1, 3)).astype(np.float32)
        y = np.stack([x[:, 0], -x[:, 0]], axis=1)
        if i % 2:
            x[0, 0] = np.nan
            y[0, 0] = np.nan
        tap.observe({"x": x}, {"y": y}, source="local" if i % 3 else "cloud", version="1",
                    seconds=0.0)
    t = tap.telemetry()
    by_name = {f["name"]: f for f in t["features"]}
    assert t["alert"] is False, by_name
    assert by_name["x[0]"]["samples"] == 300 and by_name["x[1]"]["samples"] == 600
    assert by_name["y:class"]["samples"] == by_name["y:top1"]["samples"] < 400 // 2 + 1
    assert t["nan_values"] == 300 + 2 * (400 - by_name["y:class"]["samples"]) and t["errors"] == 0
    assert json.dumps(t, allow_nan=False)


def test_tensor_names_up_to_the_limit_make_a_profile() -> None:
    """A tensor name of 123..128 characters is valid, but its feature names (":class",
    "[63]" added) went over the same limit: build_profile (and so `convert --eval`) failed
    with a MalformedError about a name it had made itself."""
    rng = np.random.default_rng(0)
    long_in, long_out = "i" * 128, "o" * 128
    profile = build_profile({long_in: rng.normal(size=(400, 64)).astype(np.float32)},
                            {long_out: rng.random(size=(400, 10)).astype(np.float32)})
    names = [f.name for f in profile.features]
    assert names[0] == f"{long_in}[0]" and names[-2:] == [f"{long_out}:class", f"{long_out}:top1"]
    assert Profile.from_json(profile.to_json()) == profile
    tap_status = DriftMonitor(profile, DriftConfig(max_rate=0, min_samples=10))
    tap_status.observe({long_in: rng.normal(size=(50, 64)).astype(np.float32)})
    assert len(json.dumps(tap_status.report().status())) < 400  # the retained status stays small
    with pytest.raises(MalformedError, match="128 characters"):  # over the limit: one clear error
        build_profile({"x" * 129: np.zeros((40, 1), np.float32)})


def test_a_calm_device_reports_its_first_verdict_and_a_restart_starts_a_new_window(
        tmp_path: Path, mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The retained status carried drift only when the alert flipped: a device watching a
    calm stream said `"drift": null` forever (fleet status "-", as if it had no profile).
    The first verdict is published too; a restart starts an empty window (documented)."""
    from test_agent_support import AgentProc, Watcher, write_config
    from test_drift_agent import DRIFT_TOML, Telemetry, _send, stream

    tmp = tmp_path_factory.mktemp("calm-release")
    keys = make_keys(tmp)
    assert _run("convert", FIXTURES / "cnn.onnx", "--calib", FIXTURES / "cnn_calib.npz", "--eval",
                FIXTURES / "cnn_eval.npz", "--format", "onnx", "-o", tmp / "c", "-q").returncode == 0
    assert _run("release", tmp / "c" / "model.int8.onnx", "--version", "1.0.0", "--keys", keys,
                "-o", tmp / "rel", "--model-name", "model",
                "--profile", tmp / "c" / "profile.json").returncode == 0
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=keys / "root.pub",
                       initial=tmp / "rel", extra=DRIFT_TOML)
    telemetry, status = Telemetry(mosquitto.url), Watcher(mosquitto.url)
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        agent.wait_log(lambda e: e.get("event") == "drift_watching")
        sent = _send(agent.url, stream(300, seed=21))
        telemetry.next_drift(sent, lambda d: d["window"] >= 250)
        calm = status.wait(lambda s: isinstance(s.get("drift"), dict), timeout=60)
        assert calm["drift"]["alert"] is False and calm["drift"]["window"] >= 250, calm
        assert calm["drift"]["max_psi"] < 0.1
        assert not [e for e in agent.log if e.get("event") in ("drift_alert", "drift_cleared")]

        assert agent.terminate() == 0
        agent = AgentProc(cfg, port).start()
        agent.wait_ready()
        sent = _send(agent.url, stream(20, seed=22))
        fresh = telemetry.next_drift(sent, lambda d: True)
        assert fresh["window"] <= 20 and fresh["alert"] is False  # a new, empty window
    finally:
        agent.kill()
        telemetry.close()
        status.close()


def test_min_samples_the_sliding_window_never_holds_is_refused() -> None:
    """window=400, slices=4, min_samples=400 was accepted, but once a slice fills the
    next one is cleared: the window never holds more than 350 of 50-row batches, so a
    fully shifted stream never raised the alert."""
    from edgeship._errors import ConfigError

    with pytest.raises(ConfigError, match=r"drift\.min_samples: 400 .* 300 samples"):
        DriftConfig.from_dict({"window": 400, "slices": 4, "min_samples": 400})
    with pytest.raises(ConfigError, match=r"drift\.min_samples"):
        DriftConfig(max_rate=0, window=100, slices=2, min_samples=60)
    config = DriftConfig(max_rate=0, window=400, slices=4, min_samples=300)  # the most it allows
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(build_profile({"x": rng.normal(size=(2000, 2))}), config)
    verdicts = []
    for _ in range(20):
        monitor.observe({"x": rng.normal(3.0, 1.0, size=(50, 2))})
        verdicts.append(monitor.report().alert)
    assert verdicts[5:] == [True] * 15  # from 300 samples on, and it never flaps off


def test_large_inputs_are_counted_before_many_of_them_pile_up() -> None:
    """The tap holds references to whole requests until a batch of 32 is counted: with
    3 MB images that is ~100 MB held per tap (full-HD float images: 800 MB). A batch now
    holds at most ~8 MiB of input."""
    from edgeship.agent._drift import DriftTap

    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 512, 512), dtype=np.float32)  # 3 MiB each
    profile = build_profile({"img": images})
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=1000, min_samples=10), log=Events())
    for i, x in enumerate(images[:20]):
        tap.observe({"img": x[None]}, {}, source="local", version="1", seconds=0.0)
        held = i + 1 - tap.monitor.window
        assert held * x.nbytes <= 8 << 20, held
    assert tap.telemetry()["window"] == 20 and tap.errors == 0


@pytest.mark.parametrize(("sample", "counted"), [(0.7, 700), (0.4, 400), (0.25, 250)])
def test_sample_counts_that_fraction_of_the_requests(sample: float, counted: int) -> None:
    """sample was turned into a stride round(1/sample): 0.7 counted every request, 0.4
    one in two."""
    from edgeship.agent._drift import DriftTap

    profile = build_profile({"x": np.random.default_rng(0).normal(size=(400, 2))})
    tap = DriftTap(profile, DriftConfig(max_rate=0, window=10_000, min_samples=10, sample=sample, batch=8),
                   log=Events())
    x = np.zeros((1, 2), np.float32)
    for _ in range(1000):
        tap.observe({"x": x}, {}, source="local", version="1", seconds=0.0)
    assert abs(tap.telemetry()["window"] - counted) <= 1


def test_tflite_release_with_the_converters_profile_on_a_real_agent(
        tmp_path: Path, mosquitto: Any) -> None:
    """The profile `convert --eval` builds on the INT8 ONNX model, signed into a release of
    the INT8 TFLite model (now checked at release time against the TFLite model's tensors):
    a real agent (LiteRT) counts the same features, answers unchanged, a calm verdict.
    (The v2 API takes only the model's own batch size, 1 here: batches are covered in
    process above.)"""
    from edgeship.sdk.serving._client import AgentClient
    from test_agent_support import AgentProc, write_config
    from test_drift_agent import Telemetry

    keys = make_keys(tmp_path)
    assert _run("convert", FIXTURES / "cnn.onnx", "--calib", FIXTURES / "cnn_calib.npz",
                "--eval", FIXTURES / "cnn_eval.npz", "-o", tmp_path / "c", "-q").returncode == 0
    res = _run("release", tmp_path / "c" / "model.int8.tflite", "--version", "1.0.0",
               "--keys", keys, "-o", tmp_path / "rel", "--model-name", "model",
               "--profile", tmp_path / "c" / "profile.json")
    assert res.returncode == 0, res.stderr
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=tmp_path / "rel",
                       extra="[drift]\nmax_rate = 0\nwindow = 400\nslices = 4\nmin_samples = 250\n")
    telemetry = Telemetry(mosquitto.url)
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        agent.wait_log(lambda e: e.get("event") == "drift_watching")
        client = AgentClient(agent.url)
        with np.load(FIXTURES / "cnn_eval.npz") as data:
            images = data["input"]
        local = Model.load(tmp_path / "c" / "model.int8.tflite")
        for i in range(280):
            answer = client.infer({"input": images[i : i + 1]})
            assert answer.source == "local"
            np.testing.assert_allclose(answer.outputs["probs"],
                                       local.predict_all({"input": images[i : i + 1]})["probs"],
                                       atol=1e-6)
        beat = telemetry.next_drift(0.0, lambda d: d["window"] >= 250)
        assert beat["alert"] is False and beat["max_psi"] < 0.1, beat
        assert {f["name"] for f in beat["features"]} == {"input", "probs:class", "probs:top1"}
        by_name = {f["name"]: f["samples"] for f in beat["features"]}
        assert by_name["probs:class"] == by_name["input"] == beat["window"]
        assert beat["errors"] == 0
    finally:
        agent.kill()
        telemetry.close()
