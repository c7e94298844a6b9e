"""Issue 16, defects 7 and 8: what a flood on a device's topics costs. A real agent and a
real broker: every rejected message leaves one structured line, rate-limited (garbage on
the chunk topic, a 4.5 MiB offer, a forged chunk); a flood of rejected offers writes
nothing to the flash and a legitimate offer is not stuck behind it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from edgeship.sdk.transport._transfer import encode_chunk
from test_agent_support import (
    AgentProc,
    Watcher,
    make_keys,
    make_release,
    offer_bytes,
    write_config,
)

OFFER, CHUNK = "edgeship/t/dev-1/ota/offer", "edgeship/t/dev-1/ota/chunk"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("floods")
    keys = make_keys(tmp)
    return {"root": keys / "root.pub", "v0": make_release(tmp, keys, "1.0.0"),
            "v1": make_release(tmp, keys, "1.0.1", seed=1),
            "other": make_release(tmp, keys, "1.0.2", name="other")}


def _rejected(agent: AgentProc, topic: str) -> list[dict[str, Any]]:
    return [line for line in agent.log
            if line.get("event") == "message_rejected" and line.get("topic") == topic]


def test_rejected_messages_are_logged_rate_limited(tmp_path: Path, mosquitto: Mosquitto,
                                                   releases: dict[str, Any]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=releases["root"], initial=releases["v0"])
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        watch.publish(CHUNK, b"garbage on the chunk topic")
        line = agent.wait_log(lambda x: x.get("event") == "message_rejected", timeout=60)
        assert line["topic"] == "chunk" and line["bytes"] == 26
        watch.publish(OFFER, b"{" + b" " * (4_500_000) + b"}")
        line = agent.wait_log(lambda x: x.get("event") == "message_rejected", timeout=60)
        assert line["topic"] == "offer" and line["bytes"] > 4_000_000, line
        # a download that no server answers; a forged chunk 0 (its digest does not match)
        watch.publish(OFFER, offer_bytes(releases["v1"]))
        watch.wait(lambda s: s["state"] == "downloading", timeout=60)
        forged = bytearray(encode_chunk(0, 0, 4000, b"x" * 4000))
        forged[-1] ^= 1
        watch.publish(CHUNK, bytes(forged))
        line = agent.wait_log(lambda x: x.get("event") == "message_rejected", timeout=60)
        # without the transfer's correlation (its nonce) it is not even decoded
        assert line["topic"] == "chunk" and line["reason"] == "answers another request", line
        # a flood of 500 garbage chunks: a bounded number of lines, the count kept
        for _ in range(500):
            watch.edge.publish(CHUNK, b"garbage")
        time.sleep(3)
    finally:
        watch.close()
        agent.terminate()
    lines = _rejected(agent, "chunk")
    assert 3 <= len(lines) <= 25, len(lines)
    assert sum(x["suppressed_before"] for x in lines) > 400 or len(lines) < 25


def _io(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def test_a_flood_of_refused_offers_writes_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                  releases: dict[str, Any]) -> None:
    """1 000 refused offers a second (a release for another model, and garbage): state.json
    is not rewritten, the agent makes few write calls, and a legitimate offer published in
    the middle of the flood is taken at once."""
    from test_agent_support import start_fleet_serve

    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=releases["root"], initial=releases["v0"])
    agent = AgentProc(cfg, port).start()
    server = start_fleet_serve(mosquitto.url, releases["v1"])
    watch = Watcher(mosquitto.url)
    state = tmp_path / "data-dev-1" / "state.json"
    bad = [offer_bytes(releases["other"]), b'{"type": "edgeship-offer", "manifest": 1}']
    try:
        agent.wait_ready()
        watch.wait(lambda s: s["state"] == "committed")
        time.sleep(1.0)
        assert agent.proc is not None
        before, io_before = state.stat(), _io(agent.proc.pid)
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 2.5:  # 1 000 a second
            watch.edge.publish(OFFER, bad[sent % 2])
            sent += 1
            time.sleep(max(0.0, start + sent / 1000 - time.monotonic()))
        time.sleep(0.5)
        after, io_after = state.stat(), _io(agent.proc.pid)
        legit_at = time.monotonic()
        watch.publish(OFFER, offer_bytes(releases["v1"]), retain=True)
        while time.monotonic() - start < 5.0:  # the flood goes on
            watch.edge.publish(OFFER, bad[sent % 2])
            sent += 1
            time.sleep(max(0.0, start + sent / 1000 - time.monotonic()))
        legit_wall = time.time() - (time.monotonic() - legit_at)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                s["version"] == "1.0.1" and s["state"] == "committed" for s in watch.history):
            time.sleep(0.1)
        taken = [s for s in watch.history if s["target"] == "1.0.1"]
        assert taken and any(s["state"] == "committed" for s in taken), watch.history[-3:]
        taken_s = taken[0]["ts"] - legit_wall
    finally:
        watch.close()
        agent.terminate()
        server.terminate()
        server.wait(timeout=10)
    writes = io_after["syscw"] - io_before["syscw"]
    written = io_after["wchar"] - io_before["wchar"]
    print(f"{sent} refused offers: {writes} write calls, {written} bytes written during the "
          f"first 2.5 s; legitimate offer taken after {taken_s:.2f} s")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert writes < 300, writes
    assert taken_s < 3.0


def test_another_devices_requests_cannot_abort_an_update(tmp_path: Path, mosquitto: Mosquitto,
                                                         releases: dict[str, Any]) -> None:
    """Issue 16, defect 5: while dev-1 downloads, another client keeps asking the release
    server for dev-1's chunks with another chunk size, answered on dev-1's chunk topic and
    with the correlation dev-1 would use (without its random nonce). dev-1 drops them
    (logged) and its update commits."""
    from edgeship.sdk.release._manifest import Manifest
    from edgeship.sdk.release._trust import Offer
    from edgeship.sdk.transport._transfer import ChunkRequest, encode_request
    from test_agent_support import start_fleet_serve

    offer = offer_bytes(releases["v1"])
    manifest = Manifest.from_dict(Offer.from_bytes(offer).manifest["signed"])
    art = manifest.artifact
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, chunk_size=256,
                       root_pub=releases["root"], initial=releases["v0"])
    pause = tmp_path / "pause"
    pause.write_text("chunk=0.05")
    agent = AgentProc(cfg, port, env={"EDGESHIP_AGENT_PAUSE_FILE": str(pause)}).start()
    server = start_fleet_serve(mosquitto.url, releases["v1"])
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        watch.publish(OFFER, offer, retain=True)
        watch.wait(lambda s: s["state"] == "downloading", timeout=60)
        stop = time.monotonic() + 120  # ~30 s under load: 0.05 s a 256 B chunk
        while time.monotonic() < stop and not any(
                s["state"] in ("committed", "failed") and s["target"] == "1.0.1"
                for s in watch.history):
            for index in range(art.size // 300):
                forged = ChunkRequest(device="dev-1", model="model", version="1.0.1",
                                      file=art.name, index=index, chunk_size=300)
                for corr in (f"1.0.1/{art.name}/{index}".encode(),
                             f"1.0.1/{art.name}/{index}/256".encode()):
                    for topic in ("edgeship/t/ota/req", "edgeship/t/dev-1/ota/req"):
                        watch.edge.publish(topic, encode_request(forged),
                                           response_topic=CHUNK, correlation=corr)
            time.sleep(0.05)
        final = [s for s in watch.history if s["state"] in ("committed", "failed")
                 and s["target"] == "1.0.1"]
        assert final and final[0]["state"] == "committed", final[:1]
    finally:
        watch.close()
        agent.terminate()
        server.terminate()
        server.wait(timeout=10)
    assert _rejected(agent, "chunk"), "the forged answers were dropped without a trace"


def test_a_stalled_download_is_reported_then_resumes(tmp_path: Path, mosquitto: Mosquitto,
                                                     releases: dict[str, Any]) -> None:
    """Issue 16, defect 9: no release server answers: the status says the download is
    stalled (and a line is logged); once a server is back the update completes."""
    from test_agent_support import start_fleet_serve

    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=releases["root"], initial=releases["v0"])
    agent = AgentProc(cfg, port).start()
    watch = Watcher(mosquitto.url)
    server = None
    try:
        agent.wait_ready()
        watch.publish(OFFER, offer_bytes(releases["v1"]), retain=True)
        status = watch.wait(lambda s: "stalled" in (s["error"] or ""), timeout=30)
        assert status["state"] == "downloading", status
        agent.wait_log(lambda x: x.get("event") == "download_stalled", timeout=60)
        server = start_fleet_serve(mosquitto.url, releases["v1"])
        watch.wait(lambda s: s["version"] == "1.0.1" and s["state"] == "committed", timeout=60)
    finally:
        watch.close()
        agent.terminate()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


def test_a_sibling_server_without_the_file_does_not_fail_the_update(
        tmp_path: Path, mosquitto: Mosquitto, releases: dict[str, Any]) -> None:
    """Issue 16, defect 9: two release servers share the requests and one lacks the file:
    its "no file" answers are retried (the sibling has it), every update commits."""
    from test_agent_support import start_fleet_serve

    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port, chunk_size=512,
                       root_pub=releases["root"], initial=releases["v0"])
    agent = AgentProc(cfg, port).start()
    servers = [start_fleet_serve(mosquitto.url, releases["v1"]),
               start_fleet_serve(mosquitto.url, releases["other"])]
    watch = Watcher(mosquitto.url)
    try:
        agent.wait_ready()
        time.sleep(1.0)  # both servers subscribed
        watch.publish(OFFER, offer_bytes(releases["v1"]), retain=True)
        watch.wait(lambda s: s["target"] == "1.0.1" and s["state"] in ("committed", "failed"),
                   timeout=60)
        final = watch.latest["dev-1"]
        assert final["state"] == "committed", final
    finally:
        watch.close()
        agent.terminate()
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    refused = [x for x in _rejected(agent, "chunk") if "refused" in x["reason"]]
    assert refused, "the sibling without the file was never asked: the test proves nothing"


def test_status_is_published_again_after_the_broker_lost_it(
        tmp_path: Path, mosquitto: Mosquitto, releases: dict[str, Any]) -> None:
    """Repeated statuses are not re-sent (floods), but after a reconnect the same status
    goes out again: a restarted broker without persistence lost the retained one."""
    port = free_port()
    cfg = write_config(tmp_path, broker_url=mosquitto.url, port=port,
                       root_pub=releases["root"], initial=releases["v0"])
    agent = AgentProc(cfg, port).start()
    try:
        agent.wait_ready()
        watch = Watcher(mosquitto.url)
        watch.wait(lambda s: s["state"] == "committed")
        watch.close()
        mosquitto.stop()
        time.sleep(1.0)
        mosquitto.start()
        watch = Watcher(mosquitto.url)  # sees only what is retained now, or sent later
        try:
            status = watch.wait(lambda s: s["state"] == "committed", timeout=20)
            assert status["version"] == "1.0.0"
        finally:
            watch.close()
    finally:
        agent.terminate()
