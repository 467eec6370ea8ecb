"""The FAISS stages (near_dedup, exact_dedup, semdedup, image_based, decontaminate) and their
library code against brute-force numpy references on small planted data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

import curate.dedup.semdedup as semdedup_module
from curate.core.decisions_view import subset_decisions
from curate.core.errors import UserInputError
from curate.dedup.clustering import assign, kmeans
from curate.dedup.groups import (
    connected_components,
    keep_one_per_group,
    keep_order,
    linked_groups,
)
from curate.dedup.image_based import image_based_keep
from curate.dedup.knn import Pairs, exact_pairs, pair_recall, plan_index, self_pairs
from curate.dedup.semdedup import semdedup_scores
from curate.dedup.synthetic import planted_near_duplicates
from curate.filters.catalog import get_stage
from curate.filters.dedup_inputs import reasons_naming
from curate.filters.registry import StageContext, StageResult, dense_result

THRESHOLD = 0.95
N, DIM = 1500, 64


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    vectors = planted_near_duplicates(N, DIM, n_centers=20, duplicate_fraction=0.15, seed=3).vectors
    return vectors.astype(np.float16).astype(np.float32)  # as stored: float16


def brute_force_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    similarity = vectors @ vectors.T
    margin = np.abs(similarity - threshold)
    assert margin.min() > 1e-5, "test data has a pair on the threshold: pick another seed"
    left, right = np.nonzero(np.triu(similarity >= threshold, k=1))
    return set(zip(left.tolist(), right.tolist(), strict=True))


def reference_components(n: int, pairs: set[tuple[int, int]]) -> np.ndarray:
    """Plain Python union-find: label = smallest member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)])


def make_context(
    tmp_path: Path,
    vectors: np.ndarray,
    keep_rows: np.ndarray | None = None,
    clip_score: np.ndarray | None = None,
    sha256: list[str] | None = None,
    seed: int = 0,
) -> StageContext:
    """A pool directory with one embedding set, and a context over ``keep_rows`` of it."""
    root = tmp_path / "pool"
    emb = root / "embeddings" / "test"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / "image.npy", vectors.astype(np.float16))
    (emb / "meta.json").write_text(json.dumps({"name": "test"}))
    uids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(len(vectors))]
    if clip_score is not None:
        pl.DataFrame({"uid": uids, "clip_score": clip_score}).write_parquet(
            emb / "clip_score.parquet"
        )
    rows = pl.DataFrame({"uid": uids, "row": np.arange(len(vectors), dtype=np.int64)})
    if sha256 is not None:
        rows = rows.with_columns(sha256=pl.Series(sha256))
    if keep_rows is not None:
        rows = rows[keep_rows]
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StageContext(rows=rows, pool_root=root, seed=seed, work_dir=work)


def run_stage(name: str, ctx: StageContext, **params) -> StageResult:
    """The stage's answer as a value per row (near_dedup answers sparsely)."""
    stage = get_stage(name)
    return dense_result(stage.run(ctx, stage.params_model(**params)))


# -- pairs and recall ----------------------------------------------------------------------


def test_flat_self_pairs_equal_brute_force(planted):
    pairs = self_pairs(planted, THRESHOLD, plan_index(len(planted)))
    reference = brute_force_pairs(planted, THRESHOLD)
    assert len(reference) > 100  # planted groups exist
    assert set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True)) == reference
    direct = np.einsum("ij,ij->i", planted[pairs.left], planted[pairs.right])
    np.testing.assert_allclose(pairs.similarity, direct, atol=1e-5)


