"""The docs site's sources stay complete: the API page is generated from the packages'
public names (so each has an entry), each of those names has a docstring to show, every
page is in the nav, and CI builds the site with --strict (a broken link fails there)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_api_reference_is_generated_from_the_code() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_api_reference.py"),
                           "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_public_name_has_an_api_entry_and_a_docstring() -> None:
    entries = set(re.findall(r"^::: (\S+)$", (DOCS / "api.md").read_text(), re.M))
    for package in ("edgeship.sdk", "edgeship.converter"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert f"{module._EXPORTS[name]}.{name}" in entries, f"{package}.{name}"
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert (obj.__doc__ or "").strip(), f"{package}.{name} has no docstring"
            if inspect.isclass(obj):
                for method in _public_methods(obj):
                    assert (method.__doc__ or "").strip(), f"{package}.{name}.{method.__name__}"


# (de)serialization of a dataclass: the name says it all, the fields are documented above
_SELF_EXPLAINING = {"to_dict", "to_json", "to_bytes", "from_dict", "from_json", "from_bytes"}


def _public_methods(cls: type) -> list:
    found = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") or attr in _SELF_EXPLAINING:
            continue
        func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        if inspect.isfunction(func):
            found.append(func)
    return found


def test_every_page_is_in_the_nav_and_ci_builds_the_site_strict() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r":\s+(\S+\.md)\s*$", config, re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^[^#\n]*mkdocs build --strict(?! -q)", ci, re.M)
    assert "pip install -q -e '.[test,docs]'" in ci
