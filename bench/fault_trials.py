"""Fault trials: SIGKILL `curate ingest`, `embed`, `build-pool` and `score` mid-work, rerun
the same command, and check that the output equals an uninterrupted run's.

Inputs, built once under ``--dir``, follow the data flow: 6,000 rows of the shipped CIFAR-10
in three parquet files (ingest, 30 shards of 200) -> that pool (embed, with a tiny CLIP from
`curate train-filter`) -> that embedded pool (build-pool: basic, exact_dedup, clip_score, then
``--reshard`` into shards of 100); a 300-sample demo pool (score: 24 steps of 64, a resumable
state every 3 steps, then the pool-holdout task).

Each stage runs once uninterrupted as the reference, while the script polls what it leaves on
disk to time each finished *part*:

    ingest      a finished shard tar in the staging pool (``.pool.partial/shards/*.tar``)
    embed       a shard listed in the staging set's ``progress.json``
    build-pool  a finished recipe stage (``_resume/*/stats.json``), then a resharded tar
    build-meta  build-pool over a DataComp metadata pool used in place (60,000 rows in 6
                files, ``--shard-rows 4000``: 18 shards): every map and reduce step's output,
                a stage's decisions for one shard (``_resume/*/parts/*.parquet``),
                exact_dedup's partitions (``removed-*.parquet``), the sorted kept uids
    build-embed build-pool of the four embedding stages (decontaminate, near_dedup with
                keep: highest_clip_score, semdedup, image_based; tasks of 8,192 rows) over a
                pool of 60,000 planted near-duplicate float16 vectors (``--shard-rows 4000``):
                every finished file of their steps (searches, k-means, assignments,
                semdedup's shuffle, near_dedup's pairs), the decisions per shard, the sorted
                kept uids
    score       a saved training state (``train_state.pt``'s step), the final checkpoint,
                ``results.jsonl``

Then N trials, round-robin over the six stages. A trial draws (seeded) how many parts k
(1 .. parts-1) must be done, starts the CLI, waits until k parts are on disk, sleeps a random
fraction of the reference's time for part k+1, SIGKILLs the process group, lists the parts
present, reruns the command to completion and compares every output file with the reference.

Each kill is classified from what was on disk: *before work* (no part done), *mid-work* (some
but not all parts), *after last part* (all parts done, output not yet complete), *after
finish* (the process had exited or its output was complete). The rerun *resumed* when it
reused the killed run's work: output files carried over from it (same inode and mtime: shard
tars), or the stage says so (embed's "shards were done by an earlier run", build-pool's
stages.parquet ``resumed``, score's ``resumed_from_step``).

Files are compared byte for byte, except JSON/JSONL files, which are compared after dropping
the fields that legitimately differ (``VOLATILE``: wall-clock times, the checkout's commit, the
resume bookkeeping) and after replacing the run's own directory with a placeholder (each run
works in its own copy of its input), and parquet tables with such columns (build-pool's
stages.parquet: ``seconds``, ``resumed``), compared by value without them. A difference names
the first differing file and where in it (JSON field, table column and row, array row, tar
member, byte offset).

Every process runs with ``OMP_NUM_THREADS=1`` (references and trials alike): on a shared
machine torch's thread pool otherwise slows down several-fold and unpredictably.

    python bench/fault_trials.py [--trials 20] [--seed 0] [--report PATH] [--dir PATH] [--keep]

Prints one line per trial and a summary table per stage; ``--report`` writes it all as JSON.
Exits 1 when a rerun differs from the reference or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from curate.core.atomic import staging_dir_for, write_json
from curate.models.loading import CHECKPOINT_CONFIG

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "curate.cli.main"]
ENV = {
    **os.environ,
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
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
SCALE = "fault-trials"
POLL_SECONDS = 0.01
CATEGORIES = ("before work", "mid-work", "after last part", "after finish")
RECIPE = {
    "name": "fault_trials",
    "description": "basic rules, exact duplicates, then the top half by CLIP score",
    "seed": 0,
    "stages": [
        {"stage": "basic", "params": {"min_side": 24}},
        {"stage": "exact_dedup"},
        {"stage": "clip_score", "params": {"fraction": 0.5, "over": "pool"}},
    ],
}


META_RECIPE = {
    "name": "fault_trials_meta",
    "description": "DataComp's CLIP score top 30 %, basic, exact duplicates, text-based",
    "seed": 0,
    "stages": [
        {"stage": "clip_score", "params": {"fraction": 0.3, "column": "clip_l14_similarity_score"}},
        {"stage": "basic", "params": {"min_side": 100}},
        {"stage": "exact_dedup"},
        {"stage": "text_based", "params": {"vocab": "cifar10"}},
    ],
}
META_FILES, META_ROWS, META_SHARD_ROWS = 6, 60_000, 4_000
META_SHARDS = META_FILES * math.ceil(META_ROWS / META_FILES / META_SHARD_ROWS)
EMBED_ROWS, EMBED_DIM, EMBED_SHARD_ROWS, EMBED_TASK_ROWS = 60_000, 64, 4_000, 8_192


def _embed_recipe(eval_set: Path, target: Path) -> dict:
    """The four embedding stages, tasks of ``EMBED_TASK_ROWS`` rows."""
    stages = [
        ("decontaminate", {"eval_embeddings": [str(eval_set)], "threshold": 0.97}),
        ("near_dedup", {"threshold": 0.95, "index": "ivf", "nprobe": 4,
                        "keep": "highest_clip_score", "recall_sample": 300}),
        ("semdedup", {"eps": 0.15, "n_clusters": 40, "train_sample": 4000}),
        ("image_based", {"target_embeddings": str(target), "n_clusters": 60,
                         "train_sample": 4000}),
    ]  # fmt: skip
    return {
        "name": "fault_trials_embeddings",
        "description": "the four embedding stages, tasks of 8,192 rows",
        "seed": 1,
        "stages": [
            {"stage": stage, "params": {**params, "task_rows": EMBED_TASK_ROWS}}
            for stage, params in stages
        ],
    }


@dataclass(frozen=True)
class Inputs:
    """What every run of a stage starts from (never written to by a trial)."""

    source: Path  # ingest: a folder of three parquet files
    ingested_pool: Path  # embed: made by the ingest reference run
    checkpoint: Path  # embed: the filter model
    embedded_pool: Path  # build-pool: made by the embed reference run
    recipe: Path  # build-pool
    demo_pool: Path  # score: 300 samples + a holdout
    scales: Path  # score
    meta_pool: Path  # build-meta: DataComp metadata used in place
    meta_recipe: Path  # build-meta
    embedding_pool: Path  # build-embed: samples.parquet and a float16 embedding set
    embed_recipe: Path  # build-embed


@dataclass(frozen=True)
class Stage:
    """One stage: its command in ``run_dir``, the parts of its work it leaves on disk."""

    name: str
    prepare: Callable[[Inputs, Path], tuple[list[str], Path]]  # (CLI args, OUT)
    parts: Callable[[Path], list[str]]  # the parts of OUT's work finished so far
    finished: Callable[[Path], bool]  # OUT is complete
    says_resumed: Callable[[Path, str], tuple[int, str]]  # (parts reused, how) from OUT, stdout
    publishes_atomically: bool  # OUT appears only when complete; rerunning then says it exists


def _copy_pool(pool: Path, dest: Path) -> Path:
    shutil.copytree(pool, dest, ignore=shutil.ignore_patterns("results", ".*.lock"))
    return dest


def _tars(*folders: Path) -> list[str]:
    """Finished shard names (``*.tar``, not ``*.tar.partial``) in any of ``folders``."""
    names: set[str] = set()
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            names.update(p.name for p in folder.iterdir() if p.name.endswith(".tar"))
    return [f"shards/{name}" for name in sorted(names)]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None


# -- ingest ----------------------------------------------------------------------------------


def _ingest(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    out = run_dir / "pool"
    command = ["ingest", str(inputs.source), "--out", str(out),
               "--caption-template", "a photo of a {class_name}",
               "--samples-per-shard", "200", "--quiet"]  # fmt: skip
    return command, out


def _ingest_parts(out: Path) -> list[str]:
    return _tars(staging_dir_for(out) / "shards", out / "shards")


def _nothing_said(out: Path, stdout: str) -> tuple[int, str]:
    return 0, ""


# -- embed -----------------------------------------------------------------------------------


def _embed(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    pool = _copy_pool(inputs.ingested_pool, run_dir / "pool")
    command = ["embed", str(pool), "--checkpoint", str(inputs.checkpoint), "--name", EMBED_SET,
               "--batch-size", "100", "--workers", "0"]  # fmt: skip
    return command, pool / "embeddings" / EMBED_SET


def _embed_parts(out: Path) -> list[str]:
    staging = staging_dir_for(out)
    if out.exists() or (staging / "meta.json").exists():  # every shard done
        return _tars(out.parent.parent / "shards")
    progress = _read_json(staging / "progress.json")
    return sorted(progress["finished"]) if progress else []


def _embed_says(out: Path, stdout: str) -> tuple[int, str]:
    found = re.search(r"(\d+) of (\d+) shards were done by an earlier run", stdout)
    if not found:
        return 0, ""
    return int(found[1]), f"{found[1]} of {found[2]} shards done by the killed run"


# -- build-pool ------------------------------------------------------------------------------


def _build_pool(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    out = run_dir / "candidate"
    command = ["build-pool", str(inputs.recipe), "--pool", str(inputs.embedded_pool),
               "--out", str(out), "--reshard", "--samples-per-shard", "100"]  # fmt: skip
    return command, out


def _build_pool_parts(out: Path) -> list[str]:
    staging = staging_dir_for(out)
    stages_table = (out if out.exists() else staging) / "stages.parquet"
    try:  # written once every stage is done
        stat = stages_table.stat()
        stages = _stages_in(str(stages_table), stat.st_ino, stat.st_mtime_ns)
    except FileNotFoundError:
        finished = (staging / "_resume").glob("*/stats.json")
        # a stage's folder is <index:03d>-<stage>-<key[:16]>
        stages = sorted(f"stage {int(p.parent.name[:3])}: {p.parent.name[4:-17]}" for p in finished)
    shards = _tars(staging / "._reshard.partial" / "shards", staging / "_reshard" / "shards",
                   staging / "shards", out / "shards")  # fmt: skip
    return stages + shards


@functools.lru_cache(maxsize=64)
def _stages_in(path: str, inode: int, mtime_ns: int) -> list[str]:
    """The stages a stages.parquet lists (read once per file version: polled often)."""
    table = pl.read_parquet(path, columns=["stage_index", "stage"])
    return [f"stage {index}: {name}" for index, name in table.iter_rows()]


def _build_pool_says(out: Path, stdout: str) -> tuple[int, str]:
    table = pl.read_parquet(out / "stages.parquet", columns=["resumed"])
    resumed = int(table["resumed"].sum())
    return resumed, f"{resumed} of {table.height} stages resumed" if resumed else ""


# -- build-pool over metadata used in place: map -> reduce -----------------------------------


def _build_in_shards(
    recipe: Path, pool: Path, shard_rows: int, run_dir: Path
) -> tuple[list[str], Path]:
    out = run_dir / "candidate"
    command = ["build-pool", str(recipe), "--pool", str(pool), "--out", str(out),
               "--shard-rows", str(shard_rows), "--workers", "2"]  # fmt: skip
    return command, out


def _build_meta(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    return _build_in_shards(inputs.meta_recipe, inputs.meta_pool, META_SHARD_ROWS, run_dir)


def _build_meta_parts(out: Path) -> list[str]:
    """Each stage's decisions per shard, exact_dedup's reduced partitions, the sorted kept
    uids; all of them once the output is complete (its work folders are gone by then)."""
    stages = len(META_RECIPE["stages"])
    if out.exists():
        done = [f"stage {k}: shard {s}" for k in range(stages) for s in range(META_SHARDS)]
        return done + ["exact_dedup: partition 0", "kept uids: bucket 0"]
    staging = staging_dir_for(out)
    parts = []
    for folder in sorted((staging / "_resume").glob("*")):
        index = int(folder.name[:3])
        if (folder / "stats.json").is_file():
            parts += [f"stage {index}: shard {s}" for s in range(META_SHARDS)]
        else:
            parts += [f"stage {index}: shard {int(p.stem)}" for p in folder.glob("parts/*.parquet")]
        parts += [f"exact_dedup: partition {int(p.stem[8:])}"
                  for p in folder.glob("work/partitions/removed-*.parquet")]  # fmt: skip
    parts += [f"kept uids: bucket {int(p.stem[7:])}" for p in staging.glob("_kept/sorted-*.npy")]
    return sorted(set(parts))


# -- build-pool's embedding stages: their tasks' steps ---------------------------------------


def _build_embed(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    return _build_in_shards(inputs.embed_recipe, inputs.embedding_pool, EMBED_SHARD_ROWS, run_dir)


_EMBED_PARTS_SEEN: set[str] = set()


def _build_embed_parts(out: Path) -> list[str]:
    """Every finished file the build leaves in its resume folders: each step's task outputs
    (the searches, k-means, the assignments, semdedup's shuffle, near_dedup's pairs), each
    stage's decisions per shard and stats, the sorted kept uids; a stage's key in a name is
    written K. Those folders are gone once OUT is complete: then every part seen so far."""
    if out.exists():
        return sorted(_EMBED_PARTS_SEEN)
    staging = staging_dir_for(out)
    names = {  # os.walk skips folders removed while it walks (a finished step's, a stage's)
        re.sub(r"[0-9a-f]{16,}", "K", os.path.relpath(os.path.join(folder, name), staging))
        for top in ("_resume", "_kept")
        for folder, _, files in os.walk(staging / top)
        for name in files
        if not name.startswith(".")
    }
    _EMBED_PARTS_SEEN.update(names)
    return sorted(names)


# -- score -----------------------------------------------------------------------------------


def _score(inputs: Inputs, run_dir: Path) -> tuple[list[str], Path]:
    pool = _copy_pool(inputs.demo_pool, run_dir / "pool")
    command = ["score", str(pool), "--scale", SCALE, "--scales-file", str(inputs.scales),
               "--tasks", "pool-holdout"]  # fmt: skip
    return command, pool / "results"


def _score_run_dir(out: Path) -> Path | None:
    with contextlib.suppress(FileNotFoundError):
        for run_dir in out.iterdir():
            if run_dir.is_dir():
                return run_dir
    return None


@functools.lru_cache(maxsize=64)
def _step_in(path: str, inode: int, mtime_ns: int) -> int:
    """The step a train_state.pt holds (read once per file version: polled often)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def _saved_step(state: Path) -> int:
    """The step of the resumable training state on disk (0: none)."""
    try:
        stat = state.stat()
        return _step_in(str(state), stat.st_ino, stat.st_mtime_ns)
    except FileNotFoundError:  # not saved yet, or removed once the final checkpoint is written
        return 0


