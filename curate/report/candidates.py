"""What each stage of a candidate pool removed, how well it matched the ground truth, and
which samples to show for it.

Everything is read from the files build-pool wrote (stages.parquet, decisions.parquet,
ground_truth.parquet, recipe.yaml) and from the parent pool's samples.parquet; sample images
come from the parent pool's shards (the only place that also holds the removed samples).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.build_pool.build import GROUND_TRUTH
from curate.build_pool.ground_truth import CLEAN, NOISE_COLUMN, NOISY, ground_truth_report
from curate.core.candidate_pool import Subset
from curate.core.pool import Pool

ROW = "row"
TOP_REASONS = 3
KEPT_BY_RECIPE = "kept by the recipe"
SAMPLE_COLUMNS = ("uid", "text", "width", "height", "shard", "key", "image_ext")
# Reasons name uids and measured values; these patterns group them ("caption too short (# words)").
_UID_PATTERN = r"\b[0-9a-f]{32}\b"
_NUMBER_PATTERN = r"\b\d+(?:\.\d+)?\b"


@dataclass(frozen=True)
class StageCounts:
    index: int
    stage: str
    rows_in: int
    rows_out: int
    removed: int
    seconds: float
    top_reasons: tuple[tuple[str, int], ...]
    report: str  # the stage's own report, pretty JSON ("" when empty)

    @property
    def removed_share(self) -> float:
        return self.removed / self.rows_in if self.rows_in else 0.0


@dataclass(frozen=True)
class GroundTruthRow:
    """One stage (or the whole recipe) against the injected noise."""

    stage: str
    removed: int
    precision: float | None  # share of its removals that were noisy
    recall: float | None  # share of the noisy samples it saw that it removed
    recall_by_noise: Mapping[str, tuple[float | None, int]]  # noise type -> (recall, seen)


@dataclass(frozen=True)
class SampleCard:
    uid: str
    text: str
    width: int
    height: int
    noise: str | None
    reason: str | None
    image: str | None  # data URI, None when the image could not be read


@dataclass(frozen=True)
class StageSamples:
    stage_index: int
    stage: str
    removed: tuple[SampleCard, ...]
    kept: tuple[SampleCard, ...]


@dataclass(frozen=True)
class CandidateView:
    name: str
    anchor: str
    root: Path
    recipe: str
    recipe_text: str
    pool_name: str
    pool_path: str
    pool_count: int | None
    kept: int
    resharded: bool
    stages: tuple[StageCounts, ...]
    noise_types: tuple[str, ...]
    ground_truth: tuple[GroundTruthRow, ...]
    samples: tuple[StageSamples, ...]
    notes: tuple[str, ...]

    @property
    def kept_share(self) -> float | None:
        return self.kept / self.pool_count if self.pool_count else None


def reason_pattern(reason: pl.Expr) -> pl.Expr:
    """A removal reason with its uids and numbers blanked, to count reasons of one kind."""
    return reason.str.replace_all(_UID_PATTERN, "<uid>").str.replace_all(_NUMBER_PATTERN, "#")


def read_decisions(subset: Subset) -> pl.DataFrame:
    path = subset.layout.decisions
    if not path.is_file():
        return pl.DataFrame(
            schema={ROW: pl.UInt32, "stage_index": pl.Int64, "stage": pl.String,
                    "kept": pl.Boolean, "reason": pl.String}
        )  # fmt: skip
    from curate.core.decisions_view import subset_decisions  # the compact file, expanded

    return (
        subset_decisions(subset.root)
        .select(ROW, "stage_index", "stage", "kept", "reason")
        .collect()
        .cast({"stage_index": pl.Int64, "stage": pl.String, "reason": pl.String})
    )


def stage_counts(subset: Subset, decisions: pl.DataFrame) -> tuple[StageCounts, ...]:
    """Per stage: rows in and out, time, its most frequent kinds of reason, its report."""
    path = subset.layout.stages
    if not path.is_file():
        return ()
    stages = pl.read_parquet(path)
    reasons = (
        decisions.filter(~pl.col("kept"))
        .with_columns(reason_pattern(pl.col("reason").fill_null("")).alias("pattern"))
        .group_by("stage_index", "pattern")
        .agg(pl.len().alias("count"))
        .sort(["stage_index", "count", "pattern"], descending=[False, True, False])
    )
    by_stage: dict[int, list[tuple[str, int]]] = {}
    for index, pattern, count in reasons.iter_rows():
        if len(by_stage.setdefault(index, [])) < TOP_REASONS:
            by_stage[index].append((pattern or "(no reason given)", count))
    return tuple(
        StageCounts(
            index=int(row["stage_index"]),
            stage=row["stage"],
            rows_in=int(row["rows_in"]),
            rows_out=int(row["rows_out"]),
            removed=int(row["removed"]),
            seconds=float(row["seconds"]),
            top_reasons=tuple(by_stage.get(int(row["stage_index"]), ())),
            report=_pretty_report(row.get("report")),
        )
        for row in stages.sort("stage_index").iter_rows(named=True)
    )


def _pretty_report(text: str | None) -> str:
    if not text:
        return ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return json.dumps(value, indent=2, sort_keys=True) if value else ""


def ground_truth_table(
    subset: Subset, decisions: pl.DataFrame, pool_rows: pl.DataFrame | None
) -> pl.DataFrame | None:
    """build-pool's ground_truth.parquet, or the same report computed when it is missing and
    the parent pool's samples carry the ``noise`` column."""
    path = subset.root / GROUND_TRUTH
    if path.is_file():
        return pl.read_parquet(path)
    if pool_rows is None or NOISE_COLUMN not in pool_rows.columns or decisions.height == 0:
        return None
    return ground_truth_report(pool_rows.select(ROW, NOISE_COLUMN), decisions)


