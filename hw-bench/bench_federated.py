"""Federated fine-tuning on a real Flower federation: accuracy per round, privacy, bytes.

One SuperLink and N device nodes (edgeship's: Flower's SuperNode with the warm ClientApp
executor) on loopback; each device holds low-contrast digits (a camera the model never
saw) with a strong class skew (mostly 3 of the 10 classes). The server owns a held-out set
and scores the aggregated head each round. Configurations: FedAvg and FedProx, each with
and without differential privacy (client-side clipping + server noise, epsilon at delta
1e-5 over all rounds; adaptive clipping, and the fixed clip of session 4 for comparison),
all under SecAgg+.

Measured: held-out accuracy per round; bytes one device sends to the SuperLink per round
(a relay in front of device 0) against the head's size (float32 W and b); device 0's CPU
seconds per round and peak memory (PSS, shared pages split between processes) of all its
processes (node, SuperNode, forked ClientApps) sampled through the run; and one local
training step in a fresh process (features from the INT8 model + head training; CPU and
VmHWM, which, unlike ru_maxrss, does not inherit the parent's peak across exec).

Usage: ``python hw-bench/bench_federated.py [--devices 10] [--rounds 5]`` (``--quick``:
3 devices, 2 rounds, no DP); writes ``federated.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from _common import print_machine, print_table, quick, write_result  # noqa: E402
from flower_federation import (  # noqa: E402
    FIXTURES,
    digits,
    dim_camera,
    federation,
    skewed_stores,
)

_DP = {"noise_multiplier": 0.5, "clipping": "adaptive", "clipping_norm": 1.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": "fedavg"}, "fedprox": {"strategy": "fedprox"},
    "fedavg+dp": {"strategy": "fedavg", **_DP}, "fedprox+dp": {"strategy": "fedprox", **_DP},
    "fedavg+dp-fixed": {"strategy": "fedavg", "noise_multiplier": 0.5, "clipping": "fixed",
                        "clipping_norm": 3.0}}


def convert_fixture(root: Path) -> Path:
    out = root / "out"
    subprocess.run([sys.executable, "-m", "edgeship", "convert", FIXTURES / "cnn.onnx",
                    "--calib", FIXTURES / "cnn_calib.npz", "-o", out, "--format", "onnx"],
                   check=True, capture_output=True)
    return out / "model.int8.onnx"


class DeviceMeter:
    """Samples the processes of one device (every process whose command line names its
    store: the node, its SuperNode, the ClientApps it forks) until stopped."""

    def __init__(self, marker: str, every: float = 0.1) -> None:
        self.marker, self.every = marker, every
        self.peak_pss_kb = 0
        self._cpu: dict[int, float] = {}  # long-lived pids: their own CPU seconds
        self._reaped = 0.0  # the node's waited-for children (forked ClientApps)
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.marker.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            seen: dict[int, tuple[int, float, float, int, bool]] = {}
            for pid in self._pids():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    is_node = b"_node" in Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                pss = next(int(line.split()[1]) for line in rollup.splitlines()
                           if line.startswith("Pss:"))
                seen[pid] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / self._tick,
                             (int(stat[13]) + int(stat[14])) / self._tick, pss, is_node)
            for pid, (ppid, own, children, _, is_node) in seen.items():
                if is_node and ppid in seen:  # a forked ClientApp: counted once reaped
                    continue
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), own)
                if is_node:
                    self._reaped = max(self._reaped, children)
            self.peak_pss_kb = max(self.peak_pss_kb, sum(v[3] for v in seen.values()))

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, peak PSS in MB) over the run (a ClientApp that came and went
        between two samples counts through the node's reaped-children time)."""
        self._stop.set()
        self._thread.join()
        return sum(self._cpu.values()) + self._reaped, self.peak_pss_kb / 1024


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
        meter = DeviceMeter(f'store="{stores[0]}"')
        submit_run(work, superlink, timeout_s=3600)
        cpu, pss = meter.stop()
        sent = len(relay.sent) if relay is not None else 0
    result = read_result(work)
    head_bytes = 4 * (spec.n_classes * spec.n_features + spec.n_classes)
    return {"config": name, "devices": len(stores), "rounds": rounds,
            "accuracy": [round(r.accuracy, 2) for r in result.rounds],
            "epsilon": None if result.epsilon is None else round(result.epsilon, 2),
            "bytes_sent_per_round": sent // rounds, "head_bytes": head_bytes,
            "sent_per_head": round(sent / rounds / head_bytes, 2),
            "device_cpu_s_per_round": round(cpu / rounds, 2),
            "device_peak_pss_mb": round(pss, 1),
            "wall_s": round(time.monotonic() - started, 1)}


_ONE_STEP = """
import sys, time
from edgeship.sdk.learning._features import example_features
from edgeship.sdk.learning._head import HeadSpec
from edgeship.sdk.learning._store import ExampleStore
from edgeship.sdk.learning._train import TrainConfig, train_head
import numpy as np
store, model, spec_json, head = sys.argv[1:5]
spec = HeadSpec.from_json(open(spec_json).read())
with np.load(head) as h:
    w, b = h["weight"], h["bias"]
cpu = time.process_time()
x, y = example_features(model, spec, ExampleStore(store).labelled())
train_head(w, b, x, y, TrainConfig())
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(time.process_time() - cpu, hwm / 1024, "onnx" in sys.modules)
"""


def device_cost(store: Path, model: Path, work: Path) -> dict[str, Any]:
    """One training step as a device runs it (the ClientApp's imports, no onnx)."""
    out = subprocess.run([sys.executable, "-c", _ONE_STEP, store, model, work / "spec.json",
                          work / "initial.npz"],
                         check=True, capture_output=True, text=True).stdout.split()
    return {"train_cpu_s": round(float(out[0]), 3), "train_peak_rss_mb": round(float(out[1]), 1),
            "imports_onnx": out[2]}


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
        _, _, xte, yte = digits()
        np.savez(root / "heldout.npz", input=dim_camera(xte), label=yte)
        stores = skewed_stores(root, args.devices)
        names = args.configs.split(",")
        rows = [run_config(root, name, CONFIGS[name], model, stores, args.rounds)
                for name in names]
        cost = device_cost(stores[0], model, root / names[0])
    print_table(rows, title=f"federated head fine-tuning, {args.devices} devices, SecAgg+")
    print_table([cost], title="one device's local training step (fresh process, VmHWM)")
    write_result("federated", {"rows": rows, "device": cost})


if __name__ == "__main__":
    main()