def _score_parts(out: Path) -> list[str]:
    run_dir = _score_run_dir(out)
    run = _read_json(run_dir / "run.json") if run_dir else None
    if run is None:
        return []
    config = run["config"]
    steps = math.ceil(config["samples_seen"] / config["batch_size"])
    every = config["checkpoint_every"]
    states = [(step, f"state step {step}") for step in range(every, steps, every)]
    if (run_dir / "checkpoint" / CHECKPOINT_CONFIG).is_file():  # written last
        done = [name for _, name in states] + ["checkpoint"]
        return done + (["results.jsonl"] if (run_dir / "results.jsonl").is_file() else [])
    saved = _saved_step(run_dir / "train_state.pt")
    return [name for step, name in states if step <= saved]


def _score_finished(out: Path) -> bool:
    run_dir = _score_run_dir(out)
    run = _read_json(run_dir / "run.json") if run_dir else None
    return run is not None and run.get("status") == "evaluated"


def _score_says(out: Path, stdout: str) -> tuple[int, str]:
    run_dir = _score_run_dir(out)
    run = _read_json(run_dir / "run.json") if run_dir else None
    step = int(((run or {}).get("train") or {}).get("resumed_from_step") or 0)
    return step, f"training resumed from step {step}" if step else ""


STAGES = (
    Stage("ingest", _ingest, _ingest_parts, Path.exists, _nothing_said, True),
    Stage("embed", _embed, _embed_parts, Path.exists, _embed_says, True),
    Stage("build-pool", _build_pool, _build_pool_parts, Path.exists, _build_pool_says, True),
    Stage("build-meta", _build_meta, _build_meta_parts, Path.exists, _build_pool_says, True),
    Stage("build-embed", _build_embed, _build_embed_parts, Path.exists, _build_pool_says, True),
    Stage("score", _score, _score_parts, _score_finished, _score_says, False),
)


