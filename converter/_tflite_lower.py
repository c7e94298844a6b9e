"""The state of one QDQ-ONNX -> TFLite lowering: tensors, layouts, edges, op versions.

ONNX activations are NCHW, TFLite kernels want NHWC. Every lowered value therefore
remembers its *logical* ONNX shape and how it is stored:

- ``logical``: stored exactly as ONNX would (any rank);
- ``nhwc``: a rank-4 NCHW value stored as NHWC;
- ``flat_hwc``: a [N, C*H*W] value flattened from NHWC (H, W, C order) — a Flatten before
  a Gemm stays free: the FC weight columns are permuted instead of transposing data.

Ops ask for the layout they need (:meth:`Lowering.nhwc`, :meth:`Lowering.logical`) and
TRANSPOSE / RESHAPE ops are inserted only where a layout really changes. Op versions
are the lowest that express the int8 kernels, which the Edge TPU compiler 16 accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from edgeship.converter._tflite_fb import FbGraph, FbOp, FbQuant, FbTensor
from edgeship.converter._tflite_qdq import QConst, QdqGraph, QParams, node_label

from edgeship._errors import ConversionError, UnsupportedOpError

# lowest versions with the int8 kernels (tensorflow/lite/tools/versioning/op_version.cc)
OP_VERSIONS = {
    "QUANTIZE": 1, "DEQUANTIZE": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4, "ADD": 2, "MUL": 2, "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2,
    "MEAN": 2, "RESHAPE": 1, "SOFTMAX": 2, "LOGISTIC": 2, "CONCATENATION": 2, "PAD": 2,
    "TRANSPOSE": 2, "SPLIT": 2, "RELU": 2, "RELU6": 2, "RELU_N1_TO_1": 1, "MAXIMUM": 2,
    "MINIMUM": 2,
    # data movement (issue 14): int8 kernels; a higher version is passed where the
    # op's options or rank need one (TRANSPOSE 5-D: 4, RESIZE half-pixel: 3, ...)
    "SPLIT_V": 2, "STRIDED_SLICE": 2, "SLICE": 2, "GATHER": 2, "MIRROR_PAD": 2,
    "RESIZE_NEAREST_NEIGHBOR": 2, "RESIZE_BILINEAR": 2, "TRANSPOSE_CONV": 3,
    "BROADCAST_TO": 3, "TILE": 3,
    # arithmetic and activations (issue 14)
    "HARD_SWISH": 1, "SUB": 2, "TANH": 2, "LEAKY_RELU": 1, "PRELU": 1, "GELU": 2,
    "BATCH_MATMUL": 2, "RSQRT": 2, "SQUARED_DIFFERENCE": 2,
}
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


@dataclass(frozen=True)
class Val:
    index: int  # tensor index in the FbGraph
    shape: tuple[int, ...]  # logical (ONNX) shape
    layout: str  # "logical" | "nhwc" | "flat_hwc"
    q: QParams

    @property
    def stored(self) -> tuple[int, ...]:
        return stored_shape(self.shape, self.layout)


def stored_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "nhwc":
        return tuple(shape[i] for i in TO_NHWC)
    return shape


def qparams_close(a: QParams, b: QParams) -> bool:
    return a.zero_point == b.zero_point and abs(a.scale - b.scale) <= 1e-6 * max(a.scale, b.scale)


class Lowering:
    """Builds one FbGraph from one QdqGraph; ops call back into it."""

    def __init__(self, qdq: QdqGraph, *, io: str, npu_shuffle: str = "") -> None:
        self.qdq = qdq
        self.io = io
        # a TFLite for an NPU compiler (Vela): a channel permutation, which it leaves on
        # the CPU as GATHER, written as "transpose" (RESHAPE/TRANSPOSE) or "conv" (a 1x1
        # permutation CONV_2D): same values; "" writes GATHER (best on a CPU)
        if npu_shuffle not in ("", "transpose", "conv"):
            raise ValueError(f"npu_shuffle: {npu_shuffle!r}")
        self.npu_shuffle = npu_shuffle
        self.graph = FbGraph(description="edgeship QDQ->TFLite int8")
        self.values: dict[str, Val] = {}
        self.float_values: dict[str, Any] = {}  # ONNX name -> _tflite_float.FloatVal
        self.versions: dict[str, int] = {}
        self.node: onnx.NodeProto | None = None
        self._layouts: dict[tuple[int, str], Val] = {}
        # graph edge names are reserved so that no inner tensor takes them
        self._names: set[str] = set(qdq.inputs) | set(qdq.outputs)
        self.flat_source: dict[int, tuple[int, int, int, int]] = {}

    # ---- errors -------------------------------------------------------------------
    def fail(self, reason: str) -> UnsupportedOpError:
        node = self.node
        return UnsupportedOpError(node.op_type if node else "?", node_label(node) if node else "?", reason)

    # ---- tensors and ops ----------------------------------------------------------
    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def act(self, name: str, shape: tuple[int, ...], q: QParams | None, dtype: str = "int8",
            *, edge: bool = False) -> int:
        """A new activation tensor (``q`` None for a float one); ``edge`` names it exactly
        (a graph input/output name)."""
        quant = FbQuant([q.scale], [q.zero_point]) if dtype == "int8" and q else None
        name = name if edge else self.unique(name)
        return self.graph.add_tensor(FbTensor(name, tuple(shape), dtype, quant=quant))

    def const(self, name: str, data: np.ndarray, quant: FbQuant | None = None) -> int:
        data = np.ascontiguousarray(data)
        tensor = FbTensor(self.unique(name), tuple(data.shape), data.dtype.name, quant=quant)
        return self.graph.add_tensor(tensor, data)

    def int32(self, name: str, values: list[int] | tuple[int, ...]) -> int:
        return self.const(name, np.asarray(values, dtype=np.int32))

    def emit(self, opcode: str, inputs: list[int], outputs: list[int],
             options: tuple[str, dict[str, object]] | None = None, *, version: int | None = None) -> None:
        version = version or OP_VERSIONS[opcode]
        self.versions[opcode] = max(version, self.versions.get(opcode, 0))
        self.graph.add_op(FbOp(opcode, version, inputs, outputs, options))

    def new_val(self, name: str, shape: tuple[int, ...], layout: str, q: QParams) -> Val:
        return Val(self.act(name, stored_shape(shape, layout), q), tuple(shape), layout, q)

    # ---- ONNX values ----------------------------------------------------------------
    def get(self, name: str) -> Val:
        value = self.values.get(self.qdq.source(name))
        if value is None:
            raise self.fail(f"input {name!r} is not an int8 tensor (left in float by the quantizer?)")
        return value

    def bind(self, name: str, value: Val) -> None:
        self.values[name] = value

    def out_q(self, name: str, default: QParams | None = None) -> QParams:
        q = self.qdq.qparams.get(name, default)
        if q is None:
            raise self.fail(f"output {name!r} has no QuantizeLinear (the op stayed float)")
        return q

    def out_shape(self, name: str) -> tuple[int, ...]:
        return self.qdq.shape(name)

    def qconst(self, name: str) -> QConst:
        const = self.qdq.qconsts.get(name)
        if const is None:
            raise self.fail(f"{name!r} must be a quantized constant (integer initializer + DequantizeLinear)")
        return const

    def attr(self, name: str, default: Any = None) -> Any:
        """The current node's attribute ``name`` (typed as its op schema says), or ``default``."""
        assert self.node is not None
        for attribute in self.node.attribute:
            if attribute.name == name:
                return onnx.helper.get_attribute_value(attribute)
        return default

    # ---- layouts and requantization ----------------------------------------------
    def nhwc(self, value: Val) -> Val:
        if len(value.shape) != 4 or value.layout == "nhwc":
            return value
        return self._transpose(self.logical(value), "nhwc", TO_NHWC)

    def logical(self, value: Val) -> Val:
        if value.layout == "logical":
            return value
        if value.layout == "nhwc":
            return self._transpose(value, "logical", TO_NCHW)
        return self._unflatten(value)

    def _transpose(self, value: Val, layout: str, perm: tuple[int, ...]) -> Val:
        key = (value.index, layout)
        if key not in self._layouts:
            out = self.new_val(f"{self._name(value)}/{layout}", value.shape, layout, value.q)
            self.emit("TRANSPOSE", [value.index, self.int32("perm", perm)], [out.index])
            self._layouts[key] = out
        return self._layouts[key]

    def _unflatten(self, value: Val) -> Val:
        """flat_hwc [N, C*H*W] -> logical [N, C*H*W] (reshape, transpose, reshape)."""
        key = (value.index, "logical")
        if key not in self._layouts:
            n, c, h, w = self.flat_source[value.index]
            four = Val(self.act(f"{self._name(value)}/nhwc", (n, h, w, c), value.q),
                       (n, c, h, w), "nhwc", value.q)
            self.reshape(value, four)
            nchw = self.logical(four)
            out = self.new_val(f"{self._name(value)}/chw", value.shape, "logical", value.q)
            self.reshape(nchw, out)
            self._layouts[key] = out
        return self._layouts[key]

    def reshape(self, src: Val, dst: Val) -> None:
        shape = list(dst.stored)
        self.emit("RESHAPE", [src.index, self.int32("shape", shape)], [dst.index],
                  ("ReshapeOptions", {"NewShape": shape}))

    def requant(self, value: Val, q: QParams) -> Val:
        if qparams_close(value.q, q):
            return value
        out = self.new_val(f"{self._name(value)}/requant", value.shape, value.layout, q)
        self.emit("QUANTIZE", [value.index], [out.index])
        return out

    def _name(self, value: Val) -> str:
        return self.graph.tensors[value.index].name

    # ---- graph edges ---------------------------------------------------------------
    def lower_inputs(self) -> None:
        for name in self.qdq.inputs:
            q = self.qdq.qparams.get(name)
            if q is None and self.io == "float":  # read by a float layer (--max-drop)
                self._float_input(name)
                continue
            if q is None:
                raise ConversionError(f"graph input {name!r} is not quantized (no QuantizeLinear)")
            shape = self.qdq.shape(name)
            if self.io == "int8":
                value = Val(self.act(name, shape, q, edge=True), shape, "logical", q)
                self.graph.inputs.append(value.index)
            else:
                index = self.act(name, shape, q, dtype="float32", edge=True)
                self.graph.inputs.append(index)
                value = self.new_val(f"{name}/int8", shape, "logical", q)
                self.emit("QUANTIZE", [index], [value.index])
            self.bind(name, value)

    def _float_input(self, name: str) -> None:
        from edgeship.converter._tflite_float import FloatVal

        shape = self.qdq.shape(name)
        index = self.act(name, shape, None, dtype="float32", edge=True)
        self.graph.inputs.append(index)
        self.float_values[name] = FloatVal(index, tuple(shape))

    def lower_outputs(self) -> None:
        for name in self.qdq.outputs:
            self.node = None
            if self._float_output(name):
                continue
            value = self.values.get(self.qdq.source(name))
            if value is None:
                raise ConversionError(
                    f"graph output {name!r} is not an int8 tensor (no QuantizeLinear/DequantizeLinear pair)"
                )
            value = self.logical(value)
            if self.io == "int8":
                self.graph.tensors[value.index].name = name
                self.graph.outputs.append(value.index)
            else:
                out = self.act(name, value.shape, value.q, dtype="float32", edge=True)
                self.emit("DEQUANTIZE", [value.index], [out])
                self.graph.outputs.append(out)

    def _float_output(self, name: str) -> bool:
        """A graph output computed in float (a tail the converter kept in float) is
        written as float32 whatever ``io`` says: int8 could not hold it."""
        value = self.float_values.get(name)
        if value is None or self.qdq.source(name) in self.values:
            return False
        self.graph.tensors[value.index].name = name
        self._names.add(name)
        self.graph.outputs.append(value.index)
        return True
