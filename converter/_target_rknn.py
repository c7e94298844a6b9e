"""Rockchip NPU targets (``rk3588``, ``rk3566``, ``rv1106`` ...): Rockchip's
rknn-toolkit2 compiles our INT8 QDQ ONNX into ``OUT/model.<target>.rknn`` and its x86
simulator checks that the NPU computes what our INT8 ONNX computes.

The toolkit pins torch 2.4, numpy 1.26, onnx 1.18 and onnxruntime 1.26, so it cannot
live in edgeship's environment: it runs in its own virtualenv, named by
``EDGESHIP_RKNN_PYTHON`` (that environment's python), as a subprocess running
converter/_rknn_worker.py. Our own quantization parameters are kept: the toolkit is
given the QDQ ONNX with ``build(do_quantization=False)`` (it reads the scales and zero
points of the Q/DQ pairs; its TFLite loader needs TensorFlow, so the TFLite is not used).
Four rewrites make our QDQ ONNX readable by it, none changing a number: the
HardSwish/HardSigmoid gates go back to their 1x1 depthwise Conv (as in the TFLite), the bias scale
products (``Mul`` of two scale initializers) are folded into initializers, every Q/DQ
gets an explicit zero point (the toolkit indexes a third input), and the opset is
declared as at most 19 (the toolkit's limit; torch exports 20, whose changes touch no
op of an INT8 conv net).

Where the toolkit departed from our numbers, and what keeps it on them (found layer by
layer against onnxruntime on MobileNetV3, which went from 15 % to 100 % top-1 agreement
and bit-exact outputs):

- the gates above (the toolkit keeps one scale per tensor, a Q/DQ pair with two lost
  the gate's factor);
- weight scales: it re-derives each int8 weight's scale from the dtype's range as
  128 x ours / 127 and re-rounds every weight; the worker gives our scales back to its
  quantization table (``scales.json``, converter/_rknn_worker.py);
- ``optimization_level=2`` (a target setting): level 3 fuses conv + add + activation
  and splits a global average pool into int8 conv stages, skipping or adding roundings
  our INT8 ONNX does not have (92 % top-1, 3 output steps on MobileNetV3 at level 3);
- a Sigmoid gating a Mul (SiLU): the toolkit fuses them into one swish that skips the
  sigmoid's rounding; a no-op ``Clip(0, 1)`` between them keeps it.

What runs where comes from the toolkit's own per-op table (its verbose build log: op,
target NPU/CPU, shapes, estimated cycles). Agreement is the top-1 agreement and the
largest difference, in steps of the output's INT8 grid, between the simulator and our
INT8 ONNX as its ops define it (onnxruntime at its basic optimization level: each
DequantizeLinear -> op -> QuantizeLinear as written) on the same ``--eval`` (else
calibration) samples. onnxruntime's default session replaces those by fused int8
kernels that round on their own; the report gives the simulator's agreement with that
too, and that session's own agreement with the former (98 % top-1 on
EfficientNet-Lite0 and PP-OCR's classifier: no NPU can agree with both beyond it).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship._errors import ConfigError, ConversionError

from . import _evaluate
from ._compat import advise
from ._targets import Target, TargetInputs, TargetResult

PYTHON_ENV = "EDGESHIP_RKNN_PYTHON"
# a directory to keep the simulator's outputs in (``<target>.simulated.npz``: out0, out1
# ... over the check samples), for hw-bench/bench_npu.py's detection metric
KEEP_OUTPUTS_ENV = "EDGESHIP_RKNN_KEEP_OUTPUTS"
TIMEOUT_S = 900
MAX_OPSET = 19  # rknn-toolkit2 2.5: "Unsupport onnx opset 20, need <= 19"
WORKER = Path(__file__).with_name("_rknn_worker.py")
SETUP = (f"rknn-toolkit2 pins torch 2.4 / numpy 1.26 / onnx 1.18, so it lives in its own "
         f"environment: python3.11 -m venv ~/rknn && ~/rknn/bin/pip install rknn-toolkit2, "
         f"then export {PYTHON_ENV}=~/rknn/bin/python")
_ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(NPU|CPU)\s+(\S+)\s+(\S+)\s+"
                  r"(\d+)/(\d+)/(\d+)\s+\S+\s+(\S+)\s*$")
_EDGE_OPS = ("InputOperator", "OutputOperator")


@dataclass(frozen=True, kw_only=True)
class RknnResult(TargetResult):
    """What rknn-toolkit2 made of the model and how its simulator agrees with ours."""

    toolkit_version: str = ""
    cycles: int = 0  # the toolkit's estimated cycles, summed over its layers
    weight_bytes: int = 0
    internal_bytes: int = 0  # feature-map memory
    # % of samples: simulator argmax == our INT8 ONNX's, as its ops define it
    top1_agreement: float | None = None
    top1_vs_onnxruntime: float | None = None  # the same against onnxruntime's fused kernels
    onnxruntime_top1: float | None = None  # onnxruntime's fused kernels against the former
    top1_within_step: float | None = None  # % whose simulator argmax is within 1 step of ours
    max_abs_diff: float | None = None  # first output, simulator vs onnxruntime INT8 ONNX
    max_diff_steps: float | None = None  # the same, in steps of the output's INT8 grid
    samples: int = 0
    # weight/bias scales the toolkit re-derived and was given back (or why it was not)
    restored_scales: int | str = 0


def toolkit_python() -> Path:
    """The python of rknn-toolkit2's environment; ConfigError saying how to make one."""
    named = os.environ.get(PYTHON_ENV, "")
    if not named:
        raise ConfigError(f"--target rk*/rv* needs rknn-toolkit2 and {PYTHON_ENV} is not set: {SETUP}")
    path = Path(named).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"{PYTHON_ENV}={named} is not an executable python: {SETUP}")
    return path


