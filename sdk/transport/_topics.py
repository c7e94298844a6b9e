"""The design's MQTT topics, an incoming message and a broker URL: no paho here, so the
agent knows its topics (and checks its broker URL) at start without importing paho-mqtt,
which it imports only once its model answers (issue 16: start to first answer)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from edgeship._errors import ConfigError

__all__ = ["Message", "Topics", "parse_broker_url", "request_topic", "requester", "topics"]


@dataclass(frozen=True)
class Topics:
    """The per-device topics of the design."""

    offer: str
    chunk: str
    status: str
    telemetry: str


def topics(fleet: str, device: str) -> Topics:
    base = f"edgeship/{fleet}/{device}"
    return Topics(offer=f"{base}/ota/offer", chunk=f"{base}/ota/chunk",
                  status=f"{base}/status", telemetry=f"{base}/telemetry")


def request_topic(fleet: str, device: str | None = None, *,
                  share_group: str | None = None) -> str:
    """Where a device asks for chunks: its own ``edgeship/<fleet>/<device>/ota/req`` (the
    broker's ACL lets only that device publish there, so a server knows who asked), or
    with no device the fleet-wide ``edgeship/<fleet>/ota/req`` older agents use. ``device``
    may be ``+`` (a server's filter); with a group, the ``$share/`` form servers subscribe
    to."""
    topic = f"edgeship/{fleet}/{device}/ota/req" if device else f"edgeship/{fleet}/ota/req"
    return f"$share/{share_group}/{topic}" if share_group else topic


def requester(topic: str) -> tuple[str, str | None] | None:
    """``(fleet, device)`` of a chunk request's topic (device None: the fleet-wide topic
    of older agents); None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "edgeship" and parts[2:] == ["ota", "req"]:
        return parts[1], None
    if len(parts) == 5 and parts[0] == "edgeship" and parts[3:] == ["ota", "req"]:
        return parts[1], parts[2]
    return None


@dataclass(frozen=True)
class Message:
    """An incoming message with the MQTT 5 request/response properties."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:1883]`` / ``mqtts://host[:8883]`` -> ``(host, port, tls)``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker url {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker url {url!r}: {exc}") from exc
    return parts.hostname, port, tls
