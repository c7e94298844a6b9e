"""Lowering rules for the data-movement and structural ops (issue 14): Split, Slice,
Transpose, Squeeze / Unsqueeze, Resize, ConvTranspose, Pad, ReduceMean, Gather, Expand, Tile.

Except ConvTranspose they keep their input's int8 parameters (the plan gives their
outputs exactly the input's; when the ONNX model says otherwise an explicit requantize
follows). Axes, pads, begins and permutations are mapped through the stored layout, so a
value kept NHWC is sliced, padded and transposed where it is, without going back to NCHW.
Edge TPU choices: unequal splits and single-index gathers become STRIDED_SLICE (Coral
lists SPLIT and STRIDED_SLICE, not SPLIT_V or GATHER).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from edgeship.converter._tflite_fb import FbQuant
from edgeship.converter._tflite_lower import TO_NHWC, Lowering, Val
from edgeship.converter._tflite_ops import SAME, VALID, _bias, _weight, register
from edgeship.converter._tflite_ops_shape import reshape
from edgeship.converter._tflite_qdq import QParams

register("Squeeze")(reshape)  # same bytes, new shape: RESHAPE keeps the parameters
register("Unsqueeze")(reshape)


# ---- helpers ------------------------------------------------------------------------
def _data(ctx: Lowering, name: str) -> Val:
    """An int8 input in a layout whose axes map one to one (NHWC or logical)."""
    x = ctx.get(name)
    return ctx.logical(x) if x.layout == "flat_hwc" else x


def _order(x: Val) -> tuple[int, ...]:
    """Logical axis held by each stored axis."""
    return TO_NHWC if x.layout == "nhwc" else tuple(range(len(x.shape)))


def _input(node: onnx.NodeProto, pos: int) -> str:
    return node.input[pos] if len(node.input) > pos else ""


def _ints(ctx: Lowering, name: str) -> list[int] | None:
    """A constant integer input as a list, None when the input is absent."""
    if not name:
        return None
    if name not in ctx.qdq.initializers:
        raise ctx.fail(f"input {name!r} must be a constant")
    return [int(v) for v in np.asarray(ctx.qdq.initializers[name]).ravel()]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _finish(ctx: Lowering, name: str, out: Val) -> None:
    ctx.bind(name, ctx.requant(out, ctx.out_q(name, out.q)))


def _strided_slice(ctx: Lowering, x: Val, out: Val, begin: list[int], end: list[int],
                   strides: list[int], end_mask: int = 0) -> None:
    """STRIDED_SLICE on stored axes (begin/end/strides already in stored order)."""
    ctx.emit("STRIDED_SLICE", [x.index, ctx.int32("begin", begin), ctx.int32("end", end),
                               ctx.int32("strides", strides)], [out.index],
             ("StridedSliceOptions", {"EndMask": end_mask}),
             version=4 if len(x.shape) > 4 else 2)


def _slice_axis(ctx: Lowering, x: Val, out: Val, axis: int, start: int, stop: int) -> None:
    """out = x[start:stop] along logical ``axis`` (x and out in x's layout)."""
    order = _order(x)
    stored = x.stored
    begin = [start if a == axis else 0 for a in order]
    end = [stop if a == axis else d for a, d in zip(order, stored, strict=True)]
    _strided_slice(ctx, x, out, begin, end, [1] * len(order))


# ---- Split ----------------------------------------------------------------------------
@register("Split")
def split(ctx: Lowering, node: onnx.NodeProto) -> None:
    """Sizes are read from the output shapes (any form: equal, ``split`` attribute or
    input, ``num_outputs``): equal -> SPLIT, unequal -> one STRIDED_SLICE per output."""
    x = _data(ctx, node.input[0])
    axis = int(ctx.attr("axis", 0)) % len(x.shape)
    names = list(node.output)
    if not all(names):
        raise ctx.fail("an unused (empty) Split output")
    shapes = [ctx.out_shape(o) for o in names]
    sizes = [s[axis] for s in shapes]
    if sum(sizes) != x.shape[axis]:
        raise ctx.fail(f"split sizes {sizes} do not add up to axis {axis} ({x.shape[axis]})")
    outs = [ctx.new_val(o, s, x.layout, x.q) for o, s in zip(names, shapes, strict=True)]
    if len(set(sizes)) == 1:
        stored_axis = _order(x).index(axis)
        ctx.emit("SPLIT", [ctx.int32("axis", [stored_axis]), x.index], [o.index for o in outs],
                 ("SplitOptions", {"NumSplits": len(outs)}))
    else:
        start = 0
        for out, size in zip(outs, sizes, strict=True):
            _slice_axis(ctx, x, out, axis, start, start + size)
            start += size
    for name, out in zip(names, outs, strict=True):
        _finish(ctx, name, out)


# ---- Slice ----------------------------------------------------------------------------
def _clamp_slice(start: int, end: int, step: int, dim: int) -> tuple[int, int, bool]:
    """ONNX Slice bounds on one axis -> (begin, end, end is "before index 0")."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim), False
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, end, end == -1  # TFLite reads -1 as "the last": mask it instead


@register("Slice")
def slice_(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = _data(ctx, node.input[0])
    rank = len(x.shape)
    starts = _ints(ctx, _input(node, 1)) or []
    ends = _ints(ctx, _input(node, 2)) or []
    axes = _ints(ctx, _input(node, 3)) or list(range(len(starts)))
    steps = _ints(ctx, _input(node, 4)) or [1] * len(starts)
    begin, end, stride = [0] * rank, list(x.shape), [1] * rank
    masked: set[int] = set()
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st == 0:
            raise ctx.fail("a step of 0")
        a %= rank
        begin[a], end[a], to_front = _clamp_slice(s, e, st, x.shape[a])
        stride[a] = st
        if to_front:
            masked.add(a)
    order = _order(x)
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), x.layout, x.q)
    mask = sum(1 << i for i, a in enumerate(order) if a in masked)
    _strided_slice(ctx, x, out, [begin[a] for a in order], [end[a] for a in order],
                   [stride[a] for a in order], mask)
    _finish(ctx, node.output[0], out)


# ---- Transpose ------------------------------------------------------------------------
@register("Transpose")
def transpose(ctx: Lowering, node: onnx.NodeProto) -> None:
    """Composed with the stored layout: one TRANSPOSE from what is stored to the logical
    output, none when the composition is the identity (e.g. NHWC input -> NCHW)."""
    x = _data(ctx, node.input[0])
    rank = len(x.shape)
    perm = [int(p) % rank for p in ctx.attr("perm", list(range(rank))[::-1])]
    order = _order(x)
    stored_perm = [order.index(p) for p in perm]  # stored axis holding output axis j
    shape = tuple(x.shape[p] for p in perm)
    if rank == 4 and [stored_perm[a] for a in TO_NHWC] == list(range(4)):
        _finish(ctx, node.output[0], Val(x.index, shape, "nhwc", x.q))  # already stored so
        return
    if stored_perm == list(range(rank)):
        _finish(ctx, node.output[0], Val(x.index, shape, "logical", x.q))
        return
    out = ctx.new_val(node.output[0], shape, "logical", x.q)
    ctx.emit("TRANSPOSE", [x.index, ctx.int32("perm", stored_perm)], [out.index],
             version=4 if rank > 4 else None)
    _finish(ctx, node.output[0], out)


# ---- Gather ---------------------------------------------------------------------------
@register("Gather")
def gather(ctx: Lowering, node: onnx.NodeProto) -> None:
    """Constant indices: one index or an evenly spaced run -> STRIDED_SLICE (+ RESHAPE
    for a scalar index); any other list -> GATHER."""
    x = _data(ctx, node.input[0])
    rank = len(x.shape)
    axis = int(ctx.attr("axis", 0)) % rank
    raw = ctx.qdq.initializers.get(node.input[1])
    if raw is None or np.ndim(raw) > 1:
        raise ctx.fail("indices must be a constant scalar or 1-D list")
    raw = np.asarray(raw)
    dim = x.shape[axis]
    idx = [int(i) % dim for i in raw.ravel()]
    out_shape = ctx.out_shape(node.output[0])
    steps = {b - a for a, b in itertools.pairwise(idx)}
    if len(idx) == 1 or (len(steps) == 1 and min(steps) > 0):
        step = steps.pop() if steps else 1
        kept = tuple(len(idx) if a == axis else d for a, d in enumerate(x.shape))
        piece = ctx.new_val(f"{node.output[0]}/slice", kept, x.layout, x.q)
        order = _order(x)
        begin = [idx[0] if a == axis else 0 for a in order]
        end = [idx[-1] + 1 if a == axis else d for a, d in zip(order, x.stored, strict=True)]
        _strided_slice(ctx, x, piece, begin, end, [step if a == axis else 1 for a in order])
        if raw.ndim == 0:  # the axis goes away
            piece = ctx.logical(piece)
            out = ctx.new_val(node.output[0], out_shape, "logical", x.q)
            ctx.reshape(piece, out)
            piece = out
        _finish(ctx, node.output[0], piece)
        return
    if ctx.npu_shuffle and rank == 4 and axis == 1 and sorted(idx) == list(range(dim)):
        groups = _shuffle_groups(idx)
        pixels = x.shape[2] * x.shape[3]
        # Vela's tensor dimensions stop at 65535: a larger [P*Cg, g] goes the conv way
        if groups and ctx.npu_shuffle == "transpose" and pixels * dim // groups <= MAX_DIM:
            _shuffle_transposes(ctx, node, x, groups, out_shape)
        else:
            _permutation_conv(ctx, node, x, idx, out_shape)
        return
    out = ctx.new_val(node.output[0], out_shape, x.layout, x.q)
    ctx.emit("GATHER", [x.index, ctx.int32("indices", idx)], [out.index],
             ("GatherOptions", {"Axis": _order(x).index(axis)}))
    _finish(ctx, node.output[0], out)


MAX_DIM = 65535  # Vela: "Tensor dimensions must be in the range [1, 65535]"


def _shuffle_groups(idx: list[int]) -> int | None:
    """g when ``idx`` is a channel shuffle of g groups (output k <- input
    (k % g) * C/g + k // g), else None."""
    c = len(idx)
    if c < 2 or idx[0] != 0 or idx[1] < 1 or c % idx[1]:
        return None
    per_group = idx[1]
    g = c // per_group
    return g if idx == [(k % g) * per_group + k // g for k in range(c)] else None


def _shuffle_transposes(ctx: Lowering, node: onnx.NodeProto, x: Val, g: int,
                        out_shape: tuple[int, ...]) -> None:
    """The shuffle as RESHAPE/TRANSPOSE forms Vela maps to the NPU (no MACs): with P
    pixels and C = g * Cg, [P, g, Cg] -> [g, P, Cg] (HxWxC -> WxHxC) -> [g, P*Cg] ->
    [P*Cg, g] (WxC -> CxW) -> [P, Cg, g] = [1, H, W, C]: out[p, b*g + a] = in[p, a*Cg + b]."""
    x = ctx.nhwc(x)
    _, c, h, w = x.shape
    p, per_group = h * w, c // g
    name = ctx.graph.tensors[x.index].name
    steps = [((p, g, per_group), None), ((g, p, per_group), (1, 0, 2)),
             ((g, p * per_group), None), ((p * per_group, g), (1, 0))]
    value = x
    for k, (shape, perm) in enumerate(steps):
        nxt = ctx.new_val(f"{name}/shuffle_{k}", shape, "logical", x.q)
        if perm is None:
            ctx.reshape(value, nxt)
        else:
            ctx.emit("TRANSPOSE", [value.index, ctx.int32("perm", perm)], [nxt.index])
        value = nxt
    out = ctx.new_val(node.output[0], out_shape, "nhwc", x.q)
    ctx.reshape(value, out)
    _finish(ctx, node.output[0], out)


def _permutation_conv(ctx: Lowering, node: onnx.NodeProto, x: Val, perm: list[int],
                      out_shape: tuple[int, ...]) -> None:
    """A channel permutation (ShuffleNet's shuffle) as a 1x1 CONV_2D whose weights are a
    0/1 permutation matrix, for NPUs that run convolutions but not GATHER (Vela leaves
    GATHER on the CPU). Exact: weight 1 at scale 1.0, no bias, output parameters equal to
    the input's, so the requantization multiplier is exactly 1 and every int8 value
    passes through unchanged. Costs C x C MACs per pixel, which an NPU runs at full
    rate; a CPU would not, so only the NPU's TFLite gets it (ctx.npu_shuffle)."""
    x = ctx.nhwc(x)
    c = len(perm)
    weights = np.zeros((c, 1, 1, c), np.int8)  # OHWI
    weights[np.arange(c), 0, 0, perm] = 1
    name = ctx.graph.tensors[x.index].name
    filt = ctx.const(f"{name}/permutation", weights, FbQuant([1.0], [0], axis=0))
    bias = ctx.const(f"{name}/permutation_bias", np.zeros(c, np.int32),
                     FbQuant([float(x.q.scale)], [0]))
    out = ctx.new_val(node.output[0], out_shape, "nhwc", x.q)
    ctx.emit("CONV_2D", [x.index, filt, bias], [out.index], ("Conv2DOptions", {
        "Padding": VALID, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
        "DilationWFactor": 1, "DilationHFactor": 1}))
    _finish(ctx, node.output[0], out)


# ---- Expand / Tile ---------------------------------------------------------------------
@register("Expand")
@register("Tile")
def expand_or_tile(ctx: Lowering, node: onnx.NodeProto) -> None:
    """Expand -> BROADCAST_TO, Tile -> TILE (int8 kernels: version 3; not on the Edge TPU),
    on the stored layout; an input of lower rank is first reshaped to the output's."""
    x = _data(ctx, node.input[0])
    out_shape = ctx.out_shape(node.output[0])
    if len(x.shape) != len(out_shape):
        wide = ctx.new_val(f"{node.output[0]}/rank",
                           (1,) * (len(out_shape) - len(x.shape)) + tuple(x.shape), "logical", x.q)
        ctx.reshape(ctx.logical(x), wide)
        x = wide
    order = _order(x)
    out = ctx.new_val(node.output[0], out_shape, x.layout, x.q)
    if node.op_type == "Expand":
        ctx.emit("BROADCAST_TO", [x.index, ctx.int32("shape", list(out.stored))], [out.index],
                 version=3)
    else:
        repeats = _ints(ctx, _input(node, 1)) or []
        ctx.emit("TILE", [x.index, ctx.int32("multiples", [repeats[a] for a in order])],
                 [out.index], version=3)
    _finish(ctx, node.output[0], out)


# ---- Pad ------------------------------------------------------------------------------
@register("Pad")
def pad(ctx: Lowering, node: onnx.NodeProto) -> None:
    """constant (0.0) -> PAD with the zero point; reflect -> MIRROR_PAD REFLECT; edge with
    pads <= 1 -> MIRROR_PAD SYMMETRIC (the same values)."""
    x = _data(ctx, node.input[0])
    rank = len(x.shape)
    pads = ctx.attr("pads")
    pads = list(pads) if pads is not None else _ints(ctx, _input(node, 1))
    axes = _ints(ctx, _input(node, 3)) or list(range(rank))
    if pads is None or len(pads) != 2 * len(axes) or min(pads) < 0:
        raise ctx.fail(f"pads {pads} must be {2 * len(axes)} values >= 0")
    pairs = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes):
        pairs[a % rank] = [pads[i], pads[i + len(axes)]]
    value = _input(node, 2)
    if value and (value not in ctx.qdq.initializers or np.any(ctx.qdq.initializers[value] != 0)):
        raise ctx.fail("a padding value other than a constant 0.0")
    paddings = np.array([pairs[a] for a in _order(x)], np.int32)
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), x.layout, x.q)
    mode = _text(ctx.attr("mode", "constant"))
    if mode == "constant":
        ctx.emit("PAD", [x.index, ctx.const("paddings", paddings)], [out.index])
    elif mode == "reflect" or (mode == "edge" and paddings.max() <= 1):
        options: dict[str, object] = {"Mode": 0 if mode == "reflect" else 1}  # tflite.MirrorPadMode
        ctx.emit("MIRROR_PAD", [x.index, ctx.const("paddings", paddings)], [out.index],
                 ("MirrorPadOptions", options))
    else:
        raise ctx.fail(f"mode {mode!r} with pads {pads} has no TFLite equivalent "
                       "(MIRROR_PAD repeats the edge only for pads of 1)")
    _finish(ctx, node.output[0], out)


