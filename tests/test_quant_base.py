"""Delta-friendly quantization (`--base PREV_OUT/`, issue 5) on the MobileNet fixture:
a head-only update leaves every other int8 byte alone; an every-weight ~1% update keeps
most int8 values, and costs at most 0.1 accuracy points and 1 dB of output SQNR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.converter import ConvertOptions, convert
from onnx import numpy_helper

FIX = Path(__file__).parent / "fixtures"
CALIB, EVAL = FIX / "mobilenet_calib.npz", FIX / "mobilenet_eval.npz"
OPTS = ConvertOptions(formats=("onnx",))


def _variant(path: Path, change: str) -> Path:
    """The fixture with its Gemm head retrained (``head``) or every weight moved ~1%."""
    model = onnx.load(FIX / "mobilenet.onnx")
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    rng = np.random.default_rng(7)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.ndim == 0:
            continue
        if change == "head" and t.name in gemm.input[1:]:
            a = a + 0.05 * np.abs(a).mean() * rng.standard_normal(a.shape)
        elif change == "all" and t.name not in ("min", "max") and a.size > 1:
            a = a * (1 + 0.01 * rng.standard_normal(a.shape))
        t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))
    onnx.save(model, path)
    return path


def _int8_tensors(out: Path) -> dict[str, np.ndarray]:
    model = onnx.load(out / "model.int8.onnx")
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v1") / "out"
    convert(FIX / "mobilenet.onnx", CALIB, out, OPTS)
    return out


def test_same_model_with_base_is_byte_identical(v1: Path, tmp_path: Path) -> None:
    r = convert(FIX / "mobilenet.onnx", CALIB, tmp_path / "again", OPTS, base_dir=v1)
    assert (tmp_path / "again" / "model.int8.onnx").read_bytes() == (
        v1 / "model.int8.onnx"
    ).read_bytes()
    assert r.base is not None
    assert r.base["tensors_kept"] == r.base["tensors_total"]
    assert r.base["weights_kept"] == r.base["weights_total"]


def test_head_only_update_touches_only_the_head(v1: Path, tmp_path: Path) -> None:
    model = _variant(tmp_path / "head.onnx", "head")
    r = convert(model, CALIB, tmp_path / "v2", OPTS, base_dir=v1)
    old, new = _int8_tensors(v1), _int8_tensors(tmp_path / "v2")
    assert old.keys() == new.keys()
    changed = sorted(k for k in old if not np.array_equal(old[k], new[k]))
    gemm_prefixes = ("gemm", "w_18", "b_18", "probs")  # the head's weight, bias and output
    assert changed and all(k.startswith(gemm_prefixes) or "gemm" in k for k in changed), changed
    assert (
        r.base is not None and r.base["activation_tensors_kept"] >= r.base["activation_tensors"] - 2
    )


def test_every_weight_update_keeps_values_and_quality(v1: Path, tmp_path: Path) -> None:
    model = _variant(tmp_path / "all.onnx", "all")
    fresh = convert(model, CALIB, tmp_path / "fresh", OPTS, eval_path=EVAL)
    based = convert(model, CALIB, tmp_path / "based", OPTS, eval_path=EVAL, base_dir=v1)
    assert fresh.eval is not None and based.eval is not None and based.base is not None
    assert based.eval["int8_accuracy"] >= fresh.eval["int8_accuracy"] - 0.1
    assert based.eval["output_sqnr_db"] >= fresh.eval["output_sqnr_db"] - 1.0
    assert based.base["weights_kept"] > 0.7 * based.base["weights_total"]
    old = _int8_tensors(v1)

    def changed(out: Path) -> int:
        new = _int8_tensors(out)
        return sum(
            int(np.sum(old[k] != v)) for k, v in new.items() if v.dtype == np.int8 and k in old
        )

    assert changed(tmp_path / "based") < 0.75 * changed(tmp_path / "fresh")
    html = (tmp_path / "based" / "report.html").read_text()
    assert "weights_kept" in html


def test_bad_base_dir_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "quant_params.json").write_text("{not json")
    (tmp_path / "broken" / "model.int8.onnx").write_bytes((FIX / "cnn.onnx").read_bytes())
    for base, needle in ((tmp_path / "missing", "not found"), (tmp_path / "broken", "malformed")):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeship",
                "convert",
                str(FIX / "cnn.onnx"),
                "--calib",
                str(FIX / "cnn_calib.npz"),
                "-o",
                str(tmp_path / "o"),
                "--base",
                str(base),
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
        assert not (tmp_path / "o").exists()


def test_quant_params_json_round_trips(v1: Path) -> None:
    data = json.loads((v1 / "quant_params.json").read_text())
    assert data["version"] == 1 and data["activations"] and data["weights"]
    model = _int8_tensors(v1)
    for name, w in data["weights"].items():
        np.testing.assert_array_equal(
            np.asarray(w["scales"], np.float32).reshape(-1), model[name + "_s"].reshape(-1)
        )


def test_base_never_undoes_pruning(v1: Path, tmp_path: Path) -> None:
    opts = ConvertOptions(formats=("onnx",), prune=0.5)
    r = convert(FIX / "mobilenet.onnx", CALIB, tmp_path / "p", opts, base_dir=v1)
    new = _int8_tensors(tmp_path / "p")
    for w in r.weights:
        q = new[w["name"] + "_q"]
        assert np.mean(q == 0) >= w["sparsity"]  # every pruned (float zero) weight is int8 zero
    assert r.pruning["achieved"] > 0.49


def test_base_values_that_are_still_neighbours_are_kept_whole() -> None:
    """A previous release's learned rounding (not nearest, each value one of its weight's
    two neighbours) is kept as it was for an unchanged weight: no delta."""
    from types import SimpleNamespace

    from edgeship.converter._base import _BasePolicy

    w = np.array([[0.26, -0.74, 1.0], [0.5, 0.1, -0.49]], np.float32)
    scales = np.array([1.0 / 127, 0.5 / 127], np.float32)
    steps = w / scales[:, None]
    learned = np.where(np.arange(6).reshape(2, 3) % 2 == 0, np.floor(steps), np.ceil(steps))
    assert np.any(learned != np.round(steps))
    base = SimpleNamespace(
        weight_values={"w": learned.astype(np.int8)}, weight_scales={"w": scales}, kept_values={}
    )
    policy = _BasePolicy(base)  # type: ignore[arg-type]
    q = policy.round("w", w, scales, 0)
    np.testing.assert_array_equal(q, learned.astype(np.int8))
    assert base.kept_values["w"] == 6
