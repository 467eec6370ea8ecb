"""A stage's part in its bitmap form reads back as the same rows as its rows form."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from curate.build_pool.decisions import write_part
from curate.core.stage_parts import BITMAP_SCHEMA, read_part, removed_rows
from curate.filters.registry import StageResult


@pytest.mark.parametrize("first_row", [0, 7, 2**33])  # rows beyond 32 bits too
def test_bitmap_part_reads_as_the_rows_form(tmp_path, first_row):
    rng = np.random.default_rng(first_row % 97)
    rows = np.sort(rng.choice(5000, 1200, replace=False)).astype(np.uint64) + first_row
    keep = rng.random(1200) < 0.4
    keep[-1] = False  # the span's last row removed
    series = pl.Series("row", rows)
    bitmap, listed = tmp_path / "bitmap.parquet", tmp_path / "rows.parquet"
    reason = "clip score < 0.25"
    assert write_part(bitmap, "s", 0, series, StageResult(keep=keep, reason=reason)) == (
        1200,
        int(keep.sum()),
    )
    # the same decisions with a reason per row: written in the rows form
    reasons = np.where(keep, None, reason).astype(object)
    write_part(listed, "s", 0, series, StageResult(keep=keep, reason=reasons))
    assert pq.read_schema(bitmap).names == BITMAP_SCHEMA.names
    assert pq.read_schema(listed).names != BITMAP_SCHEMA.names
    assert read_part(bitmap).equals(read_part(listed))
    assert read_part(bitmap)["row"].to_pylist() == rows[~keep].tolist()
    assert np.array_equal(removed_rows(bitmap), rows[~keep].astype(np.int64))
    assert np.array_equal(removed_rows(listed), removed_rows(bitmap))


def test_a_stage_that_kept_everything_writes_an_empty_bitmap(tmp_path):
    rows = pl.Series("row", np.arange(10, 20, dtype=np.uint64))
    part = tmp_path / "p.parquet"
    write_part(part, "s", 0, rows, StageResult(keep=np.ones(10, dtype=bool), reason="r"))
    assert read_part(part).num_rows == 0 and len(removed_rows(part)) == 0