# ---- ReduceMean -----------------------------------------------------------------------
@register("ReduceMean")
def reduce_mean(ctx: Lowering, node: onnx.NodeProto) -> None:
    """MEAN over the mapped axes. (A mean over H and W of a 4-D tensor arrives here as a
    GlobalAveragePool: the converter rewrites it, see converter/_optimize_move.py.)"""
    x = _data(ctx, node.input[0])
    rank = len(x.shape)
    axes = ctx.attr("axes")
    axes = list(axes) if axes is not None else _ints(ctx, _input(node, 1))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            raise ctx.fail("noop_with_empty_axes=1 with no axes (an identity)")
        axes = list(range(rank))
    reduced = sorted({int(a) % rank for a in axes})
    keep = bool(ctx.attr("keepdims", 1))
    order = _order(x)
    kept_order = [a for a in order if a not in reduced]
    if not keep and kept_order != sorted(kept_order):
        x, order = ctx.logical(x), tuple(range(rank))  # a dropped axis would reorder them
    mean_q = x.q
    if mean_q.zero_point % 2:  # see _tflite_ops_shape.global_average_pool
        mean_q = QParams(mean_q.scale, mean_q.zero_point - 1)
    layout = x.layout if keep else "logical"
    out = ctx.new_val(node.output[0], ctx.out_shape(node.output[0]), layout, mean_q)
    ctx.emit("MEAN", [x.index, ctx.int32("axes", [order.index(a) for a in reduced])],
             [out.index], ("ReducerOptions", {"KeepDims": keep}))
    _finish(ctx, node.output[0], out)


