"""The agent's start: its local API answers before the OTA machinery exists (issue 16).

:class:`Boot` reads and checks what every start reads -- the data dir, the device key,
the root key, the broker URL and password file, the cloud fallback -- and makes what the
API serves (the service, its metrics, the drift / shadow taps, ``[learning]``).
:meth:`Boot.serve` starts the API and reads ``state.json``; when the state is sound and
no update is in progress, it loads the active slot through the same code the OTA shell
uses (:mod:`~edgeship.agent._loading`: the size and sha256 the state names, decryption in
memory with the device key) and serves it. Only then does :func:`run_agent` import and
build the daemon (:class:`~edgeship.agent._daemon.Agent`: the OTA core, its events and
release checks, the outbox, MQTT); the core's first ``LoadActive`` of that same slot takes
the model already loaded (:meth:`Boot.take_preloaded`) instead of loading it again.

A damaged state or an update in progress loads nothing early: the daemon recovers or
resumes it as it always did, and the slot it decides on is loaded then. Logs are JSON
lines on stderr (:func:`log`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

from edgeship.agent._config import AgentConfig
from edgeship.agent._loading import load_serving, model_bytes
from edgeship.agent._ota_state import OtaState, SlotInfo
from edgeship.agent._startup import fallback_of, read_root, read_secret
from edgeship.agent._store import StateDamaged, Store, data_dir_lock

__all__ = ["Boot", "json_logging", "log", "pause", "run_agent", "sd_notify"]

_log_lock = threading.Lock()
# a client already asking at boot gets its first answer before the OTA machinery is built
# (that work on the device's other core slowed the first answer by ~7 % here); nobody
# asking delays it by this much
FIRST_ANSWER_WAIT_S = 0.2


def log(event: str, level: str = "info", **fields: Any) -> None:
    """One JSON line on stderr (structured logs; journald keeps them as they are)."""
    line = json.dumps({"ts": round(time.time(), 3), "level": level, "event": event, **fields},
                      default=str)
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def pause(point: str) -> None:
    """Sleep at ``point`` if the tests ask for it (see ``_health.pause_seconds``)."""
    if "EDGESHIP_AGENT_PAUSE" not in os.environ and "EDGESHIP_AGENT_PAUSE_FILE" not in os.environ:
        return
    from edgeship.agent._health import pause_seconds

    seconds = pause_seconds(point)
    if seconds:
        log("pause", point=point, seconds=seconds)
        time.sleep(seconds)


def sd_notify(message: str) -> None:
    """systemd's notify protocol by hand (READY=1, WATCHDOG=1); no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        pass


