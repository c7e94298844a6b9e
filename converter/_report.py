"""The conversion report: a frozen dataclass with to_dict/from_dict, written as
report.json and as report.html (a summary, a table per layer and an inline SVG plot of
per-layer SQNR; no plotting library at run time)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Report:
    """What a conversion produced and what it cost. Unknown keys survive a round trip."""

    model: str
    model_sha256: str
    int8_sha256: str
    options: dict[str, Any]
    sizes: dict[str, Any]  # fp32_bytes, int8_onnx_bytes, ratios, zstd sizes, tflite_bytes
    calibration: dict[str, Any]  # method, samples
    pruning: dict[str, Any]
    eval: dict[str, Any] | None
    output_sqnr_db: float | None  # on the SQNR samples (eval set if given, else calibration)
    layers: list[dict[str, Any]]  # one per quantized activation tensor
    weights: list[dict[str, Any]]
    float_ops: list[dict[str, str]]  # nodes left in float, with the reason
    fused: list[dict[str, str]]
    optimizations: list[str]
    edgetpu: dict[str, Any]
    base: dict[str, Any] | None  # --base: what kept its parameters / values
    tflite: dict[str, Any] | None
    timings: dict[str, float]  # seconds per phase
    conversion_seconds: float  # everything except --eval
    profile: dict[str, Any] | None = None  # --eval: what profile.json holds (drift reference)
    # requested / written format names, and per format not written: reason (+ op, node)
    formats: dict[str, Any] | None = None
    # --target NAME: each NPU compiler's result (converter/_targets.py TargetResult.to_dict)
    targets: dict[str, Any] | None = None
    version: int = REPORT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        if d["profile"] is None:  # a report without --eval stays as it was
            del d["profile"]
        if d["formats"] is None:  # a report made before formats were recorded
            del d["formats"]
        if d["targets"] is None:  # no --target: the report stays as it was
            del d["targets"]
        return {**extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        names = set(cls.__dataclass_fields__) - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------- HTML
_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{color:#b00}.ok{color:#070}h1{font-size:22px}
.kv td:first-child{text-align:left;font-weight:600}"""


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(head)
    )
    trs = []
    for r in rows:
        tds = "".join(
            f'<td class="{"l" if i < left else ""}">{_fmt(v, 4 if isinstance(v, float) and abs(v) < 1 else 2)}</td>'
            for i, v in enumerate(r)
        )
        trs.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(trs)}</table>"


_NAME_CHARS = 28  # a layer name under its bar is cut to this (the tooltip has it whole)
_MIN_BAR = 12  # px per layer: below this the names would overlap, so the chart widens


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else "…" + name[-(_NAME_CHARS - 1) :]


def sqnr_svg(layers: list[dict[str, Any]], width: int = 1000, height: int = 380) -> str:
    """A bar chart of per-layer SQNR (dB), in graph order, as inline SVG: a y axis in dB
    with its label, one bar per quantized tensor with the tensor's name under it (cut
    to its last characters; the tooltip has the whole name and op), an x-axis label and
    the 20 / 30 dB thresholds the colours stand for. Many layers widen the chart (the
    page scrolls it) rather than overlap the names."""
    pts = [
        (ly["tensor"], ly.get("op") or "", float(ly["sqnr_db"]))
        for ly in layers
        if ly.get("sqnr_db") is not None
    ]
    if not pts:
        return "<p>No per-layer SQNR measured.</p>"
    top = max(60.0, max(v for _, _, v in pts))
    left, right, pad_top, names_h, caption_h = 84, 12, 12, 150, 40
    plot_h = height - pad_top - names_h - caption_h
    bar_w = max(_MIN_BAR, (width - left - right) / len(pts))
    width = round(left + right + bar_w * len(pts))
    base_y = pad_top + plot_h

    def y_of(db: float) -> float:
        return pad_top + plot_h * (1 - max(db, 0.0) / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" aria-label="per-layer SQNR in dB, one bar per quantized tensor" '
        'font-family="system-ui,sans-serif">'
    ]
    for db in range(0, int(top) + 1, 10):
        y = y_of(db)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{db}</text>'
        )
    for i, (name, op, v) in enumerate(pts):
        x = left + i * bar_w
        colour = "#c33" if v < 20 else "#e90" if v < 30 else "#3a7"
        tip = html.escape(f"{name} ({op}): {v:.1f} dB" if op else f"{name}: {v:.1f} dB")
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y_of(v):.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{base_y - y_of(v):.1f}" fill="{colour}"><title>{tip}</title></rect>'
        )
        cx, ty = x + bar_w / 2 + 3, base_y + 8
        parts.append(
            f'<text class="layer" x="{cx:.1f}" y="{ty:.1f}" font-size="10" text-anchor="end" '
            f'transform="rotate(-60 {cx:.1f} {ty:.1f})">{html.escape(_short(name))}'
            f"<title>{tip}</title></text>"
        )
    for db, colour in ((20, "#c33"), (30, "#e90")):
        y = y_of(db)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-dasharray="4 3" stroke-width="1"/>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{pad_top}" y2="{base_y:.1f}" stroke="#888"/>'
        f'<line x1="{left}" x2="{width - right}" y1="{base_y:.1f}" y2="{base_y:.1f}" stroke="#888"/>'
    )
    mid_y = pad_top + plot_h / 2
    parts.append(
        f'<text class="axis" x="40" y="{mid_y:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 40 {mid_y:.1f})">SQNR (dB)</text>'
    )
    parts.append(
        f'<text class="axis" x="{left}" y="{height - 22}" font-size="12">'
        "layer (quantized tensor, in graph order)</text>"
        f'<text x="{left}" y="{height - 6}" font-size="11" fill="#555">'
        "red: below 20 dB, amber: below 30 dB (dashed lines), green: 30 dB or more</text>"
    )
    parts.append("</svg>")
    return f'<div style="overflow-x:auto">{"".join(parts)}</div>'