# ---- Resize ---------------------------------------------------------------------------
def _onnx_nearest(size: int, out: int, scale: float, coord: str, mode: str) -> np.ndarray | None:
    """The input index ONNX nearest-neighbour resize reads for every output index."""
    y = np.arange(out, dtype=np.float32)
    s = np.float32(scale)
    if coord == "asymmetric":
        src = y / s
    elif coord == "half_pixel" or (coord == "pytorch_half_pixel" and out > 1):
        src = (y + np.float32(0.5)) / s - np.float32(0.5)
    elif coord == "pytorch_half_pixel":
        src = np.zeros_like(y)
    elif coord == "align_corners":
        src = y * np.float32((size - 1) / (out - 1)) if out > 1 else np.zeros_like(y)
    elif coord == "tf_half_pixel_for_nn":
        src = (y + np.float32(0.5)) / s
    else:
        return None
    frac = src - np.floor(src)
    rounded = {"floor": np.floor(src), "ceil": np.ceil(src),
               "round_prefer_floor": np.where(frac == 0.5, np.floor(src), np.round(src)),
               "round_prefer_ceil": np.where(frac == 0.5, np.ceil(src), np.round(src))}.get(mode)
    return None if rounded is None else np.clip(rounded, 0, size - 1).astype(np.int64)


