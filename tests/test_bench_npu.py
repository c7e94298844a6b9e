"""hw-bench/bench_npu.py's table from a real conversion's report: one Edge TPU row and one
row per target, with PASS/FAIL on issue 22's targets (Vela >= 95% of MACs on the NPU;
OpenVINO on the INT8 path and not slower than onnxruntime)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from edgeship.converter import ConvertOptions, convert

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def _bench():
    if str(ROOT / "hw-bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "hw-bench"))
    return importlib.import_module("bench_npu")


def test_rows_of_a_real_report(tmp_path: Path) -> None:
    opts = ConvertOptions(formats=("onnx", "tflite"), targets=("ethos-u55-128", "openvino-cpu"))
    report = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "out", opts).to_dict()
    rows = {r["target"]: r for r in _bench().rows_of("cnn", "", report)}
    assert list(rows) == ["edgetpu (rules)", "ethos-u55-128", "openvino-cpu"]
    vela = rows["ethos-u55-128"]
    assert vela["met"] == "PASS" and vela["macs_on_acc"] == "100.0%"
    assert vela["est_inf_s"] == round(report["targets"]["ethos-u55-128"]["inferences_per_second"], 1)
    ov = rows["openvino-cpu"]
    assert ov["int8_path"] is True
    assert ov["met"] == ("PASS" if ov["ov_speedup"] >= 1.0 else "FAIL")
    # a target that was not compiled is a FAIL row that says why
    report["targets"]["ethos-u55-128"] = {"compiled": False, "error": "Vela refused the model"}
    rows = {r["target"]: r for r in _bench().rows_of("cnn", "", report)}
    assert rows["ethos-u55-128"]["met"] == "FAIL" and "Vela refused" in rows["ethos-u55-128"]["cpu_ops"]
