"""The MQTT edge shared by the agent and the fleet tools: paho-mqtt 2, MQTT 5, QoS 1.

:class:`MqttEdge` is one MQTT session that reconnects by itself with exponential backoff
and re-subscribes on every (re)connect (sessions start clean, so nothing stale is
replayed by the broker). It runs either on paho's own thread (:meth:`MqttEdge.start`) or
is driven by the caller's loop (:meth:`MqttEdge.poll`, or ``socket``/``loop_read``/
``loop_write``/``loop_misc`` for a select loop over many sessions). paho's exceptions and
return codes stop here: callers see :class:`~edgeship.TransportError` or a boolean.

Topics are fixed by the design (see :func:`topics`).
"""

from __future__ import annotations

import contextlib
import random
import socket as _socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from edgeship.sdk.transport._tls import tls_files_error
from edgeship.sdk.transport._topics import (
    Message,
    Topics,
    parse_broker_url,
    request_topic,
    requester,
    topics,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeship._errors import TransportError

__all__ = ["Message", "MqttEdge", "Topics", "parse_broker_url", "request_topic", "requester",
           "topics"]

MAX_PAYLOAD = 4 * 1024 * 1024 + 64 * 1024  # an offer (<= 4 MiB, golden data inside) or a chunk


class MqttEdge:
    """One MQTT 5 session; see the module docstring."""

    def __init__(self, url: str, *, client_id: str, subscriptions: Sequence[str] = (),
                 on_message: Callable[[Message], None] | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[str], None] | None = None,
                 on_connect_fail: Callable[[str], None] | None = None,
                 on_oversize: Callable[[str, int], None] | None = None,
                 username: str = "", password: str = "", ca: str = "", cert: str = "",
                 key: str = "", keepalive: int = 30, min_backoff: float = 0.25,
                 max_backoff: float = 10.0, will: tuple[str, bytes, bool] | None = None,
                 subscribe_qos: int = 1, mqtt311: bool = False) -> None:
        self.host, self.port, tls = parse_broker_url(url)
        self.client_id, self.keepalive = client_id, keepalive
        self.subscriptions = list(subscriptions)
        # 0 for a reader of many retained topics: a broker queues at most
        # max_queued_messages (mosquitto: 1000) QoS 1 messages per client, drops the rest
        self.subscribe_qos = subscribe_qos
        # MQTT 3.1.1 for a session that needs no MQTT 5 properties (no request/response):
        # paho decodes each message with a third less work (a watcher of 10 000 devices)
        self.mqtt311 = mqtt311
        self._on_message, self._on_connect, self._on_disconnect = on_message, on_connect, on_disconnect
        self._on_connect_fail = on_connect_fail  # a connect attempt failed (refused, timeout...)
        self._on_oversize = on_oversize  # (topic, bytes) of a message dropped for its size
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._backoff, self._next_try, self._started = min_backoff, 0.0, False
        self._connected = threading.Event()
        self.connects = 0  # successful connections so far (reconnects = connects - 1)
        if mqtt311:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5)
        if username:
            client.username_pw_set(username, password or None)
        if tls:
            try:
                client.tls_set(ca_certs=ca or None, certfile=cert or None, keyfile=key or None,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:  # paho reads the files here
                raise tls_files_error(ca, cert, key, exc) from exc
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=will[2])
        client.reconnect_delay_set(max(1, int(min_backoff)), max(1, int(max_backoff)))
        client.max_inflight_messages_set(100)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        self._pending_subs: set[int] = set()
        self.client = client

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the client is connected now."""
        return self._connected.is_set()

    def start(self) -> MqttEdge:
        """Connect in the background on paho's thread; reconnects forever with backoff."""
        self._started = True
        self.client.connect_async(self.host, self.port, self.keepalive,
                                  clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY
                                  if self.mqtt311 else True)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the connection; True once connected."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect and stop the network loop."""
        try:
            self.client.disconnect()
        finally:
            if self._started:
                self.client.loop_stop()
        self._connected.clear()

    # -- driven by an external loop -------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> None:
        """One round of I/O when the caller owns the loop (instead of :meth:`start`)."""
        if self.client.socket() is None:  # no connection (yet): try when the backoff allows
            if time.monotonic() < self._next_try:
                time.sleep(timeout)
                return
            self._try_connect()
            if self.client.socket() is None:
                return
        rc = self.client.loop(timeout)
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self._connected.clear()
            self._schedule_retry()

    def connect_now(self) -> None:
        """Start a connection attempt if there is none and the backoff allows one, without
        paho's own ``select`` (a caller's epoll loop over thousands of sessions: ``select``
        fails on descriptors above 1023); the handshake goes on in ``loop_read``/``write``."""
        if self.client.socket() is None and time.monotonic() >= self._next_try:
            self._try_connect()

    def _try_connect(self) -> None:
        try:
            self.client.connect(self.host, self.port, self.keepalive,
                                clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY
                                if self.mqtt311 else True)
            self._backoff = self.min_backoff
        except (TimeoutError, OSError, ssl.SSLError):
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        jitter = random.uniform(0.8, 1.2)  # so that a fleet does not reconnect in lockstep
        self._next_try = time.monotonic() + self._backoff * jitter
        self._backoff = min(self.max_backoff, self._backoff * 2)

    def socket(self) -> Any:
        """The client's socket, for a caller that runs its own select loop."""
        return self.client.socket()

    def want_write(self) -> bool:
        """Whether the client has data to write (select on writable)."""
        return bool(self.client.want_write())

    def loop_read(self) -> None:
        """Read from the socket (own select loop)."""
        self.client.loop_read()

    def loop_write(self) -> None:
        """Write to the socket (own select loop)."""
        self.client.loop_write()

    def loop_misc(self) -> None:
        """Keepalive and retries (own select loop, about once a second)."""
        self.client.loop_misc()

    # -- messages -------------------------------------------------------------------------
    def subscribe(self, topic: str) -> None:
        """Subscribe now (if connected) and on every reconnect."""
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
        if self.connected:
            self.client.subscribe(topic, qos=self.subscribe_qos)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                response_topic: str | None = None, correlation: bytes | None = None,
                expiry_s: int | None = None) -> paho.MQTTMessageInfo | None:
        """Publish if connected; None when offline (the caller decides to queue or drop).

        Publishing only while connected keeps paho from queueing stale requests that it
        would send after a reconnect in addition to the fresh ones.
        """
        if not self.connected:
            return None
        props = None
        if response_topic or correlation or expiry_s:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
            if expiry_s:
                props.MessageExpiryInterval = expiry_s
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except (ValueError, OSError) as exc:
            raise TransportError(f"cannot publish to {topic}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return None
        return info

    # -- paho callbacks (paho's thread, or the caller's in poll) ---------------------------
    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if self._on_connect_fail is not None:
            self._on_connect_fail(f"cannot connect to {self.host}:{self.port}")

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                        properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            if self._on_connect_fail is not None:  # refused by the broker (auth, ACL ...)
                self._on_connect_fail(f"broker refused the connection: {reason}")
            return
        sock = client.socket()
        if isinstance(sock, _socket.socket):  # no Nagle: a request waits for no ACK timer
            with contextlib.suppress(OSError):
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        mids = (client.subscribe(t, qos=self.subscribe_qos)[1] for t in self.subscriptions)
        self._pending_subs = {mid for mid in mids if mid is not None}
        if not self._pending_subs:
            self._ready()

    def _handle_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                          properties: Any) -> None:
        if mid in self._pending_subs:
            self._pending_subs.discard(mid)
            if not self._pending_subs:
                self._ready()

    def _ready(self) -> None:
        """Connected *and* subscribed: answers to requests sent now will reach us."""
        self.connects += 1
        self._connected.set()
        if self._on_connect is not None:
            self._on_connect()

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                           properties: Any) -> None:
        self._connected.clear()
        if self._on_disconnect is not None:
            self._on_disconnect(str(reason))

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        if len(msg.payload) > MAX_PAYLOAD:
            if self._on_oversize is not None:
                self._on_oversize(msg.topic, len(msg.payload))
            return
        props = msg.properties
        response = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        self._on_message(Message(topic=msg.topic, payload=bytes(msg.payload),
                                 retain=bool(msg.retain), response_topic=response,
                                 correlation=correlation))
