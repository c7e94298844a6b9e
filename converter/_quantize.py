"""Write the QDQ INT8 ONNX model from the float graph and its quantization plan.

CONTRACT (read by the TFLite writer, ``converter/_tflite*.py``, so that the same
parameters serve both formats; this is the TFLite INT8 quantization spec):

- Weights are int8 initializers, zero point 0, symmetric in [-127, 127], each feeding a
  DequantizeLinear. Conv weights (incl. depthwise/grouped) are PER-CHANNEL on axis 0 of
  the ONNX layout (output channels); Gemm and constant-weight MatMul weights are
  PER-TENSOR (TFLite FULLY_CONNECTED is per-tensor). Other constant operands (e.g. of
  Add/Mul) are int8 per-tensor, zero point 0 (the output's parameters for Concat), stored
  like activations as uint8 = int8 + 128 with zero point + 128; readers subtract 128.
- ConvTranspose weights (ONNX [I, O, kh, kw], group 1) are PER-CHANNEL on axis 1 (output
  channels) and get a per-channel bias like a Conv's.
- Every Conv, ConvTranspose and Gemm has a bias: an int32 initializer with zero point 0 and
  scale = input scale x weight scale (per channel for Conv), via DequantizeLinear (a zero
  bias is added where the float model had none). A Conv's per-channel bias scale is the
  output of ``Mul(weight scales, input scale)`` on those two initializers (the same
  float32 product; readers fold it); a Gemm's is a scalar initializer.
- Activations are int8, per-tensor, a QuantizeLinear -> DequantizeLinear pair whose two
  nodes share one scale and one zero-point initializer. The file stores that zero point
  as uint8 = int8 zero point + 128 (the same real values; onnxruntime fuses only pairs
  whose types agree, see ``_stored_zero_point``); readers subtract 128. At int8 graph
  edges (``io="int8"``) it stays int8.
- Sigmoid and Softmax outputs: scale 1/256, zero point -128. Tanh output: scale 1/128,
  zero point 0.
- MaxPool, AveragePool, GlobalAveragePool, Reshape, Flatten and the data-movement ops
  (Split: every output, Slice, Transpose, Squeeze, Unsqueeze, Resize, Pad, ReduceMean,
  Gather, Expand, Tile): output parameters are exactly the input's. Concat: all inputs
  and the output share one set; a constant input is quantized with them (its range is
  part of theirs); an input with fixed parameters (Sigmoid...) whose range does not
  hold the Concat's keeps its own, and the Concat requantizes it
  (converter/_fixed_split.py).
- HardSwish, HardSigmoid, LeakyRelu, Gelu, Sub, PRelu (constant slope, an int8 per-tensor
  constant operand like Add/Mul's), MatMul of two activations (both per-tensor int8):
  int8 input(s), own calibrated output parameters. Decomposed HardSwish / Gelu /
  LayerNorm patterns and Div by a constant reach this writer already fused
  (converter/_fuse.py), so they follow the rules of the fused op. A HardSwish on an
  NCHW tensor arrives as ``x * Clip(depthwise 1x1 Conv(x; 1/6, 1/2), 0, 1)``: a Conv with
  its Clip folded (gate parameters [0, 1], zero point -128) and a Mul; a HardSigmoid on
  an NCHW tensor as ``Clip(depthwise 1x1 Conv(x; alpha, beta), 0, 1)``.
- LayerNormalization: int8 input and output; scale and bias stay float initializers
  (onnxruntime runs DQ -> LayerNormalization -> Q). The int8 parameters of its
  intermediates (mean, centered, squared, variance, variance_eps, rstd, normalized,
  scaled), calibrated by converter/_layernorm.py, are in the model's metadata_props
  ``edgeship.layernorm`` (JSON: node name -> intermediate -> [scale, zero point]).
- Div by a tensor, Sqrt, Reciprocal, Pow (exponent != 2), Erf, LSTM and GRU stay float
  (no int8 TFLite kernel, or, for LSTM/GRU, per-gate scales that are not calibrated).
- An AveragePool with full windows (no pads) of n values whose output feeds ops with
  their own parameters has the output scale input scale / (1 + 1/(1024 n)), zero point
  unchanged: no average is then halfway between two steps, and the TFLite writer computes
  it as DEPTHWISE_CONV_2D with weights 1/n (``converter/_pool_ties.py``).
- A GlobalAveragePool over an even count n whose output feeds ops with their own
  parameters has the output scale input scale / (1 + 1/(1024 n)): no average is halfway
  between two steps (PP-OCRv4's 6x80 squeeze-excitation pools: one in 480 was, and the two
  runtimes rounded it apart); TFLite computes it as DEPTHWISE_CONV_2D over the whole
  window, like such an AveragePool (``converter/_pool_ties.py``).
  Otherwise the scale shared by a GlobalAveragePool's input and output is a float32 for which
  onnxruntime's kernel rounds an average that is exactly halfway to even, like TFLite's
  MEAN (moved by a few float32 ulps from the calibrated one when needed; see
  ``exact_pool_scales``).
- An Add or Sub of two activations has its output scale moved (by < 1e-3) to the first
  on which onnxruntime's kernel and LiteRT's XNNPACK add give the same code for every
  pair of int8 inputs, ``converter/_add_ties.py`` (with a constant operand it keeps its
  calibrated scale). When a TFLite is written, a LayerNormalization's
  output scale is moved the same way for its final Add of beta, and its internal steps get
  tie-free scales (``converter/_layernorm_ties.py``); readers follow a moved output.
- A Relu or Clip(0, x) folded into its producer (Conv, ConvTranspose, Gemm, MatMul with
  constant weights, Add) is removed from the graph and made exact by the producer output's range:
  zero point -128 with range [0, hi] (hi <= x for Clip). Relu/Clip not folded stay as
  int8 ops with their own output parameters.
- The model's inputs and outputs stay float (Q after the input, DQ before the output)
  unless ``io="int8"``, in which case they are int8 with the parameters of their Q/DQ.
- Nodes that cannot be quantized stay float between DQ and Q (the report says why).
- The file written (``model.int8.onnx``) then gets onnxruntime's pass
  (converter/_ort_layout.py), which keeps every real channel's integers: a depthwise Conv
  region whose width is not a multiple of 16 is padded to one (extra channels: zero
  weights, zero bias, zero kernels; the bounding Convs read them with zero weights), and a
  HardSwish/HardSigmoid 1x1 gate whose channels all compute ``alpha x + beta`` becomes
  ``Add(x, beta / alpha)`` whose QuantizeLinear has scale ``s / alpha`` while its
  DequantizeLinear keeps the gate's ``s`` -- the only Q/DQ pair with two scales. The TFLite
  file is written from the model before that pass; a reader of the written file turns such
  a gate back into its 1x1 Conv (``gates_as_conv``) and keeps the padded channels.

Naming: activation ``T`` -> ``T_q`` (int8) -> ``T_dq`` with ``T_s`` / ``T_z`` (scale / zero
point); weight ``W`` -> ``W_q`` (int8) + ``W_s`` -> ``W_dq``; the bias of node ``N`` ->
``N_b_q`` (int32) + ``N_b_s`` -> ``N_b_dq``. Per-channel and int32 constant
DequantizeLinear nodes carry no zero-point input (ONNX defines it as 0); per-tensor int8
ones name the shared ``int8_zero`` (onnxruntime's QGemm fusion needs it explicit). Q/DQ
nodes are unnamed; graph outputs keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ._add_ties import tie_free_add_scales
from ._bias_correct import bias_shift
from ._ir import Graph
from ._plan import Plan, QParams, fused_pre_tensors
from ._pool_ties import tie_free_pool_scales

INT32_MAX = 2**31 - 1
PER_CHANNEL_BIAS_OPS = ("Conv", "ConvTranspose")
INT8_ZERO = "int8_zero"  # the one int8 zero point that per-tensor int8 constants share


def _stored_zero_point(zero_point: int, *, int8: bool) -> np.ndarray:
    """An activation zero point as the ONNX file stores it: uint8 (zero point + 128, the
    same real values) except at int8 graph edges. onnxruntime on x86 rewrites int8
    Q/DQ pairs to uint8 before fusing, but skips a QuantizeLinear that feeds more than one
    DequantizeLinear (a tensor with two consumers, e.g. a residual branch), and a node
    whose inputs and output then differ in type stays float between DQ and Q."""
    if int8:
        return np.array(zero_point, np.int8)
    return np.array(zero_point + 128, np.uint8)


@dataclass
class WeightInfo:
    """What happened to one weight tensor (for the report and for ``--base``)."""

    name: str
    node: str
    shape: list[int]
    per_channel: bool
    scales: list[float]
    sparsity: float
    kept_scales: bool = False
    kept_values: int = 0


@dataclass
class WeightPolicy:
    """Chooses weight scales and int8 values; ``--base`` swaps in an update-aware one."""

    def scales(self, name: str, w: np.ndarray, axis: int | None) -> np.ndarray:
        return symmetric_scales(w, axis)

    def round(self, name: str, w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
        q: np.ndarray = np.clip(np.round(w / _bcast(scales, w, axis)), -127, 127)
        return q.astype(np.int8)

    def report(self, name: str) -> tuple[bool, int]:
        return False, 0


def symmetric_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        absmax = np.array([np.abs(w).max() if w.size else 0.0])
    else:
        absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return np.maximum(absmax.astype(np.float64) / 127.0, 1e-12).astype(np.float32)


def _bcast(scales: np.ndarray, w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return scales.reshape(())
    shape = [1] * w.ndim
    shape[axis] = -1
    return scales.reshape(shape)


@dataclass
class _Builder:
    graph: Graph
    plan: Plan
    policy: WeightPolicy
    io: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    weights: list[WeightInfo] = field(default_factory=list)
    tensor_map: dict[str, str] = field(default_factory=dict)  # fp32 tensor -> int8-model tensor
    cache: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    # bias correction: per-sample mean of each corrected layer's float input (None: off)
    input_means: dict[str, np.ndarray] | None = None
    bias_shifts: dict[str, np.ndarray] = field(default_factory=dict)  # node -> subtracted

    # ---- activations
    def qdq(self, t: str, src: str) -> None:
        p = self.plan.params[t]
        scale, zp = t + "_s", t + "_z"
        is_in, is_out = t in self.graph.input_names, t in self.graph.output_names
        self.inits[scale] = np.array(p.scale, np.float32)
        self.inits[zp] = _stored_zero_point(
            p.zero_point, int8=self.io == "int8" and (is_in or is_out)
        )
        out = t if is_out else t + "_dq"
        if self.io == "int8" and is_out:
            self.nodes.append(helper.make_node("QuantizeLinear", [src, scale, zp], [t]))
        elif self.io == "int8" and is_in:
            self.nodes.append(helper.make_node("DequantizeLinear", [t, scale, zp], [out]))
        else:
            self.nodes.append(helper.make_node("QuantizeLinear", [src, scale, zp], [t + "_q"]))
            self.nodes.append(helper.make_node("DequantizeLinear", [t + "_q", scale, zp], [out]))
        self.tensor_map[t] = out

    def src_name(self, t: str) -> str:
        """The name a producer writes for quantized tensor ``t`` (before its Q)."""
        return t + "_float" if t in self.graph.output_names else t

    # ---- constants
    def dq_const(self, q: np.ndarray, scale: np.ndarray | str, name: str, axis: int | None) -> str:
        """A constant int8/int32 tensor behind a DequantizeLinear; ``scale`` is an array or
        the name of a tensor already in the graph. Per-channel and int32 constants carry no
        zero-point input (ONNX defines it as 0; ~5 bytes per channel kept out of the file);
        per-tensor int8 ones name the shared int8 zero, because onnxruntime fuses a Gemm or
        MatMul into QGemm / QLinearMatMul only when the weight's zero point is explicit."""
        self.inits[name + "_q"] = q
        scale_name = scale if isinstance(scale, str) else name + "_s"
        if not isinstance(scale, str):
            self.inits[scale_name] = scale.astype(np.float32).reshape(
                -1 if axis is not None else ()
            )
        inputs = [name + "_q", scale_name]
        if axis is None and q.dtype == np.int8:
            self.inits[INT8_ZERO] = np.array(0, np.int8)
            inputs.append(INT8_ZERO)
        attrs: dict[str, Any] = {"axis": axis} if axis is not None else {}
        out = name + "_dq"
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out], **attrs))
        return out

    def weight(
        self, node: onnx.NodeProto, name: str, axis: int | None, floor: np.ndarray | None
    ) -> tuple[str, np.ndarray]:
        """Quantize weight ``name``; ``floor`` is the smallest scale that keeps the bias
        inside int32 (matters only for channels pruned to all zeros)."""
        if name in self.cache:  # a weight shared by several nodes is quantized once
            return self.cache[name]
        w = self.graph.inits[name]
        scales = self.policy.scales(name, w, axis)
        if floor is not None:
            scales = np.maximum(scales, floor if axis is not None else floor.max()).astype(
                np.float32
            )
        q = self.policy.round(name, w, scales, axis)
        kept_scales, kept_values = self.policy.report(name)
        self.weights.append(
            WeightInfo(
                name=name,
                node=node.name,
                shape=list(w.shape),
                per_channel=axis is not None,
                scales=[float(s) for s in scales],
                sparsity=float((w == 0).mean()) if w.size else 0.0,
                kept_scales=kept_scales,
                kept_values=kept_values,
            )
        )
        self.cache[name] = (self.dq_const(q, scales, name, axis), scales)
        return self.cache[name]

    def bias(
        self, node: onnx.NodeProto, b: np.ndarray, in_scale: float, w_scales: np.ndarray
    ) -> str:
        """int32 bias with scale float32(input scale x weight scale), per channel or not.
        A per-channel bias scale is not stored: a Mul of the weight's scale tensor and the
        input's scale computes it (the same float32 product; onnxruntime folds it at load
        and the TFLite writer folds it on read), which keeps 4 bytes per channel out."""
        s = (np.float32(in_scale) * w_scales.astype(np.float32)).astype(np.float32)
        q = np.clip(np.round(b.astype(np.float64) / s.astype(np.float64)), -INT32_MAX, INT32_MAX)
        name = node.name + "_b"
        if node.op_type not in PER_CHANNEL_BIAS_OPS:
            return self.dq_const(q.astype(np.int32), s, name, None)
        w_s, in_s = node.input[1] + "_s", node.input[0] + "_s"
        self.nodes.append(helper.make_node("Mul", [w_s, in_s], [name + "_s"]))
        return self.dq_const(q.astype(np.int32), name + "_s", name, 0)

    def quantized_node(self, node: onnx.NodeProto) -> None:
        rule = self.plan.rules[node.name]
        inputs = list(node.input)
        b = None
        if rule.bias_input is not None:
            b_name = inputs[rule.bias_input] if len(inputs) > rule.bias_input else ""
            n = self._out_channels(node)
            b = self.graph.inits[b_name] if b_name else np.zeros(n, np.float32)
            b = np.broadcast_to(b.astype(np.float64).reshape(-1), (n,))
        w_scales = None
        for i, name in enumerate(inputs):
            if not name or i == rule.bias_input:
                continue
            if i == rule.weight_input:
                in_scale = self.plan.params[node.input[0]].scale
                floor = None if b is None else np.abs(b) / (in_scale * INT32_MAX) * 2
                inputs[i], w_scales = self.weight(node, name, rule.weight_axis, floor)
            elif self.graph.is_const(name):
                if rule.activation_inputs is None or i in rule.activation_inputs:
                    inputs[i] = self.const_operand(node, name, i, rule)
            elif name in self.plan.params:
                inputs[i] = self.tensor_map[name]
        if b is not None and w_scales is not None and rule.bias_input is not None:
            b = self._corrected(node, b, rule.weight_axis, w_scales)
            bq = self.bias(node, b, self.plan.params[node.input[0]].scale, w_scales)
            inputs = [*inputs[: rule.bias_input], bq]
        outputs = [self.out_name(o) for o in node.output]
        self.nodes.append(
            helper.make_node(
                node.op_type, inputs, outputs, name=node.name, domain=node.domain or None
            )
        )
        self.nodes[-1].attribute.extend(node.attribute)

    def _corrected(
        self, node: onnx.NodeProto, b: np.ndarray, axis: int | None, w_scales: np.ndarray
    ) -> np.ndarray:
        """The bias minus the mean shift its int8 weight causes (converter/_bias_correct)."""
        mean = None if self.input_means is None else self.input_means.get(node.input[0])
        if mean is None:
            return b
        w = self.graph.inits[node.input[1]]
        w_dq = self.inits[node.input[1] + "_q"].astype(np.float64) * _bcast(w_scales, w, axis)
        shift = bias_shift(node, w, w_dq, mean)
        if shift is None or shift.shape != b.shape or not np.all(np.isfinite(shift)):
            return b
        self.bias_shifts[node.name] = shift
        return np.asarray(b - shift)

    def _out_channels(self, node: onnx.NodeProto) -> int:
        w = self.graph.inits[node.input[1]]
        if node.op_type == "Conv":
            return int(w.shape[0])
        if node.op_type == "ConvTranspose":  # ONNX weight [I, O / group, kh, kw]
            return int(w.shape[1]) * int(next((a.i for a in node.attribute if a.name == "group"), 1))
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return int(w.shape[0] if trans_b else w.shape[1])

    def const_operand(self, node: onnx.NodeProto, name: str, i: int, rule: object) -> str:
        """A constant activation operand (e.g. of Add/Mul/Concat): int8 per tensor, with
        the output's parameters for ``same``/``unify`` ops, else symmetric (zero point 0).
        Stored like activations, as uint8 = int8 + 128 with zero point + 128, so that
        onnxruntime's fusion sees one type on every input of the node."""
        c = self.graph.inits[name].astype(np.float32)
        out_t = node.output[0]
        if getattr(rule, "output", "") in ("same", "unify") and out_t in self.plan.params:
            scale, zp = self.plan.params[out_t].scale, self.plan.params[out_t].zero_point
            q = np.clip(np.round(c / scale) + zp, -128, 127)
        else:
            scale, zp = float(symmetric_scales(c, None)[0]), 0
            q = np.clip(np.round(c / scale), -127, 127)
        key = f"{node.name}_in{i}"
        self.inits[key + "_q"] = (q + 128).astype(np.uint8)
        self.inits[key + "_s"] = np.array(scale, np.float32)
        self.inits[key + "_z"] = _stored_zero_point(zp, int8=False)
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear", [key + "_q", key + "_s", key + "_z"], [key + "_dq"]
            )
        )
        return key + "_dq"

    def out_name(self, t: str) -> str:
        return self.src_name(t) if t in self.plan.params else t

    def float_node(self, node: onnx.NodeProto) -> None:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            if name in self.tensor_map:
                copy.input[i] = self.tensor_map[name]
        for i, name in enumerate(copy.output):
            copy.output[i] = self.out_name(name)
        self.nodes.append(copy)

    def build(self) -> None:
        g, plan = self.graph, self.plan
        by_name = {n.name: n for n in g.nodes}
        alias = {by_name[a].input[0]: by_name[a].output[0] for a in plan.fused}
        for t in g.input_names:
            if t in plan.params:
                self.qdq(t, t)
        for node in g.nodes:
            if node.name in plan.fused:
                continue
            if plan.is_quantized_node(node):
                orig = list(node.output)
                renamed = onnx.NodeProto()
                renamed.CopyFrom(node)
                for i, o in enumerate(renamed.output):
                    renamed.output[i] = alias.get(o, o)
                self.quantized_node(renamed)
                outs = [alias.get(o, o) for o in orig]
            else:
                self.float_node(node)
                outs = list(node.output)
            for o in outs:
                if o in plan.params:
                    self.qdq(o, self.src_name(o))


