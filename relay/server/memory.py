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
  by the sweeper after a spike of buffered bytes has gone, or when :func:`free_bytes` (glibc's
  ``mallinfo2``: bytes in free chunks, all arenas) says the heap holds a lot it does not use,
  whatever freed it (a lagging member's backlog, a burst of connections' objects).

Must not: be called on the hot path (a trim walks the whole heap: milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Callable
from functools import cache
from typing import cast

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


class _Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


@cache
def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    libc = _libc()
    if libc is None:
        return None
    try:
        function = libc.mallinfo2
    except AttributeError:  # glibc before 2.33
        return None
    function.argtypes = []
    function.restype = _Mallinfo2
    return cast(Callable[[], _Mallinfo2], function)


def free_bytes() -> int | None:
    """Bytes the C heap holds in free chunks (what a trim could give back, at most); None if
    not known (not glibc, or a glibc without ``mallinfo2``).  Walks the free lists: call it
    from the sweeper, not per request."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    return int(mallinfo2().fordblks)


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
