"""The demo's plumbing: child processes in their own sessions that are stopped however
the demo ends, and the loopback helpers it waits on (``edgeship demo``, see _demo.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgeship._errors import EdgeshipError

__all__ = ["Processes", "exit_on_termination", "free_port", "wait_http"]


class Processes:
    """Child processes in their own sessions, all stopped on exit."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "edgeship", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def exit_on_termination() -> dict[int, Any]:
    """Turn SIGTERM/SIGHUP into SystemExit so the ``finally`` that stops the children runs
    (they live in their own sessions and would outlive a plain kill of the demo)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise EdgeshipError(f"{url} did not answer within {timeout:.0f}s ({exc})") from exc
            time.sleep(0.1)
