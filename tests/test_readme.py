"""What README.md promises a new user holds: a license file matching pyproject, a virtual
environment before the first pip install, the Python versions pyproject allows, and the
very test command that CI (.ci/run) runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.10 of requires-python
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _first_bash_block() -> list[str]:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_license_file_is_the_apache_2_text_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text


def test_first_command_makes_a_venv_before_pip_install() -> None:
    commands = " && ".join(_first_bash_block())
    venv = commands.find("python3 -m venv .venv")
    activate = commands.find(". .venv/bin/activate")
    pip = commands.find("pip install -e '.[demo]'")
    assert 0 <= venv < activate < pip, commands
    assert "python3-venv" in commands  # Debian's python3 has no venv module without it


def test_readme_names_the_python_versions_pyproject_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    oldest = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert f"Python** {oldest} or newer" in README
    assert re.search(r"CI tests CPython 3\.\d+", README)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    pytest_lines = [line.strip() for line in ci.splitlines()
                    if "-m pytest" in line and not line.strip().startswith("#")]
    assert len(pytest_lines) == 1, pytest_lines
    assert f"`{pytest_lines[0]}`" in README
    assert "bash .ci/run" in _first_bash_block()
    install = re.search(r"pip install -q? ?-e '(\.\[[a-z,]+\])'", ci).group(1)
    assert f"pip install -e '{install}'" in README


def test_readme_states_what_it_costs_measured() -> None:
    costs = README.split("**Requirements and what it costs**", 1)[1].split("\n\n", 2)[1]
    for what in ("**Disk:**", "**Memory:**", "**Time:**"):
        line = costs.split(what, 1)[1].split("- **", 1)[0]
        assert re.search(r"\d+ (MB|s)\b", line), (what, line)
