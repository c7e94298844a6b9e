"""Per-target artifacts in releases (issue 22): ``edgeship release --variant TARGET=FILE``
signs an accelerator's own file (a Vela-compiled TFLite, an OpenVINO-ready ONNX) next to
the generic artifact; real agents over a real mosquitto install the variant when their
``hardware`` matches and its runtime is there, the generic artifact otherwise.

The hardware boundary: this machine has no Ethos-U NPU. The Ethos-U variant is tested up
to LiteRT's delegate load: an agent without the delegate library installs the generic
artifact with one log line; an agent pointed at a library that is not a delegate
downloads and verifies the Vela file, then its health check fails at the delegate load
and it rolls back. The OpenVINO variant runs here (this CPU), so that agent commits and
serves it with OpenVINO.
"""

from __future__ import annotations

import _ctypes
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Mosquitto, free_port
from test_agent_support import (
    GOLDEN_X,
    IN,
    AgentProc,
    Watcher,
    expected,
    http_json,
    make_golden,
    make_keys,
    make_model,
    served_version,
    write_config,
)

from edgeship._errors import DigestMismatchError, InputError, MalformedError, MismatchError

VELA = "ethos-u55-128"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generic fp32 ONNX (bias 100, version 1.0.0), its OpenVINO variant (the same
    math, other bytes) and its Vela-compiled INT8 TFLite for the Ethos-U55-128."""
    from edgeship.converter import ConvertOptions, convert

    root = tmp_path_factory.mktemp("variants")
    generic = make_model(root / "build" / "model.onnx", 100.0)
    ov = onnx.load(str(generic))
    ov.doc_string = "for openvino-cpu"
    onnx.save(ov, str(root / "build" / "model.openvino-cpu.onnx"))
    calib = root / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).uniform(-1, 1, (32, IN)).astype(np.float32))
    convert(generic, calib, root / "out", ConvertOptions(formats=("tflite",), targets=(VELA,)))
    return {"generic": generic, "openvino-cpu": root / "build" / "model.openvino-cpu.onnx",
            VELA: root / "out" / f"model.int8.{VELA}.tflite",
            "golden": make_golden(root / "build" / "golden.npz", 100.0), "root": root}


def build(files: dict[str, Path], out: Path, keys: Path, **variants: Path) -> Path:
    from edgeship.sdk.release._release import Release

    Release.build(files["generic"], version="1.0.0", keydir=keys, out=out,
                  golden=files["golden"], model_name="model",
                  variants={k.replace("_", "-"): v for k, v in variants.items()})
    return out


def test_manifest_lists_variants_and_older_manifests_read_the_same(
        files: dict[str, Path], tmp_path: Path) -> None:
    from edgeship.sdk.release._manifest import Manifest
    from edgeship.sdk.release._release import Release, self_check, verify_release

    keys = make_keys(tmp_path)
    rel = build(files, tmp_path / "rel", keys, ethos_u55_128=files[VELA],
                openvino_cpu=files["openvino-cpu"])
    signed = json.loads((rel / "manifest.json").read_text())["signed"]
    vela = files[VELA].read_bytes()
    assert signed["variants"][VELA] == {
        "name": files[VELA].name, "sha256": hashlib.sha256(vela).hexdigest(),
        "size": len(vela), "format": "tflite"}
    assert sorted(signed["variants"]) == [VELA, "openvino-cpu"]
    manifest = Manifest.from_dict(signed)
    assert manifest.to_dict() == signed  # round trip
    chosen = manifest.select(VELA)
    assert chosen.artifact.name == files[VELA].name and chosen.deltas == ()
    with pytest.raises(MismatchError, match="no variant for 'rk3588'"):
        manifest.select("rk3588")
    verify_release(rel, keys / "root.pub")
    self_check(rel)
    # a manifest without the field is exactly what edgeship wrote before it existed
    plain = build(files, tmp_path / "plain", keys)
    doc = json.loads((plain / "manifest.json").read_text())["signed"]
    assert "variants" not in doc and Release.load(plain).manifest.variants == {}
    # a tampered variant is caught where a tampered artifact is
    (rel / files[VELA].name).write_bytes(vela[:-1] + bytes([vela[-1] ^ 1]))
    with pytest.raises(DigestMismatchError):
        self_check(rel)


@pytest.mark.parametrize(("target", "which", "words"), [
    ("rk9999", "generic", "not an accelerator target"),
    (VELA, "generic", "a ethos-u55-128 device runs a .tflite file"),
    ("ethos-u65-256", "plain_tflite", "not a Vela-compiled TFLite"),
    ("rk3588", "renamed_rknn", "not an RKNN model"),
])
def test_a_variant_a_device_could_not_run_is_refused_before_anything_is_written(
        files: dict[str, Path], tmp_path: Path, target: str, which: str, words: str) -> None:
    from edgeship.sdk.release._release import Release

    keys = make_keys(tmp_path)
    plain_tflite = tmp_path / "model.int8.tflite"
    shutil.copyfile(files["root"] / "out" / "model.int8.tflite", plain_tflite)
    renamed = tmp_path / "model.rk3588.rknn"
    renamed.write_bytes(files["generic"].read_bytes())
    path = {"generic": files["generic"], "plain_tflite": plain_tflite, "renamed_rknn": renamed}[which]
    with pytest.raises(InputError, match=words):
        Release.build(files["generic"], version="1.0.0", keydir=keys, out=tmp_path / "rel",
                      variants={target: path})
    assert not (tmp_path / "rel").exists()


def test_manifest_refuses_malformed_variants() -> None:
    from edgeship.sdk.release._manifest import Manifest

    art = {"name": "model.onnx", "sha256": "0" * 64, "size": 1, "format": "onnx"}
    base = {"type": "manifest", "model": "m", "version": "1.0.0", "artifact": art,
            "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z"}
    for variants, words in [({}, "1 to 16 targets"), ({"../x": art}, "not a target name"),
                            ({"rk3588": {**art, "name": "../x"}}, "not a plain file name"),
                            ({"rk3588": art}, "distinct file names")]:
        with pytest.raises(MalformedError, match=words):
            Manifest.from_dict({**base, "variants": variants})


def test_the_ota_core_takes_the_variant_only_with_its_runtime(
        files: dict[str, Path], tmp_path: Path) -> None:
    """The pure decision: hardware matches and runtime present -> the variant's file,
    size and sha256 (no delta); otherwise the generic artifact."""
    from edgeship.agent._ota import OfferReceived, OtaCore, OtaState, RequestChunk
    from edgeship.sdk.release._release import Release

    keys = make_keys(tmp_path)
    rel = Release.load(build(files, tmp_path / "rel", keys, ethos_u55_128=files[VELA]))
    raw = rel.offer().to_bytes()
    root = (keys / "root.pub").read_bytes()

    def job_for(hardware: str, usable: frozenset[str]) -> tuple[str, str]:
        core = OtaCore(device="d", model="model", root_key=root, hardware=hardware,
                       variants=usable)
        state, actions = core.step(OtaState(), OfferReceived(raw), 0.0 + 1.8e9)
        assert state.job is not None and any(isinstance(a, RequestChunk) for a in actions)
        return state.job.file, state.job.variant

    assert job_for(VELA, frozenset({VELA})) == (files[VELA].name, VELA)
    assert job_for(VELA, frozenset()) == ("model.onnx", "")  # runtime missing: generic
    assert job_for("cpu", frozenset({VELA})) == ("model.onnx", "")


def test_agents_install_their_variant_or_the_generic_artifact(
        files: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto) -> None:
    from edgeship.sdk.fleet._release_server import ReleaseServer, push_offer

    keys = make_keys(tmp_path)
    rel = build(files, tmp_path / "rel", keys, ethos_u55_128=files[VELA],
                openvino_cpu=files["openvino-cpu"])
    not_a_delegate = _ctypes.__file__  # a real shared library without the delegate's entry
    agents = {
        "ov": ("openvino-cpu", {}),
        "cpu": ("cpu", {}),
        "u55-none": (VELA, {"EDGESHIP_ETHOSU_DELEGATE": ""}),
        "u55-lib": (VELA, {"EDGESHIP_ETHOSU_DELEGATE": not_a_delegate}),
    }
    procs: dict[str, AgentProc] = {}
    server = ReleaseServer(mosquitto.url, [rel]).start()
    watch = Watcher(mosquitto.url)
    try:
        for device, (hardware, env) in agents.items():
            port = free_port()
            cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                               root_pub=keys / "root.pub", device=device)
            cfg.write_text(cfg.read_text().replace('fleet = "t"\n',
                                                   f'fleet = "t"\nhardware = "{hardware}"\n'))
            procs[device] = AgentProc(cfg, port, env=env).start()
        push_offer(mosquitto.url, "t", rel, list(agents))
        done = {d: watch.wait(lambda s: s["state"] in ("committed", "rolled-back", "failed"),
                              device=d, timeout=60) for d in agents}
        for device in ("ov", "cpu", "u55-none"):
            assert done[device]["state"] == "committed", done[device]
            version, y = served_version(procs[device].url)
            assert version == "1.0.0"
            np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-4, atol=1e-4)
        slots = {d: _active_slot(tmp_path / f"data-{d}") for d in agents}
        # the OpenVINO device runs its own file, with OpenVINO
        assert slots["ov"]["variant"] == "openvino-cpu"
        assert slots["ov"]["sha256"] == _sha(files["openvino-cpu"])
        assert http_json(f"{procs['ov'].url}/v2/models/model")[1]["platform"] == "openvino_onnx"
        # the CPU device and the Ethos-U device without a delegate run the generic artifact
        for device in ("cpu", "u55-none"):
            assert "variant" not in slots[device]
            assert slots[device]["sha256"] == _sha(files["generic"])
        missing = [ln for ln in procs["u55-none"].log if ln.get("event") == "variant_runtime_missing"]
        assert len(missing) == 1 and "Ethos-U delegate" in missing[0]["reason"]
        assert not any(ln.get("event") == "variant_runtime_missing" for ln in procs["cpu"].log)
        # the device with a (non-)delegate library fetched and verified the Vela file, and
        # stopped at the hardware boundary: the delegate load
        lib = done["u55-lib"]
        assert lib["state"] == "rolled-back" and "Ethos-U delegate" in lib["error"], lib
        assert not_a_delegate in lib["error"]
        checked = [ln for ln in procs["u55-lib"].log if ln.get("event") == "health_check"]
        assert checked and checked[0]["model"].endswith("model.tflite")
        slot_file = Path(checked[0]["model"])
        assert _sha(slot_file) == _sha(files[VELA])  # the verified Vela file was installed
    finally:
        watch.close()
        server.stop()
        for proc in procs.values():
            proc.terminate()


def test_an_encrypted_release_carries_encrypted_variants(
        files: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto) -> None:
    """``--variant`` with ``--encrypt-for``: each variant is encrypted under the release's
    data key with a nonce of its own; a real agent whose hardware matches and whose
    [encryption] key is a recipient installs the variant, decrypts it in memory and serves
    it with OpenVINO; no plaintext of it is left under its data dir."""
    from edgeship.sdk.fleet._release_server import ReleaseServer, push_offer
    from edgeship.sdk.release._crypt import decrypt, unwrap_data_key, write_key_pair
    from edgeship.sdk.release._release import Release

    keys = make_keys(tmp_path)
    device_key, device_pub, _ = write_key_pair(tmp_path / "device-keys", "dev-ov")
    rel = tmp_path / "rel"
    Release.build(files["generic"], version="1.0.0", keydir=keys, out=rel, golden=files["golden"],
                  model_name="model", encrypt_for=[device_pub],
                  variants={"openvino-cpu": files["openvino-cpu"]})
    manifest = Release.load(rel).manifest
    stored = (rel / files["openvino-cpu"].name).read_bytes()
    plain = files["openvino-cpu"].read_bytes()
    assert plain not in stored and manifest.variants["openvino-cpu"].sha256 == hashlib.sha256(stored).hexdigest()
    assert stored[:12] != (rel / "model.onnx").read_bytes()[:12]  # a nonce of its own
    from edgeship.agent._config import EncryptionConfig
    from edgeship.agent._device_key import load_device_key

    key = load_device_key(EncryptionConfig(key_file=str(device_key)))
    assert manifest.encryption is not None
    assert decrypt(stored, unwrap_data_key(manifest.encryption, key)) == plain

    server = ReleaseServer(mosquitto.url, [rel]).start()
    watch = Watcher(mosquitto.url)
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=keys / "root.pub",
                       device="ov", extra=f'\n[encryption]\nkey_file = "{device_key}"\n')
    cfg.write_text(cfg.read_text().replace('fleet = "t"\n', 'fleet = "t"\nhardware = "openvino-cpu"\n'))
    agent = AgentProc(cfg, port).start()
    try:
        push_offer(mosquitto.url, "t", rel, ["ov"])
        done = watch.wait(lambda s: s["state"] in ("committed", "rolled-back", "failed"),
                          device="ov", timeout=60)
        assert done["state"] == "committed", done
        version, y = served_version(agent.url)
        assert version == "1.0.0"
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-4, atol=1e-4)
        slot = _active_slot(tmp_path / "data-ov")
        assert slot["variant"] == "openvino-cpu" and slot["sha256"] == hashlib.sha256(stored).hexdigest()
        assert http_json(f"{agent.url}/v2/models/model")[1]["platform"] == "openvino_onnx"
        for path in (tmp_path / "data-ov").rglob("*"):
            assert not path.is_file() or plain[64:192] not in path.read_bytes(), path
    finally:
        watch.close()
        server.stop()
        agent.terminate()


def test_release_cli_takes_variants(files: dict[str, Path], tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "edgeship", "release", str(files["generic"]), "--version", "1.0.0",
         "--keys", str(keys), "-o", str(tmp_path / "rel"), "--hardware", "cpu",
         "--variant", f"{VELA}={files[VELA]}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{VELA}: {files[VELA].name}" in res.stdout
    signed = json.loads((tmp_path / "rel" / "manifest.json").read_text())["signed"]
    assert signed["hardware"] == ["cpu", VELA]  # the variant's device may take the release
    res = subprocess.run(
        [sys.executable, "-m", "edgeship", "release", str(files["generic"]), "--version", "1.0.0",
         "--keys", str(keys), "-o", str(tmp_path / "bad"), "--variant", "ethos-u55-128"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "expected TARGET=FILE" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _active_slot(data_dir: Path) -> dict[str, object]:
    state = json.loads((data_dir / "state.json").read_text())
    active: dict[str, object] = state["active"]
    return active


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def test_ethos_u_device_without_the_delegate_is_one_clear_error(
        files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Model.load(..., device="ethos-u") up to the hardware boundary: the delegate library."""
    from edgeship.sdk import Model

    from edgeship._errors import ModelLoadError

    monkeypatch.setenv("EDGESHIP_ETHOSU_DELEGATE", "/nonexistent/libethosu_delegate.so")
    with pytest.raises(ModelLoadError, match=r"Ethos-U delegate /nonexistent/libethosu_delegate\.so "
                                             r"could not be loaded") as caught:
        Model.load(files[VELA], device="ethos-u")
    assert "\n" not in str(caught.value)
    # on the CPU the Vela file does not run either: its NPU part is a command stream
    with pytest.raises(ModelLoadError):
        Model.load(files[VELA])


def test_a_rockchip_device_without_rknn_lite_takes_the_generic_artifact() -> None:
    """rknn-toolkit-lite2 exists only for aarch64/armhf boards: here the agent's probe
    finds it missing, says so once and installs generic artifacts (the hardware boundary;
    the .rknn load itself is in test_npu_rknn.py)."""
    from edgeship.agent._config import ModelConfig
    from edgeship.agent._loading import runtime_for, usable_variants

    lines: list[dict[str, object]] = []
    assert usable_variants("rk3588", lambda event, **kw: lines.append({"event": event, **kw})) \
        == frozenset()
    assert len(lines) == 1 and lines[0]["event"] == "variant_runtime_missing"
    assert "rknn-toolkit-lite2" in str(lines[0]["reason"])
    assert usable_variants("cpu", lambda *a, **k: lines.append({})) == frozenset()
    assert usable_variants("openvino-cpu", lambda *a, **k: lines.append({})) == {"openvino-cpu"}
    assert len(lines) == 1
    assert runtime_for("rk3588", ModelConfig()) == ("rknn", "npu")
    assert runtime_for(VELA, ModelConfig()) == ("litert", "ethos-u")
    assert runtime_for(None, ModelConfig(runtime="litert")) == ("litert", "cpu")
