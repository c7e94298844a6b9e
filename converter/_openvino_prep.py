"""The INT8 ONNX as OpenVINO's CPU plugin runs fastest: ``OUT/model.int8.<target>.onnx``
for the ``openvino-*`` targets, written only when one of its rewrites applies.

Our QDQ ONNX rounds a SiLU's input and its sigmoid to int8 (``Conv -> Q/DQ -> Sigmoid
-> Q/DQ -> Mul(x, .) -> Q``), as every int8 runtime needs. OpenVINO cannot fuse that
chain into the convolution: it runs each such block as a float JIT subgraph over the
whole tensor (65 % of EfficientNet-B0's time, which made it 0.57x onnxruntime's speed).
Without the two inner Q/DQ pairs, ``Conv -> Sigmoid -> Mul -> Q`` is one int8
convolution with a swish post-op. The same holds for a squeeze-excitation gate
(``Conv -> Q/DQ -> Sigmoid``, the sigmoid then a post-op of the 1x1 conv).

Whether it pays is measured at each convert (converter/_target_openvino.py), because it
does not everywhere: on this machine's AMX CPU (both runtimes run their int8 convolutions
on AMX; onnxruntime's MatMulInteger does 825 GMAC/s on one core) a swish post-op costs
about as much as the convolution itself (a 16 -> 32 channel 3x3 conv at 320x320: 3.2 ms
alone, 6.9 ms with swish). Summed per SiLU block over OpenVINO's layer counters
(min of 25 runs): YOLOv8n's 57 blocks 9.1 ms as conv + separate subgraph, 12.6 ms fused.
EfficientNet-B0 end to end (same run, vs onnxruntime): generic 0.64x, gates alone 0.69x,
gates and SiLUs 0.86x.
onnxruntime runs the same SiLU as two int8 kernels, its sigmoid a 256-entry table
(QLinearSigmoid, QLinearMul: 2.4 ms of YOLOv8n's 9.6), where OpenVINO evaluates the
sigmoid per element in float either way. Neither writing the SiLU as that table (a
Gather: its layout reorders and i32 indices cost what it saved; measured before the IR
indexed tables by the 8-bit codes themselves, see below) nor keeping only the conv's
output rounding made YOLOv8n faster.

Chains of int8 elementwise ops with scalar constants (PP-LCNet's affine + hardswish
blocks) become one table each, bit-identical (converter/_openvino_lut.py). In the
converter's own comparison, under load 10-14: PP-OCR rec 0.64x onnxruntime before, 0.93x
with int32-indexed tables, 1.50x with the IR indexing by the uint8 codes; PP-OCR det
0.75x (generic form chosen) -> 1.28x (the tables' form chosen).

YOLOX's Focus stem (four stride-2 Slice pairs and a Concat) becomes Reshape ->
Transpose -> Reshape, bit-identical (converter/_openvino_focus.py): OpenVINO ran the
Slices with a reference kernel (ddddocr_det: 3.7 ms of 51.7 in its layer counters; the
Transpose 0.76 ms of 45.1).

A wide float LSTM (ddddocr's recognizer: bidirectional, hidden 512) becomes per-gate
MatMuls in steps whose weights stay partly in L2 (converter/_openvino_lstm.py), the same
function within float rounding: ddddocr_ocr 0.93x -> 1.11x onnxruntime (same run).

Hardswish blocks on a convolution's output (MobileNetV3's) that no table took become one
HardSwish, a post-op of the int8 convolution (converter/_openvino_hswish.py): PP-OCR cls
0.98x -> 1.22x onnxruntime (same run), two roundings skipped as for the SiLU blocks.

The numbers change by the two skipped roundings (the sigmoid and the conv's output
stay float inside the fused op); the target reports top-1 agreement with onnxruntime
on the generic INT8 ONNX, so the difference is measured, not assumed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fused_for_openvino"]


def fused_for_openvino(model: Any) -> tuple[Any, int]:
    """A copy of the QDQ ``model`` (onnx.ModelProto) with the inner Q/DQ pairs of SiLU
    blocks and of sigmoid gates on a conv's output removed, uint8 weights with zero
    point 128 written as int8 (:func:`_signed_weights`), YOLOX's Focus stem as one
    Transpose (converter/_openvino_focus.py) and chains of int8 elementwise ops written as
    one table each (converter/_openvino_lut.py), wide float LSTMs in steps
    (converter/_openvino_lstm.py), what hardswish blocks no table took as one HardSwish
    (converter/_openvino_hswish.py); and how many rewrites."""
    import onnx

    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dropped: set[int] = set()
    count = 0
    for sigmoid in graph.node:
        if sigmoid.op_type != "Sigmoid":
            continue
        pair = _qdq_pair(sigmoid.input[0], producer, users)
        if pair is None or id(pair[0]) in dropped:
            continue
        q, dq, source = pair
        gated = _silu_mul(sigmoid, dq, producer, users)
        if gated is not None:  # Mul(x, sigmoid(x)): both Q/DQ pairs go
            mul, sig_q, sig_dq = gated
            sigmoid.input[0] = source
            mul.input[:] = [source if i == dq.output[0] else sigmoid.output[0] if i == sig_dq.output[0]
                            else i for i in mul.input]
            dropped.update({id(q), id(dq), id(sig_q), id(sig_dq)})
            count += 1
        elif (len(users.get(dq.output[0], [])) == 1 and producer.get(source) is not None
              and producer[source].op_type == "Conv"):  # a gate on a conv: its post-op
            sigmoid.input[0] = source
            dropped.update({id(q), id(dq)})
            count += 1
    if count:
        kept = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
    count += _signed_weights(graph, users)
    from ._openvino_focus import focus_as_transpose
    from ._openvino_hswish import hardswish_blocks
    from ._openvino_lstm import unrolled_lstms
    from ._openvino_lut import int8_tables

    count += focus_as_transpose(graph)  # YOLOX's strided-Slice stem as one Transpose
    count += unrolled_lstms(out)  # a wide float LSTM in steps that reuse L2
    count += int8_tables(graph)  # it reads the graph as rewritten above
    return out, count + hardswish_blocks(graph)  # after the tables: what they left


WEIGHT_OF = {"MatMul": 1, "Gemm": 1, "Conv": 1}  # op -> its weight input


def _signed_weights(graph: Any, users: dict[str, list[Any]]) -> int:
    """uint8 weights with zero point 128 (every element) rewritten as int8 with zero point
    0: ``s * (w - 128)`` is ``s * ((w - 128) as int8 - 0)`` exactly, the same numbers. OpenVINO's
    int8 MatMul kernels take symmetric int8 weights only: with a uint8 zero point it
    decompresses the weights and multiplies in f32 (PP-OCR rec's attention and head
    MatMuls: "FullyConnectedCompressed", f32)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    count = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        weight, zero = inits.get(dq.input[0]), inits.get(dq.input[2])
        readers = users.get(dq.output[0], [])
        if weight is None or zero is None or not readers or not all(
                WEIGHT_OF.get(r.op_type) is not None and len(r.input) > 1 and r.input[WEIGHT_OF[r.op_type]] == dq.output[0]
                for r in readers):
            continue
        values, zeros = numpy_helper.to_array(weight), numpy_helper.to_array(zero)
        if values.dtype != np.uint8 or zeros.dtype != np.uint8 or not np.all(zeros == 128):
            continue
        signed = (values.astype(np.int16) - 128).astype(np.int8)
        name = f"{dq.input[0]}_s8"
        graph.initializer.extend([numpy_helper.from_array(signed, name),
                                  numpy_helper.from_array(np.zeros_like(zeros, np.int8), f"{name}_z")])
        replaced = [dq.input[0], dq.input[2]]
        dq.input[0], dq.input[2] = name, f"{name}_z"
        count += 1
        read = {i for n in graph.node for i in n.input}
        for old in replaced:  # the uint8 originals, unless something else reads them
            if old not in read and old in inits:
                graph.initializer.remove(inits.pop(old))
    return count


