"""The two-pass (bounded-memory) top-fraction threshold against the in-memory rule
(``datacomp_threshold``: np.partition) and a brute-force sort, and the clip_score stage and
``select_by_clip_score`` on both paths."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate.filters.clip_score as clip_score_module
from curate.filters.clip_score import (
    datacomp_threshold,
    parquet_score_blocks,
    passes,
    select_by_clip_score,
)
from curate.filters.clip_score_threshold import array_blocks, top_fraction_threshold
from tests.test_filters_metadata import datacomp_keep, make_pool, run_stage


def sorted_element(scores: np.ndarray, fraction: float) -> float:
    """DataComp's ``-np.sort(-scores)[int(N * fraction)]`` (NaN last), -inf past the end."""
    index = int(len(scores) * fraction)
    return -math.inf if index >= len(scores) else float(-np.sort(-scores)[index])


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def score_columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Score columns that stress the selection: heavy ties, few distinct values, signed zeros,
    infinities and NaN, a range of magnitudes, in float32 and float64."""
    rounded = np.round(rng.normal(0.3, 0.05, n), 2)
    rounded[rng.integers(0, n, n // 50)] = np.nan
    specials = rng.choice([-np.inf, -1.0, -0.0, 0.0, 0.5, np.inf, np.nan], n)
    wide = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    columns = {"rounded": rounded, "specials": specials, "wide": wide, "constant": np.full(n, 0.25)}
    return {
        f"{name}-{dtype.__name__}": values.astype(dtype)
        for name, values in columns.items()
        for dtype in (np.float32, np.float64)
    }


@pytest.mark.parametrize("collect_limit", [0, 5, 1 << 22])  # histogram refinement, then collect
def test_two_pass_threshold_is_the_sorted_element(collect_limit):
    rng = np.random.default_rng(0)
    n = 2003
    fractions = [0.0, 1.0, 1 / n, 0.3, 0.999, 1 - 0.5 / n]  # 0, 1, tiny, ordinary, last rows
    for name, scores in score_columns(rng, n).items():
        for fraction in fractions:
            expected = sorted_element(scores, fraction)
            assert same(datacomp_threshold(scores, fraction), expected), name
            for block_rows in (97, 500, n + 5):
                threshold = top_fraction_threshold(
                    array_blocks(scores, block_rows), fraction, collect_limit=collect_limit
                )
                assert same(threshold, expected), (name, fraction, block_rows)
                if not math.isnan(threshold):
                    kept = passes(scores, threshold)
                    assert np.array_equal(kept, passes(scores, expected))
                    if fraction < 1:
                        assert np.array_equal(kept, datacomp_keep(scores, fraction))


def test_two_pass_threshold_with_tiny_blocks():
    scores = score_columns(np.random.default_rng(2), 60)
    for name in ("rounded-float32", "specials-float64"):
        for fraction in (0.0, 0.1, 0.5):
            expected = sorted_element(scores[name], fraction)
            for block_rows, collect_limit in ((1, 0), (7, 0), (7, 1 << 22)):
                blocks = array_blocks(scores[name], block_rows)
                threshold = top_fraction_threshold(blocks, fraction, collect_limit=collect_limit)
                assert same(threshold, expected), (name, fraction, block_rows)


def test_two_pass_threshold_edge_cases():
    empty = np.zeros(0, dtype=np.float32)
    assert top_fraction_threshold(array_blocks(empty), 0.5) == -np.inf
    all_nan = np.full(10, np.nan)
    assert math.isnan(top_fraction_threshold(array_blocks(all_nan), 0.5))
    integers = np.array([3, 1, 2, 2, 5])  # compared as float64, as the stage casts them
    assert top_fraction_threshold(array_blocks(integers, 2), 0.4) == 2.0
    with pytest.raises(ValueError, match="mix"):
        top_fraction_threshold(lambda: iter([np.ones(3, np.float32), np.ones(3, np.float64)]), 0.5)


def test_two_pass_threshold_memory_is_bounded():
    """Python-visible allocations (numpy's included) stay at the histogram and one block's
    temporaries while the in-memory rule copies the whole column."""
    scores = np.round(np.random.default_rng(1).normal(0.3, 0.05, 4_000_000), 4)  # 32 MB
    tracemalloc.start()
    try:
        streamed = top_fraction_threshold(array_blocks(scores, 1 << 16), 0.3)
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        in_memory = datacomp_threshold(scores, 0.3)
        in_memory_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert streamed == in_memory
    assert in_memory_peak >= scores.nbytes
    assert streamed_peak < 20 * 2**20  # 8 MB histogram + its per-block count + one block


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 1.0])
def test_clip_score_stage_two_pass_equals_in_memory(tmp_path, monkeypatch, fraction):
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(0.3, 0.05, 997), 2).astype(np.float32)  # many exact ties
    scores[[5, 600]] = np.nan
    rows = make_pool(tmp_path, scores, embedding_scores=scores[::-1].copy())
    pq.write_table(  # row groups of 97 rows: blocks that do not divide the 997 rows
        pq.read_table(tmp_path / "samples.parquet"), tmp_path / "samples.parquet", row_group_size=97
    )
    remaining = rows.filter(pl.col("row") % 3 != 0)
    cases = [
        (rows, {"column": "clip_b32_similarity_score"}),
        (rows, {}),  # the embedding set's clip_score.parquet
        (remaining, {"column": "clip_b32_similarity_score"}),
        (remaining, {"column": "clip_b32_similarity_score", "over": "remaining"}),
    ]
    for stage_rows, source in cases:
        params = {"fraction": fraction, **source}
        monkeypatch.setattr(clip_score_module, "IN_MEMORY_MAX_ROWS", 16_000_000)
        in_memory = run_stage("clip_score", stage_rows, params, tmp_path)
        monkeypatch.setattr(clip_score_module, "IN_MEMORY_MAX_ROWS", 0)
        two_pass = run_stage("clip_score", stage_rows, params, tmp_path)
        assert two_pass.report == in_memory.report
        np.testing.assert_array_equal(two_pass.keep, in_memory.keep)
        np.testing.assert_array_equal(two_pass.reason, in_memory.reason)
    expected = datacomp_keep(scores, fraction)
    assert two_pass.keep.tolist() == datacomp_keep(scores[remaining["row"]], fraction).tolist()
    monkeypatch.setattr(clip_score_module, "IN_MEMORY_MAX_ROWS", 0)
    whole = run_stage("clip_score", rows, {"fraction": fraction, **cases[0][1]}, tmp_path)
    assert whole.keep.tolist() == expected.tolist()


def test_parquet_score_blocks_read_row_groups_in_order(tmp_path):
    values = np.arange(250, dtype=np.float64)
    column = pa.array(values, mask=values % 50 == 7)  # nulls
    paths = []
    for part in range(2):
        path = tmp_path / f"{part}.parquet"
        pq.write_table(pa.table({"s": column}), path, row_group_size=60)
        paths.append(path)
    blocks = list(parquet_score_blocks(paths, "s", block_rows=40)())
    assert max(len(b) for b in blocks) == 40 and len(blocks) > 250 * 2 // 60
    joined = np.concatenate(blocks)
    expected = np.where(values % 50 == 7, np.nan, values)
    np.testing.assert_array_equal(joined, np.concatenate([expected, expected]))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_select_by_clip_score_two_pass_equals_in_memory(tmp_path, fraction):
    rng = np.random.default_rng(1)
    uids = [f"{i:032x}" for i in rng.integers(0, 2**62, 3000)]
    scores = np.round(rng.uniform(0.1, 0.4, 3000), 3)  # about 300 values: many ties
    scores[[10, 2000]] = np.nan
    missing = np.zeros(3000, dtype=bool)
    missing[1500] = True
    for part in range(3):
        part_rows = slice(part * 1000, (part + 1) * 1000)
        column = pa.array(scores[part_rows], mask=missing[part_rows])
        table = pa.table({"uid": uids[part_rows], "clip_l14_similarity_score": column})
        pq.write_table(table, tmp_path / f"{part:08d}.parquet", row_group_size=300)
    paths = sorted(tmp_path.glob("*.parquet"))
    in_memory = select_by_clip_score(paths, "clip_l14_similarity_score", fraction=fraction)
    two_pass = select_by_clip_score(
        paths, "clip_l14_similarity_score", fraction=fraction, in_memory_max_rows=0
    )
    assert same(two_pass.threshold, in_memory.threshold)
    assert np.array_equal(two_pass.subset, in_memory.subset)
    scores[missing] = np.nan
    assert same(two_pass.threshold, sorted_element(scores, fraction))
    assert len(two_pass.subset) == datacomp_keep(scores, fraction).sum()
