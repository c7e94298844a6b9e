"""Give the memory of large request and answer bodies back to the system (glibc only).

glibc serves an allocation of 128 KiB or more with its own ``mmap`` (returned at ``free``)
only until such a block is freed: then it raises that threshold to the freed size (up to
32 MiB) and later large buffers come from the heap of the thread's arena, which keeps them
after ``free``. A server thread per connection means one arena per thread: measured on
the agent, 8 concurrent 15 MiB JSON bodies, decoded one at a time, left the peak RSS
212 MB higher (each thread's arena kept its own ~25 MB) instead of 71 MB with a fixed
threshold. :func:`keep_large_blocks_mapped` fixes the threshold at 1 MiB for the process
(what ``MALLOC_MMAP_THRESHOLD_=1048576`` does), so a buffer that large is unmapped when
freed; :func:`trim` hands back what the heaps keep free (after a large answer).
Elsewhere (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

__all__ = ["keep_large_blocks_mapped", "trim"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_THRESHOLD = 1 << 20
_lock = threading.Lock()
_mapped: bool | None = None  # None: not tried yet


def _libc() -> Any | None:
    try:  # glibc's own name first: find_library runs ldconfig in a child process
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        from ctypes.util import find_library  # it imports subprocess: only here

        try:
            libc = ctypes.CDLL(find_library("c"))
        except OSError:
            return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process (once); False elsewhere."""
    global _mapped
    with _lock:
        if _mapped is None:
            libc = _libc()
            _mapped = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1)
        return _mapped


def trim() -> bool:
    """Return the free memory at the top of glibc's heaps to the system; False elsewhere."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
