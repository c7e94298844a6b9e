"""The TFLite writer: QDQ INT8 ONNX in, fully-integer TFLite flatbuffer out, no TensorFlow.

    info = write_tflite("OUT/model.int8.onnx", "OUT/model.int8.tflite", io="float")

reads the converter's QDQ model (:mod:`._tflite_qdq`), lowers every compute node with the
rule registered for its op type (:mod:`._tflite_ops`, :mod:`._tflite_ops_shape`) into an
in-memory graph (:mod:`._tflite_lower`), serializes it (:mod:`._tflite_fb`), checks that
LiteRT accepts it, and only then writes the file atomically. ``io="float"`` puts
QUANTIZE / DEQUANTIZE at the edges (float in and out); ``io="int8"`` leaves int8 tensors
at the edges, as an Edge TPU pipeline wants. The quantization parameters are taken from
the ONNX model unchanged, so both artifacts of one conversion compute the same thing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from edgeship.converter import (
    _tflite_float_layers,  # noqa: F401  (registers its rules)
    _tflite_float_more,  # noqa: F401  (registers its rules)
    _tflite_float_rnn,  # noqa: F401  (registers its rules)
    _tflite_ops_math,  # noqa: F401  (registers its rules)
    _tflite_ops_move,  # noqa: F401  (registers its rules)
    _tflite_ops_shape,  # noqa: F401  (registers its rules)
)
from edgeship.converter._bmm_rounding import recompose_matmuls
from edgeship.converter._layernorm_qdq import recompose_layernorms
from edgeship.converter._tflite_fb import FbGraph, serialize
from edgeship.converter._tflite_float import FLOAT_ISLANDS, FLOAT_RULES, is_float_node
from edgeship.converter._tflite_fold import fold_transposes
from edgeship.converter._tflite_lower import Lowering
from edgeship.converter._tflite_ops import RULES
from edgeship.converter._tflite_qdq import node_label, read_qdq
from edgeship.sdk._fileio import write_atomic

from edgeship._errors import ConversionError, InputError, UnsupportedOpError

__all__ = ["IO_MODES", "TfliteInfo", "build_tflite", "write_tflite"]

IO_MODES = ("float", "int8")
MAX_ONNX_BYTES = 512 * 1024 * 1024  # protobuf's own limit is 2 GiB; edge models are far smaller


@dataclass(frozen=True, kw_only=True)
class TfliteInfo:
    """What was written: size, edges, and the op versions used (for the Edge TPU compiler)."""

    path: str
    size_bytes: int
    io: str
    op_versions: dict[str, int]  # TFLite builtin op -> version written
    op_counts: dict[str, int]
    inputs: list[dict[str, Any]]  # name, shape, dtype, scale, zero_point
    outputs: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "size_bytes": self.size_bytes, "io": self.io,
            "op_versions": dict(self.op_versions), "op_counts": dict(self.op_counts),
            "inputs": list(self.inputs), "outputs": list(self.outputs), "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TfliteInfo:
        return cls(
            path=str(data["path"]), size_bytes=int(data["size_bytes"]), io=str(data["io"]),
            op_versions={str(k): int(v) for k, v in data["op_versions"].items()},
            op_counts={str(k): int(v) for k, v in data["op_counts"].items()},
            inputs=list(data["inputs"]), outputs=list(data["outputs"]),
            seconds=float(data["seconds"]),
        )


def build_tflite(model: onnx.ModelProto | str | os.PathLike[str], *, io: str = "float",
                 verify: bool = True, float_layernorm: bool = False,
                 npu_shuffle: str = "") -> tuple[bytes, FbGraph, dict[str, int]]:
    """Lower a QDQ model to TFLite bytes; returns (bytes, graph, op versions). No file I/O
    except reading ``model`` when it is a path. ``float_layernorm``: each LayerNormalization
    as a float island (DEQUANTIZE, float32 ops, QUANTIZE) instead of the fully-integer chain
    of nine int8 ops; the Edge TPU then stops at the first LayerNormalization. The INT8 ONNX
    that ``edgeship convert`` writes computes the chain (converter/_layernorm_qdq.py), so
    the default TFLite, not the float island, is the one that matches it. ``npu_shuffle``: how a channel shuffle is written for an NPU
    compiler (see Lowering.npu_shuffle), for a target's own TFLite."""
    if io not in IO_MODES:
        raise InputError(f"io must be one of {', '.join(IO_MODES)}, not {io!r}")
    proto = model if isinstance(model, onnx.ModelProto) else _load(Path(model))
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        # float islands are for the parts an INT8 model keeps float, not a whole float model
        raise ConversionError("the model is not quantized (no QuantizeLinear): convert it "
                              "with `edgeship convert` first")
    # a written INT8 ONNX: its LayerNorm chains as one node, its MatMul roundings as MatMul
    proto = recompose_matmuls(recompose_layernorms(proto))
    lowering = Lowering(read_qdq(proto), io=io, npu_shuffle=npu_shuffle)
    lowering.lower_inputs()
    islands = FLOAT_ISLANDS | ({"LayerNormalization"} if float_layernorm else set())
    for node in lowering.qdq.nodes:
        lowering.node = node
        _rule_for(lowering, node, islands)(lowering, node)
    lowering.lower_outputs()
    fold_transposes(lowering.graph)
    data = serialize(lowering.graph)
    if verify:
        _verify(data)
    versions: dict[str, int] = {}
    for op in lowering.graph.ops:  # the ops that are left
        versions[op.opcode] = max(op.version, versions.get(op.opcode, 0))
    return data, lowering.graph, dict(sorted(versions.items()))


