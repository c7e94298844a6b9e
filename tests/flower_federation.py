"""A real Flower federation on loopback for the learning tests: one SuperLink and one
device node per simulated device (edgeship's node: Flower's own SuperNode with the warm
ClientApp executor), a relay that records every byte a device sends to the SuperLink, and
the digits world the federated test and bench share (skewed device stores, a release)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
from conftest import free_port, wait_for_port

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parent / "fixtures"


class Relay:
    """Forwards loopback TCP to ``upstream``; keeps what each side sent."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sent = bytearray()  # device -> SuperLink
        self.received = bytearray()  # SuperLink -> device
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for src, dst, log in ((client, upstream, self.sent), (upstream, client, self.received)):
                threading.Thread(target=self._pump, args=(src, dst, log), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    log += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


@contextmanager
def federation(workdir: Path, devices: list[dict[str, str]],
               relay_device: int | None = None) -> Iterator[tuple[str, Relay | None]]:
    """SuperLink + one SuperNode per ``devices`` entry (its node config); yields the
    SuperLink address and the relay in front of device ``relay_device``."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(workdir / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0"}
    port = free_port()
    procs = [_start([BIN / "flower-superlink", "--insecure",
                     "--disable-runtime-dependency-installation", "--port", str(port)],
                    env, workdir / "superlink.log")]
    relay = None
    try:
        wait_for_port(port, timeout=60)
        for i, config in enumerate(devices):
            target = port
            if i == relay_device:
                relay = Relay(port)
                target = relay.port
            node_config = " ".join(f'{k}="{v}"' for k, v in config.items())
            # the device node edgeship runs: a SuperNode and a warm ClientApp executor
            procs.append(_start([sys.executable, "-m", "edgeship.sdk.learning._node",
                                 "--insecure", "--superlink", f"127.0.0.1:{target}",
                                 "--node-config", node_config],
                                env, workdir / f"supernode-{i}.log"))
        yield f"127.0.0.1:{port}", relay
    finally:
        for proc in procs:  # each in its own session: the node's SuperNode and tasks too
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        if relay is not None:
            relay.close()


def _start(argv: list[str | Path], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(a) for a in argv], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


# ------------------------------------------------------------------ the digits world


def dim_camera(x: np.ndarray) -> np.ndarray:
    """Low-contrast digits: what the devices see that the model was not trained on."""
    return np.clip(x * 0.5 + 0.3, 0, 1).astype(np.float32)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sys.path.insert(0, str(FIXTURES))
    from digits import digits_split

    return digits_split()  # type: ignore[no-any-return]


def edgeship(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "EDGESHIP_DEBUG": ""})


def skewed_stores(root: Path, devices: int) -> list[Path]:
    """Each device's labelled examples: 80 low-contrast digits, mostly 3 of the 10 classes
    (device d: 3d, 3d+1, 3d+2 mod 10) and ~15 % of the others (strong skew, non-IID)."""
    from edgeship.sdk.learning._store import Example, ExampleStore

    xtr, ytr, _, _ = digits()
    rng = np.random.default_rng(0)
    stores = []
    for device in range(devices):
        major = {(3 * device + k) % 10 for k in range(3)}
        rows = [i for i in range(len(ytr)) if ytr[i] in major or rng.random() < 0.15][:80]
        store = ExampleStore(root / f"device-{device}" / "examples")
        for i in rows:
            store.add(Example(inputs={"input": dim_camera(xtr[i:i + 1])}, label=int(ytr[i]),
                              source="feedback"))
        stores.append(store.directory)
    return stores


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
    _, _, xte, yte = digits()
    np.savez(root / "heldout.npz", input=dim_camera(xte), label=yte)
    return root


def changed_tensors(before: Path, after: Path) -> set[str]:
    """Initializers of after/model.int8.onnx whose bytes differ from before's."""
    import onnx

    old, new = (onnx.load(d / "model.int8.onnx") for d in (before, after))
    kept = {t.name: t.SerializeToString() for t in old.graph.initializer}
    return {t.name for t in new.graph.initializer if kept.get(t.name) != t.SerializeToString()}


def assert_nothing_private_was_sent(sent: bytes, store_dir: Path, model: Path) -> None:
    """No sample's pixels, no label run, no clear local update in what a device sent."""
    import onnx
    from edgeship.sdk.learning._features import example_features
    from edgeship.sdk.learning._head import find_head, read_head
    from edgeship.sdk.learning._store import ExampleStore
    from edgeship.sdk.learning._train import TrainConfig, train_head

    examples = ExampleStore(store_dir).examples()
    for example in examples:  # no sample's pixels, in any 32-byte run
        pixels = example.inputs["input"].tobytes()
        assert all(pixels[i:i + 32] not in sent for i in range(0, len(pixels) - 32, 32))
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    assert labels.tobytes()[:64] not in sent
    # round 1's local update, recomputed exactly as the device did: masked, never sent
    fp32 = onnx.load(FIXTURES / "cnn.onnx")
    spec = find_head(fp32)
    weight, bias = read_head(fp32, spec)
    features, y = example_features(model, spec, examples)
    local = train_head(weight, bias, features, y, TrainConfig(epochs=5, learning_rate=0.05))
    clear = local.weight.astype(np.float32).tobytes()
    assert all(clear[i:i + 16] not in sent for i in range(0, 1024, 16))
