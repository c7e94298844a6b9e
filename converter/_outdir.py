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


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp dir next to ``out``; on success it replaces ``out`` in one rename."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a directory")
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
