"""Work that overlaps other work on a second core: a function on a worker thread
(onnxruntime's ``run`` and numpy's large operations release the GIL), and the checks that
keep the overlapped result exactly the one a sequential run would give.

Learned rounding's Gram matrices (converter/_learned.py) read only the float graph's
weights and the calibration samples. When calibration runs the samples one at a time, it
hands each sample's layer inputs to them (:class:`Grams`): no second float pass over the
calibration set (ddddocr_ocr: 64 runs of a 54 MB LSTM recognizer, ~13 s of CPU that
competed with calibration for the second core; the written files are byte-identical).
When calibration batches, the Gram run (``collect_grams``) starts on a worker thread on
a snapshot of the optimized graph while calibration, equalization's guard and bias
correction's guard run. Either way the Grams are used only when those left every weight
as it was (equalization off, the usual outcome); otherwise they are collected again on the
graph as it ended up. Each onnxruntime session stays single-threaded and the rows are
drawn by a seeded generator, so the bytes written do not depend on the timing."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._evaluate import sample_count
from ._ir import Graph

T = TypeVar("T")


class Background(Generic[T]):
    """``fn(*args)`` on a daemon thread; :meth:`result` waits for it (and re-raises)."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0  # the run's own wall time
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        began = time.perf_counter()
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - began

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def wait(self) -> None:
        """Join without the result (a discarded run must not outlive the conversion)."""
        self._thread.join()


def snapshot(graph: Graph) -> Graph:
    """A copy of ``graph`` a worker can read and re-index while the caller edits its own:
    node list, initializer dict and indexes are its own; nodes and arrays are shared (the
    passes replace arrays, they do not write into them)."""
    copy = dataclasses.replace(
        graph, nodes=list(graph.nodes), inits=dict(graph.inits), inputs=list(graph.inputs),
        outputs=list(graph.outputs), value_info=dict(graph.value_info), producer={},
        consumers={}, domains=dict(graph.domains),
    )
    copy.reindex()
    return copy


def same_weights(graph: Graph, copy: Graph) -> bool:
    """True when ``graph`` still holds exactly the nodes and initializer arrays ``copy``
    was taken with (identity, not equality: any pass that changed a weight made a new array)."""
    if len(graph.nodes) != len(copy.nodes) or graph.inits.keys() != copy.inits.keys():
        return False
    return all(a is b for a, b in zip(graph.nodes, copy.nodes, strict=True)) and all(
        graph.inits[k] is copy.inits[k] for k in graph.inits
    )


class Grams:
    """Learned rounding's Gram matrices for the graph as it is now (a snapshot): from
    calibration's own float pass when it runs the samples one at a time (it hands each
    sample's layer inputs to :meth:`add`, the first calibration only), else from a run of
    their own on a worker thread, started when calibration says it batches (:meth:`batched`).
    Either way the Grams are those of ``collect_grams`` on the snapshot: the same float
    values, rows drawn in the same order."""

    def __init__(self, graph: Graph, feeds: dict[str, Any]) -> None:
        from ._learned import GramCollector

        self.copy = snapshot(graph)
        self.feeds = feeds
        self.collector = GramCollector(self.copy, sample_count(feeds))
        self.inputs = self.collector.inputs
        self.job: Background[Any] | None = None
        self.taken = False

    def observer(self) -> Grams | None:
        """Itself for the first calibration, None after (later ones may be of other weights)."""
        if self.taken:
            return None
        self.taken = True
        return self

    def add(self, values: dict[str, Any]) -> None:
        self.collector.add(values)

    def batched(self) -> None:
        from ._learned import collect_grams

        self.job = Background(collect_grams, self.copy, self.feeds)

    def wait(self) -> None:
        if self.job is not None:
            self.job.wait()

    def result(self) -> tuple[Any, float, float]:
        """(layers, the run's own seconds, seconds it added to the conversion on this thread)."""
        if self.job is not None:
            return self.job.result(), self.job.seconds, 0.0
        if not self.taken:  # no calibration ran on these weights: run them here
            self.batched()
            return self.result()
        inline = self.collector.seconds  # spent in add(), inside calibration's loop
        layers = self.collector.finish()
        return layers, self.collector.seconds, inline
