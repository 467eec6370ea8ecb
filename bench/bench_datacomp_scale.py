"""Benchmark: the user's commands on DataComp-scale metadata pools, against DataComp's own
script run in the same bench run.

``small`` (default): a 12.8M-row pool in DataComp small's metadata schema (26 parquet files:
uid, url, text, original_width, original_height, clip_b32/l14_similarity_score, sha256;
scores rounded to 4 decimals, so thousands of samples tie at the threshold), generated once
under ``--data-dir`` (default /work/bench_data, outside the repository). Then, each as a
whole process from a cold start (imports, every file written):

1. DataComp's ``baselines.py --name clip_score --arch l14 --fraction 0.3 --num_workers 2``
   from a checkout of mlfoundations/datacomp (``--datacomp-repo`` or ``$DATACOMP_REPO``: a
   git directory; its ``baselines/`` is extracted to a temporary folder at run time, never
   copied into this project). Its fasttext, gcld3 and nltk imports, unused on the CLIP-score
   path, are stubbed (empty modules on its ``PYTHONPATH``, so its workers see them too);
2. ``curate ingest DIR --format datacomp --out POOL`` (the files used in place);
3. ``curate build-pool RECIPE --pool POOL --out OUT`` with the recipe ``clip_score`` fraction
   0.3 over ``clip_l14_similarity_score`` (DataComp's CLIP-score L/14 30 % baseline).

Each is timed (wall seconds) with the peak RSS of its process tree (the sum over the process
and its children, sampled every 50 ms from /proc) and the load average before and after (the
machine is shared). ``--repeat N`` alternates the runs N times; ``--builds K`` runs
``build-pool`` K times after each ingest (the first reads a pool written seconds before, the
next ones a settled pool, as a user who builds several recipes from one ingest does).
DataComp's and curate's ``uids.npy`` must be identical (asserted, byte for byte).

``medium``: 128M rows in 256 files (about 9.4 GB of parquet), recipe basic + clip_score +
text_based (``--stages``); times ingest and build-pool, reports seconds per million rows and
the projection to 1.28B rows. DataComp's script is not run at this scale (its threshold
step loads the whole score column in one process: fine, but the bar here is curate's
memory).

    python bench/bench_datacomp_scale.py                        # small, DataComp + curate
    python bench/bench_datacomp_scale.py --repeat 3 --builds 2
    python bench/bench_datacomp_scale.py --scale medium --skip-datacomp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clip_score import generate_pool  # noqa: E402  (the vectorised generator)

SCALES = {"small": (12_800_000, 26), "medium": (128_000_000, 256)}
DEFAULT_REPO = "/work/.mirror/mlfoundations+datacomp/repo"
CLIP_RECIPE = """\
name: clip_score_l14_30
description: DataComp's CLIP score (L/14) top 30 %
seed: 0
stages:
  - stage: clip_score
    params: {fraction: 0.3, column: clip_l14_similarity_score}
"""
MEDIUM_RECIPE = """\
name: basic_clip_text
description: DataComp's basic filter, CLIP score (L/14) top 30 %, text-based
seed: 0
stages:
  - stage: basic
    params: {language: en, min_words: 3, min_chars: 6, min_side: 200, max_aspect_ratio: 3.0}
  - stage: clip_score
    params: {fraction: 0.3, column: clip_l14_similarity_score}
  - stage: text_based
    params: {vocab: cifar10}
"""
# DataComp's baselines import these at module level; the CLIP-score path never calls them.
# Stub modules on PYTHONPATH reach its spawned workers too (sys.modules stubs would not).
STUBS = {
    "fasttext.py": "class FastText:\n    eprint = None\n",
    "gcld3.py": "",
    "nltk/__init__.py": "def download(*args, **kwargs):\n    pass\n",
    "nltk/corpus.py": "wordnet = None\n",
}


@dataclass(frozen=True)
class Run:
    label: str
    seconds: float
    peak_rss_mb: float
    load_before: float
    load_after: float
    output: str


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    total, stack, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError):
            continue
    return total


def measure(
    label: str, command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run ``command`` as its own process; wall seconds and the tree's peak RSS."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            done.wait(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    if process.returncode:
        raise RuntimeError(f"{label} failed ({process.returncode}):\n{output[-3000:]}")
    return Run(label, seconds, peak / 2**20, load_before, os.getloadavg()[0], output)


def curate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "curate.cli.main", *args]


def datacomp_checkout(repo: Path, into: Path) -> Path:
    """DataComp's baselines/ and baselines.py, extracted from the git directory ``repo``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD", "baselines", "baselines.py"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name, text in STUBS.items():
        (into / "stubs" / name).parent.mkdir(parents=True, exist_ok=True)
        (into / "stubs" / name).write_text(text)
    return into


