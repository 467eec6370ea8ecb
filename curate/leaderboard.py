"""The leaderboard: every scored run under some roots, grouped by pool and ranked by effective
robustness, written as a DuckDB database (and parquet exports) that ``curate sql`` can query.

Runs are grouped by (comparability key, pool, recipe, scale); the seeds of a group are
aggregated (mean, std, interval: :mod:`eval.er_uncertainty`). Runs marked ``baseline`` are not
ranked: they are the points of the baseline fit every group is measured against.

Two runs are comparable only when their ``comparability_key`` matches (same architecture,
samples seen, batch size, schedule, precision and eval task set). Ranks are computed within
a key, never across keys; :func:`require_comparable` refuses a mixed set unless the caller
asks for one table per key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from curate.er_pairs import PairDifference, differences_table, pairwise_differences
from curate.errors import UserInputError
from eval.baselines import tiny_baseline_fit
from eval.collect import KIND_ID, KIND_POOL_ID, RunResult, collect_runs
from eval.effective_robustness import LinearFit
from eval.er_uncertainty import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    ErEstimate,
    MultiIdErEstimate,
    estimate_er,
    estimate_multi_id_er,
    seed_spread,
)

DATABASE_FILE = "leaderboard.duckdb"
RANK_BY = ("er", "id", "average")
TABLE_NAMES = ("results", "runs", "leaderboard", "shift_er", "baseline_fits", "er_differences")


@dataclass(frozen=True)
class RunGroup:
    """The seeds of one pool, recipe and scale under one comparability key."""

    comparability_key: str
    pool: str
    recipe: str
    scale: str
    runs: tuple[RunResult, ...]

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs if run.seed is not None)

    @property
    def label(self) -> str:
        parts = (Path(self.pool).name, self.recipe, self.scale)
        return "/".join(dict.fromkeys(part for part in parts if part))  # unique, in order


@dataclass(frozen=True)
class ShiftSummary:
    id_task: str
    shift_task: str
    er: ErEstimate | None
    multi_id_er: MultiIdErEstimate | None
    problem: str | None = None


@dataclass(frozen=True)
class GroupSummary:
    group: RunGroup
    accuracy: dict[str, tuple[float, float | None]]
    id_tasks: tuple[str, ...]
    shifts: tuple[ShiftSummary, ...]
    rank: int | None = None

    @property
    def average_er(self) -> float | None:
        values = [shift.er.mean for shift in self.shifts if shift.er is not None]
        return float(np.mean(values)) if values else None

    @property
    def average_accuracy(self) -> float | None:
        values = [mean for mean, _ in self.accuracy.values()]
        return float(np.mean(values)) if values else None

    @property
    def id_accuracy(self) -> float | None:
        values = [self.accuracy[task][0] for task in self.id_tasks if task in self.accuracy]
        return float(np.mean(values)) if values else None

    def score(self, rank_by: str) -> float | None:
        return {"er": self.average_er, "id": self.id_accuracy, "average": self.average_accuracy}[
            rank_by
        ]


@dataclass(frozen=True)
class Leaderboard:
    summaries: tuple[GroupSummary, ...]
    baselines: tuple[RunResult, ...]
    fits: dict[tuple[str, str], LinearFit | None]
    rank_by: str
    differences: tuple[PairDifference, ...] = ()  # every pair of pools of one key, per shift

    @property
    def keys(self) -> list[str]:
        return sorted({summary.group.comparability_key for summary in self.summaries})

    def by_key(self) -> dict[str, list[GroupSummary]]:
        tables: dict[str, list[GroupSummary]] = {}
        for summary in self.summaries:
            tables.setdefault(summary.group.comparability_key, []).append(summary)
        return tables


def group_runs(runs: Iterable[RunResult]) -> list[RunGroup]:
    """Non-baseline runs grouped by (comparability key, pool, recipe, scale)."""
    grouped: dict[tuple[str, str, str, str], list[RunResult]] = {}
    for run in runs:
        if not run.baseline:
            key = (run.comparability_key, run.pool, run.recipe, run.scale)
            grouped.setdefault(key, []).append(run)
    return [RunGroup(*key, runs=tuple(members)) for key, members in sorted(grouped.items())]


def require_comparable(groups: Sequence[RunGroup], group_by_key: bool) -> None:
    """Refuse to put runs of different comparability keys in one ranking."""
    keys: dict[str, list[RunGroup]] = {}
    for group in groups:
        keys.setdefault(group.comparability_key, []).append(group)
    if len(keys) <= 1 or group_by_key:
        return
    described = "; ".join(
        f"{key[:12]}: {', '.join(group.label or group.pool for group in members)}"
        for key, members in sorted(keys.items())
    )
    raise UserInputError(
        f"these results come from {len(keys)} different training/eval setups (comparability "
        f"keys {described}); runs of different setups cannot be ranked side by side. Pass "
        "--group-by-key for one table per setup, or pass only the roots of one setup"
    )


def _summarize_group(
    group: RunGroup,
    baselines: Sequence[RunResult],
    fits: dict[tuple[str, str], LinearFit | None],
    n_boot: int,
    confidence: float,
    seed: int,
) -> GroupSummary:
    first = group.runs[0]
    tasks = [task for task, result in first.tasks.items() if result.accuracy is not None]
    accuracy = {}
    for task in tasks:
        values = [run.accuracy(task) for run in group.runs]
        if all(value is not None for value in values):
            accuracy[task] = seed_spread(values)
    pool_id_tasks = sorted(first.tasks_of_kind(KIND_POOL_ID))
    shifts = []
    for id_task, shift_task in sorted(first.shift_pairs()):
        if id_task not in accuracy or shift_task not in accuracy:
            continue
        fit = fits.get((id_task, shift_task))
        if fit is None:
            problem = (
                f"no ER: fewer than 2 baseline runs (of different ID accuracy) with {id_task} "
                f"and {shift_task}; train baselines with `curate baseline`"
            )
            shifts.append(ShiftSummary(id_task, shift_task, None, None, problem))
            continue
        er = estimate_er(
            group.runs, baselines, id_task, shift_task,
            n_boot=n_boot, confidence=confidence, seed=seed,
        )  # fmt: skip
        multi, problem = None, None
        if pool_id_tasks and pool_id_tasks[0] in accuracy:
            try:
                multi = estimate_multi_id_er(
                    group.runs, baselines, (id_task, pool_id_tasks[0]), shift_task
                )
            except UserInputError as error:
                problem = f"no multi-ID ER: {error}"
        shifts.append(ShiftSummary(id_task, shift_task, er, multi, problem))
    return GroupSummary(
        group=group,
        accuracy=accuracy,
        id_tasks=tuple(sorted(first.tasks_of_kind(KIND_ID))),
        shifts=tuple(shifts),
    )


def _baseline_fits(
    groups: Sequence[RunGroup], baselines: Sequence[RunResult]
) -> dict[tuple[str, str], LinearFit | None]:
    pairs = {pair for group in groups for run in group.runs for pair in run.shift_pairs()}
    pairs |= {pair for run in baselines for pair in run.shift_pairs()}
    fits: dict[tuple[str, str], LinearFit | None] = {}
    for id_task, shift_task in sorted(pairs):
        try:
            fits[(id_task, shift_task)] = tiny_baseline_fit(baselines, id_task, shift_task)
        except UserInputError:
            fits[(id_task, shift_task)] = None
    return fits


def _ranked(summaries: list[GroupSummary], rank_by: str) -> list[GroupSummary]:
    """Rank within each comparability key (best first; groups without a score last)."""
    ranked = []
    by_key: dict[str, list[GroupSummary]] = {}
    for summary in summaries:
        by_key.setdefault(summary.group.comparability_key, []).append(summary)
    for key in sorted(by_key):
        members = sorted(
            by_key[key],
            key=lambda s: (s.score(rank_by) is None, -(s.score(rank_by) or 0.0), s.group.label),
        )
        ranked.extend(replace(summary, rank=index) for index, summary in enumerate(members, 1))
    return ranked


def summarize(
    runs: Sequence[RunResult],
    *,
    rank_by: str = "er",
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Leaderboard:
    """Group, estimate ER for every group and shift, and rank (within comparability keys)."""
    if rank_by not in RANK_BY:
        raise UserInputError(f"--rank-by must be one of {', '.join(RANK_BY)}, not {rank_by!r}")
    baselines = [run for run in runs if run.baseline]
    groups = group_runs(runs)
    fits = _baseline_fits(groups, baselines)
    summaries = _ranked(
        [_summarize_group(group, baselines, fits, n_boot, confidence, seed) for group in groups],
        rank_by,
    )
    differences = pairwise_differences(
        summaries, baselines, n_boot=n_boot, confidence=confidence, seed=seed
    )
    return Leaderboard(tuple(summaries), tuple(baselines), fits, rank_by, tuple(differences))


def slug(task: str) -> str:
    """A task id as a SQL-friendly column name part: ``cinic10-imagenet`` -> ``cinic10_imagenet``"""
    return re.sub(r"[^0-9a-zA-Z]+", "_", task).strip("_").lower()


def _run_row(run: RunResult) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "pool": run.pool,
        "recipe": run.recipe,
        "scale": run.scale,
        "seed": run.seed,
        "samples_seen": run.samples_seen,
        "baseline": run.baseline,
        "comparability_key": run.comparability_key,
    }


def results_table(runs: Sequence[RunResult]) -> Any:
    import polars as pl

    rows = [
        {
            **_run_row(run),
            "task": task.task,
            "task_type": task.task_type,
            "kind": task.kind,
            "shift_of": task.shift_of,
            "acc1": task.accuracy,
            "n": task.n,
            "metrics": json.dumps(dict(task.metrics), sort_keys=True, default=str),
            "results_path": str(run.results_path),
        }
        for run in runs
        for task in run.tasks.values()
    ]
    return pl.DataFrame(rows, schema=_schema(_RESULTS_SCHEMA), strict=False)


def runs_table(runs: Sequence[RunResult]) -> Any:
    import polars as pl

    rows = [
        {
            **_run_row(run),
            "n_tasks": len(run.tasks),
            "results_path": str(run.results_path),
            "config": json.dumps(dict(run.config), sort_keys=True, default=str),
        }
        for run in runs
    ]
    return pl.DataFrame(rows, schema=_schema(_RUNS_SCHEMA), strict=False)


def shift_er_table(leaderboard: Leaderboard) -> Any:
    """One row per (group, shift): accuracies, ER with interval and fit, multi-ID ER and fit."""
    import polars as pl

    rows = []
    for summary in leaderboard.summaries:
        group = summary.group
        for shift in summary.shifts:
            er, multi = shift.er, shift.multi_id_er
            id_mean, id_std = summary.accuracy[shift.id_task]
            ood_mean, ood_std = summary.accuracy[shift.shift_task]
            rows.append(
                {
                    "comparability_key": group.comparability_key,
                    "pool": group.pool,
                    "recipe": group.recipe,
                    "scale": group.scale,
                    "n_seeds": len(group.runs),
                    "id_task": shift.id_task,
                    "shift_task": shift.shift_task,
                    "id_acc": id_mean,
                    "id_acc_std": id_std,
                    "ood_acc": ood_mean,
                    "ood_acc_std": ood_std,
                    "er": er and er.mean,
                    "er_std": er and er.std,
                    "er_ci_low": er and er.interval.low,
                    "er_ci_high": er and er.interval.high,
                    "er_ci_method": er and er.interval.method,
                    "er_image_se": er and er.image_se,
                    "baseline_refit": er and er.baseline_refit,
                    "fit_slope": er and er.fit.slope,
                    "fit_intercept": er and er.fit.intercept,
                    "fit_r2": er and er.fit.r_squared,
                    "fit_n": er and er.fit.n_points,
                    "multi_id_tasks": list(multi.id_tasks) if multi else None,
                    "multi_id_er": multi and multi.mean,
                    "multi_id_er_std": multi and multi.std,
                    "multi_fit_coefficients": list(multi.fit.coefficients) if multi else None,
                    "multi_fit_intercept": multi and multi.fit.intercept,
                    "multi_fit_r2": multi and multi.fit.r_squared,
                    "multi_fit_n": multi and multi.fit.n_points,
                    "multi_fit_rank": multi and multi.fit.rank,
                    "problem": shift.problem,
                }
            )
    return pl.DataFrame(rows, schema=_schema(_SHIFT_SCHEMA), strict=False)


def leaderboard_table(leaderboard: Leaderboard) -> Any:
    """One row per group: identity, seeds, accuracies, ER per shift, averages, rank."""
    import polars as pl

    rows = []
    for summary in leaderboard.summaries:
        group = summary.group
        row: dict[str, Any] = {
            "comparability_key": group.comparability_key,
            "rank": summary.rank,
            "pool": group.pool,
            "recipe": group.recipe,
            "scale": group.scale,
            "samples_seen": group.runs[0].samples_seen,
            "seeds": group.seeds,
            "n_seeds": len(group.runs),
            "run_ids": sorted(run.run_id for run in group.runs),
            "average_er": summary.average_er,
            "id_acc": summary.id_accuracy,
            "average_acc": summary.average_accuracy,
        }
        for task, (mean, std) in summary.accuracy.items():
            row[f"{slug(task)}_acc"] = mean
            row[f"{slug(task)}_acc_std"] = std
        for shift in summary.shifts:
            name = slug(shift.shift_task)
            row[f"{name}_er"] = shift.er and shift.er.mean
            row[f"{name}_er_ci_low"] = shift.er and shift.er.interval.low
            row[f"{name}_er_ci_high"] = shift.er and shift.er.interval.high
            row[f"{name}_multi_id_er"] = shift.multi_id_er and shift.multi_id_er.mean
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=_schema(_LEADERBOARD_SCHEMA))
    frame = pl.DataFrame(rows, infer_schema_length=None, strict=False)
    return frame.sort(["comparability_key", "rank"])


def baseline_fits_table(leaderboard: Leaderboard) -> Any:
    import polars as pl

    rows = [
        {
            "id_task": id_task,
            "shift_task": shift_task,
            "slope": fit and fit.slope,
            "intercept": fit and fit.intercept,
            "r2": fit and fit.r_squared,
            "n_points": fit.n_points if fit else 0,
            "source": fit.source if fit else None,
        }
        for (id_task, shift_task), fit in sorted(leaderboard.fits.items())
    ]
    return pl.DataFrame(rows, schema=_schema(_FITS_SCHEMA), strict=False)


def write_database(
    tables: dict[str, Any], out_dir: Path, overwrite: bool = True
) -> dict[str, Path]:
    """Write ``leaderboard.duckdb`` (one table per frame) and ``<table>.parquet`` atomically."""
    import duckdb

    from curate.atomic import atomic_path, exclusive_lock, write_parquet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    database = out_dir / DATABASE_FILE
    if database.exists() and not overwrite:
        raise FileExistsError(f"{database} already exists; pass --overwrite to replace it")
    written = {}
    with exclusive_lock(database):
        with atomic_path(database) as tmp:
            connection = duckdb.connect(str(tmp))
            try:
                for name, frame in tables.items():
                    connection.register("frame_view", frame.to_arrow())
                    connection.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame_view')
                    connection.unregister("frame_view")
            finally:
                connection.close()
        written["database"] = database
        for name, frame in tables.items():
            path = out_dir / f"{name}.parquet"
            write_parquet(path, frame)
            written[name] = path
    return written


def leaderboard_tables(runs: Sequence[RunResult], leaderboard: Leaderboard) -> dict[str, Any]:
    return {
        "results": results_table(runs),
        "runs": runs_table(runs),
        "leaderboard": leaderboard_table(leaderboard),
        "shift_er": shift_er_table(leaderboard),
        "baseline_fits": baseline_fits_table(leaderboard),
        "er_differences": differences_table(leaderboard.differences),
    }


def build_leaderboard(
    roots: Sequence[Path],
    out_dir: Path,
    *,
    rank_by: str = "er",
    group_by_key: bool = False,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[Leaderboard, dict[str, Path]]:
    """Collect results under ``roots``, rank them and write the database under ``out_dir``."""
    runs = collect_runs(roots)
    if not runs:
        raise UserInputError(
            f"no results found under {', '.join(map(str, roots))} (looked for "
            "results/<run_id>/results.jsonl); score a pool first (`curate score`)"
        )
    require_comparable(group_runs(runs), group_by_key)
    leaderboard = summarize(runs, rank_by=rank_by, n_boot=n_boot, confidence=confidence, seed=seed)
    written = write_database(leaderboard_tables(runs, leaderboard), out_dir)
    return leaderboard, written


def _percent(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _er_cell(er: ErEstimate | None) -> str:
    if er is None:
        return "-"
    low, high = er.interval.low, er.interval.high
    interval = "" if low is None else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * er.mean:+.1f}{interval}"


def rich_tables(leaderboard: Leaderboard) -> list[Any]:
    """One rich table per comparability key (accuracies and ER in percentage points)."""
    from rich.table import Table

    tables = []
    for key, summaries in leaderboard.by_key().items():
        shifts = sorted({(s.id_task, s.shift_task) for g in summaries for s in g.shifts})
        id_tasks = sorted({task for g in summaries for task in g.id_tasks})
        samples = summaries[0].group.runs[0].samples_seen
        table = Table(
            title=f"setup {key[:12]} (samples seen {samples}); ranked by {leaderboard.rank_by}",
            caption="accuracy % (mean ± std over seeds); ER in points [95% interval]",
        )
        for column in ("#", "pool", "recipe", "scale", "seeds"):
            table.add_column(column)
        for task in id_tasks:
            table.add_column(f"{task} acc", justify="right")
        for _, shift_task in shifts:
            table.add_column(f"{shift_task} acc", justify="right")
            table.add_column(f"{shift_task} ER", justify="right")
            table.add_column(f"{shift_task} multi-ID ER", justify="right")
        table.add_column("avg ER", justify="right")
        table.add_column("avg acc", justify="right")
        for summary in summaries:
            by_pair = {(s.id_task, s.shift_task): s for s in summary.shifts}
            cells = [
                str(summary.rank),
                Path(summary.group.pool).name,
                summary.group.recipe,
                summary.group.scale,
                f"{len(summary.group.runs)}: {summary.group.seeds}",
            ]
            cells += [_percent(*summary.accuracy.get(task, (None, None))) for task in id_tasks]
            for pair in shifts:
                shift = by_pair.get(pair)
                cells.append(_percent(*summary.accuracy.get(pair[1], (None, None))))
                cells.append(_er_cell(shift.er) if shift else "-")
                multi = shift.multi_id_er if shift else None
                cells.append("-" if multi is None else f"{100 * multi.mean:+.1f}")
            average = summary.average_er
            cells.append("-" if average is None else f"{100 * average:+.1f}")
            cells.append(_percent(summary.average_accuracy))
            table.add_row(*cells)
        tables.append(table)
        differences = [d for d in leaderboard.differences if d.comparability_key == key]
        if differences:
            tables.append(_differences_rich_table(key, differences))
    return tables


def _differences_rich_table(key: str, differences: Sequence[PairDifference]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"setup {key[:12]}: ER differences between pools (A ranked above B)",
        caption="points [95% interval]: paired bootstrap over test images + seed spreads",
    )
    for column in ("shift", "pool A", "pool B", "ER(A) − ER(B)", "significant"):
        table.add_column(column)
    for d in differences:
        interval = "" if d.low is None else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        table.add_row(
            d.shift_task, d.pool_a, d.pool_b, f"{100 * d.difference:+.1f}{interval}",
            ("yes" if d.significant else "no")
            + ("" if d.seed_noise_included else " (1 seed: test images only)"),
        )  # fmt: skip
    return table


_RESULTS_SCHEMA = {
    "run_id": "str", "pool": "str", "recipe": "str", "scale": "str", "seed": "int",
    "samples_seen": "int", "baseline": "bool", "comparability_key": "str", "task": "str",
    "task_type": "str", "kind": "str", "shift_of": "str", "acc1": "float", "n": "int",
    "metrics": "str", "results_path": "str",
}  # fmt: skip
_RUNS_SCHEMA = {
    "run_id": "str", "pool": "str", "recipe": "str", "scale": "str", "seed": "int",
    "samples_seen": "int", "baseline": "bool", "comparability_key": "str", "n_tasks": "int",
    "results_path": "str", "config": "str",
}  # fmt: skip
_SHIFT_SCHEMA = {
    "comparability_key": "str", "pool": "str", "recipe": "str", "scale": "str",
    "n_seeds": "int", "id_task": "str", "shift_task": "str", "id_acc": "float",
    "id_acc_std": "float", "ood_acc": "float", "ood_acc_std": "float", "er": "float",
    "er_std": "float", "er_ci_low": "float", "er_ci_high": "float", "er_ci_method": "str",
    "er_image_se": "float", "baseline_refit": "bool", "fit_slope": "float",
    "fit_intercept": "float", "fit_r2": "float", "fit_n": "int", "multi_id_tasks": "strs",
    "multi_id_er": "float", "multi_id_er_std": "float", "multi_fit_coefficients": "floats",
    "multi_fit_intercept": "float", "multi_fit_r2": "float", "multi_fit_n": "int",
    "multi_fit_rank": "int", "problem": "str",
}  # fmt: skip
_LEADERBOARD_SCHEMA = {
    "comparability_key": "str", "rank": "int", "pool": "str", "recipe": "str", "scale": "str",
    "samples_seen": "int", "seeds": "ints", "n_seeds": "int", "run_ids": "strs",
    "average_er": "float", "id_acc": "float", "average_acc": "float",
}  # fmt: skip
_FITS_SCHEMA = {
    "id_task": "str", "shift_task": "str", "slope": "float", "intercept": "float",
    "r2": "float", "n_points": "int", "source": "str",
}  # fmt: skip


def _schema(spec: dict[str, str]) -> dict[str, Any]:
    import polars as pl

    types = {
        "str": pl.String,
        "int": pl.Int64,
        "float": pl.Float64,
        "bool": pl.Boolean,
        "strs": pl.List(pl.String),
        "ints": pl.List(pl.Int64),
        "floats": pl.List(pl.Float64),
    }
    return {name: types[kind] for name, kind in spec.items()}
