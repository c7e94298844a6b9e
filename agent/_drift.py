"""Drift accounting in the agent: a request tap that counts what the device sees into the
release profile's bins (:class:`~edgeship.sdk.monitor._profile.DriftMonitor`) and says when it
stops looking like the reference data.

Answer path: :meth:`DriftTap.observe` appends the request to a bounded buffer; an image
input the profile reduces per channel is reduced first (one numpy pass, a few µs), so the
buffer never keeps the request's own array alive (holding 32 decoded request bodies
cost the agent's API more than the counting: fresh memory for every request); every
``config.batch`` requests (fewer for inputs so large
that a batch would hold over 8 MiB of float32 samples) the request that fills it
counts the whole buffer in one vectorised pass (a few µs per request, amortised), and the
heartbeat (:meth:`DriftTap.telemetry`) counts what is left. The buffer holds at most
``8 * batch`` requests: when the counting falls behind, requests are dropped from the
accounting (``dropped`` in the telemetry), never delayed. Inputs are always counted;
outputs only when the local model answered (``local`` / ``local-degraded``): a cloud
model's answers would mix another model's output distribution into this one's.

The verdict (PSI / KS over the window, :class:`~edgeship.sdk.monitor._profile.DriftReport`) is
computed off the answer path, by :meth:`telemetry` / :meth:`status` / :meth:`report`;
when it flips, one JSON log line ``drift_alert`` (warning) or ``drift_cleared`` (info) is
written and ``on_change`` (if given) is called with the compact status. Prometheus:
``edgeship_drift_psi{feature}``, ``edgeship_drift_ks{feature}``, ``edgeship_drift_alert``,
``edgeship_drift_window`` on the registry handed in.

The window lives in memory only: an agent restart (or any new load of the model) starts
it empty, and nothing is judged until it holds ``min_samples`` again; the retained status
then carries the first verdict (``on_change`` is called once for it).

``[drift]`` in agent.toml maps onto :class:`DriftConfig` (``window``, ``slices``,
``psi_alert``, ``ks_alert``, ``min_samples``, ``sample``, ``batch``; see
``DriftConfig.from_dict``).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from edgeship.sdk.monitor._drift_monitor import DriftConfig, DriftMonitor, DriftReport
from edgeship.sdk.monitor._profile import Profile

__all__ = ["LOCAL_SOURCES", "DriftConfig", "DriftTap", "reset_gauges"]

LOCAL_SOURCES = frozenset({"local", "local-degraded"})  # answers whose outputs are counted
_PENDING_BATCHES = 8  # the buffer holds this many batches at most (oldest dropped beyond)
_PENDING_BYTES = 8 << 20  # a batch holds at most about this much input (float32 samples)

# one set of gauges per registry: a tap is rebuilt on every model load, the metric names
# can be registered only once
_GAUGES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_GAUGES_LOCK = threading.Lock()


def _gauges(registry: Any) -> dict[str, Any]:
    from prometheus_client import Gauge

    with _GAUGES_LOCK:
        found = _GAUGES.get(registry)
        if found is None:
            found = _GAUGES[registry] = {
                "psi": Gauge("edgeship_drift_psi", "PSI of each profile feature over the "
                             "drift window", ["feature"], registry=registry),
                "ks": Gauge("edgeship_drift_ks", "KS statistic (binned) of each numeric "
                            "profile feature over the drift window", ["feature"],
                            registry=registry),
                "alert": Gauge("edgeship_drift_alert", "1 while the drift verdict is on",
                               registry=registry),
                "window": Gauge("edgeship_drift_window", "Input samples in the drift window",
                                registry=registry),
            }
        return found


def reset_gauges(registry: Any) -> None:
    """No drift tap any more (a model without a profile): the previous model's figures and
    alert must not stay on /metrics. Gauges never registered stay absent."""
    with _GAUGES_LOCK:
        found = _GAUGES.get(registry)
    if found is None:
        return
    for name in ("psi", "ks"):
        found[name].clear()
    found["alert"].set(0)
    found["window"].set(0)


def _default_log(event: str, level: str = "info", **fields: Any) -> None:
    from edgeship.agent._boot import log

    log(event, level, **fields)


class DriftTap:
    """The Tap (see :mod:`edgeship.agent._api`) that keeps drift counts for one model."""

    def __init__(
        self,
        profile: Profile,
        config: DriftConfig | None = None,
        registry: Any | None = None,
        *,
        version: str = "",
        log: Callable[..., None] | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config or DriftConfig()
        self.version = version
        self.monitor = DriftMonitor(profile, self.config)
        # large inputs: fewer requests held before counting (the buffer keeps references
        # to whole requests: 32 full-HD float images would be 800 MB; images the profile
        # reduces per channel are reduced on arrival and hold only their means)
        sample_bytes = sum(4 * math.prod(t.shape) for t in profile.tensors if t.role == "input")
        self._batch = max(1, min(self.config.batch, _PENDING_BYTES // max(sample_bytes, 1)))
        self._max_pending = self._batch * _PENDING_BATCHES
        self._pending: deque[tuple[Any, Any]] = deque(maxlen=self._max_pending)
        self._credit = 0.0  # sampling: + sample per request, one counted per whole unit
        self._tokens, self._refilled = 1.0, time.monotonic()  # the max_rate bucket
        self.skipped = 0  # requests not counted because of max_rate (by design)
        self._lock = threading.Lock()  # serializes the monitor (counting and reports)
        self._log = log or _default_log
        self._on_change = on_change
        self._alert = False
        self._judged = False  # the window has held min_samples once (a first verdict exists)
        self._last: DriftReport | None = None
        self.errors = 0  # requests that could not be counted (the first one is logged)
        self.dropped = 0  # requests not counted because the buffer was full
        self._gauges = _gauges(registry) if registry is not None else None
        if self._gauges is not None:
            for name in ("psi", "ks"):
                self._gauges[name].clear()  # the previous model's features
            self._gauges["alert"].set(0)
            self._gauges["window"].set(0)

    # -- answer path ---------------------------------------------------------------------
    def observe(self, inputs: dict[str, Any], outputs: dict[str, Any], *, source: str,
                version: str, seconds: float) -> None:
        if self.config.sample < 1:  # exactly `sample` of the requests (0.7 counted all)
            credit = self._credit + self.config.sample  # a race only shifts the sampling
            if credit < 1.0:
                self._credit = credit
                return
            self._credit = credit - 1.0
        if self.config.max_rate and not self._take_token():
            self.skipped += 1
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1  # the counting thread is behind (never blocks an answer)
            return
        try:  # large images: a few channel means now, not the request's array until later
            reduced = self.monitor.reduce(inputs)
        except Exception as exc:  # e.g. another sample shape than the profile's
            self._error(exc)
            return
        self._pending.append((reduced, outputs if source in LOCAL_SOURCES else None))
        if len(self._pending) >= self._batch:
            self.flush(wait=False)

    def _take_token(self) -> bool:
        """One of ``max_rate`` counts per second (a burst of one second's worth); a race
        between request threads only lets one more through."""
        now = time.monotonic()
        rate = self.config.max_rate
        tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def flush(self, *, wait: bool = True) -> None:
        """Count the buffered requests (``wait=False``: skip if another thread is at it)."""
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._count()
        finally:
            self._lock.release()

    def _count(self) -> None:
        for _ in range(_PENDING_BATCHES):  # what arrives meanwhile too, a bounded number of times
            items = []
            while self._pending:  # popleft is atomic: requests keep appending meanwhile
                try:
                    items.append(self._pending.popleft())
                except IndexError:
                    break
            if not items:
                return
            self._observe(items)

    def _observe(self, items: list[tuple[Any, Any]]) -> None:
        try:
            inputs, outputs, rows = _stack(items)
            self.monitor.observe(inputs, outputs, answered=rows)
        except Exception as exc:  # e.g. a request with another sample shape: one by one
            for inputs, outputs in items:
                try:
                    self.monitor.observe(inputs, outputs)
                except Exception:
                    self._error(exc)

    def _error(self, exc: Exception) -> None:
        """A request that cannot be counted: counted as such; the first one is logged."""
        self.errors += 1
        if self.errors == 1:
            self._log("drift_error", "warning", error=str(exc)[:300])

    # -- off the answer path -------------------------------------------------------------
    def report(self) -> DriftReport:
        """Count what is buffered, judge the window, log / call back on a flip. The first
        verdict (the window holds ``min_samples``) is called back too, without a log line:
        a calm device's status then says "watched, no drift" rather than nothing."""
        with self._lock:
            self._count()
            report = self.monitor.report()
            flipped = report.alert != self._alert
            first = not self._judged and report.window >= self.config.min_samples
            self._alert, self._last = report.alert, report
            self._judged = self._judged or first
        self._export(report)
        if flipped:
            fields = {**report.status(), "version": self.version}
            if report.alert:
                self._log("drift_alert", "warning", **fields)
            else:
                self._log("drift_cleared", "info", **fields)
        if (flipped or first) and self._on_change is not None:
            self._on_change(report.status())
        return report

    def telemetry(self) -> dict[str, Any]:
        """The full report (per-feature PSI / KS) for the heartbeat."""
        return {**self.report().to_dict(), "version": self.version, "errors": self.errors,
                "dropped": self.dropped, "skipped": self.skipped,
                "nan_values": self.monitor.nan_values}

    def status(self) -> dict[str, Any] | None:
        """Compact verdict for the retained status; None before the first sample."""
        report = self.report()
        return report.status() if report.window else None

    @property
    def alert(self) -> bool:
        return self._alert

    def _export(self, report: DriftReport) -> None:
        if self._gauges is None:
            return
        for f in report.features:
            if f.psi is not None:
                self._gauges["psi"].labels(feature=f.name).set(f.psi)
            if f.ks is not None and f.kind == "numeric":
                self._gauges["ks"].labels(feature=f.name).set(f.ks)
        self._gauges["alert"].set(1 if report.alert else 0)
        self._gauges["window"].set(report.window)


def _stack(items: list[tuple[Any, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None,
                                                  list[bool] | None]:
    """One batch out of many requests: per tensor, the list of the requests' arrays (the
    monitor reduces large ones one by one instead of copying them into one array), and
    which input rows the answers belong to (so they share the window of their inputs)."""
    inputs = {k: [i[k] for i, _ in items] for k in items[0][0]}
    answered = [o for _, o in items if o is not None]
    if not answered:
        return inputs, None, None
    outputs = {k: [o[k] for o in answered] for k in answered[0]}
    if len(answered) == len(items):
        return inputs, outputs, None  # row by row
    first = next(iter(items[0][0]))
    return inputs, outputs, [o is not None for i, o in items for _ in range(len(i[first]))]
