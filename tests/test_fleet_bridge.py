"""Site brokers: devices connected to a site mosquitto bridged to a central mosquitto
(the factory / store topology) update exactly as if connected to the central broker.
`fleet serve`, `fleet push` and `fleet status` talk to the central broker only; the
offers (retained), the chunk requests (MQTT 5 response topic and correlation data, to a
$share group) and the answers and statuses cross the bridge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port
from simulator import SwarmProc
from test_agent_support import make_keys, make_release

from edgeship._cli.broker import LocalBroker

FLEET = "store"
SITE_A = [f"a-{i:02d}" for i in range(5)]
SITE_B = [f"b-{i:02d}" for i in range(5)]


def bridge_to(central: LocalBroker, name: str) -> str:
    # MQTT 5 on the bridge keeps the response topic and correlation data of chunk
    # requests; try_private stops messages looping back over it
    return (f"connection {name}\naddress 127.0.0.1:{central.port}\n"
            "bridge_protocol_version mqttv50\ntry_private true\ncleansession true\n"
            "topic edgeship/# both 1\n")


def edgeship(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_devices_behind_bridged_site_brokers_update(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    v1 = make_release(tmp_path, keys, "1.0.0")
    v2 = make_release(tmp_path, keys, "1.1.0", base=v1)
    central = LocalBroker(free_port()).start()
    sites = [LocalBroker(free_port(), extra_config=bridge_to(central, f"site-{n}")).start()
             for n in ("a", "b")]
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                               central.url, "--fleet", FLEET, "--releases", str(v2)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    swarms = [SwarmProc(broker_url=site.url, fleet=FLEET, root=keys / "root.pub", initial=v1,
                        devices=devs, chunk_size=512, request_timeout_s=1.0)
              for site, devs in zip(sites, (SITE_A, SITE_B), strict=True)]
    try:
        for sim, devs in zip(swarms, (SITE_A, SITE_B), strict=True):
            assert sim.wait_ready() == len(devs)
        # the central broker sees every device of both sites (once the bridges, which
        # connect on their own schedule, have forwarded their statuses)
        deadline = time.monotonic() + 60
        while True:
            out = edgeship("fleet", "status", "--broker", central.url, "--fleet", FLEET,
                           "--json", "--db", f"sqlite:///{tmp_path / 'fleet.sqlite'}")
            assert out.returncode == 0, out.stderr
            seen = {d["device"]: d["version"] for d in json.loads(out.stdout)["devices"]}
            if len(seen) == len(SITE_A + SITE_B) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seen == dict.fromkeys(SITE_A + SITE_B, "1.0.0")
        out = edgeship("fleet", "push", str(v2), "--broker", central.url, "--fleet", FLEET,
                       "--db", f"sqlite:///{tmp_path / 'fleet.sqlite'}", "--canary", "10%",
                       "--waves", "50%,100%", "--wave-timeout", "90", "--wait", "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["status"] == "completed" and rep["counts"]["committed"] == 10
        # the sites' devices got their chunks through the bridge: a delta each
        counters = [sim.stop() for sim in swarms]
        assert [c["versions"] for c in counters] == [{"1.1.0": 5}, {"1.1.0": 5}]
        assert all(c["msgs_in"] > 5 for c in counters)  # offer + chunk answers arrived
    finally:
        for sim in swarms:
            if sim.proc.poll() is None:
                sim.stop()
        server.terminate()
        server.wait(timeout=10)
        for broker in (*sites, central):
            broker.stop()
