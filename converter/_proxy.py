"""The label-free task metric ``--max-drop`` measures when ``--eval`` has no labels: how far
the INT8 model's outputs stray from the fp32 model's on the same (held-out) inputs, in the
terms the model's task cares about, chosen from the first output's shape (``--drop-metric``
overrides the choice):

- ``top1``: classifiers ([1, C] or [1, C, 1, 1]): the expected share of samples whose top-1
  class differs from fp32's: 1 for a sample that flipped, else its flip risk
  (:func:`flip_risk`: the INT8 margin over the runner-up against the noise this sample's
  margin took, so a near-tie that held by luck counts in part and a 64-sample set
  resolves well under one sample: one point is 0.64 samples of 64);
- ``ctc``: CTC recognizers ([1, T, C] or [T, 1, C] with C > T, per-step scores): the
  expected share of samples whose greedy CTC string (arg-max per step, repeats merged,
  blank 0 dropped) differs from fp32's: 1 when it differs, else the risk that one of the
  steps where the runner-up would change the string flips (the same flip risk per step);
- ``boxes``: YOLO-family detectors whose layout is recognisable: YOLOv8 [1, 4 + K, N]
  (N anchors > 4 + K, boxes cx, cy, w, h in pixels), YOLOX [1, N, 5 + K] (N = the anchors
  of strides 8, 16, 32 over the input's height and width): 100 - recall of the fp32 boxes
  (IoU >= 0.5, same class) after NMS, a box counting as found only when its score keeps
  at least half of fp32's margin over the confidence threshold (the same at-risk rule);
- ``sqnr``: anything else: relative noise power of every output in points,
  100 * 10^(-SQNR/10) (1 point = 20 dB SQNR, 0.1 point = 30 dB).

Every metric is a drop in points (0 = the INT8 outputs read like fp32's). Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("auto", "top1", "ctc", "boxes", "sqnr")
YOLOX_STRIDES = (8, 16, 32)
BOX_CONF = {"yolov8": 0.25, "yolox": 0.1}  # the score threshold of each decoder
# the noise a kept margin is weighed against: this many times what the sample's margin
# moved (another image's noise is not this one's; 2: a margin half lost is a 16 % risk)
RISK_SPREAD = 2.0
# the near-flip density (:func:`near_flip_density`) counts this many of the smallest margins
DENSITY_K = 8
# a softmax's probabilities resolve a margin's move where the runner-up holds this much
# (8 steps of an int8 output's 1/256); fewer samples than NOISE_MIN so resolved: no estimate
RESOLVED_P = 8.0 / 256.0
NOISE_MIN = 4
# a fp32 margin under one step of an int8 output (its range / 255) is a tie no INT8 model
# can be held to (the output's own rounding decides it): not counted either way
TIE_STEPS = 255
DESCRIBE = {
    "top1": "top-1 disagreement with fp32 (a kept top-1 counts its flip risk)",
    "ctc": "CTC strings that differ from fp32's (a kept string counts its flip risk)",
    "boxes": "fp32 boxes missed (IoU 0.5, same class, half the score margin kept)",
    "sqnr": "relative output noise power, 100*10^(-SQNR/10)",
    "accuracy": "accuracy points lost on the --eval labels",
}


@dataclass(frozen=True)
class Proxy:
    """Which metric, and how to read the first output for it."""

    metric: str  # top1 | ctc | boxes | sqnr
    layout: str = ""  # ctc: btc | tbc; boxes: yolov8 | yolox
    image_hw: tuple[int, int] = (0, 0)  # boxes (yolox): the input's height and width

    def describe(self) -> str:
        what = DESCRIBE[self.metric]
        return f"{self.metric} ({self.layout}): {what}" if self.layout else f"{self.metric}: {what}"


def choose(
    output_shape: Sequence[int], input_shape: Sequence[int], sample: np.ndarray | None = None,
    requested: str = "auto",
) -> Proxy:
    """The metric for a model whose first output has ``output_shape`` (one sample) and
    whose first input ``input_shape``; ``sample``: one fp32 output (a YOLOv8 layout is
    recognised by its box rows); ``requested`` other than auto: that metric (its layout
    still read from the shapes; a layout that does not fit falls back to sqnr)."""
    shape = tuple(int(d) for d in output_shape)
    image_hw = (int(input_shape[-2]), int(input_shape[-1])) if len(input_shape) == 4 else (0, 0)
    found = _by_shape(shape, image_hw, sample)
    if requested in ("auto", found.metric):
        return found
    if requested == "top1":
        return Proxy("top1")
    if requested == "ctc" and len(shape) == 3 and 1 in shape[:2]:
        return Proxy("ctc", "btc" if shape[0] == 1 else "tbc")
    if requested == "boxes" and found.metric != "boxes":
        return Proxy("sqnr")
    return Proxy(requested) if requested == "sqnr" else found


def _by_shape(shape: tuple[int, ...], image_hw: tuple[int, int], sample: np.ndarray | None) -> Proxy:
    squeezed = [d for d in shape[1:] if d != 1]
    if shape and shape[0] == 1 and len(squeezed) == 1 and squeezed[0] >= 2 and len(shape) in (2, 4):
        return Proxy("top1")
    if len(shape) != 3:
        return Proxy("sqnr")
    if shape[0] == 1 and image_hw[0] and shape[1] == _yolox_anchors(image_hw) and shape[2] > 5:
        return Proxy("boxes", "yolox", image_hw)
    if shape[0] == 1 and 5 <= shape[1] < shape[2] and _boxes_in_rows(sample, image_hw):
        return Proxy("boxes", "yolov8", image_hw)
    if shape[0] == 1 and shape[1] >= 2 and shape[2] > shape[1]:
        return Proxy("ctc", "btc")
    if shape[1] == 1 and shape[0] >= 2 and shape[2] > shape[0]:
        return Proxy("ctc", "tbc")
    return Proxy("sqnr")


def _yolox_anchors(image_hw: tuple[int, int]) -> int:
    return sum((image_hw[0] // s) * (image_hw[1] // s) for s in YOLOX_STRIDES)


def _boxes_in_rows(sample: np.ndarray | None, image_hw: tuple[int, int]) -> bool:
    """YOLOv8's first four rows are cx, cy, w, h in input pixels: non-negative, within
    about the image (a CTC score map's rows are not)."""
    if sample is None or not image_hw[0]:
        return False
    rows = np.asarray(sample, np.float64).reshape(sample.shape[-2], -1)[:4]
    limit = 1.5 * max(image_hw)
    return bool(rows.min() >= -0.05 * limit and rows.max() <= limit and rows[2:].max() > 1.0)


# ----------------------------------------------------------------------------- per sample
def view(proxy: Proxy, output: np.ndarray) -> object:
    """What the metric compares for one sample's first output."""
    if proxy.metric == "top1":
        return np.asarray(output, np.float64).reshape(-1)
    if proxy.metric == "ctc":
        return CtcRead(np.asarray(output), proxy.layout)
    if proxy.metric == "boxes":
        if proxy.layout == "yolox":
            return decode_yolox(np.asarray(output), proxy.image_hw, BOX_CONF["yolox"])
        return decode_yolov8(np.asarray(output), BOX_CONF["yolov8"])
    return np.asarray(output, np.float64)


def drop(proxy: Proxy, reference: Sequence[object], test: Sequence[object]) -> float:
    """The drop in points of ``test`` views against ``reference`` views (same samples)."""
    pairs = list(zip(reference, test, strict=True))
    if not pairs:
        return 0.0
    if proxy.metric in ("top1", "ctc"):
        return 100.0 * float(np.mean([lost_part(proxy, r, t)[0] for r, t in pairs]))
    if proxy.metric == "boxes":
        found = total = 0
        for r, t in pairs:
            f, n = _matched(np.asarray(r), np.asarray(t), BOX_CONF[proxy.layout])
            found, total = found + f, total + n
        return 0.0 if total == 0 else 100.0 * (1.0 - found / total)
    signal = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r, _ in pairs)
    noise = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(t)) ** 2)) for r, t in pairs)
    return 100.0 * noise / max(signal, 1e-30)


