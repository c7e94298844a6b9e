"""Run ``lint-imports`` (import-linter) on the contracts in ``pyproject.toml``.

import-linter finds a package's modules by walking its directory, but ``edgeship`` is
assembled from four directories (``package-dir`` maps converter/, sdk/ and agent/ under
it), so walking edgeship/ alone finds none of them. This script lays the package out as it
is installed: a temporary ``edgeship/`` of symlinks to edgeship/'s entries and to the
mapped directories, put first on ``PYTHONPATH``; the code checked is the checkout's own.

Usage: ``python tools/lint_imports.py [lint-imports options]`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """Subpackage name under ``edgeship`` -> its directory, from pyproject's package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix("edgeship."): ROOT / path
            for name, path in mapping.items() if name.startswith("edgeship.")}


def lay_out(tree: Path) -> None:
    """``tree/edgeship``: edgeship/'s own entries plus each mapped directory, as symlinks."""
    package = tree / "edgeship"
    package.mkdir()
    for entry in (ROOT / "edgeship").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, directory in package_dirs().items():
        (package / name).symlink_to(directory)


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
