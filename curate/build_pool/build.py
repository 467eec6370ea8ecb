"""build-pool: run a recipe's stages over a pool and write a candidate pool (a subset).

Each stage sees the rows that survived the stages before it and answers with a keep-mask
(see :mod:`curate.filters.registry`). The samples table is never loaded whole: it is cut
into shards (blocks of rows of one parquet file, :meth:`Pool.table_shards`) and every step
is a task per shard on the executor, reading only the columns the stages declared:

- per-row stages (and a whole-pool stage once its plan is known) run shard by shard; the
  stages that follow each other this way share one task per shard (the columns are read
  once);
- a whole-pool rule first computes its plan as map -> reduce tasks (``Stage.prepare``:
  clip_score's threshold from per-shard histograms, exact_dedup's duplicates from
  partitions by hash);
- the embedding stages run in this process over the surviving rows (their own tasks go
  to the executor);
- the kept uids are gathered from the pool's sorted uid index (:mod:`curate.core.uid_index`,
  written by ingest of metadata in place), or else spilled by prefix per shard and sorted per
  prefix, and streamed into uids.npy (DataComp's subset file: the one copy of the kept set;
  :mod:`curate.core.kept_uids` reads it as strings).

So the driver holds O(shards) state. Each stage's decisions are stored compactly, one part
per shard (:mod:`curate.build_pool.decisions`): any removal can still be traced to its
stage, reason and score.

Resuming: the output is built in ``.<OUT>.partial``; each finished stage's parts are saved
there under a key made of the pool's identity and the hash of the recipe *up to and
including* that stage. A rerun after a crash (or after fixing a later stage's parameters)
reuses every finished stage whose prefix is unchanged and runs the rest. The outputs are the
same bytes on every executor and for every worker count.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import polars as pl

from curate.build_pool.decisions import (
    StageAnswerError,
    assemble,
    check_result,
    check_sparse,
    write_part,
)
from curate.build_pool.ground_truth import NOISE_COLUMN, ground_truth_report
from curate.build_pool.recipe import Recipe, RecipeStage, bind_to_pool, check_columns
from curate.core.atomic import (
    atomic_path,
    staged_output,
    write_json,
    write_parquet,
    write_text,
)
from curate.core.decisions_view import CompactInfo, StageEntry, scan_decisions
from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.executor import Executor, LocalExecutor
from curate.core.layout import SubsetLayout
from curate.core.manifest import Manifest, produced_by
from curate.core.npy_header import read_npy_header
from curate.core.pool import SHARD_ROWS, Pool, ShardRows, TableShard
from curate.core.uid import (
    SUBSET_DTYPE,
    arrow_uid_halves,
    halves_to_arrow_uids,
)
from curate.core.uid_index import UidIndex, kept_pairs
from curate.filters.catalog import get_stage
from curate.filters.registry import (
    PlanContext,
    ShardedAnswer,
    SparseResult,
    Stage,
    StageContext,
    StageResult,
    dense_result,
    merge_reports,
)

if TYPE_CHECKING:  # the pool writer imports webdataset (and torch): loaded only to reshard
    from curate.core.pool_writer import SourceSample, ValidSample

RESUME_DIR = "_resume"  # finished stages, inside the staging directory
RESHARD_DIR = "_reshard"  # the resharded pool while it is being written
KEPT_DIR = "_kept"  # the kept uids, spilled by prefix, while the outputs are written
GROUND_TRUTH = "ground_truth.parquet"
PARTS = "parts"  # a stage's decisions, one file per shard, inside its resume directory
KEPT_MASKS = "kept"  # the recipe's last stage: each shard's rows kept by every stage
ROW = "row"
POSITIONS = "positions.u64"  # a driver stage's rows, when it reads its columns on demand
KEPT_BUCKET_ROWS = 4 << 20  # kept uids a sorting task holds at most (16 bytes each)


@dataclass(frozen=True)
class StageStats:
    index: int
    stage: str
    rows_in: int
    rows_out: int
    seconds: float  # the stage's own work: its plan plus every shard's task, summed
    report: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False  # reused from an interrupted run instead of run again
    score_column: str | None = None  # the samples-table column that holds its scores

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


@dataclass(frozen=True)
class _Plan:
    """What build_pool knows before running anything: the pool, its shards, the stages."""

    pool: Pool
    recipe: Recipe
    stages: tuple[RecipeStage, ...]
    columns: dict[int, list[str]]  # the columns each stage reads, by stage index
    shards: tuple[TableShard, ...]
    identity: dict[str, Any]
    resume: Path
    shard_rows: int
    executor: Executor
    device: str
    stage_dirs: dict[int, Path]  # by stage index: where its resumable state lives

    def stage_dir(self, stage: RecipeStage) -> Path:
        return self.stage_dirs[stage.index]

    def parts(self, stage: RecipeStage) -> list[Path]:
        return [self.stage_dir(stage) / PARTS / f"{s.index:06d}.parquet" for s in self.shards]

    def kept_masks(self, stage: RecipeStage) -> list[Path]:
        """Per shard: a bool per row, kept by ``stage`` and every stage before it."""
        return [self.stage_dir(stage) / KEPT_MASKS / f"{s.index:06d}.npy" for s in self.shards]


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
    device: str = "cpu",
    shard_rows: int = SHARD_ROWS,
) -> BuildResult:
    """Run ``recipe`` over the pool at ``pool_path``; publish the candidate pool at ``out``.

    ``executor`` runs every per-shard task (the stages, their plans' map and reduce steps,
    the kept uids, the resharded tars; default: in this process) and the embedding stages'
    tasks. ``device``: where the embedding stages run FAISS (cpu, or cuda with faiss-gpu).
    ``shard_rows``: the most rows one task reads (the outputs do not depend on it)."""
    from curate.dedup.device import check_device

    check_device(device)
    observer = observer or BuildObserver()
    pool = Pool.open(pool_path)
    out = Path(out)
    available = pool.columns()
    if ROW in available:
        raise UserInputError(f"{pool.sample_paths()[0]}: column {ROW!r} is reserved for curate")
    identity = _pool_identity(pool, recipe)
    stages = bind_to_pool(recipe, pool.root.resolve())
    columns = check_columns(recipe, stages, available)
    if reshard and not pool.manifest.has_images:
        raise UserInputError(
            f"{pool.root} has no images (metadata only), so --reshard has nothing to copy; "
            "drop --reshard or download the images first"
        )
    executor = executor or LocalExecutor(workers=1)
    with staged_output(out, overwrite=overwrite, resume=True) as staging:
        resume = staging / RESUME_DIR
        resume.mkdir(parents=True, exist_ok=True)
        plan = _Plan(
            pool,
            recipe,
            stages,
            columns,
            tuple(pool.table_shards(shard_rows)),
            identity,
            resume,
            shard_rows,
            executor,
            device,
            {s.index: _stage_dir(resume, identity, recipe, s, shard_rows) for s in stages},
        )
        pool_count = sum(shard.rows for shard in plan.shards)
        stage_stats = _run_stages(plan, pool_count, observer)
        kept = stage_stats[-1].rows_out if stage_stats else pool_count

        _clear_outputs(staging)
        layout = SubsetLayout(staging)
        info = CompactInfo(
            pool_count,
            tuple(StageEntry(s.index, s.stage, s.score_column) for s in stage_stats),
        )
        write_parquet(layout.stages, _stages_table(stage_stats))
        removed = [plan.parts(stage) for stage in stages]
        with ThreadPoolExecutor(1) as background:  # two writers of separate files, one core each
            decisions = background.submit(
                assemble, layout.decisions, [(s.index, plan.parts(s)) for s in stages], info
            )
            _write_kept_uids(plan, removed, kept, staging)
            decisions.result()
        write_text(layout.recipe, recipe.text)
        report = None
        if NOISE_COLUMN in available:
            labels = pool.scan_samples().with_row_index(ROW)
            decisions = scan_decisions(layout.decisions, pool.sample_paths())
            report = ground_truth_report(labels, decisions)
            write_parquet(staging / GROUND_TRUTH, report)
        if reshard:
            survivors = _kept_rows(plan, removed)
            _reshard(pool, survivors, staging, identity, samples_per_shard, observer, executor)
        shutil.rmtree(resume)
        _manifest(out, pool, recipe, identity, kept, reshard, stage_stats).write(staging)
    return BuildResult(out, pool_count, kept, tuple(stage_stats), report)


# -- running the stages ----------------------------------------------------------------------


def _run_stages(plan: _Plan, pool_count: int, observer: BuildObserver) -> list[StageStats]:
    """Every stage in order: finished ones reused, the rest in segments (a stage and the
    per-row stages after it share one task per shard)."""
    stats: list[StageStats] = []
    in_play = pool_count
    position = 0
    while position < len(plan.stages):
        stage = plan.stages[position]
        finished = _finished(plan, stage)
        if finished is not None:
            observer.stage_started(stage, in_play)
            observer.stage_finished(finished)
            stats.append(finished)
            in_play = finished.rows_out
            position += 1
            continue
        spec = get_stage(stage.name)
        earlier = [plan.parts(s) for s in plan.stages[:position]]
        if not spec.runs_per_row(stage.params) and not spec.plans(stage.params):
            observer.stage_started(stage, in_play)
            done = [_run_in_driver(plan, stage, spec, earlier)]
        else:
            segment = [stage]
            while position + len(segment) < len(plan.stages):
                following = plan.stages[position + len(segment)]
                if _finished(plan, following) is not None or not get_stage(
                    following.name
                ).runs_per_row(following.params):
                    break
                segment.append(following)
            observer.stage_started(stage, in_play)
            done = _run_segment_tasks(plan, segment, earlier)
        for index, result in enumerate(done):
            if index:
                observer.stage_started(plan.stages[position + index], result.rows_in)
            observer.stage_finished(result)
            stats.append(result)
        in_play = done[-1].rows_out
        position += len(done)
    return stats


def _finished(plan: _Plan, stage: RecipeStage) -> StageStats | None:
    """The stats of a stage an earlier run finished (its stats.json is written last)."""
    stats_path = plan.stage_dir(stage) / "stats.json"
    if not stats_path.is_file() or not all(p.is_file() for p in plan.parts(stage)):
        return None
    stats = StageStats(**json.loads(stats_path.read_text("utf-8")))
    return StageStats(**{**asdict(stats), "resumed": True})


def _shard_rows(plan: _Plan, earlier: list[list[Path]]) -> list[ShardRows]:
    """Per shard: its rows minus those the earlier stages removed."""
    return [
        ShardRows(shard, tuple(parts[shard.index] for parts in earlier)) for shard in plan.shards
    ]


@dataclass(frozen=True)
class _StageRun:
    """One stage of a segment task, everything a worker needs to run it on a shard."""

    index: int
    name: str
    spec: Stage
    params: Any
    columns: tuple[str, ...]
    part: Path  # this shard's decisions file
    plan: Any = None


@dataclass(frozen=True)
class _SegmentTask:
    rows: ShardRows
    runs: tuple[_StageRun, ...]
    pool_root: Path
    seed: int
    work_dirs: tuple[Path, ...]
    embeddings_name: str | None
    device: str
    kept_mask: Path | None  # where to save the shard's final keep mask (the last segment)


@dataclass(frozen=True)
class _ShardOutcome:
    rows_in: int
    rows_out: int
    seconds: float
    report: dict[str, Any]
    score_column: str | None


def _run_segment(task: _SegmentTask) -> list[_ShardOutcome]:
    """Map: the segment's stages over one shard, one after another; writes each stage's
    part and returns its counts and report."""
    wanted = list(dict.fromkeys(c for run in task.runs for c in run.columns))
    rows = task.rows.read(wanted)
    outcomes = []
    for run, work_dir in zip(task.runs, task.work_dirs, strict=True):
        started = time.perf_counter()
        if rows.height == 0:
            result = StageResult(keep=np.zeros(0, dtype=bool), reason="")
        else:
            context = StageContext(
                rows=rows.select(ROW, *run.columns),
                pool_root=task.pool_root,
                seed=task.seed,
                work_dir=work_dir,
                embeddings_name=task.embeddings_name,
                device=task.device,
                plan=run.plan,
            )
            result = dense_result(run.spec.run(context, run.params))
        rows_in, rows_out = write_part(run.part, run.name, run.index, rows[ROW], result)
        keep = check_result(run.name, run.index, rows.height, result)
        rows = rows.filter(pl.Series(keep))
        report = json.loads(json.dumps(result.report, default=str))
        seconds = time.perf_counter() - started
        outcomes.append(_ShardOutcome(rows_in, rows_out, seconds, report, result.score_column))
    if task.kept_mask is not None:
        _save_mask(task.kept_mask, task.rows.shard, rows[ROW].to_numpy())
    return outcomes


def _save_mask(path: Path, shard: TableShard, kept_rows: np.ndarray) -> None:
    """The shard's keep mask (a bool per row) from the pool rows it kept."""
    keep = np.zeros(shard.rows, dtype=bool)
    keep[kept_rows.astype(np.int64) - shard.first_row] = True
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, keep)