def report(run: Run, rows: int, reference: Run | None = None) -> str:
    ratio = f"{reference.seconds / run.seconds:6.1f}x" if reference else "       "
    per_million = run.seconds / (rows / 1e6)
    return (
        f"{run.label:<34}{run.seconds:8.2f} s {ratio}{per_million:8.3f} s/M"
        f"{run.peak_rss_mb:9.0f} MB   load {run.load_before:.1f} -> {run.load_after:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--data-dir", type=Path, default=Path("/work/bench_data"))
    parser.add_argument(
        "--datacomp-repo",
        type=Path,
        default=Path(os.environ.get("DATACOMP_REPO", DEFAULT_REPO)),
        help="git directory of mlfoundations/datacomp (env DATACOMP_REPO)",
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--builds", type=int, default=1, help="build-pool runs per ingest")
    parser.add_argument("--workers", type=int, default=2, help="both tools' worker count")
    parser.add_argument("--skip-datacomp", action="store_true")
    parser.add_argument("--rows", type=int, help="override the scale's row count")
    args = parser.parse_args()

    rows, files = SCALES[args.scale]
    rows = args.rows or rows
    source = args.data_dir / (args.scale if args.rows is None else f"{args.scale}-{rows}")
    started = time.perf_counter()
    generate_pool(source, rows, files)
    size = sum(p.stat().st_size for p in source.glob("*.parquet")) / 1e9
    print(f"pool: {rows:,} rows in {files} files, {size:.2f} GB, {source} "
          f"(ready in {time.perf_counter() - started:.0f} s)")  # fmt: skip

    scratch = Path(tempfile.mkdtemp(prefix="bench_datacomp_scale_", dir=args.data_dir))
    recipe = scratch / "recipe.yaml"
    recipe.write_text(CLIP_RECIPE if args.scale == "small" else MEDIUM_RECIPE)
    checkout = None
    if not args.skip_datacomp:
        checkout = datacomp_checkout(args.datacomp_repo, scratch / "datacomp")
    results: list[tuple[Run, Run | None]] = []
    try:
        for attempt in range(args.repeat):
            datacomp = None
            if checkout is not None:
                env = {**os.environ, "PYTHONPATH": str(checkout / "stubs")}
                datacomp = measure(
                    "DataComp baselines.py (2 workers)",
                    [
                        sys.executable,
                        "baselines.py",
                        "--metadata_dir",
                        str(source),
                        "--save_path",
                        str(scratch / "datacomp.npy"),
                        "--name",
                        "clip_score",
                        "--arch",
                        "l14",
                        "--fraction",
                        "0.3",
                        "--num_workers",
                        str(args.workers),
                    ],
                    cwd=checkout,
                    env=env,
                )
                results.append((datacomp, None))
            pool, out = scratch / "pool", scratch / "candidates"
            shutil.rmtree(pool, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            ingest = measure(
                "curate ingest (in place)",
                curate_command(
                    "ingest",
                    str(source),
                    "--format",
                    "datacomp",
                    "--out",
                    str(pool),
                    "--workers",
                    str(args.workers),
                    "--quiet",
                ),  # fmt: skip
            )
            results.append((ingest, None))
            for build_run in range(args.builds):
                shutil.rmtree(out, ignore_errors=True)
                label = "curate build-pool" + (f" ({build_run + 1})" if args.builds > 1 else "")
                build = measure(
                    label,
                    curate_command(
                        "build-pool",
                        str(recipe),
                        "--pool",
                        str(pool),
                        "--out",
                        str(out),
                        "--workers",
                        str(args.workers),
                    ),  # fmt: skip
                )
                results.append((build, datacomp))
            if datacomp is not None:
                ours = (out / "uids.npy").read_bytes()
                theirs = (scratch / "datacomp.npy").read_bytes()
                assert ours == theirs, "curate's uids.npy differs from DataComp's"
                kept = len(np.load(out / "uids.npy"))
                print(f"run {attempt + 1}: uids.npy identical to DataComp's ({kept:,} uids)")
            stages = json.loads((out / "manifest.json").read_text())["extra"]["stages"]
            print(f"run {attempt + 1}: stages {stages}")
        print(f"\n{'command':<34}{'wall':>10} {'vs DC':>6}{'per M rows':>11}{'peak RSS':>12}")
        for run, reference in results:
            print(report(run, rows, reference))
        if args.scale == "medium":
            build_runs = [run for run, _ in results if run.label.startswith("curate build-pool")]
            best = min(run.seconds for run in build_runs)
            print(f"\nprojection to 1.28B rows at {best / (rows / 1e6):.3f} s per million: "
                  f"{best * 1.28e9 / rows / 60:.0f} min on this machine")  # fmt: skip
        print(f"\ncpu cores: {os.cpu_count()}; python {sys.version.split()[0]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
