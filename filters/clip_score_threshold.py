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

Memory: one block, a ``2**RADIX_BITS`` histogram (2 MB) and at most ``collect_limit`` keys
(8 bytes each), whatever ``N``. Each pass reads the column once more.

Split across shards (:func:`selected_threshold`): each pass is a :class:`Query` that every
shard answers on its own (:func:`answer`: a sparse histogram of its keys, or its keys inside
the bin), as map tasks; the driver adds the answers (the reduce), so it holds one histogram
and the collected keys, never a column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

ScoreBlocks = Callable[[], Iterable[np.ndarray]]
"""Called once per pass; yields the score column in blocks, in any fixed order."""

RADIX_BITS = 18  # a shard's 2 MB histogram stays in cache: 3x faster than 2**20 bins
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
    return selected_threshold(
        lambda query: [answer(read_blocks(), query)], fraction, collect_limit=collect_limit
    )


@dataclass(frozen=True)
class Query:
    """One pass over a shard's scores: ``count`` the next ``bits`` bits of the keys whose
    top ``known`` bits equal ``prefix`` (``known = 0``: every key), or ``collect`` those keys."""

    kind: str  # "count" or "collect"
    prefix: int = 0
    known: int = 0
    bits: int = RADIX_BITS


@dataclass(frozen=True)
class Answer:
    """A shard's answer to a :class:`Query`: sparse histogram (bins, counts) or keys; the
    first pass also gives the dtype and the row and NaN counts."""

    dtype: str | None
    rows: int
    missing: int
    bins: np.ndarray | None  # None: ``counts`` is the whole (dense) histogram
    counts: np.ndarray
    keys: np.ndarray


def answer(blocks: Iterable[np.ndarray], query: Query) -> Answer:
    """Answer ``query`` over one shard's score blocks (run where the scores are: a task)."""
    dtype = None
    rows = missing = 0
    dense: np.ndarray | None = None  # the histogram, once a block is big enough for one
    bin_parts: list[np.ndarray] = []
    count_parts: list[np.ndarray] = []
    key_parts: list[np.ndarray] = []
    for block in blocks:
        block = _floats(block)
        if dtype is None:
            dtype = block.dtype
        elif block.dtype != dtype:
            raise ValueError(f"score blocks mix {dtype} and {block.dtype}")
        width = block.dtype.itemsize * 8
        if query.known == 0:
            keys = _sortable_keys(block)
            rows += len(block)
            missing += len(block) - len(keys)
        else:
            keys = _keys_inside(block, query.prefix, width - query.known)
        if query.kind == "collect":
            key_parts.append(keys)
            continue
        shift = width - query.known - query.bits
        values = (keys >> keys.dtype.type(shift)) & keys.dtype.type((1 << query.bits) - 1)
        if dense is None and len(values) * 16 < (1 << query.bits):
            bins, counts = np.unique(values, return_counts=True)
            bin_parts.append(bins.astype(np.int64))
            count_parts.append(counts.astype(np.int64))
        else:
            if dense is None:
                dense = np.zeros(1 << query.bits, dtype=np.int64)
            dense += np.bincount(values.astype(np.intp), minlength=1 << query.bits)
    if dense is not None:
        for bins, counts in zip(bin_parts, count_parts, strict=True):
            dense[bins] += counts
        bins, counts = None, dense
        if np.count_nonzero(dense) * 8 < len(dense):  # sparse is smaller to send
            bins = np.flatnonzero(dense)
            counts = dense[bins]
    else:
        bins = np.concatenate(bin_parts) if bin_parts else np.zeros(0, np.int64)
        counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
        if len(bin_parts) > 1:
            bins, inverse = np.unique(bins, return_inverse=True)
            counts = np.bincount(inverse, weights=counts, minlength=len(bins)).astype(np.int64)
    keys = np.concatenate(key_parts) if key_parts else np.zeros(0, np.uint64)
    return Answer(None if dtype is None else dtype.str, rows, missing, bins, counts, keys)


def _add(histogram: np.ndarray | None, reply: Answer, size: int) -> np.ndarray:
    """``histogram`` plus a reply's counts; a dense reply is adopted as the first histogram."""
    if reply.bins is None:
        if histogram is None:
            return reply.counts
        histogram += reply.counts
        return histogram
    if histogram is None:
        histogram = np.zeros(size, dtype=np.int64)
    histogram[reply.bins] += reply.counts  # bins are distinct in a reply
    return histogram


def selected_threshold(
    scan: Callable[[Query], Iterable[Answer]],
    fraction: float,
    *,
    collect_limit: int = COLLECT_LIMIT,
) -> float:
    """The driver's side of the selection: ``scan(query)`` answers a query over every shard
    (in this process, or as map tasks on an executor); the driver adds the shards' sparse
    histograms (at most ``2**RADIX_BITS`` bins) and keeps at most ``collect_limit`` keys,
    whatever the number of rows or shards. Same element as :func:`top_fraction_threshold`.
    """
    dtype = None
    total = missing = 0
    histogram: np.ndarray | None = None
    for reply in scan(Query("count")):
        if reply.dtype is not None:
            if dtype is None:
                dtype = np.dtype(reply.dtype)
            elif np.dtype(reply.dtype) != dtype:
                raise ValueError(f"score blocks mix {dtype} and {np.dtype(reply.dtype)}")
        total += reply.rows
        missing += reply.missing
        histogram = _add(histogram, reply, 1 << RADIX_BITS)

    index = int(total * fraction)
    if index >= total:
        return -math.inf
    present = total - missing
    if index >= present:
        return math.nan
    assert dtype is not None and histogram is not None
    width = dtype.itemsize * 8
    rank, prefix, candidates = _locate(histogram, present - 1 - index)  # rank from the bottom
    known = RADIX_BITS
    while known < width and candidates > collect_limit:
        bits = min(RADIX_BITS, width - known)
        histogram = None
        for reply in scan(Query("count", prefix, known, bits)):
            histogram = _add(histogram, reply, 1 << bits)
        assert histogram is not None
        rank, low, candidates = _locate(histogram, rank)
        prefix = (prefix << bits) | low
        known += bits
    if known < width:
        inside = np.concatenate(
            [reply.keys for reply in scan(Query("collect", prefix, known))]
        ).astype(_UNSIGNED[dtype])
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


def _locate(histogram: np.ndarray, rank: int) -> tuple[int, int, int]:
    """(rank inside the bin, the bin, its count) of the ``rank``-th smallest key (0-based)."""
    below = np.cumsum(histogram)
    bin_ = int(np.searchsorted(below, rank, side="right"))
    before = int(below[bin_ - 1]) if bin_ else 0
    return rank - before, bin_, int(histogram[bin_])


def _keys_inside(block: np.ndarray, prefix: int, shift: int) -> np.ndarray:
    """The keys of ``block`` whose bits above ``shift`` equal ``prefix``. A comparison with
    the bin's end values picks the few candidates first (cheaper than keying every value)."""
    unsigned = _UNSIGNED[block.dtype]
    ends = np.array([prefix << shift, ((prefix + 1) << shift) - 1], dtype=unsigned)
    low, high = _key_to_float(ends)
    low = -np.inf if np.isnan(low) else low  # a bin beyond ±inf: only NaN bit patterns
    high = np.inf if np.isnan(high) else high
    keys = _sortable_keys(block[(block >= low) & (block <= high)])
    return keys[(keys >> unsigned.type(shift)) == prefix]