@functools.lru_cache(maxsize=4)
def _problem_of(python: Path) -> str | None:
    # find_spec, not an import: importing rknn.api loads torch (seconds)
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('rknn') is None)"
    try:
        probe = subprocess.run([str(python), "-c", code], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{PYTHON_ENV}={python} does not run ({exc}): {SETUP}"
    if probe.returncode != 0:
        return f"{PYTHON_ENV}={python} has no rknn-toolkit2 installed: {SETUP}"
    return None


def toolkit_problem() -> str | None:
    """Why the RKNN targets cannot run here (None: they can); checked before any work."""
    try:
        return _problem_of(toolkit_python())
    except ConfigError as exc:
        return str(exc)


def compile_rknn(target: Target, inputs: TargetInputs) -> RknnResult:
    python = toolkit_python()
    artifact = f"model.{target.name}.rknn"
    names = [i.name for i in _evaluate.session(inputs.onnx.read_bytes()).get_inputs()]
    samples = inputs.check_samples or inputs.samples
    with tempfile.TemporaryDirectory(prefix="edgeship-rknn-") as tmp:
        work = Path(tmp)
        toolkit_ready_onnx(inputs.onnx, work / "model.onnx")
        np.savez(work / "samples.npz", **{n: samples[n] for n in names})  # type: ignore[arg-type]
        (work / "scales.json").write_text(json.dumps(constant_scales(work / "model.onnx")))
        job = {"target": target.settings["target_platform"], "onnx": str(work / "model.onnx"),
               "rknn": str(work / artifact), "samples": str(work / "samples.npz"),
               "inputs": names, "outputs": str(work / "outputs.npz"),
               "scales": str(work / "scales.json"),
               "optimization_level": int(target.settings.get("optimization_level", "3"))}
        (work / "job.json").write_text(json.dumps(job))
        log, summary = _run(python, work / "job.json", work)
        shutil.copyfile(work / artifact, inputs.out_dir / artifact)
        keep = os.environ.get(KEEP_OUTPUTS_ENV)
        if keep:  # the simulator's outputs for a task metric the converter cannot know
            shutil.copyfile(work / "outputs.npz", Path(keep) / f"{target.name}.simulated.npz")
        with np.load(work / "outputs.npz") as npz:
            simulated = npz["out0"] if "out0" in npz.files else None
    agreement = _agreement(inputs.onnx, samples, simulated)
    layers = parse_layers(log)
    return _result(target, artifact, layers, log, summary, agreement)


def _run(python: Path, job: Path, cwd: Path) -> tuple[str, dict[str, Any]]:
    try:
        proc = subprocess.run([str(python), str(WORKER), str(job)], capture_output=True,
                              text=True, timeout=TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"rknn-toolkit2 did not finish in {TIMEOUT_S} s") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary: dict[str, Any] = {}
    if lines and lines[-1].startswith("{"):
        summary = json.loads(lines[-1])
    if proc.returncode != 0 or not summary.get("ok"):
        why = summary.get("error") or _last_error(proc.stdout + proc.stderr)
        raise ConversionError(f"rknn-toolkit2 refused the model (exit {proc.returncode}): {why[:300]}")
    return proc.stdout, summary


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error" in ln or ln.startswith("E ")]
    return (hits or lines or ["no output"])[-1]


def toolkit_ready_onnx(src: Path, dst: Path) -> None:
    """Our QDQ ONNX in the form rknn-toolkit2 reads, with the same numbers: scale
    products folded to initializers, an explicit zero point on every Q/DQ."""
    import onnx
    from onnx import numpy_helper

    from ._ort_layout import gates_as_conv

    # a HardSwish/HardSigmoid gate written for onnxruntime as Add(x, c) whose Q and DQ
    # scales differ (the pair multiplies by alpha): the toolkit keeps one scale per
    # tensor, so it lost alpha (15 % top-1 agreement on MobileNetV3); the 1x1 depthwise
    # gate Conv the TFLite carries computes the same numbers with one scale
    model = gates_as_conv(onnx.load(str(src)))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    kept = []
    for node in graph.node:
        if node.op_type == "Mul" and all(i in inits for i in node.input):
            folded = numpy_helper.from_array(value(node.input[0]) * value(node.input[1]),
                                             node.output[0])
            graph.initializer.append(folded)
            inits[folded.name] = folded
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) == 2:
            x, scale = node.input
            # a DQ's zero point has its input's type (int8 weights, int32 biases); a Q
            # without one quantizes to uint8 (ONNX's default)
            dtype = value(x).dtype if node.op_type == "DequantizeLinear" and x in inits else np.uint8
            name = f"{scale}_zero_{np.dtype(dtype).name}"
            if name not in inits:
                zero = numpy_helper.from_array(np.zeros(value(scale).shape, dtype), name)
                graph.initializer.append(zero)
                inits[name] = zero
            node.input.append(name)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(_keep_sigmoid_rounding(graph, _without_default_layout(kept)))
    model.ir_version = min(model.ir_version, 10)  # the toolkit's onnx 1.18 reads up to 11
    for opset in model.opset_import:  # the toolkit reads opset <= 19 (torch exports 20):
        if opset.domain in ("", "ai.onnx"):  # the ops of an INT8 conv net read the same
            opset.version = min(opset.version, MAX_OPSET)
    onnx.save(model, str(dst))