def test_ivf_pairs_are_true_pairs_with_high_recall(planted):
    plan = plan_index(len(planted), "ivf", nprobe=4)
    assert plan.nlist == round(2 * np.sqrt(len(planted)))
    pairs = self_pairs(planted, THRESHOLD, plan, seed=1)
    found = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    reference = brute_force_pairs(planted, THRESHOLD)
    assert found <= reference  # the IVF lists hold exact vectors: no false pairs
    queries = np.arange(0, len(planted), 3)
    exact = exact_pairs(planted, queries, THRESHOLD)
    touching = {p for p in reference if p[0] % 3 == 0 or p[1] % 3 == 0}
    assert set(zip(exact.left.tolist(), exact.right.tolist(), strict=True)) == touching
    expected = len(touching & found) / len(touching)
    assert pair_recall(pairs, exact, queries, len(planted)) == pytest.approx(expected)
    assert expected >= 0.95


def test_pair_recall_hand_checked():
    found = Pairs(np.array([0, 1, 2]), np.array([1, 5, 3]), np.ones(3, np.float32))
    exact = Pairs(np.array([0, 0, 1]), np.array([1, 4, 5]), np.ones(3, np.float32))
    # queries {0, 1}: exact pairs (0,1), (0,4), (1,5); found has (0,1), (1,5): 2 of 3
    assert pair_recall(found, exact, np.array([0, 1]), 6) == pytest.approx(2 / 3)
    assert (
        pair_recall(found, Pairs(*(np.zeros(0, int),) * 2, np.zeros(0)), np.array([0]), 6) is None
    )


# -- groups --------------------------------------------------------------------------------


def random_pairs(seed: int, n: int, edges: int) -> tuple[set, np.ndarray, np.ndarray]:
    """Random undirected pairs among ``n`` rows: as a set, and as sorted left/right arrays."""
    drawn = np.random.default_rng(seed).integers(0, n, size=(edges, 2))
    pairs = {(min(a, b), max(a, b)) for a, b in drawn.tolist() if a != b}
    left, right = np.array(sorted(pairs)).T
    return pairs, left, right


def test_connected_components_match_union_find():
    n = 400
    pairs, left, right = random_pairs(0, n, 300)
    np.testing.assert_array_equal(
        connected_components(n, left, right), reference_components(n, pairs)
    )


def test_linked_groups_are_the_components_of_the_rows_in_pairs():
    n = 1000
    pairs, left, right = random_pairs(1, n, 200)
    linked, labels = linked_groups(left, right)
    np.testing.assert_array_equal(linked, np.unique([left, right]))
    full = reference_components(n, pairs)
    # same partition of the linked rows: equal labels exactly where the full labels are equal
    np.testing.assert_array_equal(
        labels[:, None] == labels[None, :], full[linked][:, None] == full[linked][None, :]
    )
    np.testing.assert_array_equal(linked[labels], full[linked])  # the group's smallest row


def test_keep_one_per_group_rules():
    labels = np.array([0, 0, 2, 0, 2, 5])
    rows = np.array([10, 11, 12, 13, 14, 15])
    keep, rep = keep_one_per_group(labels, keep_order(rows, "lowest_row"))
    assert keep.tolist() == [True, False, True, False, False, True]
    assert rep.tolist() == [0, 0, 2, 0, 2, 5]
    clip = np.array([0.1, 0.3, 0.2, 0.3, np.nan, 0.0])  # tie 0.3 -> lower row; NaN loses
    keep, rep = keep_one_per_group(labels, keep_order(rows, "highest_clip_score", clip))
    assert keep.tolist() == [False, True, True, False, False, True]
    assert rep.tolist() == [1, 1, 2, 1, 2, 5]


# -- stages --------------------------------------------------------------------------------


