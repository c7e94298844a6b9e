"""The report's compatibility section: one table across targets (the Edge TPU from Coral's
rules, converter/_edgetpu.py; the NPUs from their own compilers, converter/_targets.py),
and the one change that would move most work onto an accelerator. Pure: dicts in
(report.json's ``edgetpu`` and ``targets``), rows out; the HTML and the CLI print them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("target", "checked by", "on the accelerator", "MACs on it", "falls back to the CPU",
           "cut points", "speed", "memory", "change that would help")


def advise(
    target: str,
    cpu_ops: Sequence[dict[str, Any]],
    edge_ops: Sequence[dict[str, Any]],
    cuts: Sequence[str],
    macs: Sequence[int],
) -> str:
    """One sentence: the CPU op whose move to the accelerator gains most (the one with
    the most MACs, else the first that splits the accelerator's work, else the first)."""
    if not cpu_ops:
        if edge_ops:
            return ("none for the accelerator; --io int8 also drops the float input "
                    f"QUANTIZE / output DEQUANTIZE ({len(edge_ops)} op(s) on the CPU)")
        return "none: every op runs on the accelerator"
    ranked = sorted(range(len(cpu_ops)), key=lambda i: -(macs[i] if i < len(macs) else 0))
    best = ranked[0]
    gain = f"it holds {macs[best]:,} MACs" if best < len(macs) and macs[best] else ""
    if not gain:
        cut_index = next((i for i, row in enumerate(cpu_ops) if _label(row) in cuts), None)
        best = cut_index if cut_index is not None else 0
        gain = "it splits the accelerator's work" if cut_index is not None else "it runs on the CPU"
    row = cpu_ops[best]
    if _is_float(row) and macs and not any(macs):  # every MAC is already on the accelerator
        return (f"none for the MACs: {row['op']} at '{row['node']}' is in the float tail "
                f"(post-processing edgeship keeps in float; why: {row['reason']})")
    hint = _HINTS.get(row["op"], "")
    return (f"replace {row['op']} at '{row['node']}' with an op {target} supports "
            f"({gain}; why: {row['reason']})" + (f"; {hint}" if hint else ""))


# the usual way around an op an NPU compiler leaves on the CPU
_HINTS = {
    "GATHER": "a channel shuffle (Reshape-Transpose-Reshape or a fixed Gather) can be a 1x1 "
              "convolution with a 0/1 permutation matrix, which NPUs run",
    "STRIDED_SLICE": "a strided slice on the channel or batch axis (e.g. a Focus/space-to-depth "
                     "stem) can be a stride-2 convolution",
    "BATCH_MATMUL": "an activation x activation MatMul (attention) maps on Ethos-U85, not U55/U65",
}


def _is_float(row: dict[str, Any]) -> bool:
    reason = str(row.get("reason", ""))
    return row["op"] in ("DEQUANTIZE", "QUANTIZE") or "Float32" in reason or "float" in reason


def _label(row: dict[str, Any]) -> str:
    return f"{row['op']} '{row['node']}'"


def _share(on: int, total: int) -> str:
    return f"{on}/{total} ({100.0 * on / total:.1f}%)" if total else "–"


def _percent(on: int | None, total: int | None) -> str:
    return f"{100.0 * on / total:.1f}%" if on is not None and total else "–"


def _fallback(rows: Sequence[dict[str, Any]], limit: int = 4) -> str:
    if not rows:
        return "nothing"
    names = [f"{r['op']} '{r['node']}'" for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(names) + more


def edgetpu_row(edgetpu: dict[str, Any]) -> dict[str, str]:
    """The Edge TPU's row from the rules check (a TFLite check or the plan's verdict)."""
    cpu = [{"op": c.get("op", "?"), "node": c.get("node", f"op #{c.get('index', '?')}"),
            "reason": "; ".join(c.get("reasons", [])) or c.get("reason", "")}
           for c in edgetpu.get("cpu_ops", [])]
    edge = edgetpu.get("edge_ops", [])
    total = edgetpu.get("ops_total")
    on = edgetpu.get("ops_on_tpu")
    cut = edgetpu.get("cut")
    return {
        "target": "edgetpu",
        "checked by": "Coral's documented rules (compiler not run)",
        "on the accelerator": _share(on, total - len(edge)) if total is not None and on is not None else
        ("all ops" if edgetpu.get("compatible") else "–"),
        "MACs on it": _percent(edgetpu.get("macs_on_tpu"), edgetpu.get("macs_total")),
        "falls back to the CPU": _fallback(cpu),
        "cut points": f"{cut['op']} (op #{cut['index']})" if cut else "none",
        "speed": "–",
        "memory": "–",
        "change that would help": advise("the Edge TPU", cpu, edge,
                                         [_label(cpu[0])] if cut and cpu else [], []),
    }


def target_row(result: dict[str, Any]) -> dict[str, str]:
    """A compiled (or not compiled) target's row, from TargetResult.to_dict()."""
    if not result.get("compiled"):
        return {
            "target": result["target"], "checked by": result.get("compiler", ""),
            "on the accelerator": "not compiled", "MACs on it": "–",
            "falls back to the CPU": result.get("error") or "", "cut points": "–",
            "speed": "–", "memory": "–", "change that would help": "–",
        }
    return {
        "target": result["target"],
        "checked by": result.get("compiler", ""),
        "on the accelerator": _share(result["ops_on_npu"], result["ops_total"]),
        "MACs on it": _percent(result.get("macs_on_npu"), result.get("macs_total")),
        "falls back to the CPU": _fallback(result.get("cpu_ops", [])),
        "cut points": ", ".join(result.get("cut_points", [])) or "none",
        "speed": speed(result),
        "memory": memory(result),
        "change that would help": result.get("advice", ""),
    }


def speed(result: dict[str, Any]) -> str:
    if result.get("inferences_per_second"):
        mhz = result.get("clock_hz", 0) / 1e6
        return (f"{result['inferences_per_second']:,.0f} inf/s est. "
                f"({result.get('cycles', 0):,} cycles at {mhz:.0f} MHz)")
    if result.get("latency_ms") is not None:
        ort = result.get("onnxruntime_latency_ms")
        versus = f" vs onnxruntime {ort:.3f} ms" if ort is not None else ""
        return f"{result['latency_ms']:.3f} ms{versus} (this CPU, 1 thread)"
    if result.get("cycles"):  # RKNN: the toolkit's per-layer estimate, no clock given
        agree = result.get("top1_agreement")
        sim = f"; simulator top-1 agreement {agree:.1f}%" if agree is not None else ""
        return f"{result['cycles']:,} cycles est.{sim}"
    return "–"


def memory(result: dict[str, Any]) -> str:
    parts = [f"{label} {result[key] / 1024:,.1f} KiB"
             for key, label in (("sram_bytes", "SRAM"), ("flash_bytes", "flash"), ("dram_bytes", "DRAM"),
                                ("weight_bytes", "weights"), ("internal_bytes", "feature maps"))
             if result.get(key)]
    return ", ".join(parts) or "–"


def compat_rows(edgetpu: dict[str, Any] | None, targets: dict[str, Any] | None) -> list[dict[str, str]]:
    rows = [edgetpu_row(edgetpu)] if edgetpu else []
    rows += [target_row(r) for r in (targets or {}).values()]
    return rows
