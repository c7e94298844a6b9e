"""``edgeship convert`` on a terminal: every phase after calibration names itself on a
progress line (no silent stretch after the bar), and the summary's time is wall-clock."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def _convert_on_a_terminal(out: Path) -> tuple[str, bytes, float]:
    """stdout, what the terminal (stderr) received, and the wall-clock seconds of the run."""
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "convert", str(FIXTURES / "mlp.onnx"),
         "--calib", str(FIXTURES / "mlp_calib.npz"), "--eval", str(FIXTURES / "mlp_eval.npz"),
         "-o", str(out)],
        stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(slave)
    terminal = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        elif proc.poll() is not None:
            break
    stdout = proc.communicate(timeout=60)[0].decode()
    os.close(master)
    assert proc.returncode == 0, (stdout, terminal[-2000:])
    return stdout, terminal, time.monotonic() - started


def test_phases_after_calibration_show_and_time_is_wall_clock(tmp_path: Path) -> None:
    stdout, terminal, wall = _convert_on_a_terminal(tmp_path / "out")
    for label in (b"calibrating", b"quantizing", b"measuring", b"evaluating"):
        assert label in terminal, (label, terminal[-2000:])
    shown = float(re.search(r"time\s+([0-9.]+) s", stdout).group(1))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # the run's own wall clock bounds it from above; the conversion phases alone (what it
    # used to print) leave out start-up, the eval and writing, so it must be well above
    assert shown <= wall
    assert shown > report["conversion_seconds"] + report["timings"].get("eval", 0.0)
    assert shown >= 0.6 * wall, (shown, wall)
