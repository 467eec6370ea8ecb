"""Fault trials: SIGKILL `curate ingest`, `embed`, `build-pool` and `score` at random points,
rerun the same command, and check the output equals an uninterrupted run's.

Builds small real inputs once (a 400-row HF-parquet slice of the shipped CIFAR-10 for ingest,
an ingested 8-shard pool for embed, a 300-sample demo pool with an embedding set for
build-pool `demo_clip_top50`, a tiny-test CLIP from `curate train-filter`), runs each stage
once uninterrupted as the reference (timing it), then runs N trials round-robin over the
four stages: start the CLI, SIGKILL it after a seeded random delay drawn across the stage's
measured duration, rerun to completion, compare every output file with the reference.

Files are compared byte for byte, except JSON/JSONL files, which are compared after dropping
the fields that legitimately differ (``VOLATILE``: wall-clock times, the checkout's commit, the
resume bookkeeping) and after replacing the run's own directory with a placeholder (each run
works in its own copy of its input), and parquet tables with such columns (build-pool's
stages.parquet: ``seconds``, ``resumed``), compared by value without them.

    python bench/fault_trials.py [--trials 20] [--seed 0] [--dir PATH] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.atomic import staging_dir_for

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cli.main"]
ENV = {
    **os.environ,
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
}
# wall-clock fields (when a thing was made, how long it took) and the checkout's commit (the
# repository may get a commit while the trials run): never what an output holds
TIME_FIELDS = frozenset(
    {"created", "updated", "seconds", "elapsed_seconds", "samples_per_second", "git_commit"}
)
# a resumed run says so (build-pool's stages.parquet `resumed`, score's `resumed_from_step`)
VOLATILE = TIME_FIELDS | {"resumed", "resumed_from_step"}
RUN_PLACEHOLDER = "<RUN>"
EMBED_SET = "fault"


@dataclass(frozen=True)
class Inputs:
    """The inputs every run of a stage starts from (built once, never written to)."""

    source_parquet: Path  # ingest
    ingested_pool: Path  # embed: 8 shards of 50
    demo_pool: Path  # score: 300 samples + holdout
    embedded_pool: Path  # build-pool: demo pool + embedding set
    checkpoint: Path  # embed


@dataclass(frozen=True)
class Stage:
    """How to set up one run of a stage in ``run_dir``: the command and the output it writes."""

    name: str
    prepare: Callable[[Inputs, Path], tuple[list[str], Path]]
    publishes_atomically: bool  # OUT appears only when complete; rerunning then says it exists


def _copy_pool(pool: Path, dest: Path) -> Path:
    shutil.copytree(pool, dest, ignore=shutil.ignore_patterns("results", ".*.lock"))
    return dest


def _ingest(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    out = run_dir / "pool"
    command = ["ingest", str(inputs.source_parquet), "--out", str(out),
               "--caption-template", "a photo of a {class_name}",
               "--samples-per-shard", "50", "--quiet"]  # fmt: skip
    return command, out


def _embed(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    pool = _copy_pool(inputs.ingested_pool, run_dir / "pool")
    command = ["embed", str(pool), "--checkpoint", str(inputs.checkpoint), "--name", EMBED_SET,
               "--batch-size", "25", "--workers", "0"]  # fmt: skip
    return command, pool / "embeddings" / EMBED_SET


def _build_pool(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    out = run_dir / "candidate"
    command = ["build-pool", "demo_clip_top50", "--pool", str(inputs.embedded_pool),
               "--out", str(out)]  # fmt: skip
    return command, out


def _score(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    pool = _copy_pool(inputs.demo_pool, run_dir / "pool")
    command = ["score", str(pool), "--scale", "tiny-test", "--tasks", "pool-holdout"]
    return command, pool / "results"


STAGES = (
    Stage("ingest", _ingest, True),
    Stage("embed", _embed, True),
    Stage("build-pool", _build_pool, True),
    Stage("score", _score, False),
)


def curate(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; raise with its stderr if it fails."""
    done = subprocess.run([*CLI, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"curate {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def build_inputs(work: Path) -> Inputs:
    """Make the small real inputs of the four stages under ``work/inputs``."""
    root = work / "inputs"
    root.mkdir(parents=True)
    source = root / "cifar400.parquet"
    pl.read_parquet(REPO / "curate" / "demo_data" / "cifar10_train.parquet").head(
        400
    ).write_parquet(source)
    ingested = root / "ingested"
    curate(["ingest", str(source), "--out", str(ingested), "--caption-template",
            "a photo of a {class_name}", "--samples-per-shard", "50", "--quiet"])  # fmt: skip
    demo = root / "demo"
    curate(["demo-pool", "--out", str(demo), "--size", "300", "--holdout-size", "50"])
    checkpoint = root / "filter-model"
    curate(["train-filter", "demo:cifar10_train", "--out", str(checkpoint), "--scale",
            "tiny-test"])  # fmt: skip
    embedded = _copy_pool(demo, root / "demo-embedded")
    curate(["embed", str(embedded), "--checkpoint", str(checkpoint), "--name", EMBED_SET,
            "--workers", "0"])  # fmt: skip
    return Inputs(source, ingested, demo, embedded, checkpoint)


def _normalise(value: object, run_dir: str) -> object:
    if isinstance(value, dict):
        return {k: _normalise(v, run_dir) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, RUN_PLACEHOLDER)
    return value


def _comparable(path: Path, run_dir: Path) -> object:
    if path.suffix == ".json":
        return _normalise(json.loads(path.read_text("utf-8")), str(run_dir))
    if path.suffix == ".jsonl":
        lines = path.read_text("utf-8").splitlines()
        return [_normalise(json.loads(line), str(run_dir)) for line in lines]
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        volatile = [c for c in frame.columns if c in VOLATILE]
        if volatile:
            return frame.drop(volatile).to_dicts()
    return path.read_bytes()


def output_files(out: Path) -> list[str]:
    """Relative paths of the files of an output, lock files left out."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))  # fmt: skip


def differences(out: Path, run_dir: Path, reference: Path, reference_dir: Path) -> list[str]:
    """The files in which ``out`` differs from ``reference`` (empty: identical)."""
    files, expected = output_files(out), output_files(reference)
    found = [f"missing {name}" for name in sorted(set(expected) - set(files))]
    found += [f"extra {name}" for name in sorted(set(files) - set(expected))]
    for name in sorted(set(files) & set(expected)):
        if _comparable(out / name, run_dir) != _comparable(reference / name, reference_dir):
            found.append(name)
    return found


@dataclass(frozen=True)
class Trial:
    stage: str
    delay: float
    killed_mid_run: bool
    partial_after_kill: bool  # the kill left unfinished work on disk (not just in the import)
    output_after_kill: bool
    rerun_seconds: float
    differs: tuple[str, ...]


def run_trial(stage: Stage, inputs: Inputs, run_dir: Path, delay: float,
              reference: tuple[Path, Path]) -> Trial:  # fmt: skip
    """Start the stage, SIGKILL it after ``delay`` s, rerun it to completion, compare."""
    run_dir.mkdir(parents=True)
    args, out = stage.prepare(inputs, run_dir)
    process = subprocess.Popen([*CLI, *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    killed_mid_run = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    output_after_kill = out.exists()
    staging = out if not stage.publishes_atomically else staging_dir_for(out)
    partial_after_kill = staging.exists() and not (stage.publishes_atomically and output_after_kill)
    started = time.perf_counter()
    if not (stage.publishes_atomically and output_after_kill):
        curate(args)
    rerun_seconds = time.perf_counter() - started
    found = differences(out, run_dir, *reference)
    return Trial(stage.name, delay, killed_mid_run, partial_after_kill, output_after_kill,
                 rerun_seconds, tuple(found))  # fmt: skip


def run_reference(stage: Stage, inputs: Inputs, run_dir: Path) -> tuple[Path, float]:
    """One uninterrupted run: its output and how long it took."""
    run_dir.mkdir(parents=True)
    args, out = stage.prepare(inputs, run_dir)
    started = time.perf_counter()
    curate(args)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="curate-faults-"))
    try:
        started = time.perf_counter()
        inputs = build_inputs(work)
        print(f"inputs built in {time.perf_counter() - started:.1f}s under {work}")
        references, durations = {}, {}
        for stage in STAGES:
            run_dir = work / "reference" / stage.name
            out, durations[stage.name] = run_reference(stage, inputs, run_dir)
            references[stage.name] = (out, run_dir)
            print(f"reference {stage.name:<10} {durations[stage.name]:6.1f}s")
        rng = np.random.default_rng(args.seed)
        trials = []
        print(f"\n{'#':>3} {'stage':<10} {'kill at':>8} {'of':>6} {'mid-run':>8} "
              f"{'partial on disk':>15} {'out after kill':>14} {'rerun':>7}  outcome")  # fmt: skip
        for number in range(args.trials):
            stage = STAGES[number % len(STAGES)]
            delay = float(rng.uniform(0.05, 1.0)) * durations[stage.name]
            run_dir = work / "trials" / f"{number:02d}-{stage.name}"
            trial = run_trial(stage, inputs, run_dir, delay, references[stage.name])
            trials.append(trial)
            outcome = "identical" if not trial.differs else "DIFFERS: " + ", ".join(trial.differs)
            duration = durations[stage.name]
            print(f"{number:>3} {trial.stage:<10} {trial.delay:7.1f}s {duration:5.1f}s "
                  f"{'yes' if trial.killed_mid_run else 'no':>8} "
                  f"{'yes' if trial.partial_after_kill else 'no':>15} "
                  f"{'yes' if trial.output_after_kill else 'no':>14} "
                  f"{trial.rerun_seconds:6.1f}s  {outcome}", flush=True)  # fmt: skip
        killed = sum(t.killed_mid_run for t in trials)
        partial = sum(t.partial_after_kill for t in trials)
        failed = [t for t in trials if t.differs]
        summary = (f"\n{len(trials)} trials, {killed} killed mid-run "
                   f"({partial} with unfinished work on disk)")  # fmt: skip
        print(summary + (", all identical" if not failed else f", {len(failed)} DIFFER"))
        if failed:
            sys.exit(1)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
