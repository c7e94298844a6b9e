"""The ``edgeship`` command line. Each top-level command lives in its own module and is
imported only when it runs, so ``edgeship agent run`` never pays for the converter."""

from __future__ import annotations

import os
import time

# onnxruntime (1.2x on Linux) writes a telemetry device id and event store under
# ~/.cache/Microsoft/DeveloperTools as soon as it is imported; an edgeship command writes only
# where it is told to (set ORT_DISABLE_TELEMETRY=0 to keep onnxruntime's default)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_IMPORTED = time.monotonic()  # this package is the first part of edgeship a command imports
_first_run = True
_started: float | None = None


def begin() -> None:
    """Mark a command's start (``main()`` calls it): the process start for the first
    command of a process, so start-up and imports count, else now."""
    global _first_run, _started
    _started = _IMPORTED if _first_run else time.monotonic()
    _first_run = False


def end() -> None:
    global _started
    _started = None


def wall_seconds(fallback_start: float) -> float:
    """Wall-clock seconds since the command started (``fallback_start`` when the command
    was not run through ``main()``, e.g. click's test runner)."""
    return time.monotonic() - (_started if _started is not None else fallback_start)
