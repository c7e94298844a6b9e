"""Run ``mypy`` (``[tool.mypy]`` in pyproject.toml: strict) on the whole ``edgeship`` package.

mypy finds modules by walking directories, and ``package-dir`` puts converter/, sdk/ and
agent/ under ``edgeship``: checked file by file they would be top-level packages and every
``from edgeship.sdk ...`` an unresolved import. So mypy checks ``-p edgeship`` laid out as
installed (tools/_layout.py, kept in .mypy_cache/ so its cache stays warm) and the paths it
prints are turned back into the checkout's.

Usage: ``python tools/typecheck.py [mypy options]`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import re
import subprocess
import sys

from _layout import ROOT, lay_out, repo_path

_LOCATION = re.compile(r"^(edgeship/[^:]+)(:.*)$", re.DOTALL)


def main(argv: list[str]) -> int:
    tree = lay_out(ROOT / ".mypy_cache" / "layout")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache"), *argv, "-p", "edgeship"],
        cwd=tree, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        where = _LOCATION.match(line)
        print(repo_path(where[1]) + where[2] if where else line)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
