"""Imported external CLIPs (`curate import-results`) ranked among themselves.

They are never mixed with curate's own tiny-scale runs: every row has the setup key
``external:imagenet-testbed`` (their ER is measured against the ImageNet testbed's line, not
against curate's baseline runs) and they get their own table, ``external_leaderboard``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from curate.core.errors import UserInputError
from curate.core.layout import MANIFEST
from curate.core.manifest import read_manifest
from curate.eval.external_er import (
    AVERAGE,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    external_effective_robustness,
)
from curate.eval.external_results import (
    EXTERNAL_RESULTS_FILE,
    EXTERNAL_RESULTS_KIND,
    EXTERNAL_SCHEMA,
    check_unique_model_tasks,
)
from curate.eval.external_tasks import IMAGENET_SHIFTS

EXTERNAL_TABLE = "external_leaderboard"
"""Its table in leaderboard.duckdb (and external_leaderboard.parquet)."""
EXTERNAL_SETUP = "external:imagenet-testbed"
"""Comparability key of imported models: never ranked with curate's own runs."""
ID_TASK = "imagenet1k"
IMAGENET_TASKS = (ID_TASK, *IMAGENET_SHIFTS, "imagenet-o")
SEARCH_DEPTH = 4
_MODEL_COLUMNS = (
    "model",
    "arch",
    "pretrained",
    "training_data",
    "training_data_scale",
    "training_filter",
    "samples_seen",
)


def accuracy_column(task: str) -> str:
    """Leaderboard column of a task's accuracy: ``imagenet-a`` -> ``imagenet_a_acc``."""
    return task.replace("-", "_").replace("/", "_") + "_acc"


def find_external_results(roots: Iterable[Path]) -> list[Path]:
    """Folders written by `curate import-results` at or below ``roots`` (a few levels deep)."""
    found: dict[Path, None] = {}

    def walk(folder: Path, depth: int) -> None:
        if (folder / MANIFEST).is_file():
            if read_manifest(folder).kind == EXTERNAL_RESULTS_KIND:
                found[folder.resolve()] = None
            return  # never look inside a pool or another output
        if depth > 0:
            for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                if not child.name.startswith("."):
                    walk(child, depth - 1)

    for root in map(Path, roots):
        if root.is_dir():
            walk(root, SEARCH_DEPTH)
    return list(found)


def load_external_results(folders: Sequence[Path]) -> pl.DataFrame:
    """The long tables of several import folders; a model x task in two of them is an error."""
    frames = []
    for folder in folders:
        path = Path(folder) / EXTERNAL_RESULTS_FILE
        if not path.is_file():
            raise UserInputError(f"{folder}: {EXTERNAL_RESULTS_FILE} is missing; rerun import")
        frames.append(pl.read_parquet(path).select(list(EXTERNAL_SCHEMA)).cast(EXTERNAL_SCHEMA))
    table = pl.concat(frames) if frames else pl.DataFrame(schema=EXTERNAL_SCHEMA)
    check_unique_model_tasks(table)
    return table


def external_leaderboard(
    table: pl.DataFrame,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> pl.DataFrame:
    """One row per imported model, ranked by its mean effective robustness over the five
    ImageNet shifts against the testbed's lines (:mod:`curate.eval.external_er`).

    Columns: identity and training data, ImageNet-family accuracies (and ImageNet's Wilson
    interval), ER per shift, ``average_er`` with its bootstrap interval, ``extrapolated`` (the
    model's ImageNet accuracy lies outside the testbed fit set's range, so its ER leans on an
    extrapolated line), and ``rank`` (1 = most robust). Only models with all five shifts and an
    ImageNet accuracy inside the fit range are ranked; the others follow, unranked (null).
    """
    models = table.select(_MODEL_COLUMNS).unique("model", keep="first", maintain_order=True)
    imagenet = table.filter(pl.col("task").is_in(IMAGENET_TASKS))
    wide = imagenet.pivot(on="task", index="model", values="accuracy")
    for task in IMAGENET_TASKS:
        if task not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(task))
    wide = wide.select("model", *[pl.col(t).alias(accuracy_column(t)) for t in IMAGENET_TASKS])
    interval = table.filter(pl.col("task") == ID_TASK).select(
        "model",
        pl.col("ci_low").alias(f"{ID_TASK}_ci_low"),
        pl.col("ci_high").alias(f"{ID_TASK}_ci_high"),
    )
    counts = table.group_by("model").agg(
        n_tasks=pl.len().cast(pl.Int64), average_acc=pl.col("accuracy").mean()
    )
    er = external_effective_robustness(table, n_boot=n_boot, confidence=confidence, seed=seed).table
    per_shift = er.filter(pl.col("shift") != AVERAGE).pivot(
        on="shift", index="model", values="effective_robustness"
    )
    per_shift = per_shift.rename({c: _er_column(c) for c in per_shift.columns if c != "model"})
    for shift in IMAGENET_SHIFTS:
        if _er_column(shift) not in per_shift.columns:
            per_shift = per_shift.with_columns(pl.lit(None, pl.Float64).alias(_er_column(shift)))
    average = er.filter(pl.col("shift") == AVERAGE).select(
        "model",
        pl.col("effective_robustness").alias("average_er"),
        pl.col("er_low").alias("average_er_low"),
        pl.col("er_high").alias("average_er_high"),
        "extrapolated",
    )
    board = (
        models.join(wide, on="model", how="left")
        .join(interval, on="model", how="left")
        .join(counts, on="model", how="left")
        .join(per_shift.select("model", *map(_er_column, IMAGENET_SHIFTS)), on="model", how="left")
        .join(average, on="model", how="left")
    )
    ranked = pl.col("average_er").is_not_null() & ~pl.col("extrapolated").fill_null(True)
    return (
        board.sort(ranked, "average_er", "model", descending=[True, True, False], nulls_last=True)
        .with_columns(
            rank=pl.when(ranked).then(
                pl.col("average_er").rank("min", descending=True).over(ranked).cast(pl.Int64)
            ),
            comparability_key=pl.lit(EXTERNAL_SETUP),
            rank_by=pl.lit("average_er"),
        )
        .select("comparability_key", "rank", pl.exclude("comparability_key", "rank"))
    )


def _er_column(shift: str) -> str:
    return shift.replace("-", "_").replace("/", "_") + "_er"
