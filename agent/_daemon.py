"""The agent daemon: the thin shell around the pure OTA core (``edgeship agent run``).

One loop thread owns the OTA state: it takes events (MQTT messages from paho's thread,
ticks, action results), asks :class:`~edgeship.agent._ota.OtaCore` what to do and does
it -- files through :class:`~edgeship.agent._store.Store`, messages through
:class:`~edgeship.sdk.transport._mqtt.MqttEdge` (or the SQLite outbox while the broker is away),
health checks in a child interpreter, model loads as a hot swap of the local API's
:class:`~edgeship.agent._api.Serving`, the drift and shadow taps through
:class:`~edgeship.agent._taps.Taps`. The HTTP API serves on its own threads from the
first second, with or without a broker or a model. Logs are JSON lines on stderr.

Encrypted releases: slots and the download hold ciphertext only; a model is decrypted
into memory (active model, shadow, and inside the health-check child, which gets the
data key over its stdin pipe), with the device key of ``[encryption]``, read once.

``EDGESHIP_AGENT_PAUSE="chunk=0.05,downloaded=0.3,install=0.3,switch=0.3,health=0.5"``
(or the same text in the file ``EDGESHIP_AGENT_PAUSE_FILE`` names; tests only) sleeps at
those points so a test can kill the agent inside each window.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from edgeship.agent import _ota as ota
from edgeship.agent._boot import Boot, log, pause, run_agent, sd_notify
from edgeship.agent._config import AgentConfig
from edgeship.agent._inbox import BrokerHealth, Inbox
from edgeship.agent._install import install_initial
from edgeship.agent._loading import (
    data_key,
    load_serving,
    model_bytes,
    runtime_for,
    usable_variants,
)
from edgeship.agent._queue import Outbox, storage_errors
from edgeship.agent._ratelimit import Backoff, TokenBucket
from edgeship.agent._startup import initial_offer

from edgeship._errors import EdgeshipError

__all__ = ["Agent", "log", "pause", "run_agent"]


WINDOW_CHECK_S = 15.0  # how often a downloaded update looks whether its install window opened
REFUSAL_REPORT_S = 0.5  # a flood of refused offers rewrites the retained status this often


class _NoBroker:
    """The MQTT session before it exists: offline (publishing returns None, as MqttEdge's
    does while not connected)."""

    connected = False

    def publish(self, *args: Any, **kwargs: Any) -> None:
        return None

    def stop(self) -> None:
        pass


class Agent:
    """One device agent; :meth:`run` until :meth:`stop`."""

    _FINAL = ("committed", "rolled-back", "failed")

    def __init__(self, config: AgentConfig, *, clock: Any = time.time,
                 boot: Boot | None = None) -> None:
        from edgeship.sdk.transport._topics import topics

        self.config, self.clock = config, clock
        # what the API serves, and the start's checks (a `run_agent` boot already serves)
        self.boot = boot = boot or Boot(config)
        self.store, self.device_key = boot.store, boot.device_key
        self.metrics, self.service = boot.metrics, boot.service
        self.taps, self.learning = boot.taps, boot.learning
        self.taps.on_drift_change = lambda _: self._republish()
        self.topics = topics(config.fleet, config.device_id)
        self.core = ota.OtaCore(device=config.device_id, model=config.model.name,
                                root_key=boot.root_key, hardware=config.hardware,
                                chunk_size=config.ota.chunk_size,
                                max_artifact_bytes=config.ota.max_artifact_bytes,
                                max_switch_attempts=config.ota.max_switch_attempts,
                                private_key=self.device_key,
                                require_encryption=config.encryption.require,
                                nonce=lambda: os.urandom(8).hex(),
                                stall_after_s=3 * config.ota.request_timeout_s,
                                install_window=config.ota.install_window,
                                variants=usable_variants(config.hardware, log,
                                                         config.model.runtime))
        from edgeship.agent._recover import OfferBackfill, load_or_recover

        self.state, _ = load_or_recover(self.store, self.core, log,  # damaged: recovered
                                        known=lambda: initial_offer(config), state=boot.state)
        self.backfill = OfferBackfill(self.store, self.core, log)  # an older agent's slot
        self.backfill.check(self.state.active)
        for raw in initial_offer(config) if self.backfill.slot else ():
            self.backfill.offer(raw, self.state.active)
        # bounded: a flood on the device's topics drops messages (logged), never grows memory
        self.inbox = Inbox(on_dropped=self._do_Rejected)
        self.outbox = Outbox(config.data_dir / "queue.sqlite",
                             max_messages=config.telemetry.queue_max_messages,
                             max_bytes=config.telemetry.queue_max_bytes)
        self._status: dict[str, Any] | None = None  # the core's last status (unmerged)
        self._broker_password = boot.broker_password
        # the MQTT session (and paho's import) begins once the active model answers (see
        # run); until then nothing is connected and statuses wait in the outbox, as they
        # would while a connect is under way. TLS files are read (and checked) now.
        self.edge: Any = _NoBroker()
        self._tls_edge = self._make_edge() if config.broker.tls else None
        self._stop = threading.Event()
        self.broker_health = BrokerHealth(config.broker.url, log)
        self._progress: tuple[Any, float] = (None, time.monotonic())  # last download step
        self._stall_log = Backoff(first_s=10.0, max_s=600.0)
        self._held_report: ota.Report | None = None  # a refusal's status, sent at most ...
        self._reported_at = 0.0  # ... every REFUSAL_REPORT_S after the previous status
        self._reject_log: dict[str, TokenBucket] = {}  # per topic
        self._last_request = 0.0
        # [ota] max_rate_kbps: a chunk request waits until the bytes asked so far fit the rate
        self._next_request_at = 0.0
        self._deferred: ota.RequestChunk | None = None
        self.bytes_received = 0
        self.started = time.monotonic()
        self._last_state = self.state.phase
        self.local_files: dict[str, bytes] | None = None  # set by `agent install` (a bundle)
        from edgeship.agent._bundle_dir import BundleDir

        # [ota] bundle_dir: bundles dropped there are installed (agent/_bundle_dir.py)
        self.bundles = BundleDir(config.ota.bundle_dir) if config.ota.bundle_dir else None

    # -- inputs from other threads ---------------------------------------------------------
    def _on_message(self, msg: Any) -> None:
        if msg.topic == self.topics.offer and msg.payload:
            self.inbox.put_message(ota.OfferReceived(msg.payload), "offer")
        elif msg.topic == self.topics.chunk:
            self.bytes_received += len(msg.payload)
            self.inbox.put_message(ota.Chunk(msg.payload, correlation=msg.correlation), "chunk")

    def _on_oversize(self, topic: str, size: int) -> None:
        """paho's thread: a message over the MQTT payload limit, dropped unread."""
        kind = "offer" if topic == self.topics.offer else "chunk"
        self._do_Rejected(ota.Rejected(kind, "over the payload size limit", size))

    def _on_connect(self) -> None:
        self.metrics.connected.set(1)  # subscribed (MqttEdge calls this after its SUBACKs)
        self.broker_health.connected()
        self.inbox.put(ota.Connected())

    def stop(self) -> None:
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        self.boot.serve()  # (run_agent's boot serves already: the API, the active slot)
        try:
            install_initial(self, log)  # a device that never ran: its factory model
            self.dispatch(ota.Resume(download_size=self.store.download_size()))
            self.metrics.bring_up()  # /metrics answers on its first ask either way
            self.edge = self._connect()  # after the first model answers (issue 16)
            sd_notify("READY=1")
            self._loop()
        finally:
            log("stopping")
            self.boot.close()  # the taps, [learning], the API
            self.edge.stop()
            self.outbox.close()

    def _connect(self) -> Any:
        """The MQTT session, started."""
        return (self._tls_edge or self._make_edge()).start()

    def _make_edge(self) -> Any:
        """The MQTT session (paho-mqtt is imported here)."""
        from edgeship.sdk.transport._mqtt import MqttEdge

        b, config = self.config.broker, self.config
        return MqttEdge(b.url, client_id=f"edgeship-{config.fleet}-{config.device_id}",
                        subscriptions=[self.topics.offer, self.topics.chunk],
                        on_message=self._on_message, on_connect=self._on_connect,
                        on_connect_fail=lambda r: self.broker_health.connect_failed(r),
                        on_oversize=self._on_oversize,
                        on_disconnect=lambda r: self.broker_health.disconnected(r),
                        username=b.username, password=self._broker_password,
                        ca=b.ca, cert=b.cert, key=b.key, keepalive=b.keepalive_s)

    def _loop(self) -> None:
        from edgeship.agent._bundle_dir import BUSY_PHASES, CHECK_S, install_dropped

        next_beat = next_dog = next_window = next_bundle = 0.0
        while not self._stop.is_set():
            event = self.inbox.get(timeout=0.2)
            if event is not None:
                self.dispatch(event)
            held = self._held_report
            if held is not None and time.monotonic() - self._reported_at >= REFUSAL_REPORT_S:
                self._reported_at = 0.0
                self._do_Report(held)
            now = time.monotonic()
            if self._overdue(now):
                stalled = now - self._progress[1]
                if stalled >= self.core.stall_after_s and self._stall_log.due(now):
                    log("download_stalled", level="warning", seconds=round(stalled),
                        target=self.state.job and self.state.job.version)
                self.dispatch(ota.Tick(stalled_s=stalled))
            deferred = self._deferred
            if deferred is not None and self.state.phase != "downloading":
                self._deferred = None  # that download ended (replaced, failed)
            elif deferred is not None and now >= self._next_request_at:
                self._do_RequestChunk(deferred)
            if self.state.phase == "downloaded" and now >= next_window:
                next_window = now + WINDOW_CHECK_S  # waiting for the install window
                self.dispatch(ota.Tick())
            if now >= next_beat:
                next_beat = now + self.config.telemetry.interval_s
                self._heartbeat()
                if self.state.shadow is not None:  # fresh shadow figures every beat
                    self._republish()
            if self.bundles is not None and now >= next_bundle \
                    and self.state.phase not in BUSY_PHASES:
                next_bundle = now + CHECK_S
                for path in self.bundles.ready()[:1]:  # one install per look
                    install_dropped(self, path, log)
            if now >= next_dog:  # the loop is alive; a wedged loop gets restarted by systemd
                next_dog = now + 1.0
                sd_notify("WATCHDOG=1")
            self._flush()

    def _overdue(self, now: float) -> bool:
        return (self.state.phase == "downloading" and self.edge.connected
                and self._deferred is None
                and now - self._last_request > self.config.ota.request_timeout_s)

    def dispatch(self, event: ota.Event) -> None:
        if isinstance(event, ota.OfferReceived) and self.backfill.slot:
            self.backfill.offer(event.raw, self.state.active)
        self.state = ota.drive(self.core, self.state, event, self.clock, self._perform)
        job = self.state.job
        mark = (job.version, job.file, job.received) if job is not None else None
        if mark != self._progress[0]:  # a chunk landed, or another transfer began
            self._progress = (mark, time.monotonic())
            self._stall_log.reset()

    # -- actions -----------------------------------------------------------------------------
    def _perform(self, action: ota.Action, state: ota.OtaState) -> ota.Event | None:
        self.state = state  # the state this action belongs to
        handler = getattr(self, f"_do_{type(action).__name__}")
        event: ota.Event | None = handler(action)
        return event

    def _do_Persist(self, action: ota.Persist) -> ota.Event | None:
        try:
            self.store.save_state(action.state)
        except OSError as exc:  # disk full: the update fails (the core ignores a repeat)
            return _storage_failed("state", exc)
        return None

    def _do_Rejected(self, action: ota.Rejected) -> None:
        bucket = self._reject_log.setdefault(action.topic, TokenBucket(rate=2.0, burst=10.0))
        if bucket.due(time.monotonic()):
            log("message_rejected", level="warning", topic=action.topic, bytes=action.size,
                reason=action.reason[:200], suppressed_before=bucket.take_suppressed())

    def _do_Report(self, action: ota.Report) -> None:
        if self._status is not None and _same_status(self._status, action.status) \
                and not isinstance(self.inbox.last_taken, ota.Connected):
            return  # a repeat (a flood of refused offers): no log line, no retained rewrite
        # (after a reconnect the same status goes out again: the broker may have lost it)
        now = time.monotonic()
        if action.status["state"] == "failed" and now - self._reported_at < REFUSAL_REPORT_S:
            self._held_report = action  # a flood of refusals: the latest goes out later
            return
        self._held_report, self._reported_at = None, now
        self._status = action.status
        status = self.taps.status(action.status)
        log("status", **{k: v for k, v in status.items() if k != "device"},
            ota_bytes_received=self.bytes_received)
        self.metrics.set_phase(status["state"])
        if status["state"] != self._last_state and status["state"] in self._FINAL:
            self.metrics.updates.labels(outcome=status["state"]).inc()
        self._last_state = status["state"]
        self._send(self.topics.status, json.dumps(status).encode(), retain=True, key="status")

    def _republish(self) -> None:
        """The last status again with fresh drift / shadow figures. Its ``ts`` stays the
        core's: it dates the verdict, which a fleet manager compares to its offers."""
        if self._status is not None:
            status = self.taps.status(self._status)
            self._send(self.topics.status, json.dumps(status).encode(), retain=True,
                       key="status")

    def _do_RequestChunk(self, action: ota.RequestChunk) -> ota.Event | None:
        from edgeship.sdk.transport._mqtt import request_topic
        from edgeship.sdk.transport._transfer import encode_request

        req = action.request
        rate = self.config.ota.max_rate_kbps
        if rate and self.local_files is None:
            now = time.monotonic()
            if now < self._next_request_at:
                self._deferred = action  # sent by the loop when the rate allows it
                return None
            self._next_request_at = max(now, self._next_request_at) + \
                req.chunk_size * 8 / (rate * 1000)
            self._deferred = None
        if self.local_files is not None:  # an offline bundle answers as a release server would
            from edgeship.agent._install import answer_locally

            return answer_locally(self.local_files, action)
        self._last_request = time.monotonic()
        self.edge.publish(request_topic(self.config.fleet, self.config.device_id), encode_request(req),
                          response_topic=self.topics.chunk,
                          correlation=action.correlation or ota.correlation(req))
        return None

    def _do_TruncateDownload(self, action: ota.TruncateDownload) -> ota.Event | None:
        try:
            self.store.truncate_download(action.size)
        except OSError as exc:
            return _storage_failed("download", exc)
        return None

    def _do_WriteChunk(self, action: ota.WriteChunk) -> ota.Event | None:
        try:
            self.store.write_chunk(action.offset, action.data)
        except OSError as exc:  # disk full: fail this update, never the agent
            return _storage_failed("download", exc)
        pause("chunk")
        return None

    def _do_ReadDownload(self, action: ota.ReadDownload) -> ota.Event:
        pause("downloaded")
        limit = self.config.ota.max_artifact_bytes
        base = None
        active = self.state.active
        if action.base_slot and active is not None:
            try:  # a lost or damaged base: the core fetches the full artifact instead
                base = self.store.read_slot(action.base_slot, active.format, max_bytes=limit)
            except (OSError, EdgeshipError) as exc:
                log("delta_base_unreadable", level="warning", slot=action.base_slot,
                    error=str(exc))
        return ota.Downloaded(payload=self.store.read_download(max_bytes=limit), base=base)

    def _do_WriteSlot(self, action: ota.WriteSlot) -> ota.Event:
        slow = 0.0
        if "EDGESHIP_AGENT_PAUSE" in os.environ or "EDGESHIP_AGENT_PAUSE_FILE" in os.environ:
            from edgeship.agent._health import pause_seconds

            slow = pause_seconds("install")
        if slow:  # the write itself pauses half way, so a kill lands mid-install
            log("pause", point="install", seconds=slow)
        try:
            self.store.write_slot(action.slot, action.format, action.data, offer=action.offer,
                                  pause=slow)
        except OSError as exc:
            return _storage_failed(f"slot {action.slot}", exc)
        return ota.Installed()

    def _do_RunHealthCheck(self, action: ota.RunHealthCheck) -> ota.Event | None:
        from edgeship.agent._health import HealthCheckInterrupted, run_health_check

        path = self.store.slot_file(action.slot, action.format)
        log("health_check", slot=action.slot, model=str(path))
        try:
            key = self._data_key(action.encryption) if action.encryption else None
        except EdgeshipError as exc:
            return ota.HealthChecked(ok=False, reason=f"{type(exc).__name__}: {exc}")
        try:
            runtime, device = runtime_for(action.variant, self.config.model)
            ok, reason = run_health_check(path, action.golden, runtime=runtime, device=device,
                                          threads=1, timeout=self.config.ota.health_timeout_s,
                                          data_key=key)
        except HealthCheckInterrupted as exc:
            # a stop signal to our process group hits the child too; when it is our own
            # shutdown, give no verdict: the persisted state re-runs the check after restart
            if self._stop.wait(timeout=1.0):
                log("health_check_interrupted", reason=str(exc))
                return None
            ok, reason = False, str(exc)
        log("health_check_done", ok=ok, reason=reason)
        return ota.HealthChecked(ok=ok, reason=reason)

    def _do_LoadActive(self, action: ota.LoadActive) -> ota.Event:
        if self.state.job is not None and self.state.job.switched:
            pause("switch")
        slot = action.slot
        try:  # the slot the boot loaded before the core existed is not loaded twice
            preloaded = self.boot.take_preloaded(slot) if action.golden is None else None
            serving = preloaded if preloaded is not None else self._load(slot, action.golden)
        except Exception as exc:  # a model that fails to load must not take the agent down
            log("load_failed", level="error", slot=slot.slot, version=slot.version, error=str(exc))
            if self.service.serving is None:
                self.service.no_model_reason = f"the installed model cannot be loaded ({exc})"
            return ota.Loaded(slot.slot, False, f"{type(exc).__name__}: {exc}")
        self.service.swap(serving)
        self.taps.active_loaded(slot)
        if self.learning is not None:
            self.learning.active_loaded(slot, self.store.slot_file(slot.slot, slot.format))
        log("serving", slot=slot.slot, version=slot.version,
            encrypted=slot.encryption is not None, loaded_at_start=preloaded is not None)
        return ota.Loaded(slot.slot, True)

    def _do_LoadShadow(self, action: ota.LoadShadow) -> None:
        slot = action.slot
        try:
            model = self._model_bytes(slot)
            # a variant's shadow runs on its accelerator's runtime (on its default device)
            self.taps.start_shadow(slot, model,
                                   runtime=runtime_for(slot.variant, self.config.model)[0])
        except Exception as exc:  # a shadow never touches answers, nor the agent
            log("shadow_load_failed", level="error", slot=slot.slot, version=slot.version,
                error=str(exc)[:300])
            self.taps.shadow_failed(slot, f"{type(exc).__name__}: {exc}")

    def _do_UnloadShadow(self, action: ota.UnloadShadow) -> None:
        self.taps.stop_shadow()

    def _model_bytes(self, slot: ota.SlotInfo) -> bytes:
        return model_bytes(self.store, slot, self.device_key)

    def _data_key(self, encryption: dict[str, Any]) -> bytes:
        return data_key(encryption, self.device_key)

    def _load(self, slot: ota.SlotInfo, golden: dict[str, Any] | None) -> Any:
        return load_serving(self._model_bytes(slot), slot, golden, self.config.model)

    # -- telemetry, outbox ---------------------------------------------------------------------
    def _heartbeat(self) -> None:
        active = self.state.active
        beat: dict[str, Any] = {
            "device": self.config.device_id, "ts": round(self.clock(), 3),
            "uptime_s": round(time.monotonic() - self.started, 1), "state": self.state.phase,
            "version": active.version if active else None, "latency": self.metrics.latency_summary(),
            "outbox": len(self.outbox), "outbox_dropped": self.outbox.dropped,
            "ota_bytes_received": self.bytes_received,
        }
        if self.service.fallback is not None:
            beat["fallback"] = self.service.fallback.stats()
        self.taps.heartbeat(beat)
        self.metrics.queue.set(beat["outbox"])
        self.metrics.connected.set(1 if self.edge.connected else 0)
        self._send(self.topics.telemetry, json.dumps(beat, default=str).encode())

    def _send(self, topic: str, payload: bytes, *, retain: bool = False, key: str | None = None
              ) -> None:
        # straight out only when nothing older waits, so the broker sees them in order
        if len(self.outbox) == 0 and self.edge.publish(topic, payload, retain=retain) is not None:
            return
        try:
            self.outbox.put(topic, payload, retain=retain, key=key)
        except storage_errors() as exc:  # disk full: this message is lost, not the agent
            log("outbox_write_failed", level="error", topic=topic, error=str(exc)[:200])

    def _flush(self) -> None:
        if not self.edge.connected or len(self.outbox) == 0:
            return
        sent: list[int] = []
        for item in self.outbox.peek(100):
            info = self.edge.publish(item.topic, item.payload, retain=item.retain)
            if info is None:
                break
            info.wait_for_publish(2.0)
            if not info.is_published():
                break
            sent.append(item.id)
        self.outbox.delete(sent)
        if sent:
            log("outbox_flushed", messages=len(sent), left=len(self.outbox))


def _same_status(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {**a, "ts": None} == {**b, "ts": None}


def _storage_failed(what: str, exc: OSError) -> ota.Event:
    log("storage_failed", level="error", what=what, error=str(exc))
    return ota.StorageFailed(f"cannot write the {what}: {exc.strerror or exc}")