def lost_part(proxy: Proxy, ref: object, test: object) -> tuple[float, float]:
    """One sample's share of :func:`drop`: (what it lost, what it weighs); the drop over
    samples is 100 * the sum of the first / the sum of the second (the weight is the
    reference's own, so a partial sum of losses bounds the drop from below)."""
    if proxy.metric == "top1":
        return _top1_risk(np.asarray(ref), np.asarray(test)), 1.0
    if proxy.metric == "ctc":
        return _ctc_risk(ref, test), 1.0
    if proxy.metric == "boxes":
        found, total = _matched(np.asarray(ref), np.asarray(test), BOX_CONF[proxy.layout])
        return float(total - found), float(total)
    r = np.asarray(ref, np.float64)
    return float(np.sum((r - np.asarray(test)) ** 2)), float(np.sum(r**2))


def weight(proxy: Proxy, ref: object) -> float:
    """A sample's weight in :func:`lost_part` from its reference alone."""
    if proxy.metric in ("top1", "ctc"):
        return 1.0
    if proxy.metric == "boxes":
        return float(len(np.asarray(ref).reshape(-1, 6)))
    return float(np.sum(np.asarray(ref, np.float64) ** 2))


def flip_risk(margin: float, moved: float) -> float:
    """The chance that a top-1 kept with ``margin`` over its runner-up flips on another
    draw of the noise, when the noise moved this sample's margin by ``moved``: a normal
    noise of ``RISK_SPREAD`` times that spread (0 when nothing moved; 0.5 on a tie)."""
    if margin <= 0.0:
        return 1.0 if moved > 0.0 or margin < 0.0 else 0.5
    if moved <= 0.0:
        return 0.0
    return 0.5 * math.erfc(margin / (RISK_SPREAD * moved) / math.sqrt(2.0))


