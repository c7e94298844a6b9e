"""Issue 15: the report and the CLI summary say how long learned rounding took (its Gram
run and the rounding), apart from the rest of the conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli

FIX = Path(__file__).parent / "fixtures"


def _convert(out: Path, *extra: str) -> tuple[dict, str]:
    res = run_cli(FIX / "cnn.onnx", "--calib", FIX / "cnn_calib.npz", "-o", out, *extra)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "report.json").read_text()), res.stdout


def test_learned_rounding_time_in_report_and_summary(tmp_path: Path) -> None:
    report, stdout = _convert(tmp_path / "lr")
    lr = report["learned_rounding"]
    assert lr["weights"] > 0 and lr["gram_seconds"] > 0 and lr["rounding_seconds"] > 0
    # the Gram run overlaps calibration: the conversion waited for part of it at most
    assert 0 <= lr["gram_wait_seconds"] <= lr["gram_seconds"] + 0.01
    assert abs(lr["seconds"] - lr["gram_wait_seconds"] - lr["rounding_seconds"]) < 0.01
    assert lr["seconds"] < report["conversion_seconds"]
    line = next(ln for ln in stdout.splitlines() if ln.strip().startswith("time"))
    shown = re.search(r"learned rounding ([0-9.]+) s of it", line)
    assert shown and abs(float(shown.group(1)) - lr["seconds"]) <= 0.05 + 1e-9, line
    assert "learned rounding time" in (tmp_path / "lr" / "report.html").read_text()


def test_no_learned_rounding_reports_no_time(tmp_path: Path) -> None:
    report, stdout = _convert(tmp_path / "near", "--no-learned-rounding")
    assert "learned_rounding" not in report
    assert "learned rounding" not in next(
        ln for ln in stdout.splitlines() if ln.strip().startswith("time"))
