"""The pool's sorted uid index (written by ingest in place, read by build-pool's kept uids)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import curate.core.uid_index as uid_index
from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.core.executor import LocalExecutor
from curate.core.pool import Pool
from curate.core.pool_writer import IngestError
from curate.core.uid import SUBSET_DTYPE, uids_to_pairs
from curate.core.uid_index import UidIndex, sorted_bucket
from curate.ingest.datacomp import reference_in_place

RECIPE = parse_recipe(
    "name: r\nstages:\n  - stage: basic\n    params: {min_side: 120, min_words: 3}\n"
    "  - stage: clip_score\n    params: {fraction: 0.4, column: clip_l14_similarity_score}\n",
    "r.yaml",
)


def _folder(root, sizes=(300, 200, 250), seed=0, repeat_at=None):
    """DataComp's metadata schema, random uids (``repeat_at``: (file, row) that repeats the
    first file's row 0)."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    for part, rows in enumerate(sizes):
        uids = [f"{value:032x}" for value in rng.integers(0, 2**62, size=rows).tolist()]
        uids = [f"{rng.integers(0, 16):x}{uid[1:]}" for uid in uids]  # every top nibble
        if part == 0:
            first_uid = uids[0]
        if repeat_at is not None and repeat_at[0] == part:
            uids[repeat_at[1]] = first_uid
        pl.DataFrame(
            {
                "uid": uids,
                "url": [f"http://example.com/{part}/{i}.jpg" for i in range(rows)],
                "text": [f"a photo of thing {i}" for i in range(rows)],
                "original_width": rng.integers(50, 400, size=rows),
                "original_height": rng.integers(50, 400, size=rows),
                "clip_l14_similarity_score": rng.random(rows).round(2),  # ties
            }
        ).write_parquet(root / f"{part:08d}.parquet")
    return root


def test_sorted_bucket_is_numpy_sort_and_finds_a_repeat():
    rng = np.random.default_rng(3)
    halves = rng.integers(0, 2**64, size=(5000, 2), dtype=np.uint64)  # top bit set in half
    halves[::7, 0] = halves[0, 0]  # many equal high halves: the low half breaks the ties
    rows = rng.permutation(5000).astype(np.int64)
    pairs, sorted_rows, repeated = sorted_bucket(halves, rows)
    expected = np.empty(5000, dtype=SUBSET_DTYPE)
    expected["f0"], expected["f1"] = halves[:, 0], halves[:, 1]
    assert pairs.tobytes() == np.sort(expected).tobytes()
    by_row = dict(zip(rows.tolist(), map(tuple, halves.tolist()), strict=True))
    assert [by_row[r] for r in sorted_rows.tolist()] == [tuple(p) for p in pairs.tolist()]
    assert repeated == -1

    halves[4000] = halves[17]  # a repeat: found at the second of the two equal pairs
    pairs, sorted_rows, repeated = sorted_bucket(halves, rows)
    assert repeated > 0 and pairs[repeated] == pairs[repeated - 1]
    assert sorted(sorted_rows[repeated - 1 : repeated + 1].tolist()) == sorted(
        [rows[17], rows[4000]]
    )


def test_ingest_writes_the_pools_uids_sorted_in_buckets(tmp_path, monkeypatch):
    monkeypatch.setattr(uid_index, "BUCKET_ROWS", 100)  # 750 rows: 8 buckets
    source = _folder(tmp_path / "meta")
    reference_in_place(source, tmp_path / "pool", executor=LocalExecutor(workers=2))
    index = UidIndex.open(tmp_path / "pool", 750)
    assert index is not None and index.buckets == 8
    pairs = np.concatenate([np.load(index.pairs_path(b)) for b in range(8)])
    rows = np.concatenate([np.load(index.rows_path(b)) for b in range(8)])
    uids = pl.concat([pl.read_parquet(f, columns=["uid"]) for f in sorted(source.iterdir())])
    everything = uids_to_pairs(uids["uid"].to_list())
    assert pairs.tobytes() == np.sort(everything).tobytes()  # DataComp's order, bucket by bucket
    assert pairs.tobytes() == everything[rows].tobytes()  # each pair's row is its pool row
    assert UidIndex.open(tmp_path / "pool", 749) is None  # an index of another pool is not used


