"""Which training data gives robust CLIPs? ER of published CLIPs grouped by their training data.

From the per-model ER of :mod:`curate.eval.external_er` this builds:

* ``by_data``: per training-data group and shift (the five shifts and their ``average``): the
  number of models, mean, standard deviation (ddof 1), min and max ER over the group's models,
  and the group's ``span`` (lowest ``er_low`` to highest ``er_high``: model spread plus each
  model's test-set and baseline-fit interval);
* ``by_arch``: the same with the network held fixed (ViT-B-32, ViT-B-16, ViT-L-14; the
  QuickGELU variant of an architecture counts as the same network);
* ``datacomp_filters``: DataComp's own filtering baselines at the large scale (ViT-B-16,
  1.28B samples seen, one model each);
* ``separation``: for each pair of groups (and within each fixed architecture), whether their
  spans overlap. Two groups *separate* only when their spans are disjoint; this is
  conservative (the baseline-fit part of the intervals is shared by all models);
* ``reading``: what the numbers say, in sentences, including where groups do not separate.

By default extrapolated models (ImageNet accuracy outside the testbed fit set's range) are
left out of every group number and counted; exact duplicate checkpoints (one published model
under two architecture names, e.g. ``RN50`` and ``RN50-quickgelu`` with tag ``openai``, with
identical accuracies) are counted once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.atomic import write_parquet, write_text
from curate.core.errors import InputNotFoundError, UserInputError
from curate.eval.external_er import (
    AVERAGE,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    INTERVAL_COVERS,
    SHIFT_TO_TESTBED,
    X_AXIS_FALLBACK,
    ExternalEr,
    external_effective_robustness,
)

FIXED_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
DATACOMP_FILTER_SCALE = "large"
SHIFTS = (*SHIFT_TO_TESTBED, AVERAGE)
GROUP = "training_data"
ARCH_COLUMNS = [
    "arch_family", "training_data", "n", "imagenet", "mean", "std", "min", "max", "span_low",
    "span_high", "models",
]  # fmt: skip
FILTER_COLUMNS = [
    "training_data", "model", "id_accuracy", "effective_robustness", "er_low", "er_high",
    "extrapolated",
]  # fmt: skip
TABLE_NAMES = ("models", "by_data", "by_arch", "datacomp_filters", "separation")


@dataclass(frozen=True)
class RobustnessByData:
    er: ExternalEr
    models: pl.DataFrame
    """Every model x shift ER row (duplicates dropped), extrapolated ones flagged."""
    by_data: pl.DataFrame
    by_arch: pl.DataFrame
    datacomp_filters: pl.DataFrame
    separation: pl.DataFrame
    duplicates: tuple[tuple[str, str], ...]
    """(dropped model, the identical model kept)."""
    include_extrapolated: bool
    id_accuracy_vs_er: float | None
    """Pearson r of ImageNet accuracy and average ER over the in-range models."""
    reading: tuple[str, ...]

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in TABLE_NAMES}


def load_results(source: Path | None = None) -> pl.DataFrame:
    """The external long table: the shipped open_clip table (None), an `import-results` folder,
    or one results file of any format `curate import-results` reads."""
    from curate.eval.external_results import (
        EXTERNAL_RESULTS_FILE,
        import_results,
        load_openclip_table,
    )

    if source is None:
        return load_openclip_table()
    source = Path(source)
    if source.is_dir():
        table = source / EXTERNAL_RESULTS_FILE
        if not table.is_file():
            raise InputNotFoundError(
                f"{source}: no {EXTERNAL_RESULTS_FILE}; make the folder with "
                "`curate import-results FILES... --out FOLDER`"
            )
        return pl.read_parquet(table)
    return import_results([source]).table


def drop_duplicate_checkpoints(models: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """Keep one of each set of models with the same tag, network and identical accuracies."""
    accuracy = models.pivot(
        on="shift", index="model", values="ood_accuracy", aggregate_function="first"
    )
    keys = models.select("model", "arch_family", "pretrained", "id_accuracy").unique("model")
    signature = keys.join(accuracy, on="model").sort("model")
    columns = [c for c in signature.columns if c != "model"]
    first = signature.group_by(columns, maintain_order=True).agg(
        pl.col("model").first().alias("kept"), pl.col("model").alias("all")
    )
    pairs = [
        (dropped, row["kept"]) for row in first.iter_rows(named=True) for dropped in row["all"][1:]
    ]
    dropped = [d for d, _ in pairs]
    return models.filter(~pl.col("model").is_in(dropped)), pairs


def group_summary(models: pl.DataFrame, by: list[str], include_extrapolated: bool) -> pl.DataFrame:
    """n, mean, std, min, max and span of ER per group and shift; extrapolated ones counted."""
    used = pl.lit(True) if include_extrapolated else ~pl.col("extrapolated")
    er = pl.col("effective_robustness").filter(used)
    summary = (
        models.group_by([*by, "shift"])
        .agg(
            n=er.count(),
            imagenet=pl.col("id_accuracy").filter(used).mean(),
            mean=er.mean(),
            std=er.std(ddof=1),
            min=er.min(),
            max=er.max(),
            span_low=pl.col("er_low").filter(used).min(),
            span_high=pl.col("er_high").filter(used).max(),
            n_extrapolated_excluded=(
                pl.lit(0) if include_extrapolated else pl.col("extrapolated").sum()
            ).cast(pl.Int64),
            x_axis=pl.col("x_axis").first(),
            models=pl.col("model").filter(used).sort().str.join(", "),
        )
        .with_columns(pl.col("n").cast(pl.Int64))
    )
    order = {shift: i for i, shift in enumerate(SHIFTS)}
    return summary.sort(
        pl.col("shift").replace_strict(order, default=len(order), return_dtype=pl.Int64),
        pl.col("mean"),
        *by,
        descending=[False, True, *([False] * len(by))],
        nulls_last=True,
    )


def separation_table(summary: pl.DataFrame, within: str | None = None) -> pl.DataFrame:
    """Pairs of groups (with in-range models) on the average: do their spans overlap?"""
    average = summary.filter((pl.col("shift") == AVERAGE) & (pl.col("n") > 0))
    rows = []
    scopes = average.partition_by(within, as_dict=True) if within else {("",): average}
    for scope, part in scopes.items():
        groups = part.sort("mean", descending=True).iter_rows(named=True)
        for a, b in itertools.combinations(groups, 2):
            ranges_overlap = a["min"] <= b["max"] and b["min"] <= a["max"]
            if None in (a["span_low"], a["span_high"], b["span_low"], b["span_high"]):
                overlap = ranges_overlap  # no intervals (no replicates): the model ranges
            else:
                overlap = a["span_low"] <= b["span_high"] and b["span_low"] <= a["span_high"]
            rows.append(
                {
                    "scope": scope[0],
                    "higher": a[GROUP],
                    "lower": b[GROUP],
                    "mean_higher": a["mean"],
                    "mean_lower": b["mean"],
                    "difference": a["mean"] - b["mean"],
                    "n_higher": a["n"],
                    "n_lower": b["n"],
                    "model_ranges_overlap": ranges_overlap,
                    "spans_overlap": overlap,
                    "separate": not overlap,
                }
            )
    schema = {
        "scope": pl.String,
        "higher": pl.String,
        "lower": pl.String,
        "mean_higher": pl.Float64,
        "mean_lower": pl.Float64,
        "difference": pl.Float64,
        "n_higher": pl.Int64,
        "n_lower": pl.Int64,
        "model_ranges_overlap": pl.Boolean,
        "spans_overlap": pl.Boolean,
        "separate": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def robustness_by_data(
    table: pl.DataFrame,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    include_extrapolated: bool = False,
) -> RobustnessByData:
    """Group the ER of every model in ``table`` (external long table) by training data."""
    er = external_effective_robustness(table, n_boot=n_boot, confidence=confidence, seed=seed)
    models = er.table.filter(pl.col("training_data").is_not_null())
    if models.height == 0:
        raise UserInputError(
            "no model with known training data and an ImageNet accuracy: nothing to group "
            "(curate knows the training data of open_clip's pretrained tags)"
        )
    models, duplicates = drop_duplicate_checkpoints(models)
    by_data = group_summary(models, [GROUP], include_extrapolated)
    in_arch = models.filter(pl.col("arch_family").is_in(FIXED_ARCHS))
    by_arch = group_summary(in_arch, ["arch_family", GROUP], include_extrapolated)
    filters = models.filter(
        (pl.col("training_data_scale") == DATACOMP_FILTER_SCALE)
        & pl.col("training_filter").is_not_null()
    ).sort("shift", "effective_robustness", descending=[False, True])
    separation = pl.concat(
        [
            separation_table(by_data).with_columns(pl.lit("all models").alias("scope")),
            separation_table(by_arch, within="arch_family"),
        ]
    )
    average = models.filter((pl.col("shift") == AVERAGE) & ~pl.col("extrapolated"))
    r = (
        float(np.corrcoef(average["id_accuracy"], average["effective_robustness"])[0, 1])
        if average.height > 2
        else None
    )
    result = RobustnessByData(
        er=er,
        models=models,
        by_data=by_data,
        by_arch=by_arch,
        datacomp_filters=filters,
        separation=separation,
        duplicates=tuple(duplicates),
        include_extrapolated=include_extrapolated,
        id_accuracy_vs_er=r,
        reading=(),
    )
    return replace(result, reading=tuple(_reading(result)))


# --- what the numbers say ---------------------------------------------------------------------


def pp(value: float | None, sign: bool = True) -> str:
    """A fraction as percentage points, ``+12.3``."""
    if value is None or value != value:
        return "n/a"
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def _reading(result: RobustnessByData) -> list[str]:
    lines = []
    low, high = result.er.id_range
    average = result.models.filter(pl.col("shift") == AVERAGE)
    extrapolated = average.filter(pl.col("extrapolated"))
    lines.append(
        f"{average.height} models have known training data, an ImageNet accuracy and all five "
        "shifts"
        + (
            f" (after counting {len(result.duplicates)} duplicates once)"
            if result.duplicates
            else ""
        )
        + ". "
        f"{extrapolated.height} lie outside the testbed fit set's ImageNet range "
        f"({pp(low, False)}-{pp(high, False)} %): their ER extrapolates the baseline line and "
        + (
            "is included in the group numbers (--include-extrapolated)."
            if result.include_extrapolated
            else "is listed per model but left out of every group number."
        )
        + (
            " Duplicates: the same published weights under two architecture names, with "
            "identical accuracies."
            if result.duplicates
            else ""
        )
    )
    if result.er.skipped:
        lines.append(
            "Incomplete results: "
            + "; ".join(f"{reason}: {count} models" for reason, count in result.er.skipped.items())
            + " (a model without every shift gets no average ER)."
        )
    if result.id_accuracy_vs_er is not None:
        lines.append(
            f"Among in-range models, average ER rises with ImageNet accuracy (Pearson r = "
            f"{result.id_accuracy_vs_er:.2f}): a group of larger models scores higher whatever "
            "its data, so compare groups within one architecture (the per-architecture table) "
            "before reading data into a difference."
        )
    empty = result.by_data.filter((pl.col("shift") == AVERAGE) & (pl.col("n") == 0))
    if empty.height:
        lines.append(
            "No in-range model, so no group number: "
            + ", ".join(sorted(empty[GROUP].to_list()))
            + " (all of their models lie outside the testbed's ImageNet range)."
        )
    lines += _separation_sentences(result)
    lines.append(
        "A group of one published checkpoint 'separates' from another only beyond test-set "
        "sampling and the baseline fit; training-seed variation is not measured, nor are "
        "prompt or evaluation-code differences between the models' published evaluations."
    )
    lines += _datacomp_sentences(result)
    lines.append(
        "ER on ObjectNet, ImageNet-R and ImageNet-A is measured against the testbed line on "
        f"full ImageNet accuracy ({X_AXIS_FALLBACK}); the testbed's published lines use "
        "ImageNet accuracy on each shift's classes, so those ERs are not the testbed's numbers. "
        f"Intervals cover {INTERVAL_COVERS}."
    )
    return lines


def _separation_sentences(result: RobustnessByData) -> list[str]:
    lines = []
    overall = result.by_data.filter((pl.col("shift") == AVERAGE) & (pl.col("n") > 0))
    if overall.height:
        top, bottom = overall.row(0, named=True), overall.row(-1, named=True)
        pairs = result.separation.filter(pl.col("scope") == "all models")
        multi = pairs.filter((pl.col("n_higher") > 1) & (pl.col("n_lower") > 1))
        lines.append(
            f"Across all in-range models, group means of average ER run from {pp(top['mean'])} "
            f"points ({top[GROUP]}, n {top['n']}) to {pp(bottom['mean'])} ({bottom[GROUP]}, "
            f"n {bottom['n']}). Of the {multi.height} pairs of groups with at least two models "
            f"each, {multi.filter(pl.col('model_ranges_overlap')).height} have overlapping "
            f"model ranges (min-max) and {multi.filter(~pl.col('separate')).height} overlapping "
            "spans (model ranges widened by each model's interval): those groups do not "
            "separate." + _separated_list(multi)
        )
    for arch in FIXED_ARCHS:
        part = result.by_arch.filter(
            (pl.col("arch_family") == arch) & (pl.col("shift") == AVERAGE) & (pl.col("n") > 0)
        )
        if part.height < 2:
            continue
        ranked = ", ".join(
            f"{row[GROUP]} {pp(row['mean'])}" + (f" (n {row['n']})" if row["n"] > 1 else "")
            for row in part.iter_rows(named=True)
        )
        pairs = result.separation.filter(pl.col("scope") == arch)
        together = pairs.filter(~pl.col("separate"))
        tracks = (
            f" (Pearson r of the groups' ImageNet accuracy and ER: "
            f"{np.corrcoef(part['imagenet'], part['mean'])[0, 1]:.2f})"
            if part.height > 2
            else ""
        )
        lines.append(
            f"{arch}, average ER: {ranked}{tracks}. {pairs.height - together.height} of "
            f"{pairs.height} pairs separate (disjoint spans)"
            + (
                "; overlapping: "
                + "; ".join(f"{r['higher']} / {r['lower']}" for r in together.iter_rows(named=True))
                + "."
                if together.height
                else "."
            )
        )
    return lines


def _separated_list(pairs: pl.DataFrame) -> str:
    separated = pairs.filter(pl.col("separate"))
    if separated.height == 0:
        return " No such pair separates."
    shown = "; ".join(
        f"{r['higher']} > {r['lower']} ({pp(r['difference'])})"
        for r in separated.head(8).iter_rows(named=True)
    )
    more = f" and {separated.height - 8} more" if separated.height > 8 else ""
    return f" Separated: {shown}{more}."


def _datacomp_sentences(result: RobustnessByData) -> list[str]:
    rows = result.datacomp_filters.filter(pl.col("shift") == AVERAGE)
    if rows.height == 0:
        return []
    best, worst = rows.row(0, named=True), rows.row(-1, named=True)
    outside = rows.filter(pl.col("extrapolated")).height
    unfiltered = rows.filter(pl.col("training_filter") == "none")
    base = f"; no filter: {pp(unfiltered['effective_robustness'][0])}" if unfiltered.height else ""
    return [
        f"DataComp's filtering baselines at the large scale (one model each, same network and "
        f"budget): average ER from {pp(best['effective_robustness'])} ({best[GROUP]}) to "
        f"{pp(worst['effective_robustness'])} ({worst[GROUP]}){base}. {outside} of "
        f"{rows.height} sit below the testbed's ImageNet range, so their ER is extrapolated and "
        "their ranking is not confirmed by a baseline in range."
    ]


# --- writing ----------------------------------------------------------------------------------


def _percent_columns(table: pl.DataFrame) -> pl.DataFrame:
    fractions = [
        c
        for c in (
            "mean", "std", "imagenet", "min", "max", "span_low", "span_high",
            "effective_robustness", "er_low", "er_high", "id_accuracy", "ood_accuracy",
            "predicted_ood_accuracy",
            "difference", "mean_higher", "mean_lower", *SHIFTS,
        )
        if c in table.columns
    ]  # fmt: skip
    return table.with_columns((pl.col(c) * 100).round(2) for c in fractions)


def markdown_table(table: pl.DataFrame, columns: list[str]) -> str:
    """A GitHub markdown table of ``columns`` (fractions shown as percentage points)."""
    shown = _percent_columns(table.select(columns))
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(
            "" if v is None else _cell(v, c not in UNSIGNED)
            for c, v in zip(columns, row, strict=True)
        )
        + " |"
        for row in shown.iter_rows()
    ]
    return "\n".join([header, rule, *body])


UNSIGNED = {"std", "imagenet", "id_accuracy", "ood_accuracy", "predicted_ood_accuracy"}
"""Columns shown without a sign (accuracies, spreads); every other number is an ER."""


def _cell(value: object, signed: bool = True) -> str:
    if isinstance(value, float):
        return (f"{value:+.1f}" if signed else f"{value:.1f}") if value == value else "n/a"
    return str(value)


def headline_table(result: RobustnessByData) -> pl.DataFrame:
    """Average ER by training data with each shift's group mean beside it (in-range models)."""
    by = result.by_data
    average = by.filter((pl.col("shift") == AVERAGE) & (pl.col("n") > 0)).select(
        GROUP, "n", "imagenet", "mean", "std", "min", "max", "n_extrapolated_excluded"
    )
    per_shift = by.filter(pl.col("shift") != AVERAGE).pivot(
        on="shift", index=GROUP, values="mean", aggregate_function="first"
    )
    return average.join(per_shift, on=GROUP, how="left")


