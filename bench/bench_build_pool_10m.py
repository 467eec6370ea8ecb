"""Memory and time of `curate build-pool` over a 10M-row DataComp-schema metadata pool.

Target (scale-out issue): a metadata-stage recipe over 10M rows stays under 8 GB peak RSS on
one machine. Steps, each a `curate` subprocess whose own peak RSS comes from ``os.wait4``:

1. generate (not timed) DataComp metadata parquet files with bench_clip_score's vectorised
   generator (uid, url, text, original_width/height, clip_b32/l14_similarity_score, sha256),
   and beside each an ``.npz`` with ``l14_img`` / ``l14_txt`` float16 vectors (``--dim``;
   default 256, not L/14's 768, to keep generation and disk to minutes and 2 x 5 GB);
2. ``curate ingest SOURCE --out POOL --format datacomp``: a metadata-only pool whose
   embeddings/datacomp-l14/ holds the vectors as memory-mapped float16 .npy;
3. the baseline: polars reading samples.parquet whole (what build-pool held in memory
   before its stages ran shard by shard; now it reads only the stages' columns, a shard at a
   time, so it can beat this baseline);
4. ``curate build-pool`` with clip_score top 30% over ``clip_l14_similarity_score``,
   DataComp's basic thresholds and the text-based (ImageNet-21k names) filter, in the
   issue's order (score cut first) and with the cut last (every stage sees more rows and
   the decisions table is larger: the memory-heavier order).

Prints wall seconds, seconds per million rows, rows/s and peak RSS of each step, and the
build-pool / baseline ratios. Peak RSS counts file pages mapped into the process too:
ingest's peak is mostly the embedding .npy files it reads back through a memory map
(clean page cache, reclaimable), not heap.

    python bench/bench_build_pool_10m.py                       # 10M rows in a temporary dir
    python bench/bench_build_pool_10m.py --dir /tmp/bp10m --keep  # reuses data + pool there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clip_score import generate_pool  # noqa: E402

CLIP_SCORE = """\
  - stage: clip_score
    params:
      column: clip_l14_similarity_score
      fraction: 0.3
      over: pool
"""
BASIC = """\
  - stage: basic
    params:
      language: en
      min_words: 3
      min_chars: 6
      min_side: 200
      max_aspect_ratio: 3.0
"""
TEXT_BASED = """\
  - stage: text_based
    params:
      vocab: imagenet21k
      plurals: true
      language: en
"""
# the order (the score cut first), and the same stages with the cut last: every
# stage then sees more rows and the decisions table is larger (the memory-heavier order)
RECIPES = {
    "clip_score-basic-text": [CLIP_SCORE, BASIC, TEXT_BASED],
    "basic-text-clip_score": [BASIC, TEXT_BASED, CLIP_SCORE],
}


def recipe_text(name: str) -> str:
    return f"name: {name}\nseed: 0\nstages:\n" + "".join(RECIPES[name])


GB = 1e9


def generate_embeddings(parquets: list[Path], dim: int, seed: int) -> None:
    """One .npz per parquet (l14_img, l14_txt), row-aligned; reused when already there."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed + 1)
    for parquet in parquets:
        npz = parquet.with_suffix(".npz")
        marker = parquet.with_suffix(f".npz.dim{dim}")
        if npz.is_file() and marker.is_file():
            continue
        rows = pq.read_metadata(parquet).num_rows
        arrays = {
            key: rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
            for key in ("l14_img", "l14_txt")
        }
        partial = npz.with_name(npz.name + ".partial.npz")
        np.savez(partial, **arrays)
        partial.replace(npz)
        marker.touch()


def run_measured(command: list[str], label: str) -> dict[str, float]:
    """Run a command; its wall seconds and peak RSS (bytes) from the kernel's rusage."""
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,  # Linux: kilobytes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension in the .npz")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--limit-gb", type=float, default=8.0)
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_build_pool_"))
    source, pool, out = work / "source", work / "pool", work / "candidates"
    curate = [sys.executable, "-m", "curate.cli.main"]
    env_note = os.environ.get("OMP_NUM_THREADS", "unset")
    try:
        started = time.perf_counter()
        parquets = generate_pool(source, args.rows, args.files)
        generate_embeddings(parquets, args.dim, seed=0)
        print(
            f"generated {args.rows:,} rows (+ 2 x {args.dim}-d float16) in "
            f"{time.perf_counter() - started:.0f}s under {source}",
            flush=True,
        )

        steps: dict[str, dict[str, float]] = {}
        if not (pool / "manifest.json").is_file():
            steps["ingest"] = run_measured(
                [
                    *curate,
                    "ingest",
                    str(source),
                    "--out",
                    str(pool),
                    "--format",
                    "datacomp",
                    "--quiet",
                    "--overwrite",
                ],
                "ingest",
            )
        samples = pool / "samples.parquet"
        steps["baseline (polars reads samples.parquet)"] = run_measured(
            [
                sys.executable,
                "-c",
                f"import polars; print(polars.read_parquet({str(samples)!r}).shape)",
            ],
            "baseline",
        )
        for name in RECIPES:
            recipe = work / f"{name}.yaml"
            recipe.write_text(recipe_text(name))
            steps[f"build-pool {name}"] = run_measured(
                [*curate, "build-pool", str(recipe), "--pool", str(pool), "--out",
                 str(out / name), "--overwrite"],
                "build-pool",
            )  # fmt: skip

        print(f"\n{args.rows:,} rows, embeddings {args.dim}-d, OMP_NUM_THREADS={env_note}")
        print(
            f"{'step':<42}{'wall s':>9}{'cpu s':>9}{'s / M rows':>12}{'rows/s':>12}{'peak GB':>9}"
        )
        for name, m in steps.items():
            print(
                f"{name:<42}{m['seconds']:>9.1f}{m['cpu_seconds']:>9.1f}"
                f"{m['seconds'] / (args.rows / 1e6):>12.2f}{args.rows / m['seconds']:>12,.0f}"
                f"{m['peak_rss'] / GB:>9.2f}"
            )
        base = steps["baseline (polars reads samples.parquet)"]
        for name in RECIPES:
            build = steps[f"build-pool {name}"]
            verdict = "within" if build["peak_rss"] <= args.limit_gb * GB else "OVER"
            print(
                f"build-pool {name}: {build['seconds'] / base['seconds']:.1f}x the baseline's "
                f"time, {build['peak_rss'] / base['peak_rss']:.1f}x its peak RSS; peak "
                f"{build['peak_rss'] / GB:.2f} GB is {verdict} the {args.limit_gb:g} GB bound"
            )
            stages = json.loads((out / name / "manifest.json").read_text())["extra"]["stages"]
            print(
                "  "
                + ", ".join(f"{s['stage']} {s['rows_in']:,}->{s['rows_out']:,}" for s in stages)
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
