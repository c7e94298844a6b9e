"""Pure numpy metrics for ``bench_realworld.py``: how close an INT8 model's outputs stay to
its fp32 model's on the same inputs, in the terms each task cares about.

- ``sqnr_db``: signal-to-quantization-noise ratio of a whole output set (dB);
- ``top1_agreement``: classifiers;
- ``ctc_greedy`` / ``string_match``: CTC recognizers (same token ids <=> same string);
- ``letterbox``, ``decode_yolov8``, ``decode_yolox``, ``nms``, ``box_recall``: detectors,
  recall of the reference (fp32) boxes at IoU >= 0.5 with the same class;
- ``mask_iou``: text-probability maps (DBNet), IoU of the maps binarized at 0.3.

No I/O here: tests/test_bench_realworld.py checks every function on hand-made arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Detections = np.ndarray  # (n, 6): x1, y1, x2, y2, score, class


def sqnr_db(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float | None:
    """10·log10(Σref² / Σ(ref-test)²) over every element of every pair; None for
    non-float outputs (an ArgMax index is not a signal) or an empty set."""
    ref = [np.asarray(r) for r in reference]
    if not ref or any(not np.issubdtype(r.dtype, np.floating) for r in ref):
        return None
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    noise = sum(float(np.sum((r.astype(np.float64) - np.asarray(t, np.float64)) ** 2))
                for r, t in zip(ref, test, strict=True))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def top1_agreement(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float:
    """Share (%) of samples whose arg-max class (last axis) is the same."""
    same = [int(np.argmax(r.reshape(-1, r.shape[-1])[0]) == np.argmax(t.reshape(-1, t.shape[-1])[0]))
            for r, t in zip(reference, test, strict=True)]
    return 100.0 * float(np.mean(same)) if same else float("nan")


# ----------------------------------------------------------------------------- CTC
def ctc_greedy(output: np.ndarray, layout: str = "btc", blank: int = 0) -> list[int]:
    """Greedy CTC decode of one sample: arg-max per step, repeats merged, blanks dropped.

    ``layout`` names the axes of ``output``: "btc" (batch, time, classes), "tbc", or
    "bt" when the graph already ends in an ArgMax (ids per step)."""
    if layout == "bt":
        ids = np.asarray(output).reshape(-1)
    elif layout == "btc":
        ids = np.asarray(output)[0].argmax(-1)
    elif layout == "tbc":
        ids = np.asarray(output)[:, 0].argmax(-1)
    else:
        raise ValueError(f"unknown CTC layout {layout!r}")
    decoded, previous = [], None
    for token in ids.tolist():
        if token != previous and token != blank:
            decoded.append(int(token))
        previous = token
    return decoded


def string_match(reference: Sequence[list[int]], test: Sequence[list[int]]) -> float:
    """Share (%) of samples decoded to exactly the same string."""
    same = [r == t for r, t in zip(reference, test, strict=True)]
    return 100.0 * float(np.mean(same)) if same else float("nan")


# ----------------------------------------------------------------------------- boxes
def _nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(size[0]) * image.shape[0] / size[0]).astype(int), image.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * image.shape[1] / size[1]).astype(int), image.shape[1] - 1)
    return image[rows][:, cols]


def letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 114, center: bool = True,
              resize: Callable[[np.ndarray, tuple[int, int]], np.ndarray] = _nearest
              ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``image`` (HxWxC uint8) to fit ``size`` (h, w) keeping its aspect, pad with
    ``fill``, centred or in the top-left corner: (canvas, scale, (top, left)). ``resize``
    (image, (h, w)) does the scaling: nearest-neighbour numpy here, bilinear in the bench."""
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    new_h, new_w = max(1, min(size[0], round(height * scale))), max(1, min(size[1], round(width * scale)))
    top = (size[0] - new_h) // 2 if center else 0
    left = (size[1] - new_w) // 2 if center else 0
    canvas = np.full((size[0], size[1], *image.shape[2:]), fill, dtype=image.dtype)
    canvas[top:top + new_h, left:left + new_w] = resize(image, (new_h, new_w))
    return canvas, scale, (top, left)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4+) with every box in ``b`` (m, 4+), xyxy."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(dets: Detections, iou_threshold: float = 0.45) -> Detections:
    """Per-class non-maximum suppression of (n, 6) detections, best score first."""
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    kept = []
    for cls in np.unique(dets[:, 5]):
        group = dets[dets[:, 5] == cls]
        group = group[np.argsort(-group[:, 4], kind="stable")]
        while len(group):
            kept.append(group[0])
            overlap = iou_matrix(group[:1], group[1:])[0]
            group = group[1:][overlap < iou_threshold]
    if not kept:
        return np.zeros((0, 6))
    out = np.stack(kept)
    return out[np.argsort(-out[:, 4], kind="stable")]


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _best_class_nms(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float) -> Detections:
    """Each anchor's best class (cx,cy,w,h ``boxes``, per-class ``scores``), those scoring
    at least ``conf``, NMS'd -> (n, 6) x1,y1,x2,y2,score,class detections."""
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    keep = best >= conf
    dets = np.concatenate([_xywh_to_xyxy(boxes[keep]), best[keep, None],
                           cls[keep, None].astype(np.float64)], axis=1)
    return nms(dets, iou)