def _is_tie(ref: np.ndarray, top: int) -> bool:
    """fp32's top-1 over its runner-up by less than one step of an int8 output."""
    runner_up = float(np.max(np.delete(ref, top)))
    return float(ref[top]) - runner_up < float(ref.max() - ref.min()) / TIE_STEPS


def _top1_risk(ref: np.ndarray, test: np.ndarray) -> float:
    """1 when the top-1 changed, else the flip risk of the INT8 margin over its closest
    rival against how far the margin moved from fp32's over that rival."""
    top = int(np.argmax(ref))
    if ref.size < 2 or _is_tie(ref, top):
        return 0.0
    if int(np.argmax(test)) != top:
        return 1.0
    others = np.delete(np.arange(ref.size), top)
    rival = int(others[np.argmax(test[others])])
    margin = float(test[top] - test[rival])
    return flip_risk(margin, abs(margin - float(ref[top] - ref[rival])))


def near_flip_density(refs: Sequence[object]) -> float:
    """How many fp32 top-1 margins lie near zero, per sample and per unit of margin (in
    :func:`_margin_units`): ``DENSITY_K`` over the samples times the K-th smallest margin
    (fp32 ties left out; 0 when there are too few). The fp32 model's alone, so no choice
    of float layers can fit it; with :func:`noise_drop` it reads a flip rate that does not
    hang on the few samples a set holds near a flip."""
    margins = sorted(m for m, _ in (_pair_margin(np.asarray(r, np.float64).reshape(-1), None)
                                    for r in refs) if m is not None)
    k = min(DENSITY_K, len(refs) // 4)
    if k < 1 or len(margins) < k or margins[k - 1] <= 0.0:  # fewer near a flip than that
        return 0.0
    return k / (len(refs) * margins[k - 1])


def noise_drop(density: float, refs: Sequence[object], tests: Sequence[object]) -> float:
    """The expected top-1 drop in points of samples whose fp32 margins lie ``density``
    per unit near zero, under the noise these INT8 outputs put on fp32's margins (top-1
    over its runner-up, same two classes): a symmetric normal noise of that root mean
    square flips density * rms / sqrt(2 pi) of them. Moves are read where the units
    resolve them (a softmax's probabilities: where fp32's runner-up holds at least
    ``RESOLVED_P``); 0 when fewer than ``NOISE_MIN`` samples do."""
    moves = []
    for r, t in zip(refs, tests, strict=True):
        ref, test = np.asarray(r, np.float64).reshape(-1), np.asarray(t, np.float64).reshape(-1)
        margin, move = _pair_margin(ref, test)
        if margin is not None and move is not None:
            moves.append(move)
    if len(moves) < NOISE_MIN:
        return 0.0
    rms = math.sqrt(sum(m * m for m in moves) / len(moves))
    return 100.0 * density * rms / math.sqrt(2.0 * math.pi)


def _pair_margin(ref: np.ndarray, test: np.ndarray | None) -> tuple[float | None, float | None]:
    """fp32's margin of top-1 over its runner-up in :func:`_margin_units` and how far
    ``test`` moved it (None: a tie, one class, or units that do not resolve it)."""
    top = int(np.argmax(ref))
    if ref.size < 2 or _is_tie(ref, top):
        return None, None
    rival = int(np.argmax(np.where(np.arange(ref.size) == top, -np.inf, ref)))
    probs = _is_probabilities(ref)
    if probs and ref[rival] < RESOLVED_P:
        return None, None
    a, b = _margin_units(ref[[top, rival]], probs)
    margin = a - b
    if test is None:
        return margin, None
    c, d = _margin_units(test[[top, rival]], probs)
    return margin, (c - d) - margin


def _is_probabilities(ref: np.ndarray) -> bool:
    return bool(ref.min() >= 0.0 and abs(float(ref.sum()) - 1.0) < 1e-3)


def _margin_units(values: np.ndarray, probs: bool) -> np.ndarray:
    """Logits as they are; probabilities as log-probabilities (a difference of logits, so
    a margin's noise reads the same near and far from a flip)."""
    return np.log(np.maximum(values, RESOLVED_P / 16)) if probs else values


# ----------------------------------------------------------------------------- CTC
class CtcRead(list[int]):
    """A greedy CTC string (equal to its list of ids) with what its flip risk needs: per
    step the arg-max, the runner-up and the step's scores (one sample's only while it is
    the INT8 side; :func:`reference` keeps the fp32 side small)."""

    def __init__(self, output: np.ndarray, layout: str) -> None:
        super().__init__(ctc_greedy(output, layout))
        steps = np.asarray(output[0] if layout == "btc" else output[:, 0], np.float32)
        order = np.argsort(steps, axis=-1)[:, -2:]
        self.top, self.second = order[:, 1], order[:, 0]
        self.scores: np.ndarray | None = steps
        self.critical: np.ndarray | None = None  # steps whose runner-up changes the string
        self.pair: np.ndarray | None = None  # fp32 side: [step, (arg-max, runner-up) score]
        self.tie: np.ndarray | None = None  # fp32 side: steps within one int8 output step

    def compact(self) -> CtcRead:
        """The fp32 side: the scores of the arg-max and runner-up only, and which steps a
        swap to the runner-up changes the string at."""
        assert self.scores is not None
        steps = np.arange(len(self.top))
        ids = self.top.copy()
        critical = np.zeros(len(ids), bool)
        for t in steps:
            ids[t] = self.second[t]
            critical[t] = _merged(ids) != list(self)
            ids[t] = self.top[t]
        self.pair = np.stack([self.scores[steps, self.top], self.scores[steps, self.second]], 1)
        # a step whose runner-up is within one int8 output step: a tie (see TIE_STEPS)
        self.tie = self.pair[:, 0] - self.pair[:, 1] < float(self.scores.max() - self.scores.min()) / TIE_STEPS
        self.critical, self.scores = critical & ~self.tie, None
        return self


def _merged(ids: np.ndarray, blank: int = 0) -> list[int]:
    out, previous = [], None
    for token in ids.tolist():
        if token != previous and token != blank:
            out.append(int(token))
        previous = token
    return out


def reference(proxy: Proxy, seen: object) -> object:
    """An fp32 view as :func:`lost_part` keeps it as the reference (smaller)."""
    return seen.compact() if isinstance(seen, CtcRead) and seen.scores is not None else seen


def _ctc_risk(ref: object, test: object) -> float:
    """1 when the strings differ (0 when every step that differs is a fp32 tie, see
    TIE_STEPS), else the chance that one of the steps where fp32's runner-up would
    change the string flips (each step's :func:`flip_risk`; ties not counted)."""
    full = isinstance(ref, CtcRead) and isinstance(test, CtcRead) and test.scores is not None
    if full:
        ref = reference(Proxy("ctc"), ref)
    if list(ref) != list(test):  # type: ignore[call-overload]
        if full and isinstance(ref, CtcRead) and isinstance(test, CtcRead) and ref.tie is not None:
            moved = test.top != ref.top
            return 0.0 if moved.any() and bool(ref.tie[moved].all()) else 1.0
        return 1.0
    if not full:
        return 0.0
    assert isinstance(ref, CtcRead) and isinstance(test, CtcRead) and test.scores is not None
    assert ref.critical is not None and ref.pair is not None
    held = 1.0
    for t in np.flatnonzero(ref.critical):
        a, b = int(ref.top[t]), int(ref.second[t])
        margin = float(test.scores[t, a] - test.scores[t, b])
        moved = abs(margin - float(ref.pair[t, 0] - ref.pair[t, 1]))
        held *= 1.0 - flip_risk(margin, moved)
    return 1.0 - held


def ctc_greedy(output: np.ndarray, layout: str, blank: int = 0) -> list[int]:
    steps = output[0] if layout == "btc" else output[:, 0]
    return _merged(steps.argmax(-1), blank)


# ----------------------------------------------------------------------------- boxes
def decode_yolov8(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
    """[1, 4 + K, N], cx, cy, w, h rows then class scores -> (n, 6) x1 y1 x2 y2 score class."""
    pred = np.asarray(output, np.float64).reshape(output.shape[-2], -1).T
    return _best_class(pred[:, :4], pred[:, 4:], conf, iou)


def decode_yolox(output: np.ndarray, image_hw: tuple[int, int], conf: float = 0.1,
                 iou: float = 0.45) -> np.ndarray:
    """[1, N, 5 + K]: grid offsets and log sizes per stride, objectness, class scores."""
    pred = np.asarray(output, np.float64).reshape(-1, output.shape[-1]).copy()
    grids, strides = [], []
    for s in YOLOX_STRIDES:
        h, w = image_hw[0] // s, image_hw[1] // s
        xs, ys = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((h * w, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(np.clip(pred[:, 2:4], -20, 20)) * stride
    return _best_class(pred[:, :4], pred[:, 4:5] * pred[:, 5:], conf, iou)


def _best_class(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float) -> np.ndarray:
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    keep = best >= conf
    cx, cy, w, h = boxes[keep].T
    dets = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, best[keep],
                     cls[keep].astype(np.float64)], axis=1)
    return _nms(dets, iou)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _nms(dets: np.ndarray, iou: float) -> np.ndarray:
    kept = []
    for cls in np.unique(dets[:, 5]):
        group = dets[dets[:, 5] == cls]
        group = group[np.argsort(-group[:, 4], kind="stable")]
        while len(group):
            kept.append(group[0])
            group = group[1:][_iou(group[:1], group[1:])[0] < iou]
    return np.stack(kept) if kept else np.zeros((0, 6))


def _matched(ref: np.ndarray, test: np.ndarray, conf: float, threshold: float = 0.5) -> tuple[int, int]:
    """(fp32 boxes found in ``test``, fp32 boxes): greedy, best fp32 score first, each
    test box used once, same class, IoU >= ``threshold``, and the test score keeping at
    least half of the fp32 score's margin over ``conf``."""
    ref, test = ref.reshape(-1, 6), test.reshape(-1, 6)
    if not len(ref) or not len(test):
        return 0, len(ref)
    overlap = _iou(ref, test)
    overlap[ref[:, 5][:, None] != test[:, 5][None, :]] = 0.0
    at_risk = test[None, :, 4] - conf < (ref[:, 4, None] - conf) / 2
    overlap[at_risk] = 0.0
    used = np.zeros(len(test), bool)
    found = 0
    for i in np.argsort(-ref[:, 4], kind="stable"):
        candidates = np.where(~used & (overlap[i] >= threshold))[0]
        if len(candidates):
            used[candidates[np.argmax(overlap[i, candidates])]] = True
            found += 1
    return found, len(ref)
