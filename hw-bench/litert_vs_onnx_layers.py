"""Where LiteRT and the INT8 ONNX part ways, layer by layer (issue 14's LiteRT agreement).

    python hw-bench/litert_vs_onnx_layers.py OUT_DIR INPUTS.npz [--samples 4] [--show 30]

OUT_DIR is an ``edgeship convert`` output (model.int8.onnx + model.int8.tflite). Every
quantized tensor of the QDQ model (each QuantizeLinear output, read back through the scale
its DequantizeLinear uses) is compared with the LiteRT tensor of the same name (the TFLite
writer keeps the ONNX names; LiteRT keeps them all with ``experimental_preserve_all_tensors``),
both as real values on the ONNX tensor's int8 grid, NHWC put back to NCHW. Prints, in graph
order, the tensors that differ: share of values and the largest difference in int8 steps.
The first line is the lowering to look at; what follows it is mostly its consequence.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


class OnnxProbe:
    """The QDQ model with every quantized tensor as an extra output, in onnxruntime."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        readers = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
        # a QuantizeLinear, or the Cast that ends an emulated BATCH_MATMUL (converter/_bmm_rounding.py)
        quants = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "Cast") and n.output[0] in readers]
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        have = {o.name for o in probe.graph.output}
        self.params: dict[str, tuple[str, float, int, int]] = {}  # tensor -> (output, scale, zp, shift)
        for q in quants:
            dq = readers[q.output[0]]  # its scale is the one the graph reads the tensor with
            zero = inits[dq.input[2]]
            shift = 128 if zero.dtype == np.uint8 else 0
            self.params[_tensor(q)] = (q.output[0], float(inits[dq.input[1]]), int(zero) - shift, shift)
            if q.output[0] not in have:
                kind = onnx.TensorProto.UINT8 if shift else onnx.TensorProto.INT8
                probe.graph.output.append(helper.make_tensor_value_info(q.output[0], kind, None))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, float, int]]:
        """Quantized tensor -> (int8 values, scale, zero point) as onnxruntime computes them."""
        got = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feed), strict=True))
        return {t: (got[out].astype(np.int32) - shift, scale, zero)
                for t, (out, scale, zero, shift) in self.params.items()}


def _tensor(quantize: onnx.NodeProto) -> str:
    """The tensor a QuantizeLinear quantizes; for an emulated BATCH_MATMUL's Cast, the
    MatMul's output (its ``<name>_q``)."""
    if quantize.op_type == "Cast":
        return quantize.output[0].removesuffix("_q")
    return quantize.input[0]


def _quantized_sources(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                       dq_source: dict[str, str], q_source: dict[str, str]) -> list[str]:
    """The quantized tensors an op reads: each input traced back through DQ <- Q, or
    through float ops (e.g. Sqrt before Reciprocal) to the quantized tensors they read."""
    found, todo, seen = [], list(node.input), set()
    while todo:
        name = todo.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in dq_source:
            found.append(q_source.get(dq_source[name], ""))
        elif name in q_source:  # read as integers (the MatMulInteger of an emulated BATCH_MATMUL)
            found.append(q_source[name])
        elif name in producer and producer[name].op_type != "QuantizeLinear":
            todo.extend(producer[name].input)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("inputs", type=Path, help="npz with the model's input (first array)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--show", type=int, default=30)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from ai_edge_litert.interpreter import Interpreter

    model = onnx.load(args.out_dir / "model.int8.onnx")
    name = model.graph.input[0].name
    data = np.load(args.inputs)
    xs = data[data.files[0]][: args.samples].astype(np.float32)
    interp = Interpreter(model_path=str(args.out_dir / "model.int8.tflite"), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    lite = {t["name"]: t for t in interp.get_tensor_details() if t["dtype"] == np.int8}
    inp = interp.get_input_details()[0]
    probe = OnnxProbe(model)
    stats: dict[str, list[float]] = {}
    order: list[str] = []
    producer = {o: n for n in model.graph.node for o in n.output}
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    dequantized = set(dq_source.values())
    q_source = {n.output[0]: _tensor(n) for n in model.graph.node
                if n.op_type == "QuantizeLinear" or (n.op_type == "Cast" and n.output[0] in dequantized)}
    for n in model.graph.node:  # an emulated BATCH_MATMUL's output: produced by its Cast
        if n.op_type == "Cast" and n.output[0] in dequantized:
            producer.setdefault(_tensor(n), n)
    origins: dict[str, int] = {}  # tensor -> samples where it differs while its inputs agree
    for i in range(len(xs)):
        x = xs[i : i + 1]
        ref = probe.run({name: x})
        interp.set_tensor(inp["index"], x if tuple(inp["shape"]) == x.shape else x.transpose(0, 2, 3, 1))
        interp.invoke()
        differs: dict[str, bool] = {}
        for tensor, (values, scale, zero) in ref.items():
            if tensor not in lite:
                continue
            t_scale, t_zero = lite[tensor]["quantization"]
            try:
                other = (interp.get_tensor(lite[tensor]["index"]).astype(np.float64) - t_zero) * t_scale
            except ValueError:  # a tensor the delegate did not keep (its data is null)
                continue
            if other.shape != values.shape and other.ndim == 4:
                other = other.transpose(0, 3, 1, 2)
            if other.size != values.size:
                continue
            steps = np.abs(np.round(other.reshape(values.shape) / scale) + zero - values)
            seen = stats.setdefault(tensor, [0.0, 0.0, 0.0])
            if tensor not in order:
                order.append(tensor)
            seen[0] += float((steps > 0).sum())
            differs[tensor] = bool((steps > 0).any())
            seen[1] = max(seen[1], float(steps.max()))
            seen[2] += float(steps.size)
        for tensor, bad in differs.items():
            node = producer.get(tensor)
            ins = _quantized_sources(node, producer, dq_source, q_source) if node else []
            if bad and not any(differs.get(i, False) for i in ins):
                origins[tensor] = origins.get(tensor, 0) + 1
    shown = 0
    for tensor in order:
        differ, worst, total = stats[tensor]
        if differ and shown < args.show:
            node = producer.get(tensor)
            where = f"  ORIGIN in {origins[tensor]} sample(s)" if tensor in origins else ""
            print(f"{tensor[:44]:44s} {node.op_type if node else '-':18s} {100 * differ / total:8.3f} % "
                  f"values differ, max {worst:.0f} steps{where}")
            shown += 1
    print("origins (differ while every input agrees): "
          + ", ".join(f"{t} ({producer[t].op_type if t in producer else '-'})" for t in origins))
    print(f"{len(order)} tensors compared on {len(xs)} samples; {sum(1 for t in order if stats[t][0])} differ")


if __name__ == "__main__":
    main()
