"""Published CLIPs against the ImageNet testbed's lines, in the style of Fang et al. 2022, Fig. 1.

Fang et al., "Data Determines Distributional Robustness in Contrastive Language Image
Pre-training (CLIP)" (ICML 2022) plot ImageNet accuracy against shift accuracy on logit axes:
the testbed's standard ImageNet models in grey on their fitted line, the CLIPs above it. Here:
one panel per shift (x = full ImageNet accuracy; the testbed's fit set and its line on that
axis, ImageNet-A as its two pieces), CLIPs coloured by training data, extrapolated models
(ImageNet accuracy outside the fit set's range) hollow; a sixth panel shows each in-range
model's average ER by training data with the group mean.

:func:`publish_robustness_by_data` writes the whole ``curate robustness-by-data`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.atomic import atomic_path, staged_output
from curate.core.atomic import write_text as write_text_atomic
from curate.eval.effective_robustness import inverse_logit, logit
from curate.eval.external_er import AVERAGE, SHIFT_TO_TESTBED, X_AXIS_FALLBACK
from curate.eval.robustness_by_data import RobustnessByData, markdown_report, write_tables
from curate.report.plots import percent_ticks

FIGURE_NAME = "real_clips_er.png"
REPORT_NAME = "robustness_by_data.md"
SHIFT_TITLES = {
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNet-Sketch",
    "objectnet": "ObjectNet",
    "imagenet-r": "ImageNet-R",
    "imagenet-a": "ImageNet-A",
}
# training-data group -> colour family (prefix match, first wins); everything else is "other"
DATA_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("OpenAI WIT", "OpenAI WIT", "tab:blue"),
    ("LAION-400M", "LAION-400M", "tab:orange"),
    ("LAION-", "LAION-2B / 5B / aesthetic", "tab:red"),
    ("Merged-2B", "Merged-2B (EVA)", "tab:pink"),
    ("DataComp-1B", "DataComp-1B", "tab:green"),
    ("DataComp-", "DataComp / CommonPool S-XL", "yellowgreen"),
    ("CommonPool-", "DataComp / CommonPool S-XL", "yellowgreen"),
    ("DFN-", "DFN-2B / 5B", "tab:purple"),
    ("MetaCLIP-", "MetaCLIP", "tab:brown"),
    ("WebLI", "WebLI (SigLIP)", "tab:cyan"),
    ("YFCC-15M", "YFCC-15M / CC12M", "tab:olive"),
    ("CC12M", "YFCC-15M / CC12M", "tab:olive"),
)
OTHER = ("other", "black")
MIN_DRAWN_ID_ACCURACY = 0.15
"""Models below this ImageNet accuracy are left out of the shift panels (counted in the title):
they would stretch the logit axis far below the testbed's range."""


def data_family(training_data: str | None) -> tuple[str, str]:
    """(legend label, colour) of a training-data group."""
    for prefix, label, colour in DATA_FAMILIES:
        if training_data and training_data.startswith(prefix):
            return label, colour
    return OTHER


def _set_percent_axis(axis_setter, tick_setter, low: float, high: float) -> None:
    ticks = percent_ticks(*(float(v) for v in inverse_logit([low, high])), wanted=6)
    tick_setter([float(logit(t / 100)) for t in ticks], [f"{t:g}" for t in ticks])
    axis_setter(low, high)


