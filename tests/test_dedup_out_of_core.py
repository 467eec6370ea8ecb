"""The embedding stages out of core: blocks of the float16 file read by tasks, against the
in-memory computations on the whole float32 matrix (the reference), and `build-pool` with
near_dedup (IVF), semdedup, image_based and decontaminate writing the same bytes in this
process, on a local process pool and on a real local Ray instance."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.core.errors import UserInputError
from curate.core.executor import Executor, LocalExecutor, RayExecutor
from curate.core.manifest import Manifest, produced_by
from curate.dedup import blocks as blocks_module
from curate.dedup import cache as cache_module
from curate.dedup import ivf_exact
from curate.dedup.blocks import (
    NpyFile,
    Survivors,
    blocks,
    consecutive_groups,
    run_parts,
    task_bounds,
)
from curate.dedup.cache import rows_fingerprint
from curate.dedup.clustering import assign, kmeans
from curate.dedup.device import check_device, faiss_gpu, faiss_gpus
from curate.dedup.image_based import image_based_keep, target_clusters_blocked
from curate.dedup.ivf import IvfLists, ivf_lists, ivf_pairs
from curate.dedup.ivf_exact import exact_pairs_bounded
from curate.dedup.knn import exact_pairs, nearest, plan_index, self_pairs
from curate.dedup.nearest import nearest_parts
from curate.dedup.semdedup import semdedup_parts, semdedup_scores
from curate.dedup.sharded import sharded_pairs_on_executor, sharded_self_pairs
from curate.dedup.shuffle import read_spills, write_spill
from curate.dedup.synthetic import planted_near_duplicates
from curate.filters.catalog import get_stage
from curate.filters.registry import dense_result
from tests.test_filters_faiss import make_context

N, DIM = 20_000, 32  # three tasks of 8,192 rows (the smallest task)
TASK = 8192
THRESHOLD = 0.95


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(float16 image.npy of N planted vectors, surviving pool rows: every 5th removed)."""
    vectors = planted_near_duplicates(N, DIM, n_centers=40, duplicate_fraction=0.15, seed=2)
    path = tmp_path_factory.mktemp("ooc") / "image.npy"
    np.save(path, vectors.vectors.astype(np.float16))
    return path, np.flatnonzero(np.arange(N) % 5 != 2)


@pytest.fixture(scope="module")
def survivors(pool_file) -> Survivors:
    path, rows = pool_file
    return Survivors(NpyFile.open(path), rows)


@pytest.fixture(scope="module")
def in_memory(pool_file) -> np.ndarray:
    """The reference input: the survivors' vectors as one float32 matrix (as before)."""
    path, rows = pool_file
    return np.load(path)[rows].astype(np.float32)


@pytest.fixture(scope="module")
def rows_file(pool_file, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, pool_file[1])
    return path


# -- reading blocks ----------------------------------------------------------------------------


def test_npy_file_reads_what_numpy_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks_module, "SPAN_ROWS", 64)  # many spans, reads that must split
    data = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float16)
    np.save(tmp_path / "a.npy", data)
    np.save(tmp_path / "i.npy", np.arange(1000, dtype=np.int64) * 3)
    file = NpyFile.open(tmp_path / "a.npy")
    assert file.shape == (1000, 7) and len(file) == 1000 and file.row_bytes == 14
    np.testing.assert_array_equal(file.range(10, 300), data[10:300])
    np.testing.assert_array_equal(file.range(990, 2000), data[990:])
    assert file.range(5, 5).shape == (0, 7)
    index = np.random.default_rng(1).integers(0, 1000, size=700)  # any order, repeats
    index[:5] = [999, 0, 63, 64, 65]  # span edges
    np.testing.assert_array_equal(file.take(index), data[index])
    np.testing.assert_array_equal(file.take(np.array([], dtype=np.int64)), data[:0])
    with pytest.raises(IndexError):
        file.take(np.array([1000]))
    ints = NpyFile.open(tmp_path / "i.npy")
    np.testing.assert_array_equal(ints.range(100, 200), np.arange(100, 200) * 3)


