"""NPU targets (issue 22): `edgeship convert --target ethos-u*` runs Arm's real Vela compiler
(pip ethos-u-vela, in the test extra) on the fixtures' INT8 TFLite and reports what runs
on the NPU; the registry, --list-targets and the one error for a missing compiler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._compat import advise, compat_rows
from edgeship.converter._targets import TARGETS
from edgeship.converter._tflite_macs import read_ops
from onnx import TensorProto, helper

from edgeship._errors import ConfigError

FIX = Path(__file__).parent / "fixtures"


def run_cli(*args: str | Path, python_prefix: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGESHIP_DEBUG": ""}
    code = f"{python_prefix}from edgeship._cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "convert", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=240,
    )


def fixture_args(name: str, out: Path, *extra: str | Path) -> list[str | Path]:
    return [FIX / f"{name}.onnx", "--calib", FIX / f"{name}_calib.npz", "-o", out, *extra]


def custom_ops(path: Path) -> list[str]:
    """Custom op codes of a TFLite file, read with the flatbuffer schema (a valid file)."""
    data = path.read_bytes()
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(data, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    return [c.CustomCode().decode() for c in codes if c.CustomCode()]


@pytest.fixture(scope="module")
def cnn_u55(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("vela") / "cnn"
    res = run_cli(*fixture_args("cnn", out, "--target", "ethos-u55-128", "--target", "ethos-u85-256"))
    assert res.returncode == 0, res.stderr
    return out, res


def test_cnn_compiles_for_ethos_u55_and_runs_on_the_npu(cnn_u55) -> None:
    out, res = cnn_u55
    artifact = out / "model.int8.ethos-u55-128.tflite"
    assert artifact.is_file() and "ethos-u" in custom_ops(artifact)
    assert "ethos-u" not in custom_ops(out / "model.int8.tflite")  # ours is left as it was
    u55 = json.loads((out / "report.json").read_text())["targets"]["ethos-u55-128"]
    assert u55["compiled"] is True and u55["compiler"].startswith("vela ")
    assert u55["artifact"] == artifact.name
    # every op of the model on the NPU; the float input QUANTIZE / output DEQUANTIZE
    # (float io) are the two Vela leaves on the CPU, listed as edge ops with Vela's reason
    assert u55["op_share"] > 0.9 and u55["mac_share"] > 0.9
    assert u55["ops_on_npu"] == u55["ops_total"] == len(
        [op for op in read_ops((out / "model.int8.tflite").read_bytes()) if not op.edge])
    assert sorted(e["op"] for e in u55["edge_ops"]) == ["DEQUANTIZE", "QUANTIZE"]
    assert all(e["reason"] for e in u55["edge_ops"]) and u55["cpu_ops"] == []
    assert u55["npu_partitions"] == 1 and u55["cut_points"] == []
    assert u55["cycles"] > 0 and u55["clock_hz"] == 500e6
    assert u55["inferences_per_second"] == pytest.approx(u55["clock_hz"] / u55["cycles"], rel=0.01)
    assert u55["sram_bytes"] > 0 and u55["flash_bytes"] > 0
    assert u55["macs_total"] > 100_000
    assert "ethos-u55-128" in res.stdout and "inf/s est." in res.stdout


def test_u85_is_faster_than_u55_and_report_html_has_one_table(cnn_u55) -> None:
    out, _ = cnn_u55
    targets = json.loads((out / "report.json").read_text())["targets"]
    assert targets["ethos-u85-256"]["inferences_per_second"] > targets["ethos-u55-128"]["inferences_per_second"]
    assert "ethos-u" in custom_ops(out / "model.int8.ethos-u85-256.tflite")
    html = (out / "report.html").read_text()
    section = html.split("<h2>Compatibility</h2>")[1].split("<h2>")[0]
    assert section.count("<tr>") == 4  # header, Edge TPU, two Ethos-U targets
    assert "edgetpu" in section and "ethos-u85-256" in section and "inf/s est." in section
    sram = targets["ethos-u55-128"]["sram_bytes"] / 1024
    assert f"SRAM {sram:,.1f} KiB" in section  # the memory column, from Vela's summary


def test_mobilenet_all_ethos_u_targets(tmp_path: Path) -> None:
    names = [n for n, t in TARGETS.items() if t.extra == "vela"]
    args = [a for n in names for a in ("--target", n)]
    res = run_cli(*fixture_args("mobilenet", tmp_path / "m", *args, "-q"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    for name in names:
        result = report["targets"][name]
        assert result["mac_share"] == 1.0 and result["op_share"] == 1.0, name
        assert result["macs_total"] > 10_000_000
        assert "ethos-u" in custom_ops(tmp_path / "m" / f"model.int8.{name}.tflite")
    # more MACs/cycle at the same clock: faster
    assert report["targets"]["ethos-u55-256"]["cycles"] < report["targets"]["ethos-u55-128"]["cycles"]


def gather_model(tmp: Path) -> tuple[Path, Path]:
    """Conv -> Relu -> Gather (channels picked with a repeat: TFLite GATHER) -> Conv -> Relu.
    Vela has no Ethos-U55 GATHER, so it cuts the NPU's work in two around it (a channel
    permutation is written as a 1x1 conv for Vela instead: test_npu_shuffle.py)."""
    rng = np.random.default_rng(0)

    def weight(name: str, shape: list[int]) -> onnx.TensorProto:
        values = 0.3 * rng.normal(size=int(np.prod(shape)))
        return helper.make_tensor(name, TensorProto.FLOAT, shape, values.astype(np.float32))

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Gather", ["r1", "idx"], ["g"], axis=1, name="shuffle"),
        helper.make_node("Conv", ["g", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    idx = helper.make_tensor("idx", TensorProto.INT64, [8], [7, 0, 3, 3, 5, 1, 6, 4])
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [weight("w1", [8, 4, 3, 3]), weight("w2", [8, 8, 1, 1]), idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp / "gather.onnx")
    np.savez(tmp / "calib.npz", x=rng.normal(size=(16, 4, 8, 8)).astype(np.float32))
    return tmp / "gather.onnx", tmp / "calib.npz"


def test_an_op_vela_leaves_on_the_cpu_is_named_with_its_reason_and_cut(tmp_path: Path) -> None:
    model, calib = gather_model(tmp_path)
    opts = ConvertOptions(formats=("onnx", "tflite"), targets=("ethos-u55-128",))
    report = convert(model, calib, tmp_path / "out", opts)
    assert report.targets is not None
    u55 = report.targets["ethos-u55-128"]
    assert [c["op"] for c in u55["cpu_ops"]] == ["GATHER"]
    assert u55["cpu_ops"][0]["reason"] == "Unsupported opType"
    assert u55["ops_on_npu"] == u55["ops_total"] - 1 and u55["op_share"] < 1.0
    assert u55["mac_share"] == 1.0  # both convs are on the NPU
    assert u55["npu_partitions"] == 2 and len(u55["cut_points"]) == 1
    assert "GATHER" in u55["advice"] and "splits" in u55["advice"]
    # the compatibility table: the Edge TPU (by rules) cuts at GATHER and loses the second
    # conv's MACs to the CPU; Vela runs the GATHER alone on the CPU
    rows = {r["target"]: r for r in compat_rows(report.edgetpu, report.targets)}
    assert rows["edgetpu"]["cut points"].startswith("GATHER")
    assert 0 < float(rows["edgetpu"]["MACs on it"].rstrip("%")) < 100.0
    assert rows["ethos-u55-128"]["MACs on it"] == "100.0%"
    assert rows["ethos-u55-128"]["cut points"] == "GATHER 'g'"
    # the compiled file really runs GATHER outside the two ethos-u ops
    ops = [op.op for op in read_ops((tmp_path / "out" / "model.int8.ethos-u55-128.tflite").read_bytes())]
    assert ops.count("ethos-u") == 2 and "GATHER" in ops


def test_a_target_without_its_tflite_is_not_compiled_and_says_why(tmp_path: Path) -> None:
    """Atan stays float: no TFLite, so Vela has nothing to compile; OUT/ and the report
    are still written (strict_formats=False returns the report instead of raising)."""
    from test_convert_formats import atan_model

    model, calib = atan_model(tmp_path)
    opts = ConvertOptions(formats=("onnx", "tflite"), targets=("ethos-u55-128",),
                          strict_formats=False)
    report = convert(model, calib, tmp_path / "out", opts)
    assert report.targets is not None
    result = report.targets["ethos-u55-128"]
    assert result["compiled"] is False and "TFLite was not written" in result["error"]
    assert not (tmp_path / "out" / "model.int8.ethos-u55-128.tflite").exists()
    row = compat_rows(report.edgetpu, report.targets)[-1]
    assert row["on the accelerator"] == "not compiled"


def test_list_targets_needs_no_model() -> None:
    res = run_cli("--list-targets")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == list(TARGETS)
    assert "pip install 'edgeship[vela]' (installed)" in lines[0] and "tflite" in lines[0]
    assert "pip install 'edgeship[openvino]' (installed)" in res.stdout
    hidden = run_cli("--list-targets", python_prefix="import sys; sys.modules['ethosu'] = None; ")
    assert "pip install 'edgeship[vela]' (not installed)" in hidden.stdout.splitlines()[0]


@pytest.mark.parametrize(("args", "words"), [
    (("--target", "ethos-u99"), "unknown target 'ethos-u99'"),
    (("--target", "ethos-u55-128", "--format", "onnx"), "add tflite to --format"),
    (("--target", "ethos-u55-128", "--target", "ethos-u55-128"), "given twice"),
])
def test_bad_target_is_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    res = run_cli(*fixture_args("cnn", tmp_path / "o", *args))
    assert res.returncode == 2 and words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_missing_compiler_is_one_error_naming_the_extra(tmp_path: Path) -> None:
    # the interpreter as if ethos-u-vela were not installed: importing it fails
    res = run_cli(*fixture_args("cnn", tmp_path / "o", "--target", "ethos-u55-128"),
                  python_prefix="import sys; sys.modules['ethosu'] = None; ")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: --target ethos-u55-128 needs Arm's Vela compiler (ethos-u-vela), which is "
        "not installed: pip install 'edgeship[vela]'"
    )
    assert not (tmp_path / "o").exists()


def test_options_round_trip_and_validate() -> None:
    opts = ConvertOptions(formats=("onnx", "tflite"), targets=("ethos-u65-256",))
    assert ConvertOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    with pytest.raises(ConfigError, match="add onnx to --format"):
        ConvertOptions(formats=("tflite",), targets=("openvino-cpu",))


def test_advice_picks_the_cpu_op_with_most_macs() -> None:
    rows = [{"op": "GATHER", "node": "g", "reason": "r1"},
            {"op": "BATCH_MATMUL", "node": "mm", "reason": "r2"}]
    text = advise("ethos-u55-128", rows, [], ["GATHER 'g'"], [0, 4096])
    assert "BATCH_MATMUL at 'mm'" in text and "4,096 MACs" in text
    assert "GATHER at 'g'" in advise("x", rows, [], ["GATHER 'g'"], [0, 0])
    assert advise("x", [], [], [], []).startswith("none")
    assert "permutation matrix" in advise("x", rows[:1], [], [], [0])  # the known way around
    tail = [{"op": "CONCATENATION", "node": "boxes",
             "reason": "Operation has tensor with unsupported DataType Float32 (boxes)"}]
    assert advise("x", tail, [], [], [0]).startswith("none for the MACs")