def build_qdq(
    graph: Graph,
    plan: Plan,
    *,
    policy: WeightPolicy | None = None,
    io: str = "float",
    input_means: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, list[WeightInfo], dict[str, str]]:
    """The QDQ model, a record per weight, and the fp32 -> int8-model tensor name map.
    ``input_means`` (per-sample mean of Conv/Gemm inputs on the calibration data) turns
    on bias correction: each such layer's int32 bias absorbs the mean shift its rounded
    weights cause (converter/_bias_correct.py)."""
    assert not (fused_pre_tensors(graph, plan.fused) & set(plan.params))
    tie_free_plan(graph, plan)
    b = _Builder(graph, plan, policy or WeightPolicy(), io, input_means=input_means)
    b.build()
    q = Graph(
        nodes=b.nodes,
        inits={**{k: v for k, v in graph.inits.items()}, **b.inits},
        inputs=_io_values(graph.inputs, plan, io),
        outputs=_io_values(graph.outputs, plan, io),
        value_info={},
        opset=graph.opset,
        ir_version=graph.ir_version,
        name=graph.name,
    )
    q.prune_unused()
    return q.to_model(), b.weights, b.tensor_map


def tie_free_plan(graph: Graph, plan: Plan) -> int:
    """The plan's scale moves that make onnxruntime and LiteRT round alike: pools, then
    Adds/Subs of two activations (updates ``plan.params``; idempotent). Returns how many
    Adds moved."""
    exact_pool_scales(graph, plan)
    tie_free_pool_scales(graph, plan)
    return tie_free_add_scales(graph, plan)  # onnxruntime and LiteRT: the same int8 sums


