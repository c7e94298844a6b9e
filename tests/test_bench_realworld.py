"""The pure parts of hw-bench/bench_realworld.py: metrics (SQNR, IoU, NMS, box recall, CTC
decode, map IoU), YOLO decoders, letterbox, the per-process RSS measurement, and the row
targets. No network, no wheels, no torch: hand-made arrays and one tiny subprocess."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "hw-bench"


def _load(name: str):
    """A hw-bench module by name (hw-bench is scripts, not a package: on sys.path)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


metrics = _load("_realworld_metrics")
run = _load("_realworld_run")


def test_sqnr_db_matches_the_definition() -> None:
    ref = [np.array([3.0, 4.0], np.float32)]  # signal energy 25
    test = [np.array([3.0, 3.0], np.float32)]  # noise energy 1
    assert metrics.sqnr_db(ref, test) == pytest.approx(10 * math.log10(25.0))
    assert metrics.sqnr_db(ref, ref) == float("inf")
    assert metrics.sqnr_db([np.array([1, 2])], [np.array([1, 3])]) is None  # ids, not a signal


def test_top1_agreement_counts_same_argmax() -> None:
    ref = [np.array([[0.1, 0.9]]), np.array([[0.8, 0.2]])]
    test = [np.array([[0.2, 0.7]]), np.array([[0.1, 0.3]])]
    assert metrics.top1_agreement(ref, test) == 50.0


def test_ctc_greedy_merges_repeats_and_drops_blanks() -> None:
    ids = [0, 3, 3, 0, 3, 5, 5, 0, 0, 7]
    logits = np.eye(8)[ids][None]  # (1, T, C)
    assert metrics.ctc_greedy(logits, "btc") == [3, 3, 5, 7]
    assert metrics.ctc_greedy(logits.transpose(1, 0, 2), "tbc") == [3, 3, 5, 7]
    assert metrics.ctc_greedy(np.array([ids]), "bt") == [3, 3, 5, 7]
    assert metrics.string_match([[1, 2], [3]], [[1, 2], [4]]) == 50.0
    with pytest.raises(ValueError):
        metrics.ctc_greedy(logits, "ctb")


def test_iou_matrix_of_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert metrics.iou_matrix(a, b)[0] == pytest.approx([1.0, 50 / 150, 0.0])


def test_nms_keeps_best_per_class_only() -> None:
    dets = np.array([[0, 0, 10, 10, 0.9, 0], [1, 1, 10, 10, 0.8, 0],  # overlap: one goes
                     [1, 1, 10, 10, 0.7, 1],  # same place, other class: stays
                     [50, 50, 60, 60, 0.6, 0]])
    kept = metrics.nms(dets, 0.45)
    assert kept[:, 4].tolist() == [0.9, 0.7, 0.6]


def test_box_recall_needs_same_class_and_iou() -> None:
    ref = [np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]]), np.zeros((0, 6))]
    test = [np.array([[0, 0, 10, 11, 0.5, 0],  # IoU 0.91, same class: found
                      [20, 20, 30, 30, 0.9, 2]]),  # right place, wrong class: not found
            np.array([[0, 0, 5, 5, 0.9, 0]])]  # nothing to find here
    recall, total = metrics.box_recall(ref, test)
    assert (recall, total) == (50.0, 2)
    # one test box cannot find two reference boxes
    twice = [np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])]
    assert metrics.box_recall(twice, [twice[0][:1]])[0] == 50.0
    assert metrics.box_recall([np.zeros((0, 6))], [np.zeros((0, 6))]) == (None, 0)


def test_decode_yolov8_reads_cxcywh_and_best_class() -> None:
    out = np.zeros((1, 4 + 3, 5), np.float32)
    out[0, :4, 2] = [50, 40, 20, 10]  # one anchor: centre (50, 40), 20 x 10
    out[0, 4 + 2, 2] = 0.8  # class 2
    out[0, 4 + 1, 3] = 0.1  # below the threshold
    dets = metrics.decode_yolov8(out, conf=0.25)
    assert dets.tolist() == [[40.0, 35.0, 60.0, 45.0, pytest.approx(0.8), 2.0]]


def test_decode_yolox_uses_grid_stride_and_objectness() -> None:
    size = (64, 64)  # strides 8/16/32 -> 64 + 16 + 4 anchors
    out = np.zeros((1, 84, 5 + 2), np.float32)
    anchor = 1 * 8 + 2  # stride 8 grid, row 1, column 2
    out[0, anchor, :4] = [0.5, 0.5, math.log(2.0), math.log(1.0)]
    out[0, anchor, 4], out[0, anchor, 5 + 1] = 0.9, 0.5  # score 0.45, class 1
    dets = metrics.decode_yolox(out, size, conf=0.1)
    cx, cy, w, h = (2 + 0.5) * 8, (1 + 0.5) * 8, 16.0, 8.0
    assert dets[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, 0.45, 1])
    assert len(dets) == 1


def test_letterbox_keeps_aspect_and_pads() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    canvas, scale, (top, left) = metrics.letterbox(image, (64, 64), fill=114)
    assert canvas.shape == (64, 64, 3) and scale == pytest.approx(0.32)
    assert (top, left) == (16, 0)
    assert (canvas[16:48] == 7).all() and (canvas[:16] == 114).all() and (canvas[48:] == 114).all()
    corner, _, offset = metrics.letterbox(image, (64, 64), fill=0, center=False)
    assert offset == (0, 0) and (corner[:32] == 7).all() and (corner[32:] == 0).all()


