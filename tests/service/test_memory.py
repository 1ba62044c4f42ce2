"""A swap gives the dropped version's heap pages back (glibc's malloc_trim)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from service.memory import release_freed_memory


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap and /proc are Linux's")
def test_free_heap_pages_between_live_blocks_go_back_to_the_os() -> None:
    blocks = [np.ones(8000) for _ in range(3000)]  # 64 KB each: under the mmap threshold, in the heap
    kept = blocks[::10]  # one live block in ten pins the heap: freeing the rest leaves holes, not a top
    del blocks
    before = _rss()
    assert release_freed_memory()
    assert before - _rss() >= 100 * 2**20  # of the ~170 MB freed
    assert all(float(b[0]) == 1.0 for b in kept)
