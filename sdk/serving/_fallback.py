"""Answer locally when possible, ask the cloud when needed, never hang on a dead network.

Three pieces, the first two pure logic with an injectable clock:

- :class:`CircuitBreaker`: ``closed`` (calls go through) -> after ``failures`` failures
  within ``window_s`` -> ``open`` (no calls) -> after ``cooldown_s`` -> ``half-open``
  (exactly one probe call) -> ``closed`` on success, ``open`` again on failure.
- :class:`FallbackPolicy` and :func:`confidence`: when to escalate (``no_model``,
  ``on_error``, ``low_confidence``) and how sure the local model is.
- :class:`FallbackModel`: the policy applied around a (swappable) local model and a
  :class:`~edgeship.sdk.CloudClient`; every :class:`Answer` says where it came from:
  ``local``, ``cloud``, or ``local-degraded`` (the cloud was wanted but not available, the
  local answer stands).

Timing: one answer takes at most the local inference plus what is left of ``deadline_ms``
(measured from the start of the answer) -- the cloud call gets only the remaining time,
and an open breaker costs nothing. Errors: with no local model and no cloud answer,
:class:`~edgeship.ModelLoadError` (no cloud configured) or :class:`~edgeship.TransportError`;
when local inference fails and the cloud cannot help, the local error is re-raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgeship._errors import (
    ConfigError,
    EdgeshipError,
    InputError,
    ModelLoadError,
    TransportError,
)

__all__ = ["Answer", "CircuitBreaker", "FallbackModel", "FallbackPolicy", "confidence"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
STATE_CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # for a Prometheus gauge
POLICIES = ("no_model", "on_error", "low_confidence")
SOURCES = ("local", "cloud", "local-degraded")


class CircuitBreaker:
    """Stops calling a failing peer; thread-safe; ``clock`` returns seconds (monotonic)."""

    def __init__(
        self,
        *,
        failures: int = 3,
        window_s: float = 30.0,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or window_s <= 0 or cooldown_s < 0:
            raise ConfigError("circuit breaker needs failures >= 1, window_s > 0, cooldown_s >= 0")
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._recent: list[float] = []
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self.opened_total = 0
        self.rejected_total = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker past its cool-down reads
        ``half-open``: the next call will be let through as the probe)."""
        with self._lock:
            if self._state == OPEN and self._clock() >= self._opened_at + self.cooldown_s:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open only one probe is in flight at a time."""
        with self._lock:
            now = self._clock()
            if self._state == OPEN and now >= self._opened_at + self.cooldown_s:
                self._state = HALF_OPEN
                self._probe_at = None
            if self._state == HALF_OPEN:
                # a probe whose result never came back must not wedge the breaker
                stale = self._probe_at is not None and now - self._probe_at > self.cooldown_s
                if self._probe_at is None or stale:
                    self._probe_at = now
                    return True
            if self._state == CLOSED:
                return True
            self.rejected_total += 1
            return False

    def record_success(self) -> None:
        """A call to the cloud succeeded: close the breaker and forget past failures."""
        with self._lock:
            self._state, self._recent, self._probe_at = CLOSED, [], None

    def record_failure(self) -> None:
        """A call to the cloud failed: count it; enough within the window (or one while
        half-open) opens the breaker."""
        with self._lock:
            now = self._clock()
            if self._state == HALF_OPEN:
                self._open(now)
                return
            self._recent = [t for t in self._recent if now - t < self.window_s] + [now]
            if self._state == CLOSED and len(self._recent) >= self.failures:
                self._open(now)

    def _open(self, now: float) -> None:
        self._state, self._opened_at, self._probe_at, self._recent = OPEN, now, None, []
        self.opened_total += 1

    def snapshot(self) -> dict[str, Any]:
        """State, its numeric code and the counters, for metrics and status."""
        state = self.state
        return {
            "state": state,
            "state_code": STATE_CODES[state],
            "opened_total": self.opened_total,
            "rejected_total": self.rejected_total,
        }


@dataclass(frozen=True, kw_only=True)
class FallbackPolicy:
    """When to ask the cloud. ``threshold`` applies to :func:`confidence`."""

    no_model: bool = True
    on_error: bool = True
    low_confidence: bool = False
    threshold: float = 0.6
    output: str | None = None  # which output to judge; default: the first
    activation: str = "auto"  # auto | softmax | sigmoid | probs

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"fallback confidence must be within [0, 1], not {self.threshold}")
        if self.activation not in ("auto", "softmax", "sigmoid", "probs"):
            raise ConfigError(
                f"fallback activation {self.activation!r} is not auto|softmax|sigmoid|probs"
            )

    @classmethod
    def from_names(
        cls, names: Sequence[str], *, confidence: float = 0.6, **extra: Any
    ) -> FallbackPolicy:
        """From agent.toml's ``policy = [...]`` list and ``confidence`` threshold."""
        unknown = sorted(set(names) - set(POLICIES))
        if unknown:
            raise ConfigError(f"fallback.policy: unknown {unknown}; choose from {list(POLICIES)}")
        return cls(
            no_model="no_model" in names,
            on_error="on_error" in names,
            low_confidence="low_confidence" in names,
            threshold=float(confidence),
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": [p for p in POLICIES if getattr(self, p)],
            "confidence": self.threshold,
            "output": self.output,
            "activation": self.activation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FallbackPolicy:
        return cls.from_names(
            list(data.get("policy", POLICIES[:2])),
            confidence=float(data.get("confidence", 0.6)),
            output=data.get("output"),
            activation=str(data.get("activation", "auto")),
        )

    def confidence(self, outputs: Mapping[str, Any],
                   steps: Mapping[str, float] | None = None) -> float:
        """The top-1 confidence of ``outputs`` under this policy's output and activation;
        ``steps``: the model's quantization step per output (``Model.output_steps``)."""
        name = self.output or next(iter(outputs), "")
        return confidence(outputs, output=self.output, activation=self.activation,
                          step=(steps or {}).get(name, 0.0))


MAX_PROBABILITY_STEP = 1 / 64  # a coarser output step is no probability output


def confidence(
    outputs: Mapping[str, Any], *, output: str | None = None, activation: str = "auto",
    step: float = 0.0,
) -> float:
    """How sure a classifier is, in [0, 1]; for a batch, its least sure row.

    Multi-class (last dim > 1): the top class probability. ``auto`` takes the values as
    probabilities when each row is already a distribution (in [0, 1], sums to 1 within
    1e-3, or for a quantized output of quantization ``step`` within half a step per
    class: an INT8 softmax sums to 0.996), else applies softmax. Binary (last dim 1, or a scalar per row): ``max(p, 1 - p)``, the
    sigmoid margin, where ``auto`` takes ``p`` as is when it lies in [0, 1], else
    ``sigmoid(p)``.
    """
    import numpy as np

    if not outputs:
        raise EdgeshipError("confidence needs at least one output")
    name = output or next(iter(outputs))
    values = np.asarray(outputs[name], dtype=np.float64)
    rows = values.reshape(values.shape[0] if values.ndim > 1 else 1, -1)
    if not np.isfinite(rows).all():
        return 0.0
    in_unit = bool(((rows >= 0) & (rows <= 1)).all())
    if rows.shape[1] == 1:
        use_sigmoid = activation == "sigmoid" or (activation == "auto" and not in_unit)
        p = 1 / (1 + np.exp(-rows[:, 0])) if use_sigmoid else rows[:, 0]
        return float(np.maximum(p, 1 - p).min())
    # a quantized output (INT8 softmax: step 1/256) sums to 1 only within its rounding:
    # up to half a step per class, so 0.996 is a distribution, not logits
    atol = max(1e-3, rows.shape[1] * min(step, MAX_PROBABILITY_STEP) / 2)
    is_dist = in_unit and bool(np.allclose(rows.sum(axis=1), 1.0, atol=atol))
    if activation == "softmax" or (activation == "auto" and not is_dist):
        shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
        rows = shifted / shifted.sum(axis=1, keepdims=True)
    return float(rows.max(axis=1).min())


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One answer and where it came from."""

    outputs: dict[str, Any]
    source: str  # local | cloud | local-degraded
    version: str
    latency_ms: float
    confidence: float | None = None
    reason: str = ""  # why the cloud was asked, or why it could not help

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "version": self.version,
            "latency_ms": self.latency_ms,
            "confidence": self.confidence,
            "reason": self.reason,
        }


class _LocalModel(Protocol):
    def predict_all(self, inputs: dict[str, Any]) -> dict[str, Any]: ...


class _Cloud(Protocol):
    deadline_ms: float

    def request(self, inputs: Mapping[str, Any], *, deadline_ms: float | None = None,
                max_response_bytes: int | None = None) -> Any: ...

    def metadata(self, *, deadline_ms: float | None = None) -> Any: ...


@dataclass
class FallbackStats:
    """Counters for telemetry and ``/metrics`` (read with :meth:`FallbackModel.stats`)."""

    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    escalations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLICIES, 0))
    cloud_requests: int = 0
    cloud_failures: int = 0
    cloud_latency_ms_sum: float = 0.0
    cloud_latency_ms_last: float = 0.0
    last_cloud_error: str = ""


_KEEP = object()  # "use the model set with set_local"


class FallbackModel:
    """A local model with the cloud behind it, by policy, breaker and deadline.

    ``local`` is anything with ``predict_all(dict) -> dict`` (an :class:`~edgeship.sdk.Model`),
    or None; swap it at any time with :meth:`set_local` (the agent does on a hot swap) or
    pass one per call to :meth:`answer`. ``deadline_ms`` bounds a whole answer (default:
    the cloud client's). Safe to call from many threads.
    """

    def __init__(
        self,
        local: _LocalModel | None = None,
        cloud: _Cloud | None = None,
        policy: FallbackPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        version: str = "",
        deadline_ms: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cloud = cloud
        self.policy = policy or FallbackPolicy()
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.deadline_ms = float(deadline_ms or (cloud.deadline_ms if cloud else 300.0))
        self._clock = clock
        self._local: tuple[_LocalModel | None, str] = (local, version)
        self._lock = threading.Lock()
        self._stats = FallbackStats()
        self._cloud_meta: Any | None = None

    def set_local(self, model: _LocalModel | None, version: str = "") -> None:
        """Serve from ``model`` (None: no local model) from the next answer on."""
        self._local = (model, version)

    @property
    def local(self) -> _LocalModel | None:
        """The local model answering now (None: every answer comes from the cloud)."""
        return self._local[0]

    @property
    def version(self) -> str:
        """The version of the local model ("" without one)."""
        return self._local[1]

    # -- answering

    def predict(self, x: Any) -> Any:
        """Like ``Model.predict``: one array in (or a dict), the first output out."""
        answer = self.answer(x if isinstance(x, dict) else {self._input_name(): x})
        return next(iter(answer.outputs.values()))

    def predict_all(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The outputs of :meth:`answer` (local or cloud), by output name."""
        return self.answer(inputs).outputs

    def answer(self, inputs: Mapping[str, Any], *, local: Any = _KEEP, version: str = "") -> Answer:
        """Answer ``inputs`` by the policy; the :class:`Answer` says who answered."""
        start = self._clock()
        model, local_version = self._local if local is _KEEP else (local, version)
        if model is None:
            return self._without_model(inputs, start)
        try:
            outputs = model.predict_all(dict(inputs))
        except Exception as exc:
            if not (self.policy.on_error and self.cloud is not None):
                raise
            reply = self._ask_cloud(inputs, start, "on_error", model)
            if isinstance(reply, str):
                raise
            return self._finish(reply, start, reason=f"local inference failed: {exc}")
        if self.policy.low_confidence and self.cloud is not None:
            sure = self.policy.confidence(outputs, getattr(model, "output_steps", None))
            if sure < self.policy.threshold:
                reply = self._ask_cloud(inputs, start, "low_confidence", model)
                reason = f"confidence {sure:.3f} < {self.policy.threshold}"
                if not isinstance(reply, str):
                    return self._finish(reply, start, reason=reason, confidence=sure)
                local_answer = (outputs, local_version, "local-degraded")
                return self._finish(
                    local_answer, start, reason=f"{reason}; {reply}", confidence=sure
                )
        return self._finish((outputs, local_version, "local"), start)

    def _without_model(self, inputs: Mapping[str, Any], start: float) -> Answer:
        if not (self.policy.no_model and self.cloud is not None):
            raise ModelLoadError("no local model is loaded and no cloud fallback is configured")
        reply = self._ask_cloud(inputs, start, "no_model", None)
        if isinstance(reply, str):
            raise TransportError(f"no local model, and the cloud cannot answer: {reply}")
        return self._finish(reply, start, reason="no local model")

    def _finish(
        self,
        reply: tuple[dict[str, Any], str, str],
        start: float,
        *,
        reason: str = "",
        confidence: float | None = None,
    ) -> Answer:
        outputs, version, source = reply
        with self._lock:
            self._stats.answers[source] += 1
        latency = (self._clock() - start) * 1000
        return Answer(
            outputs=outputs,
            source=source,
            version=version,
            latency_ms=latency,
            confidence=confidence,
            reason=reason,
        )

    def _ask_cloud(
        self, inputs: Mapping[str, Any], start: float, why: str, model: Any
    ) -> tuple[dict[str, Any], str, str] | str:
        """The cloud's (outputs, version, "cloud"), or why it could not answer."""
        assert self.cloud is not None
        with self._lock:
            self._stats.escalations[why] += 1
        try:
            feeds = _cloud_inputs(inputs, model)
        except (ValueError, TypeError, InputError) as exc:  # the caller's input, not the cloud
            return f"inputs cannot be sent to the cloud: {exc}"
        left_ms = self.deadline_ms - (self._clock() - start) * 1000
        if left_ms < 1:
            return "no time left before the deadline"
        if not self.breaker.allow():
            return "circuit breaker open"
        began = self._clock()
        try:
            response = self.cloud.request(feeds, deadline_ms=left_ms,
                                          max_response_bytes=answer_limit(model, feeds))
            _check_outputs(response.outputs, model)
        except TransportError as exc:
            self._record(began, error=str(exc), rejected=getattr(exc, "status", 0) // 100 == 4)
            return str(exc)
        self._record(began)
        version = str(response.parameters.get("version") or response.model_version)
        return dict(response.outputs), version, "cloud"

    def _record(self, began: float, *, error: str = "", rejected: bool = False) -> None:
        took = (self._clock() - began) * 1000
        if error and not rejected:  # a 4xx means the cloud is up: not a breaker failure
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        with self._lock:
            s = self._stats
            s.cloud_requests += 1
            s.cloud_latency_ms_sum += took
            s.cloud_latency_ms_last = took
            if error:
                s.cloud_failures += 1
                s.last_cloud_error = error[:300]

    def cloud_metadata(self) -> Any | None:
        """The cloud model's v2 metadata (cached after the first success), or None when
        there is no cloud or it cannot tell within the deadline. An agent without a local
        model can show it at ``/v2/models/<name>``."""
        if self._cloud_meta is None and self.cloud is not None and self.breaker.state != OPEN:
            try:
                self._cloud_meta = self.cloud.metadata(deadline_ms=self.deadline_ms)
            except TransportError:
                return None
        return self._cloud_meta

    def _input_name(self) -> str:
        model = self.local
        specs = getattr(model, "inputs", None)
        if specs:
            return str(specs[0].name)
        meta = self.cloud_metadata()
        if meta is None or not meta.inputs:
            raise ModelLoadError("no model to tell the input name; pass a dict")
        return str(meta.inputs[0].name)

    def stats(self) -> dict[str, Any]:
        """Counters, cloud latency and breaker state, for telemetry and Prometheus."""
        with self._lock:
            s = self._stats
            return {
                "answers": dict(s.answers),
                "escalations": dict(s.escalations),
                "cloud_requests": s.cloud_requests,
                "cloud_failures": s.cloud_failures,
                "cloud_latency_ms_sum": s.cloud_latency_ms_sum,
                "cloud_latency_ms_last": s.cloud_latency_ms_last,
                "last_cloud_error": s.last_cloud_error,
                "breaker": self.breaker.snapshot(),
            }


JSON_BYTES_PER_VALUE = 32  # "-1.2345678901234567e-308, " and then some
ANSWER_SLACK = 64 * 1024  # names, parameters, headers of the JSON


def answer_limit(model: Any, feeds: Mapping[str, Any]) -> int | None:
    """The most bytes a cloud answer can need for the outputs ``model`` has (a dynamic
    dimension counts as the request's batch rows); None without a model (the client's
    own bound applies). A [1, 3000000] answer for a [1, 16] model is refused unread."""
    specs = getattr(model, "outputs", ())
    if not specs:
        return None
    first = next(iter(feeds.values()), None)
    rows = int(first.shape[0]) if first is not None and getattr(first, "ndim", 0) != 0 else 1
    values = 0
    for spec in specs:
        count = 1
        for dim in getattr(spec, "shape", ()):
            count *= dim if isinstance(dim, int) and dim > 0 else max(rows, 1)
        values += count
    return values * JSON_BYTES_PER_VALUE + ANSWER_SLACK


def _cloud_inputs(inputs: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Inputs as the local model would take them (float64 -> float32 when unknown)."""
    import numpy as np
    from edgeship.sdk.serving._v2 import datatype_of

    dtypes = {s.name: s.dtype for s in getattr(model, "inputs", ())}
    out = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        want = dtypes.get(name) or (np.float32 if array.dtype == np.float64 else array.dtype)
        out[name] = np.ascontiguousarray(array, dtype=want)
        datatype_of(out[name].dtype)  # InputError now rather than inside the cloud call
    return out


def _check_outputs(outputs: Mapping[str, Any], model: Any) -> None:
    """The cloud must answer with the local model's outputs, same trailing shapes."""
    from edgeship.sdk.serving._cloud import check_outputs

    check_outputs(outputs, getattr(model, "outputs", ()))
