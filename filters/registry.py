"""The stage registry: every filter and dedup stage is a function of the pool's table
(and embeddings where needed) that returns a keep-mask and a reason, registered by name
together with the pydantic model of its parameters (so recipes are validated before work)
and the columns of the samples table it reads (so a recipe that names a column the pool
lacks fails before any work, and build-pool reads only those columns).

How build-pool runs a stage (:mod:`curate.build_pool.build`):

- ``per_row`` stages (the answer for a sample depends on that sample alone: ``basic``,
  ``text_based``, ``where``, ``laion2b``, ``clip_score`` with a threshold) run shard by
  shard on the executor, each task reading its block of rows;
- stages with a ``prepare`` step (whole-pool rules: ``clip_score``'s fraction,
  ``exact_dedup``) first compute a small plan from the whole pool as map -> reduce tasks
  on the executor (a histogram per shard -> the threshold; uids by hash prefix -> the rows
  to drop), then run shard by shard with the plan in ``StageContext.plan``;
- the others (the embedding stages) run once, in the driver, over every surviving row.
  A stage registered with ``columns_on_demand`` gets the ``row`` column alone and reads its
  other columns for the rows it asks about (:meth:`StageContext.column_at`); a stage that
  answers with a :class:`ShardedAnswer` (a :class:`SparseResult`, or an answer left in its
  tasks' files) has its shards' decisions written by one task per shard. With both, the
  driver holds no value per row but the row's position.

Called directly, a stage function answers for whatever rows it is given, computing its own
plan when ``context.plan`` is None (tests and scripts use it so).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from curate.core.errors import UserInputError

if TYPE_CHECKING:
    from curate.core.executor import Executor
    from curate.core.pool import TableShard


class StageParams(BaseModel):
    """Base for stage parameters: unknown or mistyped fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


@dataclass(frozen=True)
class StageContext:
    """What a stage sees: the rows still in play (in pool order) and how to reach more.

    ``rows`` holds ``samples.parquet``'s columns for the surviving samples plus ``row``,
    the sample's index in ``samples.parquet`` (use it to index embeddings).
    """

    rows: pl.DataFrame
    pool_root: Path
    seed: int
    work_dir: Path  # scratch space for this stage (caches, indexes); may be reused on resume
    embeddings_name: str | None = None
    # where a stage's tasks run (a curate.core.executor.Executor; None: in this process), and
    # where FAISS runs (cpu or cuda): the embedding stages split their work into tasks
    executor: Any = field(default=None, compare=False)
    device: str = "cpu"
    plan: Any = None  # what the stage's prepare step computed over the whole pool, if any
    # the stage's columns that rows leaves out, and (column, positions into rows) -> that
    # column's values there, read when asked
    looked_up: tuple[str, ...] = ()
    lookup: Callable[[str, np.ndarray], pl.Series] | None = field(default=None, compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False)

    def has_column(self, name: str) -> bool:
        return name in self.rows.columns or name in self.looked_up

    def column_at(self, name: str, positions: np.ndarray) -> pl.Series:
        """Column ``name`` of ``rows[positions]``: from ``rows`` when it holds the column,
        else read for those rows alone (build-pool's driver holds no column but ``row``)."""
        return self.column_reader(name)(positions)

    def column_reader(self, name: str) -> Callable[[np.ndarray], pl.Series]:
        """:meth:`column_at` for the stage's tasks: a picklable reader of column ``name`` at
        given positions (build-pool's reads the shards that hold them)."""
        if name in self.rows.columns or self.lookup is None or name not in self.looked_up:
            return self.rows[name].gather
        return functools.partial(self.lookup, name)

    def image_embeddings(self) -> np.ndarray:
        """Float32 image embeddings of ``rows`` (row-aligned with ``rows``)."""
        return np.asarray(self._embeddings().image[self.rows["row"].to_numpy()], dtype=np.float32)

    def text_embeddings(self) -> np.ndarray:
        text = self._embeddings().text
        if text is None:
            raise ValueError(f"{self.pool_root}: embeddings have no text vectors")
        return np.asarray(text[self.rows["row"].to_numpy()], dtype=np.float32)

    def _embeddings(self) -> Any:
        from curate.core.embedding_store import load_embeddings

        if "embeddings" not in self._cache:
            self._cache["embeddings"] = load_embeddings(self.pool_root, self.embeddings_name)
        return self._cache["embeddings"]


