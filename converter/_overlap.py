"""Work that overlaps other work on a second core: a function on a worker thread
(onnxruntime's ``run`` and numpy's large operations release the GIL), and the checks that
keep the overlapped result exactly the one a sequential run would give.

Learned rounding's Gram run (converter/_learned.py ``collect_grams``) reads only the float
graph's weights and the calibration samples; it starts on the optimized graph while
calibration, equalization's guard and bias correction's guard run, and its result is used
only when those left every weight as it was (equalization off, the usual outcome);
otherwise it is run again on the graph as it ended up. Each onnxruntime session stays
single-threaded and the rows are drawn by a seeded generator, so the bytes written are
the same as without the overlap."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

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