def _run_segment_tasks(
    plan: _Plan, segment: list[RecipeStage], earlier: list[list[Path]]
) -> list[StageStats]:
    first = segment[0]
    spec = get_stage(first.name)
    shard_rows = _shard_rows(plan, earlier)
    prepared, prepare_seconds = None, 0.0
    if spec.plans(first.params):
        started = time.perf_counter()
        work_dir = plan.stage_dir(first) / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        context = PlanContext(
            shards=plan.shards,
            survivors=tuple(shard_rows),
            executor=plan.executor,
            pool_root=plan.pool.root,
            seed=plan.recipe.seed,
            work_dir=work_dir,
            embeddings_name=plan.identity["embeddings_name"],
        )
        assert spec.prepare is not None
        prepared = spec.prepare(context, first.params)
        prepare_seconds = time.perf_counter() - started
    work_dirs = []
    for stage in segment:
        (plan.stage_dir(stage) / PARTS).mkdir(parents=True, exist_ok=True)
        work_dirs.append(plan.stage_dir(stage) / "work")
        work_dirs[-1].mkdir(exist_ok=True)
    masks: list[Path | None] = [None] * len(plan.shards)
    if segment[-1] is plan.stages[-1]:  # the kept uids need the final keep masks
        masks = list(plan.kept_masks(segment[-1]))
    tasks = [
        _SegmentTask(
            rows,
            tuple(
                _StageRun(
                    stage.index,
                    stage.name,
                    get_stage(stage.name),
                    stage.params,
                    tuple(plan.columns[stage.index]),
                    plan.parts(stage)[rows.shard.index],
                    prepared if stage is first else None,
                )
                for stage in segment
            ),
            plan.pool.root,
            plan.recipe.seed,
            tuple(work_dirs),
            plan.identity["embeddings_name"],
            plan.device,
            masks[rows.shard.index],
        )
        for rows in shard_rows
    ]
    per_stage: list[list[_ShardOutcome]] = [[] for _ in segment]
    for outcomes in plan.executor.map(_run_segment, tasks, threads_ok=True):
        for collected, outcome in zip(per_stage, outcomes, strict=True):
            collected.append(outcome)
    results = []
    for position, (stage, outcomes) in enumerate(zip(segment, per_stage, strict=True)):
        merge = get_stage(stage.name).merge_reports or merge_reports
        seconds = sum(o.seconds for o in outcomes) + (prepare_seconds if position == 0 else 0)
        columns = {o.score_column for o in outcomes if o.rows_in}
        stats = StageStats(
            index=stage.index,
            stage=stage.name,
            rows_in=sum(o.rows_in for o in outcomes),
            rows_out=sum(o.rows_out for o in outcomes),
            seconds=round(seconds, 3),
            report=merge([o.report for o in outcomes if o.rows_in]),
            score_column=columns.pop() if len(columns) == 1 else None,
        )
        write_json(plan.stage_dir(stage) / "stats.json", asdict(stats))
        results.append(stats)
    return results


