"""A pool's uids, sorted once at ingest, so that a kept set's ``uids.npy`` needs no sort.

DataComp's subset files are the kept uids as sorted ``u8,u8`` pairs. Decoding 32-character
hex strings for every row of a pool and sorting the kept ones is most of what writing them
costs; ingest already decodes every uid to check it, so it keeps the result: the pool's uids
cut into buckets by their top bits (bucket ``b`` holds the uids whose high half starts with
``b``), each bucket sorted, beside the pool row of each uid::

    uid_index/index.json          {"rows": N, "bucket_bits": k}
    uid_index/pairs-00000.npy     sorted u8,u8 pairs of bucket 0
    uid_index/rows-00000.npy      int64 pool row of each pair
    ...

The buckets in order are the pool's uids in DataComp's order, so the kept set's file is, per
bucket, the pairs whose row is kept (:func:`kept_pairs`): a gather, no decode, no sort. A
bucket holds at most about :data:`BUCKET_ROWS` uids (24 bytes each), the most one task holds.
Building it (:func:`sorted_bucket`) is where a repeated uid is found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.atomic import write_json
from curate.core.layout import PoolLayout
from curate.core.uid import SUBSET_DTYPE

INDEX_FILE = "index.json"
BUCKET_ROWS = 4 << 20


def bucket_bits(rows: int) -> int:
    """Top bits that cut ``rows`` uniform uids into buckets of at most about BUCKET_ROWS."""
    return (max(1, -(-rows // BUCKET_ROWS)) - 1).bit_length()


def bucket_of(halves: np.ndarray, bits: int) -> np.ndarray | None:
    """Bucket of each ``(n, 2)`` uint64 uid (None: one bucket)."""
    return halves[:, 0] >> np.uint64(64 - bits) if bits else None


def sorted_bucket(halves: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One bucket's uids sorted as DataComp sorts them (high half, then low half), their rows
    in the same order, and the position of the first uid equal to the one before it (-1:
    none)."""
    # polars sorts the three columns together (3.2M uids: 0.19 s; an index sorted by polars,
    # then numpy gathers: 0.53 s)
    ordered = pl.DataFrame(
        {"f0": halves[:, 0], "f1": halves[:, 1], "row": np.asarray(rows, dtype=np.int64)}
    ).sort("f0", "f1")
    f0, f1 = ordered["f0"].to_numpy(), ordered["f1"].to_numpy()
    pairs = np.empty(len(f0), dtype=SUBSET_DTYPE)
    pairs["f0"], pairs["f1"] = f0, f1
    repeated = np.flatnonzero((f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1]))
    return pairs, ordered["row"].to_numpy(), int(repeated[0]) + 1 if len(repeated) else -1


@dataclass(frozen=True)
class UidIndex:
    """The sorted buckets of one pool (see the module doc)."""

    directory: Path
    rows: int
    bucket_bits: int

    @property
    def buckets(self) -> int:
        return 1 << self.bucket_bits

    def pairs_path(self, bucket: int) -> Path:
        return self.directory / f"pairs-{bucket:05d}.npy"

    def rows_path(self, bucket: int) -> Path:
        return self.directory / f"rows-{bucket:05d}.npy"

    def save_bucket(self, bucket: int, pairs: np.ndarray, rows: np.ndarray) -> None:
        """Plain writes: the index is built inside the pool's staging folder, which is
        published whole (and the header, written last, says it is complete)."""
        np.save(self.pairs_path(bucket), pairs)
        np.save(self.rows_path(bucket), rows)

    def write_header(self) -> None:
        """Written last: an index without it is incomplete and is not used."""
        write_json(
            self.directory / INDEX_FILE, {"rows": self.rows, "bucket_bits": self.bucket_bits}
        )

    @classmethod
    def open(cls, pool_root: Path, rows: int) -> UidIndex | None:
        """The pool's index, or None when it has none (or one for another row count)."""
        directory = PoolLayout(Path(pool_root)).uid_index
        try:
            header = json.loads((directory / INDEX_FILE).read_text("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if header.get("rows") != rows:
            return None
        return cls(directory, rows, int(header["bucket_bits"]))


def kept_pairs(index: UidIndex, bucket: int, kept: np.ndarray) -> np.ndarray:
    """The bucket's sorted pairs whose pool row is kept (``kept``: a bool per pool row; may
    be a memory map)."""
    pairs = np.load(index.pairs_path(bucket), mmap_mode="r")
    rows = np.load(index.rows_path(bucket), mmap_mode="r")
    return np.asarray(pairs[kept[rows]])