def test_task_bounds_and_blocks_are_aligned():
    assert task_bounds(20_000, 8192) == [(0, 8192), (8192, 16384), (16384, 20000)]
    assert task_bounds(0, 8192) == []
    with pytest.raises(ValueError, match="multiple of 8192"):
        task_bounds(100, 5000)
    assert blocks(8192, 20000) == [(8192, 16384), (16384, 20000)]
    assert blocks(100, 9000, 4096) == [(100, 4096), (4096, 8192), (8192, 9000)]


# -- each out-of-core computation against its in-memory reference --------------------------


def test_nearest_parts_are_nearest_over_the_whole_matrix(survivors, in_memory, tmp_path):
    """Left in the tasks' files (as the stages' answers are), any window reads the rows of
    the search over the whole float32 matrix."""
    centroids = kmeans(in_memory, 50, seed=0, spherical=True)
    parts = nearest_parts(survivors, centroids, tmp_path, task_rows=TASK, with_distance=True)
    assert len(list(tmp_path.glob("0*.npz"))) == 2  # 16,000 survivors: two tasks
    assert parts.windows() == [(0, TASK), (TASK, len(survivors))]
    cluster_ids, similarity = assign(in_memory, centroids)
    distance = semdedup_scores(in_memory, cluster_ids, centroids).distance_to_centroid
    for start, stop in [(0, len(survivors)), (0, 0), (5, 6), (100, TASK), (TASK - 3, TASK + 4)]:
        window = parts.read(start, stop)
        np.testing.assert_array_equal(window.index, cluster_ids[start:stop])
        np.testing.assert_array_equal(window.similarity, similarity[start:stop])
        np.testing.assert_array_equal(window.distance, distance[start:stop])


def test_ivf_pairs_are_the_one_index_search(survivors, in_memory, rows_file, tmp_path):
    plan = plan_index(len(survivors), "ivf", nprobe=4)
    reference = self_pairs(in_memory, THRESHOLD, plan, seed=3)
    assert len(reference) > 500
    for run, options in {
        "one group": {},
        "groups": {"group_rows": 1500},
        "torch": {"group_rows": 1500, "torch_device": "cpu"},  # the --device cuda code path
    }.items():
        lists = ivf_lists(survivors, plan, tmp_path / run, seed=3, task_rows=TASK)
        found = ivf_pairs(survivors, rows_file, THRESHOLD, lists, tmp_path / run, **options)
        np.testing.assert_array_equal(found.left, reference.left)
        np.testing.assert_array_equal(found.right, reference.right)
        if run == "torch":  # float32 products in another order than FAISS's
            np.testing.assert_allclose(found.similarity, reference.similarity, atol=1e-6)
        else:
            np.testing.assert_array_equal(found.similarity, reference.similarity)
    assert len(list((tmp_path / "groups").glob("pairs-*.npz"))) > 5
    assert len(list((tmp_path / "groups").glob("lists-*.npz"))) == 2


def test_groups_hold_consecutive_items_up_to_the_bound():
    sizes = np.array([3, 4, 10, 1, 1, 0, 6])
    assert consecutive_groups(sizes, 7).tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert consecutive_groups(sizes, 100).tolist() == [0] * 7


def test_exact_pairs_bounded_is_exact_pairs(survivors, in_memory, rows_file, tmp_path, monkeypatch):
    """The list-bounded exact search against the in-memory brute force: the same pairs and
    cosines, with lists left out, and pairs whose rows are filed in different lists (so
    that searching a query's own lists only, or misjudging a radius, would fail)."""
    queries = np.sort(np.random.default_rng(0).choice(len(survivors), 700, replace=False))
    reference = exact_pairs(in_memory, queries, THRESHOLD)
    plan = plan_index(len(survivors), "ivf", nprobe=4)
    lists = ivf_lists(survivors, plan, tmp_path / "ivf", seed=3, task_rows=TASK)
    filed_in = np.concatenate([np.load(f)["lists"][:, 0] for f in lists.list_files])
    assert len(reference) > 50
    assert (filed_in[reference.left] != filed_in[reference.right]).sum() >= 5
    runs = {"one group": (1 << 20, 1 << 22), "groups": (1500, 1 << 22), "spans": (1500, 40)}
    for run, (group_rows, probe_entries) in runs.items():
        monkeypatch.setattr(ivf_exact, "PROBE_ENTRIES", probe_entries)  # spans of few queries
        found, scanned = exact_pairs_bounded(
            survivors,
            rows_file,
            queries,
            THRESHOLD,
            lists,
            tmp_path / run,
            group_rows=group_rows,
        )
        np.testing.assert_array_equal(found.left, reference.left)
        np.testing.assert_array_equal(found.right, reference.right)
        np.testing.assert_array_equal(found.similarity, reference.similarity)
        assert 0 < scanned < 0.5


