"""core.training.malloc: on glibc, training keeps freed memory instead of faulting fresh pages in every step.

Each case runs in a fresh interpreter: malloc's policy and heap are process-wide, and the test
process has trained models (fit() keeps freed memory) before these run.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from core.training import malloc

REPO = Path(__file__).resolve().parents[1]
BLOCK = 48 << 20  # over glibc's largest adaptive mmap threshold (32 MB): mmapped and unmapped by default
PAGES = BLOCK // 4096
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

FAULTS = f"""
import ctypes, resource, sys
from core.training.malloc import _libc, keep_freed_memory
libc = _libc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
kept = keep_freed_memory() if sys.argv[1] == "keep" else None

def use_block():  # allocate, touch every page, free: what a training step does with a large buffer
    block = libc.malloc({BLOCK})
    ctypes.memset(block, 1, {BLOCK})
    libc.free(block)

use_block()  # warm-up: the first allocation faults its pages in whatever the policy
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    use_block()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def faults_per_allocation(policy: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", FAULTS, policy], cwd=REPO, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, float(faults)


@glibc
def test_kept_memory_is_reused_without_page_faults() -> None:
    kept, faults = faults_per_allocation("keep")
    assert kept == "True"
    assert faults < 0.02 * PAGES


@glibc
def test_glibc_default_faults_every_large_block_back_in() -> None:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("transparent huge pages on for every mapping: 2 MB faults, too few to tell apart")
    _, faults = faults_per_allocation("default")
    assert faults > 0.9 * PAGES  # one fault per 4 KB page, on every allocation


def test_policy_is_left_alone_where_libc_is_not_glibc(monkeypatch) -> None:
    malloc._libc.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    try:
        assert malloc.keep_freed_memory() is False
    finally:
        malloc._libc.cache_clear()