def _qdq_pair(name: str, producer: dict[str, Any], users: dict[str, list[Any]]
              ) -> tuple[Any, Any, str] | None:
    """(Q, DQ, the float tensor Q reads) when ``name`` is DQ(Q(t)) and Q feeds only it."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or len(users.get(q.output[0], [])) != 1:
        return None
    return q, dq, q.input[0]


def _silu_mul(sigmoid: Any, dq: Any, producer: dict[str, Any], users: dict[str, list[Any]]
              ) -> tuple[Any, Any, Any] | None:
    """(Mul, the sigmoid's Q, its DQ) when the block is x * sigmoid(x) and x's DQ feeds
    nothing else."""
    after = users.get(sigmoid.output[0], [])
    if len(after) != 1 or after[0].op_type != "QuantizeLinear":
        return None
    sig_q = after[0]
    sig_dqs = users.get(sig_q.output[0], [])
    if len(sig_dqs) != 1 or sig_dqs[0].op_type != "DequantizeLinear":
        return None
    muls = users.get(sig_dqs[0].output[0], [])
    if len(muls) != 1 or muls[0].op_type != "Mul" or dq.output[0] not in muls[0].input:
        return None
    if len(users.get(dq.output[0], [])) != 2:  # the sigmoid and the Mul only
        return None
    return muls[0], sig_q, sig_dqs[0]