def not_written_line(fmt: str, why: dict[str, Any]) -> str:
    """``TFLite not written: Split at node 'split_3': <reason>`` (or the writer's message),
    worded like :class:`UnsupportedOpError`."""
    label = {"tflite": "TFLite", "onnx": "ONNX"}.get(fmt, fmt)
    if why.get("op"):
        return f"{label} not written: {why['op']} at node '{why['node']}': {why['reason']}"
    return f"{label} not written: {why['reason']}"


def _format_rows(r: Report) -> list[tuple[str, Any]]:
    if not r.formats:
        return []
    rows: list[tuple[str, Any]] = [("formats written", ", ".join(r.formats.get("written", [])))]
    for fmt, why in sorted(r.formats.get("not_written", {}).items()):
        rows.append(("not written", not_written_line(fmt, why)))
    return rows


def _layer_note(r: Report) -> str:
    n = r.extra.get("layer_sqnr_samples")
    if n is None:
        return ""
    return (
        f"<p>Each quantized tensor of the int8 model against the same tensor of its float "
        f"graph, over {int(n)} sample(s).</p>"
    )


def _compat_html(r: Report) -> str:
    """One table across targets: the Edge TPU by rules, each --target by its compiler."""
    from ._compat import COLUMNS, compat_rows

    rows = compat_rows(r.edgetpu, r.targets)
    if not rows:
        return ""
    table = _table(list(COLUMNS), [[row[c] for c in COLUMNS] for row in rows], left=len(COLUMNS))
    return f"<h2>Compatibility</h2>{table}"


def _reconstruction_line(rec: dict[str, Any] | None) -> str | None:
    """Pruned fp32 model vs the dense one, magnitude only -> refit (converter/_prune_refit.py)."""
    if not rec:
        return None
    line = f"{rec['layers']} layer(s) refit, layer output error down {rec['layer_error_gain_db']} dB"
    if "magnitude_sqnr_db" in rec:
        line += (
            f"; output SQNR {rec['magnitude_sqnr_db']} -> {rec['reconstructed_sqnr_db']} dB, "
            f"agreement {rec['magnitude_agreement']} -> {rec['reconstructed_agreement']}%"
        )
    if "magnitude_accuracy" in rec:
        line += f", accuracy {rec['magnitude_accuracy']} -> {rec['reconstructed_accuracy']}%"
    return line