def _tflite_nearest(size: int, out: int, align: bool, half: bool) -> np.ndarray:
    """The input index TFLite RESIZE_NEAREST_NEIGHBOR reads (reference kernel's formula)."""
    scale = np.float32((size - 1) / (out - 1) if align and out > 1 else size / out)
    y = np.arange(out, dtype=np.float32) + np.float32(0.5 if half else 0.0)
    v = y * scale
    idx = np.trunc(v + np.float32(0.5)) if align else np.floor(v)  # round half away (v >= 0)
    return np.asarray(np.clip(idx, 0, size - 1)).astype(np.int64)


def _resize_scales(ctx: Lowering, node: onnx.NodeProto, x: Val, out_shape: tuple[int, ...]) -> list[float]:
    """The H and W scales ONNX uses (from ``scales`` when given, else output / input)."""
    name = _input(node, 2)
    if name and name in ctx.qdq.initializers and ctx.qdq.initializers[name].size:
        scales = [float(s) for s in np.asarray(ctx.qdq.initializers[name]).ravel()]
        axes = ctx.attr("axes")
        if axes is not None:
            full = [1.0] * 4
            for a, s in zip(axes, scales, strict=True):
                full[int(a) % 4] = s
            scales = full
        if scales[:2] != [1.0, 1.0]:
            raise ctx.fail(f"scales {scales} resize N or C")
        return scales[2:]
    return [out_shape[2] / x.shape[2], out_shape[3] / x.shape[3]]