@pytest.mark.parametrize("workers", [1, 2])
def test_kept_uids_from_the_index_equal_the_decoded_ones(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(uid_index, "BUCKET_ROWS", 100)
    reference_in_place(_folder(tmp_path / "meta"), tmp_path / "pool")
    executor = LocalExecutor(workers=workers)
    assert UidIndex.open(tmp_path / "pool", 750) is not None  # so the first build reads it
    indexed = build_pool(
        RECIPE, tmp_path / "pool", tmp_path / "a", shard_rows=64, executor=executor
    )
    header = tmp_path / "pool" / "uid_index" / uid_index.INDEX_FILE
    header.unlink()  # no index: every kept uid decoded from the parquet and sorted
    decoded = build_pool(
        RECIPE, tmp_path / "pool", tmp_path / "b", shard_rows=64, executor=executor
    )
    assert 0 < indexed.kept == decoded.kept < 750
    for name in ("uids.npy", "decisions.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    kept = np.load(tmp_path / "a" / "uids.npy")
    assert kept.tobytes() == np.unique(kept).tobytes()  # sorted, no repeats


def test_a_repeat_inside_one_file_names_both_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(uid_index, "BUCKET_ROWS", 100)
    source = _folder(tmp_path / "meta", repeat_at=(0, 123))
    with pytest.raises(IngestError) as error:
        reference_in_place(source, tmp_path / "pool")
    assert str(error.value).startswith(f"{source / '00000000.parquet'} row 123: uid ")
    assert f"repeats {source / '00000000.parquet'} row 0;" in str(error.value)
    assert not (tmp_path / "pool").exists()


def test_index_header_records_rows_and_buckets(tmp_path):
    reference_in_place(_folder(tmp_path / "meta", sizes=(10,)), tmp_path / "pool")
    header = json.loads((tmp_path / "pool" / "uid_index" / "index.json").read_text())
    assert header == {"rows": 10, "bucket_bits": 0}


def test_pool_info_counts_the_index_on_disk(tmp_path):
    from curate.sql.info import collect_info

    reference_in_place(_folder(tmp_path / "meta", sizes=(40, 30)), tmp_path / "pool")
    (info,) = collect_info([tmp_path / "pool"])
    assert info.bytes_on_disk["uid index"] > 70 * 24  # 24 B a row, plus the .npy headers


def test_the_last_stages_keep_masks_equal_the_ones_made_from_its_parts(tmp_path, monkeypatch):
    """The last stage's tasks save each shard's final keep mask; without them (a last stage
    run in the driver, an older run's stage) the masks are made from every stage's parts."""
    import curate.build_pool.build as build

    monkeypatch.setattr(uid_index, "BUCKET_ROWS", 100)
    reference_in_place(_folder(tmp_path / "meta"), tmp_path / "pool")
    executor = LocalExecutor(workers=2)
    made = []
    mark_kept = build._mark_kept
    monkeypatch.setattr(build, "_mark_kept", lambda task: made.append(task) or mark_kept(task))
    saved = build_pool(RECIPE, tmp_path / "pool", tmp_path / "a", shard_rows=64, executor=executor)
    assert made == []  # the stage's own masks were used
    monkeypatch.setattr(build, "_save_mask", lambda *args: None)
    rebuilt = build_pool(
        RECIPE, tmp_path / "pool", tmp_path / "b", shard_rows=64, executor=executor
    )
    assert len(made) == len(Pool.open(tmp_path / "pool").table_shards(64))  # a task per shard
    assert 0 < saved.kept == rebuilt.kept < 750
    for name in ("uids.npy", "decisions.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
