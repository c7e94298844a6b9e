"""A restart serves its active slot before the OTA machinery exists (issue 16: start to
first answer), checked as strictly as before, and loaded once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from test_agent_support import (
    GOLDEN_X,
    AgentProc,
    expected,
    make_keys,
    make_release,
    served_version,
    write_config,
)


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, int]:
    """A device that installed its initial release once (no broker) and stopped."""
    keys = make_keys(tmp_path)
    rel = make_release(tmp_path, keys, "1.0.0")
    port = free_port()
    cfg = write_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", port=port,
                       root_pub=keys / "root.pub", initial=rel)
    first = AgentProc(cfg, port).start()
    try:
        first.wait_ready()
        first.wait_log(lambda line: line.get("event") == "serving")
    finally:
        assert first.terminate() == 0
    return cfg, port


def test_a_restart_serves_the_active_slot_loaded_once(installed: tuple[Path, int]) -> None:
    cfg, port = installed
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        line = agent.wait_log(lambda line: line.get("event") == "serving")
        assert line["version"] == "1.0.0" and line["loaded_at_start"] is True
        version, y = served_version(agent.url)
        assert version == "1.0.0"
        np.testing.assert_allclose(y, expected(100.0, GOLDEN_X), rtol=1e-5)
        statuses = [x for x in agent.log if x.get("event") == "status"]
        assert statuses and statuses[-1]["state"] == "committed"
    finally:
        assert agent.terminate() == 0
    assert sum(x.get("event") == "serving" for x in agent.log) == 1


def test_a_slot_changed_on_disk_is_not_served_at_start(installed: tuple[Path, int]) -> None:
    """The early load checks the slot against the sha256 the state names, as the OTA
    core's load does: a changed model never answers."""
    cfg, port = installed
    slot = cfg.parent / "data-dev-1" / "slots" / "a" / "model.onnx"
    data = bytearray(slot.read_bytes())
    data[-1] ^= 0xFF
    slot.write_bytes(bytes(data))
    agent = AgentProc(cfg, port).start()
    try:
        failed = agent.wait_log(lambda line: line.get("event") == "load_failed")
        assert "does not hold the verified 1.0.0" in failed["error"]
        assert served_version(agent.url) == (None, None)
    finally:
        assert agent.terminate() == 0
    assert not any(x.get("event") == "serving" for x in agent.log)


def test_the_first_answer_needs_no_ota_core(installed: tuple[Path, int]) -> None:
    """What the boot imports to serve: no OTA core, events, release checks or MQTT."""
    cfg, _ = installed
    code = (
        "import sys\n"
        "from edgeship.agent._boot import Boot\n"
        "from edgeship.agent._config import load_config\n"
        f"boot = Boot(load_config({str(cfg)!r}))\n"
        "boot.serve()\n"
        "assert boot.service.serving is not None and boot.service.serving.version == '1.0.0'\n"
        "import json, threading, time, urllib.request\n"
        "from test_agent_support import GOLDEN_X, infer_body\n"
        "req = urllib.request.Request(boot.api.url + '/v2/models/model/infer', "
        "data=json.dumps(infer_body(GOLDEN_X)).encode(), headers={'Content-Type': 'application/json'})\n"
        "threading.Timer(0.5, lambda: urllib.request.urlopen(req, timeout=10).read()).start()\n"
        "began = time.monotonic()\n"
        "boot.wait_first_answer(30.0)  # the OTA machinery waits for the first answer\n"
        "assert 0.4 < time.monotonic() - began < 10, time.monotonic() - began\n"
        "assert boot._answered not in boot.service.taps\n"
        "print(','.join(m for m in ('edgeship.agent._ota', 'edgeship.agent._ota_types', "
        "'edgeship.agent._daemon', 'edgeship.sdk.release._manifest', "
        "'edgeship.sdk.release._trust', 'edgeship.sdk.transport._transfer', 'paho') "
        "if m in sys.modules))\n"
        "boot.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