def test_near_dedup_stage_matches_reference(planted, tmp_path):
    keep_rows = np.flatnonzero(np.arange(N) % 7 != 3)  # earlier stages removed some rows
    clip = np.random.default_rng(1).random(N).astype(np.float32)
    ctx = make_context(tmp_path, planted, keep_rows, clip_score=clip)
    vectors = planted[keep_rows]
    reference = brute_force_pairs(vectors, THRESHOLD)
    labels = reference_components(len(vectors), reference)
    assert np.bincount(labels).max() > 2  # groups beyond pairs, linked through other rows
    keeps = []
    for keep_rule in ("lowest_row", "highest_clip_score"):
        result = run_stage("near_dedup", ctx, threshold=THRESHOLD, keep=keep_rule)
        expected = np.ones(len(vectors), dtype=bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            if keep_rule == "lowest_row":
                winner = members[np.argmin(keep_rows[members])]
            else:
                winner = members[np.lexsort((keep_rows[members], -clip[keep_rows][members]))[0]]
            expected[members] = False
            expected[winner] = True
        np.testing.assert_array_equal(result.keep, expected)
        keeps.append(result.keep)
        assert result.report["pairs"] == len(reference) and result.report["exact"]
        removed = np.flatnonzero(~result.keep)
        assert all(r.startswith("near-duplicate group") for r in np.asarray(result.reason)[removed])
        assert np.all(result.score[removed] >= THRESHOLD)
    assert not np.array_equal(*keeps)
    again = run_stage("near_dedup", ctx, threshold=THRESHOLD)  # cached pairs: same answer
    first = run_stage(
        "near_dedup", make_context(tmp_path / "b", planted, keep_rows), threshold=THRESHOLD
    )
    np.testing.assert_array_equal(again.keep, first.keep)
    assert len(list(ctx.work_dir.glob("near-pairs-*.npz"))) == 1


def test_near_dedup_ivf_reports_recall(planted, tmp_path):
    ctx = make_context(tmp_path, planted)
    result = run_stage(
        "near_dedup", ctx, threshold=THRESHOLD, index="ivf", nprobe=4, recall_sample=500
    )
    assert result.report["index"] == "ivf-fp16" and result.report["recall_query_rows"] == 500
    assert result.report["recall_vs_exact"] >= 0.95
    # the exact side is the brute force's over the stored float16 vectors, same query sample
    queries = np.sort(np.random.default_rng(ctx.seed).choice(len(planted), 500, replace=False))
    stored = planted.astype(np.float16).astype(np.float32)
    assert result.report["recall_exact_pairs"] == len(exact_pairs(stored, queries, THRESHOLD))
    assert 0 < result.report["recall_exact_scanned"] < 1


def test_exact_dedup_matches_groupby(tmp_path):
    rng = np.random.default_rng(2)
    hashes = [f"h{v}" for v in rng.integers(0, 40, size=200)]
    hashes[5] = None
    hashes[6] = None
    keep_rows = np.flatnonzero(np.arange(200) % 5 != 0)
    ctx = make_context(tmp_path, planted_near_duplicates(200, 8).vectors, keep_rows, sha256=hashes)
    result = run_stage("exact_dedup", ctx)
    frame = pd.DataFrame({"sha256": np.asarray(hashes, dtype=object)[keep_rows], "row": keep_rows})
    first_row = frame.groupby("sha256")["row"].transform("min")
    expected = (frame["row"] == first_row) | frame["sha256"].isna()
    np.testing.assert_array_equal(result.keep, expected.to_numpy())
    reasons = np.asarray(result.reason)
    uids = ctx.rows["uid"].to_numpy()
    for position in np.flatnonzero(~result.keep)[:5]:
        same = np.flatnonzero((frame["row"] == first_row.iloc[position]).to_numpy())[0]
        assert reasons[position].endswith(uids[same])


def test_kmeans_is_deterministic_under_seed(planted):
    first = kmeans(planted, 20, n_iter=10, seed=7, train_sample=1000)
    second = kmeans(planted, 20, n_iter=10, seed=7, train_sample=1000)
    other = kmeans(planted, 20, n_iter=10, seed=8, train_sample=1000)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_image_based_matches_numpy(planted, tmp_path):
    rng = np.random.default_rng(4)
    target = planted[rng.choice(N, 60, replace=False)] + 0.05 * rng.standard_normal((60, DIM))
    target = (target / np.linalg.norm(target, axis=1, keepdims=True)).astype(np.float32)
    centroids = kmeans(planted, 30, seed=0)
    selection = image_based_keep(planted, target, centroids=centroids)
    pool_cluster = np.argmax(planted @ centroids.T, axis=1)
    target_clusters = np.unique(np.argmax(target @ centroids.T, axis=1))
    np.testing.assert_array_equal(selection.cluster_ids, pool_cluster)
    np.testing.assert_array_equal(selection.target_clusters, target_clusters)
    np.testing.assert_array_equal(selection.keep, np.isin(pool_cluster, target_clusters))
    assert 0 < selection.keep.mean() < 1

    np.save(tmp_path / "target.npy", target.astype(np.float16))
    ctx = make_context(tmp_path, planted, seed=0)
    result = run_stage("image_based", ctx, target_embeddings=tmp_path / "target.npy", n_clusters=30)
    np.testing.assert_array_equal(result.keep, selection.keep)  # same seed -> same centroids
    assert result.report["target_clusters"] == len(target_clusters)


def reference_semdedup(vectors, cluster_ids, centroids, *, with_earlier: bool = False):
    """The paper's rule written directly: rank by distance to centroid (farthest first, ties by
    position), M[j] = max_{i ranked before j} cos(i, j); ``with_earlier`` also gives that i."""
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    m = np.full(len(vectors), np.nan)
    earlier = np.full(len(vectors), -1)
    for cluster in np.unique(cluster_ids):
        members = np.flatnonzero(cluster_ids == cluster)
        distance = 1 - vectors[members] @ unit[cluster]
        ranked = members[np.lexsort((members, -distance))]
        similarity = vectors[ranked] @ vectors[ranked].T
        for j in range(1, len(ranked)):
            m[ranked[j]] = similarity[:j, j].max()
            earlier[ranked[j]] = ranked[similarity[:j, j].argmax()]
    return (m, earlier) if with_earlier else m


@pytest.mark.parametrize("block_cells", [1 << 24, 5000])  # one block, then many
def test_semdedup_matches_numpy_rule(planted, monkeypatch, block_cells):
    monkeypatch.setattr(semdedup_module, "BLOCK_CELLS", block_cells)
    centroids = kmeans(planted, 8, seed=0, spherical=True)
    cluster_ids, _ = assign(planted, centroids)
    scores = semdedup_scores(planted, cluster_ids, centroids)
    expected = reference_semdedup(planted, cluster_ids, centroids)
    np.testing.assert_allclose(scores.max_similarity, expected, atol=1e-5)
    for eps in (0.01, 0.05, 0.1):
        assert np.all(np.abs(expected[np.isfinite(expected)] - (1 - eps)) > 1e-5)
        np.testing.assert_array_equal(scores.keep(eps), ~(expected > 1 - eps))
    earlier = scores.most_similar[np.isfinite(expected)]
    direct = np.einsum("ij,ij->i", planted[np.isfinite(expected)], planted[earlier])
    np.testing.assert_allclose(direct, expected[np.isfinite(expected)], atol=1e-5)
    assert np.all(
        scores.rank[scores.most_similar[np.isfinite(expected)]] < scores.rank[np.isfinite(expected)]
    )


@pytest.mark.parametrize(("order", "kept"), [("hard", [1, 2]), ("easy", [0, 3])])
def test_semdedup_ranks_near_ties_exactly_and_equal_rows_as_semdedup(order, kept):
    """Hand-checked. Rows 0 and 1 (cluster 0) are near-duplicates whose distances to the
    centroid differ by 3·10⁻⁸, one float32 step of their cosine, which float32 arithmetic
    rounds to the same ``1 − cosine``; rows 2 and 3 (cluster 1) are the same vector. In each
    pair the member ranked first is kept. hard (farthest first): row 1, which is farther in
    exact arithmetic, and of the equal rows the first in pool order, row 2; easy: row 0, and
    row 3 (SemDeDup's easy is its hard ranking reversed, equal rows included)."""
    nearer = np.nextafter(np.float32(0.33), np.float32(1))
    other = np.float32(np.sqrt(1 - 0.33**2))
    vectors = np.array(
        [[nearer, other, 0], [0.33, other, 0], [0, 0.6, 0.8], [0, 0.6, 0.8]], dtype=np.float32
    )
    centroids = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32)
    scores = semdedup_scores(vectors, np.array([0, 0, 1, 1]), centroids, order=order)
    assert np.flatnonzero(scores.keep(0.05)).tolist() == kept


