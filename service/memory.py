"""Giving a dropped version's memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_freed_memory() -> bool:
    """Returns the C heap's free pages to the OS (glibc's `malloc_trim(0)`); False where there is none.

    Arrays above glibc's mmap threshold go back to the OS when freed, but a version also leaves
    many smaller blocks (vocabularies, model tensors, the load's buffers) in the heap, where free
    pages between live blocks stay in the process's RSS. A server calls this after a swap drops
    the old version, so its RSS falls back towards one version's bytes rather than the peak.
    ctypes releases the GIL for the call: requests keep running while it walks the heap.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
