"""Keep the runtimes' own log lines off the user's terminal unless asked for (``-v``).

LiteRT's C++ runtime prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``
straight to file descriptor 2 when the first interpreter of a process is built; no
environment variable or Python API of ai-edge-litert turns it off (``TF_CPP_MIN_LOG_LEVEL``
does not reach TFLite's minimal logger). So :func:`runtime_chatter_filtered` points fd 2 at
a temporary file around interpreter creation, then writes back everything that is not
one of the runtime's ``INFO:`` / ``VERBOSE:`` lines: a real error (or another thread's
line written in that window) still reaches stderr, only later.

onnxruntime takes a log level per session: :func:`ort_log_level` is the one to use.
Setting ``EDGESHIP_VERBOSE=1`` (what ``edgeship -v`` does, inherited by the agent's
children) keeps every line of both runtimes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import IO

__all__ = ["VERBOSE_ENV", "ort_log_level", "runtime_chatter_filtered", "set_verbose", "verbose"]

VERBOSE_ENV = "EDGESHIP_VERBOSE"

# TFLite's minimal logger writes "<SEVERITY>: message"; INFO and VERBOSE are chatter
_CHATTER = re.compile(rb"^(INFO|VERBOSE): ")
# fd 2 is one per process: two threads must not swap it at once
_FD2_LOCK = threading.Lock()


def verbose() -> bool:
    """Whether the runtimes' own log lines are wanted (``EDGESHIP_VERBOSE`` set, not 0)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool = True) -> None:
    """Turn the runtimes' log lines on for this process and the processes it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def ort_log_level() -> int:
    """onnxruntime ``log_severity_level``: warnings and up with -v, else errors only."""
    return 2 if verbose() else 3


@contextlib.contextmanager
def runtime_chatter_filtered() -> Iterator[None]:
    """Drop the native runtime's INFO/VERBOSE lines written to fd 2 inside the block."""
    if verbose():
        yield
        return
    with _FD2_LOCK:
        redirect = _redirect_fd2()
        if redirect is None:  # no stderr, or no writable temp dir: run unfiltered
            yield
            return
        capture, saved = redirect
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _write_back(capture.read())
            capture.close()


def _redirect_fd2() -> tuple[IO[bytes], int] | None:
    """Point fd 2 at a fresh temporary file; the file and a copy of the old fd 2."""
    try:
        capture = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    except OSError:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        return None
    _flush_stderr()
    os.dup2(capture.fileno(), 2)
    return capture, saved


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # a closed or replaced sys.stderr
        sys.stderr.flush()


def _write_back(text: bytes) -> None:
    kept = b"".join(line for line in text.splitlines(keepends=True)
                    if not _CHATTER.match(line))
    if kept:
        with contextlib.suppress(OSError):
            os.write(2, kept)
