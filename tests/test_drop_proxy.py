"""``--max-drop`` without labels (converter/_proxy.py): the task metric is chosen from the
output's shape, measured against fp32 on every calibration sample, a kept top-1 or string
counting its flip risk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeship.converter import _proxy

FIX = Path(__file__).parent / "fixtures"


def _yolov8_output(rng: np.random.Generator, boxes: list[tuple[float, ...]], n: int = 300) -> np.ndarray:
    """[1, 4 + 3 classes, n]: low-score background anchors plus the given boxes."""
    out = np.zeros((1, 7, n), np.float32)
    out[0, 0:2] = rng.uniform(20, 300, size=(2, n))
    out[0, 2:4] = rng.uniform(5, 40, size=(2, n))
    out[0, 4:] = rng.uniform(0, 0.1, size=(3, n))
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + int(cls), i] = score
    return out


def test_metric_follows_the_output_shape() -> None:
    rng = np.random.default_rng(0)
    assert _proxy.choose((1, 1000), (1, 3, 224, 224)).metric == "top1"
    assert _proxy.choose((1, 4, 1, 1), (1, 3, 224, 224)).metric == "top1"
    assert _proxy.choose((1, 40, 6625), (1, 3, 48, 320), rng.random((1, 40, 6625))) == \
        _proxy.Proxy("ctc", "btc")
    assert _proxy.choose((16, 1, 300), (1, 1, 64, 256)) == _proxy.Proxy("ctc", "tbc")
    boxes = _yolov8_output(rng, [(100, 100, 50, 50, 0, 0.9)])
    assert _proxy.choose(boxes.shape, (1, 3, 320, 320), boxes) == \
        _proxy.Proxy("boxes", "yolov8", (320, 320))
    anchors = 52 * 52 + 26 * 26 + 13 * 13  # YOLOX at 416x416, strides 8/16/32
    assert _proxy.choose((1, anchors, 6), (1, 3, 416, 416)).layout == "yolox"
    assert _proxy.choose((1, 1, 320, 480), (1, 3, 320, 480)).metric == "sqnr"
    # overridden: sqnr for a classifier; a box metric on a shape with no boxes is sqnr
    assert _proxy.choose((1, 1000), (1, 3, 224, 224), requested="sqnr").metric == "sqnr"
    assert _proxy.choose((1, 1, 320, 480), (1, 3, 320, 480), requested="boxes").metric == "sqnr"


def test_drops_count_what_the_task_counts() -> None:
    rng = np.random.default_rng(1)
    top1 = _proxy.Proxy("top1")
    ref = [_proxy.view(top1, np.eye(4)[i % 4] * 2.0) for i in range(8)]  # margin 2
    test = [r.copy() for r in ref]
    assert _proxy.drop(top1, ref, test) == 0.0  # nothing moved: no risk
    test[3] = np.roll(test[3], 1)  # another class on top
    assert _proxy.drop(top1, ref, test) == 12.5
    test[5] = test[5] * 0.9  # margin 1.8 of 2: moved 0.2, a risk of erfc(4.5/sqrt 2)/2
    assert 12.5 < _proxy.drop(top1, ref, test) < 12.5 + 1e-3
    test[6] = test[6] * 0.4  # margin 0.8 of 2, moved 1.2: a near-flip, over 1/3 of a sample
    risk = _proxy.flip_risk(0.8, 1.2)
    assert 0.3 < risk < 0.4
    assert _proxy.drop(top1, ref, test) == pytest.approx(100 * (1 + risk) / 8, abs=1e-3)
    # the risk falls as the margin kept grows against the move, and a tie is a coin
    assert _proxy.flip_risk(1.0, 0.1) < _proxy.flip_risk(1.0, 0.5) < _proxy.flip_risk(0.5, 0.5)
    assert _proxy.flip_risk(0.0, 0.0) == 0.5 and _proxy.flip_risk(1.0, 0.0) == 0.0
    ctc = _proxy.Proxy("ctc", "btc")
    steps = np.zeros((1, 6, 5))
    steps[0, np.arange(6), [1, 1, 0, 2, 2, 3]] = 1.0  # "1 2 3" after merging and blanks
    assert _proxy.view(ctc, steps) == [1, 2, 3]
    moved = steps.copy()
    moved[0, 2] = np.eye(5)[1]  # the blank between the 1s and 2s is lost: still "1 2 3"
    other = steps.copy()
    other[0, 5] = np.eye(5)[4]
    assert _proxy.drop(ctc, [[1, 2, 3]] * 2, [_proxy.view(ctc, moved), _proxy.view(ctc, other)]) == 50.0
    # a string kept counts the risk of its steps whose runner-up changes it
    steps[0, :, 4] = 0.2  # class 4 the runner-up everywhere: every step is critical
    ref_read = _proxy.reference(ctc, _proxy.view(ctc, steps))
    assert isinstance(ref_read, _proxy.CtcRead) and ref_read.critical is not None
    assert ref_read.critical.all() and ref_read.scores is None
    near = steps.copy()
    near[0, 3, 4] = 0.7  # one step's margin 0.8 -> 0.3: kept, at risk
    risk = _proxy.lost_part(ctc, ref_read, _proxy.view(ctc, near))[0]
    assert risk == pytest.approx(_proxy.flip_risk(0.3, 0.5)) and 0 < risk < 1
    assert _proxy.lost_part(ctc, ref_read, _proxy.view(ctc, steps))[0] == 0.0
    # a fp32 tie (runner-up within one int8 output step) is held against no INT8 model:
    # a string that differs only there, or a top-1 that flips there, loses nothing
    tied = steps.copy()
    tied[0, 5, 4] = 0.999  # step 5: class 3 over class 4 by 0.001 < 1/255
    swapped = tied.copy()
    swapped[0, 5, 3], swapped[0, 5, 4] = 0.999, 1.0
    tied_ref = _proxy.reference(ctc, _proxy.view(ctc, tied))
    assert _proxy.view(ctc, swapped) != tied_ref
    assert _proxy.lost_part(ctc, tied_ref, _proxy.view(ctc, swapped))[0] == 0.0
    far = tied.copy()
    far[0, 0] = np.eye(5)[4]  # step 0 (no tie: 1 over 0.2) read as class 4
    assert _proxy.lost_part(ctc, tied_ref, _proxy.view(ctc, far))[0] == 1.0
    near_tie = np.array([1.0, 0.999, 0.0, 0.0])
    assert _proxy.lost_part(top1, near_tie, near_tie[[1, 0, 2, 3]])[0] == 0.0
    assert _proxy.lost_part(top1, ref[0], np.roll(ref[0], 1))[0] == 1.0
    box = _proxy.Proxy("boxes", "yolov8", (320, 320))
    two = _yolov8_output(rng, [(100, 100, 50, 50, 0, 0.9), (200, 200, 40, 40, 1, 0.8)])
    shifted = two.copy()
    shifted[0, 0, 1] += 60  # the second box moved off its place: IoU < 0.5
    ref_view = _proxy.view(box, two)
    assert len(ref_view) == 2 and _proxy.drop(box, [ref_view], [ref_view]) == 0.0
    assert _proxy.drop(box, [ref_view], [_proxy.view(box, shifted)]) == 50.0
    weaker = two.copy()
    weaker[0, 5, 1] = 0.6  # 0.8 -> 0.6: 0.35 of the 0.55 margin over 0.25 kept: found
    assert _proxy.drop(box, [ref_view], [_proxy.view(box, weaker)]) == 0.0
    weaker[0, 5, 1] = 0.45  # 0.2 of 0.55 kept: at risk, counted missed
    assert _proxy.drop(box, [ref_view], [_proxy.view(box, weaker)]) == 50.0
    noise = _proxy.Proxy("sqnr")
    signal = rng.normal(size=1000)
    noisy = signal + rng.normal(size=1000) * 0.1  # ~20 dB: ~1 point
    assert 0.8 < _proxy.drop(noise, [signal], [noisy]) < 1.2


def test_cli_reports_the_label_free_metric(tmp_path: Path) -> None:
    """The cnn fixture (a classifier) without --eval: top-1 against fp32 on every
    calibration sample, in both formats (LiteRT runs the TFLite), said in report.json."""
    calib = dict(np.load(FIX / "cnn_calib.npz"))
    count = len(next(iter(calib.values())))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "edgeship", "convert", str(FIX / "cnn.onnx"), "--calib",
           str(FIX / "cnn_calib.npz"), "-o", str(out), "-q", "--max-drop", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), done.stderr
    report = json.loads((out / "report.json").read_text())
    mixed = report["mixed_precision"]
    assert mixed["metric"] == "top1" and "top-1" in mixed["metric_detail"]
    # the model written is calibrated on every sample, as without --max-drop
    assert report["calibration"]["samples"] == count
    assert f"the {count} calibration samples" in mixed["measured_on"]
    assert "ONNX and TFLite" in mixed["measured_on"]
    done = subprocess.run([*cmd, "--drop-metric", "sqnr"], capture_output=True, text=True, timeout=300)
    assert json.loads((out / "report.json").read_text())["mixed_precision"]["metric"] == "sqnr"


def test_noise_drop_reads_the_flip_rate_of_the_noise_at_the_near_flip_density() -> None:
    """Margins spread evenly over [0, 4] (16 per unit of 64 samples: 0.25 per sample and
    unit) under a noise of rms 0.2: a normal noise flips density * rms / sqrt(2 pi) of
    them, ~2 points, whichever samples the set holds nearest a flip; no noise, no drop;
    the same logits as softmax probabilities read the same in log units, their saturated
    samples (the runner-up under RESOLVED_P) left out of the noise."""
    rng = np.random.default_rng(3)
    n = 64
    margins = np.linspace(4.0 / n, 4.0, n)
    refs = [np.array([m, 0.0, -5.0]) for m in margins]
    density = _proxy.near_flip_density(refs)
    assert density == pytest.approx(_proxy.DENSITY_K / (n * margins[_proxy.DENSITY_K - 1]))
    assert 0.2 < density < 0.3
    noise = rng.normal(0.0, 0.2, n)
    tests = [r + np.array([e, 0.0, 0.0]) for r, e in zip(refs, noise, strict=True)]
    rms = float(np.sqrt(np.mean(noise**2)))
    expected = 100 * density * rms / np.sqrt(2 * np.pi)
    assert _proxy.noise_drop(density, refs, tests) == pytest.approx(expected, rel=1e-6)
    assert 1.5 < expected < 2.5
    assert _proxy.noise_drop(density, refs, refs) == 0.0
    # the same logits as softmax probabilities: log-probability differences are logit
    # differences, so the resolved samples read the same moves
    softmax = [np.exp(v) / np.exp(v).sum() for v in refs]
    soft_tests = [np.exp(v) / np.exp(v).sum() for v in tests]
    resolved = [i for i, p in enumerate(softmax) if np.sort(p)[-2] >= _proxy.RESOLVED_P]
    assert 8 <= len(resolved) < n  # the saturated ones are left out
    sub_rms = float(np.sqrt(np.mean(noise[resolved] ** 2)))
    assert _proxy.noise_drop(density, softmax, soft_tests) == pytest.approx(
        100 * density * sub_rms / np.sqrt(2 * np.pi), rel=1e-6)
    # ties and too few resolved samples: no estimate rather than a wild one
    assert _proxy.noise_drop(density, softmax[-3:], soft_tests[-3:]) == 0.0
    assert _proxy.near_flip_density([np.array([1.0, 1.0])] * 8) == 0.0


def test_top1_drop_is_read_on_samples_the_search_did_not_choose_on() -> None:
    """Without labels a top-1 measure searches on every other calibration sample and
    checks a conversion on the rest; other metrics use every sample for both."""
    from types import SimpleNamespace

    import onnx
    from edgeship.converter import _accuracy

    model = onnx.load(str(FIX / "cnn.onnx"))
    calib = dict(np.load(FIX / "cnn_calib.npz"))
    (name, x), = calib.items()
    measure = _accuracy._drop_measure(SimpleNamespace(ev=None, calib=calib), model, "auto")
    assert measure.metric == "top1" and measure.search_n == measure.check_start == 100
    np.testing.assert_array_equal(measure.feeds[name][:100], x[0::2])
    np.testing.assert_array_equal(measure.check_feeds[name], x[1::2])
    assert "100 of the 200 calibration samples, held out" in measure.where
    assert measure.density == _proxy.near_flip_density(measure.search_refs + measure.check_refs)
    sqnr = _accuracy._drop_measure(SimpleNamespace(ev=None, calib=calib), model, "sqnr")
    assert sqnr.search_n == 200 and sqnr.check_start == 0 and sqnr.density == 0.0
