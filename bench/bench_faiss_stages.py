"""Benchmark: the `near_dedup` and `image_based` stages at 1M rows × 512-d float16 embeddings.

Data (generated, vectorised; curate.dedup.synthetic): unit vectors around 10,000 cluster
centers, 10% of rows replaced by near-duplicates of another row (cosine 1 down to ~0.91), so
near-duplicate groups straddle the 0.95 threshold. A target set for image_based: noisy copies
of rows from 50 of the centers.

Each step runs in its own process (clean peak RSS), on the real stage entry points over a
minimal pool directory (embeddings/bench/image.npy + meta.json):

  near_dedup   the stage as a recipe runs it (IVF index by the default nlist/nprobe rules,
               grouping, keep mask), with its recall check switched off.
  exact        the baseline: brute-force search (numpy matrix product over all rows) for
               --queries random query rows; its time × rows / queries extrapolates exact
               all-pairs search. Recall = share of those exact pairs (cosine ≥ threshold) that
               near_dedup found (read from the pairs near_dedup cached in its work dir).
  image_based  the stage (k-means on a seeded sample, assignment of every row, target
               clusters), then a check of its assignment against numpy argmax on 10k rows.

Prints wall and CPU seconds (the machine may be shared: CPU seconds are the fairer figure),
peak RSS per step, recall, and the speed ratio exact-all-pairs / near_dedup (target ≥ 10×,
recall ≥ 0.99).

    python bench/bench_faiss_stages.py                       # 1M rows in a temporary dir
    python bench/bench_faiss_stages.py --rows 200000 --work-dir /tmp/fb   # keep the data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EMBEDDINGS = "bench"


def _usage() -> tuple[float, float, float]:
    """(wall, CPU seconds of this process, peak RSS in MiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _context(work: Path, step: str, seed: int = 0):
    import polars as pl

    from filters.registry import StageContext

    stage_work = work / f"work-{step}"
    stage_work.mkdir(exist_ok=True)
    rows = pl.read_parquet(work / "pool" / "rows.parquet")
    return StageContext(
        rows=rows,
        pool_root=work / "pool",
        seed=seed,
        work_dir=stage_work,
        embeddings_name=EMBEDDINGS,
    )


def step_generate(args: argparse.Namespace, work: Path) -> dict:
    import polars as pl

    from curate.dedup.synthetic import planted_near_duplicates

    started = _usage()
    planted = planted_near_duplicates(
        args.rows, args.dim, n_centers=10_000, duplicate_fraction=0.1, seed=0, dtype=np.float16
    )
    layout = work / "pool" / "embeddings" / EMBEDDINGS
    layout.mkdir(parents=True, exist_ok=True)
    np.save(layout / "image.npy", planted.vectors)
    (layout / "meta.json").write_text(json.dumps({"name": EMBEDDINGS, "synthetic": True}))
    uids = pl.Series("uid", np.char.mod("%032x", np.arange(args.rows)))
    pl.DataFrame({"uid": uids, "row": np.arange(args.rows, dtype=np.int64)}).write_parquet(
        work / "pool" / "rows.parquet"
    )
    rng = np.random.default_rng(1)
    centers = rng.choice(10_000, size=50, replace=False)
    members = np.flatnonzero(np.isin(planted.center, centers))
    chosen = planted.vectors[rng.choice(members, size=min(5000, len(members)), replace=False)]
    target = chosen.astype(np.float32) + rng.standard_normal(chosen.shape, np.float32) * (
        0.2 / np.sqrt(args.dim)
    )
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    np.save(work / "target.npy", target.astype(np.float16))
    ended = _usage()
    return {"wall_s": ended[0] - started[0], "planted_duplicates": int((planted.source >= 0).sum())}


def step_near_dedup(args: argparse.Namespace, work: Path) -> dict:
    from filters.registry import get_stage

    stage = get_stage("near_dedup")
    ctx = _context(work, "near_dedup")
    params = stage.params_model(threshold=args.threshold, recall_sample=0)
    started = _usage()
    result = stage.run(ctx, params)
    ended = _usage()
    return {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "peak_rss_mib": ended[2],
        "rss_before_mib": started[2],
        "report": result.report,
    }


def step_exact(args: argparse.Namespace, work: Path) -> dict:
    from curate.dedup.knn import Pairs, exact_pairs, pair_recall

    image = work / "pool" / "embeddings" / EMBEDDINGS / "image.npy"
    vectors = np.load(image)  # in memory before timing, as the stage has it
    queries = np.sort(np.random.default_rng(3).choice(len(vectors), args.queries, replace=False))
    started = _usage()
    exact = exact_pairs(vectors, queries, args.threshold)
    ended = _usage()
    (pairs_file,) = (work / "work-near_dedup").glob("near-pairs-*.npz")
    with np.load(pairs_file) as stored:
        found = Pairs(stored["left"], stored["right"], stored["similarity"])
    wall, cpu = ended[0] - started[0], ended[1] - started[1]
    scale = len(vectors) / len(queries)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": ended[2],
        "queries": len(queries),
        "exact_pairs": len(exact),
        "recall": pair_recall(found, exact, queries, len(vectors)),
        "all_pairs_wall_s": wall * scale,
        "all_pairs_cpu_s": cpu * scale,
    }