def _run_in_driver(
    plan: _Plan, stage: RecipeStage, spec: Stage, earlier: list[list[Path]]
) -> StageStats:
    """A stage over all the surviving rows at once, in this process (the embedding stages:
    their own work goes to the executor as tasks). Its columns are read shard by shard, or,
    for a stage that reads them on demand, only for the rows it asks about; a sparse answer
    becomes the shards' decisions in one task per shard."""
    started = time.perf_counter()
    shard_rows = _shard_rows(plan, earlier)
    columns = plan.columns[stage.index]
    stage_dir = plan.stage_dir(stage)
    (stage_dir / PARTS).mkdir(parents=True, exist_ok=True)
    if spec.columns_on_demand:
        rows, counts = _positions_on_disk(shard_rows, stage_dir / POSITIONS)
    else:
        frames = [rows.read(columns) for rows in shard_rows]
        counts = [frame.height for frame in frames]
        rows = pl.concat(frames) if frames else _no_rows()
        del frames
    if rows.height == 0:
        result: StageResult | ShardedAnswer = StageResult(keep=np.zeros(0, dtype=bool), reason="")
    else:
        context = StageContext(
            rows=rows,
            pool_root=plan.pool.root,
            seed=plan.recipe.seed,
            work_dir=stage_dir / "work",
            embeddings_name=plan.identity["embeddings_name"],
            executor=plan.executor,
            device=plan.device,
            looked_up=tuple(columns) if spec.columns_on_demand else (),
            lookup=_ColumnLookup(tuple(shard_rows), tuple(counts)),
        )
        context.work_dir.mkdir(parents=True, exist_ok=True)
        result = spec.run(context, stage.params)
    if not isinstance(result, StageResult):
        _check_answer(stage, rows.height, result)
        del rows
        rows_out = _write_answer_parts(plan, stage, shard_rows, counts, result)
    else:
        rows_out = int(check_result(stage.name, stage.index, rows.height, result).sum())
        start = 0
        for count, part in zip(counts, plan.parts(stage), strict=True):
            piece = _slice_result(result, start, count)
            write_part(part, stage.name, stage.index, rows[ROW].slice(start, count), piece)
            start += count
    stats = StageStats(
        index=stage.index,
        stage=stage.name,
        rows_in=sum(counts),
        rows_out=rows_out,
        seconds=round(time.perf_counter() - started, 3),
        report=json.loads(json.dumps(result.report, default=str)),
        score_column=result.score_column if isinstance(result, StageResult) else None,
    )
    write_json(stage_dir / "stats.json", asdict(stats))
    (stage_dir / POSITIONS).unlink(missing_ok=True)  # a finished stage is never rerun
    return stats


