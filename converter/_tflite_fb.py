"""A TFLite graph held in plain dataclasses, and its serialization to a flatbuffer.

This is the only module that talks to the ``tflite`` schema package (generated flatc
builder functions) and ``flatbuffers``; everything above it works on :class:`FbGraph`.
No TensorFlow is involved. Operator codes carry both the deprecated int8 code and the
int32 code, because older readers (the Edge TPU compiler among them) read only the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import flatbuffers
import numpy as np
import tflite

SCHEMA_VERSION = 3
SIGNATURE_KEY = "serving_default"
_BUFFER_ALIGN = 16  # kernels read constant buffers in place; keep them aligned
_TYPES = {
    "float32": tflite.TensorType.FLOAT32,
    "int8": tflite.TensorType.INT8,
    "int32": tflite.TensorType.INT32,
    "uint8": tflite.TensorType.UINT8,
    "int64": tflite.TensorType.INT64,
}


@dataclass
class FbQuant:
    """Affine quantization: per-tensor (one scale) or per-axis along ``axis``."""

    scales: list[float]
    zero_points: list[int]
    axis: int = 0


@dataclass
class FbTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # key of _TYPES
    buffer: int = 0  # 0 = no data (activation)
    quant: FbQuant | None = None
    signature: tuple[int, ...] | None = None  # shape with -1 for dynamic dims (else static)


@dataclass
class FbOp:
    opcode: str  # BuiltinOperator name, e.g. "CONV_2D"
    version: int
    inputs: list[int]
    outputs: list[int]
    # (options table name, {field name: value}); list values become int32 vectors
    options: tuple[str, dict[str, Any]] | None = None


@dataclass
class FbGraph:
    """One subgraph plus the model-level buffers; indices are positions in the lists."""

    tensors: list[FbTensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0 is always empty
    ops: list[FbOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "edgeship"

    def add_tensor(self, tensor: FbTensor, data: np.ndarray | None = None) -> int:
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            tensor.buffer = len(self.buffers) - 1
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def add_op(self, op: FbOp) -> None:
        self.ops.append(op)


def serialize(graph: FbGraph) -> bytes:
    """The graph as TFLite flatbuffer bytes (file identifier ``TFL3``)."""
    b = flatbuffers.Builder(1024 + sum(len(x) for x in graph.buffers))
    codes = _opcode_table(graph.ops)
    buffers = [_buffer(b, data) for data in graph.buffers]
    tensors = [_tensor(b, t) for t in graph.tensors]
    operators = [_operator(b, op, codes) for op in graph.ops]
    op_codes = [_opcode(b, name, version) for name, version in codes]
    subgraph = _subgraph(b, graph, tensors, operators)
    signature = _signature(b, graph)
    description = b.CreateString(graph.description)
    codes_vec = _offsets(b, tflite.ModelStartOperatorCodesVector, op_codes)
    subgraphs_vec = _offsets(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = _offsets(b, tflite.ModelStartBuffersVector, buffers)
    signatures_vec = _offsets(b, tflite.ModelStartSignatureDefsVector, [signature])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffers_vec)
    tflite.ModelAddSignatureDefs(b, signatures_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _opcode_table(ops: list[FbOp]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for op in ops:
        seen.setdefault((op.opcode, op.version), None)
    return list(seen)


def _offsets(b: flatbuffers.Builder, start: Any, items: list[int]) -> int:
    start(b, len(items))
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    return int(b.EndVector())


def _ints(b: flatbuffers.Builder, values: list[int] | tuple[int, ...]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _buffer(b: flatbuffers.Builder, data: bytes) -> int:
    vec = None
    if data:
        b.StartVector(1, len(data), _BUFFER_ALIGN)
        b.head = b.head - len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        vec = b.EndVector()
    tflite.BufferStart(b)
    if vec is not None:
        tflite.BufferAddData(b, vec)
    return int(tflite.BufferEnd(b))


def _quant(b: flatbuffers.Builder, q: FbQuant) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scales, dtype=np.float32))
    zero = b.CreateNumpyVector(np.asarray(q.zero_points, dtype=np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.axis)
    return int(tflite.QuantizationParametersEnd(b))


def _tensor(b: flatbuffers.Builder, t: FbTensor) -> int:
    name = b.CreateString(t.name)
    shape = _ints(b, t.shape)
    quant = _quant(b, t.quant) if t.quant is not None else None
    signature = _ints(b, t.signature) if t.signature is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    if signature is not None:
        tflite.TensorAddShapeSignature(b, signature)
    tflite.TensorAddType(b, _TYPES[t.dtype])
    tflite.TensorAddBuffer(b, t.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return int(tflite.TensorEnd(b))


def _options(b: flatbuffers.Builder, table: str, values: dict[str, Any]) -> int:
    vectors = {k: _ints(b, v) for k, v in values.items() if isinstance(v, (list, tuple))}
    getattr(tflite, f"{table}Start")(b)
    for key, value in values.items():
        getattr(tflite, f"{table}Add{key}")(b, vectors.get(key, value))
    return int(getattr(tflite, f"{table}End")(b))


def _operator(b: flatbuffers.Builder, op: FbOp, codes: list[tuple[str, int]]) -> int:
    inputs = _ints(b, op.inputs)
    outputs = _ints(b, op.outputs)
    options = _options(b, *op.options) if op.options is not None else None
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, codes.index((op.opcode, op.version)))
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if op.options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, op.options[0]))
        tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _opcode(b: flatbuffers.Builder, name: str, version: int) -> int:
    code = getattr(tflite.BuiltinOperator, name)
    tflite.OperatorCodeStart(b)
    # codes above 127 live only in builtin_code; 127 = PLACEHOLDER_FOR_GREATER_OP_CODES
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    tflite.OperatorCodeAddVersion(b, version)
    tflite.OperatorCodeAddBuiltinCode(b, code)
    return int(tflite.OperatorCodeEnd(b))


def _signature(b: flatbuffers.Builder, g: FbGraph) -> int:
    """A "serving_default" signature naming the edges, as TensorFlow's converter writes:
    LiteRT's signature runners and mobile APIs look models up by it."""

    def tensor_maps(indices: list[int], start: Any) -> int:
        maps = []
        for index in indices:
            name = b.CreateString(g.tensors[index].name)
            tflite.TensorMapStart(b)
            tflite.TensorMapAddName(b, name)
            tflite.TensorMapAddTensorIndex(b, index)
            maps.append(tflite.TensorMapEnd(b))
        return _offsets(b, start, maps)

    inputs = tensor_maps(g.inputs, tflite.SignatureDefStartInputsVector)
    outputs = tensor_maps(g.outputs, tflite.SignatureDefStartOutputsVector)
    key = b.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, inputs)
    tflite.SignatureDefAddOutputs(b, outputs)
    tflite.SignatureDefAddSignatureKey(b, key)
    tflite.SignatureDefAddSubgraphIndex(b, 0)
    return int(tflite.SignatureDefEnd(b))


def _subgraph(b: flatbuffers.Builder, g: FbGraph, tensors: list[int], ops: list[int]) -> int:
    tensors_vec = _offsets(b, tflite.SubGraphStartTensorsVector, tensors)
    inputs = _ints(b, g.inputs)
    outputs = _ints(b, g.outputs)
    ops_vec = _offsets(b, tflite.SubGraphStartOperatorsVector, ops)
    name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddName(b, name)
    return int(tflite.SubGraphEnd(b))
