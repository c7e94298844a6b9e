"""Small ONNX graphs for converter tests: one float input ``x``, one output ``y``, float32
initializers, saved the way the tests' fixtures are (IR 8 so every onnxruntime here reads
them); and LiteRT's answers sample by sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_one_io_model(path: Path, nodes: Sequence[onnx.NodeProto], inits: Mapping[str, np.ndarray],
                      shape: Sequence[int], *, opset: int = 13, name: str = "g") -> Path:
    """``nodes`` reading ``x`` (float, ``shape``) and writing ``y``, saved at ``path``."""
    graph = helper.make_graph(list(nodes), name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def litert_rows(path: Path, x: np.ndarray) -> np.ndarray:
    """The .tflite at ``path`` run by LiteRT (1 thread) on each ``x[i : i + 1]``, flattened."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1])
        it.invoke()
        rows.append(it.get_tensor(out["index"]).reshape(-1).copy())
    return np.stack(rows)
