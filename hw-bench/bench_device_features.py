"""What model protection, drift monitoring and shadow releases cost on the device, as
ratios against a baseline measured in the same run (compare ratios, not absolutes).

- ``load``: time to a loaded model from an encrypted slot file (read the ciphertext,
  unwrap the data key with the device's X25519 key, AES-256-GCM decrypt in memory,
  ``Model.load_bytes``) vs ``Model.load`` of the plaintext file, for mobilenet as fp32
  ONNX (onnxruntime) and as the INT8 TFLite ``edgeship convert`` makes (LiteRT). The
  encrypted artifact comes from a real ``Release.build(encrypt_for=...)``.
- ``latency``: p50 / p99 of the agent's local v2 API (``AgentClient``, binary tensors,
  keep-alive) with no tap, with the drift tap (the release profile of the model's eval
  data; default ``[drift]``, which counts at most 100 requests a second, and with no
  rate limit: every request counted, the worst case), and with a shadow model (default ``[shadow]``: 10% of
  answers sampled; and every answer sampled, the worst case). Each variant is its own
  server process running the agent's ``AgentService`` and v2 server on the same model;
  they are measured in small interleaved blocks (25 requests, rotating order) so that a
  change in the machine's speed hits all of them alike, drift and the shadows in two
  groups each with its own no-tap server (a busy shadow worker would slow the others); besides the pooled p50 ratio, the median over rounds of each
  round's p50 ratio is reported (robust to a burst of load in one round).
- ``inprocess``: the same answer path without HTTP and its noise, ``AgentService.infer``
  with no tap, the drift tap and the default shadow: p50, mean and p99 ratios (the drift
  tap counts its buffered requests in one pass every ``batch`` requests: that shows in
  the mean and p99, not the p50). Targets: drift under 1.03x, shadow under 1.05x at p50.

Usage: ``python hw-bench/bench_device_features.py [-o DIR]``; writes ``device_features.json``.
"""

from __future__ import annotations

import json
import os
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

from _common import (  # noqa: E402
    convert_mobilenet_tflite,
    print_machine,
    print_table,
    quick,
    write_result,
)

FIXTURES = ROOT / "tests" / "fixtures"
# measured in two groups, each against its own no-tap server: a shadow worker busy in
# the background (every answer sampled) must not slow the drift server's turns
GROUPS = (("none", "drift", "drift-all"), ("none", "shadow", "shadow-all"))