@register("Resize")
def resize(ctx: Lowering, node: onnx.NodeProto) -> None:
    x = ctx.get(node.input[0])
    out_shape = ctx.out_shape(node.output[0])
    if len(x.shape) != 4 or tuple(out_shape[:2]) != x.shape[:2]:
        raise ctx.fail("only resizes of H and W of a 4-D (N, C, H, W) tensor")
    mode = _text(ctx.attr("mode", "nearest"))
    coord = _text(ctx.attr("coordinate_transformation_mode", "half_pixel"))
    if ctx.attr("antialias", 0) and any(o < i for o, i in zip(out_shape[2:], x.shape[2:], strict=True)):
        raise ctx.fail("antialiased downsampling")
    scales = _resize_scales(ctx, node, x, out_shape)
    sizes = list(zip(x.shape[2:], out_shape[2:], scales, strict=True))
    if mode == "nearest":
        nearest = _text(ctx.attr("nearest_mode", "round_prefer_floor"))
        want = [_onnx_nearest(i, o, s, coord, nearest) for i, o, s in sizes]
        flags = next((f for f in ((False, False), (False, True), (True, False))
                      if all(w is not None and np.array_equal(w, _tflite_nearest(i, o, *f))
                             for w, (i, o, _) in zip(want, sizes, strict=True))), None)
        opcode, table = "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions"
    elif mode == "linear":
        same_scale = all(abs(s - o / i) <= 1e-6 * s for i, o, s in sizes)
        flags = {"align_corners": (True, False), "asymmetric": (False, False),
                 "half_pixel": (False, True),
                 "pytorch_half_pixel": (False, True) if min(out_shape[2:]) > 1 else None,
                 }.get(coord) if (same_scale or coord == "align_corners") else None
        opcode, table = "RESIZE_BILINEAR", "ResizeBilinearOptions"
    else:
        raise ctx.fail(f"mode {mode!r} has no TFLite resize")
    if flags is None and mode == "nearest" and all(w is not None for w in want):
        _gather_rows_and_columns(ctx, node, ctx.nhwc(x), [w for w in want if w is not None],
                                 out_shape)  # exact, not Edge TPU
        return
    if flags is None:
        raise ctx.fail(f"{mode} resize with coordinate_transformation_mode={coord!r}"
                       + (f", nearest_mode={nearest!r}" if mode == "nearest" else "")
                       + f" from {list(x.shape[2:])} to {list(out_shape[2:])} has no TFLite "
                       f"{opcode} equivalent (align_corners / half_pixel_centers)")
    align, half = flags
    x = ctx.nhwc(x)
    out = ctx.new_val(node.output[0], out_shape, "nhwc", x.q)
    version = 3 if half or (align and mode == "nearest") else 2
    ctx.emit(opcode, [x.index, ctx.int32("size", list(out_shape[2:]))], [out.index],
             (table, {"AlignCorners": align, "HalfPixelCenters": half}), version=version)
    _finish(ctx, node.output[0], out)