def decode_yolov8(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> Detections:
    """Ultralytics YOLOv8 head output (1, 4+classes, anchors), boxes cx,cy,w,h in input
    pixels -> NMS'd (n, 6) detections."""
    pred = np.asarray(output, np.float64)[0].T  # (anchors, 4 + classes)
    return _best_class_nms(pred[:, :4], pred[:, 4:], conf, iou)


def decode_yolox(output: np.ndarray, size: tuple[int, int], conf: float = 0.1,
                 iou: float = 0.45, strides: Sequence[int] = (8, 16, 32)) -> Detections:
    """YOLOX head output (1, anchors, 5+classes): offsets on a grid per stride, log sizes,
    objectness x class score (as ddddocr's detector decodes it) -> NMS'd detections."""
    pred = np.asarray(output, np.float64)[0].copy()
    grids, expanded = [], []
    for stride in strides:
        h, w = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((h * w, 1), stride))
    grid, stride_col = np.concatenate(grids), np.concatenate(expanded)
    pred[:, :2] = (pred[:, :2] + grid) * stride_col
    pred[:, 2:4] = np.exp(np.clip(pred[:, 2:4], -20, 20)) * stride_col
    return _best_class_nms(pred[:, :4], pred[:, 4:5] * pred[:, 5:], conf, iou)


def box_recall(reference: Sequence[Detections], test: Sequence[Detections],
               iou_threshold: float = 0.5) -> tuple[float | None, int]:
    """Recall (%) of the reference boxes over all samples: a reference box counts when an
    unused test box of the same class overlaps it with IoU >= ``iou_threshold`` (greedy,
    best reference score first). (recall, reference box count); recall None with no boxes."""
    found = total = 0
    for ref, tst in zip(reference, test, strict=True):
        ref, tst = np.asarray(ref).reshape(-1, 6), np.asarray(tst).reshape(-1, 6)
        total += len(ref)
        if not len(ref) or not len(tst):
            continue
        overlap = iou_matrix(ref, tst)
        overlap[ref[:, 5][:, None] != tst[:, 5][None, :]] = 0.0
        used = np.zeros(len(tst), bool)
        for i in np.argsort(-ref[:, 4], kind="stable"):
            candidates = np.where(~used & (overlap[i] >= iou_threshold))[0]
            if len(candidates):
                used[candidates[np.argmax(overlap[i, candidates])]] = True
                found += 1
    return (100.0 * found / total if total else None), total


def mask_iou(reference: Sequence[np.ndarray], test: Sequence[np.ndarray],
             threshold: float = 0.3) -> float | None:
    """IoU (%) of the maps binarized at ``threshold``, pooled over all samples; None when
    neither map has a pixel above it."""
    inter = union = 0
    for r, t in zip(reference, test, strict=True):
        a, b = np.asarray(r) > threshold, np.asarray(t) > threshold
        inter += int(np.sum(a & b))
        union += int(np.sum(a | b))
    return 100.0 * inter / union if union else None