def _without_default_layout(nodes: list[Any]) -> list[Any]:
    """``nodes`` with an LSTM/GRU/RNN ``layout = 0`` attribute dropped: 0 is the default
    (sequence first), and the toolkit's checker knows no ``layout`` at all ("Unrecognized
    attribute: layout for operator LSTM"); a batch-first layout (1) is kept, and refused."""
    for node in nodes:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            kept = [a for a in node.attribute if not (a.name == "layout" and a.i == 0)]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
    return nodes


def constant_scales(onnx_path: Path) -> dict[str, Any]:
    """What the worker gives back to the toolkit's quantization table (it re-derives
    scales, see converter/_rknn_worker.py): ``constants``, the scale of every int8
    weight and int32 bias by its DequantizeLinear's output; ``activations``, [scale,
    int8 zero point] of every quantized activation by each name the toolkit may use for
    it (the float tensor, the Q's and the DQs' outputs)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    constants: dict[str, list[float]] = {}
    activations: dict[str, list[float]] = {}
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64).ravel()
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            if inits[node.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32):
                constants[node.output[0]] = [float(v) for v in scale]
        elif node.op_type == "QuantizeLinear" and scale.size == 1 and len(node.input) > 2:
            zero = numpy_helper.to_array(inits[node.input[2]])
            point = int(zero.ravel()[0]) - (128 if zero.dtype == np.uint8 else 0)
            names = [node.input[0], node.output[0], *(d.output[0] for d in users.get(node.output[0], [])
                                                      if d.op_type == "DequantizeLinear")]
            activations.update({name: [float(scale[0]), float(point)] for name in names})
    return {"constants": constants, "activations": activations}


def _keep_sigmoid_rounding(graph: Any, nodes: list[Any]) -> list[Any]:
    """A ``Clip(0, 1)`` between each Sigmoid's DequantizeLinear and the Mul it gates.

    The toolkit fuses Sigmoid -> Q -> DQ -> Mul into one swish op that skips the
    rounding of the sigmoid to its int8 grid, which our INT8 ONNX does (YOLOv8n: 98.2 %
    of our boxes in the simulator's, 100 % with the Clip). The Clip changes no number (a
    sigmoid is in [0, 1]); it stops the fusion and costs no cycle in the toolkit's table
    (it runs inside the Mul)."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in nodes for o in n.output}
    names = {i.name for i in graph.initializer}
    out: list[Any] = []
    for node in nodes:
        out.append(node)
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        sigmoid = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if sigmoid is None or sigmoid.op_type != "Sigmoid":
            continue
        gated = [n for n in nodes if n.op_type == "Mul" and node.output[0] in n.input]
        if not gated:
            continue
        if "rknn_unit_lo" not in names:
            graph.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), "rknn_unit_lo"),
                                      numpy_helper.from_array(np.array(1.0, np.float32), "rknn_unit_hi")])
            names.update({"rknn_unit_lo", "rknn_unit_hi"})
        kept = f"{node.output[0]}_rounded"
        out.append(helper.make_node("Clip", [node.output[0], "rknn_unit_lo", "rknn_unit_hi"], [kept],
                                    name=f"{node.output[0]}_keep_rounding"))
        for mul in gated:
            mul.input[:] = [kept if i == node.output[0] else i for i in mul.input]
    return out


