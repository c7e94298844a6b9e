"""README's "five-minute tour", run verbatim: its bash block is cut out of the Markdown and
run by bash in a fresh directory, with only the broker's and the agent's ports changed to
free ones. So the README cannot drift from the code: a renamed option, a changed answer
or a missing health check fails here.

Real parts throughout: ``edgeship broker`` starts a real mosquitto, the agent runs LiteRT,
curl asks it over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TOUR_PORTS = ("18830", "8500")  # the broker's and the agent API's, as README writes them


def tour_block() -> str:
    """The first ```bash block after README's "## A five-minute tour" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A five-minute tour", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0] + "\n"


def _on_free_ports(script: str) -> str:
    for port in TOUR_PORTS:
        assert re.search(rf"\b{port}\b", script), f"the tour no longer uses port {port}"
        script = re.sub(rf"\b{port}\b", str(free_port()), script)
    return script


@pytest.mark.slow
def test_readme_tour_runs_verbatim(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the tour asks with curl (.ci/run installs it)"
    work, home = tmp_path / "work", tmp_path / "home"
    (work / "tests").mkdir(parents=True)
    home.mkdir()
    (work / "tests" / "fixtures").symlink_to(FIXTURES)  # read-only inputs, as in a checkout
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "EDGESHIP_FLEET_STATE",
                 "EDGESHIP_VERBOSE"):
        env.pop(name, None)
    proc = subprocess.Popen(["bash", "-e", "-c", _on_free_ports(tour_block())], cwd=work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:  # whatever happened, no broker, server or agent outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"

    assert "release model 1.0.0" in out and "golden check" in out
    assert "1 committed" in out
    # the health check, in the agent's own log (what the tour greps)
    assert '"event": "health_check_done", "ok": true' in out
    # a real answer, with where it came from and which release gave it
    answer = next(line for line in out.splitlines() if '"outputs"' in line and '"data"' in line)
    assert '"parameters":{"source":"local","version":"1.0.0"}' in answer
    probs = [float(v) for v in re.search(r'"data":\[([^\]]+)\]', answer).group(1).split(",")]
    assert len(probs) == 10 and max(probs) > 0.5
    # quiet: no runtime chatter anywhere the user looks
    agent_log = (work / "tour" / "agent.log").read_text()
    for text in (out, err, agent_log):
        assert "INFO: " not in text
    # everything under tour/ (nothing in HOME, no lock files left)
    assert sorted(p.name for p in work.iterdir()) == ["tests", "tour"]
    assert list(home.rglob("*")) == []
    assert list(work.rglob("*.lock")) == []