def _shift_panel(axes, result: RobustnessByData, shift: str) -> None:
    from curate.eval.testbed import testbed_points

    fit = result.er.fits[shift]
    points = testbed_points(SHIFT_TO_TESTBED[shift], x_column=fit.x_column)
    rows = result.models.filter(
        (pl.col("shift") == shift) & (pl.col("id_accuracy") >= MIN_DRAWN_ID_ACCURACY)
    )
    x_all = np.concatenate([points.id_accuracy, rows["id_accuracy"].to_numpy()])
    y_all = np.concatenate([points.ood_accuracy, rows["ood_accuracy"].to_numpy()])
    x_low, x_high = float(logit(x_all.min())) - 0.2, float(logit(x_all.max())) + 0.2
    y_low, y_high = float(logit(y_all.min())) - 0.2, float(logit(y_all.max())) + 0.2
    axes.scatter(
        logit(points.id_accuracy), logit(points.ood_accuracy), s=10, color="grey", alpha=0.7,
        label=f"testbed standard models (fit set, n {fit.n_points})", zorder=2,
    )  # fmt: skip
    in_low, in_high = (float(v) for v in logit(fit.x_range))
    edges = [x_low, in_low, in_high, x_high]
    if fit.pivot is not None:
        edges.insert(2, float(logit(fit.pivot)))
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        if end <= start:
            continue
        grid = np.linspace(start, end, 50)
        inside = in_low <= (start + end) / 2 <= in_high
        predicted = fit.predict(inverse_logit(grid))
        axes.plot(
            grid, logit(predicted), color="dimgrey", linewidth=1.4 if inside else 0.9,
            linestyle="-" if inside else ":", zorder=3,
        )  # fmt: skip
    axes.plot([], [], color="dimgrey", label="testbed line (dotted: extrapolated)")
    for training_data, part in rows.group_by("training_data"):
        label, colour = data_family(training_data[0])
        for extrapolated, sub in part.group_by("extrapolated"):
            hollow = bool(extrapolated[0])
            axes.scatter(
                logit(sub["id_accuracy"].to_numpy()), logit(sub["ood_accuracy"].to_numpy()),
                s=18, zorder=4, linewidths=0.9, edgecolors=colour,
                facecolors="none" if hollow else colour,
            )  # fmt: skip
    _set_percent_axis(axes.set_xlim, axes.set_xticks, x_low, x_high)
    _set_percent_axis(axes.set_ylim, axes.set_yticks, y_low, y_high)
    axes.grid(color="lightgray", linewidth=0.5)
    axis_note = (
        "\n(x: full ImageNet; class-restricted unavailable)"
        if rows["x_axis"][0] == X_AXIS_FALLBACK
        else ""
    )
    axes.set_title(SHIFT_TITLES.get(shift, shift) + axis_note, fontsize=9)
    axes.set_xlabel("ImageNet accuracy (%, logit)", fontsize=8)
    axes.set_ylabel(f"{SHIFT_TITLES.get(shift, shift)} accuracy (%, logit)", fontsize=8)
    axes.tick_params(labelsize=7)


def _average_panel(axes, result: RobustnessByData) -> None:
    summary = result.by_data.filter((pl.col("shift") == AVERAGE) & (pl.col("n") > 0)).sort("mean")
    rows = result.models.filter((pl.col("shift") == AVERAGE) & ~pl.col("extrapolated"))
    groups = summary["training_data"].to_list()
    for position, group in enumerate(groups):
        _, colour = data_family(group)
        values = 100 * rows.filter(pl.col("training_data") == group)["effective_robustness"]
        axes.scatter(values, np.full(len(values), position), s=14, color=colour, zorder=3)
        mean = 100 * float(summary.filter(pl.col("training_data") == group)["mean"][0])
        axes.plot([mean, mean], [position - 0.35, position + 0.35], color="black", linewidth=1.2)
    axes.set_yticks(range(len(groups)), groups, fontsize=6.5)
    axes.set_xlabel("average ER over the 5 shifts (points)", fontsize=8)
    axes.set_title("Average ER by training data\n(dots: in-range models; bar: mean)", fontsize=9)
    axes.grid(axis="x", color="lightgray", linewidth=0.5)
    axes.tick_params(axis="x", labelsize=7)


