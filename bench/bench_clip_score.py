"""Benchmark: DataComp's CLIP-score top-30% selection step over a small-scale metadata pool.

This times the selection *functions* after their imports (DataComp's algorithm re-implemented
as in its code, DuckDB, curate's ``select_by_clip_score``); the users' *commands* as whole
processes, DataComp's own ``baselines.py`` against ``curate ingest`` + ``curate build-pool``,
are timed by ``bench/bench_datacomp_scale.py``.

Generates a pool in DataComp's metadata schema (uid, url, text, original_width,
original_height, clip_b32_similarity_score, clip_l14_similarity_score, sha256; 12.8M rows
in several parquet files, scores rounded to 4 decimals so that thousands of samples tie at
the threshold), then times the same selection four ways, each in its own process (for a
clean peak RSS):

  datacomp  DataComp's own algorithm, as in baselines/apply_filter.py + utils.py: a
            multiprocessing pool (spawn, 2 workers) reads the score column per file with
            pandas, concatenates, threshold = -np.sort(-scores)[int(N * f)]; a second pool
            reads uid + score per file and converts kept uids with int(uid[:16], 16) per row;
            concatenate, sort, save. The baseline.
  duckdb    one plain DuckDB query (ORDER BY ... OFFSET for the threshold, hex -> UBIGINT).
  curate    curate.filters.clip_score.select_by_clip_score: polars reads only the score column,
            np.partition in place gives the threshold, then one streaming polars scan turns
            only the kept rows' uids into u8,u8 halves (curate.core.uid) and sort_pairs sorts them.
  curate_2pass  the same, with the threshold from the bounded-memory two-pass selection
            (curate.filters.clip_score_threshold: a histogram pass over the score column in blocks,
            then an exact pass inside the bin that holds the cut), which curate uses above
            curate.filters.clip_score.IN_MEMORY_MAX_ROWS rows; forced here at any size.

All four must produce identical subset arrays (asserted). Prints wall seconds (after the
process's imports), CPU seconds (user + system, DataComp's worker processes included: the
fairer figure on a busy machine), their ratios to the baseline, and peak RSS (getrusage:
the process itself and its largest child).

Then the threshold step alone, each way in its own process (``threshold``: polars reads the
column, np.partition; ``threshold_2pass``: the two passes over 1M-row blocks), to show its
own memory: its peak RSS above the RSS after imports (the kernel's peak counter, VmHWM, reset
after the imports; identical thresholds asserted).

    python bench/bench_clip_score.py                      # 12.8M rows in a temporary dir
    python bench/bench_clip_score.py --pool-dir /tmp/pool # keep (and reuse) the pool
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("datacomp", "duckdb", "curate", "curate_2pass")
THRESHOLD_METHODS = ("threshold", "threshold_2pass")
PRELOAD = {
    "datacomp": ["pandas"],
    "duckdb": ["duckdb"],
    "curate": ["curate.filters.clip_score"],
    "curate_2pass": ["curate.filters.clip_score"],
    "threshold": ["curate.filters.clip_score"],
    "threshold_2pass": ["curate.filters.clip_score"],
}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# -- pool generation (vectorised) ------------------------------------------------------------


def _hex_strings(raw: np.ndarray):
    """(n, k) random bytes -> Arrow string array of 2k lowercase hex characters each."""
    count, width = raw.shape
    chars = np.empty((count, 2 * width), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    return _fixed_width_strings(chars)


def _fixed_width_strings(chars: np.ndarray):
    import pyarrow as pa

    count, width = chars.shape
    offsets = np.arange(count + 1, dtype=np.int64) * width
    return pa.LargeStringArray.from_buffers(
        count, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars).tobytes())
    ).cast(pa.string())


def _urls(first_index: int, count: int):
    prefix = np.frombuffer(b"https://images.example.com/", dtype=np.uint8)
    suffix = np.frombuffer(b".jpg", dtype=np.uint8)
    digits = np.empty((count, 10), dtype=np.uint8)
    index = np.arange(first_index, first_index + count, dtype=np.int64)
    for position in range(9, -1, -1):
        index, digit = np.divmod(index, 10)
        digits[:, position] = ord("0") + digit
    chars = np.hstack(
        [np.broadcast_to(prefix, (count, len(prefix))), digits, np.broadcast_to(suffix, (count, 4))]
    )
    return _fixed_width_strings(chars)


def _caption_pool(rng: np.random.Generator, size: int) -> list[str]:
    words = (
        "a the photo of dog cat red blue car house tree on in with beautiful old new "
        "sunset beach mountain city street vintage wooden table woman man child stock "
        "image illustration vector design modern kitchen garden flower river"
    ).split()
    return [" ".join(rng.choice(words, rng.integers(1, 14))) for _ in range(size)]


def generate_pool(directory: Path, rows: int, files: int, seed: int = 0) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = directory / "bench_pool.json"
    wanted = {"rows": rows, "files": files, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return sorted(directory.glob("*.parquet"))
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed)
    captions = pa.array(_caption_pool(rng, 5000))
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        count = int(stop - start)
        b32 = np.round(rng.normal(0.31, 0.045, count), 4)
        l14 = np.round(0.8 * b32 + rng.normal(0.0, 0.03, count) - 0.02, 4)
        table = pa.table(
            {
                "uid": _hex_strings(rng.integers(0, 256, (count, 16), dtype=np.uint8)),
                "url": _urls(int(start), count),
                "text": captions.take(pa.array(rng.integers(0, len(captions), count))),
                "original_width": rng.integers(64, 2048, count),
                "original_height": rng.integers(64, 2048, count),
                "clip_b32_similarity_score": b32,
                "clip_l14_similarity_score": l14,
                "sha256": _hex_strings(rng.integers(0, 256, (count, 32), dtype=np.uint8)),
            }
        )
        pq.write_table(table, directory / f"{part:08d}.parquet")
    marker.write_text(json.dumps(wanted))
    return sorted(directory.glob("*.parquet"))


# -- the three methods -----------------------------------------------------------------------


def _datacomp_uids_helper(path: str, key: str, threshold: float) -> np.ndarray:
    import pandas as pd

    df = pd.read_parquet(path, columns=["uid", key])
    return np.array(
        [
            (int(uid[:16], 16), int(uid[16:32], 16))
            for uid in df[df[key] >= threshold]["uid"].values
        ],
        np.dtype("u8,u8"),
    )


def run_datacomp(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    """DataComp's get_threshold + load_uids_with_threshold + save_uids, unchanged in substance."""
    import multiprocessing as mp
    from functools import partial

    import pandas as pd

    mp.set_start_method("spawn", force=True)  # as baselines/apply_filter.py does
    names = [str(p) for p in paths]
    with mp.Pool(2) as pool:
        df = pd.concat(list(pool.imap_unordered(partial(pd.read_parquet, columns=[column]), names)))
    n = int(len(df) * fraction)
    threshold = -np.sort(-df[column].values)[n]
    del df
    worker = partial(_datacomp_uids_helper, key=column, threshold=threshold)
    with mp.Pool(2) as pool:
        uids = np.concatenate(list(pool.imap_unordered(worker, names)))
    uids.sort()
    return uids


