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
    if not groups:
        raise ValueError("no numbers with a unit (*_ms, *bytes, *_s) in the result")
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


PLOTTERS: dict[str, Plotter] = {
    "fallback": plot_fallback,
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
        fig.tight_layout()
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
