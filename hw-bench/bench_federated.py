"""Federated fine-tuning on a real Flower federation: accuracy per round, privacy, bytes.

One SuperLink and N SuperNodes (Flower's own processes) on loopback; each device holds
low-contrast digits (a camera the model never saw) with a strong class skew (mostly 3 of
the 10 classes). The server owns a held-out set and scores the aggregated head each round.
Configurations: FedAvg and FedProx, each with and without differential privacy (client-
side clipping + server noise; epsilon at delta 1e-5 over all rounds), all under SecAgg+.

Measured: held-out accuracy per round; bytes one device sends to the SuperLink per round
(a relay in front of device 0) against the head's size (float32 W and b); CPU seconds and
peak RSS of one local training step (features from the INT8 model + head training) in a
fresh process, as a device would run it.

Usage: ``python hw-bench/bench_federated.py [--devices 10] [--rounds 5]`` (``--quick``:
3 devices, 2 rounds, no DP); writes ``federated.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from _common import print_machine, print_table, quick, write_result  # noqa: E402
from flower_federation import federation  # noqa: E402
from make_models import digits_split  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CONFIGS = {"fedavg": {"strategy": "fedavg"}, "fedprox": {"strategy": "fedprox"},
           "fedavg+dp": {"strategy": "fedavg", "noise_multiplier": 0.5, "clipping_norm": 3.0},
           "fedprox+dp": {"strategy": "fedprox", "noise_multiplier": 0.5, "clipping_norm": 3.0}}


def dim_camera(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 0.5 + 0.3, 0, 1).astype(np.float32)


def device_stores(root: Path, devices: int) -> list[Path]:
    from edgeship.sdk.learning._store import Example, ExampleStore

    xtr, ytr, _, _ = digits_split()
    rng = np.random.default_rng(0)
    stores = []
    for device in range(devices):
        major = {(3 * device + k) % 10 for k in range(3)}
        rows = [i for i in range(len(ytr)) if ytr[i] in major or rng.random() < 0.15][:80]
        store = ExampleStore(root / f"device-{device}")
        for i in rows:
            store.add(Example(inputs={"input": dim_camera(xtr[i:i + 1])}, label=int(ytr[i]),
                              source="feedback"))
        stores.append(store.directory)
    return stores


def convert_fixture(root: Path) -> Path:
    out = root / "out"
    subprocess.run([sys.executable, "-m", "edgeship", "convert", FIXTURES / "cnn.onnx",
                    "--calib", FIXTURES / "cnn_calib.npz", "-o", out, "--format", "onnx"],
                   check=True, capture_output=True)
    return out / "model.int8.onnx"


def run_config(root: Path, name: str, overrides: dict[str, Any], model: Path,
               stores: list[Path], rounds: int) -> dict[str, Any]:
    from edgeship.sdk.learning._federation import prepare_run, read_result, submit_run
    from edgeship.sdk.learning._plan import LearningPlan

    work = root / name
    plan = LearningPlan(rounds=rounds, min_devices=len(stores), **overrides)
    spec = prepare_run(work, plan, FIXTURES / "cnn.onnx", model, root / "heldout.npz")
    devices = [{"store": s, "model": model} for s in stores]
    started = time.monotonic()
    with federation(work, devices, relay_device=0) as (superlink, relay):
        submit_run(work, superlink, timeout_s=3600)
        sent = len(relay.sent) if relay is not None else 0
    result = read_result(work)
    head_bytes = 4 * (spec.n_classes * spec.n_features + spec.n_classes)
    return {"config": name, "devices": len(stores), "rounds": rounds,
            "accuracy": [round(r.accuracy, 2) for r in result.rounds],
            "epsilon": None if result.epsilon is None else round(result.epsilon, 2),
            "bytes_sent_per_round": sent // rounds, "head_bytes": head_bytes,
            "sent_per_head": round(sent / rounds / head_bytes, 2),
            "wall_s": round(time.monotonic() - started, 1)}


_ONE_STEP = """
import resource, sys, time
from pathlib import Path
from edgeship.sdk.learning._features import example_features
from edgeship.sdk.learning._head import HeadSpec, find_head, read_head
from edgeship.sdk.learning._store import ExampleStore
from edgeship.sdk.learning._train import TrainConfig, train_head
import onnx
store, model, fp32 = sys.argv[1:4]
spec = find_head(onnx.load(fp32)); w, b = read_head(onnx.load(fp32), spec)
cpu = time.process_time()
x, y = example_features(model, spec, ExampleStore(store).labelled())
train_head(w, b, x, y, TrainConfig())
print(time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def device_cost(store: Path, model: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _ONE_STEP, store, model, FIXTURES / "cnn.onnx"],
                         check=True, capture_output=True, text=True).stdout.split()
    return {"train_cpu_s": round(float(out[0]), 3), "train_peak_rss_mb": round(float(out[1]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick or quick():
        args.devices, args.rounds, args.configs = 3, 2, "fedavg"
    print_machine()
    with tempfile.TemporaryDirectory(prefix="edgeship-fed-") as tmp:
        root = Path(tmp)
        model = convert_fixture(root)
        _, _, xte, yte = digits_split()
        np.savez(root / "heldout.npz", input=dim_camera(xte), label=yte)
        stores = device_stores(root, args.devices)
        rows = [run_config(root, name, CONFIGS[name], model, stores, args.rounds)
                for name in args.configs.split(",")]
        cost = device_cost(stores[0], model)
    print_table(rows, title=f"federated head fine-tuning, {args.devices} devices, SecAgg+")
    print_table([cost], title="one device's local training step (fresh process)")
    write_result("federated", {"rows": rows, "device": cost})


if __name__ == "__main__":
    main()
