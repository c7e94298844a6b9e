"""Issue 16, defect 10: the confidence fallback reads INT8 probability outputs as
probabilities. A real float classifier (MatMul + Softmax) converted by edgeship to INT8
(TFLite for LiteRT, QDQ ONNX for onnxruntime): its dequantized softmax sums to 0.996
(the output step is 1/256), which failed the "already a distribution" check and got a
second softmax, so a 0.996-sure answer read as 0.23 and went to the cloud."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeship.sdk import CloudClient, FallbackModel, FallbackPolicy, Model
from edgeship.sdk.serving._fallback import confidence
from test_cloud_serve import start_cloud, stop

IN, CLASSES = 16, 10


def _classifier(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.eye(IN, CLASSES) * 8).astype(np.float32)  # logit 8 for the input's class
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Softmax", ["h"], ["y"], axis=-1)], "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ordinary(n: int, seed: int) -> np.ndarray:
    """Inputs of one clear class each, with a little noise."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, IN), np.float32)
    x[np.arange(n), rng.integers(0, CLASSES, n)] = 1.0
    return x + rng.normal(0, 0.05, x.shape).astype(np.float32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeship.converter import convert

    tmp = tmp_path_factory.mktemp("int8cls")
    model = _classifier(tmp / "cls.onnx")
    np.savez(tmp / "calib.npz", x=_ordinary(64, 0))
    convert(model, tmp / "calib.npz", tmp / "out")
    return {"float": model, "tflite": tmp / "out" / "model.int8.tflite",
            "onnx": tmp / "out" / "model.int8.onnx"}


@pytest.fixture(scope="module")
def cloud(converted: dict[str, Path]) -> Iterator[int]:
    proc, port = start_cloud(converted["float"])
    yield port
    stop(proc)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_softmax_is_read_as_probabilities(fmt: str, converted: dict[str, Path],
                                               cloud: int) -> None:
    local = Model.load(converted[fmt])
    x = _ordinary(50, 1)
    y = local.predict_all({"x": x[:1]})["y"]
    assert abs(float(y.sum()) - 1.0) > 1e-3  # quantized: not a distribution to 1e-3
    assert local.output_steps["y"] == pytest.approx(1 / 256)  # the spec's softmax output
    assert confidence({"y": y}, step=local.output_steps["y"]) == pytest.approx(float(y.max()))
    client = CloudClient(f"http://127.0.0.1:{cloud}", "cls", deadline_ms=2000)
    fm = FallbackModel(local, client, FallbackPolicy.from_names(["low_confidence"],
                                                                confidence=0.6))
    answers: list[Any] = [fm.answer({"x": x[i:i + 1]}) for i in range(len(x))]
    assert [a.source for a in answers] == ["local"] * len(x)
    # an unsure INT8 answer (no class stands out: uniform 0.1) still goes to the cloud
    unsure = fm.answer({"x": np.zeros((1, IN), np.float32)})
    assert unsure.source == "cloud" and unsure.confidence is not None
    assert unsure.confidence < 0.2
    assert fm.stats()["escalations"]["low_confidence"] == 1


def test_a_converted_int8_onnx_is_read_without_importing_onnx(converted: dict[str, Path]) -> None:
    """The converter writes the output steps into the model's metadata: a device serves
    it on onnxruntime alone (no onnx import, ~180 ms and ~15 MB, nor a second parse)."""
    code = ("import sys; from edgeship.sdk.runtime._model import Model; "
            f"m = Model.load({str(converted['onnx'])!r}); "
            "print('onnx' in sys.modules, m.output_steps['y'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False" and float(out[1]) == pytest.approx(1 / 256)


def test_a_qdq_onnx_without_the_metadata_is_read_from_its_graph(converted: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    import onnx
    from edgeship.sdk.runtime._quant_hints import METADATA_KEY, QuantHints

    model = onnx.load(converted["onnx"])
    written = {p.key: p.value for p in model.metadata_props}
    assert QuantHints.from_json(written[METADATA_KEY]) == QuantHints.from_graph(model.graph)
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "no_hints.onnx")
    assert Model.load(tmp_path / "no_hints.onnx").output_steps == {"y": pytest.approx(1 / 256)}


def test_logits_still_get_a_softmax() -> None:
    """Logits in [0, 1] are not mistaken for probabilities, with or without a step."""
    logits = np.array([[0.0, 0.25, 0.5, 0.25]], np.float32)  # in [0, 1], sums to 1.0
    assert confidence({"y": logits}) == pytest.approx(0.5)  # a distribution: read as is
    logits = np.array([[0.0, 0.25, 0.75, 0.5]], np.float32)  # sums to 1.5: logits
    want = np.exp(0.75) / np.exp(logits).sum()
    assert confidence({"y": logits}) == pytest.approx(float(want), rel=1e-6)
    assert confidence({"y": logits}, step=1 / 256) == pytest.approx(float(want), rel=1e-6)
