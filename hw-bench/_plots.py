"""PNG plots of whatever ``hw-bench/results/*.json`` exist (used by ``edgeship bench``).

One plot per result file, ``<name>.png`` next to it. A bench with a plotter of its own in
``PLOTTERS`` (keyed by its name) gets a chart made for its numbers; any other result, or
one whose format the plotter does not recognise, gets the generic chart: every numeric
leaf of the document grouped by unit (``*_ms``, ``*bytes``, ``*_s``). A missing result is
simply not plotted. matplotlib is imported here only, and only when plotting.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MAX_RESULT_BYTES = 16 << 20  # a result JSON is a summary, not a data dump
MAX_BARS = 40

Plotter = Callable[[Mapping[str, Any], Any], None]  # (result doc, matplotlib Figure)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(
            "plots need matplotlib: pip install 'edgeship[bench]' (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- data helpers
def numeric_leaves(doc: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted.path, value) of every int/float in ``doc``, bools and machine info left out."""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if key in ("machine", "created", "quick"):
                continue
            yield from numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(doc, list) and len(doc) <= MAX_BARS:
        for i, value in enumerate(doc):
            label = value.get("name") or value.get("model") if isinstance(value, Mapping) else None
            yield from numeric_leaves(value, f"{prefix}[{label or i}]")
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        yield prefix, float(doc)


def unit_of(path: str) -> str | None:
    leaf = path.rsplit(".", 1)[-1].lower()
    if leaf.endswith("_ms") or "_ms_" in leaf:
        return "ms"
    if "bytes" in leaf:
        return "bytes"
    if leaf.endswith(("_s", "_seconds")) or "_s_" in leaf:
        return "s"
    return None


def group_by_unit(doc: Mapping[str, Any]) -> dict[str, list[tuple[str, float]]]:
    groups: dict[str, list[tuple[str, float]]] = {}
    for path, value in numeric_leaves(doc):
        unit = unit_of(path)
        if unit is not None:
            groups.setdefault(unit, []).append((path, value))
    return groups


