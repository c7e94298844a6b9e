"""glibc's allocator controls through ctypes, shared by the processes that tune them: the
serving path (large bodies mapped, heaps trimmed: ``sdk/serving/_memory.py``) and
``edgeship convert`` (freed activation buffers kept: ``converter/_malloc.py``)."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["M_ARENA_MAX", "M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "glibc", "mallopt"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)


def glibc() -> Any | None:
    """The C library when it has glibc's ``mallopt`` and ``malloc_trim``; None elsewhere
    (musl, macOS)."""
    try:  # glibc's own name first: find_library runs ldconfig in a child process
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        from ctypes.util import find_library  # it imports subprocess: only here

        try:
            libc = ctypes.CDLL(find_library("c"))
        except OSError:
            return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def mallopt(*settings: tuple[int, int]) -> bool:
    """Apply ``(parameter, value)`` pairs in order; False where there is no glibc or
    glibc refused one (those after it are not applied)."""
    libc = glibc()
    return libc is not None and all(libc.mallopt(p, v) == 1 for p, v in settings)
