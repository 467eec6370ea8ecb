"""A candidate pool's kept uids, sorted, as strings: read from ``uids.npy`` (DataComp's
subset file, ``u8,u8`` pairs, the only copy build-pool writes), or from the ``uids.parquet``
of candidate pools written before it stopped writing that second copy.

The strings are made when read, so building a pool does not encode them (for 3.8M kept uids
that was half of ``curate build-pool``'s critical path); DuckDB makes them lazily, per query.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curate.core.layout import SubsetLayout
from curate.core.uid import SUBSET_DTYPE, hex_chars, hex_chars_to_arrow

# DuckDB: the uid of a (high, low) pair, as DataComp writes it (32 lowercase hex characters)
UID_SQL = "printf('%016x%016x', pair[1], pair[2]) AS uid"


def has_kept_uids(layout: SubsetLayout) -> bool:
    return layout.uids_npy.is_file() or layout.uids_parquet.is_file()


def kept_uids(layout: SubsetLayout) -> pl.Series:
    """The kept uids, sorted, as a polars String series named ``uid``."""
    if not layout.uids_npy.is_file():
        return pl.read_parquet(layout.uids_parquet, columns=["uid"])["uid"]
    pairs = _pairs(layout)
    return pl.Series("uid", hex_chars_to_arrow(hex_chars(pairs)), dtype=pl.String)


def kept_uids_relation(connection: Any, layout: SubsetLayout) -> Any:
    """The kept uids as a DuckDB relation with one column, ``uid``: over a memory map of
    uids.npy (nothing read until a query needs it)."""
    if not layout.uids_npy.is_file():
        import pyarrow.dataset as ds

        return connection.from_arrow(ds.dataset(layout.uids_parquet)).project("uid")
    pairs = _pairs(layout, mmap=True)
    halves = pa.UInt64Array.from_buffers(pa.uint64(), 2 * len(pairs), [None, pa.py_buffer(pairs)])
    table = pa.table({"pair": pa.FixedSizeListArray.from_arrays(halves, 2)})
    return connection.from_arrow(table).project(UID_SQL)


def _pairs(layout: SubsetLayout, *, mmap: bool = False) -> np.ndarray:
    pairs = np.load(layout.uids_npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    if pairs.dtype != SUBSET_DTYPE or pairs.ndim != 1:
        raise ValueError(
            f"{layout.uids_npy}: expected DataComp's subset array (u8,u8 pairs), "
            f"got {pairs.dtype} of shape {pairs.shape}"
        )
    return pairs
