"""The agent's end of the shadow worker's pipes: one child process, reads and writes
bounded by deadlines (split from :mod:`edgeship.agent._shadow`, which drives it).

The child is ``python -m edgeship.agent._shadow_worker``; the frames are that module's.
It dies with the agent (see :mod:`edgeship.agent._child`).
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from edgeship.agent._child import child_env

if TYPE_CHECKING:
    from edgeship.agent._shadow import ShadowConfig

__all__ = ["Worker", "WorkerDied"]


class WorkerDied(Exception):
    """The child exited, closed its pipe, sent garbage or did not answer in time."""


class Worker:
    """One child process and its pipes; reads are bounded by deadlines."""

    def __init__(self, config: ShadowConfig) -> None:
        self.config = config
        # the child needs no secret: a PEM key in the agent's environment ([encryption]
        # key_env) stays out of it (the model arrives decrypted on the pipe)
        env = child_env()  # no device key; the child dies with us
        self.proc = subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "edgeship.agent._shadow_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env)
        self.buf = bytearray()

    def send(self, frame: bytes, timeout: float) -> None:
        """Write ``frame`` within ``timeout`` s: a hung child stops reading, and a frame
        larger than the pipe (64 KiB) would block the feeder forever (never restarted)."""
        assert self.proc.stdin is not None
        view = memoryview(frame)
        deadline = time.monotonic() + timeout
        try:
            fd = self.proc.stdin.fileno()
            os.set_blocking(fd, False)  # written here only, never through the buffer
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerDied(f"worker took no input for {timeout:g}s")
                _, ready, _ = select.select([], [fd], [], left)
                if ready:
                    try:
                        view = view[os.write(fd, view[:1 << 20]):]
                    except BlockingIOError:
                        continue
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise WorkerDied(self.describe_exit(f"pipe closed ({exc})")) from exc

    def receive(self, timeout: float, max_blob: int) -> tuple[dict[str, Any], list[bytes]]:
        from edgeship.agent._shadow_worker import MAX_HEADER, parse_header

        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">I", self._read(4, deadline, timeout))
        if n > MAX_HEADER:
            raise WorkerDied(f"worker sent a {n}-byte header")
        try:
            header, sizes = parse_header(self._read(n, deadline, timeout), max_blob)
        except ValueError as exc:
            raise WorkerDied(f"worker sent a malformed frame: {exc}") from exc
        return header, [self._read(size, deadline, timeout) for size in sizes]

    def _read(self, n: int, deadline: float, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied(f"worker did not answer in {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, max(1 << 16, n - len(self.buf)))
            if not chunk:
                raise WorkerDied(self.describe_exit("worker closed its pipe"))
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def describe_exit(self, fallback: str) -> str:
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return fallback
        return f"worker killed by signal {-code}" if code < 0 else f"worker exited with {code}"

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()  # EOF: a healthy worker exits by itself
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