def _rule_for(lowering: Lowering, node: onnx.NodeProto, islands: frozenset[str] = FLOAT_ISLANDS) -> Any:
    """The int8 lowering; the float one for a node in an output tail that the converter
    kept in float (its outputs carry no QuantizeLinear) and for the ops that have no int8
    kernel and run as a float island (LSTM): everything else stays fully integer."""
    if (
        is_float_node(lowering, node)
        or node.op_type in islands
        or _float_weights(lowering, node)
        or (node.op_type in FLOAT_RULES and _reads_float(lowering, node))
    ):
        rule = FLOAT_RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOpError(node.op_type, node_label(node),
                                     "the op stayed float (the report's float_ops says why) and has no float TFLite lowering")
        return rule
    rule = RULES.get(node.op_type)
    if rule is None:
        raise UnsupportedOpError(node.op_type, node_label(node), "no TFLite int8 lowering for this op")
    return rule


def _float_weights(lowering: Lowering, node: onnx.NodeProto) -> bool:
    """A weight layer whose weight is a float constant: kept float (``--max-drop``); it
    runs as a float op and its output is quantized again when the ONNX does."""
    return (
        node.op_type in ("Conv", "Gemm", "MatMul")
        and len(node.input) > 1
        and node.input[1] in lowering.qdq.initializers
        and node.input[1] not in lowering.qdq.qconsts
    )


def _reads_float(lowering: Lowering, node: onnx.NodeProto) -> bool:
    """An input computed in float and never quantized (the Relu after a float layer whose
    output an int8 op reads): the op runs in float, its output is quantized after it."""
    return any(
        name and name in lowering.float_values and lowering.qdq.source(name) not in lowering.values
        for name in node.input
    )


def write_tflite(model: onnx.ModelProto | str | os.PathLike[str], out_path: str | os.PathLike[str],
                 *, io: str = "float", float_layernorm: bool = False) -> TfliteInfo:
    """Write ``out_path`` atomically from a QDQ INT8 ONNX model; nothing is written on error.
    ``float_layernorm``: see :func:`build_tflite`."""
    start = time.perf_counter()
    data, graph, versions = build_tflite(model, io=io, float_layernorm=float_layernorm)
    out = Path(out_path)
    write_atomic(out, data)
    return TfliteInfo(
        path=str(out), size_bytes=len(data), io=io, op_versions=versions,
        op_counts=dict(sorted(Counter(op.opcode for op in graph.ops).items())),
        inputs=[_edge(graph, i) for i in graph.inputs],
        outputs=[_edge(graph, i) for i in graph.outputs],
        seconds=round(time.perf_counter() - start, 4),
    )


def _load(path: Path) -> onnx.ModelProto:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if size > MAX_ONNX_BYTES:
        raise InputError(f"{path} is {size} bytes, over the limit of {MAX_ONNX_BYTES}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path} is not an ONNX model: {exc}") from exc


def _verify(data: bytes) -> None:
    """LiteRT must accept the flatbuffer (kernels check quantization parameters in Prepare)."""
    from edgeship.sdk._quiet import runtime_chatter_filtered
    from edgeship.sdk.runtime._runtime_litert import interpreter_module

    try:
        with runtime_chatter_filtered():
            interpreter = interpreter_module().Interpreter(model_content=data, num_threads=1)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"LiteRT rejects the written TFLite model: {exc}") from exc


def _edge(graph: FbGraph, index: int) -> dict[str, Any]:
    """Name, shape, dtype of an edge, with the quantization of its int8 side (for a float
    edge: the tensor its QUANTIZE writes or its DEQUANTIZE reads)."""
    tensor = graph.tensors[index]
    quant = tensor.quant
    for op in graph.ops:
        if op.opcode == "QUANTIZE" and op.inputs == [index]:
            quant = graph.tensors[op.outputs[0]].quant
        elif op.opcode == "DEQUANTIZE" and op.outputs == [index]:
            quant = graph.tensors[op.inputs[0]].quant
    return {
        "name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype,
        "scale": quant.scales[0] if quant else None,
        "zero_point": quant.zero_points[0] if quant else None,
    }
