"""A swap drops the old version at once and gives its heap pages back (glibc's malloc_trim)."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from offline.data import Dataset
from service.memory import release_freed_memory
from service.schemas import PrerankRequest, RetrieveRequest
from service.scorer import Scorer
from service.store import load_version
from tools.procs import memory_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap and /proc are Linux's")
def test_free_heap_pages_between_live_blocks_go_back_to_the_os() -> None:
    blocks = [np.ones(8000) for _ in range(3000)]  # 64 KB each: under the mmap threshold, in the heap
    kept = blocks[::10]  # one live block in ten pins the heap: freeing the rest leaves holes, not a top
    del blocks
    before = memory_bytes("VmRSS")
    assert release_freed_memory()
    assert before - memory_bytes("VmRSS") >= 100 * 2**20  # of the ~170 MB freed
    assert all(float(b[0]) == 1.0 for b in kept)


def test_a_swapped_out_version_is_freed_by_reference_counting(tiny: Dataset, store: Path) -> None:
    """No reference cycle keeps an old version alive until a full collection (the app freezes the
    heap after startup, so a cycle would hold a whole version's memory for minutes)."""
    version_dir = next((store / "versions").iterdir())
    scorer = Scorer()
    body = {"user": {"id": str(tiny.user_keys[0])}, "candidates": {"ad_ids": tiny.ad_ids.tolist()}}
    gc.collect()
    gc.disable()
    try:
        first = load_version(version_dir)
        scorer.swap(first)
        for _ in range(2):  # scoring fills the version's caches (live rows, prepared maps)
            scorer.prerank(PrerankRequest.model_validate(body))
            scorer.retrieve(RetrieveRequest.model_validate({"user": body["user"], "top_k": 10}))
        alive = [weakref.ref(first), weakref.ref(first.bundle.model), weakref.ref(first.storage.vectors)]
        del first
        scorer.swap(load_version(version_dir))
        scorer.prerank(PrerankRequest.model_validate(body))
        assert [ref() is None for ref in alive] == [True, True, True]
    finally:
        gc.enable()
