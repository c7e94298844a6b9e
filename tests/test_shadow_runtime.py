"""The shadow runtime: real worker child processes running real onnxruntime sessions,
fed from an in-process AgentService (agent/_api.py) answering with a real Model."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from edgeship.agent._api import AgentService, Metrics, Serving, describe
from edgeship.agent._shadow import ShadowConfig, ShadowTap, compare_outputs
from edgeship.sdk.runtime._model import Model
from onnx import TensorProto, helper, numpy_helper

from edgeship import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
MLP = FIXTURES / "mlp.onnx"
NAME = "m"


def perturbed(path: Path, scale: float, seed: int = 0) -> bytes:
    """The model with noise added to every weight matrix (another model, same I/O)."""
    model = onnx.load(path)
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim >= 2 and w.dtype == np.float32:
            w = w + rng.normal(0, scale * (float(np.std(w)) or 1.0), w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return model.SerializeToString()


def raising_model() -> bytes:
    """Same input and output names as the MLP; loads, but every inference raises (a
    Reshape of 30 values to 7)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 30])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1])
    shape = numpy_helper.from_array(np.array([7], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["probs"])],
                              "bad", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.load(FIXTURES / "mlp_eval.npz")["input"][:120]


@pytest.fixture(scope="module")
def service() -> AgentService:
    model = Model.load(MLP, threads=1)
    svc = AgentService(NAME, Metrics())
    svc.swap(Serving(model=model, version="1.0.0", sha256="0" * 64,
                     metadata=describe(NAME, model, "1.0.0")))
    return svc


@pytest.fixture
def taps() -> Iterator[list[ShadowTap]]:
    made: list[ShadowTap] = []
    yield made
    for tap in made:
        tap.stop()


def new_tap(taps: list[ShadowTap], model: bytes, **config: Any) -> ShadowTap:
    events: list[tuple[str, dict[str, Any]]] = []
    tap = ShadowTap(ShadowConfig(**{"sample": 1.0, "cpu_budget": 1.0, "queue": 256, **config}),
                    log=lambda event, level="info", **f: events.append((event, f)))
    tap.events = events  # type: ignore[attr-defined]
    taps.append(tap)
    tap.start(model, fmt="onnx", version="2.0.0", runtime="onnxruntime", threads=1)
    return tap


def answers(svc: AgentService, rows: np.ndarray, pause: float = 0.0) -> list[bytes]:
    out = []
    for row in rows:
        outputs, params = svc.infer(NAME, {"input": row[None, :]})
        assert params == {"source": "local", "version": "1.0.0"}
        out.append(b"".join(v.tobytes() for v in outputs.values()))
        if pause:
            time.sleep(pause)
    return out