def _positions_on_disk(shard_rows: list[ShardRows], path: Path) -> tuple[pl.DataFrame, list[int]]:
    """The ``row`` column of a driver stage's rows (and each shard's count), written a shard at
    a time to ``path`` and mapped back: a stage that reads its columns on demand then holds
    no value per row in memory (8 bytes a row: 10 GB at 1.28B rows)."""
    counts = []
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for rows in shard_rows:
            positions = rows.read([])[ROW].cast(pl.UInt64).to_numpy()
            positions.tofile(handle)
            counts.append(len(positions))
    if not sum(counts):
        return _no_rows(), counts
    return pl.DataFrame({ROW: np.memmap(path, dtype=np.uint64, mode="r")}), counts


def _no_rows() -> pl.DataFrame:
    return pl.DataFrame({ROW: pl.Series([], dtype=pl.UInt64)})


@dataclass(frozen=True)
class _ColumnLookup:
    """A column of a driver stage's rows at given positions, read from the shards that hold
    one of them (a shard at a time), for a driver that holds the ``row`` column alone."""

    shards: tuple[ShardRows, ...]
    counts: tuple[int, ...]

    def __call__(self, name: str, positions: np.ndarray) -> pl.Series:
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        starts = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        bounds = np.searchsorted(ordered, starts)
        pieces = [
            shard.read([name])[name].gather(ordered[low:high] - start)
            for shard, low, high, start in zip(
                self.shards, bounds[:-1], bounds[1:], starts[:-1], strict=True
            )
            if high > low
        ]
        if not pieces:
            return self.shards[0].read([name])[name].clear()
        return pl.concat(pieces).gather(np.argsort(order))  # back in the order asked