# ----------------------------------------------------------------------------- plotters
def plot_generic(doc: Mapping[str, Any], fig: Any) -> None:
    """Horizontal bars of every timed / sized number, one panel per unit."""
    groups = {u: v[:MAX_BARS] for u, v in group_by_unit(doc).items()}
    if not groups:  # no key says its unit: show every number as it is
        groups = {"value": list(numeric_leaves(doc))[:MAX_BARS]}
    if not groups["value" if "value" in groups else next(iter(groups))]:
        raise ValueError("no numbers in the result")
    tallest = max(len(v) for v in groups.values())
    fig.set_size_inches(10, 1.5 + 0.28 * tallest * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (unit, items) in zip(axes, sorted(groups.items()), strict=True):
        labels = [p for p, _ in items]
        ax.barh(range(len(items)), [v for _, v in items], color="#4c72b0")
        ax.set_yticks(range(len(items)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        if unit in ("ms", "bytes") and max(v for _, v in items) > 50 * max(
            min(v for _, v in items), 1e-9
        ):
            ax.set_xscale("log")


def _num(value: Any) -> float:
    """A plottable number; missing or failed values become NaN (no bar drawn)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return str(n)


def grouped_bars(ax: Any, groups: list[str], series: dict[str, list[Any]], ylabel: str,
                 *, log: bool = False, fmt: str | Callable[[float], str] = "{:.3g}") -> None:
    """One cluster of bars per group, one bar per series, each labelled with its value."""
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [_num(v) for v in values]
        bars = ax.bar(xs, ys, width=width, label=label)
        for bar, y in zip(bars, ys, strict=True):
            if y == y:  # not NaN
                text = fmt(y) if callable(fmt) else fmt.format(y)
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def _rows(doc: Mapping[str, Any], key: str = "rows") -> list[Mapping[str, Any]]:
    rows = doc[key]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"'{key}' is not a list of rows")
    return rows


def plot_converter(doc: Mapping[str, Any], fig: Any) -> None:
    """edgeship vs onnxruntime quantization: accuracy, size, conversion time, latency."""
    rows = _rows(doc)
    models = [str(r["model"]) for r in rows]
    fig.set_size_inches(12, 7)
    (a, b), (c, d) = fig.subplots(2, 2)
    grouped_bars(a, models, {"fp32": [r.get("fp32_acc") for r in rows],
                             "onnxruntime int8": [r.get("ort_int8_acc") for r in rows],
                             "edgeship int8": [r.get("edgeship_int8_acc") for r in rows]},
                 "accuracy %", fmt="{:.2f}")
    a.set_ylim(min(_num(r.get("fp32_acc")) for r in rows) - 5, 101)
    grouped_bars(b, models, {"onnxruntime": [r.get("ort_size_ratio") for r in rows],
                             "edgeship": [r.get("edgeship_size_ratio") for r in rows]},
                 "int8 size / fp32 size")
    grouped_bars(c, models, {"onnxruntime": [r.get("ort_convert_s") for r in rows],
                             "edgeship": [r.get("edgeship_convert_s") for r in rows]},
                 "conversion time, s")
    grouped_bars(d, models, {"onnxruntime": [r.get("ort_int8_ms") for r in rows],
                             "edgeship": [r.get("edgeship_int8_ms") for r in rows]},
                 "int8 latency p50, ms", log=True)


def plot_onnx2tf(doc: Mapping[str, Any], fig: Any) -> None:
    """edgeship vs onnx2tf full-integer TFLite: size, accuracy, time; failures marked."""
    rows = _rows(doc)
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    tools = list(dict.fromkeys(str(r["tool"]) for r in rows))
    by = {(str(r["model"]), str(r["tool"])): r for r in rows}
    fig.set_size_inches(13, 4.5)
    axes = fig.subplots(1, 3)
    for ax, key, label, fmt in ((axes[0], "bytes", "TFLite size (log)", human_bytes),
                                (axes[1], "accuracy", "accuracy %", "{:.3g}"),
                                (axes[2], "seconds", "conversion time, s", "{:.3g}")):
        grouped_bars(ax, models, {t: [by.get((m, t), {}).get(key) for m in models]
                                  for t in tools}, label, log=key == "bytes", fmt=fmt)
    axes[1].set_ylim(90, 101)
    failed = [f"{m} / {t}: {by[(m, t)].get('status')}" for m in models for t in tools
              if (m, t) in by and not str(by[(m, t)].get("status", "")).startswith("ok")]
    if failed:
        note = "not ok: " + "; ".join(failed)
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(note, 180)), fontsize=7)


def plot_runtimes(doc: Mapping[str, Any], fig: Any) -> None:
    """Latency of fp32 ONNX, INT8 ONNX and INT8 TFLite per model and thread count."""
    rows = _rows(doc)
    groups = [f"{r['model']} t{r.get('threads', '?')}" for r in rows]
    fig.set_size_inches(12, 4.5)
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    grouped_bars(a, groups, {"fp32 onnx (ORT)": [r.get("fp32_onnx_p50_ms") for r in rows],
                             "int8 onnx (ORT)": [r.get("int8_onnx_p50_ms") for r in rows],
                             "int8 tflite (LiteRT)": [r.get("int8_tflite_p50_ms") for r in rows]},
                 "p50 latency, ms (log)", log=True)
    sized = [r for r in rows if "fp32_onnx_bytes" in r]
    grouped_bars(b, [str(r["model"]) for r in sized],
                 {k: [r.get(f"{k}_bytes") for r in sized]
                  for k in ("fp32_onnx", "int8_onnx", "int8_tflite")},
                 "model size (log)", log=True, fmt=human_bytes)


def plot_ota_size(doc: Mapping[str, Any], fig: Any) -> None:
    """Update payload per kind of update: full, zstd, bsdiff4, edgeship delta (+ --base)."""
    rows = _rows(doc)
    groups = [f"{r['update']}\n{r.get('format', '')}" for r in rows]
    keys = [("full_bytes", "full artifact"), ("zstd_bytes", "zstd"),
            ("bsdiff4_bytes", "bsdiff4"), ("edgeship_bytes", "edgeship delta"),
            ("edgeship_base_bytes", "edgeship delta, --base")]
    fig.set_size_inches(12, 4.8)
    ax = fig.subplots()
    grouped_bars(ax, groups, {label: [r.get(k) for r in rows] for k, label in keys
                              if any(k in r for r in rows)}, "bytes sent (log)", log=True,
                 fmt=human_bytes)


def plot_time_vs_n(doc: Mapping[str, Any], fig: Any) -> None:
    """Rows measured at growing sizes N (devices, servers...): every time column vs N."""
    rows = _rows(doc)
    n_key = next(k for k in ("devices", "n", "N", "fleet_size", "size") if k in rows[0])
    times = [k for k in rows[0] if unit_of(k) in ("s", "ms") and k != n_key]
    if not times:
        raise ValueError("no *_s / *_ms columns to plot against N")
    fig.set_size_inches(9, 4.8)
    ax = fig.subplots()
    for series in sorted({str(r.get("mode", r.get("case", ""))) for r in rows}):
        part = [r for r in rows if str(r.get("mode", r.get("case", ""))) == series]
        for key in times:
            pts = sorted((_num(r.get(n_key)), _num(r.get(key))) for r in part)
            label = f"{series} {key}".strip()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(n_key)
    ax.set_ylabel("seconds" if all(unit_of(k) == "s" for k in times) else "time")
    ax.set_xscale("log")
    ax.legend(fontsize=7)


def plot_fleet(doc: Mapping[str, Any], fig: Any) -> None:
    """Fleet update time vs number of devices, with the linear-growth line from the
    smallest fleet (below it = better than linear)."""
    rows = sorted(_rows(doc), key=lambda r: _num(r["devices"]))
    ns = [_num(r["devices"]) for r in rows]
    fig.set_size_inches(9, 4.8)
    ax = fig.subplots()
    for key, label in (("wall_s", "fleet push -> last device committed"),
                       ("devices_s", "offer -> last committed (devices' side)")):
        ys = [_num(r.get(key)) for r in rows]
        if any(y == y for y in ys):
            ax.plot(ns, ys, marker="o", label=label)
            for n, y in zip(ns, ys, strict=True):
                if y == y:
                    ax.annotate(f"{y:.1f} s", (n, y), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
    first = _num(rows[0].get("wall_s"))
    if first == first and ns[0] > 0:
        ax.plot(ns, [first * n / ns[0] for n in ns], "--", color="grey", label="linear growth")
    ax.set_xlabel("devices updated at once")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def plot_agent(doc: Mapping[str, Any], fig: Any) -> None:
    """The agent: local API vs in-process latency, footprint vs a bare runtime process,
    and where an OTA update's time goes."""
    rows = _rows(doc, "latency")
    foot, update = doc["footprint"], doc["update"]
    fig.set_size_inches(14, 4.5)
    a, b, c = fig.subplots(1, 3)
    grouped_bars(a, [str(r["model"]) for r in rows],
                 {"in-process p50": [r.get("inprocess_p50_ms") for r in rows],
                  "local API p50": [r.get("api_p50_ms") for r in rows],
                  "local API p99": [r.get("api_p99_ms") for r in rows]},
                 "latency, ms (log)", log=True)
    grouped_bars(b, ["RSS, MB", "first answer, s"],
                 {"agent": [foot.get("agent_rss_mb"), foot.get("agent_first_answer_s")],
                  "bare runtime": [foot.get("bare_rss_mb"), foot.get("bare_first_answer_s")]},
                 "MB | s", log=True)
    phases = [("download_s", "download"), ("verify_install_s", "verify + install"),
              ("health_switch_s", "health check + switch")]
    bottom = 0.0
    for key, label in phases:
        value = _num(update.get(key))
        if value == value:
            c.bar(["OTA update"], [value], bottom=bottom, label=f"{label} {value:.2f} s")
            bottom += value
    c.set_ylabel("seconds", fontsize=8)
    c.set_ylim(0, max(bottom, 1e-3) * 1.45)  # headroom: the legend sits above the bar
    c.set_title(f"delta {human_bytes(_num(update.get('delta_bytes')))} of "
                f"{human_bytes(_num(update.get('artifact_bytes')))}", fontsize=8)
    c.legend(fontsize=7)


def plot_examples(doc: Mapping[str, Any], fig: Any) -> None:
    """Firmware examples: per input, the input side (decode, features) stacked under the
    model's predict, for each artifact form."""
    rows = _rows(doc)
    labels = [f"{r['example']}\n{r['model']}" for r in rows]
    side = [_num(r.get("input_p50_ms")) for r in rows]
    infer = [_num(r.get("predict_p50_ms")) for r in rows]
    fig.set_size_inches(11, 4.8)
    ax = fig.subplots()
    ax.bar(labels, side, label="input side (decode / features)", color="#8c8c8c")
    ax.bar(labels, infer, bottom=side, label="Model.predict", color="#4c72b0")
    for i, (a, b) in enumerate(zip(side, infer, strict=True)):
        ax.annotate(f"{a + b:.3g} ms", (i, a + b), ha="center", va="bottom", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("ms per input, p50")
    ax.legend(fontsize=7)


def plot_fallback(doc: Mapping[str, Any], fig: Any) -> None:
    """Latency of local, wrapped, cloud and cloud-down answers (p50 and p99, log scale)."""
    results = doc["results"]
    modes = [m for m in results if "p50_ms" in results[m]]
    p50 = [results[m]["p50_ms"] for m in modes]
    p99 = [results[m]["p99_ms"] for m in modes]
    fig.set_size_inches(9, 4.5)
    ax = fig.subplots()
    ys = range(len(modes))
    ax.barh([y - 0.2 for y in ys], p50, height=0.4, label="p50", color="#4c72b0")
    ax.barh([y + 0.2 for y in ys], p99, height=0.4, label="p99", color="#dd8452")
    ax.set_yticks(list(ys), modes)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency per answer, ms (log)")
    ax.legend()


def plot_device_features(doc: Mapping[str, Any], fig: Any) -> None:
    """Cost ratios on the device: encrypted load, drift tap and shadow at the local API."""
    fig.set_size_inches(10, 4.5)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    loads = _rows(doc, "load")
    grouped_bars(left, [str(r["model"]).replace(" ", "\n", 1) for r in loads],
                 {"encrypted / plaintext load": [r["load_ratio"] for r in loads]},
                 "ratio", fmt="{:.2f}x")
    left.axhline(1.0, color="grey", linewidth=0.8)
    lat = _rows(doc, "latency")
    series = {label: [r.get(key) for r in lat] for label, key in (
        ("drift (default, <= 100/s)", "drift_p50_ratio"),
        ("drift (every answer)", "drift_all_p50_ratio"),
        ("shadow (default, 10%)", "shadow_p50_ratio"),
        ("shadow (every answer)", "shadow_all_p50_ratio"))}
    grouped_bars(right, [str(r["model"]) for r in lat], series, "p50 ratio to no tap",
                 fmt="{:.3f}")
    targets = doc.get("targets") or {}
    for key, color in (("drift_p50_ratio", "#4c72b0"), ("shadow_p50_ratio", "#dd8452")):
        if key in targets:
            right.axhline(targets[key], color=color, linestyle="--", linewidth=0.8)
    right.set_ylim(0.8, max(1.2, *(_num(v) for vs in series.values() for v in vs
                                    if _num(v) == _num(v))) * 1.05)


def plot_realworld(doc: Mapping[str, Any], fig: Any) -> None:
    """Real models: task metric vs fp32, peak RSS and INT8/fp32 latency per tool; the
    models edgeship wrote no file for are named under the chart."""
    tools = [t for t in ("edgeship", "ort", "nncf") if isinstance(doc.get(t), list) and doc[t]]
    if not tools:
        raise ValueError("no edgeship/ort/nncf rows")
    by = {(str(r["model"]), t): r for t in tools for r in _rows(doc, t)}
    models = list(dict.fromkeys(m for m, _ in by))
    fig.set_size_inches(14, 10)
    axes = fig.subplots(3, 1)
    for ax, key, label, log in ((axes[0], "metric", "task metric vs fp32, %", False),
                                (axes[1], "peak_rss_mb", "peak RSS of the conversion, MB (log)", True),
                                (axes[2], "latency_ratio", "INT8 / fp32 latency (onnxruntime)", False)):
        # a run that wrote no file has no memory figure worth a bar (it stopped early)
        grouped_bars(ax, models, {t: [by.get((m, t), {}).get(key)
                                      if by.get((m, t), {}).get("formats", "-") != "-" else None
                                      for m in models] for t in tools},
                     label, log=log, fmt="{:.3g}")
        ax.tick_params(axis="x", labelrotation=20)
    axes[1].axhline(2048, color="red", linestyle="--", linewidth=0.8)
    axes[2].axhline(1.0, color="red", linestyle="--", linewidth=0.8)
    nothing = [m for m in models if by.get((m, "edgeship"), {}).get("formats", "-") == "-"]
    if nothing:
        note = "edgeship wrote no file for: " + ", ".join(nothing)
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(note, 180)), fontsize=7)


def plot_dashboard(doc: Mapping[str, Any], fig: Any) -> None:
    """Dashboard pages in headless chromium: time to first byte, DOM ready, a live update."""
    rows = _rows(doc)
    fig.set_size_inches(11, 4.2)
    ax = fig.subplots(1, 1)
    grouped_bars(ax, [str(r["page"]).replace(" (", "\n(").replace(" by ", "\nby ") for r in rows],
                 {"first byte": [r.get("ttfb_ms") for r in rows],
                  "DOM ready": [r.get("dom_ready_ms") for r in rows],
                  "live update (fragment)": [r.get("fragment_ms") for r in rows]},
                 f"ms, median of {doc.get('repeat', '?')} loads", fmt="{:.0f}")
    ax.axhline(1000, color="#b42318", linestyle="--", linewidth=1)
    ax.set_title(f"fleet dashboard, {doc.get('devices', '?')} devices (target: DOM ready "
                 "< 1000 ms, dashed)", fontsize=9)


PLOTTERS: dict[str, Plotter] = {
    "dashboard": plot_dashboard,
    "device_features": plot_device_features,
    "converter": plot_converter,
    "onnx2tf": plot_onnx2tf,
    "runtimes": plot_runtimes,
    "ota_size": plot_ota_size,
    "fleet": plot_fleet,
    "agent": plot_agent,
    "examples": plot_examples,
    "fallback": plot_fallback,
    "realworld": plot_realworld,
}


# ----------------------------------------------------------------------------- files
def load_result(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise ValueError(f"{path} is larger than {MAX_RESULT_BYTES} bytes")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a result must be a JSON object")
    return doc


def _caption(doc: Mapping[str, Any]) -> str:
    machine = doc.get("machine") or {}
    cpu = machine.get("cpu") or machine.get("platform") or "?"
    return f"{cpu}, {machine.get('cpus', '?')} cpus" + ("  (quick run)" if doc.get("quick") else "")


def plot_one(path: Path, out_dir: Path) -> Path:
    """Plot one result file; the bench's own plotter first, the generic chart if it fails."""
    plt = _pyplot()
    doc = load_result(path)
    name = str(doc.get("bench") or path.stem)
    plotter = PLOTTERS.get(name) or PLOTTERS.get(path.stem)
    fig = plt.figure()
    try:
        try:
            if plotter is None:
                raise LookupError(name)
            plotter(doc, fig)
        except (LookupError, TypeError, ValueError, ZeroDivisionError) as exc:
            if plotter is not None:
                print(f"plot {name}: own chart failed ({type(exc).__name__}: {exc}); "
                      "generic chart instead", file=sys.stderr)
            fig.clear()
            plot_generic(doc, fig)
        fig.suptitle(f"{name} — {_caption(doc)}", fontsize=9)
        footer = max((t.get_text().count("\n") + 1 for t in fig.texts), default=0)
        fig.tight_layout(rect=(0, 0.035 * footer, 1, 1))  # keep a plotter's footnote clear
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{path.stem}.png"
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out


def plot_all(results: Path, out_dir: Path | None = None,
             names: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Plot every ``results/*.json`` (or only ``names``); returns (PNGs, problems)."""
    written: list[Path] = []
    problems: list[str] = []
    for path in sorted(results.glob("*.json")):
        if names and path.stem not in names:
            continue
        try:
            written.append(plot_one(path, out_dir or results))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path.name}: {exc}")
    return written, problems