def test_semdedup_stage_reports_kept_fraction_by_eps(planted, tmp_path):
    ctx = make_context(tmp_path, planted)
    result = run_stage("semdedup", ctx, eps=0.05, n_clusters=8)
    centroids = kmeans(planted, 8, seed=0, spherical=True)
    expected, earlier = reference_semdedup(
        planted, assign(planted, centroids)[0], centroids, with_earlier=True
    )
    np.testing.assert_array_equal(result.keep, ~(expected > 0.95))
    uids = ctx.rows["uid"].to_numpy()
    text = "semantic duplicate (cosine > 0.95) of earlier-ranked uid "
    assert result.reason.to_list() == [
        None if kept else text + uids[earlier[row]] for row, kept in enumerate(result.keep)
    ]  # the uid of the earlier-ranked member it resembles most, for the removed rows alone
    by_eps = result.report["kept_fraction_by_eps"]
    for eps in (0.01, 0.02, 0.05, 0.1, 0.2):
        assert by_eps[str(eps)] == pytest.approx(np.mean(~(expected > 1 - eps)))
    assert by_eps["0.01"] > by_eps["0.2"] and by_eps["0.05"] < 1


def test_decontaminate_matches_brute_force(planted, tmp_path):
    rng = np.random.default_rng(5)
    copies = planted[rng.choice(N, 40, replace=False)] + 0.02 * rng.standard_normal((40, DIM))
    others = rng.standard_normal((100, DIM))
    eval_set = np.concatenate([copies, others])
    eval_set = (eval_set / np.linalg.norm(eval_set, axis=1, keepdims=True)).astype(np.float16)
    np.save(tmp_path / "eval.npy", eval_set)
    ctx = make_context(tmp_path, planted)
    result = run_stage("decontaminate", ctx, eval_embeddings=[tmp_path / "eval.npy"], threshold=0.9)
    similarity = planted @ eval_set.astype(np.float32).T
    assert np.abs(similarity - 0.9).min() > 1e-5
    np.testing.assert_array_equal(result.keep, similarity.max(axis=1) < 0.9)
    np.testing.assert_allclose(result.score, similarity.max(axis=1), atol=1e-5)
    assert 40 <= (~result.keep).sum() < N / 2

    np.save(tmp_path / "wrong_dim.npy", eval_set[:, :10])
    with pytest.raises(UserInputError, match=r"eval_embeddings\[0\].*shape \(140, 10\)"):
        run_stage("decontaminate", ctx, eval_embeddings=[tmp_path / "wrong_dim.npy"])
    np.save(tmp_path / "unnormalised.npy", eval_set * 2)
    with pytest.raises(UserInputError, match="L2-normalised"):
        run_stage("decontaminate", ctx, eval_embeddings=[tmp_path / "unnormalised.npy"])


