"""Helpers shared by the agent / OTA / fleet-serve tests (no tests here).

Tiny real ONNX models whose output tells which version answers, real signed releases
(``Release.build``), an in-memory shell for the pure OTA core, and a real agent
subprocess wrapper.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

IN, OUT = 64, 16


def make_model(path: Path, bias: float, *, seed: int = 0, dim: int = IN) -> Path:
    """y = x @ W + bias: W fixed by ``seed``, so versions differ only in a few bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((dim, OUT)).astype(np.float32)
    b = np.full((OUT,), bias, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected(bias: float, x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((x.shape[-1], OUT)).astype(np.float32)
    return (x.astype(np.float32) @ w + np.float32(bias)).astype(np.float32)


GOLDEN_X = np.linspace(-1, 1, IN, dtype=np.float32).reshape(1, IN)


def make_golden(path: Path, bias: float, *, wrong: bool = False, seed: int = 0) -> Path:
    out = expected(bias, GOLDEN_X, seed=seed) + (5.0 if wrong else 0.0)
    np.savez(path, x=GOLDEN_X, output=out, atol=np.float32(1e-3))
    return path


def version_bias(version: str) -> float:
    major, minor, patch = (int(p) for p in version.split("."))
    return float(major * 100 + minor * 10 + patch)


def make_keys(tmp: Path) -> Path:
    from edgeship.sdk.release._keydir import KeyDir

    keydir = tmp / "keys"
    KeyDir(keydir).init()
    return keydir


def make_release(tmp: Path, keydir: Path, version: str, *, base: Path | None = None,
                 bad_golden: bool = False, name: str = "model", seed: int = 0) -> Path:
    """A signed release of the linear model whose bias encodes ``version``; a different
    ``seed`` changes every weight (so a delta is about as large as the model)."""
    from edgeship.sdk.release._release import Release

    bias = version_bias(version)
    work = tmp / "build" / version
    model = make_model(work / f"{name}.onnx", bias, seed=seed)
    golden = make_golden(work / "golden.npz", bias, wrong=bad_golden, seed=seed)
    out = tmp / "releases" / version
    Release.build(model, version=version, keydir=keydir, out=out, golden=golden,
                  bases=[base] if base else [], model_name=name)
    return out


def offer_bytes(reldir: Path) -> bytes:
    from edgeship.sdk.release._release import Release

    return Release.load(reldir).offer().to_bytes()


def shadow_offer(reldir: Path) -> bytes:
    """The release's root-signed offer, pushed as a shadow (``mode = "shadow"``)."""
    from dataclasses import replace

    from edgeship.sdk.release._release import Release

    return replace(Release.load(reldir).offer(), mode="shadow").to_bytes()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "Z (zombie)" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


# ---- a real agent process -----------------------------------------------------------------
def write_config(tmp: Path, *, broker_url: str, port: int, root_pub: Path, device: str = "dev-1",
                 fleet: str = "t", initial: Path | None = None, chunk_size: int = 4096,
                 extra: str = "", fallback: str = "") -> Path:
    cfg = tmp / f"agent-{device}.toml"
    cfg.write_text(
        f'device_id = "{device}"\nfleet = "{fleet}"\ndata_dir = "{tmp / ("data-" + device)}"\n'
        f'root_key = "{root_pub}"\n\n[broker]\nurl = "{broker_url}"\n\n'
        f'[model]\nname = "model"\nthreads = 1\ninitial = "{initial or ""}"\n\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n\n'
        f"[ota]\nchunk_size = {chunk_size}\nrequest_timeout_s = 2\nhealth_timeout_s = 30\n\n"
        f"[telemetry]\ninterval_s = 1\n{extra}\n{fallback}\n"
    )
    return cfg


class AgentProc:
    """``edgeship agent run`` as a subprocess; its JSON log lines are collected."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None,
                 launcher: list[str] | None = None) -> None:
        self.config, self.port = config, port
        # argv that runs the agent, "run" included (a test wrapper may inject faults)
        self.launcher = launcher or [sys.executable, "-m", "edgeship", "agent", "run"]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> AgentProc:
        self.proc = subprocess.Popen(
            [*self.launcher, "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=self.env)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if wait:
            self.wait_live()
        return self

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.decode(errors="replace").rstrip()}
            self.log.append(line)
            self.lines.put(line)

    def wait_ready(self, timeout: float = 60.0, broker_s: float = 30.0) -> None:
        """Ready to answer and, unless it said its broker is unreachable, subscribed: the
        agent connects once its model answers (issue 16), so a test that publishes a
        non-retained message right after this would otherwise race the subscription. (A
        fixed 3 s for the connection was short on a loaded machine.)"""
        self.wait_live(timeout, what="ready")
        deadline = time.monotonic() + broker_s
        while time.monotonic() < deadline:
            if any(line.get("event") == "broker_unreachable" for line in list(self.log)):
                return  # the broker is down (on purpose): nothing to wait for
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=1) as r:
                    if b"\nedgeship_broker_connected 1.0" in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.02)

    def wait_live(self, timeout: float = 60.0, what: str = "live") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log[-5:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/{what}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"agent not live after {timeout}s: {self.log[-5:]}")

    def wait_log(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0
                 ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if pred(line):
                return line
        raise TimeoutError(f"no matching log line in {timeout}s; last: {self.log[-5:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def http_json(url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.flatten().tolist()}]}


class Watcher:
    """Collects the status messages of a fleet (a real MQTT subscriber)."""

    def __init__(self, broker_url: str, fleet: str = "t") -> None:
        from edgeship.sdk.transport._mqtt import MqttEdge

        self.history: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.edge = MqttEdge(broker_url, client_id=f"watch-{os.getpid()}-{id(self)}",
                             subscriptions=[f"edgeship/{fleet}/+/status"],
                             on_message=self._on_message)
        self.edge.start()
        assert self.edge.wait_connected(30)

    def _on_message(self, msg: Any) -> None:
        doc = json.loads(msg.payload)
        with self._cond:
            self.history.append(doc)
            self.latest[doc["device"]] = doc
            self._cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], device: str = "dev-1",
             timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                doc = self.latest.get(device)
                if doc is not None and pred(doc):
                    return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"status never matched; last {doc}")
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.edge.publish(topic, payload, retain=retain)
        assert info is not None
        info.wait_for_publish(5)

    def close(self) -> None:
        self.edge.stop()


def build_whole_release(tmp: Path, keys: Path, version: str, bias: float, *,
                        dim: int = 4096) -> Path:
    """A release of a ``dim``-wide model (4096: a 256 KiB weight matrix) with its golden
    check and no base: every device fetches the whole artifact."""
    from edgeship.sdk.release._release import Release

    work = tmp / "build" / version
    model = make_model(work / "model.onnx", bias, dim=dim)
    x = np.linspace(-1, 1, dim, dtype=np.float32).reshape(1, dim)
    np.savez(work / "golden.npz", x=x, output=expected(bias, x), atol=np.float32(1e-2))
    out = tmp / "releases" / version
    Release.build(model, version=version, keydir=keys, out=out, golden=work / "golden.npz",
                  model_name="model")
    return out


@contextmanager
def canned_cloud(body: bytes) -> Iterator[int]:
    """A loopback HTTP server that answers every POST with ``body`` (a v2 answer): a cloud
    model whose answer the test fixes. Yields its port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def start_fleet_serve(broker_url: str, *reldirs: Path, fleet: str | None = None
                      ) -> subprocess.Popen[bytes]:
    """``edgeship fleet serve`` of ``reldirs`` as a subprocess (terminate it when done)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", broker_url,
         *(["--fleet", fleet] if fleet else []), "--releases", *map(str, reldirs)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def served_swarm(broker_url: str, fleet: str, rels: dict[str, Path], serve: list[Path],
                 devices: list[str], chunk_size: int) -> Iterator[Any]:
    """``fleet serve`` of ``serve`` plus a SwarmProc of ``devices`` on ``rels["v1"]`` (the
    simulated devices ready); both stopped at the end."""
    from simulator import SwarmProc

    server = start_fleet_serve(broker_url, *serve, fleet=fleet)
    sim = SwarmProc(broker_url=broker_url, fleet=fleet, root=rels["root"], initial=rels["v1"],
                    devices=devices, chunk_size=chunk_size, request_timeout_s=1.0)
    try:
        assert sim.wait_ready() == len(devices)
        yield sim
    finally:
        sim.stop()
        server.terminate()
        server.wait(timeout=10)


def served_version(url: str) -> tuple[str | None, np.ndarray | None]:
    """Which version answers, and its output for GOLDEN_X (None if nothing serves)."""
    status, doc = http_json(f"{url}/v2/models/model/infer", infer_body(GOLDEN_X))
    if status != 200:
        return None, None
    y = np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(1, OUT)
    return doc["parameters"]["version"], y


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _slow_socket(port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\n")
        return sock
    except OSError:
        return None


@contextmanager
def slowloris(port: int, peers: int) -> Iterator[None]:
    """``peers`` slowloris connections to the agent API on ``port`` while the block runs:
    each sends a header byte a second, and reconnects when closed. (Also hw-bench's attack.)"""
    slow = [_slow_socket(port) for _ in range(peers)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for i, sock in enumerate(slow):
                try:
                    if sock is None:
                        raise OSError("closed")
                    sock.sendall(b"X")
                except OSError:
                    if sock is not None:
                        sock.close()
                    slow[i] = _slow_socket(port)

    attacker = threading.Thread(target=trickle, daemon=True)
    attacker.start()
    try:
        yield
    finally:
        stop.set()
        attacker.join(timeout=10)
        for sock in slow:
            if sock is not None:
                sock.close()
