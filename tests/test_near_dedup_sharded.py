"""The sharded exact near-duplicate search (``index: sharded_flat``) against the one-index
flat search and brute-force numpy all-pairs, on planted near-duplicates read from a float16
memory map, with pairs that straddle shard boundaries."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydantic import ValidationError

from curate.dedup.groups import connected_components, keep_one_per_group, keep_order
from curate.dedup.knn import plan_index, self_pairs
from curate.dedup.sharded import shard_bounds, sharded_self_pairs
from curate.dedup.synthetic import planted_near_duplicates
from curate.filters.catalog import get_stage
from tests.test_filters_faiss import make_context, run_stage

THRESHOLD = 0.95
N, DIM = 2600, 48
SHARD_ROWS = 700


@pytest.fixture(scope="module")
def pool_vectors(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """(float16 memory map of the pool's vectors, surviving pool rows). Survivor positions
    699/700 and 1399/0 are planted near-copies across the 700-row shard boundaries."""
    planted = planted_near_duplicates(N, DIM, n_centers=20, duplicate_fraction=0.15, seed=5)
    vectors = planted.vectors
    rows = np.flatnonzero(np.arange(N) % 7 != 3)  # earlier stages removed some rows
    rng = np.random.default_rng(0)
    for copy, source in ((699, 700), (1399, 0)):
        noisy = vectors[rows[source]] + 0.1 / np.sqrt(DIM) * rng.standard_normal(DIM)
        vectors[rows[copy]] = noisy / np.linalg.norm(noisy)
    path = tmp_path_factory.mktemp("sharded") / "image.npy"
    np.save(path, vectors.astype(np.float16))
    return np.load(path, mmap_mode="r"), rows


def brute_force(vectors: np.ndarray) -> set[tuple[int, int]]:
    similarity = vectors @ vectors.T
    assert np.abs(similarity - THRESHOLD).min() > 1e-5, "a pair on the threshold: reseed"
    left, right = np.nonzero(np.triu(similarity >= THRESHOLD, k=1))
    return set(zip(left.tolist(), right.tolist(), strict=True))


def test_shard_bounds_cover_the_rows_in_order():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert shard_bounds(5, 10) == [(0, 5)]
    assert shard_bounds(0, 4) == []
    with pytest.raises(ValueError, match="shard_rows"):
        shard_bounds(5, 0)


@pytest.mark.parametrize(
    ("shard_rows", "query_rows"),
    [(SHARD_ROWS, 8192), (SHARD_ROWS, 256), (999, 333), (N, 8192)],  # last: one shard
)
def test_sharded_pairs_equal_flat_and_brute_force(pool_vectors, shard_rows, query_rows):
    image, rows = pool_vectors
    vectors = image[rows].astype(np.float32)
    reference = brute_force(vectors)
    flat = self_pairs(vectors, THRESHOLD, plan_index(len(vectors), "flat"))
    sharded = sharded_self_pairs(image, rows, THRESHOLD, shard_rows, query_rows=query_rows)

    found = set(zip(sharded.left.tolist(), sharded.right.tolist(), strict=True))
    assert found == reference
    np.testing.assert_array_equal(sharded.left, flat.left)
    np.testing.assert_array_equal(sharded.right, flat.right)
    direct = np.einsum("ij,ij->i", vectors[sharded.left], vectors[sharded.right])
    np.testing.assert_allclose(sharded.similarity, direct, atol=1e-5)
    np.testing.assert_array_equal(sharded.similarity, flat.similarity)  # rechecked: exact

    straddling = sharded.left // shard_rows != sharded.right // shard_rows
    assert straddling.sum() > 10 or shard_rows >= len(rows)
    assert {(699, 700), (0, 1399)} <= found
    labels = connected_components(len(rows), sharded.left, sharded.right)
    flat_labels = connected_components(len(rows), flat.left, flat.right)
    np.testing.assert_array_equal(labels, flat_labels)
    assert np.bincount(labels).max() > 2  # groups beyond pairs
    order = keep_order(rows, "lowest_row")
    np.testing.assert_array_equal(
        keep_one_per_group(labels, order)[0], keep_one_per_group(flat_labels, order)[0]
    )


def test_sharded_search_never_copies_all_vectors(pool_vectors):
    """numpy's allocations (traced) stay at a query block and the pairs, well under the
    4·N·d bytes of the float32 copy the flat path makes (FAISS's own index is not traced:
    it holds one shard, 4·shard_rows·d)."""
    image, rows = pool_vectors
    tracemalloc.start()
    try:
        sharded_self_pairs(image, rows, THRESHOLD, SHARD_ROWS, query_rows=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(rows) * DIM / 2


def test_near_dedup_stage_sharded_equals_flat(pool_vectors, tmp_path):
    image, rows = pool_vectors
    clip = np.random.default_rng(1).random(N).astype(np.float32)
    for keep_rule in ("lowest_row", "highest_clip_score"):
        ctx = make_context(tmp_path / keep_rule, np.asarray(image), rows, clip_score=clip)
        flat = run_stage("near_dedup", ctx, threshold=THRESHOLD, keep=keep_rule, index="flat")
        sharded = run_stage(
            "near_dedup",
            ctx,
            threshold=THRESHOLD,
            keep=keep_rule,
            index="sharded_flat",
            shard_rows=SHARD_ROWS,
        )
        np.testing.assert_array_equal(sharded.keep, flat.keep)
        np.testing.assert_array_equal(sharded.reason, flat.reason)
        np.testing.assert_array_equal(sharded.score, flat.score)
        counts = ("pairs", "groups", "rows_in_groups", "removed")
        assert {k: sharded.report[k] for k in counts} == {k: flat.report[k] for k in counts}
        assert sharded.report["index"] == "sharded-flat" and sharded.report["exact"]
        assert sharded.report["shard_rows"] == SHARD_ROWS and sharded.report["removed"] > 50
    assert len(list(ctx.work_dir.glob("near-pairs-*.npz"))) == 2  # cached apart from flat's


def test_shard_rows_is_optional_and_checked():
    params = get_stage("near_dedup").params_model
    # unset, it stays out of the recipe's hash: recipes written before it hash the same
    assert set(params().model_dump(mode="json")) == {
        "threshold",
        "keep",
        "index",
        "nprobe",
        "recall_sample",
    }
    assert params(index="sharded_flat", shard_rows=5).model_dump()["shard_rows"] == 5
    with pytest.raises(ValidationError, match="sharded_flat"):
        params(shard_rows=5)
    with pytest.raises(ValidationError, match="shard_rows"):
        params(index="sharded_flat", shard_rows=0)