# -- through build-pool --------------------------------------------------------------------


def test_every_faiss_stage_runs_in_a_recipe(tmp_path):
    """A tiny real pool (duplicate image bytes included) with an embedding set: one recipe
    runs all five stages; the decisions name each removal's stage, reason and score."""
    from curate.build_pool.build import build_pool
    from curate.build_pool.recipe import parse_recipe
    from curate.core.pool import Pool
    from curate.core.pool_writer import PoolWriter, SourceSample
    from tests.conftest import make_image_bytes

    n = 60
    images = [make_image_bytes(i % 50) for i in range(n)]  # rows 50-59 repeat rows 0-9's bytes
    with PoolWriter(tmp_path / "pool", name="t", source={"type": "test"}, command="test") as w:
        for i, image in enumerate(images):
            w.add(SourceSample(source="test", where=f"row {i}", text=f"photo {i}", image=image))
    pool = Pool.open(tmp_path / "pool")
    vectors = planted_near_duplicates(n, 16, n_centers=4, duplicate_fraction=0.3, seed=9).vectors
    vectors[50:] = vectors[:10]  # identical bytes, identical embeddings
    emb = pool.layout.embeddings("test")
    emb.root.mkdir(parents=True)
    np.save(emb.image, vectors.astype(np.float16))
    emb.meta.write_text(json.dumps({"name": "test"}))
    uids = pool.samples(columns=["uid"])["uid"]
    pl.DataFrame({"uid": uids, "clip_score": np.linspace(0, 1, n)}).write_parquet(emb.clip_score)
    (tmp_path / "pool" / "targets").mkdir()
    np.save(tmp_path / "pool" / "targets" / "t.npy", vectors[:1].astype(np.float16))
    np.save(tmp_path / "eval.npy", vectors[20:22].astype(np.float16))

    recipe = parse_recipe(
        f"""\
name: faiss_all
seed: 3
stages:
  - stage: exact_dedup
  - stage: decontaminate
    params: {{eval_embeddings: ["{tmp_path / "eval.npy"}"], threshold: 0.999}}
  - stage: near_dedup
    params: {{threshold: 0.97, keep: highest_clip_score}}
  - stage: semdedup
    params: {{eps: 0.1, n_clusters: 3}}
  - stage: image_based
    params: {{target_embeddings: "{{pool}}/targets/t.npy", n_clusters: 4}}
""",
        source="test.yaml",
    )
    result = build_pool(recipe, tmp_path / "pool", tmp_path / "subset")
    decisions = subset_decisions(tmp_path / "subset").collect()  # the compact file, expanded
    removed = decisions.filter(~pl.col("kept"))
    by_stage = dict(removed.group_by("stage").len().iter_rows())
    assert by_stage["exact_dedup"] == 10 and by_stage["decontaminate"] == 2
    assert by_stage["near_dedup"] >= 3 and by_stage["image_based"] >= 1
    assert removed.filter(pl.col("stage") == "decontaminate")["score"].min() >= 0.999
    assert (
        removed.filter(pl.col("stage") == "near_dedup")["reason"]
        .cast(pl.String)
        .str.contains("kept as uid")
        .all()
    )
    assert result.kept == decisions.filter(pl.col("stage") == "image_based")["kept"].sum()
    stages = pl.read_parquet(tmp_path / "subset" / "stages.parquet")
    reports = {row["stage"]: json.loads(row["report"]) for row in stages.iter_rows(named=True)}
    assert set(reports["semdedup"]["kept_fraction_by_eps"]) == {
        "0.01",
        "0.02",
        "0.05",
        "0.1",
        "0.2",
    }
    assert reports["image_based"]["target_rows"] == 1


