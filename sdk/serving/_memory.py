"""Give the memory of large request and answer bodies back to the system (glibc only).

glibc serves an allocation of 128 KiB or more with its own ``mmap`` (returned at ``free``)
only until such a block is freed: then it raises that threshold to the freed size (up to
32 MiB) and later large buffers come from the heap of the thread's arena, which keeps them
after ``free``. A server thread per connection means one arena per thread: measured on
the agent, 8 concurrent 15 MiB JSON bodies, decoded one at a time, left the peak RSS
212 MB higher (each thread's arena kept its own ~25 MB) instead of 71 MB with a fixed
threshold. :func:`keep_large_blocks_mapped` fixes the threshold at 4 MiB for the process
(what ``MALLOC_MMAP_THRESHOLD_=4194304`` does), so a buffer that large is unmapped when
freed; :func:`trim` hands back what the heaps keep free (after a large answer).
Elsewhere (musl, macOS) both do nothing.

Fixing the mmap threshold also fixes glibc's trim threshold at its 128 KiB default: every
request whose buffers (a 300 KB JSON body, its list of floats, the array) were freed at
the top of a heap gave those pages back, and the next request faulted them in again.
Measured in a worker thread on mobilenet's JSON request: decoding took 1.30 ms with
glibc's defaults, 1.70-1.80 ms with the threshold fixed at 1 MiB (the old setting), 1.26
ms with 4 MiB and a 32 MiB trim threshold (what is set now; trim() after a large request
still hands everything back).
"""

from __future__ import annotations

import threading

from edgeship.sdk._glibc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, glibc, mallopt

__all__ = ["keep_large_blocks_mapped", "trim"]

_THRESHOLD = 4 << 20
_TRIM_THRESHOLD = 32 << 20
_lock = threading.Lock()
_mapped: bool | None = None  # None: not tried yet


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold at 4 MiB and its trim threshold at 32 MiB for this
    process (once); False elsewhere."""
    global _mapped
    with _lock:
        if _mapped is None:
            _mapped = mallopt((M_MMAP_THRESHOLD, _THRESHOLD), (M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
        return _mapped


def trim() -> bool:
    """Return the free memory at the top of glibc's heaps to the system; False elsewhere."""
    libc = glibc()
    return bool(libc is not None and libc.malloc_trim(0))