def _check_answer(stage: RecipeStage, rows: int, answer: ShardedAnswer) -> None:
    if isinstance(answer, SparseResult):
        check_sparse(stage.name, stage.index, rows, answer)
    elif answer.rows != rows:
        raise StageAnswerError(
            f"stage {stage.index} ({stage.name}) answered for {answer.rows} rows; it was "
            f"given {rows}"
        )


@dataclass(frozen=True)
class _ApplyTask:
    rows: ShardRows
    answer: ShardedAnswer  # this shard's piece of the stage's answer
    stage: RecipeStage
    part: Path


def _apply_answer(task: _ApplyTask) -> int:
    """Map: one shard's decisions from its piece of a stage's answer; the rows kept."""
    rows = task.rows.read([])[ROW]
    _check_answer(task.stage, rows.len(), task.answer)
    name, index = task.stage.name, task.stage.index
    return write_part(task.part, name, index, rows, task.answer.dense())[1]


def _write_answer_parts(
    plan: _Plan,
    stage: RecipeStage,
    shard_rows: list[ShardRows],
    counts: list[int],
    answer: ShardedAnswer,
) -> int:
    """Each shard's decisions of a sharded answer, one task per shard; the rows kept."""
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    tasks = [
        _ApplyTask(rows, answer.piece(int(start), count), stage, part)
        for rows, start, count, part in zip(
            shard_rows, starts[:-1], counts, plan.parts(stage), strict=True
        )
    ]
    return sum(plan.executor.map(_apply_answer, tasks, threads_ok=True))