def test_reasons_name_the_uid_each_removed_row_duplicates() -> None:
    rows = pl.DataFrame({"uid": ["u0", "u1", "u2", "u3", "u4"], "row": range(5)})
    ctx = StageContext(rows, Path("unused"), seed=0, work_dir=Path("unused"))
    reasons = reasons_naming(ctx, np.array([1, 3, 4]), np.array([0, 2, 0]), "group kept as uid")
    assert reasons.to_list() == [
        None,
        "group kept as uid u0",
        None,
        "group kept as uid u2",
        "group kept as uid u0",
    ]


def test_build_reads_columns_on_demand_as_the_stages_run_by_hand(tmp_path):
    """build-pool's driver holds the rows' positions only: near_dedup (keep:
    highest_clip_score, from the samples table's clip_score column) and semdedup read uid and
    clip_score for the rows they name, shard by shard; near_dedup's sparse answer and
    decontaminate's and image_based's answers, left in their tasks' files, are written by one
    task per shard. In shards of 37 rows on two workers, the decisions equal those of the
    stages run by hand over the whole table."""
    from curate.build_pool.build import build_pool
    from curate.build_pool.recipe import parse_recipe
    from curate.core.executor import LocalExecutor
    from curate.core.pool import Pool
    from curate.core.pool_writer import PoolWriter, SourceSample
    from tests.conftest import make_image_bytes

    n = 300
    rng = np.random.default_rng(4)
    with PoolWriter(tmp_path / "pool", name="t", source={"type": "test"}, command="test") as w:
        for i in range(n):
            w.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    text=f"photo {i}",
                    image=make_image_bytes(i),
                    extras={"clip_score": float(rng.random())},
                )
            )
    pool = Pool.open(tmp_path / "pool")
    vectors = planted_near_duplicates(n, 16, n_centers=6, duplicate_fraction=0.3, seed=2).vectors
    emb = pool.layout.embeddings("test")
    emb.root.mkdir(parents=True)
    np.save(emb.image, vectors.astype(np.float16))
    emb.meta.write_text(json.dumps({"name": "test"}))
    np.save(tmp_path / "eval.npy", vectors[20:23].astype(np.float16))
    np.save(tmp_path / "target.npy", vectors[:2].astype(np.float16))
    recipe = parse_recipe(
        f"""\
name: on_demand
stages:
  - stage: decontaminate
    params: {{eval_embeddings: ["{tmp_path / "eval.npy"}"], threshold: 0.999}}
  - stage: near_dedup
    params: {{threshold: 0.97, keep: highest_clip_score}}
  - stage: semdedup
    params: {{eps: 0.1, n_clusters: 3}}
  - stage: image_based
    params: {{target_embeddings: "{tmp_path / "target.npy"}", n_clusters: 4}}
""",
        source="test.yaml",
    )
    build_pool(recipe, tmp_path / "pool", tmp_path / "subset", shard_rows=37,
               executor=LocalExecutor(workers=2))  # fmt: skip
    built = subset_decisions(tmp_path / "subset").collect()

    rows = pool.samples(columns=["uid", "clip_score"]).with_row_index("row")
    for stage in recipe.stages:
        context = StageContext(
            rows=rows, pool_root=pool.root, seed=0, work_dir=tmp_path / "by_hand"
        )
        (tmp_path / "by_hand").mkdir(exist_ok=True)
        result = dense_result(get_stage(stage.name).run(context, stage.params))
        reason = pl.Series(np.asarray(result.reason, dtype=object).tolist(), dtype=pl.String)
        expected = pl.DataFrame(
            {
                "row": rows["row"].cast(pl.Int64),
                "kept": result.keep,
                "reason": reason,
                "score": pl.Series(
                    result.score if result.score is not None else [None] * rows.height,
                    dtype=pl.Float32,
                ),
            }
        ).with_columns(reason=pl.when("kept").then(None).otherwise("reason"))
        got = built.filter(pl.col("stage") == stage.name).sort("row")
        got = got.select(pl.col("row").cast(pl.Int64), "kept", pl.col("reason").cast(pl.String),
                         pl.col("score").cast(pl.Float32))  # fmt: skip
        assert 0 < (~expected["kept"]).sum() < len(expected), stage.name
        assert got.with_columns(pl.col("score").fill_nan(None)).equals(
            expected.with_columns(pl.col("score").fill_nan(None))
        ), stage.name
        rows = rows.filter(pl.Series(result.keep))
