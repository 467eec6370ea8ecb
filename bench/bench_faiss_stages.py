"""Benchmark: the user's `curate build-pool` with `near_dedup`, `image_based` and `semdedup`
over a pool of N × d float16 image embeddings (default 1M × 768, DataComp small's L/14 width).

Data (generated once, vectorised, a block at a time: curate.dedup.synthetic): unit vectors
around 10,000 cluster centers, 10% of rows replaced by near-duplicates of another row of the
same 1M-row block (cosine 1 down to ~0.91), so near-duplicate groups straddle the 0.95
threshold; a metadata pool (samples.parquet with the uids, manifest.json, the embeddings as
embeddings/bench/image.npy) under ``--work-dir`` (default /work/bench_data/faiss-N×d: keep it
out of the repository; it is reused by later runs). A target set for image_based: noisy copies
of rows of 50 of the centers.

Steps, each timed as a whole process (cold start included) with the peak RSS of its process
tree (the sum over the command and its worker processes, sampled every 0.2 s from /proc)
and its CPU seconds (it and its reaped workers, from os.wait4):

  near_dedup   `curate build-pool` of a one-stage recipe (index: auto, so IVF at this size,
               with its tasks on --executor/--workers); the stage itself reports its recall
               against the exact search on a seeded sample of --recall-sample query rows
               (computed inside the same command: the brute force's pairs, with the IVF lists
               that the triangle inequality rules out left out, as tasks per group of lists).
  exact        the baseline, in the same run: brute-force search (chunked numpy products over
               the float16 file) for the stage's query sample; its pairs must be as many as
               the stage's exact search found (asserted), and its time × N / queries
               extrapolates exact all-pairs search. Skip it at 12.8M rows: 100,000 query rows
               are ~2·10¹⁵ flops (about 9 CPU-hours on 2 cores).
  image_based  `curate build-pool` of a one-stage recipe (k-means with --n-clusters on a
               --train-sample seeded sample, then the assignment as tasks).
  in_memory    (``--check-in-memory``, default up to 2M rows) the in-memory path: the whole
               pool as one float32 matrix, the same k-means, image_based_keep; its kept uids
               must equal build-pool's (asserted).
  semdedup     `curate build-pool` of a one-stage recipe (spherical k-means with
               --semdedup-clusters, default rows / 1000, on a --train-sample seeded sample;
               the assignment, the shuffle by cluster group and the rule as tasks), and with
               ``--check-in-memory`` its in-memory path (the float32 matrix, semdedup_scores
               over the whole ranking): the kept uids must be equal (asserted). Then, with
               ``--check-in-memory`` and a ``--semdedup-repo`` git directory,
               facebookresearch/SemDeDup's own code as a whole process
               (bench/semdedup_anchor.py) on the same centroids (its inputs, a float32
               memmap of the pool among them, made beforehand and not timed; the centroids
               are the in-memory step's): its kept uids
               against build-pool's, counted rather than asserted (SemDeDup's float32 inner
               products may rank two near-identical rows of a cluster against the exact
               order); the uids kept by one only are written next to its inputs, and each is
               paired with its counterpart and checked against the exact (float64) order.
               ``--semdedup-order easy`` runs all three in SemDeDup's other order.

Prints wall and CPU seconds (the machine may be shared: CPU seconds are the fairer figure),
peak RSS per step, recall, the speed ratio exact-all-pairs / near_dedup, and writes every
figure to ``--json``.

``--compare-sharded`` runs instead the two exact searches of ``near_dedup`` on the same data
(stage functions, each in its own process): ``index: flat`` (the survivors' vectors copied to
float32, one IndexFlatIP of all of them) and ``index: sharded_flat`` (one IndexFlatIP of
``--shard-rows`` rows at a time, the rows read in blocks from the float16 file). It asserts
that both keep the same rows for the same reasons, and prints time, CPU and the stage's own
peak RSS (the kernel's peak counter reset once the imports are done) with the sharded/flat
ratios. Exact search is quadratic: keep ``--rows`` small (40k rows × 512-d take about 20
CPU-seconds flat).

    python bench/bench_faiss_stages.py                                  # 1M x 768
    python bench/bench_faiss_stages.py --rows 200000 --recall-sample 2000
    python bench/bench_faiss_stages.py --rows 12800000 --skip near_dedup,exact   # image_based
    python bench/bench_faiss_stages.py --rows 12800000 --skip image_based --nprobe 4 \
        --recall-sample 2000
    python bench/bench_faiss_stages.py --compare-sharded --rows 40000 --dim 512 --shard-rows 8192
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDINGS = "bench"
N_CENTERS = 10_000
BENCH_DATA = Path("/work/bench_data")
TIMELINE_SECONDS = 15.0
DEFAULT_SEMDEDUP_REPO = "/work/.mirror/facebookresearch+SemDeDup/repo"
SEMDEDUP_CENTROIDS = "semdedup-centroids.npy"  # the in-memory step's k-means, for SemDeDup


def _usage() -> tuple[float, float, float]:
    """(wall, CPU seconds of this process, peak RSS in MiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


# -- data ------------------------------------------------------------------------------------


def step_generate(args: argparse.Namespace, work: Path) -> dict:
    import polars as pl

    from curate.core.manifest import Manifest, produced_by
    from curate.dedup.synthetic import planted_near_duplicates_file

    started = _usage()
    pool = work / "pool"
    layout = pool / "embeddings" / EMBEDDINGS
    layout.mkdir(parents=True, exist_ok=True)
    center = planted_near_duplicates_file(
        layout / "image.npy", args.rows, args.dim, n_centers=N_CENTERS, duplicate_fraction=0.1
    )
    (layout / "meta.json").write_text(json.dumps({"name": EMBEDDINGS, "synthetic": True}))
    uids = pl.Series("uid", np.char.mod("%032x", np.arange(args.rows)))
    pl.DataFrame({"uid": uids}).write_parquet(pool / "samples.parquet")
    rng = np.random.default_rng(1)
    centers = rng.choice(N_CENTERS, size=50, replace=False)
    members = np.flatnonzero(np.isin(center, centers))
    members = np.sort(rng.choice(members, min(5000, len(members)), replace=False))
    image = np.load(layout / "image.npy", mmap_mode="r")
    chosen = np.asarray(image[members], dtype=np.float32)
    target = chosen + rng.standard_normal(chosen.shape, np.float32) * (0.2 / np.sqrt(args.dim))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    np.save(work / "target.npy", target.astype(np.float16))
    Manifest("bench", "pool", {"type": "synthetic"}, args.rows, False, produced_by("bench")).write(
        pool
    )
    ended = _usage()
    return {"wall_s": ended[0] - started[0]}


# -- the user's command, measured -------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/PID/status`` field in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_bytes(pid: int) -> int:
    return _status_kib("VmRSS", pid) * 1024


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (sum of VmRSS)."""
    children, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        total += _rss_bytes(pid)
    return total


def run_measured(command: list[str], label: str) -> dict[str, float]:
    """Run a command as a whole process: wall and CPU seconds (with its reaped workers), its
    own peak RSS (kernel) and its process tree's peak RSS (sampled), with when the tree
    peaked and the command's own RSS then, and the tree's and the command's RSS every
    ``TIMELINE_SECONDS`` (to tell which step holds the memory). The command's anonymous
    memory (RssAnon) is sampled too: its RSS also counts the clean pages of files it maps
    (build-pool's positions file), which the kernel drops under pressure."""
    print(f"$ {' '.join(str(c) for c in command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak, anon_peak = [0], [0.0]
    at_peak: dict[str, float] = {}
    timeline: list[tuple[float, float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            tree, own = _tree_rss_bytes(process.pid), _rss_bytes(process.pid)
            anon = _status_kib("RssAnon", process.pid) / 1024  # what the kernel cannot drop
            anon_peak[0] = max(anon_peak[0], anon)
            elapsed = time.perf_counter() - started
            if tree > peak[0]:
                peak[0] = tree
                at_peak.update(
                    seconds=round(elapsed, 1),
                    command_rss_mib=round(own / 2**20),
                    command_anon_mib=round(anon),
                )
            if not timeline or elapsed - timeline[-1][0] >= TIMELINE_SECONDS:
                timeline.append(
                    (round(elapsed, 1), round(own / 2**20), round(tree / 2**20), round(anon))
                )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {
        "wall_s": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "tree_peak_rss_mib": max(peak[0] / 2**20, usage.ru_maxrss / 1024),
        "tree_peak_at": at_peak,
        "command_anon_peak_mib": anon_peak[0],  # its anonymous pages (RssAnon), sampled
        "rss_timeline_mib": timeline,  # (seconds, the command's RSS, the tree's, its RssAnon)
    }


def build_pool_command(args: argparse.Namespace, work: Path, name: str, stage: str) -> dict:
    recipe = work / f"{name}.yaml"
    recipe.write_text(f"name: {name}\nseed: 0\nstages:\n{stage}")
    out = work / "out" / name
    command = [sys.executable, "-m", "curate.cli.main", "build-pool", str(recipe)]
    command += ["--pool", str(work / "pool"), "--out", str(out), "--overwrite"]
    command += ["--executor", args.executor, "--device", args.device]
    if args.workers:
        command += ["--workers", str(args.workers)]
    measured = run_measured(command, name)
    import polars as pl

    stages = pl.read_parquet(out / "stages.parquet").to_dicts()
    measured["stage_seconds"] = stages[0]["seconds"]
    measured["report"] = json.loads(stages[0]["report"])
    measured["rows_out"] = stages[0]["rows_out"]
    return measured


def near_dedup_run(args: argparse.Namespace, work: Path) -> dict:
    stage = (
        f"  - stage: near_dedup\n    params: {{threshold: {args.threshold}, "
        f"recall_sample: {args.recall_sample}"
        + (f", nprobe: {args.nprobe}" if args.nprobe else "")
        + "}\n"
    )
    return build_pool_command(args, work, "bench_near_dedup", stage)


def image_based_run(args: argparse.Namespace, work: Path) -> dict:
    stage = (
        f'  - stage: image_based\n    params: {{target_embeddings: "{work / "target.npy"}", '
        f"n_clusters: {args.n_clusters}, train_sample: {args.train_sample}}}\n"
    )
    return build_pool_command(args, work, "bench_image_based", stage)


def semdedup_run(args: argparse.Namespace, work: Path) -> dict:
    stage = (
        f"  - stage: semdedup\n    params: {{eps: {args.eps}, order: {args.semdedup_order}, "
        f"n_clusters: {semdedup_clusters(args)}, train_sample: {args.train_sample}}}\n"
    )
    return build_pool_command(args, work, "bench_semdedup", stage)


def semdedup_clusters(args: argparse.Namespace) -> int:
    return args.semdedup_clusters or max(1, round(args.rows / 1000))  # the stage's default


# -- the baselines, in the same run ----------------------------------------------------------


def step_exact(args: argparse.Namespace, work: Path) -> dict:
    """Brute force for ``--recall-sample`` query rows over blocks of the float16 file (in this
    process, all cores): the exact search the stage's recall check runs."""
    from curate.dedup.blocks import NpyFile, Survivors
    from curate.dedup.knn import Pairs, block_pairs, configure_threads

    configure_threads()
    image = NpyFile.open(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy")
    rows = Survivors(image, np.arange(len(image)))
    queries = np.sort(  # the stage's recall sample (the recipe's seed, 0)
        np.random.default_rng(0).choice(len(image), args.recall_sample, replace=False)
    )
    started = _usage()
    query_vectors = rows.take(queries)
    parts = []
    for start in range(0, len(image), 1 << 16):
        block = rows.block(start, start + (1 << 16))
        q, j, similarity = block_pairs(query_vectors, block, args.threshold)
        parts.append((queries[q], start + j, similarity))
    exact = Pairs.from_directed(parts)
    ended = _usage()
    wall, cpu = ended[0] - started[0], ended[1] - started[1]
    scale = len(image) / len(queries)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": ended[2],
        "queries": len(queries),
        "exact_pairs": len(exact),
        "all_pairs_wall_s": wall * scale,
        "all_pairs_cpu_s": cpu * scale,
    }


def step_in_memory(args: argparse.Namespace, work: Path) -> dict:
    """image_based's in-memory path: the whole pool as one float32 matrix, the same seeded
    k-means, image_based_keep; its kept uids, to compare with build-pool's."""
    import polars as pl

    from curate.core.kept_uids import kept_uids
    from curate.core.layout import SubsetLayout
    from curate.dedup.clustering import kmeans
    from curate.dedup.image_based import image_based_keep

    started = _usage()
    vectors = np.load(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy").astype(np.float32)
    target = np.load(work / "target.npy").astype(np.float32)
    centroids = kmeans(vectors, args.n_clusters, seed=0, train_sample=args.train_sample)
    selection = image_based_keep(vectors, target, centroids=centroids)
    ended = _usage()
    uids = pl.read_parquet(work / "pool" / "samples.parquet")["uid"].to_numpy()
    kept = kept_uids(SubsetLayout(work / "out" / "bench_image_based"))
    same = bool(np.array_equal(np.sort(uids[selection.keep]), kept.to_numpy()))
    return {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "peak_rss_mib": ended[2],
        "kept": int(selection.keep.sum()),
        "same_kept_uids_as_build_pool": same,
    }


def step_semdedup_in_memory(args: argparse.Namespace, work: Path) -> dict:
    """semdedup's in-memory path: the whole pool as one float32 matrix, the same seeded
    spherical k-means, the rule over the whole ranking (curate.dedup.semdedup.semdedup_scores);
    its kept uids, to compare with build-pool's."""
    import polars as pl

    from curate.core.kept_uids import kept_uids
    from curate.core.layout import SubsetLayout
    from curate.dedup.clustering import assign, kmeans
    from curate.dedup.semdedup import semdedup_scores

    started = _usage()
    vectors = np.load(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy").astype(np.float32)
    centroids = kmeans(
        vectors, semdedup_clusters(args), seed=0, train_sample=args.train_sample, spherical=True
    )
    scores = semdedup_scores(
        vectors, assign(vectors, centroids)[0], centroids, order=args.semdedup_order
    )
    keep = scores.keep(args.eps)
    ended = _usage()
    np.save(work / SEMDEDUP_CENTROIDS, centroids)  # SemDeDup's clusters (semdedup_anchor_run)
    uids = pl.read_parquet(work / "pool" / "samples.parquet")["uid"].to_numpy()
    kept = kept_uids(SubsetLayout(work / "out" / "bench_semdedup"))
    return {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "peak_rss_mib": ended[2],
        "kept": int(keep.sum()),
        "same_kept_uids_as_build_pool": bool(np.array_equal(np.sort(uids[keep]), kept.to_numpy())),
    }


def step_semdedup_anchor_inputs(args: argparse.Namespace, work: Path) -> dict:
    """SemDeDup's inputs (see bench/semdedup_anchor.py): the embeddings as its float32
    memmap, the uids as its S32 paths memmap, and curate's k-means (the stage's seeded
    spherical k-means, saved by the in-memory step) as its pickled faiss index and centroids
    file."""
    import faiss
    import polars as pl

    started = _usage()
    inputs = work / "semdedup_anchor"
    shutil.rmtree(inputs, ignore_errors=True)
    (inputs / "clustering").mkdir(parents=True)
    image = np.load(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy", mmap_mode="r")
    embs = np.memmap(inputs / "embs.f32", np.float32, "w+", shape=image.shape)
    for start in range(0, len(image), 1 << 17):
        embs[start : start + (1 << 17)] = image[start : start + (1 << 17)]
    embs.flush()
    uids = pl.read_parquet(work / "pool" / "samples.parquet")["uid"].to_numpy().astype("S32")
    uids.tofile(inputs / "paths.S32")
    centroids = np.load(work / SEMDEDUP_CENTROIDS)
    index = faiss.IndexFlatIP(centroids.shape[1])  # faiss.Kmeans's index when spherical
    index.add(centroids)
    (inputs / "clustering" / "kmeans_index.pickle").write_bytes(pickle.dumps(index))
    np.save(inputs / "clustering" / "kmeans_centroids.npy", centroids)
    ended = _usage()
    return {"wall_s": ended[0] - started[0], "cpu_s": ended[1] - started[1]}


def semdedup_anchor_run(args: argparse.Namespace, work: Path, argv: list[str]) -> dict:
    """SemDeDup's own code as a whole process (bench/semdedup_anchor.py), on the inputs of
    :func:`step_semdedup_anchor_inputs`; its kept uids against build-pool's (the uids kept
    by one only are written next to its inputs)."""
    import polars as pl

    from curate.core.kept_uids import kept_uids
    from curate.core.layout import SubsetLayout

    prepared = run_step("semdedup_anchor_inputs", argv)
    inputs = work / "semdedup_anchor"
    out = inputs / "kept.txt"
    command = [sys.executable, str(Path(__file__).with_name("semdedup_anchor.py"))]
    command += ["--repo", str(args.semdedup_repo), "--inputs", str(inputs)]
    command += ["--rows", str(args.rows), "--dim", str(args.dim)]
    command += ["--clusters", str(semdedup_clusters(args)), "--eps", str(args.eps)]
    command += ["--which-to-keep", args.semdedup_order]
    measured = run_measured([*command, "--out", str(out)], "SemDeDup")
    anchor = pl.Series("uid", out.read_text().splitlines(), dtype=pl.String)
    built = kept_uids(SubsetLayout(work / "out" / "bench_semdedup"))
    only_anchor = anchor.filter(~anchor.is_in(built.implode())).sort()
    only_built = built.filter(~built.is_in(anchor.implode())).sort()
    measured.update(
        inputs_wall_s=prepared["wall_s"],
        kept=len(anchor),
        empty_clusters=json.loads(out.with_suffix(".json").read_text())["empty_clusters"],
        kept_only_by_semdedup=len(only_anchor),
        kept_only_by_build_pool=len(only_built),
        same_kept_uids_as_build_pool=bool(
            len(only_anchor) == len(only_built) == 0 and len(anchor) == len(built)
        ),
    )
    (inputs / "kept_only_by_semdedup.txt").write_text("\n".join(only_anchor))
    (inputs / "kept_only_by_build_pool.txt").write_text("\n".join(only_built))
    measured["differences"] = explain_differences(args, inputs, only_anchor, only_built)
    return measured


def explain_differences(
    args: argparse.Namespace, inputs: Path, only_anchor: Any, only_built: Any
) -> list[dict[str, Any]]:
    """Each row kept by SemDeDup only, paired with the row kept by build-pool only that is
    most similar to it in the same cluster (SemDeDup's assignment): both rows' distances to
    the centroid summed in float64 (curate's), and whether build-pool kept the row that this
    exact order ranks first. (The bench's uids are the row numbers in hex.)"""
    from curate.dedup.knn import centroid_distance

    nearest = np.load(inputs / "clustering" / "nearest_cent.npy")
    centroids = np.load(inputs / "clustering" / "kmeans_centroids.npy")
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    embs = np.memmap(inputs / "embs.f32", np.float32, "r", shape=(args.rows, args.dim))
    built_rows = np.array([int(uid, 16) for uid in only_built], dtype=np.int64)
    explained = []
    for anchor_row in (int(uid, 16) for uid in only_anchor):
        same = built_rows[nearest[built_rows] == nearest[anchor_row]]
        if not len(same):
            explained.append({"semdedup_keeps": anchor_row, "build_pool_keeps": None})
            continue
        built_row = int(same[np.argmax(embs[same] @ embs[anchor_row])])
        pair = np.array([anchor_row, built_row])
        distance = centroid_distance(embs[pair], unit[nearest[pair]])
        exact_first = pair[
            np.argmax(distance) if args.semdedup_order == "hard" else np.argmin(distance)
        ]
        explained.append(
            {
                "semdedup_keeps": anchor_row,
                "build_pool_keeps": built_row,
                "cluster": int(nearest[anchor_row]),
                "cosine": float(embs[anchor_row] @ embs[built_row]),
                "distance_gap_float64": float(abs(distance[0] - distance[1])),
                "build_pool_keeps_the_exact_order_s_first": bool(exact_first == built_row),
            }
        )
    return explained


def _context(work: Path, step: str, seed: int = 0):
    import polars as pl

    from curate.filters.registry import StageContext

    stage_work = work / f"work-{step}"
    stage_work.mkdir(exist_ok=True)
    rows = pl.read_parquet(work / "pool" / "samples.parquet").with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64)
    )
    return StageContext(
        rows=rows,
        pool_root=work / "pool",
        seed=seed,
        work_dir=stage_work,
        embeddings_name=EMBEDDINGS,
    )


def _exact_near_dedup(args: argparse.Namespace, work: Path, index: str) -> dict:
    """near_dedup with an exact index; its keep mask and reasons saved for the comparison."""
    import faiss  # noqa: F401  (imported before the peak counter is reset, as for both)

    from curate.filters.catalog import get_stage
    from curate.filters.registry import dense_result

    stage = get_stage("near_dedup")
    step = {"flat": "near_dedup_flat", "sharded_flat": "near_dedup_sharded"}[index]
    ctx = _context(work, step)
    sharded = {"shard_rows": args.shard_rows} if index == "sharded_flat" else {}
    params = stage.params_model(threshold=args.threshold, index=index, **sharded)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS counter
    rss_start = _status_kib("VmRSS") / 1024
    started = _usage()
    result = stage.run(ctx, params)
    ended = _usage()
    peak = _status_kib("VmHWM") / 1024
    answer = dense_result(result)  # a value per row, after the peak is read
    np.savez(work / f"{step}.npz", keep=answer.keep, reason=np.asarray(answer.reason, dtype=str))
    return {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "rss_start_mib": rss_start,
        "peak_above_start_mib": peak - rss_start,
        "report": result.report,
    }


def step_near_dedup_flat(args: argparse.Namespace, work: Path) -> dict:
    return _exact_near_dedup(args, work, "flat")


def step_near_dedup_sharded(args: argparse.Namespace, work: Path) -> dict:
    return _exact_near_dedup(args, work, "sharded_flat")


STEPS = {
    "generate": step_generate,
    "exact": step_exact,
    "in_memory": step_in_memory,
    "semdedup_in_memory": step_semdedup_in_memory,
    "semdedup_anchor_inputs": step_semdedup_anchor_inputs,
    "near_dedup_flat": step_near_dedup_flat,
    "near_dedup_sharded": step_near_dedup_sharded,
}


def run_step(step: str, argv: list[str]) -> dict:
    """Run one step in a fresh interpreter; its last stdout line is its JSON result."""
    command = [sys.executable, __file__, *argv, "--step", step]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--recall-sample", type=int, default=10_000, help="exact-search query rows")
    parser.add_argument("--nprobe", type=int, help="near_dedup's IVF nprobe (default: the stage's)")
    parser.add_argument("--n-clusters", type=int, default=2048, help="image_based k-means")
    parser.add_argument("--train-sample", type=int, default=131_072, help="k-means rows")
    parser.add_argument(
        "--semdedup-clusters", type=int, help="semdedup k-means (default: the stage's, rows/1000)"
    )
    parser.add_argument("--eps", type=float, default=0.05, help="semdedup's eps")
    parser.add_argument(
        "--semdedup-order", choices=("hard", "easy"), default="hard", help="semdedup's order"
    )
    parser.add_argument(
        "--semdedup-repo",
        type=Path,
        default=Path(os.environ.get("SEMDEDUP_REPO", DEFAULT_SEMDEDUP_REPO)),
        help="git directory of facebookresearch/SemDeDup (env SEMDEDUP_REPO); its code runs "
        "with --check-in-memory when the directory exists",
    )
    parser.add_argument("--executor", default="local")
    parser.add_argument("--workers", type=int, help="--workers of build-pool")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", type=Path, help="data and outputs (reused)")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    parser.add_argument(
        "--check-in-memory",
        action=argparse.BooleanOptionalAction,
        help="run image_based's and semdedup's in-memory paths and compare (default: up to "
        "2M rows)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--compare-sharded",
        action="store_true",
        help="compare near_dedup's flat and sharded_flat exact searches instead",
    )
    parser.add_argument("--shard-rows", type=int, default=8192, help="for --compare-sharded")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.step:
        print(json.dumps(STEPS[args.step](args, args.work_dir), default=float))
        return

    work = args.work_dir or BENCH_DATA / f"faiss-{args.rows}x{args.dim}"
    work.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:] if a != "--work-dir" and a != str(args.work_dir)]
    argv += ["--work-dir", str(work)]
    if not (work / "pool" / "manifest.json").is_file():
        generated = run_step("generate", argv)
        print(
            f"generated {args.rows:,} x {args.dim} float16 in {generated['wall_s']:.1f}s "
            f"under {work}",
            flush=True,
        )
    for stage_work in work.glob("work-*"):
        shutil.rmtree(stage_work)  # time the stages from scratch, not from their caches
    if args.compare_sharded:
        flat = run_step("near_dedup_flat", argv)
        sharded = run_step("near_dedup_sharded", argv)
        report_sharded(args, work, flat, sharded)
        return

    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "cores": len(os.sched_getaffinity(0)),
        "executor": args.executor,
        "workers": args.workers,
    }
    if "near_dedup" not in skip:
        results["near_dedup"] = near_dedup_run(args, work)
    if "exact" not in skip and args.recall_sample:
        results["exact"] = run_step("exact", argv)
    check = args.check_in_memory or (args.check_in_memory is None and args.rows <= 2_000_000)
    if "image_based" not in skip:
        results["image_based"] = image_based_run(args, work)
        if check:
            results["in_memory"] = run_step("in_memory", argv)
    if "semdedup" not in skip:
        results["semdedup"] = semdedup_run(args, work)
        if check:
            results["semdedup_in_memory"] = run_step("semdedup_in_memory", argv)
            if args.semdedup_repo.is_dir():
                results["semdedup_anchor"] = semdedup_anchor_run(args, work, argv)
    results["load_average"] = os.getloadavg()[0]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


def report(results: dict[str, Any]) -> None:
    print(
        f"\n{results['rows']:,} rows x {results['dim']}-d float16, {results['cores']} cores "
        f"(load average {results['load_average']:.1f}), --executor {results['executor']} "
        f"--workers {results['workers'] or 'default'}"
    )
    print(
        f"{'step':<42}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}{'tree peak MiB':>15}"
        f"{'anon peak MiB':>15}"
    )
    rows = [
        ("curate build-pool, near_dedup", results.get("near_dedup")),
        ("exact search, sample of query rows", results.get("exact")),
        ("curate build-pool, image_based", results.get("image_based")),
        ("image_based in memory (float32 matrix)", results.get("in_memory")),
        ("curate build-pool, semdedup", results.get("semdedup")),
        ("semdedup in memory (float32 matrix)", results.get("semdedup_in_memory")),
        ("SemDeDup's own code (centroids given)", results.get("semdedup_anchor")),
    ]
    for name, step in rows:
        if step is None:
            continue
        tree, anon = step.get("tree_peak_rss_mib"), step.get("command_anon_peak_mib")
        print(
            f"{name:<42}{step['wall_s']:>9.1f}{step['cpu_s']:>9.1f}{step['peak_rss_mib']:>14.0f}"
            f"{'-' if tree is None else f'{tree:.0f}':>15}"
            f"{'-' if anon is None else f'{anon:.0f}':>15}"
        )
    near, exact = results.get("near_dedup"), results.get("exact")
    if near:
        print(f"\nnear_dedup report: {json.dumps(near['report'])}")
        at = near["tree_peak_at"]
        print(
            f"near_dedup's process tree peaked {at['seconds']:.0f} s in, the command itself "
            f"holding {at['command_rss_mib']:,} MiB then"
        )
    if exact:
        print(
            f"exact all-pairs, extrapolated from {exact['queries']:,} queries: "
            f"{exact['all_pairs_wall_s']:,.0f} s wall, {exact['all_pairs_cpu_s']:,.0f} s CPU"
        )
    if near and exact:
        stage_pairs = near["report"].get("recall_exact_pairs")
        print(
            f"exact pairs of the sample: brute force {exact['exact_pairs']:,}, the stage's "
            f"list-bounded exact search {stage_pairs:,}"
        )
        assert stage_pairs == exact["exact_pairs"], "the stage's exact search missed pairs"
        print(
            f"build-pool near_dedup vs exact all-pairs: "
            f"{exact['all_pairs_wall_s'] / near['wall_s']:.1f}x wall, "
            f"{exact['all_pairs_cpu_s'] / near['cpu_s']:.1f}x CPU "
            "(the build-pool run includes its own recall check on the same number of rows)"
        )
    report_kept("image_based", results.get("image_based"), results.get("in_memory"))
    report_kept("semdedup", results.get("semdedup"), results.get("semdedup_in_memory"))
    anchor = results.get("semdedup_anchor")
    if anchor:
        print(
            f"semdedup kept set equal to SemDeDup's own code's: "
            f"{anchor['same_kept_uids_as_build_pool']} ({anchor['kept']:,} kept by SemDeDup; "
            f"{anchor['kept_only_by_semdedup']:,} only by SemDeDup, "
            f"{anchor['kept_only_by_build_pool']:,} only by build-pool; "
            f"{anchor['empty_clusters']} empty clusters)"
        )
        for pair in anchor["differences"]:
            print(f"  {json.dumps(pair)}")


def report_kept(stage: str, built: dict | None, in_memory: dict | None) -> None:
    """A stage's report, and whether build-pool kept the in-memory path's uids (asserted)."""
    if built:
        print(f"{stage} report: {json.dumps(built['report'])}")
    if in_memory:
        same = in_memory["same_kept_uids_as_build_pool"]
        print(
            f"{stage} kept set equal to the in-memory path's: {same} ({in_memory['kept']:,} kept)"
        )
        assert same, f"{stage}: build-pool keeps other rows"


def report_sharded(args: argparse.Namespace, work: Path, flat: dict, sharded: dict) -> None:
    with np.load(work / "near_dedup_flat.npz") as a, np.load(work / "near_dedup_sharded.npz") as b:
        assert np.array_equal(a["keep"], b["keep"]), "sharded_flat keeps other rows than flat"
        assert np.array_equal(a["reason"], b["reason"]), "sharded_flat gives other reasons"
    counts = ("pairs", "groups", "removed")
    assert [flat["report"][k] for k in counts] == [sharded["report"][k] for k in counts]
    cores = len(os.sched_getaffinity(0))
    found = ", ".join(f"{k} {flat['report'][k]:,}" for k in counts)
    print(
        f"\nnear_dedup, exact: {args.rows:,} rows x {args.dim}-d, threshold {args.threshold}, "
        f"{cores} cores (load average {os.getloadavg()[0]:.1f}); same keep mask and reasons "
        f"({found})"
    )
    print(f"{'index':<36}{'wall s':>9}{'CPU s':>9}{'RSS at start MiB':>18}{'peak above MiB':>16}")
    for name, result in (("flat", flat), (f"sharded_flat, {args.shard_rows:,} rows", sharded)):
        print(
            f"{name:<36}{result['wall_s']:>9.1f}{result['cpu_s']:>9.1f}"
            f"{result['rss_start_mib']:>18.0f}{result['peak_above_start_mib']:>16.0f}"
        )
    ratios = [sharded[k] / flat[k] for k in ("wall_s", "cpu_s", "peak_above_start_mib")]
    print("sharded / flat: {:.2f} wall, {:.2f} CPU, {:.2f} peak memory above start".format(*ratios))


if __name__ == "__main__":
    main()