def ground_truth_rows(report: pl.DataFrame) -> tuple[tuple[str, ...], tuple[GroundTruthRow, ...]]:
    """(noise types, one row per stage and one for the whole recipe)."""
    noise_types = tuple(
        sorted(
            set(report["noise"].to_list()) - {NOISY},
            key=lambda noise: (noise == CLEAN, noise),
        )
    )
    rows = []
    for _, part in report.sort("stage_index").group_by("stage_index", maintain_order=True):
        by_noise = {
            noise: (recall, int(seen))
            for noise, recall, seen in part.select("noise", "recall", "seen").iter_rows()
        }
        noisy = part.filter(pl.col("noise") == NOISY)
        rows.append(
            GroundTruthRow(
                stage=part["stage"][0],
                removed=int(part.filter(pl.col("noise") != NOISY)["removed"].sum()),
                precision=noisy["precision"][0] if noisy.height else None,
                recall=noisy["recall"][0] if noisy.height else None,
                recall_by_noise={noise: by_noise.get(noise, (None, 0)) for noise in noise_types},
            )
        )
    return noise_types, tuple(rows)


def pool_rows(pool: Pool) -> pl.DataFrame:
    """The pool's samples with their row number (the ``row`` of decisions.parquet)."""
    available = pool.scan_samples().collect_schema().names()
    wanted = [c for c in (*SAMPLE_COLUMNS, NOISE_COLUMN) if c in available]
    return pool.samples(columns=wanted).with_row_index(ROW)


