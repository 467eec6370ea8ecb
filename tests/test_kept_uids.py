"""A candidate pool's kept uids read back as strings (curate.core.kept_uids): from uids.npy
through polars and lazily through DuckDB, and from the uids.parquet older pools hold, against
the uids written and DataComp's own conversion."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from curate.core.kept_uids import has_kept_uids, kept_uids, kept_uids_relation
from curate.core.layout import SubsetLayout
from curate.core.uid import save_subset


def _uids(count: int) -> list[str]:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(count, 2), dtype=np.uint64) * np.uint64(2)
    words[0] = (0, 0)  # leading zeros kept
    words[1] = (2**64 - 1, 2**64 - 1)
    return [f"{high:016x}{low:016x}" for high, low in words]


def test_kept_uids_from_uids_npy_polars_and_duckdb(tmp_path):
    uids = _uids(5000)
    layout = SubsetLayout(tmp_path)
    save_subset(uids, layout.uids_npy)
    pairs = np.load(layout.uids_npy)
    # DataComp's conversion (baselines/apply_filter.py) read backwards, as the reference
    assert [f"{int(a):016x}{int(b):016x}" for a, b in pairs] == sorted(uids)
    assert has_kept_uids(layout)
    assert kept_uids(layout).to_list() == sorted(uids)
    relation = kept_uids_relation(duckdb.connect(), layout)
    assert relation.columns == ["uid"]
    assert relation.pl()["uid"].to_list() == sorted(uids)


def test_kept_uids_from_an_older_pools_uids_parquet(tmp_path):
    uids = sorted(_uids(100))
    layout = SubsetLayout(tmp_path)
    assert not has_kept_uids(layout)
    pl.DataFrame({"uid": uids}).write_parquet(layout.uids_parquet)
    assert kept_uids(layout).to_list() == uids
    assert kept_uids_relation(duckdb.connect(), layout).pl()["uid"].to_list() == uids


def test_a_uids_npy_of_another_dtype_is_named(tmp_path):
    layout = SubsetLayout(tmp_path)
    np.save(layout.uids_npy, np.arange(4, dtype=np.uint64))
    with pytest.raises(ValueError, match="uids.npy: expected DataComp's subset array"):
        kept_uids(layout)


def test_no_kept_uids(tmp_path):
    layout = SubsetLayout(tmp_path)
    save_subset([], layout.uids_npy)
    assert kept_uids(layout).to_list() == []
    relation = kept_uids_relation(duckdb.connect(), layout)
    assert relation.columns == ["uid"] and relation.pl().height == 0
