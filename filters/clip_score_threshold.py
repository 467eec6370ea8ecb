"""DataComp's top-fraction threshold in bounded memory: a radix selection over a score column
read block by block, instead of one ``np.partition`` over the whole column.

The rule is DataComp's (``baselines/utils.py``): ``n = int(N * fraction)``, the threshold is
the ``(n+1)``-th largest score (NaN sorts last), ``-inf`` when ``n == N``. The selection
gives the very same element, so ``scores >= threshold`` keeps the same rows, ties included:

1. pass 1 counts a histogram of the scores' top :data:`RADIX_BITS` bits, taken from their
   bit patterns mapped to unsigned keys that sort like the numbers (the sign bit flipped for
   positive numbers, every bit for negative ones), and the rows and NaNs;
2. the bin that holds the cut is the one where the histogram's running count (from the
   top) passes ``n``; pass 2 collects the keys inside that bin and selects the exact one.
   When that bin holds more than ``collect_limit`` keys (a column of few distinct values, or
   a huge pool), the pass counts a histogram of the next bits inside the bin instead, and
   the loop goes on: float32 needs at most two passes whatever the data, float64 at most
   four (two on real score distributions).

Memory: one block, a ``2**RADIX_BITS`` histogram (8 MB) and at most ``collect_limit`` keys
(8 bytes each), whatever ``N``. Each pass reads the column once more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

ScoreBlocks = Callable[[], Iterable[np.ndarray]]
"""Called once per pass; yields the score column in blocks, in any fixed order."""

RADIX_BITS = 20
COLLECT_LIMIT = 1 << 22
BLOCK_ROWS = 1 << 20

_UNSIGNED = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}
_SIGNED = {np.dtype(np.float32): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.int64)}


def array_blocks(scores: np.ndarray, block_rows: int = BLOCK_ROWS) -> ScoreBlocks:
    """Blocks of an array already in memory (views, no copies)."""

    def read() -> Iterable[np.ndarray]:
        for start in range(0, len(scores), block_rows):
            yield scores[start : start + block_rows]

    return read


def top_fraction_threshold(
    read_blocks: ScoreBlocks, fraction: float, *, collect_limit: int = COLLECT_LIMIT
) -> float:
    """The score at index ``int(N * fraction)`` of the column sorted descending (NaN last),
    as ``np.sort``/``np.partition`` give it; ``-inf`` when that index is past the end.

    Blocks are float32 or float64 (other numbers are compared as float64); all blocks must
    share one dtype, since the threshold is compared in the column's own dtype.
    """
    dtype = None
    total = missing = 0
    histogram = np.zeros(1 << RADIX_BITS, dtype=np.int64)
    for block in read_blocks():
        block = _floats(block)
        if dtype is None:
            dtype = block.dtype
        elif block.dtype != dtype:
            raise ValueError(f"score blocks mix {dtype} and {block.dtype}")
        keys = _sortable_keys(block)
        total += len(block)
        missing += len(block) - len(keys)
        _count(histogram, keys >> (keys.dtype.itemsize * 8 - RADIX_BITS))

    index = int(total * fraction)
    if index >= total:
        return -math.inf
    present = total - missing
    if index >= present:
        return math.nan
    width = dtype.itemsize * 8
    rank, prefix, candidates = _locate(histogram, present - 1 - index)  # rank from the bottom
    known = RADIX_BITS
    while known < width and candidates > collect_limit:
        bits = min(RADIX_BITS, width - known)
        histogram = np.zeros(1 << bits, dtype=np.int64)
        for keys in _keys_with_prefix(read_blocks, prefix, width - known):
            _count(histogram, (keys >> (width - known - bits)) & ((1 << bits) - 1))
        rank, low, candidates = _locate(histogram, rank)
        prefix = (prefix << bits) | low
        known += bits
    if known < width:
        inside = np.concatenate(list(_keys_with_prefix(read_blocks, prefix, width - known)))
        key = inside[np.argpartition(inside, rank)[rank]]
    else:
        key = _UNSIGNED[dtype].type(prefix)
    return float(_key_to_float(np.asarray([key], dtype=_UNSIGNED[dtype]))[0])


def _floats(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block)
    return block if block.dtype in _UNSIGNED else block.astype(np.float64)


def _sortable_keys(block: np.ndarray) -> np.ndarray:
    """Unsigned keys, one per non-NaN value, ordered as the values are (-0.0 just below 0.0)."""
    missing = np.isnan(block)
    if missing.any():
        block = block[~missing]
    unsigned = _UNSIGNED[block.dtype]
    width = unsigned.itemsize * 8
    bits = block.view(unsigned)
    keys = (block.view(_SIGNED[block.dtype]) >> (width - 1)).view(unsigned)  # 0 or all ones
    keys |= unsigned.type(1 << (width - 1))
    keys ^= bits
    return keys


def _key_to_float(keys: np.ndarray) -> np.ndarray:
    width = keys.dtype.itemsize * 8
    high = keys.dtype.type(1 << (width - 1))
    positive = (keys & high).astype(bool)
    bits = np.where(positive, keys ^ high, ~keys)
    return bits.view({4: np.float32, 8: np.float64}[keys.dtype.itemsize])


def _count(histogram: np.ndarray, bins: np.ndarray) -> None:
    """``histogram[b] += (bins == b).sum()`` for every b; small blocks skip the full bincount."""
    if len(bins) * 16 < len(histogram):
        values, counts = np.unique(bins, return_counts=True)
        histogram[values.astype(np.intp)] += counts
    else:
        histogram += np.bincount(bins.astype(np.intp), minlength=len(histogram))


def _locate(histogram: np.ndarray, rank: int) -> tuple[int, int, int]:
    """(rank inside the bin, the bin, its count) of the ``rank``-th smallest key (0-based)."""
    below = np.cumsum(histogram)
    bin_ = int(np.searchsorted(below, rank, side="right"))
    before = int(below[bin_ - 1]) if bin_ else 0
    return rank - before, bin_, int(histogram[bin_])


def _keys_with_prefix(read_blocks: ScoreBlocks, prefix: int, shift: int) -> Iterable[np.ndarray]:
    """One more pass: the keys whose bits above ``shift`` equal ``prefix``. A comparison with
    the bin's end values picks the few candidates first (cheaper than keying every value)."""
    for block in read_blocks():
        block = _floats(block)
        unsigned = _UNSIGNED[block.dtype]
        ends = np.array([prefix << shift, ((prefix + 1) << shift) - 1], dtype=unsigned)
        low, high = _key_to_float(ends)
        low = -np.inf if np.isnan(low) else low  # a bin beyond ±inf: only NaN bit patterns
        high = np.inf if np.isnan(high) else high
        keys = _sortable_keys(block[(block >= low) & (block <= high)])
        yield keys[(keys >> shift) == prefix]