def test_mask_iou_at_threshold() -> None:
    a = np.array([[0.9, 0.9, 0.1, 0.1]])
    b = np.array([[0.9, 0.2, 0.9, 0.1]])
    assert metrics.mask_iou([a], [b]) == pytest.approx(100 / 3)
    assert metrics.mask_iou([np.zeros(4)], [np.zeros(4)]) is None


def test_measured_reports_the_child_own_peak_rss_and_error_line() -> None:
    grab = "import sys; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); sys.exit('Error: boom')"
    big = run.measured([sys.executable, "-c", grab], timeout=60, rss_cap_mb=4096)
    held = bytearray(400 << 20)  # the bench itself is big: a child must not inherit that
    held[::4096] = b"x" * len(held[::4096])
    small = run.measured([sys.executable, "-c", "print('ok')"], timeout=60, rss_cap_mb=4096)
    del held
    assert big.code == 1 and big.peak_rss_mb > 300 and big.error_line() == "Error: boom"
    assert small.code == 0 and small.peak_rss_mb < 100 and small.error_line() is None  # not the big one's
    capped = run.measured([sys.executable, "-c", grab.replace("sys.exit", "import time; time.sleep(30); sys.exit")],
                          timeout=60, rss_cap_mb=200)
    assert capped.code is None and "RSS over" in capped.error_line()
    assert capped.peak_rss_mb > 200  # what the watcher saw before it stopped it


def _matmuls(path: Path, count: int) -> Path:
    """x [1, 256] through ``count`` 256x256 MatMuls: its run time grows with ``count``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(256, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(count)]
    nodes[0].input[0], nodes[-1].output[0] = "x", "y"
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_interleaved_latency_times_both_models_in_alternating_rounds(tmp_path: Path) -> None:
    heavy, light = _matmuls(tmp_path / "heavy.onnx", 64), _matmuls(tmp_path / "light.onnx", 1)
    x = np.ones((1, 256), np.float32)
    timed = run.interleaved_latency(heavy, light, "x", x, rounds=3, runs=5)
    assert timed.ratio == round(timed.int8_ms / timed.fp32_ms, 3)
    assert timed.ratio < 0.5 and timed.median_ratio < 0.5  # one MatMul against 64, under any load
    same = run.interleaved_latency(heavy, heavy, "x", x, rounds=3, runs=5)
    assert 0.5 < same.ratio < 2.0


def test_edgeship_targets_pass_and_fail() -> None:
    bench = _load("bench_realworld")
    ort_row = {"exit": 0, "peak_rss_mb": 900.0}
    good = {"formats": "onnx,tflite", "exit": 0, "peak_rss_mb": 1500.0, "litert_agreement": 100.0,
            "latency_ratio": 0.8}
    assert bench.edgeship_targets(good, ort_row) == {"both_formats": "PASS", "rss": "PASS",
                                                     "litert": "PASS", "speed": "PASS"}
    # over 2x onnxruntime's memory, ONNX only, LiteRT disagrees, slower than fp32
    bad = {**good, "formats": "onnx", "peak_rss_mb": 1900.0, "litert_agreement": 98.9,
           "latency_ratio": 1.2}
    assert set(bench.edgeship_targets(bad, ort_row).values()) == {"FAIL"}
    nothing = {"formats": "-", "exit": 2, "peak_rss_mb": 16.0, "error": "error: uses opset 11"}
    assert bench.edgeship_targets(nothing, ort_row)["rss"] == "FAIL"  # wrote nothing: no pass
    refused = {**nothing, "error": "error: model.onnx is already quantized (QDQ)"}
    assert bench.expected_refusal(refused)["refusal"] == "PASS"
    assert bench.expected_refusal(nothing)["refusal"] == "FAIL"


def test_accuracy_table_judges_both_formats_against_target_and_tools() -> None:
    acc = _load("_realworld_accuracy")
    bench = _load("bench_realworld")
    infos = [{"model": "ppocr_cls", "weights": "real: x"}, {"model": "resnet18", "weights": "random"},
             {"model": "yolov8n_nudenet", "weights": "real: y"}]
    rows = [
        {"model": "ppocr_cls", "tool": "edgeship", "metric": 100.0, "tflite_metric": 96.9,
         "time_vs_ort": 1.5},
        {"model": "ppocr_cls", "tool": "edgeship_md1", "metric": 100.0, "tflite_metric": 100.0},
        {"model": "ppocr_cls", "tool": "ort", "metric": 87.5},
        {"model": "ppocr_cls", "tool": "nncf", "metric": 93.8},
        {"model": "resnet18", "tool": "edgeship", "metric": 50.0},
        {"model": "yolov8n_nudenet", "tool": "edgeship", "metric": 91.0, "tflite_metric": None},
        {"model": "yolov8n_nudenet", "tool": "nncf", "metric": 95.0},
    ]
    table = acc.table(infos, rows, bench.models.SPECS)
    assert [r["model"] for r in table] == ["ppocr_cls", "yolov8n_nudenet"]  # real weights only
    cls, yolo = table
    assert cls["target"] == ">= 99" and cls["es_verdict"] == "FAIL: tflite<target"
    assert cls["md1_verdict"] == "PASS" and cls["es_time_x_ort"] == 1.5
    assert yolo["target"] == ">= 90" and yolo["es_verdict"] == "FAIL: onnx<NNCF, no tflite"
    assert yolo["md1_verdict"] == "-" and len(cls) <= 13  # with es_time_x_ort_no_lr