def to_html(r: Report) -> str:
    s, ev = r.sizes, r.eval or {}
    fp32_label = "fp32 size (bytes)"
    if s.get("fp32_external_files"):
        fp32_label = f"fp32 size (bytes, model + {s['fp32_external_files']} external data file(s))"
    summary = _kv(
        [
            ("model", r.model),
            *_format_rows(r),
            (fp32_label, s.get("fp32_bytes")),
            ("int8 ONNX size (bytes)", s.get("int8_onnx_bytes")),
            ("int8 / fp32", _fmt(s.get("int8_onnx_ratio"), 4)),
            ("int8 ONNX, zstd (bytes)", s.get("int8_onnx_zstd_bytes")),
            ("same without pruning, zstd (bytes)", s.get("unpruned_int8_onnx_zstd_bytes")),
            ("zstd size saved by pruning", _fmt(s.get("pruned_zstd_saving"), 4)),
            ("int8 TFLite size (bytes)", s.get("int8_tflite_bytes")),
            (
                "calibration",
                f"{r.calibration.get('method')} on {r.calibration.get('samples')} samples",
            ),
            (
                "pruning",
                f"{r.pruning.get('mode')} target {r.pruning.get('target')}, achieved {_fmt(r.pruning.get('achieved'), 3)}",
            ),
            ("pruning reconstruction", _reconstruction_line(r.pruning.get("reconstruction"))),
            ("fp32 accuracy (%)", ev.get("fp32_accuracy")),
            ("pruned fp32 accuracy (%)", ev.get("pruned_fp32_accuracy")),
            ("int8 accuracy (%)", ev.get("int8_accuracy")),
            ("top-1 agreement (%)", ev.get("agreement")),
            ("output SQNR vs fp32 model, eval set (dB)", ev.get("output_sqnr_db")),
            ("quantization SQNR, int8 vs its float graph (dB)", r.output_sqnr_db),
            ("fp32 latency (ms)", ev.get("fp32_latency_ms")),
            ("int8 latency (ms)", ev.get("int8_latency_ms")),
            ("Edge TPU", r.edgetpu.get("verdict")),
            (
                "drift profile",
                f"{r.profile['file']}: {len(r.profile['features'])} features, "
                f"{r.profile['samples']} samples" if r.profile else None,
            ),
            ("conversion time (s)", r.conversion_seconds),
            ("learned rounding time (s)", _learned_line(r.extra.get("learned_rounding"))),
        ]
    )
    layers = _table(
        ["tensor", "op", "fused", "scale", "zero point", "range lo", "range hi", "SQNR dB"],
        [
            [
                ly["tensor"],
                ly["op"],
                ly.get("fused") or "",
                ly["scale"],
                ly["zero_point"],
                ly["lo"],
                ly["hi"],
                ly.get("sqnr_db"),
            ]
            for ly in r.layers
        ],
        left=3,
    )
    weights = _table(
        ["weight", "node", "shape", "per-channel", "sparsity", "scale min", "scale max"],
        [
            [
                w["name"],
                w["node"],
                "x".join(map(str, w["shape"])),
                "yes" if w["per_channel"] else "no",
                w["sparsity"],
                w["scale_min"],
                w["scale_max"],
            ]
            for w in r.weights
        ],
        left=4,
    )
    floats = (
        _table(
            ["node", "op", "why it stays float"],
            [[f["node"], f["op"], f["reason"]] for f in r.float_ops],
            left=3,
        )
        if r.float_ops
        else "<p>Every node is int8.</p>"
    )
    base = _kv(sorted(r.base.items())) if r.base else "<p>No --base.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgeship report: {html.escape(r.model)}</title>"
        f"<style>{_CSS}</style></head><body><h1>edgeship conversion: {html.escape(r.model)}</h1>"
        f"{summary}{_compat_html(r)}<h2>Per-layer SQNR</h2>{_layer_note(r)}{sqnr_svg(r.layers)}<h2>Activations</h2>{layers}"
        f"<h2>Weights</h2>{weights}<h2>Float ops</h2>{floats}<h2>Delta-friendly quantization (--base)</h2>{base}"
        f"<h2>Graph optimizations</h2><ul>{''.join(f'<li>{html.escape(x)}</li>' for x in r.optimizations)}</ul>"
        f"{_steps_html(r)}"
        f'<h2>Verdict</h2><p id="verdict">{html.escape(verdict_line(r))}</p>'
        "</body></html>\n"
    )


# ---------------------------------------------------------------- verdict
def _learned_line(lr: dict[str, Any] | None) -> str | None:
    if not lr:
        return None
    return (f"{lr['seconds']:.2f} (Gram matrices {lr['gram_seconds']:.2f} beside "
            f"calibration, {lr.get('gram_wait_seconds', lr['gram_seconds']):.2f} waited for; "
            f"rounding {lr['rounding_seconds']:.2f}; {lr['weights']} weights)")