@dataclass(frozen=True)
class Layer:
    index: int
    op: str
    target: str  # "NPU" | "CPU"
    inputs: str  # the toolkit's "(1,16,8,8),(16,16,1,1),(16)"
    output: str
    cycles: int
    name: str  # "Conv:conv_3_node"

    @property
    def macs(self) -> int:
        """Multiply-accumulates of a convolution-like layer (output x weight fan-in)."""
        shapes = re.findall(r"\(([\d,]+)\)", self.inputs)
        out = re.findall(r"\(([\d,]+)\)", self.output)
        if len(shapes) < 2 or not out:
            return 0
        weight = [int(d) for d in shapes[1].split(",")]
        if len(weight) != 4:
            return 0
        return int(np.prod([int(d) for d in out[0].split(",")])) * int(np.prod(weight[1:]))


def parse_layers(log: str) -> list[Layer]:
    """The toolkit's 'Network Layer Information Table' (the last one in the log)."""
    tables: list[list[Layer]] = []
    for line in log.splitlines():
        if "Network Layer Information Table" in line:
            tables.append([])
        match = _ROW.match(line.strip())
        if match and tables:
            g = match.groups()
            tables[-1].append(Layer(index=int(g[0]), op=g[1], target=g[3], inputs=g[4],
                                    output=g[5], cycles=int(g[8]), name=g[9]))
    return tables[-1] if tables else []


def _memory(log: str, what: str) -> int:
    match = re.search(rf"Total {what} Memory Size: ([\d.]+)(KB|MB)", log)
    if not match:
        return 0
    return round(float(match.group(1)) * (1024 if match.group(2) == "KB" else 1024 * 1024))