# -- running ---------------------------------------------------------------------------------


def curate(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; raise with its stderr if it fails."""
    done = subprocess.run([*CLI, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"curate {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start the CLI in its own process group, its output to ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen([*CLI, *args], cwd=REPO, env=ENV, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def watch(process: subprocess.Popen[bytes], stage: Stage, out: Path, started: float,
          stop_at: int | None = None, timeout: float = 600) -> list[float]:  # fmt: skip
    """Poll OUT's parts until the process ends (or ``stop_at`` parts are done): the seconds
    since ``started`` at which the 1st, 2nd, ... part was first seen."""
    seen: list[float] = []
    while process.poll() is None:
        count = len(stage.parts(out))
        now = time.perf_counter() - started
        seen.extend([now] * (count - len(seen)))
        if stop_at is not None and count >= stop_at:
            break
        if now > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"{stage.name}: no progress to {stop_at} parts in {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    return seen


@dataclass(frozen=True)
class Reference:
    out: Path
    run_dir: Path
    seconds: float
    parts: list[str]
    part_seconds: list[float]  # since the start, when each part was done


def run_reference(stage: Stage, inputs: Inputs, run_dir: Path) -> Reference:
    """One uninterrupted run, timing each part of its work."""
    run_dir.mkdir(parents=True)
    args, out = stage.prepare(inputs, run_dir)
    started = time.perf_counter()
    process = start(args, run_dir / "run.log")
    seen = watch(process, stage, out, started)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        log = (run_dir / "run.log").read_text("utf-8", errors="replace")
        raise RuntimeError(f"curate {' '.join(args)} failed ({process.returncode}):\n{log}")
    parts = stage.parts(out)
    seen += [seconds] * (len(parts) - len(seen))  # done between the last poll and the exit
    return Reference(out, run_dir, seconds, parts, seen)


# -- comparing -------------------------------------------------------------------------------


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


def _value_difference(ours: object, expected: object, where: str) -> str | None:
    """Where two JSON values first differ (a field path), or None."""
    if isinstance(ours, dict) and isinstance(expected, dict):
        for key in sorted(set(ours) | set(expected)):
            if key not in ours or key not in expected:
                return f"{where}.{key}: {'missing' if key not in ours else 'extra'}"
            found = _value_difference(ours[key], expected[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(ours, list) and isinstance(expected, list):
        if len(ours) != len(expected):
            return f"{where}: {len(ours)} items, reference {len(expected)}"
        for index, (a, b) in enumerate(zip(ours, expected, strict=True)):
            found = _value_difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if ours == expected else f"{where}: {ours!r:.80} != reference {expected!r:.80}"


def _table_difference(ours: Path, expected: Path) -> str:
    a, b = pl.read_parquet(ours), pl.read_parquet(expected)
    a, b = (f.drop([c for c in f.columns if c in VOLATILE]) for f in (a, b))
    if a.columns != b.columns or a.height != b.height:
        return f"columns {a.columns} x {a.height} rows, reference {b.columns} x {b.height}"
    for column in a.columns:
        unequal = ~a[column].eq_missing(b[column])
        if unequal.any():
            row = int(unequal.arg_max())
            return f"column {column} row {row}: {a[column][row]!r} != {b[column][row]!r}"
    return "same values, different file bytes"


def _tar_difference(ours: Path, expected: Path) -> str:
    with tarfile.open(ours) as a, tarfile.open(expected) as b:
        members_a, members_b = a.getmembers(), b.getmembers()
        for x, y in zip(members_a, members_b, strict=False):
            if (x.name, x.size, x.mtime) != (y.name, y.size, y.mtime):
                return f"member {x.name} ({x.size} B), reference {y.name} ({y.size} B)"
            if a.extractfile(x).read() != b.extractfile(y).read():  # type: ignore[union-attr]
                return f"member {x.name}: content"
        if len(members_a) != len(members_b):
            return f"{len(members_a)} members, reference {len(members_b)}"
    return "same members, different file bytes"


def _where_different(ours: Path, run_dir: Path, expected: Path, expected_dir: Path) -> str | None:
    """Where file ``ours`` differs from ``expected`` (None: equal as compared)."""
    a, b = _comparable(ours, run_dir), _comparable(expected, expected_dir)
    if a == b:
        return None
    if ours.suffix in (".json", ".jsonl") or isinstance(a, list):
        return _value_difference(a, b, "")
    if ours.suffix == ".parquet":
        return _table_difference(ours, expected)
    if ours.suffix == ".tar":
        return _tar_difference(ours, expected)
    if ours.suffix == ".npy":
        x, y = np.load(ours), np.load(expected)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{x.dtype} {x.shape}, reference {y.dtype} {y.shape}"
        rows = np.flatnonzero((x != y).reshape(len(x), -1).any(axis=1))
        return f"row {rows[0]} ({rows.size} rows differ)" if rows.size else "header bytes"
    assert isinstance(a, bytes) and isinstance(b, bytes)
    offset = next((i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), None)
    return f"byte {offset}" if offset is not None else f"{len(a)} bytes, reference {len(b)}"


def output_files(out: Path) -> list[str]:
    """Relative paths of the files of an output, lock files left out."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))  # fmt: skip


def differences(out: Path, run_dir: Path, reference: Reference) -> list[str]:
    """Each file in which ``out`` differs from the reference, and where (empty: identical)."""
    files, expected = output_files(out), output_files(reference.out)
    found = [f"{name}: missing" for name in sorted(set(expected) - set(files))]
    found += [f"{name}: extra" for name in sorted(set(files) - set(expected))]
    for name in sorted(set(files) & set(expected)):
        where = _where_different(out / name, run_dir, reference.out / name, reference.run_dir)
        if where is not None:
            found.append(f"{name}: {where}")
    return found


def _file_ids(*roots: Path) -> set[tuple[int, int]]:
    """(inode, mtime) of every file under ``roots`` but locks (score's sits in its results
    folder and outlives every run): the same pair later means the very same file."""
    ids = set()
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path.is_file() and not path.name.endswith(".lock"):
                    ids.add((stat.st_ino, stat.st_mtime_ns))
    return ids


# -- trials ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    number: int
    stage: str
    kill_after_parts: int  # the drawn k: kill once k parts are done ...
    extra_delay: float  # ... plus this many seconds
    killed_at: float  # seconds since the start
    parts_total: int
    parts_at_kill: list[str]
    category: str  # one of CATEGORIES
    rerun: bool  # False when the output was already complete (rerunning would refuse)
    rerun_seconds: float
    resumed: bool | None  # None: no rerun
    carried_over_files: int  # output files that are the killed run's very files
    resumed_detail: str
    identical: bool
    differences: list[str]


def run_trial(number: int, stage: Stage, inputs: Inputs, run_dir: Path, reference: Reference,
              kill_after_parts: int, fraction: float) -> Trial:  # fmt: skip
    """Start the stage, SIGKILL it once ``kill_after_parts`` parts are done plus ``fraction``
    of the reference's time for the next part; rerun it to completion; compare."""
    run_dir.mkdir(parents=True)
    args, out = stage.prepare(inputs, run_dir)
    times = reference.part_seconds
    extra_delay = fraction * (times[kill_after_parts] - times[kill_after_parts - 1])
    started = time.perf_counter()
    process = start(args, run_dir / "killed-run.log")
    watch(process, stage, out, started, stop_at=kill_after_parts,
          timeout=10 * reference.seconds + 60)  # fmt: skip
    if process.poll() is None:
        time.sleep(extra_delay)
    exited_before_kill = process.poll() is not None
    if not exited_before_kill:
        with contextlib.suppress(ProcessLookupError):  # it may exit this very moment
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = time.perf_counter() - started
    if exited_before_kill and process.returncode != 0:
        raise RuntimeError(f"trial {number}: {' '.join(args)} failed ({process.returncode})")
    parts, complete = stage.parts(out), stage.finished(out)
    if exited_before_kill or complete:
        category = "after finish"
    elif not parts:
        category = "before work"
    else:
        category = "mid-work" if len(parts) < len(reference.parts) else "after last part"
    on_disk = _file_ids(staging_dir_for(out), out)
    rerun = not (stage.publishes_atomically and complete)
    started = time.perf_counter()
    stdout, failure = "", []
    if rerun:
        try:
            stdout = curate(args).stdout
        except RuntimeError as error:
            failure = [f"rerun failed: {str(error).strip().splitlines()[-1]}"]
    rerun_seconds = time.perf_counter() - started
    found = failure or differences(out, run_dir, reference)
    carried = len(on_disk & _file_ids(out)) if rerun and not failure else 0
    said, how = stage.says_resumed(out, stdout) if rerun and not failure else (0, "")
    detail = "; ".join(filter(None, [how, f"{carried} files carried over" if carried else ""]))
    return Trial(number, stage.name, kill_after_parts, round(extra_delay, 3), round(killed_at, 2),
                 len(reference.parts), parts, category, rerun, round(rerun_seconds, 2),
                 bool(carried or said) if rerun else None, carried, detail, not found,
                 found)  # fmt: skip


def build_inputs(work: Path, names: set[str] | None = None) -> Inputs:
    """The inputs of the stages under ``work/inputs`` (only those the ``names`` stages need);
    the ingest and embed reference runs make the pools embed and build-pool start from."""
    names = names or {stage.name for stage in STAGES}
    root = work / "inputs"
    source = root / "source"
    source.mkdir(parents=True)
    checkpoint = root / "filter-model"
    recipe = root / "recipe.yaml"
    demo = root / "demo"
    scales = root / "scales.yaml"
    if names & {"ingest", "embed", "build-pool"}:
        cifar = pl.read_parquet(REPO / "curate" / "demo" / "data" / "cifar10_train.parquet")
        for part in range(3):
            cifar.slice(part * 2000, 2000).write_parquet(source / f"part-{part}.parquet")
        curate(["train-filter", "demo:cifar10_train", "--out", str(checkpoint), "--scale",
                "tiny-test"])  # fmt: skip
        recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False), "utf-8")
    if "score" in names:
        curate(["demo-pool", "--out", str(demo), "--size", "300", "--holdout-size", "50"])
        shipped_scales = REPO / "curate" / "training" / "scales.yaml"
        tiny_test = yaml.safe_load(shipped_scales.read_text("utf-8"))["tiny-test"]
        scale = {**tiny_test, "samples_seen": 24 * 64, "batch_size": 64, "checkpoint_every": 3}
        scales.write_text(yaml.safe_dump({SCALE: scale}), "utf-8")
    meta_pool = root / "meta-pool"
    meta_recipe = root / "meta-recipe.yaml"
    if "build-meta" in names:
        meta_source = root / "datacomp"
        sys.path.insert(0, str(REPO / "bench"))
        from bench_clip_score import generate_pool

        generate_pool(meta_source, META_ROWS, META_FILES, seed=3)
        curate(["ingest", str(meta_source), "--format", "datacomp", "--out", str(meta_pool)])
        meta_recipe.write_text(yaml.safe_dump(META_RECIPE, sort_keys=False), "utf-8")
    embedding_pool = root / "embedding-pool"
    embed_recipe = root / "embed-recipe.yaml"
    if "build-embed" in names:
        _write_embedding_pool(embedding_pool, embed_recipe)
    references = work / "reference"
    return Inputs(source, references / "ingest" / "pool", checkpoint,
                  references / "embed" / "pool", recipe, demo, scales, meta_pool,
                  meta_recipe, embedding_pool, embed_recipe)  # fmt: skip


