"""``--max-drop``'s probe (converter/_mixed_probe.py): one session that computes the INT8
model of any set of float groups without a rebuild, and the search over it
(converter/_mixed_search.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from edgeship.converter import _accuracy, _convert, _evaluate, _mixed_probe, _mixed_search
from edgeship.converter._options import ConvertOptions

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from rescaled_mlp import rescaled_mlp  # noqa: E402


def _quantized(model: Path, calib: Path) -> tuple[object, object]:
    opts = ConvertOptions(formats=("onnx",), max_drop=1.0)
    inp = _convert._read_inputs(model, calib, None, None, opts)
    return inp, _convert._quantize(inp, opts, _convert._Clock(None), False)


def _outputs(sess: object, feeds: list[dict[str, np.ndarray]], extra: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([sess.run(None, {**f, **extra})[0] for f in feeds])  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["mobilenet", "cnn"])
def test_probe_computes_the_rebuilt_model_of_any_float_set(name: str) -> None:
    """All switches off: the fp32 model; the all-int8 plan: the QDQ model; a plan with
    groups kept float: the QDQ model rebuilt with them (weights, biases, scales)."""
    inp, q = _quantized(FIX / f"{name}.onnx", FIX / f"{name}_calib.npz")
    probe = _mixed_probe.build_probe(q.graph, q.plan, q.qmodel)
    sess = _evaluate.session(probe.model)
    feeds = list(_evaluate.samples({k: v[:6] for k, v in inp.calib.items()}))
    fp32 = _outputs(_evaluate.session(q.graph.to_model()), feeds, {})
    int8 = _outputs(_evaluate.session(q.qmodel), feeds, {})
    assert probe.weight_nodes and len(probe.tensors) == len(q.plan.quantized)
    np.testing.assert_allclose(_outputs(sess, feeds, probe.switches({}, [])), fp32, rtol=1e-5, atol=1e-5)
    on = _outputs(sess, feeds, probe.feeds(q.plan))
    np.testing.assert_allclose(on, int8, rtol=1e-4, atol=1e-4)
    assert np.abs(int8 - fp32).max() > 10 * np.abs(on - int8).max()  # int8 noise is seen
    groups = _mixed_probe.candidate_groups(q.graph, q.plan, None)
    for k in (1, len(groups) // 2):
        keep = _mixed_search.keep_map(groups[:k], 1.0)
        plan = _accuracy._planned(q.graph, q.plan_of(keep))
        seconds = q.policy.seconds  # type: ignore[attr-defined]
        rebuilt = _outputs(_evaluate.session(q.rebuild(keep).qmodel), feeds, {})
        # a rebuild reads the learned roundings the first build made (no second run)
        assert q.policy.rounded and q.policy.seconds == seconds  # type: ignore[attr-defined]
        np.testing.assert_allclose(_outputs(sess, feeds, probe.feeds(plan)), rebuilt,
                                   rtol=1e-4, atol=1e-4)
        assert len(plan.quantized) < len(q.plan.quantized)


def test_isolated_noise_ranks_the_rescaled_layers_first(tmp_path: Path) -> None:
    """The rescaled MLP without equalization: the Gemm whose hidden units were scaled
    100-400x (its weights' per-channel scales, the next tensor's range) is the noise."""
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    opts = ConvertOptions(formats=("onnx",), max_drop=1.0, equalize=False)
    inp = _convert._read_inputs(model, FIX / "mlp_calib.npz", None, None, opts)
    q = _convert._quantize(inp, opts, _convert._Clock(None), False)
    measure = _accuracy._drop_measure(inp, q.graph.to_model(), "sqnr")
    probe = _mixed_probe.build_probe(q.graph, q.plan, q.qmodel)
    search = _mixed_search.ProbeSearch(probe, measure, lambda k: _accuracy._planned(
        q.graph, q.plan_of(k)), q.plan)
    groups = _mixed_probe.candidate_groups(q.graph, q.plan, None)
    ranked = _mixed_search.rank(search, groups)
    assert [r["noise"] for r in ranked] == sorted((r["noise"] for r in ranked), reverse=True)
    assert ranked[0]["noise"] > 10 * ranked[-1]["noise"]
    # the two rescaled layers rank first (near equal): float, they remove nearly all the
    # output noise, the first alone part of it; all int8 is the worst
    everything = search.drop({})
    top = search.drop(_mixed_search.keep_map(ranked[:1], 1.0))
    assert search.drop(_mixed_search.keep_map(ranked[:2], 1.0)) < 0.01 * everything
    assert top < 0.8 * everything
    assert ranked[0]["op"] == "Gemm" or "Gemm" in {n.split("@")[0] for n in ranked[0]["nodes"]}


def test_schedule_and_fewest_bisect_below_the_first_count_that_holds() -> None:
    assert _mixed_search.schedule(10) == [1, 2, 3, 5, 8, 10]
    assert _mixed_search.schedule(0) == []
    calls: list[int] = []

    def drop_at(k: int) -> float:
        calls.append(k)
        return 0.5 if k >= 11 else 5.0

    k, seen = _mixed_search.fewest(drop_at, 20, 1.0)
    assert k == 11 and seen[11] == 0.5 and seen[8] == 5.0
    assert calls[:6] == [1, 2, 3, 5, 8, 12] and 20 not in calls
    none, seen = _mixed_search.fewest(lambda k: 3.0, 6, 1.0)
    assert none is None and sorted(seen) == _mixed_search.schedule(6)  # 5 = n - 1 in it
    # only most groups float hold, and 36 or more leave no INT8 (inf): the counts between
    # the schedule's 27 and 40 are bisected (33 holds), then refined down to 30
    k, seen = _mixed_search.fewest(
        lambda k: float("inf") if k >= 36 else 0.5 if k >= 30 else 5.0, 40, 1.0)
    assert k == 30 and seen[33] == 0.5 and seen[29] == 5.0 and seen[27] == 5.0


def test_search_checks_the_probe_count_and_grows_on_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real conversion misses at the probe's count (its kernels round apart from the
    probe's): the next count of the schedule is built; the fewest that held is kept."""

    class Fake:
        def __init__(self) -> None:
            self.seconds_per_sample = self.estimated_s = 0.0

        def drop(self, keep: dict[str, str], stop_above: float | None = None) -> float:
            return 0.0 if len({v for v in keep.values()}) >= 3 else 4.0

    groups = [{"head": f"n{i}", "nodes": [f"n{i}", f"r{i}"], "root": f"t{i}", "op": "Conv",
               "noise": 1.0 / (i + 1)} for i in range(10)]
    built: list[int] = []

    def real(keep: dict[str, str]) -> float:
        built.append(len(keep) // 2)
        return 0.0 if len(keep) // 2 >= 5 else 2.0

    monkeypatch.setattr(_mixed_search, "rank", lambda search, g: g)  # in the given order
    result, keep = _mixed_search.search_probe(1.0, Fake(), groups, 9.0, real, "top1")  # type: ignore[arg-type]
    assert built == [3, 5] and result.met and result.drop == 0.0
    assert result.kept_float == ["n0", "n1", "n2", "n3", "n4"] and set(keep) >= {"n4", "r4"}
    assert "sensitivity rank 1" in keep["n0"] and "sensitivity rank 5" in keep["r4"]
    assert [t["units"] for t in result.tried][-2:] == ["rebuilt", "rebuilt"]


def test_trim_hands_back_the_groups_the_target_does_not_need() -> None:
    """Only groups 1 and 6 matter: the runs without them go back to int8."""
    groups = [{"head": f"n{i}", "nodes": [f"n{i}"]} for i in range(8)]
    result, tries = _mixed_search.trim(
        groups, lambda gs: 0.0 if {"n1", "n6"} <= {g["head"] for g in gs} else 5.0, 1.0)
    assert [g["head"] for g in result] == ["n1", "n6"]
    assert len(tries) <= _mixed_search.TRIM_TRIES and all(c < 8 for c, _ in tries)


def test_fast_drop_is_the_measure_s_drop_and_stops_with_a_lower_bound() -> None:
    """Run in full, the probe's drop is the measure's own on the same outputs (held-out
    tail and all samples, the larger); stopped at a target, it is over the target and no
    more than the full drop; the samples lost come first next time."""
    inp, q = _quantized(FIX / "mobilenet.onnx", FIX / "mobilenet_calib.npz")
    measure = _accuracy._drop_measure(inp, q.graph.to_model(), "sqnr")
    probe = _mixed_probe.build_probe(q.graph, q.plan, q.qmodel)
    sess = _evaluate.session(probe.model)
    runner = _mixed_probe._Runner(sess, probe.feeds(q.plan))
    fast = _mixed_search.FastDrop(measure)
    full, runs = fast.drop(runner)
    assert runs == fast.n and full == pytest.approx(measure.drop_runner(runner), rel=1e-9)
    assert full > 0 and set(fast.order) == set(range(fast.n))
    bound, runs = fast.drop(runner, stop_above=full / 4)
    assert full / 4 < bound <= full + 1e-9 and runs < fast.n


def test_a_trimmed_set_that_misses_for_real_falls_back_to_the_count_that_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Fake:
        seconds_per_sample = 0.0
        estimated_s = 0.0

        def drop(self, keep: dict[str, str], stop_above: float | None = None) -> float:
            return 0.0 if {"n0", "n2"} <= set(keep) else 4.0

    groups = [{"head": f"n{i}", "nodes": [f"n{i}"], "root": f"t{i}", "op": "Conv", "noise": 1.0}
              for i in range(10)]
    built: list[list[str]] = []

    def real(keep: dict[str, str]) -> float:
        built.append(sorted(keep))
        return 0.0 if len(keep) >= 3 else 2.0

    monkeypatch.setattr(_mixed_search, "rank", lambda search, g: g)
    result, keep = _mixed_search.search_probe(1.0, Fake(), groups, 9.0, real, "top1")  # type: ignore[arg-type]
    assert built == [["n0", "n2"], ["n0", "n1", "n2"]] and result.met
    assert result.kept_float == ["n0", "n1", "n2"] and set(keep) == {"n0", "n1", "n2"}


def test_the_ranking_s_sample_count_is_read_from_the_graph_not_a_clock() -> None:
    """A Conv 3->8 (3x3) on 1x3x10x10 then a Relu: 800 + 800 output elements, 8 * 27
    weights and 800 * 27 MACs; the count of samples the ranking runs follows that estimate alone (two runs,
    a busy machine or an idle one, rank on the same samples and write the same file)."""
    from edgeship.converter._ir import Graph
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])], [w])
    import onnx

    model = onnx.shape_inference.infer_shapes(helper.make_model(graph))
    estimate = _mixed_search.estimated_seconds(Graph.from_model(model))
    assert estimate == pytest.approx(1600 * _mixed_search.PROBE_S_PER_ELEMENT
                                     + 8 * 27 * _mixed_search.PROBE_S_PER_WEIGHT
                                     + 800 * 27 * _mixed_search.PROBE_S_PER_MAC)
    assert _mixed_search.rank_samples(estimate, 40) == _mixed_search.RANK_SAMPLES
    slow = _mixed_search.RANK_BUDGET_S / 40 / 4  # a probe run 4x over the budget's share
    assert _mixed_search.rank_samples(slow, 40) == 4
    assert _mixed_search.rank_samples(100.0, 40) == 1


def test_the_default_is_kept_when_no_conversion_built_reads_better(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--max-drop never writes a model that reads worse than the default on its own
    measure: every conversion built misses and reads worse than all-int8, so the default
    stays (no float node, the all-int8 drop reported)."""

    class Fake:
        seconds_per_sample = estimated_s = 0.0

        def drop(self, keep: dict[str, str], stop_above: float | None = None) -> float:
            return 0.0  # the probe says any float group holds

    groups = [{"head": f"n{i}", "nodes": [f"n{i}"], "root": f"t{i}", "op": "Conv", "noise": 1.0}
              for i in range(6)]
    built: list[int] = []

    def real(keep: dict[str, str]) -> float:
        built.append(len(keep))
        return 5.0  # worse than the default's 4.0

    monkeypatch.setattr(_mixed_search, "rank", lambda search, g: g)
    result, keep = _mixed_search.search_probe(1.0, Fake(), groups, 4.0, real, "top1")  # type: ignore[arg-type]
    assert built and keep == {} and not result.met
    assert result.drop == 4.0 and result.kept_float == []