def _slice_result(result: StageResult, start: int, count: int) -> StageResult:
    reason = result.reason
    if not isinstance(reason, str):
        reason = reason[start : start + count]
    score = None if result.score is None else np.asarray(result.score)[start : start + count]
    return StageResult(
        keep=np.asarray(result.keep)[start : start + count],
        reason=reason,
        score=score,
        report={},
        score_column=result.score_column,
    )


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


def _stage_dir(
    resume: Path, identity: dict[str, Any], recipe: Recipe, stage: RecipeStage, shard_rows: int
) -> Path:
    key = _stage_key(identity, recipe, stage, shard_rows)
    return resume / f"{stage.index:03d}-{stage.name}-{key[:16]}"


def _stage_key(
    identity: dict[str, Any], recipe: Recipe, stage: RecipeStage, shard_rows: int
) -> str:
    text = json.dumps(
        {
            "pool": identity,
            "recipe_prefix": recipe.content_hash(stage.index + 1),
            "shard_rows": shard_rows,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the kept uids -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeptTask:
    rows: ShardRows  # the shard minus every stage's removals
    bucket_bits: int
    directory: Path


@dataclass(frozen=True)
class _SortTask:
    bucket: int
    directory: Path


def _spill_kept(task: _KeptTask) -> int:
    """Map: the shard's kept uids as (high, low) halves, into buckets by their top bits."""
    uids = task.rows.read(["uid"])["uid"].to_arrow()  # polars reads strings fastest
    halves, first_bad = arrow_uid_halves(uids)
    if first_bad >= 0:
        raise UserInputError(
            f"{task.rows.shard.path}: uid {uids[first_bad].as_py()!r} is not 32 lowercase hex "
            "characters, so the kept set cannot be written as DataComp's uids.npy"
        )
    buckets = halves[:, 0] >> np.uint64(64 - task.bucket_bits) if task.bucket_bits else None
    for bucket in range(1 << task.bucket_bits):
        part = halves if buckets is None else halves[buckets == bucket]
        target = task.directory / f"b{bucket:05d}" / f"{task.rows.shard.index:06d}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, part)
    return len(halves)


def _sort_bucket(task: _SortTask) -> int:
    """Reduce: one bucket's halves sorted (the order np.sort gives DataComp's u8,u8 pairs)."""
    folder = task.directory / f"b{task.bucket:05d}"
    parts = [np.load(path) for path in sorted(folder.glob("*.npy"))]
    halves = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.uint64)
    del parts
    ordered = pl.DataFrame({"f0": halves[:, 0], "f1": halves[:, 1]}).sort("f0", "f1")
    del halves
    f0, f1 = ordered["f0"].to_numpy(), ordered["f1"].to_numpy()
    repeated = np.flatnonzero((f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1]))
    if len(repeated):
        (uid,) = halves_to_arrow_uids(np.array([[f0[repeated[0]], f1[repeated[0]]]])).to_pylist()
        raise UserInputError(f"uid {uid} is repeated in the pool, so the kept set is not a set")
    pairs = np.empty(len(f0), dtype=SUBSET_DTYPE)
    pairs["f0"], pairs["f1"] = f0, f1
    _save_sorted(task.directory, task.bucket, pairs)
    shutil.rmtree(folder, ignore_errors=True)
    return len(pairs)