def markdown_report(result: RobustnessByData, figure: str | None = None) -> str:
    headline = headline_table(result)
    lines = [
        "# Which data gives robust CLIPs? ER of published CLIPs by training data",
        "",
        "Effective robustness (ER, percentage points) of each model against the ImageNet "
        "testbed's baseline line (Taori et al. 2020), per shift and averaged over ImageNetV2, "
        "ImageNet-Sketch, ObjectNet, ImageNet-R and ImageNet-A.",
        "",
        "## What the numbers say",
        "",
        *[f"- {line}" for line in result.reading],
        "",
        "## Average ER by training data (in-range models)",
        "",
        markdown_table(headline, headline.columns),
        "",
    ]
    if figure:
        lines += [f"![ER of published CLIPs on the testbed lines]({figure})", ""]
    lines += ["## Architecture held fixed (average ER)", ""]
    arch = result.by_arch.filter((pl.col("shift") == AVERAGE) & (pl.col("n") > 0)).sort(
        pl.col("arch_family").replace_strict(
            {a: i for i, a in enumerate(FIXED_ARCHS)}, return_dtype=pl.Int64
        ),
        pl.col("mean"),
        descending=[False, True],
    )
    lines += [
        markdown_table(arch, ARCH_COLUMNS),
        "",
        "## DataComp's filtering baselines, large scale (average ER, one model each)",
        "",
        markdown_table(
            result.datacomp_filters.filter(pl.col("shift") == AVERAGE),
            FILTER_COLUMNS,
        ),
        "",
        "Pairs of groups, and whether they separate: `separation.csv`; every model and shift: "
        "`models.csv`.",
        "",
    ]  # fmt: skip
    if result.duplicates:
        lines += [
            "Duplicate checkpoints counted once: "
            + "; ".join(f"{d} (= {k})" for d, k in result.duplicates),
            "",
        ]
    lines += [
        f"Intervals: {result.er.confidence:.0%} percentile, {result.er.n_boot} replicates, seed "
        f"{result.er.seed}; they cover {INTERVAL_COVERS}.",
        "",
    ]
    return "\n".join(lines)


def write_tables(result: RobustnessByData, directory: Path) -> list[Path]:
    """Write every table as parquet and CSV, and ``robustness_by_data.md``, into ``directory``."""
    directory = Path(directory)
    written = []
    for name, table in result.tables().items():
        write_parquet(directory / f"{name}.parquet", table)
        csv_path = directory / f"{name}.csv"
        write_text(csv_path, table.write_csv())
        written += [directory / f"{name}.parquet", csv_path]
    return written
