"""The agent's local API: Open Inference Protocol v2 over HTTP plus ``/metrics``.

Built on the sdk's v2 server toolkit. The model that answers is one immutable
:class:`Serving` value swapped in a single assignment, so a request that started on the
old model finishes on it while the next one gets the new one (hot swap, no lock on the
inference path). With ``[fallback]`` configured, answers go through the sdk's
:class:`~edgeship.sdk.serving._fallback.FallbackModel` (policy, deadline, circuit breaker); every
answer's ``parameters`` say ``source`` and ``version``.

Taps (drift accounting, the shadow model) see every answered request *after* its answer
is computed: ``tap.observe(inputs, outputs, source=..., version=..., seconds=...)``. A tap
must be cheap (it runs on the answer path) and must not raise; one that does is counted
in ``edgeship_tap_errors`` and the answer goes out unchanged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from edgeship.agent._ota_state import PHASES
from edgeship.sdk.serving._v2 import ModelMetadata, TensorSpec
from edgeship.sdk.serving._v2server import Request, Response, Route, StatusError, V2Service

from edgeship._errors import ModelLoadError

__all__ = ["AgentService", "Metrics", "Serving", "Tap"]

_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_lite", "openvino": "openvino_onnx"}
_IR_FORMATS = ("xml", "ovir")  # OpenVINO's own IR, not the ONNX it also reads


def platform_of(model: Any) -> str:
    """The v2 ``platform`` of a loaded model: its runtime and what that runtime reads."""
    if model.runtime == "openvino" and getattr(model, "format", "") in _IR_FORMATS:
        return "openvino_ir"
    return _PLATFORMS.get(model.runtime, str(model.runtime))


class Tap(Protocol):
    """Something that watches answered requests (see the module docstring)."""

    def observe(self, inputs: dict[str, Any], outputs: dict[str, Any], *, source: str,
                version: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class Serving:
    """A loaded model and what it is (replaced as a whole on a hot swap)."""

    model: Any
    version: str
    sha256: str
    metadata: ModelMetadata


def describe(name: str, model: Any, version: str) -> ModelMetadata:
    return ModelMetadata(name=name, versions=(version,),
                         platform=platform_of(model),
                         inputs=tuple(TensorSpec.of(s) for s in model.inputs),
                         outputs=tuple(TensorSpec.of(s) for s in model.outputs))


class _Prometheus:
    """The Prometheus objects of one agent (prometheus_client is imported here)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgeship_infer_requests", "Inference requests by source and"
                                " outcome", ["source", "outcome"], registry=r)
        self.latency = Histogram("edgeship_infer_latency_seconds", "Inference latency",
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                          1, 2.5), registry=r)
        self.phase = Gauge("edgeship_ota_phase", "1 for the current OTA phase", ["phase"],
                           registry=r)
        self.version = Gauge("edgeship_model_info", "The serving model version", ["version"],
                             registry=r)
        self.updates = Counter("edgeship_ota_updates", "Finished updates by outcome",
                               ["outcome"], registry=r)
        self.queue = Gauge("edgeship_outbox_messages", "Messages waiting for the broker",
                           registry=r)
        self.connected = Gauge("edgeship_broker_connected", "1 when the broker is connected",
                               registry=r)
        self.tap_errors = Counter("edgeship_tap_errors", "Exceptions raised by request taps"
                                  " (drift, shadow); answers are unaffected", registry=r)
        self.breaker = Gauge("edgeship_fallback_breaker_state",
                             "Cloud circuit breaker: 0 closed, 1 open, 2 half-open", registry=r)