class Boot:
    """What one agent has before its OTA core exists (see the module docstring)."""

    def __init__(self, config: AgentConfig) -> None:
        from edgeship.agent._api import AgentService, Metrics
        from edgeship.agent._device_key import load_device_key
        from edgeship.agent._taps import Taps

        self.config = config
        try:
            self.store = Store(config.data_dir)
        except OSError as exc:
            from edgeship._errors import ConfigError

            raise ConfigError(f"data_dir: cannot use {config.data_dir}: {exc.strerror}") from exc
        self.device_key = load_device_key(config.encryption)
        self.root_key = read_root(config.root_key)
        self.broker_password = read_secret(config.broker.password_file)  # a bad one stops it
        if config.broker.tls:  # read again by the MQTT session, which begins after serving
            from edgeship.sdk.transport._tls import check_tls_files

            check_tls_files(config.broker.ca, config.broker.cert, config.broker.key)
        self.metrics = Metrics()
        self.service = AgentService(config.model.name, self.metrics, fallback_of(config))
        self.taps = Taps(self.service, lambda: self.metrics.registry, drift_config=config.drift,
                         shadow_config=config.shadow, log=log)
        self.learning: Any | None = None  # [learning]: example capture, feedback, SuperNode
        if config.learning is not None:  # (its routes are the API's from the first request)
            from edgeship.agent._learning import Learning

            self.learning = Learning(config, self.service, self.metrics.registry,
                                     self.device_key, self.taps, log)
        self.api: Any | None = None
        self.state: OtaState | None = None  # read by serve(); None: not read, or damaged
        self._preloaded: tuple[SlotInfo, Any] | None = None  # (slot, Serving or the error)
        self._answered = _Answered()

    def serve(self) -> None:
        """Start the API (once) and serve the active slot when the state allows it."""
        if self.api is not None:
            return
        from edgeship.sdk.serving._v2conns import Limits
        from edgeship.sdk.serving._v2server import SPIN_S, serve

        config, a = self.config, self.config.api
        self.api = serve(self.service, host=a.host, port=a.port,
                         max_request_bytes=a.max_request_bytes,
                         max_inflight_bytes=a.max_inflight_bytes,
                         max_connections=a.max_connections,
                         limits=Limits(max_per_peer=a.max_per_peer,
                                       header_timeout_s=a.header_timeout_s,
                                       body_timeout_s=a.body_timeout_s),
                         spin_s=SPIN_S).start()  # a process of its own: see SPIN_S
        try:
            self.state = self.store.load_state()
        except StateDamaged:
            self.state = None  # the daemon keeps it aside, recovers and logs why
        state = self.state
        log("started", device=config.device_id, api=self.api.url, broker=config.broker.url,
            phase=state.phase if state else None,
            version=state.active.version if state and state.active else None)
        for section in config.unknown_sections:  # a typo'd table runs on defaults
            log("config_section_unknown", level="warning", section=section,
                message=config.section_hint(section))
        if config.ignored_keys:
            log("config_keys_ignored", level="warning", keys=list(config.ignored_keys))
        if state is not None and state.job is None and state.active is not None:
            self._preload(state.active)  # no update in progress: the core loads this slot

    def _preload(self, slot: SlotInfo) -> None:
        try:
            serving = load_serving(model_bytes(self.store, slot, self.device_key), slot, None,
                                   self.config.model)
        except Exception as exc:  # the daemon's LoadActive reports it (load_failed)
            self._preloaded = (slot, exc)
            return
        self.service.taps = (*self.service.taps, self._answered)
        self.service.swap(serving)
        self._preloaded = (slot, serving)

    def wait_first_answer(self, timeout: float) -> None:
        """Until the preloaded model's first answer has gone out (or ``timeout``)."""
        if self.api is None or self._answered not in self.service.taps:
            return
        deadline = time.monotonic() + timeout
        if self._answered.event.wait(timeout):
            while self.api.working() and time.monotonic() < deadline:
                time.sleep(0.001)  # its answer is being sent
        self.service.taps = tuple(t for t in self.service.taps if t is not self._answered)

    def take_preloaded(self, slot: SlotInfo) -> Any | None:
        """The model :meth:`serve` loaded, when it loaded exactly ``slot`` (once; its load
        error is raised again); None: load it."""
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is None or preloaded[0] != slot:
            return None
        if isinstance(preloaded[1], Exception):
            raise preloaded[1]
        return preloaded[1]

    def close(self) -> None:
        self.taps.close()
        if self.learning is not None:
            self.learning.close()
        if self.api is not None:
            self.api.close()


class _Answered:
    """A request tap that notes the first answer (see :meth:`Boot.wait_first_answer`)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def observe(self, inputs: Any, outputs: Any, *, source: str, version: str,
                seconds: float) -> None:
        self.event.set()


def json_logging() -> None:
    """Python logging (paho, the v2 server's errors) as JSON lines on stderr, like
    :func:`log`. Set up once the first answer went out: logging is not imported before."""
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"ts": round(record.created, 3),
                               "level": record.levelname.lower(), "event": "log",
                               "logger": record.name, "message": record.getMessage()})

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM / SIGINT; returns the exit code."""
    boot = Boot(config)
    if boot.device_key is not None:  # no core file may hold the key or a decrypted model
        from edgeship.agent._device_key import no_core_dumps

        log("core_dumps_off", done=no_core_dumps())
    with data_dir_lock(config.data_dir):  # `agent install` of a bundle must not run beside
        boot.serve()  # answers from here on
        boot.wait_first_answer(FIRST_ANSWER_WAIT_S)
        json_logging()
        try:
            from edgeship.agent._daemon import Agent

            agent = Agent(config, boot=boot)
        except BaseException:
            boot.close()
            raise
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stop())
        agent.run()
    return 0
