"""curate's processes keep freed large blocks in glibc's heap for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from curate.core.malloc import keep_freed_blocks
if sys.argv[1] == "tuned":
    assert keep_freed_blocks()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(2):
    before = faults()
    block = np.ones(3 << 20, dtype=np.float32)  # 12 MiB, above glibc's first mmap threshold
    del block
    counts.append(faults() - before)
print(counts[1])
"""


def _second_allocation_faults(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings of the caller's
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_new_page_faults():
    untuned = _second_allocation_faults("plain")
    if untuned < 100:
        pytest.skip(f"this C library already reuses the block ({untuned} faults)")
    assert _second_allocation_faults("tuned") < 50 < untuned
