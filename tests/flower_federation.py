"""A real Flower federation on loopback for the learning tests: one SuperLink and one
SuperNode per simulated device (each a process of Flower's own CLI), and a relay that
records every byte a device sends to the SuperLink."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from conftest import free_port, wait_for_port

BIN = Path(sys.executable).parent


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
           "FLWR_HOME": str(workdir / "flwr-home")}
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
            procs.append(_start([BIN / "flower-supernode", "--insecure", "--superlink",
                                 f"127.0.0.1:{target}", "--port", str(free_port()),
                                 "--node-config", node_config],
                                env, workdir / f"supernode-{i}.log"))
        yield f"127.0.0.1:{port}", relay
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
        if relay is not None:
            relay.close()


def _start(argv: list[str | Path], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(a) for a in argv], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
