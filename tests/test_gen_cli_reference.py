"""tools/gen_cli_reference.py itself: the README block between markers, --check on stale
files, and the text being exactly what `--help` prints. (Whether the committed docs are
fresh is tests/test_cli_reference.py.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gen_cli_reference.py"


def _tool() -> object:
    spec = importlib.util.spec_from_file_location("gen_cli_reference", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_block_is_filled_between_markers_only() -> None:
    tool = _tool()
    text = f"# x\nintro\n{tool.START}\nold list\n{tool.END}\nafter\n"
    fresh = tool.render_readme(text)
    assert fresh.startswith(f"# x\nintro\n{tool.START}\n- [`edgeship agent`](docs/cli.md#")
    assert fresh.endswith(f"{tool.END}\nafter\n") and "old list" not in fresh
    assert "- [`edgeship fleet push`](docs/cli.md#edgeship-fleet-push) — " in fresh
    assert tool.render_readme(fresh) == fresh
    assert tool.render_readme("# no markers\n") is None


def test_reference_covers_every_command_with_its_real_help() -> None:
    text = _tool().render()
    from edgeship._cli.main import _COMMANDS

    for name in _COMMANDS:
        assert f"\n## edgeship {name}\n" in text, name
    # the same text a user gets from --help, at the same width
    real = subprocess.run([sys.executable, "-m", "edgeship", "bench", "--help"],
                          capture_output=True, text=True, env={"COLUMNS": "100", "PATH": ""},
                          timeout=60, check=True).stdout
    assert real.replace("python -m edgeship", "edgeship").strip() in text


def test_check_mode_flags_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n")
    readme = tmp_path / "README.md"
    readme.write_text("# r\n<!-- cli-commands:start -->\n<!-- cli-commands:end -->\n")
    args = [sys.executable, str(TOOL), "-o", str(stale), "--readme", str(readme)]
    proc = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "run python tools/gen_cli_reference.py" in proc.stderr
    assert f"{stale} is stale" in proc.stderr and f"{readme} is stale" in proc.stderr
    assert subprocess.run(args, capture_output=True, timeout=60).returncode == 0
    assert "edgeship convert" in readme.read_text()
    assert subprocess.run([*args, "--check"], timeout=60).returncode == 0
