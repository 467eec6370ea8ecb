"""How well each stage removes the noise a demo pool was built with.

The demo pool marks every sample in ``samples.parquet``'s ``noise`` column: ``clean`` or the
kind of noise injected (mismatched_caption, spam_caption, exact_duplicate, near_duplicate,
off_topic, tiny, extreme_aspect). Against that ground truth, for each stage:

- precision of its removals: the fraction of the samples it removed that are noisy;
- recall: the fraction of the noisy samples it saw that it removed.

Per noise type, ``recall`` is the share of that type's samples (among those the stage saw)
that it removed, and ``precision`` the share of the stage's removals that are of that type.
The last block (stage ``all stages``) judges the whole recipe against the whole pool.

Duplicates are judged as pairs: a duplicate's ``duplicate_of`` names the clean original it
copies, and removing either copy removes the redundancy. When a stage keeps the duplicate and
removes its original (dedup keeps the lowest pool row, wherever the copy landed), the two
swap labels for that stage, so that a perfect deduplicator scores a perfect precision.
"""

from __future__ import annotations

import polars as pl

NOISE_COLUMN = "noise"
CLEAN = "clean"
NOISY = "noisy"  # all noise types together
DUPLICATE_OF = "duplicate_of"
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")
ALL_STAGES = "all stages"


def ground_truth_report(
    samples: pl.DataFrame | pl.LazyFrame, decisions: pl.DataFrame | pl.LazyFrame
) -> pl.DataFrame:
    """Precision and recall of removals per stage and noise type.

    ``samples``: columns ``row`` and ``noise`` (``uid`` and ``duplicate_of`` where there are
    duplicates); ``decisions``: ``row``, ``stage_index``, ``stage``, ``kept`` (one row per
    sample and stage that saw it). Lazy frames (e.g. ``pl.scan_parquet`` of
    decisions.parquet) are read with the streaming engine, in bounded memory.
    Returns columns stage_index, stage, noise, seen, removed, precision, recall.
    """
    samples, decisions = samples.lazy(), decisions.lazy()
    columns = samples.collect_schema().names()

    def optional(name: str) -> pl.Expr:
        return pl.col(name) if name in columns else pl.lit(None, pl.String)

    labels = samples.select(
        pl.col("row"),
        optional("uid").alias("uid"),
        pl.col(NOISE_COLUMN).cast(pl.String).fill_null(CLEAN).alias("noise"),
        optional(DUPLICATE_OF).alias(DUPLICATE_OF),
    )
    last_index = decisions.select(pl.col("stage_index").max()).collect().item()
    stage_count = 0 if last_index is None else int(last_index) + 1
    removed_rows = (
        decisions.filter(~pl.col("kept")).select("row").unique().with_columns(removed=True)
    )
    whole_recipe = labels.join(removed_rows, on="row", how="left").select(
        pl.lit(stage_count, pl.Int64).alias("stage_index"),
        pl.lit(ALL_STAGES).alias("stage"),
        pl.col("row"),
        pl.col("removed").is_null().alias("kept"),
    )
    per_stage = decisions.select(
        pl.col("stage_index").cast(pl.Int64), pl.col("stage").cast(pl.String), "row", "kept"
    )
    seen = _swap_duplicate_pairs(
        pl.concat([per_stage, whole_recipe]).join(labels, on="row", how="left")
    )

    by_type = seen.group_by("stage_index", "stage", "noise").agg(
        pl.len().alias("seen"), (~pl.col("kept")).sum().alias("removed")
    )
    noisy = (
        seen.filter(pl.col("noise") != CLEAN)
        .group_by("stage_index", "stage")
        .agg(pl.len().alias("seen"), (~pl.col("kept")).sum().alias("removed"))
        .with_columns(pl.lit(NOISY).alias("noise"))
        .select("stage_index", "stage", "noise", "seen", "removed")
    )
    removed_by_stage = by_type.group_by("stage_index").agg(
        pl.col("removed").sum().alias("removed_by_stage")
    )
    cast = {"seen": pl.Int64, "removed": pl.Int64}
    report = (
        pl.concat([noisy.cast(cast), by_type.cast(cast)])
        .join(removed_by_stage, on="stage_index", how="left")
        .with_columns(
            pl.when(pl.col("removed_by_stage") > 0)
            .then(pl.col("removed") / pl.col("removed_by_stage"))
            .alias("precision"),
            pl.when(pl.col("seen") > 0).then(pl.col("removed") / pl.col("seen")).alias("recall"),
            (pl.col("noise") != NOISY).alias("_order"),
        )
        .sort("stage_index", "_order", "noise")
        .drop("_order", "removed_by_stage")
    )
    return report.collect(engine="streaming")


def _swap_duplicate_pairs(seen: pl.LazyFrame) -> pl.LazyFrame:
    """Where a stage kept a duplicate but removed its original, swap their labels."""
    kept_copies = seen.filter(
        pl.col("kept") & pl.col("noise").is_in(DUPLICATE_KINDS) & pl.col(DUPLICATE_OF).is_not_null()
    ).select("stage_index", copy_row="row", copy_noise="noise", uid=DUPLICATE_OF)
    removed = seen.filter(~pl.col("kept")).select("stage_index", "uid", "row", "noise")
    pairs = (
        kept_copies.join(removed, on=["stage_index", "uid"])
        .group_by("stage_index", "row")  # one copy per original: the lowest row
        .agg(
            pl.col("noise").first(),
            pl.col("copy_noise").sort_by("copy_row").first(),
            pl.col("copy_row").min(),
        )
    )
    relabel = pl.concat(
        [
            pairs.select("stage_index", "row", new_noise="copy_noise"),
            pairs.select("stage_index", row="copy_row", new_noise="noise"),
        ]
    )
    return (
        seen.join(relabel, on=["stage_index", "row"], how="left")
        .with_columns(pl.coalesce("new_noise", "noise").alias("noise"))
        .drop("new_noise")
    )


def noisy_summary(report: pl.DataFrame) -> dict[int, tuple[float | None, float | None]]:
    """(precision, recall) of all noise together, by stage index (the recipe last)."""
    rows = report.filter(pl.col("noise") == NOISY)
    return {
        index: (precision, recall)
        for index, precision, recall in rows.select("stage_index", "precision", "recall").rows()
    }