def _write_embedding_pool(pool: Path, recipe: Path) -> None:
    """A pool of samples without images (uids, captions, a float16 embedding set of planted
    near-duplicates, CLIP scores), an eval set and a target set drawn from its rows, and the
    recipe of the four embedding stages over them."""
    from curate.core.manifest import Manifest, produced_by
    from curate.dedup.synthetic import planted_near_duplicates

    vectors = planted_near_duplicates(
        EMBED_ROWS, EMBED_DIM, n_centers=40, duplicate_fraction=0.15, seed=2
    ).vectors.astype(np.float16)
    uids = np.char.mod("%032x", np.arange(EMBED_ROWS))
    embeddings = pool / "embeddings" / EMBED_SET
    embeddings.mkdir(parents=True)
    pl.DataFrame(
        {"uid": uids, "text": np.char.mod("photo %d", np.arange(EMBED_ROWS))}
    ).write_parquet(pool / "samples.parquet")
    np.save(embeddings / "image.npy", vectors)
    (embeddings / "meta.json").write_text(json.dumps({"name": EMBED_SET}))
    scores = np.random.default_rng(0).random(EMBED_ROWS).astype(np.float32)
    pl.DataFrame({"uid": uids, "clip_score": scores}).write_parquet(
        embeddings / "clip_score.parquet"
    )
    Manifest("fault", "pool", {"type": "synthetic"}, EMBED_ROWS, False, produced_by("bench")).write(
        pool
    )
    rng = np.random.default_rng(7)
    eval_set, target = pool.parent / "eval.npy", pool.parent / "target.npy"
    np.save(eval_set, vectors[rng.choice(EMBED_ROWS, 30, replace=False)])
    np.save(target, vectors[rng.choice(EMBED_ROWS, 50, replace=False)])
    recipe.write_text(yaml.safe_dump(_embed_recipe(eval_set, target), sort_keys=False), "utf-8")


