"""The committed model fixtures are what tests/fixtures/make_models.py documents: opset 13,
static batch-1 input ``input``, output ``probs``, BatchNormalization and Relu/Clip still
separate nodes (so the converter's folding is exercised), small files, and calib/eval
data of the right shapes. A tool that rewrites them in place (an ONNX simplifier) fails
this test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

FIX = Path(__file__).parent / "fixtures"
SHAPES = {"cnn": [1, 1, 8, 8], "mlp": [1, 30], "mobilenet": [1, 3, 96, 96]}
MUST_HAVE = {
    "cnn": {"Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "AveragePool", "Gemm", "Softmax", "Clip"},
    "mlp": {"Gemm", "BatchNormalization", "MatMul", "Add", "Relu", "Sigmoid"},
    "mobilenet": {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool", "Gemm", "Softmax"},
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fixture_model_and_data(name: str) -> None:
    model = onnx.load(FIX / f"{name}.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "edgeship-fixtures"
    assert [o.version for o in model.opset_import if o.domain == ""] == [13]
    (inp,) = model.graph.input
    assert inp.name == "input" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == SHAPES[name]
    assert [o.name for o in model.graph.output] == ["probs"]
    ops = Counter(n.op_type for n in model.graph.node)
    assert MUST_HAVE[name] <= set(ops), MUST_HAVE[name] - set(ops)
    if name == "cnn":
        assert any(a.name == "group" and a.i == 16 for n in model.graph.node for a in n.attribute)
    calib, ev = np.load(FIX / f"{name}_calib.npz"), np.load(FIX / f"{name}_eval.npz")
    assert calib.files == ["input"] and sorted(ev.files) == ["input", "label"]
    assert calib["input"].dtype == np.float32 and list(calib["input"].shape[1:]) == SHAPES[name][1:]
    assert len(ev["label"]) == len(ev["input"]) >= 200


def test_fixtures_are_small() -> None:
    total = sum(p.stat().st_size for p in FIX.iterdir() if p.suffix in (".onnx", ".npz"))
    assert total < 5 * 1024 * 1024
    assert 0.9e6 < (FIX / "mobilenet.onnx").stat().st_size < 1.3e6  # "~1 MB"
