"""Honest exit and the report (issue 14): a requested format that cannot be written
exits 2 naming the op and node, OUT/ keeps the INT8 ONNX and a report saying why; sizes
count external data; the per-layer chart has axis labels and layer names."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from edgeship.converter import ConvertOptions, FormatsNotWritten, convert
from edgeship.converter._load import read_model
from edgeship.converter._report import sqnr_svg
from edgeship.converter._sizes import fp32_disk_bytes
from onnx import TensorProto, helper, numpy_helper

from edgeship._errors import ConversionError

FIX = Path(__file__).parent / "fixtures"
SVG = "{http://www.w3.org/2000/svg}"


def atan_model(tmp: Path) -> tuple[Path, Path]:
    """Conv -> Atan -> GlobalAveragePool: Atan has no int8 kernel anywhere, so it stays
    float and the fully-integer TFLite writer must refuse the model at node 'atan'."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, 4, 3, 3], rng.normal(size=144).astype(np.float32)
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Atan", ["c"], ["t"], name="atan"),
        helper.make_node("GlobalAveragePool", ["t"], ["y"], name="gap"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, tmp / "m.onnx")
    np.savez(tmp / "c.npz", x=rng.normal(size=(8, 4, 6, 6)).astype(np.float32))
    return tmp / "m.onnx", tmp / "c.npz"


@pytest.mark.parametrize("fmt", [None, "onnx,tflite"])
def test_tflite_not_written_exits_2_and_keeps_the_onnx(tmp_path: Path, fmt: str | None) -> None:
    model, calib = atan_model(tmp_path)
    out = tmp_path / "o"
    res = run_cli(model, "--calib", calib, "-o", out, *(["--format", fmt] if fmt else []))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: TFLite not written: Atan at node 'atan': ")
    assert f"the INT8 ONNX is in {out}/; pass --format onnx to ask for ONNX only" in lines[0]
    assert (out / "model.int8.onnx").is_file() and not (out / "model.int8.tflite").exists()
    report = json.loads((out / "report.json").read_text())
    why = report["formats"]["not_written"]["tflite"]
    assert (why["op"], why["node"]) == ("Atan", "atan") and why["reason"]
    assert report["formats"]["written"] == ["onnx"]
    assert report["formats"]["requested"] == ["onnx", "tflite"]
    assert "wrote" in res.stdout and "(onnx)" in res.stdout
    assert "TFLite not written: Atan at node 'atan'" in res.stdout
    assert "TFLite not written" in (out / "report.html").read_text()


def test_format_onnx_only_exits_0(tmp_path: Path) -> None:
    model, calib = atan_model(tmp_path)
    res = run_cli(model, "--calib", calib, "-o", tmp_path / "o", "--format", "onnx", "-q")
    assert res.returncode == 0 and res.stderr == "" and res.stdout == ""
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["formats"] == {"requested": ["onnx"], "written": ["onnx"], "not_written": {}}


def test_quiet_prints_only_the_error_line(tmp_path: Path) -> None:
    model, calib = atan_model(tmp_path)
    res = run_cli(model, "--calib", calib, "-o", tmp_path / "o", "-q")
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "Atan at node 'atan'" in res.stderr


def test_api_raises_after_writing_or_returns_when_not_strict(tmp_path: Path) -> None:
    model, calib = atan_model(tmp_path)
    both = ConvertOptions(formats=("onnx", "tflite"))
    with pytest.raises(FormatsNotWritten) as caught:
        convert(model, calib, tmp_path / "strict", both)
    exc = caught.value
    assert isinstance(exc, ConversionError) and exc.out_dir == tmp_path / "strict"
    assert exc.not_written["tflite"]["op"] == "Atan"
    assert exc.report.formats["not_written"] == exc.not_written
    assert (tmp_path / "strict" / "model.int8.onnx").is_file()
    lenient = ConvertOptions(formats=("onnx", "tflite"), strict_formats=False)
    report = convert(model, calib, tmp_path / "lenient", lenient)
    assert report.formats is not None and report.formats["not_written"] == exc.not_written
    assert report.tflite is not None and "Atan" in report.tflite["skipped"]


def test_both_formats_written_are_named(tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = run_cli(FIX / "cnn.onnx", "--calib", FIX / "cnn_calib.npz", "-o", out)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}/  (onnx, tflite)" in res.stdout and "not written" not in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["formats"]["written"] == ["onnx", "tflite"]
    assert report["sizes"]["fp32_bytes"] == (FIX / "cnn.onnx").stat().st_size
    assert "fp32_external_files" not in report["sizes"]


