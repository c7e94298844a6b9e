"""Float rewrites for the data-movement ops (issue 14), run with the other float passes.

A ReduceMean over H and W of a 4-D tensor (torch's default exporter writes it for
``x.mean((2, 3))``, ResNet's head) is a GlobalAveragePool (followed by a Flatten when
keepdims=0): the same function, and onnxruntime then runs it as QLinearGlobalAveragePool
whose halfway rounding the converter makes match TFLite's MEAN (``exact_pool_scales``);
onnxruntime runs an int8 ReduceMean in float between DQ and Q.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ._ir import Graph


def _spatial_axes(node: onnx.NodeProto, graph: Graph) -> bool:
    shape = graph.shape(node.input[0])
    if shape is None or len(shape) != 4:
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        if not graph.is_const(node.input[1]):
            return False
        axes = [int(a) for a in graph.inits[node.input[1]].ravel()]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def spatial_mean_to_pool(graph: Graph, log: list[str]) -> None:
    """Rewrite ReduceMean(axes=[2, 3]) of a 4-D float tensor as GlobalAveragePool."""
    for node in list(graph.nodes):
        if node.op_type != "ReduceMean" or not _spatial_axes(node, graph):
            continue
        if not graph.is_float(node.input[0]):
            continue
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        at = graph.nodes.index(node)
        if keep:
            new = [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]],
                                    name=node.name)]
        else:
            pooled = node.output[0] + "_pooled"
            n, c = (graph.shape(node.input[0]) or [])[:2]
            graph.value_info[pooled] = helper.make_tensor_value_info(
                pooled, onnx.TensorProto.FLOAT, [n, c, 1, 1]
            )
            new = [
                helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name),
                helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flat",
                                 axis=1),
            ]
        graph.nodes[at : at + 1] = new
        log.append(f"ReduceMean {node.name} over H, W -> GlobalAveragePool")
    graph.reindex()