def verdict_line(report: Report) -> str:
    """One line: the fidelity reached, against the ``--max-drop`` target when one was set,
    and the accuracy steps that ran (as the guards of converter/_steps.py decided them);
    the CLI summary and report.html end with it."""
    parts = [_fidelity(report)]
    mixed = report.extra.get("mixed_precision")
    if mixed:
        state = "met" if mixed["met"] else "NOT met"
        parts.append(
            f"target --max-drop {mixed['target']:g} points of {mixed['metric']}"
            + (f" on {mixed['measured_on']}" if mixed.get("measured_on") else "")
            + f": {state} at {mixed['drop']:.2f}, {_kept(mixed)}"
        )
    else:
        parts.append("no --max-drop target")
    return "verdict: " + "; ".join(parts) + "; steps: " + ", ".join(steps_ran(report))


def _fidelity(report: Report) -> str:
    e = report.eval
    if not e:
        db = report.output_sqnr_db
        return "output SQNR " + ("–" if db is None else f"{db:.1f} dB") + " on calibration samples"
    text = ""
    if e.get("fp32_accuracy") is not None:
        drop = e["fp32_accuracy"] - e["int8_accuracy"]
        text = (
            f"accuracy {e['int8_accuracy']:.2f}% vs fp32 {e['fp32_accuracy']:.2f}% "
            f"(drop {drop:.2f} points), "
        )
    return text + f"agreement {e['agreement']:.2f}%, output SQNR {e['output_sqnr_db']:.1f} dB"


def _kept(mixed: dict[str, Any]) -> str:
    """How much of the model --max-drop kept float (nodes when the report counts them)."""
    if "float_nodes" in mixed:
        total = mixed["float_nodes"] + mixed.get("int8_nodes", 0)
        return f"{mixed['float_nodes']} of {total} nodes kept float"
    return f"{len(mixed['kept_float'])} layer(s) kept float"


def steps_ran(report: Report) -> list[str]:
    """The accuracy steps that ran, in pipeline order."""
    opts, steps = report.options, report.extra.get("steps")
    ran = []
    if opts.get("prune"):
        ran.append(f"pruning {opts['prune']:g}")
    if steps is not None:
        if steps.get("equalize", "off") != "off":
            ran.append(f"equalization ({steps['equalize']})")
        if steps.get("bias_correction"):
            ran.append("bias correction")
    else:  # a report written before the guards: the options say it
        ran += [n for k, n in (("equalize", "equalization"), ("bias_correction", "bias correction"))
                if opts.get(k)]
    # absent (a report written before it was a default): off; None: the default, on
    if opts.get("learned_rounding", False) is not False and not report.base:
        ran.append("learned rounding")
    ran.append(f"{opts.get('calibration', 'minmax')} ranges")
    mixed = report.extra.get("mixed_precision")
    if mixed and mixed.get("kept_float"):
        ran.append(f"mixed precision ({len(mixed['kept_float'])} float)")
    return ran


def _steps_html(r: Report) -> str:
    """Why each guarded step ran or not, and --max-drop's ranking and what it kept."""
    out = []
    notes = (r.extra.get("steps") or {}).get("notes") or {}
    if notes:
        out.append("<h2>Accuracy steps</h2>")
        out.append(_kv([(k.replace("_", " "), v) for k, v in sorted(notes.items())]))
    mixed = r.extra.get("mixed_precision")
    if mixed:
        out.append(f"<h2>Mixed precision (--max-drop {mixed['target']:g})</h2>")
        out.append(
            f"<p>{html.escape(mixed.get('metric_detail') or mixed['metric'])}, measured on "
            f"{html.escape(mixed.get('measured_on') or '?')}: drop all-int8 "
            f"{mixed['drop_all_int8']:.2f}, reached "
            f"{mixed['drop']:.2f}; kept float: {html.escape(', '.join(mixed['kept_float']) or 'none')}"
            + (f" ({html.escape(', '.join(f'{n} {op}' for op, n in mixed['kept_ops'].items()))})"
               if mixed.get("kept_ops") else "")
            + "</p>"
        )
        ranking = mixed.get("ranking") or []
        if ranking:
            out.append(_table(
                ["rank", "node", "op", "SQNR dB (only it int8)", "output noise (only it int8)",
                 "kept float"],
                [[i + 1, row["node"], row["op"], row["sqnr_db"], row["added_noise"],
                  "yes" if row["node"] in mixed["kept_float"] else ""]
                 for i, row in enumerate(ranking)],
                left=3,
            ))
    return "".join(out)