@dataclass(frozen=True)
class StageResult:
    """keep[i] answers for ``rows[i]``; ``reason`` explains removals (one string, or one
    per row); ``score`` is the value the decision was made on, where there is one."""

    keep: np.ndarray
    reason: str | np.ndarray | pl.Series
    score: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)  # stage-specific stats for the log
    # the scores are this column of the samples table (not stored again with the decisions)
    score_column: str | None = None


class ShardedAnswer(Protocol):
    """A whole-pool stage's answer that build-pool writes shard by shard, one task per shard,
    so that no process holds a value per row: ``piece`` is the (small, picklable) answer for
    ``rows[start:start + count]`` and ``dense`` its value per row, computed in the task (from
    the few rows it names, or from the stage's task outputs on disk)."""

    @property
    def rows(self) -> int: ...

    @property
    def report(self) -> dict[str, Any]: ...

    def piece(self, start: int, count: int) -> ShardedAnswer: ...

    def dense(self) -> StageResult: ...


@dataclass(frozen=True)
class NamedReasons:
    """Reasons that name another row's uid, ``"<text> <uids[i]>"`` for the ``i``-th removed
    row, joined only when a piece's decisions are written: the driver holds the named uids
    (about 40 bytes each in Arrow), not every reason string (about 110 with its text)."""

    text: str
    uids: pl.Series

    def __len__(self) -> int:
        return self.uids.len()

    def __getitem__(self, part: slice) -> NamedReasons:
        return NamedReasons(self.text, self.uids[part])

    def series(self) -> pl.Series:
        return (self.text + " ") + self.uids


@dataclass(frozen=True)
class SparseResult:
    """A whole-pool stage's answer as the rows it is about, so that no process holds a value
    per row: ``removed`` (positions into the stage's ``rows``, ascending) with ``reason`` (one
    string, or one per removed row, or :class:`NamedReasons`), and ``scored`` (ascending) with
    ``score`` there; every other row is kept, with no score. build-pool writes each shard's
    decisions from its slice in one task per shard; :meth:`dense` is the per-row answer, for
    callers over few rows."""

    rows: int
    removed: np.ndarray
    reason: str | pl.Series | NamedReasons
    scored: np.ndarray | None = None
    score: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def piece(self, start: int, count: int) -> SparseResult:
        """The answer for ``rows[start:start + count]`` (positions made relative to it)."""
        low, high = np.searchsorted(self.removed, [start, start + count])
        reason = self.reason if isinstance(self.reason, str) else self.reason[low:high]
        scored = score = None
        if self.scored is not None and self.score is not None:
            first, last = np.searchsorted(self.scored, [start, start + count])
            scored, score = self.scored[first:last] - start, self.score[first:last]
        return SparseResult(count, self.removed[low:high] - start, reason, scored, score)

    def dense(self) -> StageResult:
        """The same answer as a value per row."""
        keep = np.ones(self.rows, dtype=bool)
        keep[self.removed] = False
        reason = self.reason.series() if isinstance(self.reason, NamedReasons) else self.reason
        if not isinstance(reason, str):
            reason = reason_column(self.rows, self.removed, reason)
        score = None
        if self.scored is not None and self.score is not None:
            score = np.full(self.rows, np.nan, dtype=np.float32)
            score[self.scored] = self.score
        return StageResult(keep=keep, reason=reason, score=score, report=self.report)


def reason_column(rows: int, removed: np.ndarray, reasons: pl.Series) -> pl.Series:
    """A reason per row: ``reasons[i]`` at row ``removed[i]``, null at every other row (the
    strings made for the removed rows only)."""
    return (
        pl.Series("reason", dtype=pl.String).extend_constant(None, rows).scatter(removed, reasons)
    )


def dense_result(result: StageResult | ShardedAnswer) -> StageResult:
    """A stage's answer as a value per row, however it was given."""
    return result if isinstance(result, StageResult) else result.dense()


StageFunction = Callable[[StageContext, Any], StageResult | ShardedAnswer]
ColumnsFunction = Callable[[Any, Sequence[str]], Sequence[str]]
"""(params, the samples table's columns) -> the columns the stage reads; raises
:class:`MissingColumnError` naming what is missing."""


