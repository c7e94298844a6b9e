"""edgeship laid out as it is installed, for tools that find modules by walking directories.

``pyproject.toml``'s ``package-dir`` assembles the package ``edgeship`` from four
directories (edgeship/, and converter/, sdk/, agent/ under it). An editable install finds
them through an import hook, but import-linter and mypy walk the directory of ``edgeship``
and would see only edgeship/. :func:`lay_out` makes ``<tree>/edgeship``: symlinks to
edgeship/'s own entries and to each mapped directory, so the code checked is the
checkout's own. :func:`repo_path` turns a path in the tree back into the checkout's.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    """Subpackage name under ``edgeship`` -> its directory (relative to the checkout)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix("edgeship."): path
            for name, path in mapping.items() if name.startswith("edgeship.")}


def lay_out(tree: Path) -> Path:
    """Fill ``tree`` with ``edgeship/`` (made afresh) and return ``tree``."""
    package = tree / "edgeship"
    if package.exists():
        for entry in package.iterdir():
            entry.unlink()
        package.rmdir()
    package.mkdir(parents=True)
    for entry in (ROOT / "edgeship").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, directory in package_dirs().items():
        (package / name).symlink_to(ROOT / directory)
    return tree


def repo_path(tree_path: str) -> str:
    """``edgeship/sdk/_x.py`` (as a tool run in the tree prints it) -> ``sdk/_x.py``."""
    for name, directory in package_dirs().items():
        prefix = f"edgeship/{name}/"
        if tree_path.startswith(prefix):
            return directory.rstrip("/") + "/" + tree_path[len(prefix):]
    return tree_path
