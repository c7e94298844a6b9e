"""``[learning]``: the agent keeps examples worth learning from (issue 18, device side).

A :class:`LearningTap` watches answered requests (the Tap protocol of :mod:`._api`) and
picks what is worth keeping: answers below a confidence threshold (read the way the cloud
fallback reads it, quantized INT8 outputs included), answers the cloud gave (its argmax is
the teacher's label), inputs that arrive while the drift monitor's alert is raised, and
labels the application posts (``POST /v2/models/<name>/feedback``, by the id an answer
carried or with the inputs themselves). An input kept for low confidence or drift has a
label when the cloud answered it (the teacher's); otherwise it is kept unlabelled, and
feedback on its answer's id later labels that stored example in place (training uses
labelled examples only). The answer path only picks and enqueues: the queue
is bounded (a full one drops, counted), one writer thread writes to the
:class:`~edgeship.sdk.learning._store.ExampleStore` (bounded in count and bytes, oldest
out; AES-GCM under a key derived from the device key when ``[encryption]`` has one).
``DELETE /v2/models/<name>/examples`` (or ``edgeship agent wipe-examples``) empties it.

Nothing here imports numpy or flwr at module import; the agent imports this module only
when agent.toml has a ``[learning]`` table.
"""

from __future__ import annotations

import json
import queue
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.agent._learning_config import LearningConfig, store_key

__all__ = ["Learning", "LearningConfig", "LearningTap", "store_key"]

_Item = tuple[dict[str, Any], int | None, str, tuple[str, int] | None]  # a queued example


@dataclass
class _Recent:
    """One answered request, kept for feedback by its id (rows are the request's)."""

    inputs: dict[str, Any]
    size: int
    waiting: set[int] = field(default_factory=set)  # kept unlabelled, not yet written
    stored: dict[int, Path] = field(default_factory=dict)  # kept unlabelled, written here
    labels: dict[int, int] = field(default_factory=dict)  # given while still waiting


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        r = registry
        self.kept = Counter("edgeship_learning_examples", "Examples kept by source", ["source"],
                            registry=r)
        self.dropped = Counter("edgeship_learning_dropped", "Examples not kept because the "
                               "writer queue was full", registry=r)
        self.errors = Counter("edgeship_learning_errors", "Examples that could not be "
                              "stored", registry=r)
        self.feedback = Counter("edgeship_learning_feedback", "Feedback requests by outcome",
                                ["outcome"], registry=r)
        self.labelled = Counter("edgeship_learning_labelled", "Kept unlabelled examples "
                                "labelled afterwards by feedback on their answer", registry=r)
        self.wiped = Counter("edgeship_learning_wiped", "Examples removed on request",
                             registry=r)
        self.held = Gauge("edgeship_learning_store_examples", "Examples in the store",
                          registry=r)
        self.held_bytes = Gauge("edgeship_learning_store_bytes", "Bytes in the store",
                                registry=r)


