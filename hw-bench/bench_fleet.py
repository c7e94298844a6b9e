"""Fleet scale: N simulated devices updated by a ~1 MB model's delta through one mosquitto.

For each N (100, 500, 1000; ``--quick``: 20, 60) on a fresh broker: N devices
(``tests/simulator.py``: the agent's own OTA core and sdk verification, one MQTT session
each, spread over a few processes) start on v1; ``edgeship fleet serve`` (two processes
in one ``$share`` group) serves v2; ``edgeship fleet push v2 --wait`` offers it to all N
at once. Measured:

- ``wall_s``: ``fleet push`` start to the last device committed (what an operator waits);
- ``devices_s``: offer to the last committed status (the devices' side, no CLI start-up);
- messages and bytes through the broker per device, from mosquitto's ``$SYS`` counters
  (received + sent, delta over the update), and the devices' own counts;
- growth: seconds per device at each N (flat or falling = linear or better);
- CPU per device (ms) of the broker, the two ``fleet serve`` processes, ``fleet push``
  and the simulators over the update (``/proc/<pid>/stat`` before and after; the push's
  own rusage), and host-side (push + serve) per device;
- ``--db``: the push's fleet database, ``sqlite`` (a file, the default) or ``postgres``
  (a throwaway PostgreSQL cluster started here, as the tests do).

Targets: time and CPU per device growing no faster than linearly from 1 000 to 10 000
devices; host CPU (push + serve) <= 0.8 ms per device. The simulators run one process per
2 500 devices (``--procs``). ``$BENCH_FLEET_PROFILE=DIR`` profiles push, serve and the
simulators with cProfile, ``$BENCH_FLEET_PYSPY=DIR`` samples serve and push with py-spy.
Usage: ``python hw-bench/bench_fleet.py [--sizes 1000,5000,10000] [--procs N]
[--db sqlite,postgres]``; writes ``fleet.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
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
from simulator import SwarmProc  # noqa: E402

FLEET = "bench"
IN, HIDDEN, OUT = 64, 3072, 16  # W1 768 KiB + W2 192 KiB: a ~1 MB model


def make_model(path: Path, w1: np.ndarray, w2: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_releases(tmp: Path) -> dict[str, Any]:
    """v1, and v2 = v1 fine-tuned (3% of the weights moved a little), signed with a delta."""
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release

    keys = tmp / "keys"
    KeyDir(keys).init()
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((IN, HIDDEN)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, OUT)) * 0.1).astype(np.float32)
    rels = {}
    for version, (a, b) in {"1.0.0": (w1, w2), "1.1.0": _finetune(rng, w1, w2)}.items():
        model = make_model(tmp / version / "model.onnx", a, b)
        x = np.linspace(-1, 1, IN, dtype=np.float32).reshape(1, IN)
        y = np.maximum(x @ a, 0) @ b
        np.savez(tmp / version / "golden.npz", x=x, output=y, atol=np.float32(1e-3))
        rels[version] = tmp / "releases" / version
        Release.build(model, version=version, keydir=keys, out=rels[version],
                      golden=tmp / version / "golden.npz", model_name="model",
                      bases=[rels["1.0.0"]] if version != "1.0.0" else [])
    m = Release.load(rels["1.1.0"]).manifest
    return {"v1": rels["1.0.0"], "v2": rels["1.1.0"], "root": keys / "root.pub",
            "model_bytes": m.artifact.size, "delta_bytes": m.deltas[0].size}


def _finetune(rng: np.random.Generator, w1: np.ndarray, w2: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for w in (w1, w2):
        w = w.copy()
        mask = rng.random(w.shape) < 0.03
        w[mask] += (rng.standard_normal(int(mask.sum())) * 0.01).astype(np.float32)
        out.append(w)
    return out[0], out[1]


class Broker:
    """mosquitto on a free port, publishing its ``$SYS`` counters every second."""

    def __init__(self, tmp: Path) -> None:
        from conftest import free_port, wait_for_port

        self.port = free_port()
        conf = tmp / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nmax_packet_size 1048576\nsys_interval 1\n"
                        "max_queued_messages 10000\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.sys: dict[str, float] = {}
        self._updated = threading.Event()
        from edgeship.sdk.transport._mqtt import MqttEdge

        self.edge = MqttEdge(self.url, client_id="bench-sys", on_message=self._on_sys,
                             subscriptions=["$SYS/broker/messages/+", "$SYS/broker/bytes/+",
                                            "$SYS/broker/publish/bytes/+"])
        self.edge.start()
        self.edge.wait_connected(10)

    def _on_sys(self, msg: Any) -> None:
        try:
            self.sys[msg.topic.removeprefix("$SYS/broker/")] = float(msg.payload)
        except ValueError:
            return
        self._updated.set()

    def counters(self) -> dict[str, float]:
        """Fresh ``$SYS`` counters (waits for the next one-second update)."""
        self._updated.clear()
        time.sleep(1.2)
        self._updated.wait(3)
        return dict(self.sys)

    def stop(self) -> None:
        self.edge.stop()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/<pid>/stat``)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prof(name: str) -> list[str]:
    """``-m cProfile -o $BENCH_FLEET_PROFILE/<name>.prof`` when that variable names a dir."""
    import os

    where = os.environ.get("BENCH_FLEET_PROFILE")
    return ["-m", "cProfile", "-o", f"{where}/{name}.prof"] if where else []


def _spy(name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` (sampled, every thread) attached to ``pid`` when
    ``$BENCH_FLEET_PYSPY`` names a dir (``pip install py-spy``); SIGINT ends it."""
    import os

    where = os.environ.get("BENCH_FLEET_PYSPY")
    if not where:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "-r", "250", "-f", "raw", "-o",
                             f"{where}/{name}.txt", "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_size(n: int, rels: dict[str, Any], tmp: Path, procs: int, db: str = "sqlite"
             ) -> dict[str, Any]:
    import os

    db_url = db if "://" in db else f"sqlite:///{tmp / f'state-{n}-{time.monotonic_ns()}.sqlite'}"
    broker = Broker(tmp)
    servers = [subprocess.Popen(
        [sys.executable, *_prof(f"serve{i}"), "-m", "edgeship", "fleet", "serve", "--broker", broker.url, "--fleet",
         FLEET, "--releases", str(rels["v2"])], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    procs = procs or max(2, -(-n // 2500))  # auto: at most 2 500 devices per process
    procs = max(1, min(procs, n // 50 or 1))
    per = -(-n // procs)
    sims = [SwarmProc(broker_url=broker.url, fleet=FLEET, root=rels["root"], initial=rels["v1"],
                      prefix="dev-", start=i * per, count=min(per, n - i * per),
                      request_timeout_s=10.0, python_args=_prof(f"sim{i}"))
            for i in range(procs)]
    try:
        began = time.perf_counter()
        ready = sum(s.wait_ready(timeout=600) for s in sims)
        setup_s = time.perf_counter() - began
        assert ready == n, (ready, n)
        before = broker.counters()
        devices = ",".join(f"dev-{i:04d}" for i in range(n))
        pids = {"broker": [broker.proc.pid], "serve": [s.pid for s in servers],
                "simulators": [s.proc.pid for s in sims]}
        cpu0 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        spies = [_spy(f"serve{i}", s.pid) for i, s in enumerate(servers)]
        began = time.perf_counter()
        push = subprocess.Popen(
            [sys.executable, *_prof("push"), "-m", "edgeship", "fleet", "push", str(rels["v2"]), "--broker",
             broker.url, "--fleet", FLEET, "--devices", devices, "--wait", "--json",
             "--wave-timeout", "1800", "--db", db_url],
            stdout=open(tmp / "push.out", "w"), stderr=open(tmp / "push.err", "w"),  # noqa: SIM115
            stdin=subprocess.DEVNULL)
        spies.append(_spy("push", push.pid))
        _, status, usage = os.wait4(push.pid, 0)
        push.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.perf_counter() - began
        cpu = {k: sum(cpu_s(p) for p in v) - cpu0[k] for k, v in pids.items()}
        cpu["push"] = usage.ru_utime + usage.ru_stime
        for spy in filter(None, spies):
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        if push.returncode != 0:
            raise RuntimeError(f"fleet push failed: {(tmp / 'push.err').read_text().strip()}")
        rep = json.loads((tmp / "push.out").read_text())
        after = broker.counters()
    finally:  # every process stopped, whatever failed
        counters = []
        for sim in sims:
            try:
                counters.append(sim.stop())
            except Exception as exc:  # stop the rest anyway
                sim.proc.kill()
                print(f"simulator: {exc}", file=sys.stderr)
        for srv in servers:
            srv.terminate()
            srv.wait(timeout=10)
        broker.stop()
    devices_s = _devices_time(db_url, rep)
    row = _row(n, rep, wall_s, devices_s, setup_s, before, after, counters, procs)
    row["db"] = db_url.split(":", 1)[0]
    for k, v in cpu.items():
        row[f"cpu_ms_per_device_{k}"] = round(v / n * 1000, 3)
    row["host_cpu_ms_per_device"] = round((cpu["push"] + cpu["serve"]) / n * 1000, 3)
    return row


def _devices_time(db_url: str, rep: dict[str, Any]) -> float | None:
    """Offer to the last verdict, from the rollout record (no CLI start-up in it)."""
    from edgeship.sdk.fleet._fleetdb import FleetDB

    with FleetDB(db_url) as db:
        key = rep["rollout"]
        rollout = db.load(key)
    assert rollout is not None
    wave = rollout.waves[0]
    return None if wave.closed_at is None or wave.offered_at is None else \
        round(wave.closed_at - wave.offered_at, 2)


def _row(n: int, rep: dict[str, Any], wall_s: float, devices_s: float | None, setup_s: float,
         before: dict[str, float], after: dict[str, float], counters: list[dict[str, Any]],
         procs: int) -> dict[str, Any]:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    msgs = delta("messages/received") + delta("messages/sent")
    byts = delta("bytes/received") + delta("bytes/sent")
    dev_msgs = sum(c.get("msgs_in", 0) + c.get("msgs_out", 0) for c in counters)
    dev_bytes = sum(c.get("bytes_in", 0) + c.get("bytes_out", 0) for c in counters)
    return {"devices": n, "procs": procs, "committed": rep["counts"]["committed"],
            "wall_s": round(wall_s, 2), "devices_s": devices_s,
            "s_per_100_devices": round(wall_s / n * 100, 3), "setup_s": round(setup_s, 1),
            "broker_msgs_per_device": round(msgs / n, 1),
            "broker_kib_per_device": round(byts / n / 1024, 1),
            "device_msgs_per_device": round(dev_msgs / n, 1),
            "device_payload_kib_per_device": round(dev_bytes / n / 1024, 1)}


def _raise_fd_limit(wanted: int) -> None:
    """Each device is a socket in the broker and in a simulator: raise the soft limit of
    open files (children inherit it) as far as the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    print(f"open files: soft limit {soft} -> {target} (hard {hard})", flush=True)
    if target < wanted:
        print(f"warning: {wanted} open files wanted, the hard limit is {hard}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="20,60" if quick() else "100,500,1000")
    p.add_argument("--procs", type=int, default=0,
                   help="simulator processes (0: one per 2 500 devices, at least 2)")
    p.add_argument("--db", default="sqlite", help="sqlite, postgres or both: sqlite,postgres")
    p.add_argument("-o", "--out", default=None, help="results directory")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = [e.strip() for e in args.db.split(",") if e.strip()]
    print_machine()
    _raise_fd_limit(max(sizes) + 1000)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rels = build_releases(tmp)
        print(f"model {rels['model_bytes']} bytes, delta {rels['delta_bytes']} bytes", flush=True)
        rows = []
        cluster = None
        if "postgres" in engines:
            from pgcluster import PgCluster

            cluster = PgCluster().start()
        try:
            for n in sizes:
                for engine in engines:
                    db = cluster.fresh_db(f"bench_{n}") if engine == "postgres" and cluster \
                        else "sqlite"
                    rows.append(run_size(n, rels, tmp, args.procs, db))
                    print_table(rows[-1:], title=f"{n} devices, {engine}")
        finally:
            if cluster is not None:
                cluster.stop()
    print_table(rows, title="fleet update: N simulated devices, one mosquitto, ~1 MB model delta")
    growth = []
    for r in rows:  # each size against the smallest one on the same database
        first = next(b for b in rows if b["db"] == r["db"])
        if r is not first:
            growth.append({
                "from": first["devices"], "to": r["devices"], "db": r["db"],
                "devices_x": round(r["devices"] / first["devices"], 2),
                "time_x": round(r["wall_s"] / first["wall_s"], 2),
                "host_cpu_per_device_x": round(r["host_cpu_ms_per_device"]
                                               / first["host_cpu_ms_per_device"], 2),
                "broker_cpu_per_device_x": round(r["cpu_ms_per_device_broker"]
                                                 / first["cpu_ms_per_device_broker"], 2)})
    if growth:
        print_table(growth, title="growth against the smallest size (per database)")
    write_result("fleet", {"model_bytes": rels["model_bytes"], "delta_bytes": rels["delta_bytes"],
                           "rows": rows, "growth": growth,
                           "target": "time and CPU per device <= linear from 1 000 to "
                                     "10 000 devices; host CPU (push + serve) <= 0.8 ms/device"},
                 out_dir=Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