def pick_samples(
    subset: Subset, decisions: pl.DataFrame, pool_table: pl.DataFrame, per_group: int, seed: int
) -> pl.DataFrame:
    """Which samples to show: per stage up to ``per_group`` it removed (different kinds of
    reason first) and ``per_group`` it kept; a recipe without stages shows kept samples.

    Samples are drawn at random, preferring one shard (the same for every candidate pool of
    the pool) so that reading their images touches few shards of a large pool.
    Returns columns stage_index, stage, kept, row, reason.
    """
    if decisions.height == 0:
        kept_rows = pool_table.join(subset.uids().to_frame(), on="uid", how="semi")
        candidates = kept_rows.select(
            pl.lit(0, pl.Int64).alias("stage_index"),
            pl.lit(KEPT_BY_RECIPE).alias("stage"),
            pl.lit(True).alias("kept"),
            pl.col(ROW),
            pl.lit(None, pl.String).alias("reason"),
        )
    else:
        candidates = decisions
    shuffled = (
        candidates.with_columns(pl.col(ROW).cast(pl.UInt32))
        .join(pool_table.select(pl.col(ROW).cast(pl.UInt32), "shard"), on=ROW, how="left")
        .sample(fraction=1.0, shuffle=True, seed=seed)
        .with_columns(
            reason_pattern(pl.col("reason").fill_null("")).alias("pattern"),
            pl.col("shard").hash(seed).alias("shard_order"),
        )
        .sort("shard_order", maintain_order=True)
    )
    # Round-robin over the kinds of reason: the n-th sample of each kind before the (n+1)-th.
    turn = pl.int_range(pl.len()).over("stage_index", "kept", "pattern")
    chosen = (
        shuffled.with_columns(turn.alias("turn"))
        .sort(["stage_index", "kept", "turn"], maintain_order=True)
        .filter(pl.int_range(pl.len()).over("stage_index", "kept") < per_group)
    )
    return chosen.select("stage_index", "stage", "kept", ROW, "reason")


def stage_samples(
    picks: pl.DataFrame, pool_table: pl.DataFrame, thumbnails: Mapping[int, str]
) -> tuple[StageSamples, ...]:
    has_noise = NOISE_COLUMN in pool_table.columns
    detailed = picks.join(pool_table.with_columns(pl.col(ROW).cast(pl.UInt32)), on=ROW, how="left")
    groups = []
    for (index, stage), part in detailed.group_by("stage_index", "stage", maintain_order=True):
        cards: dict[bool, list[SampleCard]] = {True: [], False: []}
        for row in part.iter_rows(named=True):
            cards[row["kept"]].append(
                SampleCard(
                    uid=row["uid"],
                    text=row["text"],
                    width=int(row["width"]),
                    height=int(row["height"]),
                    noise=row[NOISE_COLUMN] if has_noise else None,
                    reason=row["reason"],
                    image=thumbnails.get(row[ROW]),
                )
            )
        groups.append(StageSamples(int(index), stage, tuple(cards[False]), tuple(cards[True])))
    return tuple(sorted(groups, key=lambda group: group.stage_index))


def candidate_view(
    subset: Subset,
    anchor: str,
    decisions: pl.DataFrame,
    picks: pl.DataFrame | None,
    pool_table: pl.DataFrame | None,
    thumbnails: Mapping[int, str],
) -> CandidateView:
    manifest = subset.manifest
    notes = []
    if subset.parent is None:
        notes.append(
            f"the parent pool {manifest.source.get('pool')} is missing: no sample images and no "
            "ground truth beyond ground_truth.parquet"
        )
    noise_types: tuple[str, ...] = ()
    truth: tuple[GroundTruthRow, ...] = ()
    report = ground_truth_table(subset, decisions, pool_table)
    if report is not None and report.height:
        noise_types, truth = ground_truth_rows(report)
    recipe_path = subset.layout.recipe
    extra: dict[str, Any] = manifest.extra or {}
    return CandidateView(
        name=manifest.name,
        anchor=anchor,
        root=subset.root,
        recipe=str(manifest.source.get("recipe") or ""),
        recipe_text=recipe_path.read_text("utf-8") if recipe_path.is_file() else "",
        pool_name=str(manifest.source.get("pool_name") or ""),
        pool_path=str(manifest.source.get("pool") or ""),
        pool_count=extra.get("pool_sample_count"),
        kept=manifest.sample_count,
        resharded=subset.resharded,
        stages=stage_counts(subset, decisions),
        noise_types=noise_types,
        ground_truth=truth,
        samples=(
            stage_samples(picks, pool_table, thumbnails)
            if picks is not None and pool_table is not None
            else ()
        ),
        notes=tuple(notes),
    )