def plot_external_er(result: RobustnessByData, path: Path) -> Path:
    """Write the six-panel figure (PNG) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, grid = plt.subplots(2, 3, figsize=(15, 9.5))
    panels = grid.ravel()
    for axes, shift in zip(panels[:5], SHIFT_TO_TESTBED, strict=True):
        _shift_panel(axes, result, shift)
    _average_panel(panels[5], result)
    present = dict.fromkeys(data_family(g) for g in result.models["training_data"].unique().sort())
    handles = [
        Line2D([], [], marker="o", linestyle="", color="grey", markersize=4,
               label="testbed standard models (fit set)"),
        Line2D([], [], color="dimgrey", label="testbed line (dotted: outside its range)"),
        *[Line2D([], [], marker="o", linestyle="", color=colour, label=label)
          for label, colour in present],
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
               markeredgecolor="black", label="hollow: ImageNet accuracy outside the fit range"),
    ]  # fmt: skip
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    average = result.models.filter(pl.col("shift") == AVERAGE)
    hidden = average.filter(pl.col("id_accuracy") < MIN_DRAWN_ID_ACCURACY).height
    figure.suptitle(
        "Published CLIPs vs the ImageNet testbed's standard models "
        "(Taori et al. 2020; style of Fang et al. 2022, Fig. 1)"
        + (
            f"\n{hidden} models under {MIN_DRAWN_ID_ACCURACY:.0%} ImageNet accuracy not drawn "
            "(all extrapolated)"
            if hidden
            else ""
        ),
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 0.96))
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def publish_robustness_by_data(
    result: RobustnessByData, out: Path, *, overwrite: bool = False, figure: bool = True
) -> list[Path]:
    """Write ``out``: every table (parquet + CSV), ``robustness_by_data.md`` and the figure."""
    out = Path(out).resolve()
    with staged_output(out, overwrite=overwrite) as staging:
        written = write_tables(result, staging)
        if figure:
            written.append(plot_external_er(result, staging / FIGURE_NAME))
        report = staging / REPORT_NAME
        write_text_atomic(report, markdown_report(result, FIGURE_NAME if figure else None))
        written.append(report)
    return [out / path.name for path in written]


EXTERNAL_DIR = "real_clips"


@dataclass(frozen=True)
class ExternalView:
    """The report page's section on published CLIPs (``curate report --external``)."""

    source: str
    png_uri: str
    png_file: str
    report_file: str
    reading: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def external_view(
    source: Path | None, out_dir: Path, *, n_boot: int, confidence: float, seed: int
) -> ExternalView:
    """Compute ER by training data for ``source`` and write its files under ``out_dir``."""
    from curate.eval.robustness_by_data import headline_table, load_results, robustness_by_data
    from curate.report.images import data_uri

    result = robustness_by_data(
        load_results(source), n_boot=n_boot, confidence=confidence, seed=seed
    )
    folder = Path(out_dir) / EXTERNAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_tables(result, folder)
    png = plot_external_er(result, folder / FIGURE_NAME)
    write_text_atomic(folder / REPORT_NAME, markdown_report(result, FIGURE_NAME))
    headline = headline_table(result)
    rows = tuple(
        tuple(
            _html_cell(value, column) for column, value in zip(headline.columns, row, strict=True)
        )
        for row in headline.iter_rows()
    )
    return ExternalView(
        source=str(source) if source is not None else "open_clip's published results (shipped)",
        png_uri=data_uri(png.read_bytes(), "image/png"),
        png_file=f"{EXTERNAL_DIR}/{FIGURE_NAME}",
        report_file=f"{EXTERNAL_DIR}/{REPORT_NAME}",
        reading=result.reading,
        columns=tuple(headline.columns),
        rows=rows,
    )


def _html_cell(value: object, column: str) -> str:
    from curate.eval.robustness_by_data import UNSIGNED

    if value is None:
        return ""
    if isinstance(value, float):
        return f"{100 * value:.1f}" if column in UNSIGNED else f"{100 * value:+.1f}"
    return str(value)
