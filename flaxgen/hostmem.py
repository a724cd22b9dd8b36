"""glibc's malloc told to keep the memory a process frees, so that XLA:CPU's steps stop faulting.

XLA:CPU takes a step's temporary buffers from malloc and frees them when the step ends. glibc
gives freed memory back to the kernel when the block was mmapped (above its moving mmap
threshold) or when the free space at the top of its heap passes its trim threshold, and the next
step then touches fresh pages: a page fault every 4 KiB. On a 2-core machine that happened to the
DCGAN's step in stretches of a minute or so, ~34,000 faults and 10% system time a repeat, with
the step 1.2-1.6x slower (benchmarks/README.md, item 24). PyTorch's CPU tuning advice is a caching
allocator; these two settings do the same in glibc. The memory a process keeps is what its
steps use anyway.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

MMAP_THRESHOLD = 32 << 20       # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
# The same, for a process started with them (glibc reads these at start).
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's malloc.h


def keep_freed_memory() -> str:
    """Set this process's malloc to keep freed memory, and say what was done. A MALLOC_ setting in
    the environment wins (glibc has read it already), and nothing outside glibc changes. The
    `flaxgen` command and the benchmark scripts call this first; from Python, call it yourself."""
    if any(name in os.environ for name in ENVIRONMENT):
        return "left to the environment's MALLOC_ settings"
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    libc = ctypes.CDLL(None)
    if (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1
            or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1):
        return "unchanged (glibc refused the settings)"
    return "keeps freed memory (mmap threshold 32 MiB, trim threshold 2 GiB)"
