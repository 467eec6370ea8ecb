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

``--compare-sharded`` runs instead the two exact searches of ``near_dedup`` on the same data,
each in its own process: ``index: flat`` (the survivors' vectors copied to float32, one
IndexFlatIP of all of them) and ``index: sharded_flat`` (one IndexFlatIP of ``--shard-rows``
rows at a time, the rows read in blocks from the float16 file). It asserts that both keep the
same rows for the same reasons, and prints time, CPU and the stage's own peak RSS (the
kernel's peak counter reset once the imports are done) with the sharded/flat ratios. Exact
search is quadratic: keep ``--rows`` small (40k rows × 512-d take about 20 CPU-seconds flat).

    python bench/bench_faiss_stages.py                       # 1M rows in a temporary dir
    python bench/bench_faiss_stages.py --rows 200000 --work-dir /tmp/fb   # keep the data
    python bench/bench_faiss_stages.py --compare-sharded --rows 40000 --shard-rows 8192
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
from typing import Any

import numpy as np

EMBEDDINGS = "bench"


def _usage() -> tuple[float, float, float]:
    """(wall, CPU seconds of this process, peak RSS in MiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _measured_run(stage, ctx, params) -> tuple[Any, dict]:
    """Run a stage; its result and the wall, CPU and peak-RSS figures of the run."""
    started = _usage()
    result = stage.run(ctx, params)
    ended = _usage()
    return result, {
        "wall_s": ended[0] - started[0],
        "cpu_s": ended[1] - started[1],
        "peak_rss_mib": ended[2],
        "rss_before_mib": started[2],
        "report": result.report,
    }


def _context(work: Path, step: str, seed: int = 0):
    import polars as pl

    from curate.filters.registry import StageContext

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
    from curate.filters.catalog import get_stage

    stage = get_stage("near_dedup")
    ctx = _context(work, "near_dedup")
    params = stage.params_model(threshold=args.threshold, recall_sample=0)
    return _measured_run(stage, ctx, params)[1]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _exact_near_dedup(args: argparse.Namespace, work: Path, index: str) -> dict:
    """near_dedup with an exact index; its keep mask and reasons saved for the comparison."""
    import faiss  # noqa: F401  (imported before the peak counter is reset, as for both)

    from curate.filters.catalog import get_stage

    stage = get_stage("near_dedup")
    step = {"flat": "near_dedup_flat", "sharded_flat": "near_dedup_sharded"}[index]
    ctx = _context(work, step)
    sharded = {"shard_rows": args.shard_rows} if index == "sharded_flat" else {}
    params = stage.params_model(threshold=args.threshold, index=index, **sharded)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS counter
    rss_start = _status_mib("VmRSS")
    started = _usage()
    result = stage.run(ctx, params)
    ended = _usage()
    peak = _status_mib("VmHWM")
    np.savez(work / f"{step}.npz", keep=result.keep, reason=np.asarray(result.reason, dtype=str))
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
    from curate.filters.catalog import get_stage

    stage = get_stage("image_based")
    ctx = _context(work, "image_based")
    params = stage.params_model(
        target_embeddings=work / "target.npy",
        n_clusters=args.n_clusters,
        train_sample=args.train_sample,
    )
    result, measured = _measured_run(stage, ctx, params)
    (centroids_file,) = ctx.work_dir.glob("kmeans-*.npz")
    centroids = np.load(centroids_file)["centroids"]
    sample = np.random.default_rng(2).choice(args.rows, size=10_000, replace=False)
    vectors = np.load(work / "pool" / "embeddings" / EMBEDDINGS / "image.npy", mmap_mode="r")
    sample_vectors = np.asarray(vectors[np.sort(sample)], dtype=np.float32)
    faiss_ids, _ = assign(sample_vectors, centroids)
    numpy_ids = np.argmax(sample_vectors @ centroids.T, axis=1)
    return {**measured, "assignment_agrees_with_numpy": float((faiss_ids == numpy_ids).mean())}


STEPS = {
    "generate": step_generate,
    "near_dedup": step_near_dedup,
    "exact": step_exact,
    "image_based": step_image_based,
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
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--queries", type=int, default=2000, help="exact-search sample size")
    parser.add_argument("--n-clusters", type=int, default=2048, help="image_based k-means")
    parser.add_argument("--train-sample", type=int, default=131_072, help="k-means rows")
    parser.add_argument("--work-dir", type=Path, help="keep (and reuse) the data here")
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
        if args.compare_sharded:
            flat = run_step("near_dedup_flat", argv)
            sharded = run_step("near_dedup_sharded", argv)
            report_sharded(args, work, flat, sharded)
            return
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