# ---------------------------------------------------------------- sizes
def _two_weight_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [  # raw_data: what onnx moves to external files (and what exporters write)
        numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), n)
        for n in ("a", "b")
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "b"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _disk_bytes(path: Path) -> int:
    """fp32 size as the report computes it: the model file plus the external data files
    the loader read."""
    return fp32_disk_bytes(path, read_model(path, max_bytes=1 << 30).external_files)


def test_fp32_size_counts_each_external_data_file_once(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    onnx.save(_two_weight_model(), one / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    data = one / "m.onnx.data"
    assert data.stat().st_size >= 2 * 4096 * 4  # both weights are in it
    expected = (one / "m.onnx").stat().st_size + data.stat().st_size
    assert _disk_bytes(one / "m.onnx") == expected
    assert read_model(one / "m.onnx", max_bytes=1 << 30).external_files == [data.resolve()]

    many = tmp_path / "many"
    many.mkdir()
    onnx.save(_two_weight_model(), many / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=0)
    files = read_model(many / "m.onnx", max_bytes=1 << 30).external_files
    assert sorted(f.name for f in files) == ["a", "b"]
    assert _disk_bytes(many / "m.onnx") == sum(p.stat().st_size for p in many.iterdir())

    inline = tmp_path / "inline.onnx"
    onnx.save(_two_weight_model(), inline)
    assert _disk_bytes(inline) == inline.stat().st_size


# ---------------------------------------------------------------- chart
def _texts(svg: str) -> list[str]:
    root = ET.fromstring(svg.removeprefix('<div style="overflow-x:auto">').removesuffix("</div>"))
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_sqnr_chart_has_axis_labels_and_layer_names() -> None:
    long = "model/backbone/stage3/block2/conv/Conv_output_0"
    layers = [
        {"tensor": "input", "op": "input", "sqnr_db": 42.0},
        {"tensor": "conv1_out", "op": "Conv", "sqnr_db": 25.0},
        {"tensor": long, "op": "Conv", "sqnr_db": 12.5},
        {"tensor": "no_sqnr", "op": "Relu", "sqnr_db": None},
    ]
    svg = sqnr_svg(layers)
    root = ET.fromstring(svg.removeprefix('<div style="overflow-x:auto">').removesuffix("</div>"))
    texts = _texts(svg)
    assert any(t == "SQNR (dB)" for t in texts)
    assert any(t.startswith("layer (quantized tensor") for t in texts)
    labels = [t for t in root.iter(f"{SVG}text") if t.get("class") == "layer"]
    tips = ["".join(t.find(f"{SVG}title").itertext()) for t in labels]
    assert tips == ["input (input): 42.0 dB", "conv1_out (Conv): 25.0 dB", f"{long} (Conv): 12.5 dB"]
    shown = [next(t.itertext()) for t in root.iter(f"{SVG}text") if t.get("class") == "layer"]
    assert shown == ["input", "conv1_out", "…" + long[-27:]]
    assert len(shown[2]) == 28
    bars = list(root.iter(f"{SVG}rect"))
    assert len(bars) == 3 and "12.5 dB" in "".join(bars[2].itertext()) and long in "".join(
        bars[2].itertext()
    )
    assert bars[2].get("fill") == "#c33" and bars[0].get("fill") == "#3a7"


def test_many_layers_widen_the_chart_instead_of_overlapping() -> None:
    layers = [{"tensor": f"t{i}", "op": "Conv", "sqnr_db": 30.0} for i in range(300)]
    root = ET.fromstring(
        sqnr_svg(layers).removeprefix('<div style="overflow-x:auto">').removesuffix("</div>")
    )
    assert float(root.get("width")) >= 300 * 12
    xs = [float(r.get("x")) for r in root.iter(f"{SVG}rect")]
    assert min(b - a for a, b in itertools.pairwise(xs)) >= 12 - 1e-6


def test_report_html_chart_comes_from_a_real_conversion(tmp_path: Path) -> None:
    report = convert(FIX / "cnn.onnx", FIX / "cnn_calib.npz", tmp_path / "o",
                     ConvertOptions(formats=("onnx",)))
    page = (tmp_path / "o" / "report.html").read_text()
    assert "SQNR (dB)" in page and "formats written" in page
    for layer in report.layers:
        assert f">{layer['tensor'][-27:]}" in page or f">{layer['tensor']}<" in page
