"""docs/cli.md and README's command list are generated from click's help: they must match
the code (regenerate with `python tools/gen_cli_reference.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_up_to_date() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_reference.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"{out.stderr.strip()} (run: python tools/gen_cli_reference.py)"


def test_every_command_is_in_the_reference() -> None:
    from edgeship._cli.main import _COMMANDS

    reference = (ROOT / "docs" / "cli.md").read_text()
    for name in _COMMANDS:
        assert f"## edgeship {name}" in reference, name