def _gather_rows_and_columns(ctx: Lowering, node: onnx.NodeProto, x: Val,
                             index: list[np.ndarray], out_shape: tuple[int, ...]) -> None:
    """A nearest resize that no RESIZE_NEAREST_NEIGHBOR flags give: GATHER the input rows,
    then the columns, that ONNX reads for each output pixel."""
    n, c = x.shape[:2]
    rows = ctx.new_val(f"{node.output[0]}/rows", (n, c, out_shape[2], x.shape[3]), "nhwc", x.q)
    ctx.emit("GATHER", [x.index, ctx.int32("rows", [int(i) for i in index[0]])], [rows.index],
             ("GatherOptions", {"Axis": 1}))
    out = ctx.new_val(node.output[0], out_shape, "nhwc", x.q)
    ctx.emit("GATHER", [rows.index, ctx.int32("columns", [int(i) for i in index[1]])],
             [out.index], ("GatherOptions", {"Axis": 2}))
    _finish(ctx, node.output[0], out)


# ---- ConvTranspose --------------------------------------------------------------------
@register("ConvTranspose")
def conv_transpose(ctx: Lowering, node: onnx.NodeProto) -> None:
    """TRANSPOSE_CONV v3 (int8, per-channel weights [O, kh, kw, I], int32 bias input;
    Edge TPU compiler 16 maps it). Pads that TFLite SAME/VALID do not give are a VALID
    transpose conv followed by a STRIDED_SLICE crop."""
    x = ctx.nhwc(ctx.get(node.input[0]))
    w = _weight(ctx, node.input[1])
    if w.values.ndim != 4 or len(x.shape) != 4:
        raise ctx.fail("only 2-D ConvTranspose (4-D tensors) is supported")
    if int(ctx.attr("group", 1)) != 1 or list(ctx.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.fail("group > 1 or dilation has no TFLite TRANSPOSE_CONV equivalent")
    if ctx.attr("output_shape") is not None or _text(ctx.attr("auto_pad", "NOTSET")) != "NOTSET":
        raise ctx.fail("output_shape / auto_pad: give explicit pads")
    _, o, kh, kw = w.values.shape
    if not w.per_tensor and w.axis != 1:
        raise ctx.fail("per-channel weights must be along the output-channel axis 1")
    strides = [int(s) for s in ctx.attr("strides", [1, 1])]
    begin = [int(p) for p in ctx.attr("pads", [0, 0, 0, 0])][:2]
    out_shape = ctx.out_shape(node.output[0])
    out_q = ctx.out_q(node.output[0])
    w_scales = np.broadcast_to(w.scales, (o,)).astype(np.float32)
    b_scales = w_scales * np.float32(x.q.scale)
    bias = _bias(ctx, node, 2, b_scales, o)
    target = list(out_shape[2:])
    same = [max(((-(-t // s) - 1) * s + k - t) // 2, 0)
            for t, s, k in zip(target, strides, (kh, kw), strict=True)]
    padding, made = (SAME, target) if same == begin else (VALID, [b + t for b, t in zip(begin, target, strict=True)])
    name = node.output[0]
    made_shape = (out_shape[0], o, *made)
    full = ctx.new_val(f"{name}/full" if made != target else name, made_shape, "nhwc", out_q)
    filt = ctx.const(f"{name}/filter", np.ascontiguousarray(w.values.transpose(1, 2, 3, 0)),
                     FbQuant([float(s) for s in w_scales], [0] * o, axis=0))
    bias_t = ctx.const(f"{name}/bias", bias, FbQuant([float(s) for s in b_scales], [0] * o))
    shape_t = ctx.int32("output_shape", list(full.stored))
    ctx.emit("TRANSPOSE_CONV", [shape_t, filt, x.index, bias_t], [full.index],
             ("TransposeConvOptions", {"Padding": padding, "StrideW": strides[1],
                                       "StrideH": strides[0]}), version=3)
    if made != target:
        out = ctx.new_val(name, out_shape, "nhwc", out_q)
        _strided_slice(ctx, full, out, [0, *begin, 0], [out_shape[0], begin[0] + target[0],
                                                        begin[1] + target[1], o], [1] * 4)
        full = out
    ctx.bind(name, full)