def step_image_based(args: argparse.Namespace, work: Path) -> dict:
    from curate.dedup.clustering import assign
    from filters.registry import get_stage

    stage = get_stage("image_based")
    ctx = _context(work, "image_based")
    params = stage.params_model(
        target_embeddings=work / "target.npy",
        n_clusters=args.n_clusters,
        train_sample=args.train_sample,
    )
    started = _usage()
    result = stage.run(ctx, params)
    ended = _usage()
    (centroids_file,) = ctx.work_dir.glob("kmeans-*.npz")
    centroids = np.load(centroids_file)["centroids"]
    sample = np.random.default_rng(2).choice(args.rows, size=10_000, replace=False)
    vectors = np.load(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy", mmap_mode="r")
    sample_vectors = np.asarray(vectors[np.sort(sample)], dtype=np.float32)
    faiss_ids, _ = assign(sample_vectors, centroids)
    numpy_ids = np.argmax(sample_vectors @ centroids.T, axis=1)
    return {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "peak_rss_mib": ended[2],
        "rss_before_mib": started[2],
        "report": result.report,
        "assignment_agrees_with_numpy": float((faiss_ids == numpy_ids).mean()),
    }


STEPS = {
    "generate": step_generate,
    "near_dedup": step_near_dedup,
    "exact": step_exact,
    "image_based": step_image_based,
}


def run_step(step: str, argv: list[str]) -> dict:
    """Run one step in a fresh interpreter; its last stdout line is its JSON result."""
    command = [sys.executable, __file__, *argv, "--step", step]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--queries", type=int, default=2000, help="exact-search sample size")
    parser.add_argument("--n-clusters", type=int, default=2048, help="image_based k-means")
    parser.add_argument("--train-sample", type=int, default=131_072, help="k-means rows")
    parser.add_argument("--work-dir", type=Path, help="keep (and reuse) the data here")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.step:
        print(json.dumps(STEPS[args.step](args, args.work_dir), default=float))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-faiss-"))
    argv = [a for a in sys.argv[1:] if a != "--work-dir" and a != str(args.work_dir)]
    argv += ["--work-dir", str(work)]
    try:
        if not (work / "target.npy").is_file():
            generated = run_step("generate", argv)
            print(
                f"generated {args.rows:,} x {args.dim} float16 in {generated['wall_s']:.1f}s "
                f"({generated['planted_duplicates']:,} planted near-duplicates)",
                flush=True,
            )
        for stage_work in work.glob("work-*"):
            shutil.rmtree(stage_work)  # time the stages from scratch, not from their caches
        near = run_step("near_dedup", argv)
        exact = run_step("exact", argv)
        image = run_step("image_based", argv)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    cores = len(os.sched_getaffinity(0))
    print(
        f"\n{args.rows:,} rows x {args.dim}-d, threshold {args.threshold}, {cores} cores "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    print(f"{'step':<34}{'wall s':>10}{'CPU s':>10}{'peak RSS MiB':>14}")
    print(
        f"{'near_dedup stage':<34}{near['wall_s']:>10.1f}{near['cpu_s']:>10.1f}"
        f"{near['peak_rss_mib']:>14.0f}"
    )
    print(
        f"{'exact search, ' + str(exact['queries']) + ' queries':<34}{exact['wall_s']:>10.1f}"
        f"{exact['cpu_s']:>10.1f}{exact['peak_rss_mib']:>14.0f}"
    )
    print(
        f"{'exact all-pairs (extrapolated)':<34}{exact['all_pairs_wall_s']:>10.0f}"
        f"{exact['all_pairs_cpu_s']:>10.0f}"
    )
    print(
        f"{'image_based stage':<34}{image['wall_s']:>10.1f}{image['cpu_s']:>10.1f}"
        f"{image['peak_rss_mib']:>14.0f}"
    )
    print(f"\nnear_dedup: {json.dumps(near['report'])}")
    print(
        f"near_dedup recall vs exact: {exact['recall']} over {exact['exact_pairs']} exact pairs "
        f"touching {exact['queries']} query rows (target >= 0.99)"
    )
    print(
        f"speed vs exact all-pairs: {exact['all_pairs_wall_s'] / near['wall_s']:.1f}x wall, "
        f"{exact['all_pairs_cpu_s'] / near['cpu_s']:.1f}x CPU (target >= 10x)"
    )
    print(
        f"image_based: {json.dumps(image['report'])}; assignment = numpy argmax on "
        f"{image['assignment_agrees_with_numpy']:.4%} of 10k sampled rows"
    )


if __name__ == "__main__":
    main()
