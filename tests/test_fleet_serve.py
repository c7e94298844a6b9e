"""The release server: servers in one $share group split the requests, answers go only to
the requester's own chunk topic, unknown files are refused; the broker command."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, wait_for_port
from edgeship.sdk.fleet._release_server import ReleaseServer
from edgeship.sdk.release._release import Release
from edgeship.sdk.transport._mqtt import Message, MqttEdge, request_topic, topics
from edgeship.sdk.transport._transfer import (
    ChunkRequest,
    chunk_count,
    decode_chunk,
    encode_request,
)
from test_agent_support import make_keys, make_release

from edgeship import TransportError


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    return make_release(tmp, make_keys(tmp), "1.0.0", seed=3)


class Device:
    """A bare MQTT client that asks for chunks the way the agent does."""

    def __init__(self, url: str, name: str) -> None:
        self.name, self.inbox = name, queue.Queue[Message]()
        self.topics = topics("t", name)
        self.edge = MqttEdge(url, client_id=name, subscriptions=[self.topics.chunk],
                             on_message=self.inbox.put)
        self.edge.start()
        assert self.edge.wait_connected(30)

    def ask(self, req: ChunkRequest, *, reply_to: str | None = None,
            legacy: bool = False, timeout: float = 30.0) -> Message | None:
        """Ask on this device's own request topic (``legacy``: the fleet-wide one); the
        answer, or None after ``timeout`` s (the tests that expect none pass a short one:
        an answer comes in milliseconds, or within seconds on a loaded machine)."""
        topic = request_topic("t") if legacy else request_topic("t", self.name)
        self.edge.publish(topic, encode_request(req),
                          response_topic=reply_to or self.topics.chunk, correlation=b"c")
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None


def test_two_servers_share_the_requests(mosquitto: Mosquitto, rel: Path) -> None:
    servers = [ReleaseServer(mosquitto.url, [rel], client_id=f"srv-{i}").start()
               for i in range(2)]
    for s in servers:
        assert s.edge.wait_connected(30)
    device = Device(mosquitto.url, "dev-9")
    art = Release.load(rel).manifest.artifact
    data = bytearray()
    try:
        for index in range(chunk_count(art.size, 256)):
            req = ChunkRequest(device="dev-9", model="model", version="1.0.0", file=art.name,
                               index=index, chunk_size=256)
            msg = device.ask(req)
            assert msg is not None and msg.correlation == b"c"
            data += decode_chunk(msg.payload, index=index, chunk_size=256,
                                 signed_size=art.size).data
    finally:
        device.edge.stop()
        for s in servers:
            s.stop()
    assert bytes(data) == (rel / art.name).read_bytes()
    counts = [s.requests for s in servers]
    assert sum(counts) == chunk_count(art.size, 256) and min(counts) > 0, counts


def msg_size(rel: Path) -> int:
    return Release.load(rel).manifest.artifact.size


def test_answers_only_the_requesters_topic_and_refuses_unknown_files(
        mosquitto: Mosquitto, rel: Path) -> None:
    server = ReleaseServer(mosquitto.url, [rel]).start()
    assert server.edge.wait_connected(30)
    device, other = Device(mosquitto.url, "dev-a"), Device(mosquitto.url, "dev-b")
    try:
        req = ChunkRequest(device="dev-a", model="model", version="1.0.0", file="model.onnx",
                           index=0, chunk_size=256)
        assert device.ask(req, reply_to=other.topics.chunk, timeout=2) is None  # not dev-a's own topic
        # a request naming dev-b on dev-a's request topic: not answered anywhere
        forged = ChunkRequest(device="dev-b", model="model", version="1.0.0", file="model.onnx",
                              index=0, chunk_size=300)
        assert device.ask(forged, reply_to=other.topics.chunk, timeout=2) is None
        assert device.ask(forged, timeout=2) is None
        assert other.inbox.empty()
        # an older agent asking on the fleet-wide topic is still answered on its own topic
        msg = device.ask(req, legacy=True)
        assert msg is not None and decode_chunk(msg.payload, index=0, chunk_size=256,
                                                signed_size=msg_size(rel)).index == 0
        assert other.inbox.empty()
        bad = ChunkRequest(device="dev-a", model="model", version="1.0.0",
                           file="keyset.json", index=0, chunk_size=256)
        msg = device.ask(bad)
        assert msg is not None
        with pytest.raises(TransportError, match=r"no file 'keyset\.json'"):
            decode_chunk(msg.payload, index=0, chunk_size=256, signed_size=10)
    finally:
        device.edge.stop()
        other.edge.stop()
        server.stop()


def test_push_without_devices_is_one_clear_error(mosquitto: Mosquitto, rel: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "push", str(rel),
                          "--broker", mosquitto.url, "--fleet", "t"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("error: no devices")
    out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "serve", "--broker",
                          mosquitto.url], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "release directory" in out.stderr


def test_broker_command_runs_and_stops_mosquitto() -> None:
    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeship", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"mqtt://127.0.0.1:{port}"
        wait_for_port(port)
        got: list[Any] = []
        edge = MqttEdge(f"mqtt://127.0.0.1:{port}", client_id="probe", on_message=got.append)
        edge.start()
        assert edge.wait_connected(30)
        edge.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    time.sleep(0.2)
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5)
