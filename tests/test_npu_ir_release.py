"""An OpenVINO IR as a release's openvino-cpu variant (issue 22):
``edgeship release --variant openvino-cpu=OUT/model.int8.openvino-cpu.xml`` packs the IR's
.xml and .bin into one signed file (``model.int8.openvino-cpu.ovir``, format ``ovir``);
real agents over a real mosquitto install it when their ``hardware`` is openvino-cpu or
their ``[model] runtime`` is "openvino" on a CPU, serve it with OpenVINO, and take the next
release's IR into the other A/B slot; a plain CPU agent keeps the generic ONNX (and its
delta). All of it runs on this CPU: no hardware boundary here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from test_agent_support import (
    GOLDEN_X,
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

ov = pytest.importorskip("openvino")
TARGET = "openvino-cpu"


def _ir(onnx_path: Path, out: Path) -> Path:
    """The OpenVINO IR of ``onnx_path`` (f32 weights: the same math as the ONNX)."""
    xml = out / f"model.int8.{TARGET}.xml"
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def _build(root: Path, keys: Path, version: str, bias: float, base: Path | None) -> Path:
    from edgeship.sdk.release._release import Release

    work = root / "build" / version
    generic = make_model(work / "model.onnx", bias)
    rel = root / f"rel-{version}"
    Release.build(generic, version=version, keydir=keys, out=rel, bases=[base] if base else [],
                  golden=make_golden(work / "golden.npz", bias), model_name="model",
                  hardware=["cpu"], variants={TARGET: _ir(generic, work)})
    return rel


def _active(data_dir: Path) -> dict[str, object]:
    active: dict[str, object] = json.loads((data_dir / "state.json").read_text())["active"]
    return active


def test_the_release_packs_the_ir_into_one_signed_variant(tmp_path: Path) -> None:
    from edgeship.sdk.release._release import Release, self_check, verify_release
    from edgeship.sdk.runtime._openvino_pack import unpack_ir

    keys = make_keys(tmp_path)
    rel = _build(tmp_path, keys, "1.0.0", 100.0, None)
    signed = json.loads((rel / "manifest.json").read_text())["signed"]
    entry = signed["variants"][TARGET]
    packed = (rel / f"model.int8.{TARGET}.ovir").read_bytes()
    assert entry == {"name": f"model.int8.{TARGET}.ovir", "format": "ovir", "size": len(packed),
                     "sha256": hashlib.sha256(packed).hexdigest()}
    assert signed["hardware"] == ["cpu", TARGET]
    xml = tmp_path / "build" / "1.0.0" / f"model.int8.{TARGET}.xml"
    assert unpack_ir(packed) == (xml.read_bytes(), xml.with_suffix(".bin").read_bytes())
    assert not any(p.suffix in (".xml", ".bin") for p in rel.iterdir())
    verify_release(rel, keys / "root.pub")
    self_check(rel)
    assert Release.load(rel).read_variant(TARGET) == packed


def test_release_cli_refuses_an_ir_without_its_weights(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    generic = make_model(tmp_path / "build" / "model.onnx", 100.0)
    xml = _ir(generic, tmp_path / "build")
    xml.with_suffix(".bin").unlink()
    res = subprocess.run(
        [sys.executable, "-m", "edgeship", "release", str(generic), "--version", "1.0.0",
         "--keys", str(keys), "-o", str(tmp_path / "rel"), "--variant", f"{TARGET}={xml}"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "the IR's weights (.bin) beside it" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "rel").exists()
    xml.write_text("<?xml version='1.0'?><net name='x' version='11'><layers>")  # cut short
    xml.with_suffix(".bin").write_bytes(b"")
    res = subprocess.run(
        [sys.executable, "-m", "edgeship", "release", str(generic), "--version", "1.0.0",
         "--keys", str(keys), "-o", str(tmp_path / "rel"), "--variant", f"{TARGET}={xml}"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "OpenVINO cannot read this IR" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_openvino_agents_install_and_update_the_ir_others_the_onnx(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    from edgeship.sdk.fleet._release_server import ReleaseServer, push_offer

    keys = make_keys(tmp_path)
    first = _build(tmp_path, keys, "1.0.0", 100.0, None)
    second = _build(tmp_path, keys, "1.0.1", 101.0, first)
    agents = {"ov-hw": ("openvino-cpu", "auto"), "ov-rt": ("cpu", "openvino"),
              "cpu": ("cpu", "auto")}
    procs: dict[str, AgentProc] = {}
    server = ReleaseServer(mosquitto.url, [first, second]).start()
    watch = Watcher(mosquitto.url)
    try:
        for device, (hardware, runtime) in agents.items():
            port = free_port()
            cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                               root_pub=keys / "root.pub", device=device)
            text = cfg.read_text().replace('fleet = "t"\n', f'fleet = "t"\nhardware = "{hardware}"\n')
            cfg.write_text(text.replace('[model]\nname = "model"\n',
                                        f'[model]\nname = "model"\nruntime = "{runtime}"\n'))
            procs[device] = AgentProc(cfg, port).start()
        slots: dict[str, dict[str, dict[str, object]]] = {}
        for rel, version, bias in ((first, "1.0.0", 100.0), (second, "1.0.1", 101.0)):
            push_offer(mosquitto.url, "t", rel, list(agents))
            for device in agents:
                done = watch.wait(lambda s, v=version: (s["state"], s["version"]) == ("committed", v)
                                  or s["state"] in ("rolled-back", "failed"), device=device,
                                  timeout=120)
                assert done["state"] == "committed" and done["version"] == version, done
                got, y = served_version(procs[device].url)
                assert got == version
                np.testing.assert_allclose(y, expected(bias, GOLDEN_X), rtol=1e-4, atol=1e-4)
                slots.setdefault(device, {})[version] = _active(tmp_path / f"data-{device}")
            packed = (rel / f"model.int8.{TARGET}.ovir").read_bytes()
            for device in ("ov-hw", "ov-rt"):  # the IR, served by OpenVINO
                slot = slots[device][version]
                assert slot["variant"] == TARGET and slot["format"] == "ovir", slot
                assert slot["sha256"] == hashlib.sha256(packed).hexdigest()
                meta = http_json(f"{procs[device].url}/v2/models/model")[1]
                assert meta["platform"] == "openvino_ir", meta  # not the ONNX it also reads
            generic = (rel / "model.onnx").read_bytes()
            slot = slots["cpu"][version]
            assert "variant" not in slot and slot["sha256"] == hashlib.sha256(generic).hexdigest()
            assert http_json(f"{procs['cpu'].url}/v2/models/model")[1]["platform"] == "onnxruntime_onnx"
        for device in agents:  # each update went into the other A/B slot
            assert slots[device]["1.0.0"]["slot"] != slots[device]["1.0.1"]["slot"]
        for device in ("ov-hw", "ov-rt"):
            data_dir = tmp_path / f"data-{device}"
            assert [p.name for p in data_dir.rglob("model.*") if p.is_file()].count("model.ovir") == 2
        assert not any(ln.get("event") == "variant_runtime_missing"
                       for proc in procs.values() for ln in proc.log)
    finally:
        watch.close()
        server.stop()
        for proc in procs.values():
            proc.terminate()


def test_the_ota_core_gives_a_cpu_agent_running_openvino_the_openvino_variant(tmp_path: Path) -> None:
    from edgeship.agent._loading import usable_variants
    from edgeship.agent._ota_release import select
    from edgeship.sdk.release._release import Release

    lines: list[str] = []
    usable = usable_variants("cpu", lambda event, **kw: lines.append(event), "openvino")
    assert usable == {TARGET} and not lines
    assert usable_variants("cpu", lambda event, **kw: lines.append(event)) == frozenset()
    manifest = Release.load(_build(tmp_path, make_keys(tmp_path), "1.0.0", 100.0, None)).manifest
    installs, variant = select(manifest, "cpu", usable)
    assert variant == TARGET and installs.artifact.format == "ovir" and installs.deltas == ()
    assert select(manifest, "cpu", frozenset()) == (manifest, "")
    assert select(manifest, "rk3588", frozenset({TARGET}))[1] == TARGET
