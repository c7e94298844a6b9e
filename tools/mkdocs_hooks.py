"""mkdocs hooks: the import package for mkdocstrings, the benchmark plots for the site.

``on_startup`` lays out the ``edgeship`` import package for mkdocstrings to read statically.

setuptools maps ``edgeship.sdk`` to ``sdk/``, ``edgeship.converter`` to ``converter/`` and
``edgeship.agent`` to ``agent/`` (pyproject ``package-dir``); griffe looks for
``edgeship/sdk/`` on disk. So build/docs-src/edgeship/ gets a symlink to each file of
``edgeship/`` and to the three mapped folders. Nothing is imported: importing would run
code (``edgeship/__main__.py`` is left out for that reason).

``on_files`` adds the benchmark plots (``hw-bench/results/*.png``) as ``results/NAME.png``,
so the benchmarks page shows the very files the benchmarks wrote, not copies.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "hw-bench" / "results"
MAPPED = {"sdk": "sdk", "converter": "converter", "agent": "agent"}


def on_startup(command: str, dirty: bool) -> None:
    # at startup, before any plugin's on_config: mkdocstrings keeps only search paths
    # that exist when it is configured
    target = ROOT / "build" / "docs-src" / "edgeship"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in (ROOT / "edgeship").iterdir():
        if (entry.suffix == ".py" and entry.name != "__main__.py") or entry.name == "_cli":
            (target / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (target / name).symlink_to(ROOT / folder)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(f"results/{png.name}", str(RESULTS.parent), config["site_dir"],
                          config["use_directory_urls"]))
    return files
