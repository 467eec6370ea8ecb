"""The leaderboard's tables (polars frames) and the DuckDB database ``curate sql`` reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.core.errors import OutputExistsError
from curate.eval.collect import RunResult
from curate.leaderboard.groups import slug
from curate.leaderboard.model import Leaderboard
from curate.leaderboard.pairs import differences_table

DATABASE_FILE = "leaderboard.duckdb"
TABLE_NAMES = ("results", "runs", "leaderboard", "shift_er", "baseline_fits", "er_differences")


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
                    "extrapolated": shift.extrapolated,
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
            "extrapolated": summary.extrapolated,
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
            "residual_std_logit": spread and spread.residual_std_logit,
            "residual_std_acc": spread and spread.residual_std_accuracy,
            "id_min": spread and spread.id_min,
            "id_max": spread and spread.id_max,
        }
        for (id_task, shift_task), fit in sorted(leaderboard.fits.items())
        for spread in [leaderboard.spreads.get((id_task, shift_task))]
    ]
    return pl.DataFrame(rows, schema=_schema(_FITS_SCHEMA), strict=False)


def write_database(
    tables: dict[str, Any], out_dir: Path, overwrite: bool = True
) -> dict[str, Path]:
    """Write ``leaderboard.duckdb`` (one table per frame) and ``<table>.parquet`` atomically."""
    import duckdb

    from curate.core.atomic import atomic_path, exclusive_lock, write_parquet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    database = out_dir / DATABASE_FILE
    if database.exists() and not overwrite:
        raise OutputExistsError(f"{database} already exists; pass --overwrite to replace it")
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
    "multi_fit_rank": "int", "problem": "str", "extrapolated": "bool",
}  # fmt: skip


_LEADERBOARD_SCHEMA = {
    "comparability_key": "str", "rank": "int", "pool": "str", "recipe": "str", "scale": "str",
    "samples_seen": "int", "seeds": "ints", "n_seeds": "int", "run_ids": "strs",
    "average_er": "float", "id_acc": "float", "average_acc": "float", "extrapolated": "bool",
}  # fmt: skip


_FITS_SCHEMA = {
    "id_task": "str", "shift_task": "str", "slope": "float", "intercept": "float",
    "r2": "float", "n_points": "int", "source": "str", "residual_std_logit": "float",
    "residual_std_acc": "float", "id_min": "float", "id_max": "float",
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