MAX_POOL_SCALE_ULPS = 64  # how far (float32 steps) a pooled scale may move; 4e-6 relative


def ties_round_to_even(scale: float, n: int, zero_point: int) -> bool:
    """Whether onnxruntime's QLinearGlobalAveragePool (x86: float32 multiplier
    ``s / (s * n)``, product rounded to float32, then round-half-even) rounds every
    average of ``n`` int8 values that is exactly halfway to even, as a kernel that
    divides exactly does. Pure arithmetic, no onnxruntime."""
    if n % 2:
        return True  # an odd count has no halfway averages
    s = np.float32(scale)
    multiplier = np.float32(s / np.float32(s * np.float32(n)))
    k = np.arange(-128 - zero_point, 127 - zero_point)
    sums = k * n + n // 2  # every halfway sum of n values of (q - zero point)
    got = np.rint(np.float32(sums.astype(np.float32) * multiplier))
    return bool(np.array_equal(got, np.round(sums / n)))


def exact_pool_scales(graph: Graph, plan: Plan) -> None:
    """Give each GlobalAveragePool's parameter group the float32 scale nearest to its
    calibrated one for which :func:`ties_round_to_even` holds (updates ``plan.params`` in
    place, so quant_params.json records what the model uses; idempotent). A move of a
    few ulps changes no real value that matters, and it makes onnxruntime round the one
    op that is not exact in integers the way LiteRT's MEAN does."""
    for node in graph.nodes:
        if node.op_type != "GlobalAveragePool" or not plan.is_quantized_node(node):
            continue
        t = node.input[0]
        shape = graph.shape(t)
        if t not in plan.params or not shape or not all(isinstance(d, int) for d in shape[2:]):
            continue
        n = int(np.prod([int(d) for d in shape[2:]]))
        old = plan.params[t]
        scale = _tie_exact_scale(old.scale, n, old.zero_point)
        if scale is None or scale == old.scale:
            continue
        root = plan.group_of.get(t, t)
        for u in plan.params:
            if plan.group_of.get(u, u) == root and plan.params[u] == old:
                plan.params[u] = QParams(scale, old.zero_point)


def _tie_exact_scale(scale: float, n: int, zero_point: int) -> float | None:
    up = down = np.float32(scale)
    for _ in range(MAX_POOL_SCALE_ULPS + 1):
        for s in (down, up):
            if ties_round_to_even(float(s), n, zero_point):
                return float(s)
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(0))
    return None


def _io_values(values: list[onnx.ValueInfoProto], plan: Plan, io: str) -> list[onnx.ValueInfoProto]:
    out = []
    for v in values:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(v)
        if io == "int8" and v.name in plan.params:
            copy.type.tensor_type.elem_type = TensorProto.INT8
        out.append(copy)
    return out