def reference_outputs(onnx_path: Path, samples: dict[str, np.ndarray], *,
                      fused: bool = False) -> np.ndarray:
    """The first output of our INT8 ONNX on ``samples``: as its ops define it (each
    DequantizeLinear -> op -> QuantizeLinear in float, onnxruntime at its basic
    optimization level), or with ``fused`` as onnxruntime runs it by default (its fused
    int8 kernels, which round on their own: 96 % of YOLOv8n's boxes, 98 % of
    EfficientNet-Lite0's top-1 of the former)."""
    import onnxruntime as ort

    session = _evaluate.session(onnx_path.read_bytes())
    if not fused:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_path.read_bytes(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([np.asarray(session.run(None, feed)[0], np.float32)
                           for feed in _evaluate.samples(samples)])


def _agreement(onnx_path: Path, samples: dict[str, np.ndarray],
               simulated: np.ndarray | None) -> dict[str, Any]:
    if simulated is None:
        return {}
    ours = reference_outputs(onnx_path, samples)
    fused = reference_outputs(onnx_path, samples, fused=True)
    simulated = simulated.reshape(ours.shape)
    diff = float(np.abs(ours - simulated).max()) if ours.size else 0.0
    step = _output_step(onnx_path)
    picked = _evaluate.predictions(ours)
    agree = picked == _evaluate.predictions(simulated)
    return {"top1_agreement": round(100.0 * float(np.mean(agree)), 2),
            "top1_within_step": _within_step(ours, simulated, step),
            "top1_vs_onnxruntime": round(100.0 * float(np.mean(
                _evaluate.predictions(fused) == _evaluate.predictions(simulated))), 2),
            "onnxruntime_top1": round(100.0 * float(np.mean(picked == _evaluate.predictions(fused))), 2),
            "max_abs_diff": diff, "samples": len(ours),
            "max_diff_steps": round(diff / step, 2) if step else None}


def _within_step(ours: np.ndarray, simulated: np.ndarray, step: float | None) -> float | None:
    """% of samples whose simulator top-1 scores, in our INT8 ONNX, within one output
    step of our top-1: a tie on the INT8 grid that one step of rounding flips, not a
    different answer (int8 logits tie often over 1000 classes)."""
    if not step or ours.ndim < 2:
        return None
    flat, sim = ours.reshape(len(ours), -1), simulated.reshape(len(ours), -1)
    picked = flat[np.arange(len(flat)), sim.argmax(axis=1)]
    return round(100.0 * float(np.mean(picked >= flat.max(axis=1) - step * 1.001)), 2)


def _output_step(onnx_path: Path) -> float | None:
    """The scale of the QuantizeLinear that makes the first output (its INT8 grid)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    out = model.graph.output[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(out)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
        return float(numpy_helper.to_array(inits[node.input[1]]).max())
    return None


def _result(target: Target, artifact: str, layers: list[Layer], log: str,
            summary: dict[str, Any], agreement: dict[str, Any]) -> RknnResult:
    body = [layer for layer in layers if layer.op not in _EDGE_OPS]
    # the toolkit's own reshape of an output ("probs-rs"), on the CPU after the NPU's work
    edge = [layer for layer in body if layer.target == "CPU" and layer.name.endswith("-rs")]
    cpu = [layer for layer in body if layer.target == "CPU" and layer not in edge]
    cpu_rows = tuple({"op": layer.op, "node": _node(layer),
                      "macs": layer.macs, "reason": "rknn-toolkit2 placed it on the CPU"}
                     for layer in cpu)
    npu_at = [i for i, layer in enumerate(body) if layer.target == "NPU"]
    cuts = tuple(f"{layer.op} '{_node(layer)}'" for i, layer in enumerate(body)
                 if layer.target == "CPU" and npu_at and npu_at[0] < i < npu_at[-1])
    macs_total = sum(layer.macs for layer in body)
    return RknnResult(
        target=target.name, compiler=f"rknn-toolkit2 {summary.get('version', '')}".strip(),
        compiled=True, artifact=artifact,
        ops_total=len(body) - len(edge), ops_on_npu=len(body) - len(edge) - len(cpu),
        macs_total=macs_total, macs_on_npu=macs_total - sum(layer.macs for layer in cpu),
        cpu_ops=cpu_rows, cut_points=cuts, edge_ops=tuple(
            {"op": layer.op, "node": _node(layer), "macs": 0,
             "reason": "the toolkit's reshape of an output"} for layer in edge),
        advice=advise(target.name, cpu_rows, (), cuts, [layer.macs for layer in cpu]),
        settings=dict(target.settings), toolkit_version=str(summary.get("version", "")),
        cycles=sum(layer.cycles for layer in body),
        restored_scales=summary.get("restored_scales", 0),
        weight_bytes=_memory(log, "Weight"), internal_bytes=_memory(log, "Internal"),
        **agreement,
    )


def _node(layer: Layer) -> str:
    """The toolkit's "Conv:conv_3_node" -> "conv_3_node" (our ONNX node's name)."""
    return layer.name.partition(":")[2] or layer.name