class LearningTap:
    """The tap, the writer thread, and the feedback / wipe routes of one agent."""

    def __init__(self, config: LearningConfig, store: Any, registry: Any, *,
                 serving: Callable[[], Any], drift_alert: Callable[[], bool],
                 log: Callable[..., None]) -> None:
        self.config, self.store, self.log = config, store, log
        self._serving, self._drift_alert = serving, drift_alert
        self.metrics = _Metrics(registry)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=config.queue)
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._recent_held = 0  # input bytes the recent answers hold
        self._recent_lock = threading.Lock()
        self._store_lock = threading.Lock()  # the writer and the HTTP threads share the store
        self._thread = threading.Thread(target=self._write_loop, name="learning-writer",
                                        daemon=True)
        self._thread.start()
        self._refresh_size()

    # -- the answer path: pick and enqueue only ------------------------------------------
    def observe(self, inputs: dict[str, Any], outputs: dict[str, Any], *, source: str,
                version: str, seconds: float) -> None:
        from edgeship.sdk.serving._v2server import current_request_id

        request_id = current_request_id()
        if not (self.config.feedback and self.config.recent and request_id is not None
                and self._remember(request_id, inputs)):
            request_id = None
        teacher = self._argmax(outputs) if source == "cloud" else None  # the cloud's labels
        if teacher is not None and (self.config.cloud or self.config.low_confidence > 0):
            # every cloud answer was an escalation: the local model could not be trusted
            kind = "cloud" if self.config.cloud else "low_confidence"
            for row, label in enumerate(teacher):
                self._enqueue(_row(inputs, row), label, kind)
            return
        if self.config.low_confidence > 0 and source in ("local", "local-degraded"):
            unsure = [row for row, sure in enumerate(self._confidences(outputs))
                      if sure < self.config.low_confidence]
            for row in unsure:
                self._enqueue_unlabelled(inputs, row, "low_confidence", request_id)
            if unsure:
                return
        if self.config.drift and self._drift_alert() and random.random() < self.config.drift_sample:
            for row in range(_rows(inputs)):
                if teacher is not None:
                    self._enqueue(_row(inputs, row), teacher[row], "drift")
                else:
                    self._enqueue_unlabelled(inputs, row, "drift", request_id)

    def _remember(self, request_id: str, inputs: dict[str, Any]) -> bool:
        size = sum(int(getattr(v, "nbytes", 0)) for v in inputs.values())
        if size > self.config.recent_bytes:
            return False
        with self._recent_lock:
            old = self._recent.pop(request_id, None)
            self._recent_held += size - (old.size if old else 0)
            self._recent[request_id] = _Recent(inputs=inputs, size=size)
            while self._recent and (len(self._recent) > self.config.recent
                                    or self._recent_held > self.config.recent_bytes):
                self._recent_held -= self._recent.popitem(last=False)[1].size
        return True

    def _enqueue_unlabelled(self, inputs: dict[str, Any], row: int, source: str,
                            request_id: str | None) -> None:
        """Keep a row with no label yet; feedback on ``request_id`` may label it later."""
        ref = (request_id, row) if request_id is not None else None
        if ref is not None:
            with self._recent_lock:
                entry = self._recent.get(ref[0])
                if entry is not None:
                    entry.waiting.add(row)
        if not self._enqueue(_row(inputs, row), None, source, ref) and ref is not None:
            with self._recent_lock:
                entry = self._recent.get(ref[0])
                if entry is not None:
                    entry.waiting.discard(row)

    def _output(self, outputs: dict[str, Any]) -> str:
        return self.config.output or next(iter(outputs))

    def _confidences(self, outputs: dict[str, Any]) -> list[float]:
        """Each row's top-class probability, read as the fallback reads it."""
        from edgeship.sdk.serving._fallback import confidence

        name = self._output(outputs)
        serving = self._serving()
        steps = getattr(serving.model, "output_steps", {}) if serving is not None else {}
        values = outputs[name]
        return [confidence({name: values[i:i + 1]}, activation=self.config.activation,
                           step=steps.get(name, 0.0)) for i in range(len(values))]

    def _argmax(self, outputs: dict[str, Any]) -> list[int]:
        import numpy as np

        values = np.asarray(outputs[self._output(outputs)])
        rows = values.reshape(values.shape[0] if values.ndim > 1 else 1, -1)
        return [int(i) for i in rows.argmax(axis=1)]

    def _enqueue(self, inputs: dict[str, Any], label: int | None, source: str,
                 ref: tuple[str, int] | None = None) -> bool:
        try:
            self._queue.put_nowait((inputs, label, source, ref))
            return True
        except queue.Full:
            self.metrics.dropped.inc()
            return False

    # -- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._write(*item)

    def _write(self, inputs: dict[str, Any], label: int | None, source: str,
               ref: tuple[str, int] | None = None) -> bool:
        from edgeship.sdk.learning._store import Example

        if label is None and ref is not None:  # feedback may have come while it waited
            label = self._given(ref, None)
        try:
            with self._store_lock:
                path = self.store.add(Example(inputs=inputs, label=label, source=source))
        except Exception as exc:  # disk full, an example over the byte bound: never the agent
            self.metrics.errors.inc()
            self.log("learning_store_failed", "warning", source=source, error=str(exc)[:200])
            self._given(ref, None)
            return False
        self.metrics.kept.labels(source=source).inc()
        if ref is not None:
            late = self._given(ref, path if label is None else None)
            if late is not None and self._relabel(path, late):
                self.metrics.labelled.inc()
        self._refresh_size()
        return True

    def _given(self, ref: tuple[str, int] | None, stored: Path | None) -> int | None:
        """The label feedback gave row ``ref`` while it waited (taken); with ``stored``,
        the row is written unlabelled there and no longer waits."""
        if ref is None:
            return None
        with self._recent_lock:
            entry = self._recent.get(ref[0])
            if entry is None:
                return None
            if stored is not None:
                entry.waiting.discard(ref[1])
                entry.stored[ref[1]] = stored
            return entry.labels.pop(ref[1], None)

    def _relabel(self, path: Path, label: int) -> bool:
        try:
            with self._store_lock:
                return bool(self.store.relabel(path, label))
        except Exception as exc:  # as _write: the store's trouble is never the agent's
            self.log("learning_store_failed", "warning", source="feedback", error=str(exc)[:200])
            return False

    def _refresh_size(self) -> None:
        try:
            count, size = self.store.size()
        except OSError:
            return
        self.metrics.held.set(count)
        self.metrics.held_bytes.set(size)

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            return
        self._thread.join(timeout=5.0)

    # -- routes (HTTP threads) ----------------------------------------------------------------
    def routes(self, model: str) -> list[Any]:
        from edgeship.sdk.serving._v2server import Route

        base = f"/v2/models/{model}"
        return [Route(method="POST", path=f"{base}/feedback", handler=self._feedback),
                Route(method="DELETE", path=f"{base}/examples", handler=self._wipe),
                Route(method="GET", path=f"{base}/examples", handler=self._count)]

    def _feedback(self, request: Any) -> Any:
        from edgeship.sdk.serving._v2server import Response

        try:
            inputs, labels, request_id = self._feedback_example(request)
        except _BadFeedback as exc:
            self.metrics.feedback.labels(outcome="refused").inc()
            return Response.json({"error": str(exc)}, exc.status)
        relabelled, fresh = self._label_kept(request_id, labels)
        stored = sum(self._write(_row(inputs, row), label, "feedback") for row, label in fresh)
        if stored < len(fresh):
            self.metrics.feedback.labels(outcome="failed").inc()
            return Response.json({"error": "the example could not be stored (see the "
                                           "agent's log)"}, 507)
        self.metrics.feedback.labels(outcome="stored").inc()
        body: dict[str, int] = {"stored": stored + relabelled}
        if relabelled:
            body["relabelled"] = relabelled
        return Response.json(body)

    def _label_kept(self, request_id: str | None, labels: list[int]
                    ) -> tuple[int, list[tuple[int, int]]]:
        """Label the rows of ``request_id`` this device already kept unlabelled (in the
        store, or still queued); returns how many, and the (row, label)s left to store."""
        if request_id is None:
            return 0, list(enumerate(labels))
        done, fresh, written = 0, [], []
        with self._recent_lock:
            entry = self._recent.get(request_id)
            for row, label in enumerate(labels):
                if entry is not None and row in entry.stored:
                    written.append((row, label, entry.stored.pop(row)))
                elif entry is not None and row in entry.waiting:
                    entry.labels[row] = label  # the writer puts it on when it writes
                    done += 1
                else:
                    fresh.append((row, label))
        for row, label, path in written:
            if self._relabel(path, label):
                done += 1
            else:  # evicted or wiped meanwhile: keep it as new feedback
                fresh.append((row, label))
        self.metrics.labelled.inc(done)
        return done, fresh

    def _feedback_example(self, request: Any) -> tuple[dict[str, Any], list[int], str | None]:
        """(inputs, one label per row, the answer's id if given) of a feedback body, or
        _BadFeedback in one line."""
        if not self.config.feedback:
            raise _BadFeedback("feedback is off on this device ([learning] feedback = false)",
                               403)
        try:
            doc = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadFeedback(f"the body is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or ("id" in doc) == ("inputs" in doc):
            raise _BadFeedback('expected {"id": "<request id>", "label": k} or '
                               '{"inputs": [...], "label": k}')
        if "id" in doc:
            with self._recent_lock:
                found = self._recent.get(str(doc["id"]))
            if found is None:
                raise _BadFeedback(f"no recent answer has id {str(doc['id'])[:80]!r} (this "
                                   f"device keeps the last {self.config.recent} answers)", 404)
            inputs = found.inputs
        else:
            inputs = self._decode_inputs(request.body)
        labels = _labels(doc.get("label"), _rows(inputs))
        classes = self._classes()
        if classes is not None and max(labels) >= classes:
            raise _BadFeedback(f'"label": {max(labels)} is not a class of this model '
                               f"(0..{classes - 1})")
        return inputs, labels, (str(doc["id"]) if "id" in doc else None)

    def _classes(self) -> int | None:
        """How many classes the judged output has (its last dimension), when known."""
        serving = self._serving()
        if serving is None:
            return None
        outputs = serving.metadata.outputs
        chosen = [o for o in outputs if o.name == self.config.output] or list(outputs[:1])
        shape = chosen[0].shape if chosen else ()
        return int(shape[-1]) if shape and int(shape[-1]) > 1 else None

    def _decode_inputs(self, body: bytes) -> dict[str, Any]:
        from edgeship.sdk.serving._v2 import decode_request, validate_inputs

        try:
            decoded = decode_request(body, None).inputs
            serving = self._serving()
            if serving is not None and serving.metadata.inputs:
                decoded = validate_inputs(decoded, serving.metadata.inputs)
        except Exception as exc:  # InputError and friends: the client's body
            raise _BadFeedback(f"inputs: {exc}") from exc
        if not decoded:
            raise _BadFeedback("inputs: none given")
        return dict(decoded)

    def _wipe(self, request: Any) -> Any:
        from edgeship.sdk.serving._v2server import Response

        removed = self.wipe()
        return Response.json({"removed": removed})

    def wipe(self) -> int:
        """Empty the store and forget the recent answers; returns the examples removed."""
        with self._recent_lock:
            self._recent.clear()
            self._recent_held = 0
        with self._store_lock:
            removed = int(self.store.wipe())
        self.metrics.wiped.inc(removed)
        self._refresh_size()
        self.log("learning_wiped", removed=removed)
        return removed

    def _count(self, request: Any) -> Any:
        from edgeship.sdk.serving._v2server import Response

        count, size = self.store.size()
        return Response.json({"examples": count, "bytes": size,
                              "max_examples": self.store.limits.max_examples,
                              "max_bytes": self.store.limits.max_bytes})


class _BadFeedback(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _rows(inputs: Mapping[str, Any]) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def _row(inputs: Mapping[str, Any], row: int) -> dict[str, Any]:
    """One example: row ``row`` of every input, batch axis kept (shape [1, ...])."""
    return {k: v[row:row + 1] if getattr(v, "ndim", 0) else v for k, v in inputs.items()}


def _labels(value: Any, rows: int) -> list[int]:
    """A class index for every row: one for all, or a list of ``rows``."""
    if isinstance(value, bool) or not isinstance(value, int | list):
        raise _BadFeedback('"label": expected a class index (an integer >= 0) or a list of '
                           "them, one per input row")
    labels = value if isinstance(value, list) else [value] * rows
    if len(labels) != rows or not all(isinstance(v, int) and not isinstance(v, bool)
                                      and v >= 0 for v in labels):
        raise _BadFeedback(f'"label": expected {rows} class indexes (integers >= 0), '
                           f"got {json.dumps(value)[:80]}")
    return list(labels)


class Learning:
    """What ``[learning]`` adds to one agent: the tap with its routes, and the SuperNode."""

    def __init__(self, config: Any, service: Any, registry: Any, device_key: Any | None,
                 taps: Any, log: Callable[..., None]) -> None:
        from edgeship.sdk.learning._store import ExampleStore, StoreLimits

        learning: LearningConfig = config.learning
        key = store_key(device_key)
        directory = learning.store_dir(config.data_dir)
        store = ExampleStore(directory, StoreLimits(max_examples=learning.max_examples,
                                                    max_bytes=learning.max_bytes), key=key)
        self.tap = LearningTap(learning, store, registry, serving=lambda: service.serving,
                               drift_alert=lambda: taps.drift is not None and taps.drift.alert,
                               log=log)
        service.taps = (*service.taps, self.tap)
        service.extra_routes = [*service.extra_routes, *self.tap.routes(config.model.name)]
        self.supernode = None
        if learning.superlink:
            from edgeship.agent._supernode import SuperNode

            self.supernode = SuperNode(learning, directory, key, log)
        log("learning_on", store=str(directory), encrypted=key is not None,
            sources=[s for s in ("cloud", "drift", "feedback") if getattr(learning, s)]
            + (["low_confidence"] if learning.low_confidence else []),
            superlink=learning.superlink or None)

    def active_loaded(self, slot: Any, model_file: Path) -> None:
        if self.supernode is not None:
            self.supernode.follow(slot, model_file)

    def close(self) -> None:
        if self.supernode is not None:
            self.supernode.stop()
        self.tap.close()
