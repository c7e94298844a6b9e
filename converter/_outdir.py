"""Atomic output directory: everything is written into a temporary sibling of OUT and
renamed into place at the end, so a failed conversion leaves no (half-written) OUT."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeship.sdk._fileio import fsync_dir

from edgeship._errors import InputError


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# what marks a directory as an earlier OUT/ that may be replaced as a whole
_OUT_MARKERS = ("report.json", "quant_params.json")


def _check_replaceable(out: Path) -> None:
    """OUT is replaced as a whole: refuse a directory holding something else (``-o .``
    would otherwise move the user's files away and delete them)."""
    if not out.is_dir() or any((out / name).is_file() for name in _OUT_MARKERS):
        return
    try:
        others = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read output directory {out}: {exc.strerror}") from exc
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise InputError(f"output directory {out} is not empty and not an earlier edgeship "
                         f"convert output ({shown}); give a new or empty directory")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp dir next to ``out``; on success it replaces ``out`` in one rename."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a directory")
    _check_replaceable(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot create output next to {out}: {exc.strerror}") from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; OUT should look like any dir
        yield tmp
        fsync_dir(tmp)
        old = None
        if out.exists():  # swap: the old OUT moves aside, the new one takes its name
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "out")
        os.replace(tmp, out)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
