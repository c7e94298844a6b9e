"""Issue 16, defect 11: a typo'd section is not silent. ``edgeship agent check`` validates
a config (non-zero on errors); ``agent run`` warns about an unknown section on stderr at
start; a broker that cannot be reached is logged at once and then with backoff."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from test_agent_support import AgentProc, make_keys, make_release, write_config


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("check")
    keys = make_keys(tmp)
    return {"root": keys / "root.pub", "rel": make_release(tmp, keys, "1.0.0")}


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", "agent", "check", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)


def _config(tmp: Path, release: dict[str, Any], url: str = "mqtt://127.0.0.1:1") -> Path:
    return write_config(tmp, broker_url=url, port=free_port(), root_pub=release["root"],
                        initial=release["rel"])


def _typo(cfg: Path) -> Path:
    cfg.write_text(cfg.read_text().replace("[broker]", "[brokr]"))
    return cfg


def test_check_passes_a_good_config(tmp_path: Path, release: dict[str, Any]) -> None:
    done = _check(_config(tmp_path, release))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok:")


def test_check_fails_a_typod_section(tmp_path: Path, release: dict[str, Any]) -> None:
    done = _check(_typo(_config(tmp_path, release)))
    assert done.returncode != 0
    assert "unknown section [brokr] (did you mean [broker]?)" in done.stderr


def test_check_lists_every_error(tmp_path: Path, release: dict[str, Any]) -> None:
    cfg = _config(tmp_path, release)
    (tmp_path / "bad.pub").write_text("not a key")
    cfg.write_text(cfg.read_text().replace(str(release["root"]), str(tmp_path / "bad.pub"))
                   .replace(str(release["rel"]), str(tmp_path / "no-such-release"))
                   + "\n[telemetry_]\nx = 1\n")
    done = _check(cfg)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, done.stderr  # root key, initial release, [telemetry_]
    assert any("root_key" in e for e in errors) and any("telemetry_" in e for e in errors)


def test_check_fails_a_bad_value(tmp_path: Path, release: dict[str, Any]) -> None:
    cfg = _config(tmp_path, release)
    cfg.write_text(cfg.read_text().replace("chunk_size = 4096", "chunk_size = 0"))
    done = _check(cfg)
    assert done.returncode != 0 and "ota.chunk_size" in done.stderr


def test_run_warns_about_a_typod_section_and_an_unreachable_broker(
        tmp_path: Path, release: dict[str, Any], mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = _typo(write_config(tmp_path, broker_url="mqtt://127.0.0.1:1", port=port,
                             root_pub=release["root"], initial=release["rel"]))
    cfg.write_text(cfg.read_text().replace("[brokr]\n", f'[broker]\nurl = "{mosquitto.url}"\n'
                                           "[brokr]\n"))
    mosquitto.stop()  # the broker is down when the agent starts
    agent = AgentProc(cfg, port).start()
    try:
        warning = agent.wait_log(lambda line: line.get("event") == "config_section_unknown",
                                 timeout=60)
        assert warning["level"] == "warning" and "[broker]" in warning["message"]
        first = agent.wait_log(lambda line: line.get("event") == "broker_unreachable",
                               timeout=60)
        # tried at once when its model serves (it installs and health-checks the initial
        # release first: seconds on a loaded machine), by the agent's own clock
        before = agent.log[:agent.log.index(first)]
        serving = [line for line in before if line.get("event") == "serving"]
        assert serving and first["ts"] - serving[-1]["ts"] < 5, before[-3:]
        time.sleep(8)
        lines = [line for line in agent.log if line.get("event") == "broker_unreachable"]
        assert 2 <= len(lines) <= 5, lines  # 0, 1, 2, 4 s ...: not one a try, not silent
        mosquitto.start()
        agent.wait_log(lambda line: line.get("event") == "broker_connected", timeout=30)
    finally:
        agent.terminate()


def test_expired_initial_release_is_said_in_status_logs_and_503(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Issue 16, defect 12: a device imaged with a release that expired on the shelf."""
    from datetime import datetime, timedelta, timezone

    from edgeship.sdk.release._release import Release
    from test_agent_support import GOLDEN_X, Watcher, http_json, infer_body, make_golden, make_model

    keys = make_keys(tmp_path)
    work = tmp_path / "build"
    model = make_model(work / "model.onnx", 100.0)
    golden = make_golden(work / "golden.npz", 100.0)
    rel = tmp_path / "expired"
    Release.build(model, version="1.0.0", keydir=keys, out=rel, golden=golden,
                  model_name="model", expires_days=30,
                  now=datetime.now(timezone.utc) - timedelta(days=40))
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=keys / "root.pub", initial=rel)
    watch = Watcher(mosquitto.url)
    agent = AgentProc(cfg, port).start()
    try:
        line = agent.wait_log(lambda x: x.get("event") == "initial_release_rejected")
        assert "Expired" in line["error"], line
        status = watch.wait(lambda s: s["state"] == "failed", timeout=60)
        assert "initial release" in status["error"] and "Expired" in status["error"]
        code, doc = http_json(f"{agent.url}/v2/models/model/infer", infer_body(GOLDEN_X))
        assert code == 503 and "initial release 1.0.0 was refused" in doc["error"], doc
    finally:
        watch.close()
        agent.terminate()