def _save_sorted(directory: Path, bucket: int, pairs: np.ndarray) -> None:
    """A bucket's kept uids, in order, as ``u8,u8`` pairs."""
    np.save(_sorted_path(directory, bucket), pairs)


def _sorted_path(directory: Path, bucket: int) -> Path:
    return directory / f"sorted-{bucket:05d}.npy"


@dataclass(frozen=True)
class _MarkTask:
    rows: ShardRows  # the shard minus every stage's removals
    out: Path  # its keep mask


@dataclass(frozen=True)
class _GatherTask:
    index: UidIndex
    bucket: int
    kept_file: Path
    directory: Path


def _mark_kept(task: _MarkTask) -> None:
    """Map: the shard's keep mask, a bool per row, into a file of its own (tasks on other
    machines never write into one shared file: a page of it could hold two shards' rows)."""
    mask = task.rows.mask()
    keep = np.ones(task.rows.shard.rows, dtype=bool) if mask is None else mask.to_numpy()
    np.save(task.out, keep)


def _keep_masks(plan: _Plan, shard_rows: list[ShardRows], directory: Path) -> list[Path]:
    """Per shard, its final keep mask: saved by the last stage's tasks, or made here from
    every stage's parts (when the last stage ran in the driver or is an older run's)."""
    if plan.stages:
        saved = plan.kept_masks(plan.stages[-1])
        if all(path.is_file() for path in saved):
            return saved
    marks = [_MarkTask(rows, directory / f"mask-{i:06d}.npy") for i, rows in enumerate(shard_rows)]
    list(plan.executor.map(_mark_kept, marks, threads_ok=True))
    return [mark.out for mark in marks]


def _join_masks(masks: list[Path], shards: Sequence[TableShard], kept_file: Path) -> int:
    """The shards' masks, in pool order, as one pool-wide keep file (a byte a row, streamed:
    one shard's mask in memory at a time); returns the rows kept."""
    rows = sum(shard.rows for shard in shards)
    kept = np.lib.format.open_memmap(kept_file, mode="w+", dtype=np.bool_, shape=(rows,))
    count = 0
    for mask, shard in zip(masks, shards, strict=True):
        keep = np.load(mask)
        if keep.shape != (shard.rows,):
            raise RuntimeError(f"{mask}: {keep.shape} rows, expected {shard.rows}")
        kept[shard.first_row : shard.first_row + shard.rows] = keep
        count += int(np.count_nonzero(keep))
    kept.flush()
    del kept
    return count


def _gather_bucket(task: _GatherTask) -> int:
    """Reduce: one bucket of the pool's sorted uid index, only its kept rows."""
    kept = np.load(task.kept_file, mmap_mode="r")
    pairs = kept_pairs(task.index, task.bucket, kept)
    _save_sorted(task.directory, task.bucket, pairs)
    return len(pairs)