def settle(tap: ShadowTap, timeout: float = 30.0) -> dict[str, Any]:
    """Stats once the queue is empty and nothing more is compared for a moment."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        stats = tap.stats()
        done = stats["compared"] + stats["dropped"] + stats["errors"] - stats["crashes"]
        if stats == last and (done >= stats["sampled"] or stats["state"] != "running"):
            return stats
        last = stats
        time.sleep(0.2)
    return tap.stats()


def test_same_model_agrees_fully(service: AgentService, rows: np.ndarray,
                                 taps: list[ShadowTap]) -> None:
    tap = new_tap(taps, MLP.read_bytes())
    assert tap.wait_ready(60), tap.stats()
    service.taps = (tap,)
    try:
        answers(service, rows, pause=0.002)
    finally:
        service.taps = ()
    stats = settle(tap)
    assert stats["state"] == "running" and stats["version"] == "2.0.0"
    assert stats["sampled"] == len(rows) and stats["compared"] == len(rows), stats
    assert stats["agreement"] == 1.0 and stats["max_abs_diff"] == 0.0
    assert stats["errors"] == 0 and stats["dropped"] == 0
    assert stats["active_p50_ms"] > 0 and stats["shadow_p50_ms"] > 0
    tap.stop()
    assert tap.stats()["state"] == "stopped" and tap.stats()["compared"] == len(rows)


def test_a_different_model_agrees_less(service: AgentService, rows: np.ndarray,
                                       taps: list[ShadowTap]) -> None:
    tap = new_tap(taps, perturbed(MLP, 0.5), atol=0.01)
    assert tap.wait_ready(60)
    service.taps = (tap,)
    try:
        answers(service, rows, pause=0.002)
    finally:
        service.taps = ()
    stats = settle(tap)
    assert stats["compared"] == len(rows), stats
    assert stats["agreement"] < 0.9 and stats["max_abs_diff"] > 0.01, stats


def test_only_local_answers_are_sampled_and_the_queue_is_bounded(taps: list[ShadowTap],
                                                                 rows: np.ndarray) -> None:
    tap = new_tap(taps, MLP.read_bytes(), sample=0.25, queue=2)
    assert tap.wait_ready(60)
    x = {"input": rows[:1]}
    y = {"probs": np.zeros((1, 1), np.float32)}
    for _ in range(40):
        tap.observe(x, y, source="cloud", version="1.0.0", seconds=0.001)
    assert tap.stats()["sampled"] == 0
    for _ in range(400):  # a burst: far faster than the child answers
        tap.observe(x, y, source="local", version="1.0.0", seconds=0.001)
    stats = settle(tap)
    assert stats["sampled"] == 100  # exactly a quarter
    assert stats["dropped"] > 0 and stats["compared"] + stats["dropped"] == 100, stats


def test_shadow_model_raising_leaves_answers_unchanged(service: AgentService, rows: np.ndarray,
                                                       taps: list[ShadowTap]) -> None:
    baseline = answers(service, rows)
    tap = new_tap(taps, raising_model())
    assert tap.wait_ready(60)
    service.taps = (tap,)
    try:
        got = answers(service, rows, pause=0.001)
    finally:
        service.taps = ()
    assert got == baseline  # byte for byte
    stats = settle(tap)
    assert stats["state"] == "running" and stats["compared"] == 0
    assert stats["errors"] == stats["sampled"] == len(rows), stats
    assert [e for e, _ in tap.events].count("shadow_inference_failed") == 3  # type: ignore[attr-defined]


def test_killed_worker_is_restarted_and_answers_are_unchanged(
        service: AgentService, rows: np.ndarray, taps: list[ShadowTap]) -> None:
    baseline = answers(service, rows)
    tap = new_tap(taps, MLP.read_bytes(), backoff_s=0.1)
    assert tap.wait_ready(60)
    first = tap.worker_pid
    service.taps = (tap,)
    try:
        got = answers(service, rows[:40], pause=0.002)
        assert first is not None
        os.kill(first, signal.SIGKILL)  # mid-traffic
        got += answers(service, rows[40:], pause=0.002)
        deadline = time.monotonic() + 30  # traffic until the new worker compares again
        while tap.stats()["compared"] <= 40 or tap.worker_pid == first:
            assert time.monotonic() < deadline, tap.stats()
            assert answers(service, rows[:5], pause=0.01) == baseline[:5]
    finally:
        service.taps = ()
    assert got == baseline
    stats = settle(tap)
    assert stats["state"] == "running" and stats["crashes"] == 1 and stats["restarts"] == 1
    assert stats["agreement"] == 1.0
    died = [f for e, f in tap.events if e == "shadow_worker_died"]  # type: ignore[attr-defined]
    assert len(died) == 1 and "signal 9" in died[0]["reason"]


def test_a_model_that_never_loads_ends_crashed(taps: list[ShadowTap], rows: np.ndarray) -> None:
    tap = new_tap(taps, b"\x08\x07not an onnx model", max_restarts=2, backoff_s=0.05)
    deadline = time.monotonic() + 60
    while tap.stats()["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stats = tap.stats()
    assert stats["state"] == "crashed" and stats["crashes"] == 3 and stats["restarts"] == 2
    tap.observe({"input": rows[:1]}, {"probs": np.zeros((1, 1))}, source="local",
                version="1.0.0", seconds=0.001)
    assert tap.stats()["sampled"] == 0  # a crashed shadow ignores traffic
    assert "model did not load" in tap.events[-1][1]["reason"]  # type: ignore[attr-defined]
    tap.stop()
    assert tap.stats()["state"] == "crashed"


def test_cpu_budget_limits_the_samples(service: AgentService, rows: np.ndarray,
                                       taps: list[ShadowTap]) -> None:
    counts = {}
    for budget in (1.0, 0.00001):
        tap = new_tap(taps, MLP.read_bytes(), cpu_budget=budget, queue=4)
        assert tap.wait_ready(60)
        service.taps = (tap,)
        try:
            if budget < 1.0:
                # the budget is charged when a comparison ends: a loaded machine (the
                # worker is niced) ended the first only after the whole run, so nothing
                # was held back yet. First one comparison, until the budget says no.
                deadline = time.monotonic() + 60
                while tap.stats()["budget_skipped"] == 0:
                    assert time.monotonic() < deadline, tap.stats()
                    answers(service, rows[:1], pause=0.01)
            before = tap.stats()
            answers(service, rows, pause=0.003)
        finally:
            service.taps = ()
        after = settle(tap)
        counts[budget] = {k: after[k] - before[k] for k in ("sampled", "budget_skipped")}
        tap.stop()
    big, tiny = counts[1.0], counts[0.00001]
    assert big["sampled"] == len(rows) and big["budget_skipped"] == 0, big
    # each shadow inference costs > 0.1 ms of CPU: at 0.001 % of a core that is > 10 s
    # of wall time before the next sample; the run lasts about half a second
    assert tiny["sampled"] < len(rows) / 4 and tiny["budget_skipped"] > len(rows) / 2, tiny


def test_compare_outputs() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1]], np.float32)
    assert compare_outputs({"s": scores}, {"s": scores + 0.05}, 1e-3) == (True, pytest.approx(0.05))
    swapped = scores[:, [1, 0, 2]]  # another top-1 in both rows
    assert compare_outputs({"s": scores}, {"s": swapped}, 1.0)[0] is False
    prob = np.array([[0.5]], np.float32)
    assert compare_outputs({"p": prob}, {"p": prob + 0.01}, 0.02)[0] is True
    assert compare_outputs({"p": prob}, {"p": prob + 0.03}, 0.02)[0] is False
    assert compare_outputs({"p": prob}, {"q": prob}, 0.02) == (False, None)
    assert compare_outputs({"p": prob}, {"p": np.zeros((2, 1))}, 0.02) == (False, None)
    agree, diff = compare_outputs({"p": prob}, {"p": np.array([[np.nan]])}, 0.02)
    assert agree is False and diff == float("inf")


def test_config_from_the_shadow_table() -> None:
    cfg = ShadowConfig.from_dict({"sample": 0.5, "cpu_budget": 1, "queue": 4, "atol": 0.01,
                                  "some_future_key": True})
    assert (cfg.sample, cfg.cpu_budget, cfg.queue, cfg.atol) == (0.5, 1.0, 4, 0.01)
    assert ShadowConfig.from_dict({}) == ShadowConfig()
    for bad, msg in (({"sample": 0}, "shadow.sample"), ({"queue": 1.5}, "shadow.queue"),
                     ({"cpu_budget": True}, "shadow.cpu_budget"), ({"nice": 40}, "shadow.nice")):
        with pytest.raises(ConfigError, match=msg):
            ShadowConfig.from_dict(bad)
    with pytest.raises(ConfigError):
        ShadowTap().start(b"", fmt="pt", version="1.0.0")


def test_hung_worker_times_out_and_is_replaced(service: AgentService, rows: np.ndarray,
                                               taps: list[ShadowTap]) -> None:
    baseline = answers(service, rows[:30])
    # the replacement (niced, on a loaded machine) must answer within timeout_s, or it
    # counts as hung too: 2 s, not 0.5
    tap = new_tap(taps, MLP.read_bytes(), timeout_s=2.0, backoff_s=0.05)
    assert tap.wait_ready(60)
    hung = tap.worker_pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # alive, but never answers again
    service.taps = (tap,)
    try:
        assert answers(service, rows[:30], pause=0.002) == baseline
        deadline = time.monotonic() + 30
        while tap.stats()["compared"] == 0:
            assert time.monotonic() < deadline, tap.stats()
            assert answers(service, rows[:5], pause=0.01) == baseline[:5]
    finally:
        service.taps = ()
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    stats = tap.stats()
    assert stats["crashes"] == 1 and stats["state"] == "running" and tap.worker_pid != hung
    died = [f for e, f in tap.events if e == "shadow_worker_died"]  # type: ignore[attr-defined]
    assert "did not answer in 2s" in died[0]["reason"]
    with pytest.raises(ProcessLookupError):  # the hung child was killed and reaped
        os.kill(hung, 0)


def test_a_request_sent_on_shadow_ready_is_taken(rows: np.ndarray, taps: list[ShadowTap]
                                                 ) -> None:
    """"shadow_ready" is logged once the tap takes requests: one observed from inside that
    log call (as a client that reads the log and asks at once) is queued, not dropped
    (seen in CI under load: the log came first and a request fell in between)."""
    seen: list[dict[str, int]] = []

    def log(event: str, level: str = "info", **fields: Any) -> None:
        if event == "shadow_ready":
            x = rows[:1]
            tap.observe({"input": x}, {"probs": x}, source="local", version="1.0.0",
                        seconds=0.001)
            seen.append(tap.stats())

    tap = ShadowTap(ShadowConfig(sample=1.0, cpu_budget=1.0, queue=8), log=log)
    taps.append(tap)
    tap.start(MLP.read_bytes(), fmt="onnx", version="2.0.0", runtime="onnxruntime", threads=1)
    deadline = time.monotonic() + 60
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen, "the shadow never became ready"
    assert seen[0]["sampled"] == 1 and seen[0]["dropped"] == 0