def run_duckdb(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    import duckdb

    files = [str(p) for p in paths]
    connection = duckdb.connect()
    total = connection.execute(
        "SELECT count(*) FROM read_parquet($files)", {"files": files}
    ).fetchall()[0][0]
    offset = int(total * fraction)
    result = connection.execute(
        f"""
        WITH cutoff AS (
            SELECT {column} AS threshold FROM read_parquet($files)
            ORDER BY {column} DESC LIMIT 1 OFFSET {offset}
        )
        SELECT ('0x' || uid[1:16])::UBIGINT AS f0, ('0x' || uid[17:32])::UBIGINT AS f1
        FROM read_parquet($files)
        WHERE {column} >= (SELECT threshold FROM cutoff)
        ORDER BY f0, f1
        """,
        {"files": files},
    ).fetchnumpy()
    uids = np.empty(len(result["f0"]), dtype=np.dtype("u8,u8"))
    uids["f0"] = result["f0"]
    uids["f1"] = result["f1"]
    return uids


def run_curate(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    from curate.filters.clip_score import select_by_clip_score

    return select_by_clip_score(paths, column, fraction=fraction).subset


def run_curate_2pass(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    from curate.filters.clip_score import select_by_clip_score

    return select_by_clip_score(paths, column, fraction=fraction, in_memory_max_rows=0).subset


def run_threshold(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    import polars as pl

    from curate.filters.clip_score import datacomp_threshold

    scores = pl.scan_parquet(paths).select(column).collect()[column].to_numpy(writable=True)
    return np.array([datacomp_threshold(scores, fraction, overwrite=True)])


def run_threshold_2pass(paths: list[Path], column: str, fraction: float) -> np.ndarray:
    from curate.filters.clip_score import parquet_score_blocks
    from curate.filters.clip_score_threshold import top_fraction_threshold

    return np.array([top_fraction_threshold(parquet_score_blocks(paths, column), fraction)])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter (Linux: clear_refs 5); the RSS now, in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def run_one(method: str, pool_dir: Path, column: str, fraction: float, out: Path) -> None:
    """Child process: run one method, save its subset, print its time and peak RSS as JSON."""
    paths = sorted(pool_dir.glob("*.parquet"))
    runner = {
        "datacomp": run_datacomp,
        "duckdb": run_duckdb,
        "curate": run_curate,
        "curate_2pass": run_curate_2pass,
        "threshold": run_threshold,
        "threshold_2pass": run_threshold_2pass,
    }[method]
    for module in PRELOAD[method]:  # time the work, not the main process's imports
        importlib.import_module(module)
    rss_before = _reset_peak_rss()
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    uids = runner(paths, column, fraction)
    np.save(out, uids)
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result = {
        "seconds": seconds,
        "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before,
        "rss_mb": usage[0].ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "peak_since_mb": _status_mb("VmHWM"),
        "child_rss_mb": usage[1].ru_maxrss / 1024,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=12_800_000, help="pool size (DataComp small: 12.8M)"
    )
    parser.add_argument("--files", type=int, default=16, help="number of metadata parquet files")
    parser.add_argument("--fraction", type=float, default=0.3, help="top fraction to keep")
    parser.add_argument("--column", default="clip_l14_similarity_score", help="score column")
    parser.add_argument(
        "--pool-dir", type=Path, help="generate (or reuse) the pool here; default: a temp dir"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of " + ",".join(METHODS),
    )
    parser.add_argument(
        "--skip-threshold-only", action="store_true", help="skip the threshold-alone table"
    )
    parser.add_argument("--run-method", choices=METHODS + THRESHOLD_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_method:
        run_one(args.run_method, args.pool_dir, args.column, args.fraction, args.out)
        return

    scratch = Path(tempfile.mkdtemp(prefix="bench_clip_score_"))
    pool_dir = args.pool_dir or scratch / "pool"
    try:
        start = time.perf_counter()
        paths = generate_pool(pool_dir, args.rows, args.files)
        seconds = time.perf_counter() - start
        print(f"pool: {args.rows:,} rows, {len(paths)} files, {pool_dir} ({seconds:.1f} s)")
        results = {
            method: measure(method, pool_dir, args.column, args.fraction, scratch)
            for method in args.methods.split(",")
        }
        report(results, args.rows, args.fraction, args.column)
        if not args.skip_threshold_only:
            thresholds = {
                method: measure(method, pool_dir, args.column, args.fraction, scratch)
                for method in THRESHOLD_METHODS
            }
            report_thresholds(thresholds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(method: str, pool_dir: Path, column: str, fraction: float, scratch: Path) -> dict:
    """Run one method in a fresh process; its timing, peak RSS and subset array."""
    out = scratch / f"{method}.npy"
    command = [sys.executable, __file__, "--run-method", method, "--pool-dir", str(pool_dir)]
    command += ["--column", column, "--fraction", str(fraction), "--out", str(out)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {**result, "subset": np.load(out)}


def report(results: dict[str, dict], rows: int, fraction: float, column: str) -> None:
    reference = next(iter(results.values()))["subset"]
    for method, result in results.items():
        assert np.array_equal(result["subset"], reference), f"{method} selects different uids"
    minimum = int(rows * fraction)
    print(
        f"top {fraction:.0%} by {column}: {len(reference):,} uids, identical for all methods "
        f"({len(reference) - minimum:,} above int(N*f) = {minimum:,}: ties at the threshold)"
    )
    baseline = results.get("datacomp", next(iter(results.values())))
    print(
        f"{'method':<14}{'wall s':>8}{'vs datacomp':>13}{'CPU s':>8}{'vs datacomp':>13}"
        f"{'peak RSS MB':>13}{'largest child MB':>18}"
    )
    for method, result in results.items():
        wall_ratio = baseline["seconds"] / result["seconds"]
        cpu_ratio = baseline["cpu_seconds"] / result["cpu_seconds"]
        print(
            f"{method:<14}{result['seconds']:>8.2f}{wall_ratio:>12.1f}x"
            f"{result['cpu_seconds']:>8.2f}{cpu_ratio:>12.1f}x"
            f"{result['rss_mb']:>13.0f}{result['child_rss_mb']:>18.0f}"
        )
    print("wall: seconds from the call to the saved subset, after imports; CPU: user + system of")
    print("the process and its children (DataComp's worker processes); RSS: getrusage peaks.")


def report_thresholds(results: dict[str, dict]) -> None:
    values = {float(result["subset"][0]) for result in results.values()}
    assert len(values) == 1, f"thresholds differ: {values}"
    print(f"\nthe threshold step alone ({values.pop()!r} both ways):")
    header = f"{'method':<16}{'wall s':>8}{'CPU s':>8}"
    print(f"{header}{'RSS after imports MB':>22}{'peak above MB':>15}")
    for method, result in results.items():
        growth = result["peak_since_mb"] - result["rss_before_mb"]
        print(
            f"{method:<16}{result['seconds']:>8.2f}{result['cpu_seconds']:>8.2f}"
            f"{result['rss_before_mb']:>22.0f}{growth:>15.0f}"
        )


if __name__ == "__main__":
    main()
