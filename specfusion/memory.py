"""Give the memory a finished step freed back to the operating system.

glibc's ``malloc`` keeps freed heap memory for reuse: after a network's weights and buffers are freed,
the process's resident size stays hundreds of MB above what it holds (fragments of the heap that the
next network does not fit in), and the next network's peak comes on top of it
(docs/performance.md, "Memory"). :func:`release_freed_memory` returns what can be returned
(``malloc_trim(0)``) between the steps of a run; elsewhere than glibc it only collects garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_freed_memory() -> bool:
    """Collect garbage and give freed heap pages back to the OS; True where ``malloc_trim`` ran (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
        return None