class MissingColumnError(UserInputError):
    """A stage needs a column that the pool's samples table does not have."""


@dataclass(frozen=True)
class PlanContext:
    """What a stage's ``prepare`` step sees: the pool's shards (each task reads its own),
    the rows still in play per shard, and the executor to run map and reduce tasks on.

    ``survivors(shard)`` is a picklable reader of the shard's surviving rows; pass it to
    the tasks, never the rows themselves (the driver holds O(shards) state).
    """

    shards: tuple[TableShard, ...]
    survivors: tuple[Any, ...]  # per shard: a picklable SurvivorReader (see build_pool)
    executor: Executor
    pool_root: Path
    seed: int
    work_dir: Path
    embeddings_name: str | None = None


PrepareFunction = Callable[[PlanContext, Any], Any]


@dataclass(frozen=True)
class Stage:
    name: str
    params_model: type[StageParams]
    run: StageFunction
    needs_embeddings: bool
    columns: Sequence[str] | ColumnsFunction | None = None  # None: every column
    per_row: bool | Callable[[Any], bool] = False
    prepare: PrepareFunction | None = None
    merge_reports: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    columns_on_demand: bool = False

    def columns_for(self, params: Any, available: Sequence[str]) -> list[str]:
        """The columns this stage reads for ``params``; :class:`MissingColumnError` when the
        samples table (``available``) lacks one."""
        if self.columns is None:
            return list(available)
        wanted = (
            list(self.columns(params, available)) if callable(self.columns) else list(self.columns)
        )
        missing = [c for c in wanted if c not in available and c != "row"]
        if missing:
            raise MissingColumnError(
                f"stage {self.name} reads column(s) {', '.join(missing)}, which the samples "
                f"table does not have (it has {', '.join(available)})"
            )
        return [c for c in wanted if c != "row"]

    def runs_per_row(self, params: Any) -> bool:
        return bool(self.per_row(params) if callable(self.per_row) else self.per_row)

    def plans(self, params: Any) -> bool:
        """True when the stage needs its prepare step for these params."""
        return self.prepare is not None and not self.runs_per_row(params)


REGISTERED: dict[str, Stage] = {}  # filled as stage modules are imported; read via catalog


def register_stage(
    name: str,
    params_model: type[StageParams],
    *,
    needs_embeddings: bool = False,
    columns: Sequence[str] | ColumnsFunction | None = None,
    per_row: bool | Callable[[Any], bool] = False,
    prepare: PrepareFunction | None = None,
    merge_reports: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    columns_on_demand: bool = False,
) -> Callable[[StageFunction], StageFunction]:
    """Register a stage function under ``name``; :mod:`curate.filters.catalog` imports it.

    ``columns``: the samples-table columns it reads (a list, or a function of its params and
    the table's columns; None reads all). ``per_row``: the answer for a row depends on that
    row alone (a bool, or a function of the params), so it runs shard by shard.
    ``prepare``: a whole-pool step run before the shard-by-shard pass (map -> reduce on the
    executor); its answer reaches the stage as ``context.plan``. ``merge_reports``: how the
    shards' reports combine (default: numbers summed, equal values kept).
    ``columns_on_demand``: the stage reads its columns through
    :meth:`StageContext.column_at` only, for the rows it asks about, so that build-pool's
    driver need not hold them for every row.
    """

    def decorate(function: StageFunction) -> StageFunction:
        if name in REGISTERED:
            raise ValueError(f"stage {name!r} registered twice")
        REGISTERED[name] = Stage(
            name,
            params_model,
            function,
            needs_embeddings,
            columns=columns,
            per_row=per_row,
            prepare=prepare,
            merge_reports=merge_reports,
            columns_on_demand=columns_on_demand,
        )
        return function

    return decorate


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' reports as one: integers (counts) summed, nested dicts merged the same
    way, other values kept when the shards agree (else listed)."""
    merged: dict[str, Any] = {}
    for report in reports:
        for key, value in report.items():
            if key not in merged:
                merged[key] = value
            else:
                merged[key] = _merge_values(merged[key], value)
    return merged


def _merge_values(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return merge_reports([a, b])
    counts = isinstance(a, int) and isinstance(b, int)
    if counts and not isinstance(a, bool) and not isinstance(b, bool):
        return a + b
    return a if a == b else [a, b]
