"""Output tails that int8 cannot hold: a detector's final ``Concat`` of boxes and scores.

A YOLO-style head ends with ``Concat(boxes in pixels, class scores in 0..1)``. int8
Concat gives all its inputs one scale (the TFLite INT8 spec), so with boxes up to 640
one step is 2.5 and every score rounds to 0: the detector finds nothing. When the ranges
of a Concat's inputs differ by more than :data:`MAX_RANGE_RATIO` and everything after it
is cheap (no weights: reshapes, transposes, element-wise), that Concat and the rest of
the path to the outputs stay in float. Each input keeps its own int8 parameters up to
the Concat, so boxes and scores are both accurate; the float tail costs one DEQUANTIZE
per input and a copy, and on an Edge TPU it runs on the CPU (the report's cut point).

Pure logic on the graph and the calibrated ranges.
"""

from __future__ import annotations

import onnx

from ._ir import Graph

MAX_RANGE_RATIO = 16.0  # 4 bits: the smaller input would keep fewer than 4 of its 8
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})


def float_tails(
    graph: Graph, quantizable: set[str], ranges: dict[str, tuple[float, float]]
) -> dict[str, str]:
    """Node name -> why it stays float, for every tail that starts at a mismatched Concat."""
    tails: dict[str, str] = {}
    for node in graph.nodes:
        if node.op_type != "Concat" or node.name not in quantizable or node.name in tails:
            continue
        ratio = _range_ratio(graph, node, ranges)
        if ratio <= MAX_RANGE_RATIO:
            continue
        after = _downstream(graph, node)
        if any(n.op_type in HEAVY_OPS for n in after):
            continue  # a mid-network Concat: float there would cost the whole network
        tails[node.name] = (
            f"output tail kept in float: the Concat's inputs span ranges {ratio:.0f}x apart "
            "(e.g. boxes and scores); one int8 scale would leave the smaller under 4 bits"
        )
        for n in after:
            tails.setdefault(n.name, f"after the float Concat {node.name}")
    return tails


def _span(lo: float, hi: float) -> float:
    return max(hi, 0.0) - min(lo, 0.0)


def _range_ratio(graph: Graph, node: onnx.NodeProto, ranges: dict[str, tuple[float, float]]) -> float:
    spans = [_span(*ranges[i]) for i in node.input if i in ranges and not graph.is_const(i)]
    spans = [s for s in spans if s > 0.0]
    if len(spans) < 2:
        return 1.0
    return max(spans) / min(spans)


def _downstream(graph: Graph, start: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Every node that reads, directly or not, an output of ``start`` (graph order)."""
    reached: set[str] = set(o for o in start.output if o)
    found: list[onnx.NodeProto] = []
    for node in graph.nodes[graph.nodes.index(start) + 1 :]:
        if any(i in reached for i in node.input):
            found.append(node)
            reached.update(o for o in node.output if o)
    return found


__all__ = ["MAX_RANGE_RATIO", "float_tails"]
