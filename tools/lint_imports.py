"""Run ``lint-imports`` (import-linter) on the contracts in ``pyproject.toml``.

import-linter finds modules by walking the package's directory, which for ``edgeship``
holds none of converter/, sdk/, agent/ (``package-dir`` maps them in): the check runs on
the package laid out as installed (tools/_layout.py), first on ``PYTHONPATH``.

Usage: ``python tools/lint_imports.py [lint-imports options]`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _layout import ROOT, lay_out


def main(argv: list[str]) -> int:
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) \
        or shutil.which("lint-imports")
    if lint is None:
        print("lint-imports not found: pip install -e '.[test]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="edgeship-lint-") as tmp:
        lay_out(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [tmp, *filter(None, [os.environ.get("PYTHONPATH")])]))
        # run from the tree: lint-imports puts the working directory first on sys.path, and
        # the checkout's own edgeship/ would hide the laid-out one
        return subprocess.call([lint, str(ROOT / "pyproject.toml"), "--no-cache", *argv],
                               cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
