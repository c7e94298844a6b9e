"""``--max-drop`` (converter/_mixed.py): layers ranked by the noise they add, the fewest
most sensitive kept float until the drop holds; exit 3 with OUT/ written when it cannot."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from edgeship.converter._ir import Graph
from edgeship.converter._mixed import rank_layers, search, steps
from onnx import TensorProto, helper, numpy_helper

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from conftest import run_cli  # noqa: E402
from rescaled_mlp import rescaled_mlp  # noqa: E402


def test_steps_and_search_stop_at_the_first_k_that_holds() -> None:
    assert steps(10) == [1, 2, 3, 5, 8, 10]
    assert steps(0) == []
    ranked = [{"node": f"n{i}", "with": [f"r{i}"] if i == 0 else []} for i in range(6)]
    seen = []

    def drop_of(keep: dict[str, str]) -> float:
        seen.append(sorted(keep))
        return {1: 5.0, 2: 3.0, 3: 0.5}.get(sum(k.startswith("n") for k in keep), 0.0)

    result, keep = search(1.0, ranked, 9.0, drop_of, "accuracy")
    assert result.met and result.drop == 0.5 and result.kept_float == ["n0", "n1", "n2"]
    assert set(keep) == {"n0", "r0", "n1", "n2"}  # the folded Relu goes float with its layer
    assert "sensitivity rank 1" in keep["n0"] and len(seen) == 3
    result, keep = search(0.1, ranked, 9.0, lambda k: 2.0 + 0 * len(k), "agreement")
    assert not result.met and result.drop == 2.0 and len(result.tried) == len(steps(6))
    already, keep = search(5.0, ranked, 1.0, drop_of, "accuracy")
    assert already.met and keep == {} and already.tried == []


def test_search_bisects_to_the_fewest_and_refuses_all_float() -> None:
    ranked = [{"node": f"n{i}", "with": []} for i in range(20)]

    def drop_of(keep: dict[str, str]) -> float:
        k = len(keep)
        return float("inf") if k == 20 else (0.5 if k >= 11 else 5.0)  # 20: every tensor float

    result, keep = search(1.0, ranked, 9.0, drop_of, "ctc")
    tried = [t["float_layers"] for t in result.tried]
    assert tried[:6] == [1, 2, 3, 5, 8, 13] and 20 not in tried  # 13 met: bisect 8..13
    assert result.met and len(keep) == 11 and result.drop == 0.5
    worse, keep = search(1.0, ranked, 9.0, lambda k: float("inf") if len(k) == 20 else 3.0, "ctc")
    assert not worse.met and worse.drop == 3.0 and 17 in [t["float_layers"] for t in worse.tried]
    # above 16 every tensor is float; 15 and 16 meet the target: found below the top
    late, keep = search(1.0, ranked, 9.0, lambda k: float("inf") if len(k) > 16 else
                        (0.0 if len(k) >= 15 else 4.0), "ctc")
    assert late.met and len(keep) == 15


def test_rank_by_the_noise_a_layer_adds_not_inherits() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["a"], name="g1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w"], ["y"], name="g2"),
    ]
    graph = Graph.from_model(
        helper.make_model(
            helper.make_graph(
                nodes,
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                [w],
            )
        )
    )
    rules = {"g1": object(), "g2": object(), "relu": object()}
    # g1 takes the input from 50 dB to 20 dB; g2 from 20 dB to 19 dB: g1 is the culprit
    ranked = rank_layers(graph, rules, {"relu": "g1"}, {"x": 50.0, "r": 20.0, "y": 19.0})
    assert [r["node"] for r in ranked] == ["g1", "g2"]
    assert ranked[0]["with"] == ["relu"] and ranked[0]["added_noise"] > ranked[1]["added_noise"]


def _convert(args: list[str], fmt: str = "onnx") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgeship", "convert", *args, "--format", fmt, "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_max_drop_keeps_sensitive_layers_float(tmp_path: Path) -> None:
    """The rescaled MLP without equalization loses ~60 points; --max-drop 1 keeps the
    layers that cause it float and lands within 1 point."""
    model = rescaled_mlp(FIX / "mlp.onnx", tmp_path / "r.onnx")
    out = tmp_path / "out"
    done = _convert(
        [
            str(model),
            "--calib",
            str(FIX / "mlp_calib.npz"),
            "-o",
            str(out),
            "--eval",
            str(FIX / "mlp_eval.npz"),
            "--no-equalize",
            "--max-drop",
            "1",
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    mixed = (
        report["mixed_precision"]
        if "mixed_precision" in report
        else report["extra"]["mixed_precision"]
    )
    assert mixed["met"] and mixed["drop_all_int8"] > 30 and mixed["drop"] <= 1.0
    assert mixed["kept_float"] and mixed["ranking"][0]["node"] == mixed["kept_float"][0]
    assert mixed["float_nodes"] >= len(mixed["kept_float"]) and mixed["int8_nodes"] >= 1
    assert report["eval"]["int8_accuracy"] >= report["eval"]["fp32_accuracy"] - 1.0
    floats = {f["node"] for f in report["float_ops"] if "--max-drop" in f["reason"]}
    assert set(mixed["kept_float"]) <= floats
    page = (out / "report.html").read_text()  # the ranking and what was kept, in the page
    assert "<h2>Mixed precision (--max-drop 1)</h2>" in page
    assert all(html.escape(node) in page for node in mixed["kept_float"])
    assert f"mixed precision ({len(mixed['kept_float'])} float)" in page


def test_unreachable_target_exits_3_with_out_written(tmp_path: Path) -> None:
    """Nothing that may go float (near-tied logits through a HardSwish, which has an int8
    TFLite kernel but no float lowering, and a TFLite is asked for): exit 3, one line, OUT/."""
    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["y"], name="hswish")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 1)) * 50 + 60 + rng.normal(size=(64, 4)) * 0.01).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    done = _convert(
        [
            str(tmp_path / "m.onnx"),
            "--calib",
            str(tmp_path / "calib.npz"),
            "-o",
            str(out),
            "--max-drop",
            "0.5",
        ],
        fmt="onnx,tflite",
    )
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and "--max-drop 0.5" in done.stderr
    assert (out / "model.int8.onnx").exists() and (out / "report.json").exists()


def test_summary_ends_with_the_verdict(tmp_path: Path) -> None:
    done = run_cli(FIX / "cnn.onnx", "--calib", FIX / "cnn_calib.npz", "-o", tmp_path / "o",
                   "--eval", FIX / "cnn_eval.npz", "--format", "onnx", "--max-drop", "0.5")
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: accuracy ")
    assert "target --max-drop 0.5 points of accuracy on --eval (400 samples): met at " in last
    assert " of " in last and " nodes kept float" in last
    # the guard measured equalization and kept the plain cnn (no gain on calibration samples)
    assert last.endswith("steps: learned rounding, minmax ranges")  # the default steps
    page = (tmp_path / "o" / "report.html").read_text()
    assert page.rstrip().endswith(f'<p id="verdict">{html.escape(last)}</p></body></html>')
