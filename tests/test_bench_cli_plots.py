"""The charts of ``hw-bench/_plots.py``: each known benchmark's own chart draws from a
result shaped like the one its script writes; real results in hw-bench/results all plot."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plots() -> Any:
    spec = importlib.util.spec_from_file_location("hw_plots", ROOT / "hw-bench" / "_plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MACHINE = {"cpu": "Test CPU", "cpus": 2}
SAMPLES: dict[str, dict[str, Any]] = {
    "converter": {"rows": [
        {"model": m, "fp32_acc": 99.5, "ort_int8_acc": 99.0, "edgeship_int8_acc": 99.25,
         "ort_size_ratio": 0.69, "edgeship_size_ratio": 0.4, "ort_convert_s": 0.07,
         "edgeship_convert_s": 0.04, "ort_int8_ms": 0.037, "edgeship_int8_ms": 0.03}
        for m in ("cnn", "mlp")]},
    "onnx2tf": {"rows": [
        {"model": "cnn", "tool": "edgeship", "status": "ok", "bytes": 12672, "accuracy": 99.25,
         "seconds": 1.2},
        {"model": "cnn", "tool": "onnx2tf per-channel", "status": "failed: no TFLite",
         "seconds": 2.6}]},
    "runtimes": {"rows": [
        {"model": "cnn", "threads": 1, "fp32_onnx_p50_ms": 0.012, "int8_onnx_p50_ms": 0.03,
         "int8_tflite_p50_ms": 0.005, "fp32_onnx_bytes": 29591, "int8_onnx_bytes": 11789,
         "int8_tflite_bytes": 12672},
        {"model": "cnn", "threads": 2, "fp32_onnx_p50_ms": 0.013, "int8_onnx_p50_ms": 0.031,
         "int8_tflite_p50_ms": 0.007}]},
    "ota_size": {"rows": [
        {"update": "head-only", "format": "tflite", "full_bytes": 350768, "zstd_bytes": 296853,
         "bsdiff4_bytes": 2450, "edgeship_bytes": 2313, "edgeship_base_bytes": 2293}]},
    "fleet": {"rows": [
        {"devices": n, "wall_s": 2 + 0.05 * n, "devices_s": 0.05 * n, "setup_s": 1.0}
        for n in (100, 500, 1000)]},
    "agent": {
        "latency": [{"model": "mlp", "inprocess_p50_ms": 0.01, "api_p50_ms": 0.3,
                     "api_p99_ms": 0.6}],
        "footprint": {"agent_rss_mb": 90.0, "bare_rss_mb": 80.0, "agent_first_answer_s": 0.8,
                      "bare_first_answer_s": 0.6},
        "update": {"delta_bytes": 900_000, "artifact_bytes": 1_100_000, "download_s": 1.2,
                   "verify_install_s": 0.1, "health_switch_s": 0.5}},
    "examples": {"rows": [
        {"example": "vibration-anomaly", "input": "20 features", "model": m, "bytes": 1800,
         "input_p50_ms": 0.15, "predict_p50_ms": 0.02, "loop_p50_ms": 0.17}
        for m in ("fp32 onnx", "int8 tflite")]},
    "fallback": {"results": {
        "local": {"p50_ms": 0.02, "p99_ms": 0.06},
        "fallback_cloud": {"p50_ms": 0.5, "p99_ms": 2.0}}},
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_known_bench_gets_its_own_chart(name: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    plots = _plots()
    assert name in plots.PLOTTERS
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"bench": name, "machine": MACHINE, **SAMPLES[name]}))
    png = plots.plot_one(path, tmp_path / "png")
    assert png == tmp_path / "png" / f"{name}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert "generic chart instead" not in capsys.readouterr().err


def test_committed_results_all_plot(tmp_path: Path) -> None:
    """Whatever results the benchmarks committed, each becomes a PNG (own or generic chart)."""
    results = sorted((ROOT / "hw-bench" / "results").glob("*.json"))
    for path in results:
        shutil.copy(path, tmp_path / path.name)
    written, problems = _plots().plot_all(tmp_path)
    assert problems == []
    assert sorted(p.stem for p in written) == sorted(p.stem for p in results)


def test_time_vs_n_chart_for_sized_rows(tmp_path: Path) -> None:
    plots = _plots()
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"bench": "scale", "rows": [
        {"n": n, "mode": m, "total_s": 0.1 * n} for n in (1, 10) for m in ("a", "b")]}))
    plots.PLOTTERS["scale"] = plots.plot_time_vs_n
    assert plots.plot_one(path, tmp_path).read_bytes()[:8] == PNG_MAGIC


def test_units_and_numbers_helpers() -> None:
    plots = _plots()
    assert plots.unit_of("results.local.p50_ms") == "ms"
    assert plots.unit_of("rows[cnn].int8_tflite_bytes") == "bytes"
    assert plots.unit_of("rollout_s") == "s" and plots.unit_of("accuracy") is None
    leaves = dict(plots.numeric_leaves({"machine": {"cpus": 2}, "ok": True,
                                        "rows": [{"model": "a", "x_ms": 1}], "y": 2.5}))
    assert leaves == {"rows[a].x_ms": 1.0, "y": 2.5}
    assert [plots.human_bytes(n) for n in (999, 12672, 1137937)] == ["999 B", "12.7 KB",
                                                                      "1.14 MB"]


def _report() -> Any:
    spec = importlib.util.spec_from_file_location("hw_report", ROOT / "hw-bench" / "_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_has_every_result_with_tables_machine_and_plot(tmp_path: Path) -> None:
    for name in ("fallback", "ota_size"):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"bench": name, "machine": {**MACHINE, "python": "3.11"}, **SAMPLES[name],
             "summary": {"ratio": 2.5, "ok": True}}))
    (tmp_path / "ota_size.png").write_bytes(PNG_MAGIC)
    (tmp_path / "broken.json").write_text("[1, 2]")
    path, problems = _report().write_report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "README.md" and problems == ["broken.json: not a JSON object"]
    assert "## fallback\n" in text and "## ota_size\n" in text
    assert "`edgeship bench ota_size` — Test CPU, 2 cpus, ?, Python 3.11" in text
    assert "![ota_size](ota_size.png)" in text and "![fallback]" not in text
    assert "| update | format | full_bytes | zstd_bytes |" in text  # rows -> table
    assert "| local | 0.02 | 0.06 |" in text  # a mapping of mappings: one row per key
    assert "| ratio | 2.5 |" in text and "| ok | yes |" in text