# -- the server side (this file re-run with --serve) ----------------------------------------
def serve(variant: str, model_path: Path, profile_path: Path) -> None:
    """One agent API on ``model_path`` with the taps of ``variant``; prints its URL."""
    from edgeship.agent._api import AgentService, Metrics, Serving, describe
    from edgeship.sdk._model import Model
    from edgeship.sdk._v2server import serve as v2_serve

    model = Model.load(model_path, threads=1)
    metrics = Metrics()
    service = AgentService("model", metrics)
    service.swap(Serving(model=model, version="1.0.0", sha256="",
                         metadata=describe("model", model, "1.0.0")))
    if variant.startswith("drift"):
        from edgeship.agent._drift import DriftTap
        from edgeship.sdk._profile import DriftConfig, Profile

        profile = Profile.from_json(profile_path.read_bytes())
        config = DriftConfig(max_rate=0) if variant == "drift-all" else DriftConfig()
        service.taps = (DriftTap(profile, config, registry=metrics.registry,
                                 log=lambda *a, **k: None),)
    elif variant.startswith("shadow"):
        from edgeship.agent._shadow import ShadowConfig, ShadowTap

        config = ShadowConfig(sample=1.0) if variant == "shadow-all" else ShadowConfig()
        tap = ShadowTap(config, log=lambda *a, **k: None)
        tap.start(model_path.read_bytes(), fmt=model_path.suffix.lstrip("."), version="1.1.0")
        if not tap.wait_ready(60):
            raise SystemExit(f"shadow did not start: {tap.stats()}")
        service.taps = (tap,)
    server = v2_serve(service, port=0).start()
    print(server.url, flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    if service.taps and hasattr(service.taps[0], "stats"):
        print(json.dumps(service.taps[0].stats()), flush=True)
    elif service.taps:
        print(json.dumps(service.taps[0].telemetry()["window"]), flush=True)  # rows counted
    server.close()


# -- load time ------------------------------------------------------------------------------
def encrypted_release(tmp: Path, artifact: Path, name: str) -> tuple[Path, Any, Path]:
    """A real encrypted release of ``artifact``: its artifact file, its Encryption, the
    device key that opens it."""
    from edgeship.sdk._crypt import write_key_pair
    from edgeship.sdk._keydir import KeyDir
    from edgeship.sdk._release import Release

    keys = tmp / f"keys-{name}"
    KeyDir(keys).init()
    write_key_pair(keys, "device")
    rel = Release.build(artifact, version="1.0.0", keydir=keys, out=tmp / f"rel-{name}",
                        encrypt_for=[keys / "device.pub"], model_name="model")
    assert rel.manifest.encryption is not None
    return rel.path / rel.manifest.artifact.name, rel.manifest.encryption, keys / "device.key"


def load_row(label: str, tmp: Path, artifact: Path, n: int) -> dict[str, Any]:
    from edgeship.sdk._crypt import decrypt, load_private_key, unwrap_data_key
    from edgeship.sdk._model import Model

    cipher_path, encryption, key_path = encrypted_release(tmp, artifact, label)
    fmt = artifact.suffix.lstrip(".")

    def plain() -> Any:
        return Model.load(artifact, threads=1)

    def sealed() -> Any:
        key = load_private_key(key_path.read_bytes())
        data = decrypt(cipher_path.read_bytes(), unwrap_data_key(encryption, key))
        return Model.load_bytes(data, format=fmt, threads=1)

    x = np.zeros([max(d, 1) for d in plain().inputs[0].shape], np.float32)
    np.testing.assert_array_equal(plain().predict(x), sealed().predict(x))
    times: dict[str, list[float]] = {"plain": [], "sealed": [], "decrypt": []}
    key = load_private_key(key_path.read_bytes())
    blob = cipher_path.read_bytes()
    for _ in range(n):  # interleaved, so both see the same machine
        for kind, fn in (("plain", plain), ("sealed", sealed),
                         ("decrypt", lambda: decrypt(blob, unwrap_data_key(encryption, key)))):
            began = time.perf_counter()
            fn()
            times[kind].append((time.perf_counter() - began) * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": label, "bytes": artifact.stat().st_size,
            "plain_load_ms": round(med["plain"], 2), "encrypted_load_ms": round(med["sealed"], 2),
            "unwrap_decrypt_ms": round(med["decrypt"], 3),
            "load_ratio": round(med["sealed"] / med["plain"], 3)}


# -- API latency ----------------------------------------------------------------------------
def write_profile(tmp: Path, model_path: Path, eval_npz: Path) -> Path:
    from edgeship.sdk._profile import profile_from_file

    path = tmp / f"{model_path.stem}.profile.json"
    path.write_text(profile_from_file(eval_npz, model_path).to_json())
    return path


def start_server(variant: str, model: Path, profile: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", variant, str(model),
                             str(profile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"{variant} server did not start")
    return proc, url


def latency_row(label: str, tmp: Path, model: Path, eval_npz: Path, rounds: int,
                block: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": label}
    detail: dict[str, Any] = {}
    for group in GROUPS:
        part = latency_group(group, tmp, model, eval_npz, rounds, block)
        detail.update(part.pop("detail"))
        row.update({k: v for k, v in part.items() if k not in row})
    row["detail"] = detail  # (a nested mapping: kept in the JSON, not in the tables)
    return row


def latency_group(variants: tuple[str, ...], tmp: Path, model: Path, eval_npz: Path,
                  rounds: int, block: int) -> dict[str, Any]:
    from edgeship.sdk._client import AgentClient

    profile = write_profile(tmp, model, eval_npz)
    with np.load(eval_npz) as data:
        xs = data[next(k for k in data.files if k != "label")].astype(np.float32)
    servers = {v: start_server(v, model, profile) for v in variants}
    clients = {v: AgentClient(url) for v, (_, url) in servers.items()}
    samples: dict[str, list[float]] = {v: [] for v in variants}
    round_p50: dict[str, list[float]] = {v: [] for v in variants}
    first = clients["none"].predict(xs[:1])
    for v in variants:  # the same answers from every variant: taps never change one
        np.testing.assert_array_equal(clients[v].predict(xs[:1]), first)
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            client = clients[v]
            block_ms = []
            for i in range(block):
                x = xs[(r * block + i) % len(xs)][None]
                began = time.perf_counter()
                client.predict(x)
                block_ms.append((time.perf_counter() - began) * 1000)
            samples[v].extend(block_ms)
            round_p50[v].append(float(np.median(block_ms)))
    tap_stats = {}
    for v, (proc, _) in servers.items():
        clients[v].close()
        out, _ = proc.communicate("", timeout=60)
        tap_stats[v] = out.strip().splitlines()[-1] if v != "none" and out.strip() else None
    p50 = {v: float(np.percentile(s, 50)) for v, s in samples.items()}
    p99 = {v: float(np.percentile(s, 99)) for v, s in samples.items()}
    row: dict[str, Any] = {"n_per_variant": len(samples["none"]),
                           "none_p50_ms": round(p50["none"], 4)}
    detail: dict[str, Any] = {f"none_p99_ms_with_{variants[1]}": round(p99["none"], 4)}
    for v in variants[1:]:
        key = v.replace("-", "_")
        # the median over rounds of each round's ratio: a burst of load from elsewhere on
        # the machine spoils one round, not the verdict
        per_round = np.array(round_p50[v]) / np.array(round_p50["none"])
        detail[f"{key}_p50_ratio_median_of_rounds"] = round(float(np.median(per_round)), 4)
        row[f"{key}_p50_ratio"] = round(p50[v] / p50["none"], 4)
        detail[f"{key}_p50_ms"] = round(p50[v], 4)
        detail[f"{key}_p99_ratio"] = round(p99[v] / p99["none"], 4)
    if "shadow-all" in variants:
        shadow = json.loads(tap_stats["shadow-all"]) if tap_stats.get("shadow-all") else {}
        row["shadow_all_compared"] = shadow.get("compared")
        detail["shadow_all_budget_skipped"] = shadow.get("budget_skipped")
    for v in ("drift", "drift-all"):
        if v in variants and tap_stats.get(v):
            detail[f"{v.replace('-', '_')}_counted"] = int(tap_stats[v])
    row["detail"] = detail
    return row


def inprocess_row(label: str, tmp: Path, model_path: Path, eval_npz: Path, rounds: int,
                  block: int) -> dict[str, Any]:
    """The answer path without HTTP: ``AgentService.infer`` with no tap, the drift tap,
    the default shadow; interleaved blocks, p50 / mean / p99 ratios to no tap."""
    from edgeship.agent._api import AgentService, Metrics, Serving, describe
    from edgeship.agent._drift import DriftTap
    from edgeship.agent._shadow import ShadowConfig, ShadowTap
    from edgeship.sdk._model import Model
    from edgeship.sdk._profile import DriftConfig, Profile

    model = Model.load(model_path, threads=1)
    service = AgentService("model", Metrics())
    service.swap(Serving(model=model, version="1.0.0", sha256="",
                         metadata=describe("model", model, "1.0.0")))
    profile = Profile.from_json(write_profile(tmp, model_path, eval_npz).read_bytes())
    shadow = ShadowTap(ShadowConfig(), log=lambda *a, **k: None)
    shadow.start(model_path.read_bytes(), fmt=model_path.suffix.lstrip("."), version="1.1.0")
    shadow.wait_ready(60)
    quiet = {"log": lambda *a, **k: None}
    taps = {"none": (), "drift": (DriftTap(profile, **quiet),),
            "drift-all": (DriftTap(profile, DriftConfig(max_rate=0), **quiet),),
            "shadow": (shadow,)}
    with np.load(eval_npz) as data:
        xs = data[next(k for k in data.files if k != "label")].astype(np.float32)
    name = model.inputs[0].name
    samples: dict[str, list[float]] = {v: [] for v in taps}
    for r in range(rounds):
        names = list(taps)
        for v in names[r % len(names):] + names[:r % len(names)]:
            service.taps = taps[v]
            for i in range(block):
                feeds = {name: xs[(r * block + i) % len(xs)][None]}
                began = time.perf_counter()
                service.infer("model", feeds)
                samples[v].append((time.perf_counter() - began) * 1e6)
    shadow.stop()
    stat = {v: {"p50": np.percentile(s, 50), "mean": np.mean(s), "p99": np.percentile(s, 99)}
            for v, s in samples.items()}
    row: dict[str, Any] = {"model": label, "n_per_variant": len(samples["none"]),
                           "none_p50_us": round(float(stat["none"]["p50"]), 1)}
    for v in ("drift", "drift-all", "shadow"):
        for k in ("p50", "mean") if v != "shadow" else ("p50", "mean", "p99"):
            row[f"{v.replace('-', '_')}_{k}_ratio"] = round(float(stat[v][k] / stat["none"][k]), 4)
    return row


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--out", type=Path, default=None)
    parser.add_argument("--serve", nargs=3, metavar=("VARIANT", "MODEL", "PROFILE"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), Path(args.serve[2]))
        return
    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-device-features-"))
    tflite = convert_mobilenet_tflite(tmp)
    n_load = 5 if quick() else 20
    loads = [load_row("mobilenet fp32 onnx", tmp, FIXTURES / "mobilenet.onnx", n_load),
             load_row("mobilenet int8 tflite", tmp, tflite, n_load)]
    print_table(loads, title="load: encrypted slot (unwrap + decrypt in memory) vs plaintext")
    # small blocks in rotating order: this VM's speed wanders by 10-30% within seconds
    # (neighbours, frequency), which long blocks would book to whichever variant ran then
    rounds, block = (16, 25) if quick() else (200, 25)
    lat = [latency_row("cnn fp32 onnx", tmp, FIXTURES / "cnn.onnx", FIXTURES / "cnn_eval.npz",
                       rounds, block),
           latency_row("mobilenet int8 tflite", tmp, tflite, FIXTURES / "mobilenet_eval.npz",
                       rounds, block)]
    print_table(lat, title="local API latency: drift tap and shadow vs no tap (same run)")
    inproc = [inprocess_row("cnn fp32 onnx", tmp, FIXTURES / "cnn.onnx",
                            FIXTURES / "cnn_eval.npz", rounds, block * 2),
              inprocess_row("mobilenet int8 tflite", tmp, tflite,
                            FIXTURES / "mobilenet_eval.npz", rounds, block * 2)]
    print_table(inproc, title="answer path in process (AgentService.infer): ratios to no tap")
    write_result("device_features", {"load": loads, "latency": lat, "inprocess": inproc,
                                     "targets": {"drift_p50_ratio": 1.03,
                                                 "shadow_p50_ratio": 1.05}},
                 out_dir=args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
