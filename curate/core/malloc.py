"""glibc malloc settings for curate's processes: keep freed large blocks for reuse.

glibc returns every block above its mmap threshold (128 KiB at start, raised as such blocks
are freed) to the OS when it is freed, and trims the heap's top above twice that threshold,
so each shard's numpy arrays are faulted in afresh, page by page. On build-pool over 12.8M
rows that was a third of the command's CPU time (160k minor faults). With the mmap threshold
at glibc's maximum (32 MiB) and the trim threshold at 64 MiB, freed blocks stay in the heap
for the next shard: 55k faults, the command 0.15-0.2 s faster, peak RSS unchanged.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD = 64 << 20  # 256 MiB faulted no less and kept more memory resident
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; whether they were set (not on
    other C libraries, nor when the user set either through glibc's environment variables)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
