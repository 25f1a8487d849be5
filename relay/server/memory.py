"""Memory given back to the system after a burst: glibc's allocator, tuned at start-up.

Why: a client that holds a partly sent message makes the relay hold up to
``max_frame_bytes`` for it (a ``bytearray`` growing by reallocation).  glibc serves a
block above its mmap threshold (128 KiB at first) with its own mapping, which goes back
to the system when freed, but every such free *raises* the threshold to the block's size
(the "dynamic mmap threshold"), so from then on blocks of that size come from the heap,
where a freed block in the middle of live ones is kept by the process for good.  One
burst of attackers then leaves the relay hundreds of MB larger for the rest of its life.

What this does, on glibc only (elsewhere nothing, and the relay runs as before):

- at start-up, ``mallopt(M_MMAP_THRESHOLD, 128 KiB)``: a fixed threshold (setting it turns
  the dynamic one off), so large buffers keep their own mappings, given back when freed;
  and ``M_TRIM_THRESHOLD`` to match, so free memory at the top of the heap goes back too;
- :func:`trim`, ``malloc_trim(0)``: returns every whole free page inside the heap, called
  by the sweeper after a spike of buffered bytes has gone.

Must not: be called on the hot path (a trim walks the whole heap: milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # glibc's default pairing of the two


@cache
def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); False if not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok)


def trim() -> bool:
    """Give the heap's free pages back to the system; True if glibc released any."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
