"""``OUT/model.int8.<target>.xml/.bin``: the INT8 model as OpenVINO IR (``openvino.save_model``)
with the compile choices that ran it fastest on this machine, measured at each convert.

OpenVINO's CPU plugin picks its int8 kernels by the instruction sets it finds; on a CPU
with AMX it takes AMX tiles for every convolution. AMX pays for wide layers and costs for
narrow ones (its tiles are 64 bytes of K wide: a 16- or 24-channel layer is padded and
reordered into them). Measured on this 2-core shared Xeon, OpenVINO : onnxruntime CPU time
per call, AMX vs without (same run): ResNet-18 2.41 vs 1.33, MobileNetV3-Small 0.75 vs
1.10, PP-OCR cls 0.80 vs 1.01, YOLOv8n with fused SiLUs 0.76 vs 1.08 (a swish post-op on
an AMX convolution costs about the convolution again, converter/_openvino_prep.py).
No compile property selects the instruction set per model; the IR's per-layer
``PrimitivesPriority`` attribute (a layer attribute the IR reader turns into the
plugin's kernel priority list; set on an in-memory model it is ignored) does. Compile
properties that a choice needs (``SNIPPETS_MODE``) go into the IR's ``runtime_options``,
which the SDK's OpenVINO runtime passes when it compiles the IR (the CPU plugin itself
ignores that one there).

Candidates (:func:`candidates`): the generic INT8 ONNX and, when it differs, the form
written for OpenVINO; each with AMX and without; and with OpenVINO's snippets off where
they put a MatMul/Gemm into a float subgraph (the mlp fixture: one f32 "Subgraph" for the
whole model). The model's function is the same in each: only kernels and fusion differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IR_HINTS_KEY", "NO_AMX", "IrChoice", "candidates", "write_ir"]

IR_HINTS_KEY = "edgeship_edge_quant"  # the IR's rt_info entry (sdk/runtime/_runtime_openvino.py)

# the non-AMX int8 kernels, best first (OpenVINO CPU plugin names); a name this CPU lacks
# is skipped by the plugin, which falls back to its own order
NO_AMX = ",".join(f"cpu:{name}" for name in (
    "brgconv_avx512_1x1", "brgconv_avx512", "brgconv_avx512_dw", "jit_avx512_dw", "jit_avx512_1x1",
    "jit_avx512", "brgemm_avx512", "jit_gemm"))
KERNEL_OPS = frozenset({"Convolution", "GroupConvolution", "MatMul"})  # as OpenVINO reads ONNX


@dataclass(frozen=True)
class IrChoice:
    fused: bool  # the form written for OpenVINO (converter/_openvino_prep.py)
    amx: bool  # AMX kernels allowed (OpenVINO's default where the CPU has them)
    snippets: bool = True  # OpenVINO's snippets (fused float subgraphs) on

    @property
    def label(self) -> str:
        return "-".join(part for part, on in (("fused", self.fused), ("no-amx", not self.amx),
                                               ("no-snippets", not self.snippets)) if on) or "default"


def candidates(has_fused: bool, amx: bool, float_subgraphs: bool) -> list[IrChoice]:
    """The choices worth timing: AMX on/off only where the CPU has AMX, the fused form
    only when it differs, snippets off only when they took a compute layer out of int8."""
    forms = [False, True] if has_fused else [False]
    tiles = [True, False] if amx else [True]
    found = [IrChoice(fused=f, amx=a) for f in forms for a in tiles]
    if float_subgraphs:
        found += [IrChoice(fused=c.fused, amx=c.amx, snippets=False) for c in found]
    return found


def _byte_indices(model: Any) -> int:
    """Gathers indexed by an 8-bit tensor widened to int32 (ONNX's Gather takes no
    narrower index; converter/_openvino_lut.py's tables) read the 8-bit tensor itself:
    the same rows (a negative int8 index counts from the end either way), without an
    int32 tensor to convert and reorder. How many."""
    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        widened = op.input_value(1).get_node()
        if widened.get_type_name() != "Convert":
            continue
        narrow = widened.input_value(0)
        if narrow.get_element_type().get_type_name() in ("u8", "i8"):
            op.input(1).replace_source_output(narrow)
            count += 1
    return count


def write_ir(onnx_path: Path, xml_path: Path, choice: IrChoice) -> Path:
    """``onnx_path`` read by OpenVINO and saved as IR at ``xml_path`` (weights in the
    ``.bin`` beside it, not compressed) with ``choice``'s kernels and properties."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    _byte_indices(model)
    if not choice.amx:
        for op in model.get_ordered_ops():
            if op.get_type_name() in KERNEL_OPS:
                op.get_rt_info()["PrimitivesPriority"] = NO_AMX
    if not choice.snippets:
        model.set_rt_info("DISABLE", ["runtime_options", "SNIPPETS_MODE"])
    hints = _edge_hints(onnx_path)
    if hints:  # an IR has no Q/DQ at its int8 edges to read them from
        model.set_rt_info(hints, [IR_HINTS_KEY])
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def _edge_hints(onnx_path: Path) -> str:
    """The ONNX's edge quantization hints (sdk/runtime/_quant_hints.py) as JSON, "" when
    it has no int8 edge: what lets the SDK hand an io="int8" IR float32 as the ONNX."""
    from edgeship.sdk.runtime._quant_hints import hints_from_model_bytes

    hints = hints_from_model_bytes(onnx_path.read_bytes())
    return hints.to_json() if hints.edges else ""


def has_amx(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin can use AMX here (its int8 kernels then use it)."""
    try:
        return "AMX" in " ".join(map(str, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))).upper() \
            or _cpu_flag("amx_int8")
    except Exception:  # a property this version lacks: the CPU's own flags
        return _cpu_flag("amx_int8")


def _cpu_flag(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except OSError:
        return False