def test_candidate_lists_reach_exactly_the_edge_of_the_bound(tmp_path):
    """Hand-checked, in the plane: list 0's direction is 0°, its one row ``x`` at 30°; at
    t = 0.95 (18.19°) a query at 48.0° is in a pair with ``x`` (18.0° apart) and must search
    list 0, one at 48.6° is not (18.6°) and is past 30° + 18.19° + slack, so it need not. A
    reach or a list angle misjudged by a tenth would fail."""
    degrees = np.array([30.0, 180.0, 48.0, 48.6])  # x, a row of list 1, the two queries
    radians = np.deg2rad(degrees)
    vectors = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float16)
    np.save(tmp_path / "image.npy", vectors)
    rows = Survivors(NpyFile.open(tmp_path / "image.npy"), np.arange(4))
    centroids = np.array([[2.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    ivf_exact.save_arrays(tmp_path / "lists.npz", lists=np.array([[0], [1], [1], [1]]))
    task = ivf_exact.ListAngleTask(
        rows, tmp_path / "c.npz", tmp_path / "lists.npz", tmp_path / "a.npz"
    )
    ivf_exact.save_arrays(task.centroids, centroids=centroids)
    ivf_exact.list_angles(task)
    found = np.load(task.out)
    np.testing.assert_allclose(np.rad2deg(found["angle"]), [30.0, 132.0], atol=0.05)
    within = ivf_exact.candidate_lists(
        rows, np.array([2, 3]), centroids, found["angle"], float(found["norm"]), 0.95
    )
    assert np.unpackbits(within, axis=1)[:, :2].tolist() == [[1, 1], [0, 1]]
    assert float(vectors[0].astype(np.float32) @ vectors[2].astype(np.float32)) >= 0.95


def test_exact_pairs_bounded_finds_a_pair_at_the_edge_of_both_bounds(tmp_path):
    """Hand-checked, in the plane: list 0 (direction 0°) holds rows at 30° and 10°, list 1
    (180°) the rest. The query at 48° is 18.0° from the row at 30° (a pair at t = 0.95, whose
    reach is 18.19°), so list 0 passes by 0.19° and, within it, the row at 30° lies inside
    the query's slice [29.8°, 66.2°] by as little; the row at 10° is outside. Either bound
    cut by a tenth loses the pair."""
    degrees = np.array([30.0, 10.0, 180.0, 48.0, 48.6])
    radians = np.deg2rad(degrees)
    vectors = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float16)
    np.save(tmp_path / "image.npy", vectors)
    np.save(tmp_path / "rows.npy", np.arange(5))
    rows = Survivors(NpyFile.open(tmp_path / "image.npy"), np.arange(5))
    ivf_exact.save_arrays(tmp_path / "c.npz", centroids=np.array([[2.0, 0.0], [-1.0, 0.0]]))
    filed = np.array([[0], [0], [1], [1], [1]], dtype=np.int32)
    ivf_exact.save_arrays(tmp_path / "lists.npz", lists=filed, list_sizes=np.array([2, 3]))
    lists = IvfLists(tmp_path / "c.npz", ((0, 5),), (tmp_path / "lists.npz",), np.array([2, 3]))
    queries = np.array([3])  # alone: no other query's slice covers the row at 30°
    found, scanned = exact_pairs_bounded(
        rows, tmp_path / "rows.npy", queries, 0.95, lists, tmp_path / "exact"
    )
    reference = exact_pairs(vectors.astype(np.float32), queries, 0.95)
    assert list(zip(reference.left.tolist(), reference.right.tolist(), strict=True)) == [
        (0, 3),
        (3, 4),
    ]
    np.testing.assert_array_equal(found.left, reference.left)
    np.testing.assert_array_equal(found.right, reference.right)
    np.testing.assert_array_equal(found.similarity, reference.similarity)
    assert scanned < 1


def test_exact_pairs_bounded_searches_almost_every_list_at_a_low_threshold(
    survivors, in_memory, rows_file, tmp_path
):
    queries = np.arange(0, len(survivors), 97)
    reference = exact_pairs(in_memory, queries, 0.2)  # almost every list is within reach
    plan = plan_index(len(survivors), "ivf", nprobe=1)
    lists = ivf_lists(survivors, plan, tmp_path / "ivf", seed=3, task_rows=TASK)
    found, scanned = exact_pairs_bounded(
        survivors, rows_file, queries, 0.2, lists, tmp_path / "exact"
    )
    assert scanned > 0.99 and len(reference) > 10_000
    np.testing.assert_array_equal(found.left, reference.left)
    np.testing.assert_array_equal(found.similarity, reference.similarity)


def test_reported_cosines_do_not_depend_on_the_thread_count(in_memory, monkeypatch):
    """FAISS's products round differently on 1 and 2 threads (checked first, so that the test
    can fail); the values the stages report are rechecked, so they do not."""
    import faiss

    centroids = kmeans(in_memory, 40, seed=0)
    index = faiss.IndexFlatIP(DIM)
    index.add(centroids)
    raw, answers = {}, {}
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        raw[threads] = index.search(in_memory, 1)[0]
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # what a task of one CPU gets
        flat = self_pairs(in_memory[:6000], THRESHOLD, plan_index(6000, "flat"))
        ivf = self_pairs(in_memory, THRESHOLD, plan_index(len(in_memory), "ivf", nprobe=4))
        answers[threads] = (nearest(centroids, in_memory), flat, ivf)
    assert not np.array_equal(raw[1], raw[2])
    (near1, flat1, ivf1), (near2, flat2, ivf2) = answers[1], answers[2]
    for one, two in ((near1[0], near2[0]), (near1[1], near2[1])):
        np.testing.assert_array_equal(one, two)
    for one, two in ((flat1, flat2), (ivf1, ivf2)):
        for name in ("left", "right", "similarity"):
            np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    assert len(flat1) > 100 and len(ivf1) > 500


def test_spills_reach_their_destinations_in_order(tmp_path):
    """Two senders, five destinations (one receiving nothing): each destination, and any run
    of them, reads exactly its rows, sender after sender, in each sender's order."""
    rng = np.random.default_rng(8)
    tables, paths = [], []
    for sender in range(2):
        destination = rng.integers(0, 5, 40)
        destination[destination == 3] = 4
        table = pa.table({"value": np.arange(40) + 100 * sender, "text": [f"s{sender}"] * 40})
        write_spill(tmp_path / f"{sender}.arrow", table, destination, 5)
        tables.append((table, destination))
        paths.append(tmp_path / f"{sender}.arrow")
    for first, last in [(0, 0), (1, 1), (3, 3), (4, 4), (1, 3), (0, 4)]:
        got = read_spills(paths, first, last)
        expected = [
            value
            for table, destination in tables
            for d in range(first, last + 1)
            for value in table["value"].to_numpy()[destination == d]
        ]
        assert got["value"].to_pylist() == expected
        assert got.schema.metadata is None


@pytest.mark.parametrize("order", ["hard", "easy"])
def test_semdedup_parts_are_semdedup_scores(survivors, in_memory, tmp_path, order):
    """Sent by cluster group and back by window, every row's M and the uid of the member
    reaching it equal the in-memory ranking's, read in any window."""
    centroids = kmeans(in_memory, 60, seed=0, spherical=True)
    assigned = nearest_parts(
        survivors, centroids, tmp_path / "a", task_rows=TASK, with_distance=True
    )
    uids = pl.Series("uid", [f"uid-{i}" for i in range(len(survivors))])
    found = semdedup_parts(
        survivors, assigned, uids.gather, 60, order, tmp_path / "c", task_rows=TASK
    )
    assert len(list((tmp_path / "c").glob("clusters-*.arrow"))) >= 2
    reference = semdedup_scores(in_memory, assign(in_memory, centroids)[0], centroids, order)
    named = reference.most_similar >= 0
    expected_uids = np.where(named, np.array(uids.to_list())[reference.most_similar], None)
    for start, stop in [(0, len(survivors)), (0, 1), (TASK - 5, TASK + 7), (3000, 3000)]:
        max_similarity, most_similar = found.read(start, stop)
        np.testing.assert_array_equal(max_similarity, reference.max_similarity[start:stop])
        assert most_similar.to_list() == expected_uids[start:stop].tolist()
    assert 0.5 < np.mean(~(reference.max_similarity > 0.95)) < 1


def test_image_based_blocked_is_image_based_keep(survivors, in_memory, tmp_path):
    rng = np.random.default_rng(4)
    target = in_memory[rng.choice(len(in_memory), 40, replace=False)]
    centroids = kmeans(in_memory, 100, seed=0)
    reference = image_based_keep(in_memory, target, centroids=centroids)
    found = target_clusters_blocked(survivors, target, centroids, tmp_path, task_rows=TASK)
    cluster_ids = found.cluster_ids(0, len(survivors))
    np.testing.assert_array_equal(found.keep(cluster_ids), reference.keep)
    np.testing.assert_array_equal(cluster_ids, reference.cluster_ids)
    np.testing.assert_array_equal(found.target_clusters, reference.target_clusters)
    assert found.kept_rows() == reference.keep.sum() and 0 < reference.keep.mean() < 1


def test_sharded_tasks_are_the_sharded_search(survivors, pool_file, rows_file, tmp_path):
    image = np.load(pool_file[0], mmap_mode="r")
    rows = pool_file[1][:6000]
    reference = sharded_self_pairs(image, rows, THRESHOLD, 2500)
    part = Survivors(survivors.image, rows)
    np.save(tmp_path / "rows.npy", rows)
    found = sharded_pairs_on_executor(part, tmp_path / "rows.npy", THRESHOLD, 2500, tmp_path / "w")
    assert len(list((tmp_path / "w").glob("shard-*.npz"))) == 3
    for name in ("left", "right", "similarity"):
        np.testing.assert_array_equal(getattr(found, name), getattr(reference, name))


def test_kmeans_reads_only_its_sample_from_the_file(survivors, in_memory):
    """k-means on Survivors (the sample read from the file) = k-means on the matrix."""
    np.testing.assert_array_equal(
        kmeans(survivors, 30, seed=5, train_sample=3000),
        kmeans(in_memory, 30, seed=5, train_sample=3000),
    )


def test_a_stage_never_holds_the_float32_matrix(tmp_path):
    """numpy's allocations (traced) during image_based stay well under the 4·N·d bytes of the
    float32 copy the stages used to make (FAISS's own buffers are not traced)."""
    n, dim = 60_000, 64
    vectors = planted_near_duplicates(n, dim, n_centers=30, seed=1).vectors
    ctx = make_context(tmp_path, vectors)
    np.save(tmp_path / "target.npy", vectors[:20].astype(np.float16))
    stage = get_stage("image_based")
    params = stage.params_model(
        target_embeddings=tmp_path / "target.npy", n_clusters=40, train_sample=2000, task_rows=TASK
    )
    tracemalloc.start()
    try:
        result = dense_result(stage.run(ctx, params))  # the stage, then its value per row
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 < result.keep.mean() < 1
    assert peak < 4 * n * dim * 0.6


# -- resume ------------------------------------------------------------------------------------


class Crash(Exception):
    pass


class Recording(Executor):
    """Another executor, recording which task function each map call ran and on how many
    parts (so the test knows the stages' tasks really ran on it)."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.calls = inner, []

    def map(self, fn, parts, **options):
        self.calls.append((fn.__name__, len(parts)))
        return self.inner.map(fn, parts, **options)


class CrashingExecutor(Executor):
    """Runs parts in this process; raises after ``after`` parts (None: never)."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.ran = after, 0

    def map(self, fn, parts, *, gpus=0):
        for part in parts:
            if self.after is not None and self.ran == self.after:
                raise Crash
            self.ran += 1
            yield fn(part)


def test_a_killed_step_resumes_from_its_finished_tasks(survivors, in_memory, tmp_path):
    centroids = kmeans(in_memory, 20, seed=0)
    with pytest.raises(Crash):
        nearest_parts(survivors, centroids, tmp_path, executor=CrashingExecutor(1), task_rows=TASK)
    resumed = CrashingExecutor()
    found = nearest_parts(survivors, centroids, tmp_path, executor=resumed, task_rows=TASK)
    assert resumed.ran == 1  # of two tasks: the other finished before the crash
    np.testing.assert_array_equal(found.read(0, found.rows).index, assign(in_memory, centroids)[0])
    run_parts(resumed, lambda part: None, [SimpleNamespace(out=tmp_path / "00000.npz")])
    assert resumed.ran == 1  # nothing left to run


# -- the device -------------------------------------------------------------------------------


def test_device_selection_falls_back_to_the_cpu_with_a_message(caplog):
    import faiss

    assert faiss_gpu("cpu") is False
    with caplog.at_level(logging.WARNING, logger="curate.dedup"):
        on_gpu = faiss_gpu("cuda")
    if faiss_gpus(faiss) == 0:  # this machine: faiss-cpu, no GPU
        assert on_gpu is False
        assert "run on the CPU" in caplog.text and "faiss-gpu-cu12" in caplog.text
    with pytest.raises(UserInputError, match="unknown device 'tpu'"):
        check_device("tpu")
    # what faiss_gpus reads from a faiss build: a CPU wheel lacks StandardGpuResources
    assert faiss_gpus(SimpleNamespace(get_num_gpus=lambda: 2)) == 0
    assert faiss_gpus(SimpleNamespace(get_num_gpus=lambda: 2, StandardGpuResources=object)) == 2
    assert faiss_gpus(SimpleNamespace(get_num_gpus=lambda: 0, StandardGpuResources=object)) == 0


# -- build-pool on every executor ---------------------------------------------------------


def _metadata_pool(root: Path, vectors: np.ndarray) -> Path:
    """A pool of samples without images: samples.parquet, a manifest, one embedding set."""
    n = len(vectors)
    uids = [f"{i:032x}" for i in range(n)]
    root.mkdir(parents=True)
    pl.DataFrame({"uid": uids, "text": [f"photo {i}" for i in range(n)]}).write_parquet(
        root / "samples.parquet"
    )
    embeddings = root / "embeddings" / "test"
    embeddings.mkdir(parents=True)
    np.save(embeddings / "image.npy", vectors.astype(np.float16))
    (embeddings / "meta.json").write_text(json.dumps({"name": "test"}))
    rng = np.random.default_rng(0)
    pl.DataFrame({"uid": uids, "clip_score": rng.random(n).astype(np.float32)}).write_parquet(
        embeddings / "clip_score.parquet"
    )
    Manifest("t", "pool", {"type": "test"}, n, False, produced_by("test")).write(root)
    return root


RECIPE = """\
name: embedding_stages
seed: 1
stages:
  - stage: decontaminate
    params: {{eval_embeddings: ["{eval}"], threshold: 0.97, task_rows: 8192}}
  - stage: near_dedup
    params: {{threshold: 0.95, index: ivf, nprobe: 4, keep: highest_clip_score,
              recall_sample: 300, task_rows: 8192}}
  - stage: semdedup
    params: {{eps: 0.15, n_clusters: 40, train_sample: 4000, task_rows: 8192}}
  - stage: image_based
    params: {{target_embeddings: "{target}", n_clusters: 60, train_sample: 4000,
              task_rows: 8192}}
"""


@pytest.fixture(scope="module")
def embedding_pool(tmp_path_factory, pool_file) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("bp")
    vectors = np.load(pool_file[0]).astype(np.float32)
    pool = _metadata_pool(root / "pool", vectors)
    rng = np.random.default_rng(7)
    np.save(root / "eval.npy", vectors[rng.choice(N, 30, replace=False)].astype(np.float16))
    target = vectors[rng.choice(N, 50, replace=False)]
    np.save(root / "target.npy", target.astype(np.float16))
    return pool, RECIPE.format(eval=root / "eval.npy", target=root / "target.npy")


def _contents(out: Path, run_columns: tuple[str, ...] = ("seconds",)) -> dict[str, bytes]:
    """Every output file's bytes, less what differs between runs by design (the manifest's
    times and commit; stages.parquet's ``run_columns``)."""
    files = {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}
    contents = {name: path.read_bytes() for name, path in files.items()}
    manifest = json.loads(contents.pop("manifest.json"))
    for volatile in ("created", "produced_by"):
        manifest.pop(volatile)
    contents["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    stages = pl.read_parquet(files["stages.parquet"]).drop(*run_columns)
    contents["stages.parquet"] = stages.write_csv().encode()
    return contents


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_build_pool_writes_the_same_bytes_on_every_executor(embedding_pool, tmp_path, ray_instance):
    pool, text = embedding_pool
    recipe = parse_recipe(text, source="embedding_stages.yaml")
    reference = build_pool(recipe, pool, tmp_path / "in-process" / "candidate")
    stages = {s.stage: s for s in reference.stages}
    assert all(stages[name].removed > 0 for name in ("decontaminate", "near_dedup", "semdedup"))
    assert 0 < stages["image_based"].rows_out < stages["image_based"].rows_in
    assert stages["near_dedup"].report["recall_vs_exact"] >= 0.95
    expected = _contents(tmp_path / "in-process" / "candidate")
    for run, executor in {
        "local1": LocalExecutor(1),
        "local2": LocalExecutor(2),
        "ray": RayExecutor(),
    }.items():
        with executor:
            recording = Recording(executor)
            build_pool(recipe, pool, tmp_path / run / "candidate", executor=recording)
        assert _contents(tmp_path / run / "candidate") == expected, run
        tasks = {name for name, parts in recording.calls if parts > 1}  # they ran there
        assert {
            "nearest_part",
            "assign_lists",
            "list_angles",
            "semdedup_spill",
            "semdedup_part",
        } <= tasks, run
    cuda = build_pool(
        recipe, pool, tmp_path / "cuda" / "candidate", device="cuda"
    )  # no GPU here: the CPU
    assert cuda.kept == reference.kept


class CrashAfter(Executor):
    """Runs parts in this process, as the default executor does, and raises after ``parts``
    parts in all (every map call counted: the stages' steps and the shards' decisions)."""

    def __init__(self, parts: int) -> None:
        self.left = parts

    def map(self, fn, parts, **options):
        for part in parts:
            if self.left == 0:
                raise Crash
            self.left -= 1
            yield fn(part)


def test_a_build_killed_in_any_step_resumes_to_the_same_bytes(embedding_pool, tmp_path):
    """The four embedding stages, stopped inside each step in turn (halfway through its
    tasks: the stages' searches, semdedup's shuffle, the shards' decisions, the kept uids):
    each rerun of the same build finishes with the bytes of a build never stopped."""
    pool, text = embedding_pool
    recipe = parse_recipe(text, source="embedding_stages.yaml")
    counting = Recording(CrashAfter(10**9))
    build_pool(recipe, pool, tmp_path / "whole" / "candidate", executor=counting)
    resumable = ("seconds", "resumed")  # a resumed stage says so
    expected = _contents(tmp_path / "whole" / "candidate", resumable)
    steps = {name for name, _ in counting.calls}
    assert {"semdedup_spill", "semdedup_part", "_apply_answer"} <= steps
    before, stops = 0, []
    for _, parts in counting.calls:
        if parts:
            stops.append(before + parts // 2)
        before += parts
    for stop in stops:
        out = tmp_path / f"stopped-{stop}" / "candidate"  # the manifest names its folder
        with pytest.raises(Crash):
            build_pool(recipe, pool, out, executor=CrashAfter(stop))
        build_pool(recipe, pool, out)
        assert _contents(out, resumable) == expected, stop


def test_rows_fingerprint_a_block_at_a_time_is_the_hash_of_all_the_rows(tmp_path, monkeypatch):
    """Hashed in blocks (a memory map of uint64 positions, as build-pool's driver holds), the
    fingerprint is the sha256 of every row's int64 bytes at once: the cache keys of resumed
    work do not change with the block size or the dtype."""
    monkeypatch.setattr(cache_module, "FINGERPRINT_ROWS", 7)
    rows = np.random.default_rng(0).permutation(100).astype(np.uint64)
    rows.tofile(tmp_path / "positions.u64")
    mapped = np.memmap(tmp_path / "positions.u64", dtype=np.uint64, mode="r")
    whole = hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest()
    assert rows_fingerprint(mapped) == rows_fingerprint(rows.astype(np.int64)) == whole
    assert rows_fingerprint(mapped[:-1]) != whole
