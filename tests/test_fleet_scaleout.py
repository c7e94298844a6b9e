"""Scale-out: three `edgeship fleet serve` processes share the chunk requests through one
`$share/` group; one is SIGKILLed while 20 simulated devices are mid-download, and the
rollout still completes (the devices re-ask for chunks that were in flight)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Mosquitto
from edgeship.sdk.fleet._fleetstatus import FleetWatcher
from simulator import SwarmProc
from test_agent_support import build_whole_release, make_keys

FLEET = "big"
DEVICES = [f"dev-{i:04d}" for i in range(20)]
CHUNK = 4096




def test_rollout_completes_when_a_release_server_dies(mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1, v2 = build_whole_release(tmp_path, keys, "1.0.0", 1.0), build_whole_release(tmp_path, keys, "2.0.0", 2.0)
    servers = [subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", mosquitto.url,
         "--fleet", FLEET, "--releases", str(v2)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3)]
    sim = SwarmProc(broker_url=mosquitto.url, fleet=FLEET, root=keys / "root.pub", initial=v1,
                    devices=DEVICES, chunk_size=CHUNK, request_timeout_s=3.0)
    watcher = FleetWatcher(mosquitto.url, FLEET, telemetry=False)
    try:
        assert sim.wait_ready() == len(DEVICES)
        time.sleep(1.0)  # let the three servers subscribe
        watcher.start()
        push = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "fleet", "push", str(v2), "--broker",
             mosquitto.url, "--fleet", FLEET, "--devices", ",".join(DEVICES), "--wait",
             "--json", "--wave-timeout", "90", "--state", str(tmp_path / "state.sqlite")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _mid_download(watcher):
            time.sleep(0.02)
        assert _mid_download(watcher), "the download never got under way"
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait()
        out, err = push.communicate(timeout=120)
        assert push.returncode == 0, err
        rep = json.loads(out)
        assert rep["status"] == "completed" and rep["counts"]["committed"] == len(DEVICES)
        # this watcher hears the statuses on its own session: maybe after the push did
        deadline = time.monotonic() + 60
        while not all((s := watcher.statuses().get(d)) is not None and s.version == "2.0.0"
                      for d in DEVICES) and time.monotonic() < deadline:
            time.sleep(0.05)
        final = watcher.statuses()
        assert all(final[d].version == "2.0.0" for d in DEVICES)
    finally:
        watcher.stop()
        counters = sim.stop()
        served = 0
        for proc in servers[1:]:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            found = re.search(r"served (\d+) chunks", err)
            served += int(found.group(1)) if found else 0
    # every device fetched all 64+ chunks; the two survivors sent only part of them, so
    # the killed server had its share of the requests before it died
    from edgeship.sdk.release._release import Release

    chunks = -(-Release.load(v2).manifest.artifact.size // CHUNK)
    assert chunks >= 64
    assert counters["versions"] == {"2.0.0": len(DEVICES)}
    assert 0 < served < len(DEVICES) * chunks, (served, len(DEVICES) * chunks)
    print(f"survivors served {served} of {len(DEVICES) * chunks} chunks")


def _mid_download(watcher: FleetWatcher) -> bool:
    statuses = watcher.statuses().values()
    return sum(1 for s in statuses if s.state == "downloading" and s.progress
               and s.progress.get("chunks", 0) >= 16) >= 3
