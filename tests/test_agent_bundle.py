"""Offline bundles on a real agent: `edgeship release bundle` writes one .esb file and
`edgeship agent install` takes it through the agent's OTA path (the same checks, slots,
health check and rollback); good, tampered, older, other-model and failing-health-check
bundles; the installed model is what the daemon serves next."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Mosquitto, free_port
from edgeship.agent._bundle_dir import CHECK_S
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    expected,
    make_keys,
    make_release,
    served_version,
    version_bias,
    write_config,
)


def edgeship(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def bundle(reldir: Path, out: Path, *extra: str) -> Path:
    made = edgeship("release", "bundle", reldir, "-o", out, *extra)
    assert made.returncode == 0, made.stderr
    return out


def tamper(src: Path, dst: Path, member_prefix: str = "files/") -> Path:
    """A copy of bundle ``src`` with one byte flipped in every member under the prefix."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = bytearray(zin.read(info))
            if info.filename.startswith(member_prefix) and data:
                data[len(data) // 2] ^= 0x01
            zout.writestr(info.filename, bytes(data))
    return dst


def active_of(cfg: Path) -> str | None:
    state = json.loads((cfg.parent / "data-dev-1" / "state.json").read_text())
    return (state.get("active") or {}).get("version")


def test_bundle_install_good_tampered_older_other_model(mosquitto: Mosquitto,
                                                        tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    v2 = make_release(tmp_path, keys, "1.1.0", base=v1)
    v3 = make_release(tmp_path, keys, "1.2.0", base=v2)
    bad = make_release(tmp_path, keys, "1.3.0", base=v2, bad_golden=True)
    other = make_release(tmp_path / "o", keys, "2.0.0", name="other")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=v1)

    def install(path: Path) -> subprocess.CompletedProcess[str]:
        return edgeship("agent", "install", path, "--config", cfg, "--json")

    # good: a device that never ran gets its factory model, then the bundle's delta
    good = bundle(v2, tmp_path / "v2.esb")
    with zipfile.ZipFile(good) as zf:
        names = sorted(zf.namelist())
    assert names[0] == "edgeship-bundle.json" and names[-2:] == ["files/model.onnx",
                                                                 "offer.json"]
    assert names[1].startswith("files/deltas/from-1.0.0.") and len(names) == 4
    out = install(good)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"version": "1.1.0", "phase": "committed",
                                      "active": "1.1.0", "slot": "b", "already": False}
    assert active_of(cfg) == "1.1.0"

    # the daemon serves what was installed; while it runs, an install is refused
    agent = AgentProc(cfg, port).start(wait=False)
    try:
        agent.wait_ready()
        version, y = served_version(agent.url)
        assert version == "1.1.0" and y is not None
        assert np.allclose(y, expected(version_bias("1.1.0"), GOLDEN_X), atol=1e-2)
        busy = install(good)
        assert busy.returncode != 0 and "an agent runs on" in busy.stderr
    finally:
        agent.terminate()

    # tampered payload (artifact and delta): the download's sha256 fails, 1.1.0 stays
    out = install(tamper(bundle(v3, tmp_path / "v3.esb"), tmp_path / "v3-tampered.esb"))
    assert out.returncode != 0 and "not installed" in out.stderr, out.stderr
    assert "1.1.0 stays active" in out.stderr and active_of(cfg) == "1.1.0"
    # tampered offer (the signed manifest): refused before anything is read
    forged = tmp_path / "v3-forged.esb"
    with zipfile.ZipFile(tmp_path / "v3.esb") as zin, zipfile.ZipFile(forged, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "offer.json":
                data = data.replace(b'"1.2.0"', b'"1.9.0"')
            zout.writestr(info.filename, data)
    out = install(forged)
    assert out.returncode != 0 and "offer rejected" in out.stderr, out.stderr
    # older than the active model: the version floor refuses it
    out = install(bundle(v1, tmp_path / "v1.esb"))
    assert out.returncode != 0 and "offer rejected" in out.stderr, out.stderr
    assert active_of(cfg) == "1.1.0"
    # another model
    out = install(bundle(other, tmp_path / "other.esb"))
    assert out.returncode != 0 and "other" in out.stderr, out.stderr
    # the good one again: nothing to do; then the next release installs fine
    out = install(good)
    assert out.returncode == 0 and json.loads(out.stdout)["already"] is True
    out = install(tmp_path / "v3.esb")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["active"] == "1.2.0" and active_of(cfg) == "1.2.0"
    # a release whose golden check fails on the device: installed, checked, rolled back
    out = install(bundle(bad, tmp_path / "bad.esb"))
    assert out.returncode != 0 and "health check failed" in out.stderr, out.stderr
    assert "1.2.0 stays active" in out.stderr and active_of(cfg) == "1.2.0"
    assert len(out.stderr.strip().splitlines()) == 1  # the agent's own logs: install.log
    log = (cfg.parent / "data-dev-1" / "install.log").read_text()
    assert '"state": "rolled-back"' in log


def test_bundle_cli_errors(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    out = edgeship("release", "bundle", v1, "-o", tmp_path / "x.esb", "--from", "0.1.0")
    assert out.returncode == 2 and "deltas from none only" in out.stderr
    junk = tmp_path / "junk.esb"
    junk.write_bytes(b"not a zip")
    cfg = write_config(tmp_path, broker_url="mqtt://127.0.0.1:1", port=free_port(),
                       root_pub=keys / "root.pub")
    out = edgeship("agent", "install", junk, "--config", cfg)
    assert out.returncode != 0 and "not a readable bundle" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_DEBUG", "")


def test_bundle_dir_watched_by_a_running_agent(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """`[ota] bundle_dir`: a running agent installs a .esb dropped there through the same
    checks as `agent install`; each attack is moved into rejected/ with one log line and
    never tried again; the good one into installed/, and the daemon serves it."""
    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    v2 = make_release(tmp_path, keys, "1.1.0", base=v1)
    v3 = make_release(tmp_path, keys, "1.2.0", base=v2)
    other = make_release(tmp_path / "o", keys, "2.0.0", name="other")
    made = tmp_path / "made"
    made.mkdir()
    tampered = tamper(bundle(v3, made / "v3.esb"), made / "v3-tampered.esb")
    older, wrong = bundle(v1, made / "v1.esb"), bundle(other, made / "other.esb")
    good = bundle(v2, made / "v2.esb")
    drop = tmp_path / "usb"
    drop.mkdir()
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=v1)
    cfg.write_text(cfg.read_text().replace("[ota]\n", '[ota]\nbundle_dir = "usb"\n'))  # relative
    agent = AgentProc(cfg, port).start(wait=False)

    def dropped(src: Path, name: str) -> None:
        (drop / f".{name}.part").write_bytes(src.read_bytes())  # copied in, then renamed
        (drop / f".{name}.part").rename(drop / name)

    def outcome(name: str) -> dict[str, object]:
        return agent.wait_log(lambda ln: str(ln.get("event", "")).startswith("bundle_")
                              and ln.get("file") == name, timeout=60)

    try:
        agent.wait_ready()
        assert served_version(agent.url)[0] == "1.0.0"
        (drop / "notes.txt").write_text("not a bundle")
        dropped(good, "a-good.esb")
        line = outcome("a-good.esb")
        assert line["event"] == "bundle_installed" and line["version"] == "1.1.0", line
        assert (drop / "installed" / "a-good.esb").is_file()
        version, y = served_version(agent.url)
        assert version == "1.1.0" and y is not None
        assert np.allclose(y, expected(version_bias("1.1.0"), GOLDEN_X), atol=1e-2)
        for src, name, why in ((tampered, "b-tampered.esb", "verification"),
                               (older, "c-older.esb", "offer rejected"),
                               (wrong, "d-other-model.esb", "other")):
            dropped(src, name)
            line = outcome(name)
            assert line["event"] == "bundle_rejected" and why in str(line["reason"]), line
            assert "1.1.0 stays active" in str(line["reason"])
            assert line["moved_to"] == str(drop / "rejected" / name)
            assert not (drop / name).exists() and (drop / "rejected" / name).is_file()
            assert served_version(agent.url)[0] == "1.1.0"
        time.sleep(3 * CHECK_S)  # a few more looks: nothing is tried again
        bundle_lines = [ln for ln in agent.log if str(ln.get("event", "")).startswith("bundle_")]
        assert [ln["file"] for ln in bundle_lines] == ["a-good.esb", "b-tampered.esb",
                                                       "c-older.esb", "d-other-model.esb"]
        assert (drop / "notes.txt").is_file()  # only *.esb files are taken
    finally:
        agent.terminate()
    assert active_of(cfg) == "1.1.0"
