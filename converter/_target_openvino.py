"""OpenVINO targets (pip ``openvino``, extra ``openvino``): OpenVINO reads the QDQ ONNX
itself; where OpenVINO runs it faster with fewer Q/DQ pairs (SiLU blocks, sigmoid gates,
uint8 weights as int8, int8 tables, YOLOX's Focus stem, wide float LSTMs in steps,
hardswish blocks:
converter/_openvino_prep.py) that form is written as
``OUT/model.int8.<target>.onnx`` (a release variant for openvino-* devices). The model
OpenVINO compiles is ``OUT/model.int8.<target>.xml/.bin`` (OpenVINO IR): of the generic
and that form, with and without AMX kernels, with and without snippets, the one that ran
fastest here among those that keep every compute layer int8 (converter/_openvino_ir.py).
What is checked is that it takes the INT8 path and how fast it is here.

- ``openvino-cpu``: compile for this machine's CPU and read the compiled model's
  executed graph: every ONNX compute node (Conv, Gemm, MatMul ...) is found in the layer
  it was fused into, whose ``runtimePrecision`` says the path taken (u8/i8 is INT8; f32,
  or a fused f32 "Subgraph", is not).
  Latency (1 thread, median) is measured against onnxruntime on the same INT8 ONNX, each
  runtime loaded and called as the agent's runtimes do (sdk/runtime), in alternating
  blocks of calls (:func:`_latencies_ms`); the outputs of both on the same inputs are
  compared.
- ``openvino-npu``: the same on an Intel NPU; a machine without one (OpenVINO lists its
  devices) gets ``compiled=False`` and says so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship._errors import ConversionError

from . import _evaluate
from ._compat import advise
from ._openvino_ir import IrChoice, candidates, has_amx, write_ir
from ._targets import Target, TargetInputs, TargetResult

# the ONNX ops that hold the MACs: each must land in an int8 layer of the executed graph
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul"})
INT8 = frozenset({"u8", "i8"})
# layers that move data: a compute node's name or weights seen in one (a weight's
# Transpose) is not where its MACs run (PP-OCR rec's MatMuls were reported i8 by theirs)
MOVES = frozenset({"Transpose", "Reorder", "Reshape", "Convert", "Concatenation", "Split", "Gather"})


@dataclass(frozen=True, kw_only=True)
class OpenVinoResult(TargetResult):
    device: str = "CPU"
    openvino_version: str = ""
    int8_path: bool = False  # every compute layer runs in u8/i8
    latency_ms: float | None = None  # OpenVINO, 1 thread, median
    onnxruntime_latency_ms: float | None = None  # same INT8 ONNX, same inputs, 1 thread
    speedup: float | None = None  # onnxruntime / OpenVINO: median over paired rounds
    max_abs_diff: float | None = None  # first output, OpenVINO vs onnxruntime INT8
    top1_agreement: float | None = None  # % of samples with the same argmax
    samples: int = 0
    fused_blocks: int = 0  # SiLU blocks / sigmoid gates written for OpenVINO's fusion
    prepared_kept: bool = False  # that form ran faster here and is the artifact
    ir: str | None = None  # OUT/ name of the OpenVINO IR (.xml, its .bin beside it) measured here
    ir_choice: str = ""  # its compile choices (converter/_openvino_ir.py IrChoice.label)
    choices_ms: dict[str, float] | None = None  # each candidate's median ms, as timed


def _compile(core: Any, source: Any, device: str) -> Any:
    try:
        from edgeship.sdk.runtime._runtime_openvino import runtime_options

        model = core.read_model(str(source))
        return core.compile_model(model, device, {
            "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",  # float parts as in onnxruntime, not bf16
            "ENABLE_CPU_PINNING": False,  # as the SDK's runtime (sdk/runtime/_runtime_openvino.py)
            **runtime_options(model),  # the IR's own (converter/_openvino_ir.py)
        } if device == "CPU" else {"PERFORMANCE_HINT": "LATENCY"})
    except Exception as exc:  # OpenVINO's own message, one line
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConversionError(f"OpenVINO cannot compile the INT8 ONNX for {device}: {detail[:300]}") from exc


def _agent_call(model: Path, runtime: str, device: str, feed: dict[str, np.ndarray]
                ) -> Callable[[], object]:
    """One inference of ``model`` on ``feed`` as the agent runs it: the SDK's runtime
    backend (sdk/runtime: onnxruntime's default session options, OpenVINO's compile
    config and its one-call infer path), 1 thread."""
    from edgeship.sdk.runtime._runtime_openvino import OpenVinoBackend
    from edgeship.sdk.runtime._runtime_ort import OrtBackend

    backend = (OpenVinoBackend(str(model), device=device.lower(), threads=1) if runtime == "openvino"
               else OrtBackend(str(model), device="cpu", threads=1))
    return lambda: backend.run(feed)


def _prepared(target: Target, inputs: TargetInputs) -> tuple[str | None, Any, int]:
    """(artifact name or None, the ONNX OpenVINO compiles, rewrites): the INT8 ONNX as
    OpenVINO runs fastest (converter/_openvino_prep.py), written to OUT/ when it differs."""
    import onnx

    from ._openvino_prep import fused_for_openvino

    prepared, rewrites = fused_for_openvino(onnx.load(str(inputs.onnx)))
    if not rewrites:
        return None, inputs.onnx, 0
    artifact = f"model.int8.{target.name}.onnx"
    onnx.save(prepared, str(inputs.out_dir / artifact))
    return artifact, inputs.out_dir / artifact, rewrites


def compile_openvino(target: Target, inputs: TargetInputs) -> OpenVinoResult:
    import openvino as ov

    device = target.settings["device"]
    core = ov.Core()
    if device not in core.available_devices:
        seen = ", ".join(core.available_devices) or "none"
        raise ConversionError(f"no {device} device on this machine (OpenVINO sees: {seen})")
    artifact, prepared, rewrites = _prepared(target, inputs)
    nodes = _compute_nodes(inputs.onnx)
    choice, ir, choices_ms = _fastest_ir(core, target, device, inputs, prepared if artifact else None, nodes)
    if artifact is not None and not choice.fused:
        # measured, not assumed: YOLOv8n's SiLUs, fused, cost more inside its small AMX
        # convolutions than as the separate subgraph
        (inputs.out_dir / artifact).unlink()
        artifact = None
    compiled = _compile(core, ir, device)
    layers = node_precisions(compiled.get_runtime_model(), [(n, op) for n, op, _ in nodes],
                             {w: n for n, _, w in nodes if w})
    float_rows = tuple(
        {"op": op, "node": node, "reason": reason}
        for node, op, precision, reason in layers if precision not in INT8
    )
    timing = _compare(compiled, ir, device, inputs)
    return OpenVinoResult(
        target=target.name, compiler=f"openvino {ov.get_version().split('-')[0]}", compiled=True,
        artifact=artifact, fused_blocks=rewrites, prepared_kept=artifact is not None,
        ir=ir.name, ir_choice=choice.label, choices_ms=choices_ms,
        ops_total=len(layers), ops_on_npu=len(layers) - len(float_rows),
        cpu_ops=float_rows,
        advice=advise(target.name, float_rows, [], [], []) if float_rows else
        "none: every compute layer runs in int8",
        settings=dict(target.settings), device=device, openvino_version=ov.get_version(),
        int8_path=bool(layers) and not float_rows, **timing,
    )


def _int8_path(core: Any, source: Path, device: str, nodes: list[tuple[str, str, str]]
               ) -> tuple[bool, bool]:
    """(every compute node in an int8 layer, some in a float snippets subgraph)."""
    compiled = _compile(core, source, device)
    rows = node_precisions(compiled.get_runtime_model(), [(n, op) for n, op, _ in nodes],
                           {w: n for n, _, w in nodes if w})
    return (bool(rows) and all(p in INT8 for _, _, p, _ in rows),
            any(p not in INT8 and "subgraph" in why for _, _, p, why in rows))


def _fastest_ir(core: Any, target: Target, device: str, inputs: TargetInputs, prepared: Path | None,
                nodes: list[tuple[str, str, str]]) -> tuple[IrChoice, Path, dict[str, float]]:
    """The compile choice (converter/_openvino_ir.py) that runs fastest here, as the agent
    runs it, among those that keep every compute layer int8 (all of them when none
    does), written as ``OUT/model.int8.<target>.xml/.bin``; and each one's median ms."""
    import shutil
    import tempfile

    _, float_subgraphs = _int8_path(core, inputs.onnx, device, nodes)
    on_cpu = device == "CPU"
    choices = candidates(prepared is not None, on_cpu and has_amx(core), on_cpu and float_subgraphs)
    feeds = list(_evaluate.samples(inputs.samples))
    final = inputs.out_dir / f"model.int8.{target.name}.xml"
    with tempfile.TemporaryDirectory(dir=inputs.out_dir, prefix=".openvino-") as tmp:
        irs = [write_ir(prepared if c.fused and prepared else inputs.onnx, Path(tmp) / f"{i}.xml", c)
               for i, c in enumerate(choices)]
        int8 = [i for i, ir in enumerate(irs) if _int8_path(core, ir, device, nodes)[0]] if len(irs) > 1 else [0]
        timed = int8 or list(range(len(irs)))
        ms = (_latencies_ms([_agent_call(irs[i], "openvino", device, feeds[0]) for i in timed],
                            max(inputs.latency_runs // 2, 20)) if len(timed) > 1 and feeds else [0.0])
        best = timed[min(range(len(timed)), key=ms.__getitem__)]
        shutil.move(str(irs[best]), final)
        shutil.move(str(irs[best].with_suffix(".bin")), final.with_suffix(".bin"))
    choices_ms = {choices[i].label: round(m, 4) for i, m in zip(timed, ms, strict=False)}
    return choices[best], final, choices_ms


def compute_nodes(onnx_path: Any) -> list[tuple[str, str]]:
    """(node name, op type) of the ONNX model's compute nodes."""
    return [(name, op) for name, op, _ in _compute_nodes(onnx_path)]


def _compute_nodes(onnx_path: Any) -> list[tuple[str, str, str]]:
    """(node name, op type, the int8 weight initializer behind its DequantizeLinear)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [(n.name, n.op_type, dq_source.get(n.input[1], n.input[1]) if len(n.input) > 1 else "")
            for n in model.graph.node if n.op_type in COMPUTE_OPS]


def node_precisions(
    runtime_model: Any, nodes: list[tuple[str, str]], weights: dict[str, str] | None = None
) -> list[tuple[str, str, str, str]]:
    """Where each ONNX compute node ran in OpenVINO's executed graph: (node, op, runtime
    precision, why not int8). A layer lists the ONNX nodes fused into it in
    ``originalLayersNames`` (``conv_3/WithoutBiases``, ``conv_3``, ...)."""
    wanted = {name for name, _ in nodes}
    by_weight = dict(weights or {})  # weight initializer -> node, when OpenVINO renamed the layer
    placed: dict[str, tuple[str, str]] = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        kind = _text(info, "layerType")
        if kind in ("Const", "Input", "Output") or kind in MOVES:
            continue
        precision = _kernel_precision(_text(info, "primitiveType")) or _text(info, "runtimePrecision").lower() or "?"
        for original in _text(info, "originalLayersNames").split(","):
            node = _node_of(original, wanted)
            if node is not None:
                placed.setdefault(node, (kind, precision))
        for value in op.inputs():  # a fused layer renamed: known by the weights it reads
            node = by_weight.get(value.get_source_output().get_node().get_friendly_name())
            if node is not None:
                placed.setdefault(node, (kind, precision))
    rows = []
    for name, op_type in nodes:
        kind, precision = placed.get(name, ("", "?"))
        if not kind:
            why = "not found in OpenVINO's executed graph"
        elif kind == "Subgraph":
            why = f"fused into a {precision} subgraph (OpenVINO snippets), not an int8 kernel"
        else:
            why = f"{kind} runs in {precision}, not int8"
        rows.append((name, op_type, precision, why))
    return rows


def _kernel_precision(primitive: str) -> str:
    """The arithmetic of a layer's kernel from its name (``brgemm_avx512_amx_I8``: i8,
    ``brgemm_avx512_f32``: f32), "" when the name does not say. ``runtimePrecision`` is
    its input's: a MatMul with uint8 zero-pointed weights reads u8 activations and
    multiplies in f32 (its weights decompressed)."""
    suffix = primitive.rpartition("_")[2].lower()
    return "i8" if suffix == "i8" else suffix if suffix in ("f32", "bf16", "f16") else ""


def _node_of(original: str, wanted: set[str]) -> str | None:
    """The ONNX node an OpenVINO name came from: the name itself or its longest prefix
    before a '/' (``conv_3/WithoutBiases``; node names may hold '/' themselves, as
    torch's ``/model.0/conv/Conv``)."""
    name = original
    while name:
        if name in wanted:
            return name
        name = name.rpartition("/")[0]
    return None


def _text(info: Any, key: str) -> str:
    return info[key].astype(str) if key in info else ""


def _compare(compiled: Any, source: Path, device: str, inputs: TargetInputs) -> dict[str, Any]:
    """Outputs of both runtimes on every sample; latency of both on the first sample, each
    as the agent runs it (OpenVINO on ``source``, onnxruntime on the generic INT8 ONNX)."""
    feeds = list(_evaluate.samples(inputs.samples))
    if not feeds:
        return {}
    session = _evaluate.session(inputs.onnx.read_bytes(), threads=1)
    request = compiled.create_infer_request()
    names = [i.name for i in session.get_inputs()]
    ort_out, ov_out = [], []
    for feed in feeds:
        ort_out.append(np.asarray(session.run(None, feed)[0], np.float32))
        result = request.infer({name: feed[name] for name in names}, share_inputs=True)
        ov_out.append(np.array(result[compiled.output(0)], np.float32))
    a, b = np.concatenate(ort_out), np.concatenate(ov_out)
    agree = _evaluate.predictions(a) == _evaluate.predictions(b)
    ort_rounds, ov_rounds = _rounds_ms([_agent_call(inputs.onnx, "onnxruntime", device, feeds[0]),
                                        _agent_call(source, "openvino", device, feeds[0])],
                                       inputs.latency_runs)
    ort_ms, ov_ms = (float(statistics.median(ms for block in r for ms in block))
                     for r in (ort_rounds, ov_rounds))
    return {
        "latency_ms": round(ov_ms, 4), "onnxruntime_latency_ms": round(ort_ms, 4),
        # paired per round (see paired_ratio), not ort_ms / ov_ms
        "speedup": round(paired_ratio(ort_rounds, ov_rounds), 3) if ov_ms > 0 else None,
        "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        "top1_agreement": round(100.0 * float(np.mean(agree)), 2), "samples": len(feeds),
    }


BLOCK = 10  # calls of one runtime in a row; the first of each block is not counted
MIN_TIMED_S = 0.2  # a fast model gets more rounds: each runtime timed about this long
MIN_ROUNDS = 9  # a slow one at least this many: a paired ratio's median over rounds


def _latencies_ms(calls: Sequence[Callable[[], object]], runs: int) -> list[float]:
    """Median ms of each call over all its timed blocks (:func:`_rounds_ms`)."""
    return [float(statistics.median(ms for block in blocks for ms in block))
            for blocks in _rounds_ms(calls, runs)]


def paired_ratio(first: list[list[float]], second: list[list[float]]) -> float:
    """Median over rounds of (``first``'s block median / ``second``'s): each round's two
    blocks ran back to back, so a load that comes and goes between rounds cancels out,
    where the ratio of the two overall medians takes it whole (YOLOv8n under load ~13,
    52 rounds: per-round ratios 0.85 to 1.18 at q10/q90, median 1.04)."""
    return float(statistics.median(statistics.median(a) / statistics.median(b)
                                   for a, b in zip(first, second, strict=True)))


def _rounds_ms(calls: Sequence[Callable[[], object]], runs: int) -> list[list[list[float]]]:
    """Per call, per round, the ms of its timed calls: alternating blocks of
    :data:`BLOCK` calls, the order of the callers reversed every round: a machine shared
    with other work slows each alike, and each runs with its own weights in the caches,
    as on a device that runs one of them. Calls interleaved one by one timed each
    runtime after the other had evicted its weights (same run, same load:
    MobileNetV3-Small's OpenVINO 0.69x onnxruntime that way, 0.96x in blocks; the first
    call after a switch is what that measured). At least :data:`MIN_ROUNDS` rounds."""
    one_s = []
    for call in calls:  # warm-up, and how long one call takes
        call()
        began = time.perf_counter()
        call()
        one_s.append(time.perf_counter() - began)
    rounds = max(runs // (BLOCK - 1), MIN_ROUNDS,
                 min(int(MIN_TIMED_S / (BLOCK * max(max(one_s), 1e-6))), 500))
    times: list[list[list[float]]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for _ in range(rounds):
        for index in order:
            call = calls[index]
            call()
            block = []
            for _ in range(BLOCK - 1):
                began = time.perf_counter()
                call()
                block.append((time.perf_counter() - began) * 1000.0)
            times[index].append(block)
        order.reverse()
    return times
