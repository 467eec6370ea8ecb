"""build-pool: run a recipe's stages over a pool and write a candidate pool (a subset).

Each stage sees the rows that survived the stages before it and answers with a keep-mask
(see :mod:`curate.filters.registry`). Every decision is recorded, one row per sample and stage
that saw it, so that any removal can be traced to its stage, reason and score.

Resuming: the output is built in ``.<OUT>.partial``; each finished stage's decisions are
saved there under a key made of the pool's identity and the hash of the recipe *up to and
including* that stage. A rerun after a crash (or after fixing a later stage's parameters)
reuses every finished stage whose prefix is unchanged and runs the rest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curate.build_pool.decisions import StageDecisions, write_decisions
from curate.build_pool.ground_truth import ground_truth_report, has_ground_truth
from curate.build_pool.recipe import Recipe, RecipeStage, bind_to_pool
from curate.core.atomic import (
    exclusive_lock,
    publish_directory,
    staging_dir_for,
    write_json,
    write_parquet,
    write_text,
)
from curate.core.errors import InputNotFoundError, OutputExistsError, UserInputError
from curate.core.executor import Executor, LocalExecutor
from curate.core.layout import SubsetLayout
from curate.core.manifest import Manifest, produced_by
from curate.core.pool import Pool
from curate.core.pool_writer import (
    CORE_COLUMNS,
    PoolWriter,
    SourceSample,
    ValidSample,
    validate_sample,
    write_shard,
)
from curate.core.uid import save_subset
from curate.filters.catalog import get_stage
from curate.filters.registry import StageContext, StageResult

RESUME_DIR = "_resume"  # finished stages, inside the staging directory
RESHARD_DIR = "_reshard"  # the resharded pool while it is being written
GROUND_TRUTH = "ground_truth.parquet"
DECISIONS = "decisions.parquet"  # a finished stage's decisions, inside its resume directory
ROW = "row"


@dataclass(frozen=True)
class StageStats:
    index: int
    stage: str
    rows_in: int
    rows_out: int
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False  # reused from an interrupted run instead of run again

    @property
    def removed(self) -> int:
        return self.rows_in - self.rows_out


@dataclass(frozen=True)
class BuildResult:
    out: Path
    pool_count: int
    kept: int
    stages: tuple[StageStats, ...]
    ground_truth: pl.DataFrame | None


class BuildObserver:
    """Progress hooks (the CLI draws them); every method is optional."""

    def stage_started(self, stage: RecipeStage, rows_in: int) -> None: ...

    def stage_finished(self, stats: StageStats) -> None: ...

    def reshard_started(self, total: int) -> None: ...

    def reshard_advanced(self, count: int) -> None: ...


def build_pool(
    recipe: Recipe,
    pool_path: Path | str,
    out: Path | str,
    *,
    overwrite: bool = False,
    reshard: bool = False,
    samples_per_shard: int = 10_000,
    observer: BuildObserver | None = None,
    executor: Executor | None = None,
) -> BuildResult:
    """Run ``recipe`` over the pool at ``pool_path``; publish the candidate pool at ``out``.

    ``executor`` writes the resharded tars (one task per output shard; default: in this
    process); the stages themselves run here, over whole columns."""
    observer = observer or BuildObserver()
    pool = Pool.open(pool_path)
    out = Path(out)
    identity = _pool_identity(pool, recipe)
    stages = bind_to_pool(recipe, pool.root.resolve())
    if reshard and not pool.manifest.has_images:
        raise UserInputError(
            f"{pool.root} has no images (metadata only), so --reshard has nothing to copy; "
            "drop --reshard or download the images first"
        )
    with exclusive_lock(out):
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
        staging = staging_dir_for(out)
        resume = staging / RESUME_DIR
        resume.mkdir(parents=True, exist_ok=True)

        samples = pool.samples()
        if ROW in samples.columns:
            raise UserInputError(f"{pool.layout.samples}: column {ROW!r} is reserved for curate")
        pool_count, ground_truth = samples.height, has_ground_truth(samples)
        survivors = samples.with_row_index(ROW)
        del samples  # the first stage's filter frees the whole table
        stage_files: list[StageDecisions] = []
        stage_stats: list[StageStats] = []
        for stage in stages:
            key = _stage_key(identity, recipe, stage)
            stage_dir = resume / f"{stage.index:03d}-{stage.name}-{key[:16]}"
            observer.stage_started(stage, survivors.height)
            kept, stats = _run_or_resume(stage, survivors, pool, recipe, identity, stage_dir)
            observer.stage_finished(stats)
            stage_files.append(StageDecisions(stage.index, stage.name, stage_dir / DECISIONS))
            stage_stats.append(stats)
            survivors = survivors.filter(kept)
            del kept

        _clear_outputs(staging)
        layout = SubsetLayout(staging)
        write_decisions(layout.decisions, pool.samples(columns=["uid"])["uid"], stage_files)
        write_parquet(layout.stages, _stages_table(stage_stats))
        kept_uids = survivors["uid"].sort()
        write_parquet(layout.uids_parquet, pl.DataFrame({"uid": kept_uids}))
        save_subset(kept_uids.to_list(), layout.uids_npy)
        write_text(layout.recipe, recipe.text)
        report = None
        if ground_truth:
            labels = pool.scan_samples().with_row_index(ROW)
            report = ground_truth_report(labels, pl.scan_parquet(layout.decisions))
            write_parquet(staging / GROUND_TRUTH, report)
        if reshard:
            executor = executor or LocalExecutor(workers=1)
            _reshard(pool, survivors, staging, identity, samples_per_shard, observer, executor)
        shutil.rmtree(resume)
        _manifest(out, pool, recipe, identity, survivors.height, reshard, stage_stats).write(
            staging
        )
        publish_directory(staging, out, overwrite=overwrite)
    return BuildResult(out, pool_count, survivors.height, tuple(stage_stats), report)


# -- identity and resume ---------------------------------------------------------------------


def _pool_identity(pool: Pool, recipe: Recipe) -> dict[str, Any]:
    """What a stage's result depends on besides the recipe: the pool build and its embeddings
    (every set's files by size and mtime: re-embedding invalidates finished stages)."""
    embeddings_dir = pool.layout.embeddings_dir
    files = sorted(embeddings_dir.glob("*/*")) if embeddings_dir.is_dir() else []
    identity: dict[str, Any] = {
        "pool_id": hashlib.sha256(pool.layout.manifest.read_bytes()).hexdigest()[:16],
        "pool_created": pool.manifest.created,
        "embedding_files": {
            str(f.relative_to(embeddings_dir)): [f.stat().st_size, f.stat().st_mtime_ns]
            for f in files
            if f.is_file()
        },
        "embeddings_name": recipe.embeddings,
    }
    if recipe.needs_embeddings:
        from curate.core.embedding_store import load_embeddings

        # fails before any work when the set is missing; resolves "the pool's only set"
        identity["embeddings_name"] = load_embeddings(pool.root, recipe.embeddings).name
    return identity


def _stage_key(identity: dict[str, Any], recipe: Recipe, stage: RecipeStage) -> str:
    text = json.dumps(
        {"pool": identity, "recipe_prefix": recipe.content_hash(stage.index + 1)}, sort_keys=True
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _run_or_resume(
    stage: RecipeStage,
    rows: pl.DataFrame,
    pool: Pool,
    recipe: Recipe,
    identity: dict[str, Any],
    stage_dir: Path,
) -> tuple[pl.Series, StageStats]:
    """The stage's keep-mask over ``rows``; its decisions are saved in ``stage_dir``."""
    decisions_path, stats_path = stage_dir / DECISIONS, stage_dir / "stats.json"
    if stats_path.is_file():  # written last: the stage finished in an earlier run
        stats = StageStats(**json.loads(stats_path.read_text("utf-8")))
        decisions = pl.read_parquet(decisions_path, columns=[ROW, "kept"])
        if decisions[ROW].equals(rows[ROW]):
            return decisions["kept"], StageStats(**{**asdict(stats), "resumed": True})
    started = time.perf_counter()
    if rows.height == 0:
        result = StageResult(keep=np.zeros(0, dtype=bool), reason="")
    else:
        context = StageContext(
            rows=rows,
            pool_root=pool.root,
            seed=recipe.seed,
            work_dir=stage_dir / "work",
            embeddings_name=identity["embeddings_name"],
        )
        context.work_dir.mkdir(parents=True, exist_ok=True)
        result = get_stage(stage.name).run(context, stage.params)
    decisions = _stage_decisions(stage, rows, result)
    stats = StageStats(
        index=stage.index,
        stage=stage.name,
        rows_in=rows.height,
        rows_out=int(decisions["kept"].sum()),
        seconds=round(time.perf_counter() - started, 3),
        report=json.loads(json.dumps(result.report, default=str)),
    )
    write_parquet(decisions_path, decisions)
    write_json(stats_path, asdict(stats))
    return decisions["kept"], stats


def _stage_decisions(stage: RecipeStage, rows: pl.DataFrame, result: StageResult) -> pl.DataFrame:
    """Check a stage's answer and turn it into (row, kept, reason, score)."""
    n = rows.height
    keep = np.asarray(result.keep)
    if keep.shape != (n,) or keep.dtype != np.bool_:
        raise RuntimeError(
            f"stage {stage.index} ({stage.name}) returned a keep-mask of shape {keep.shape} and "
            f"dtype {keep.dtype}; expected {n} booleans, one per row it was given"
        )
    if isinstance(result.reason, str):
        reason = pl.Series([result.reason], dtype=pl.String).new_from_index(0, n)
    else:
        reasons = np.asarray(result.reason, dtype=object)
        if reasons.shape != (n,):
            raise RuntimeError(f"stage {stage.name} returned {reasons.shape} reasons for {n} rows")
        reason = pl.Series(pa.array(reasons, pa.large_string()), dtype=pl.String)
    score: np.ndarray | None = None
    if result.score is not None:
        score = np.asarray(result.score, dtype=np.float32)
        if score.shape != (n,):
            raise RuntimeError(f"stage {stage.name} returned {score.shape} scores for {n} rows")
    return pl.DataFrame(
        {
            ROW: rows[ROW],
            "kept": pl.Series(keep, dtype=pl.Boolean),
            "reason": reason,
            "score": pl.Series(score, dtype=pl.Float32)
            if score is not None
            else pl.repeat(None, n, dtype=pl.Float32, eager=True),
        }
    ).with_columns(reason=pl.when(pl.col("kept")).then(None).otherwise(pl.col("reason")))


# -- outputs ---------------------------------------------------------------------------------


def _clear_outputs(staging: Path) -> None:
    """Remove outputs an earlier, interrupted run left in the staging directory."""
    keep = {RESUME_DIR, RESHARD_DIR, f".{RESHARD_DIR}.partial", f".{RESHARD_DIR}.lock"}
    for entry in staging.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _stages_table(stats: list[StageStats]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stage_index": [s.index for s in stats],
            "stage": [s.stage for s in stats],
            "rows_in": [s.rows_in for s in stats],
            "rows_out": [s.rows_out for s in stats],
            "removed": [s.removed for s in stats],
            "seconds": [s.seconds for s in stats],
            "resumed": [s.resumed for s in stats],
            "report": [json.dumps(s.report, sort_keys=True) for s in stats],
        },
        schema={
            "stage_index": pl.UInt16,
            "stage": pl.String,
            "rows_in": pl.Int64,
            "rows_out": pl.Int64,
            "removed": pl.Int64,
            "seconds": pl.Float64,
            "resumed": pl.Boolean,
            "report": pl.String,
        },
    )


def _manifest(
    out: Path,
    pool: Pool,
    recipe: Recipe,
    identity: dict[str, Any],
    kept: int,
    resharded: bool,
    stats: list[StageStats],
) -> Manifest:
    recipe_hash = recipe.content_hash()
    return Manifest(
        name=out.name,
        kind="subset",
        source={
            "pool": str(pool.root.resolve()),
            "pool_name": pool.name,
            "pool_id": identity["pool_id"],
            "pool_manifest_created": pool.manifest.created,
            "recipe": recipe.name,
        },
        sample_count=kept,
        has_images=resharded or pool.manifest.has_images,
        produced_by=produced_by(
            "build-pool", recipe=recipe.name, recipe_hash=recipe_hash, seed=recipe.seed
        ),
        extra={
            "recipe_hash": recipe_hash,
            "seed": recipe.seed,
            "pool_sample_count": pool.manifest.sample_count,
            "embeddings": identity["embeddings_name"],
            "resharded": resharded,
            "stages": [
                {"stage": s.stage, "rows_in": s.rows_in, "rows_out": s.rows_out} for s in stats
            ],
        },
    )


# -- resharding ------------------------------------------------------------------------------


def _reshard(
    pool: Pool,
    kept: pl.DataFrame,
    staging: Path,
    identity: dict[str, Any],
    samples_per_shard: int,
    observer: BuildObserver,
    executor: Executor,
) -> None:
    """Copy the kept samples into the subset's own shards (the pool writer's layout): one
    task per output shard, reading the kept samples of its range from the pool's shards.
    Finished shards survive an interrupted run."""
    duplicated = kept.filter(pl.col("uid").is_duplicated())
    if duplicated.height:
        raise RuntimeError(f"{pool.layout.samples}: uid {duplicated['uid'][0]} is repeated")
    target = staging / RESHARD_DIR
    params = {"pool": identity, "uids_sha256": _uids_digest(kept["uid"])}
    observer.reshard_started(kept.height)
    with PoolWriter(
        target,
        name=target.name,
        source={"type": "reshard", "pool": str(pool.root.resolve())},
        command="build-pool --reshard",
        params=params,
        samples_per_shard=samples_per_shard,
        overwrite=True,
    ) as writer:
        size = samples_per_shard
        first = writer.shards_done  # finished by an interrupted run
        observer.reshard_advanced(min(first * size, kept.height))
        tasks = [
            _ReshardTask(pool, writer.staging, i, kept.slice(i * size, size))
            for i in range(first, -(-kept.height // size))
        ]
        for task, count in zip(tasks, executor.map(_write_kept_shard, tasks), strict=True):
            writer.shards_written(task.shard_index + 1, task.shard_index * size + count)
            observer.reshard_advanced(count)
    (staging / f".{RESHARD_DIR}.lock").unlink(missing_ok=True)
    layout = SubsetLayout(staging)
    (target / "samples.parquet").replace(staging / "samples.parquet")
    (target / "shards").replace(layout.shards_dir)
    shutil.rmtree(target)


@dataclass(frozen=True)
class _ReshardTask:
    pool: Pool
    staging: Path  # the resharded pool's staging directory
    shard_index: int
    kept: pl.DataFrame  # this shard's samples, in pool order


def _write_kept_shard(task: _ReshardTask) -> int:
    samples = _validated(_kept_samples(task.pool, task.kept))
    return write_shard(task.staging, task.shard_index, samples)


def _validated(samples: Iterator[SourceSample]) -> Iterator[ValidSample]:
    for sample in samples:
        try:
            yield validate_sample(sample)
        except ValueError as error:
            raise RuntimeError(
                f"{sample.where}: a pool sample failed validation on reshard ({error})"
            ) from None


def _uids_digest(uids: pl.Series) -> str:
    return hashlib.sha256("\n".join(uids.to_list()).encode("ascii")).hexdigest()


def _kept_samples(pool: Pool, kept: pl.DataFrame) -> Iterator[SourceSample]:
    """The kept samples with their image bytes, in pool order, reading each shard once."""
    extra_columns = [c for c in kept.columns if c not in CORE_COLUMNS and c != ROW]
    for (shard,), rows in kept.group_by("shard", maintain_order=True):
        wanted = set(rows["key"].to_list())
        images = {key: data for key, _, data in pool.iter_images(shard) if key in wanted}
        for row in rows.iter_rows(named=True):
            image = images.get(row["key"])
            if image is None:
                raise InputNotFoundError(f"{pool.root}: image {row['key']} not found in {shard}")
            yield SourceSample(
                source=row["source"],
                where=f"{pool.layout.samples} row {row[ROW]}",
                text=row["text"],
                image=image,
                uid=row["uid"],
                extras={c: row[c] for c in extra_columns},
            )
