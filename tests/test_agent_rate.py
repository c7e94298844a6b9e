"""[ota] max_rate_kbps on a real agent: a 256 KiB artifact fetched through a real
mosquitto and `fleet serve` takes at least size / rate, and still installs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import Mosquitto, free_port
from test_agent_support import (
    AgentProc,
    Watcher,
    build_whole_release,
    make_keys,
    start_fleet_serve,
    write_config,
)


def test_download_rate_is_capped(mosquitto: Mosquitto, tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1, v2 = build_whole_release(tmp_path, keys, "1.0.0", 1.0), build_whole_release(tmp_path, keys, "2.0.0", 2.0)
    size = (v2 / "model.onnx").stat().st_size
    rate_kbps = 512.0  # 64 KB/s: the artifact needs >= 4 s
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, root_pub=keys / "root.pub",
                       initial=v1, chunk_size=16384)
    cfg.write_text(cfg.read_text().replace("[ota]\n", f"[ota]\nmax_rate_kbps = {rate_kbps}\n"))
    server = start_fleet_serve(mosquitto.url, v2)
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        watch.wait(lambda s: s["state"] == "committed" and s["version"] == "1.0.0")
        time.sleep(0.5)
        out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "push", str(v2),
                              "--broker", mosquitto.url, "--fleet", "t", "--devices", "dev-1"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        final = watch.wait(lambda s: s["state"] == "committed" and s["version"] == "2.0.0",
                           timeout=120)
        # the download's time by the agent's own clock (its statuses' ts): this test hears
        # them a little late, and on a loaded machine the start later than the end
        states = [(s["ts"], s["state"]) for s in watch.history if s.get("target") == "2.0.0"]
        began = next(ts for ts, state in states if state == "downloading")
        took = next(ts for ts, state in states if ts > began and state != "downloading") - began
    finally:
        watch.close()
        agent.terminate()
        server.terminate()
        server.wait(timeout=10)
    assert final["error"] is None
    floor = size * 8 / (rate_kbps * 1000)
    assert size > 256 * 1024 and took >= 0.85 * floor, (took, floor)
    print(f"{size} bytes at <= {rate_kbps:g} kbit/s: {took:.1f} s (floor {floor:.1f} s)")
