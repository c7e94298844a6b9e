"""Crash-safe file writes shared by every part of edgeship.

A file written with :func:`write_atomic` holds either its old bytes or its new ones after
a crash or power loss at any instant, never a mix: the data goes to a temp file in the
same directory, is fsynced, renamed over the target, and the directory is fsynced so the
rename itself is durable. Slots and state on a device, keys, releases and converter
output all go through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from edgeship._errors import InputError

__all__ = ["fsync_dir", "make_output_dir", "read_head", "write_atomic"]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_head(path: str | Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (OSError as usual): the caller compares the
    length with its limit, and a huge file (or /dev/zero) is never read whole."""
    with open(path, "rb") as handle:
        return handle.read(limit + 1)


def make_output_dir(path: Path, what: str, *, mode: int = 0o777) -> None:
    """Create ``path`` (and parents) and prove a file can be made in it, so that an
    unwritable output is one :class:`InputError` naming ``what`` before anything is written."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: exists and is not a directory")
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot write there: {exc.strerror or exc}") from exc


def write_atomic(path: Path, data: bytes, *, mode: int | None = None,
                 pause: float = 0.0) -> None:
    """Write ``data`` to ``path`` atomically; ``mode`` sets the permissions before the
    file is visible (e.g. 0o600 for private keys).

    ``pause`` (tests only) sleeps half way through the write to widen the crash window.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644 if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            half = len(data) // 2
            handle.write(data[:half])
            if pause:
                handle.flush()
                time.sleep(pause)
            handle.write(data[half:])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def lock_file(path: Path, *, tries: int = 100) -> int:
    """An fd holding an exclusive flock on the file that ``path`` names right now
    (created if missing). Raises BlockingIOError when another process holds it, and
    OSError when the file keeps being replaced under us (a holder removes it as it
    lets go: a file opened just before that is not the one the next taker locks)."""
    import fcntl

    for _ in range(tries):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the holder we waited for
            same = False
        if same:
            return fd
        os.close(fd)
    raise OSError(f"the lock file {path} keeps being replaced")