class Metrics:
    """Prometheus metrics of one agent (own registry, so tests can run several).

    The registry is made on first use, or by :meth:`bring_up` (the daemon calls it once its
    model can answer: prometheus_client is ~5 % of the start to the first answer). Answers,
    the serving version and the phase before that are kept here and handed over then.
    """

    def __init__(self) -> None:
        self._prom: _Prometheus | None = None
        self._early: list[tuple[str, str, float]] = []  # (source, outcome, seconds)
        self._early_version = ""
        self._early_phase = ""
        self.recent: deque[float] = deque(maxlen=2048)  # latencies (ms) for telemetry
        self._children: dict[tuple[str, str], Any] = {}  # requests.labels(source, outcome)
        self._lock = threading.Lock()

    def bring_up(self) -> _Prometheus:
        """The Prometheus objects, made (and the early figures replayed) on the first call."""
        prom = self._prom
        if prom is not None:
            return prom
        with self._lock:
            if self._prom is None:
                prom = _Prometheus()
                for source, outcome, seconds in self._early:
                    prom.requests.labels(source=source, outcome=outcome).inc()
                    if outcome == "ok":
                        prom.latency.observe(seconds)
                self._early.clear()
                if self._early_version:
                    prom.version.labels(version=self._early_version).set(1)
                if self._early_phase:
                    for p in PHASES:
                        prom.phase.labels(phase=p).set(1 if p == self._early_phase else 0)
                self._prom = prom
            return self._prom

    @property
    def registry(self) -> Any:
        return self.bring_up().registry

    @property
    def requests(self) -> Any:
        return self.bring_up().requests

    @property
    def latency(self) -> Any:
        return self.bring_up().latency

    @property
    def phase(self) -> Any:
        return self.bring_up().phase

    @property
    def version(self) -> Any:
        return self.bring_up().version

    @property
    def updates(self) -> Any:
        return self.bring_up().updates

    @property
    def queue(self) -> Any:
        return self.bring_up().queue

    @property
    def connected(self) -> Any:
        return self.bring_up().connected

    @property
    def tap_errors(self) -> Any:
        return self.bring_up().tap_errors

    @property
    def breaker(self) -> Any:
        return self.bring_up().breaker

    def set_phase(self, phase: str) -> None:
        if self._prom is None:
            with self._lock:
                if self._prom is None:
                    self._early_phase = phase
                    return
        for p in PHASES:
            self.phase.labels(phase=p).set(1 if p == phase else 0)

    def set_version(self, version: str) -> None:
        if self._prom is None:
            with self._lock:
                if self._prom is None:
                    self._early_version = version
                    return
        self.version.clear()
        if version:
            self.version.labels(version=version).set(1)

    def observe(self, source: str, outcome: str, seconds: float) -> None:
        prom = self._prom
        if prom is None:
            with self._lock:
                prom = self._prom
                if prom is None:  # before bring_up: kept (bounded) for the registry
                    if len(self._early) < 100_000:
                        self._early.append((source, outcome, seconds))
                    if outcome == "ok":
                        self.recent.append(seconds * 1000)
                    return
        child = self._children.get((source, outcome))
        if child is None:  # labels() per request cost as much as the rest of observe
            child = self._children.setdefault(
                (source, outcome), prom.requests.labels(source=source, outcome=outcome))
        child.inc()
        if outcome == "ok":
            prom.latency.observe(seconds)
            with self._lock:
                self.recent.append(seconds * 1000)

    def latency_summary(self) -> dict[str, float | int]:
        with self._lock:
            values = sorted(self.recent)
            self.recent.clear()
        if not values:
            return {"count": 0}

        def pick(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))], 3)

        return {"count": len(values), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


class AgentService(V2Service):
    """v2 service over the hot-swappable :class:`Serving` and an optional fallback."""

    server_name = "edgeship-agent"
    assign_ids = True  # every answer carries an id (feedback refers to it)

    def __init__(self, name: str, metrics: Metrics, fallback: Any | None = None) -> None:
        self.name = name
        self.metrics = metrics
        self.fallback = fallback
        self.serving: Serving | None = None
        self.taps: tuple[Tap, ...] = ()  # replaced as a whole, like ``serving``
        self.extra_routes: list[Route] = []  # e.g. [learning]'s feedback; set before serving
        self.no_model_reason = "no model installed yet (waiting for a release)"

    def swap(self, serving: Serving | None) -> None:
        self.serving = serving  # one assignment: requests in flight keep their model
        self.metrics.set_version(serving.version if serving else "")

    def ready(self) -> bool:
        return self.serving is not None or self.fallback is not None

    def metadata(self, name: str) -> ModelMetadata | None:
        if name != self.name:
            return None
        serving = self.serving
        if serving is None:
            return ModelMetadata(name=name, versions=(), platform="")
        return serving.metadata

    def infer(self, name: str, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        start = time.perf_counter()
        serving = self.serving
        source = "local"
        try:
            if self.fallback is not None:
                answer = self.fallback.answer(inputs, local=serving and serving.model,
                                              version=serving.version if serving else "")
                outputs, source, version = answer.outputs, answer.source, answer.version
            elif serving is None:
                raise StatusError(503, f"{self.no_model_reason}; no cloud fallback configured")
            else:
                outputs, version = serving.model.predict_all(inputs), serving.version
        except ModelLoadError as exc:
            self.metrics.observe(source, "error", time.perf_counter() - start)
            raise StatusError(503, f"{self.no_model_reason}: {exc}") from exc
        except Exception:
            self.metrics.observe(source, "error", time.perf_counter() - start)
            raise
        seconds = time.perf_counter() - start
        self.metrics.observe(source, "ok", seconds)
        for tap in self.taps:
            try:
                tap.observe(inputs, outputs, source=source, version=version, seconds=seconds)
            except Exception:  # a tap never changes or fails an answer
                self.metrics.tap_errors.inc()
        return outputs, {"source": source, "version": version}

    def routes(self) -> list[Route]:
        return [Route(method="GET", path="/metrics", handler=self._metrics), *self.extra_routes]

    def _metrics(self, request: Request) -> Response:
        if self.fallback is not None:
            from edgeship.sdk.serving._fallback import STATE_CODES

            self.metrics.breaker.set(STATE_CODES.get(self.fallback.breaker.state, 0))
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return Response(body=generate_latest(self.metrics.registry),
                        content_type=CONTENT_TYPE_LATEST)
