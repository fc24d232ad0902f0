"""glibc malloc policy for training on a CPU: keep freed memory rather than fault it back in every step.

A training step frees and reallocates the same activation and gradient buffers every time.
By default glibc hands blocks over its mmap threshold (at most 32 MB) back to the OS when
they are freed, and trims the heap above 2x that threshold, so the next step gets fresh
pages and takes a page fault on every 4 KB of them, every step ("trainer, glibc malloc" in
benchmarks/train_throughput.py --ablations measures what holding the memory is worth). A
training process keeps its peak working set anyway; the cost is that up to 1 GB freed at the
heap's top is not returned to the OS.

These are process-wide settings, applied with mallopt(3); elsewhere than glibc they do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc's own adaptive threshold grows to on 64-bit


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Serve every block from the heap and trim it only above 1 GB free; False where not glibc."""
    libc = _libc()
    if libc is None:
        return False
    settings = ((M_TRIM_THRESHOLD, 1 << 30), (M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX), (M_MMAP_MAX, 0))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
