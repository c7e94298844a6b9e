"""``edgeship agent run`` with a full disk injected at the storage boundary (tests only).

The file named by ``EDGESHIP_TEST_DISK_FULL`` lists the kinds of write that fail with
ENOSPC while it exists: ``chunk`` (half the chunk lands, then ENOSPC, as on a real full
disk), ``state`` (state.json), ``slot`` (a slot's model or offer). Everything else is the
real agent on real files.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import edgeship.agent._store as store

FLAG = Path(os.environ["EDGESHIP_TEST_DISK_FULL"])


def _full(kind: str) -> bool:
    try:
        return kind in FLAG.read_text().split()
    except FileNotFoundError:
        return False


def _enospc() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_write_atomic = store.write_atomic
_write_chunk = store.Store.write_chunk


def write_atomic(path: Path, data: bytes, **kwargs: Any) -> None:
    if _full("state" if Path(path).name == "state.json" else "slot"):
        _enospc()
    _write_atomic(path, data, **kwargs)


def write_chunk(self: store.Store, offset: int, data: bytes) -> None:
    if _full("chunk"):
        _write_chunk(self, offset, data[: len(data) // 2])
        _enospc()
    _write_chunk(self, offset, data)


store.write_atomic = write_atomic  # type: ignore[assignment]
store.Store.write_chunk = write_chunk  # type: ignore[method-assign]

from edgeship._cli.main import main  # noqa: E402

sys.argv = ["edgeship", "agent", "run", *sys.argv[1:]]
main()
