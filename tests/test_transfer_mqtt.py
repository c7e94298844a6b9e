"""The MQTT edge on a real broker: driven by an external loop (no paho thread), request/
response properties, reconnect with backoff after the broker comes back."""

from __future__ import annotations

import time
from typing import Any

from conftest import Mosquitto
from edgeship.sdk._mqtt import Message, MqttEdge


def _drive(edges: list[MqttEdge], until: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        for edge in edges:
            edge.poll(0.01)


def test_external_loop_request_response_and_reconnect(mosquitto: Mosquitto) -> None:
    got: list[Message] = []
    server_in: list[Message] = []
    client = MqttEdge(mosquitto.url, client_id="c", subscriptions=["x/reply"],
                      on_message=got.append, min_backoff=0.1, max_backoff=0.5)
    server = MqttEdge(mosquitto.url, client_id="s", subscriptions=["x/req"],
                      on_message=server_in.append, min_backoff=0.1, max_backoff=0.5)
    edges = [client, server]
    _drive(edges, lambda: client.connected and server.connected)
    assert client.publish("x/req", b"ping", response_topic="x/reply", correlation=b"42")
    _drive(edges, lambda: bool(server_in))
    req = server_in[0]
    assert req.response_topic == "x/reply" and req.correlation == b"42"
    server.publish(req.response_topic, b"pong", correlation=req.correlation)
    _drive(edges, lambda: bool(got))
    assert got[0].payload == b"pong" and got[0].correlation == b"42"

    mosquitto.stop()
    _drive(edges, lambda: not client.connected and not server.connected)
    assert client.publish("x/req", b"lost") is None  # offline: the caller decides
    mosquitto.start()
    _drive(edges, lambda: client.connected and server.connected, timeout=15)
    assert client.connects == 2 and server.connects == 2  # re-subscribed by itself
    client.publish("x/req", b"again", response_topic="x/reply")
    _drive(edges, lambda: len(server_in) == 2)
    assert server_in[1].payload == b"again"
