"""specfusion.memory: freed heap memory goes back to the OS between the steps of a run."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from specfusion.memory import release_freed_memory


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_fragmented_heap_memory_is_given_back():
    # many small arrays (below malloc's mmap threshold: on the heap), every other one kept alive, so
    # the freed half is scattered between live blocks and stays resident until it is trimmed
    arrays = [np.ones(16_000, dtype=np.uint8) for _ in range(20_000)]  # 320 MB in 16-kB blocks
    kept = arrays[::64]
    del arrays
    before = _rss_kib()
    assert release_freed_memory() is True
    after = _rss_kib()
    assert before - after > 100_000, (before, after)  # more than 100 MB of the 315 MB freed came back
    assert all(a[0] == 1 for a in kept)
