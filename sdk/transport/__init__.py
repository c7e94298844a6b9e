"""edgeship.sdk.transport: moving bytes over MQTT.

The paho-mqtt edge (MQTT 5, QoS 1, reconnect with backoff), the chunk-transfer protocol
both ends of an OTA download speak, and a private mosquitto on loopback (``_broker``) for a
laptop, the demo and the tests. Imported by the agent and by ``sdk.fleet``.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "ChunkRequest": "edgeship.sdk.transport._transfer",
    "MqttEdge": "edgeship.sdk.transport._mqtt",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