def _write_kept_uids(plan: _Plan, removed: list[list[Path]], kept: int, staging: Path) -> None:
    """uids.npy of the kept samples, sorted: from the pool's uid index when
    it has one (mark the kept rows, gather them bucket by bucket: no uid decoded, none
    sorted), else through map -> reduce tasks (spill by prefix, sort each prefix); then
    streamed into the file in order."""
    directory = staging / KEPT_DIR
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    shard_rows = _shard_rows(plan, removed)
    index = UidIndex.open(plan.pool.root, sum(shard.rows for shard in plan.shards))
    if index is not None:
        kept_file = directory / "kept.npy"
        spilled = _join_masks(_keep_masks(plan, shard_rows, directory), plan.shards, kept_file)
        gathers = [_GatherTask(index, b, kept_file, directory) for b in range(index.buckets)]
        finished = plan.executor.map(_gather_bucket, gathers, threads_ok=True)
    else:
        bits = (max(1, -(-kept // KEPT_BUCKET_ROWS)) - 1).bit_length()  # 2**bits buckets
        tasks = [_KeptTask(rows, bits, directory) for rows in shard_rows]
        spilled = sum(plan.executor.map(_spill_kept, tasks, threads_ok=True))
        sorts = [_SortTask(bucket, directory) for bucket in range(1 << bits)]
        finished = plan.executor.map(_sort_bucket, sorts, threads_ok=True)
    written = _stream_kept_uids(directory, finished, kept, SubsetLayout(staging))
    if spilled != kept or written != kept:
        raise RuntimeError(f"kept {kept} samples but wrote {spilled} uids ({written} sorted)")
    shutil.rmtree(directory)


def _stream_kept_uids(
    directory: Path, finished: Iterator[int], kept: int, layout: SubsetLayout
) -> int:
    """Append each bucket's sorted uids to uids.npy as soon as its task finishes
    (``finished``: the tasks' counts, in bucket order), so writing overlaps the tasks still
    running; returns the uids written."""
    written = 0
    with atomic_path(layout.uids_npy) as npy_tmp, open(npy_tmp, "wb") as npy:
        descr = np.lib.format.dtype_to_descr(SUBSET_DTYPE)
        header = {"descr": descr, "fortran_order": False, "shape": (kept,)}
        np.lib.format.write_array_header_1_0(npy, header)  # the header np.save writes
        npy.flush()
        for bucket, _ in enumerate(finished):
            written += _append_npy_data(_sorted_path(directory, bucket), npy)
    return written


def _append_npy_data(path: Path, target: BinaryIO) -> int:
    """Append the data of the ``.npy`` file at ``path`` to ``target`` (flushed; its file
    position is the end); returns its rows."""
    with open(path, "rb") as source:
        header = read_npy_header(source)
        if header.dtype != SUBSET_DTYPE or len(header.shape) != 1:
            raise RuntimeError(f"{path}: {header.dtype} {header.shape}, expected u8,u8 pairs")
        size = header.shape[0] * SUBSET_DTYPE.itemsize
        _copy_range(source.fileno(), target.fileno(), header.offset, size)
    return header.shape[0]


def _copy_range(source: int, target: int, offset: int, count: int) -> None:
    """``count`` bytes of ``source`` from ``offset``, written at ``target``'s position: copied
    by the kernel where it can (Linux's copy_file_range: nothing through this process's
    memory), else through a buffer."""
    if hasattr(os, "copy_file_range"):
        try:
            while count:
                copied = os.copy_file_range(source, target, count, offset)
                if copied == 0:
                    raise RuntimeError(f"file descriptor {source} ends {count} bytes early")
                offset, count = offset + copied, count - copied
        except OSError as error:  # a file system or kernel without it: the buffer below
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    while count:
        chunk = os.pread(source, min(count, 16 << 20), offset)
        if not chunk:
            raise RuntimeError(f"file descriptor {source} ends {count} bytes early")
        written = os.write(target, chunk)
        offset, count = offset + written, count - written


def _kept_rows(plan: _Plan, removed: list[list[Path]]) -> pl.DataFrame:
    """Every column of the kept samples, with ``row`` (for resharding an image pool)."""
    columns = plan.pool.columns()
    frames = [rows.read(columns) for rows in _shard_rows(plan, removed)]
    rows = pl.concat(frames) if frames else pl.DataFrame()
    return rows.with_columns(pl.col(ROW).cast(pl.UInt32)) if rows.height else rows


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
    from curate.core.pool_writer import PoolWriter

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
    from curate.core.pool_writer import write_shard

    samples = _validated(_kept_samples(task.pool, task.kept))
    return write_shard(task.staging, task.shard_index, samples)


def _validated(samples: Iterator[SourceSample]) -> Iterator[ValidSample]:
    from curate.core.pool_writer import validate_sample

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
    from curate.core.pool_writer import CORE_COLUMNS, SourceSample

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
