"""`edgeship demo` run as CI runs it: a subprocess with no broker or service set up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_runs_the_whole_loop_and_leaves_nothing_running(tmp_path: Path) -> None:
    workdir, home = tmp_path / "demo", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "EDGESHIP_VERBOSE")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env={**env, "COLUMNS": "200", "HOME": str(home)}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for check in ("delta update installed as a shadow", "promoted shadow committed",
                  "the shadow reports agreement on live requests",
                  "no plaintext model on the device's disk", "drift alert raised on shifted inputs",
                  "forged update rejected", "bad release rolled back",
                  "low-confidence answer escalated to the cloud",
                  "no local model: the cloud answers"):
        assert f"PASS  {check}" in proc.stdout, proc.stdout[-3000:]
    assert "FAIL" not in proc.stdout
    assert "Traceback" not in proc.stderr
    assert _processes_mentioning(str(workdir)) == []
    # it writes only in its folder (nothing in HOME, no rollout lock files left), and no
    # runtime's INFO chatter reaches the user or the service logs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "home"]
    assert list(home.rglob("*")) == []
    assert list(workdir.rglob("*.lock")) == []
    for text in (proc.stdout, proc.stderr,
                 *(log.read_text() for log in (workdir / "logs").glob("*.log"))):
        assert "INFO: " not in text
    # a second run replaces its own work dir
    assert (workdir / ".edgeship-demo").exists()


def test_demo_refuses_a_foreign_nonempty_workdir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "demo", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not empty" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_killed_with_sigterm_stops_its_children(tmp_path: Path) -> None:
    import signal
    import time

    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "demo", "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the services are up, then stop the demo
        if "ask the device before it has any model" in line:
            break
    assert _processes_mentioning(str(workdir)), "the demo's services should be running now"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # a loaded machine takes its time to end them
    while _processes_mentioning(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(workdir)) == []
