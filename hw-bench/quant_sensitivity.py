"""Where does a model lose its task metric in INT8? (issue 15: a diagnosis, not a bench)

    python hw-bench/quant_sensitivity.py ppocr_rec                    # 64 eval, top 40 tensors
    python hw-bench/quant_sensitivity.py ddddocr_ocr --eval 128 --tensors 0
    python hw-bench/quant_sensitivity.py ppocr_rec --calibration percentile

Converts one bench_realworld.py model with the default pipeline (converter Python API,
the same 64 calibration inputs as the bench), then measures on its eval inputs, through
``--max-drop``'s probe (converter/_mixed_probe.py: one onnxruntime session in which every
quantized tensor's Q/DQ and every layer's int8 weight can be switched on or off):

- the real INT8 ONNX and the probe with everything int8 (the probe's agreement);
- weights only int8 (every activation float) and activations only int8;
- per op type: that type float, everything else int8; that type alone int8;
- every tensor read only by a Mul/Add with a scalar constant left float (the bound of
  folding such affine steps, e.g. PP-LCNetV3's learnable affine blocks, into a neighbour);
- per quantized tensor (``--tensors N`` samples, 0 = skip): only that tensor's Q/DQ on,
  sorted by the output SQNR it leaves (the least first).

The task metric is bench_realworld.py's (string match for CTC, top-1 agreement, box
recall, mask IoU) against the optimized fp32 graph. Prints only; writes nothing.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _realworld_metrics as metrics
import _realworld_models as models
from _realworld_inputs import CALIB, EVAL
from bench_realworld import task_metric, task_view
from edgeship.converter._convert import _Clock, _quantize, _read_inputs
from edgeship.converter._mixed_probe import build_probe
from edgeship.converter._options import ConvertOptions


class Probe:
    """The converted model's probe, its eval inputs and the fp32 reference view."""

    def __init__(self, spec: models.Spec, opts: argparse.Namespace, work: Path) -> None:
        import onnxruntime as ort

        model = models.float_model(spec, opts.cache)
        self.spec = spec = dataclasses.replace(spec, input_name=models.input_name(model))
        calib = work / "calib.npz"
        np.savez(calib, **{spec.input_name: spec.make(CALIB, 64).astype(np.float32)})
        self.x = spec.make(EVAL, opts.eval).astype(np.float32)
        shapes = ((spec.input_name, tuple(spec.shape)),) if models.dynamic_input(model) else ()
        options = ConvertOptions(formats=("onnx", "tflite"), input_shapes=shapes,
                                 calibration=opts.calibration)
        began = time.monotonic()
        self.q = _quantize(_read_inputs(model, calib, None, None, options), options, _Clock(), False)
        print(f"converted in {time.monotonic() - began:.1f} s", flush=True)
        self.probe = build_probe(self.q.graph, self.q.plan, self.q.qmodel)
        so = ort.SessionOptions()
        so.log_severity_level, so.intra_op_num_threads = 3, 1
        self.sess = ort.InferenceSession(self.probe.model.SerializeToString(), so)
        self.int8 = ort.InferenceSession(self.q.int8_bytes, so)
        self.ref = self.outputs(self.sess, dict(self.probe._off))
        self.view = task_view(spec, self.ref)
        self.op = {n.name: n.op_type for n in self.q.graph.nodes}

    def outputs(self, sess: Any, extra: dict[str, np.ndarray], n: int | None = None) -> list[list[np.ndarray]]:
        name = self.spec.input_name
        return [list(sess.run(None, {name: self.x[i:i + 1], **extra}))[:1]
                for i in range(len(self.x) if n is None else n)]

    def score(self, label: str, outs: list[list[np.ndarray]]) -> tuple[float | None, float | None]:
        k = len(outs)
        metric = task_metric(self.spec, self.view[:k], task_view(self.spec, outs))
        sqnr = metrics.sqnr_db([o[0] for o in self.ref[:k]], [o[0] for o in outs])
        if label:
            print(f"{label:58s} metric {metric:7.2f}  SQNR {sqnr:6.2f} dB", flush=True)
        return metric, sqnr

    def switched(self, label: str, params: dict[str, Any], int8_nodes: list[str],
                 n: int | None = None) -> tuple[float | None, float | None]:
        return self.score(label, self.outputs(self.sess, self.probe.switches(params, int8_nodes), n))

    def keep(self, label: str, keep_float: dict[str, str]) -> None:
        plan = self.q.plan_of(keep_float)
        outs = self.outputs(self.sess, self.probe.feeds(plan))
        self.score(f"{label} ({len(plan.float_nodes)} float nodes)", outs)


def affine_inputs(graph: Any, plan: Any) -> set[str]:
    """Quantized tensors whose one reader is a Mul or Add by a scalar constant."""
    def scalar_affine(node: Any) -> bool:
        consts = [i for i in node.input if graph.is_const(i)]
        return (node.op_type in ("Mul", "Add") and len(consts) == 1 and len(node.input) == 2
                and graph.inits[consts[0]].size == 1)

    return {t for t in plan.params
            if len(graph.consumers.get(t, [])) == 1 and scalar_affine(graph.consumers[t][0])}


def main() -> None:
    names = [s.name for s in models.SPECS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=names)
    parser.add_argument("--eval", type=int, default=64, help="eval samples")
    parser.add_argument("--tensors", type=int, default=32, help="samples per tensor sweep (0: skip)")
    parser.add_argument("--top", type=int, default=40, help="tensors printed")
    parser.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "mse", "auto"])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-bench")
    opts = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Probe(next(s for s in models.SPECS if s.name == opts.model), opts, Path(tmp))
    plan = p.q.plan
    p.score("real INT8 ONNX (all int8)", p.outputs(p.int8, {}))
    p.switched("probe: all int8", plan.params, list(plan.rules))
    p.switched("weights only int8", {}, list(plan.rules))
    p.switched("activations only int8", plan.params, [])
    types = collections.Counter(p.op[n] for n in plan.rules)
    print("int8 nodes per op type:", dict(types.most_common()), flush=True)
    for t in types:
        p.keep(f"{t} float, the rest int8", {n: "diag" for n in plan.rules if p.op[n] == t})
    for t in types:
        p.keep(f"only {t} int8", {n: "diag" for n in plan.rules if p.op[n] != t})
    scaled = affine_inputs(p.q.graph, plan)
    p.switched(f"no Q/DQ in front of a scalar Mul/Add ({len(scaled)} tensors)",
               {t: v for t, v in plan.params.items() if t not in scaled}, list(plan.rules))
    if opts.tensors <= 0:
        return
    rows = []
    for t in p.probe.tensors:
        metric, sqnr = p.switched("", {t: plan.params[t]}, [], n=opts.tensors)
        prod = p.q.graph.producer.get(t)
        lo, hi = plan.ranges[t]
        rows.append((sqnr if sqnr is not None else float("inf"), metric, t,
                     prod.op_type if prod else "input", lo, hi, plan.params[t].scale))
    rows.sort(key=lambda r: r[0])
    print(f"\nonly one tensor's Q/DQ on ({opts.tensors} samples), least SQNR first:")
    for sqnr, metric, t, op, lo, hi, scale in rows[:opts.top]:
        print(f"{sqnr:7.2f} dB {metric:7.2f}  {t:40s} {op:18s} [{lo:.3g}, {hi:.3g}] scale {scale:.3g}")


if __name__ == "__main__":
    main()
