"""A private mosquitto on loopback for a laptop, a demo or a test: :class:`LocalBroker`.

``with LocalBroker() as b: b.url`` writes a generated config into a temporary directory,
runs mosquitto as a child process, waits until the port accepts connections, and stops the
child on exit. ``edgeship broker`` (edgeship/_cli/broker.py) runs one until Ctrl-C.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edgeship._errors import ConfigError, TransportError

__all__ = ["LocalBroker"]

_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def _check_port_free(port: int) -> None:
    """A port someone else listens on would pass the readiness probe: refuse it up front."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise TransportError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc


def _last_error(stderr: str) -> str:
    """mosquitto's most telling line (its first 'Error:'), without the timestamp."""
    lines = [line.split(": ", 1)[-1] for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line]
    return (errors or lines or ["no message"])[0][:300]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """A mosquitto child listening on 127.0.0.1:``port`` (0 = any free port)."""

    def __init__(self, port: int = 0, *, extra_config: str = "") -> None:
        binary = next((b for b in (shutil.which(c) or c for c in _CANDIDATES)
                       if Path(b).is_file()), None)
        if binary is None:
            raise ConfigError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary, self.port = binary, port or _free_port()
        self.extra_config = extra_config
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        _check_port_free(self.port)
        self._dir = tempfile.TemporaryDirectory(prefix="edgeship-broker-")
        config = Path(self._dir.name) / "mosquitto.conf"
        # set_tcp_nodelay: without it a 64 KiB chunk can wait ~40 ms for a delayed ACK
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                          "persistence false\nmax_packet_size 5242880\nset_tcp_nodelay true\n"
                          + self.extra_config)
        self.proc = subprocess.Popen([self.binary, "-c", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise TransportError(f"mosquitto exited: {_last_error(err)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TransportError(f"mosquitto did not listen on port {self.port} in {timeout:g}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