def summarise(trials: list[Trial], stages: tuple[Stage, ...] = STAGES) -> dict[str, dict[str, int]]:
    """Per stage (and all): trials, kills by category, reruns that resumed, identical."""
    summary = {}
    for name in [*(s.name for s in stages), "all"]:
        mine = [t for t in trials if name in (t.stage, "all")]
        summary[name] = {
            "trials": len(mine),
            **{c: sum(t.category == c for t in mine) for c in CATEGORIES},
            "resumed": sum(bool(t.resumed) for t in mine),
            "identical": sum(t.identical for t in mine),
        }
    return summary


def print_summary(summary: dict[str, dict[str, int]]) -> None:
    columns = ["trials", *CATEGORIES, "resumed", "identical"]
    print(f"\n{'stage':<11}" + "".join(f"{c:>16}" for c in columns))
    for name, row in summary.items():
        print(f"{name:<11}" + "".join(f"{row[c]:>16}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the trials and summary as JSON here")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--stages",
        default=",".join(s.name for s in STAGES),
        help="comma-separated stages to try (embed needs ingest, build-pool needs embed)",
    )
    args = parser.parse_args()
    names = set(args.stages.split(","))
    stages = tuple(stage for stage in STAGES if stage.name in names)
    work = args.dir or Path(tempfile.mkdtemp(prefix="curate-faults-"))
    try:
        started = time.perf_counter()
        inputs = build_inputs(work, names)
        print(f"inputs built in {time.perf_counter() - started:.1f}s under {work}")
        references = {}
        for stage in stages:
            reference = run_reference(stage, inputs, work / "reference" / stage.name)
            references[stage.name] = reference
            print(f"reference {stage.name:<10} {reference.seconds:5.1f}s, "
                  f"{len(reference.parts)} parts done from {reference.part_seconds[0]:.1f}s "
                  f"to {reference.part_seconds[-1]:.1f}s")  # fmt: skip
        rng = np.random.default_rng(args.seed)
        trials = []
        print(f"\n{'#':>3} {'stage':<10} {'kill after':>13} {'killed':>7} {'at kill':>8} "
              f"{'category':<15} {'rerun':>6}  resumed / outcome")  # fmt: skip
        for number in range(args.trials):
            stage = stages[number % len(stages)]
            reference = references[stage.name]
            kill_after_parts = int(rng.integers(1, len(reference.parts)))
            fraction = float(rng.uniform())
            run_dir = work / "trials" / f"{number:02d}-{stage.name}"
            trial = run_trial(number, stage, inputs, run_dir, reference, kill_after_parts,
                              fraction)  # fmt: skip
            trials.append(trial)
            outcome = "identical" if trial.identical else "DIFFERS: " + trial.differences[0]
            kill_at = f"{kill_after_parts}/{trial.parts_total}+{trial.extra_delay:.2f}s"
            print(f"{number:>3} {trial.stage:<10} {kill_at:>13} {trial.killed_at:6.1f}s "
                  f"{len(trial.parts_at_kill):>3}/{trial.parts_total:<4} {trial.category:<15} "
                  f"{trial.rerun_seconds:5.1f}s  {trial.resumed_detail or '-'}; {outcome}",
                  flush=True)  # fmt: skip
        summary = summarise(trials, stages)
        print_summary(summary)
        wall = time.perf_counter() - started
        print(f"\nwall time {wall:.0f}s")
        if args.report:
            write_json(args.report, {
                "command": sys.argv, "seed": args.seed, "wall_seconds": round(wall, 1),
                "summary": summary,
                "references": {name: {"seconds": round(r.seconds, 2), "parts": r.parts,
                                      "part_seconds": [round(s, 3) for s in r.part_seconds]}
                               for name, r in references.items()},
                "trials": [asdict(t) for t in trials],
            })  # fmt: skip
        if summary["all"]["identical"] < len(trials):
            sys.exit(1)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
