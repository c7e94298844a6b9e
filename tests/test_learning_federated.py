"""Federated fine-tuning end to end on a real Flower federation (issue 18): devices with
skewed, low-contrast digits the model never saw train its head under SecAgg+; `edgeship
learn serve` runs the rounds, converts with --base and releases a head-only delta; no
device sends a sample, a label or its own update in the clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeship.sdk.learning._features import example_features
from edgeship.sdk.learning._head import find_head, read_head
from edgeship.sdk.learning._store import Example, ExampleStore
from edgeship.sdk.learning._train import TrainConfig, train_head
from edgeship.sdk.release._release import Release
from flower_federation import federation

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_models import digits_split  # noqa: E402

DEVICES = 3
ROUNDS = 2


def dim_camera(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 0.5 + 0.3, 0, 1).astype(np.float32)


def edgeship(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "EDGESHIP_DEBUG": ""})


def skewed_stores(root: Path) -> list[Path]:
    """Each device sees mostly two classes (strong skew), a few of the others."""
    xtr, ytr, _, _ = digits_split()
    rng = np.random.default_rng(0)
    stores = []
    for device in range(DEVICES):
        major = {(3 * device + k) % 10 for k in range(3)}
        rows = [i for i in range(len(ytr)) if ytr[i] in major or rng.random() < 0.15][:80]
        store = ExampleStore(root / f"device-{device}" / "examples")
        for i in rows:
            store.add(Example(inputs={"input": dim_camera(xtr[i:i + 1])}, label=int(ytr[i]),
                              source="feedback"))
        stores.append(store.directory)
    return stores


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_digits(tmp_path_factory.mktemp("learn"), "digits")


def release_digits(root: Path, model_name: str) -> Path:
    """cnn.onnx converted, keys made, release 1.0.0 signed, and the server's held-out set
    of low-contrast digits, all under ``root``."""
    out = root / "out"
    for args in (["convert", FIXTURES / "cnn.onnx", "--calib", FIXTURES / "cnn_calib.npz",
                  "-o", out, "--format", "onnx"],
                 ["keys", "init", root / "keys"],
                 ["release", out / "model.int8.onnx", "--version", "1.0.0", "--keys",
                  root / "keys", "-o", root / "rel-1.0.0", "--model-name", model_name]):
        proc = edgeship(*args)
        assert proc.returncode == 0, proc.stderr
    _, _, xte, yte = digits_split()
    np.savez(root / "heldout.npz", input=dim_camera(xte), label=yte)
    return root


@pytest.mark.timeout(900)  # ~1 min on a quiet 2-core machine; Flower polls and spawns a
# process per message, so a loaded machine stretches it
def test_rounds_on_skewed_devices_raise_accuracy_and_ship_as_a_head_delta(
        released: Path) -> None:
    root = released
    stores = skewed_stores(root)
    model = root / "out" / "model.int8.onnx"
    devices = [{"store": s, "model": model} for s in stores]
    with federation(root, devices, relay_device=0) as (superlink, relay):
        proc = edgeship("learn", "serve", "--release", root / "rel-1.0.0",
                        "--model", FIXTURES / "cnn.onnx", "--converted", root / "out",
                        "--calib", FIXTURES / "cnn_calib.npz",
                        "--heldout", root / "heldout.npz", "--superlink", superlink,
                        "--rounds", ROUNDS, "--min-devices", DEVICES,
                        "--keys", root / "keys", "--version", "1.1.0", "-o", root / "work")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((root / "work" / "learn-report.json").read_text())
    accuracy = [r["accuracy"] for r in report["rounds"]]
    assert len(accuracy) == ROUNDS + 1
    assert accuracy[0] < 30 and accuracy[-1] > accuracy[0] + 40, accuracy

    manifest = Release.load(root / "work" / "release").manifest
    delta = {d.base_version: d.size for d in manifest.deltas}["1.0.0"]
    head_bytes = 10 * 128 + 10 * 4  # int8 weights + int32 biases
    assert delta < 1.5 * head_bytes < manifest.artifact.size / 5, (delta, manifest.artifact)
    assert _changed_tensors(root / "out", root / "work" / "converted") <= {
        "w_43_q", "w_43_s", "gemm_45_node_b_q", "gemm_45_node_b_s", "gemm_45_s", "gemm_45_z"}

    assert relay is not None
    # the control: the global head the SuperLink sends is readable on this wire, so an
    # update sent in the clear would be found the same way
    weight, _ = read_head(onnx.load(FIXTURES / "cnn.onnx"), find_head(onnx.load(FIXTURES / "cnn.onnx")))
    assert weight.astype(np.float32).tobytes()[:64] in relay.received
    _assert_nothing_private_was_sent(bytes(relay.sent), stores[0], model)


def _changed_tensors(before: Path, after: Path) -> set[str]:
    old, new = (onnx.load(d / "model.int8.onnx") for d in (before, after))
    kept = {t.name: t.SerializeToString() for t in old.graph.initializer}
    return {t.name for t in new.graph.initializer if kept.get(t.name) != t.SerializeToString()}


def _assert_nothing_private_was_sent(sent: bytes, store_dir: Path, model: Path) -> None:
    examples = ExampleStore(store_dir).examples()
    for example in examples:  # no sample's pixels, in any 32-byte run
        pixels = example.inputs["input"].tobytes()
        assert all(pixels[i:i + 32] not in sent for i in range(0, len(pixels) - 32, 32))
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    assert labels.tobytes()[:64] not in sent
    # round 1's local update, recomputed exactly as the device did: masked, never sent
    spec = find_head(onnx.load(FIXTURES / "cnn.onnx"))
    weight, bias = read_head(onnx.load(FIXTURES / "cnn.onnx"), spec)
    features, y = example_features(model, spec, examples)
    local = train_head(weight, bias, features, y, TrainConfig(epochs=5, learning_rate=0.05))
    clear = local.weight.astype(np.float32).tobytes()
    assert all(clear[i:i + 16] not in sent for i in range(0, 1024, 16))
