"""ID vs OOD accuracy plots on logit axes, the way the robustness literature draws them.

One plot per ID -> shift pair: the baseline runs, their logit-linear fit, the y = x line and
each pool's point (mean over seeds) with error bars: the seed spread (+- std) when a pool has
several seeds, else the 95% bootstrap interval of its accuracy over test images. Axes are in
logit units with ticks labelled in percent. Written as PNG and SVG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.eval.effective_robustness import LinearFit, inverse_logit, logit

if TYPE_CHECKING:
    from curate.eval.collect import RunResult
    from curate.leaderboard.model import Leaderboard

_TICK_TIERS = (
    (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99),
    (2, 98, 15, 25, 35, 45, 55, 65, 75, 85, 3, 97),
    tuple(range(1, 100)),
    (0.5, 99.5, 0.2, 99.8, 0.1, 99.9, 0.05, 99.95, 0.02, 99.98, 0.01, 99.99),
)


@dataclass(frozen=True)
class PlotPoint:
    """One pool's point; the bounds are absolute accuracies (fractions) or None."""

    label: str
    id_accuracy: float
    ood_accuracy: float
    id_bounds: tuple[float, float] | None = None
    ood_bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class FitPiece:
    """One line of a piecewise baseline and the ID accuracies (fractions) it covers: from
    ``low`` (None: no bound) up to, not including, ``high``."""

    fit: LinearFit
    low: float | None = None
    high: float | None = None
    label: str = ""


@dataclass(frozen=True)
class PairPlot:
    id_task: str
    shift_task: str
    baseline_id: np.ndarray
    baseline_ood: np.ndarray
    fit: LinearFit | None
    points: tuple[PlotPoint, ...]
    title: str = ""
    baseline_label: str = "ID-only baseline runs"
    setup_key: str = ""
    # baselines of other families (e.g. on the pool's own distribution): drawn, not fitted
    other_id: np.ndarray = field(default_factory=lambda: np.empty(0))
    other_ood: np.ndarray = field(default_factory=lambda: np.empty(0))
    # a baseline of several lines, each over its own ID range (the testbed's ImageNet-A),
    # drawn instead of ``fit``
    fit_pieces: tuple[FitPiece, ...] = ()

    @property
    def file_stem(self) -> str:
        from curate.leaderboard.groups import slug

        stem = f"{slug(self.id_task)}__{slug(self.shift_task)}"
        return f"{stem}__{self.setup_key[:12]}" if self.setup_key else stem


def percent_ticks(low: float, high: float, wanted: int = 8) -> list[float]:
    """Tick positions (percent) between two accuracies, spaced evenly enough on a logit axis."""
    span = float(logit(high) - logit(low))
    spacing = span / (wanted + 2)
    chosen: list[float] = []
    for tier in _TICK_TIERS:
        for percent in tier:
            position = float(logit(percent / 100))
            inside = low <= percent / 100 <= high
            if inside and all(abs(position - float(logit(c / 100))) >= spacing for c in chosen):
                chosen.append(percent)
        if len(chosen) >= wanted // 2:
            break
    return sorted(chosen)


def _axis_range(accuracies: Sequence[float]) -> tuple[float, float]:
    """Logit-axis limits around the accuracies, padded by 8% (at least 0.25 logit)."""
    values = logit(accuracies)
    pad = max(0.08 * float(values.max() - values.min()), 0.25)
    return float(values.min() - pad), float(values.max() + pad)


def _logit_error(centre: float, bounds: tuple[float, float] | None) -> np.ndarray | None:
    if bounds is None:
        return None
    low, high = bounds
    return np.array([[logit(centre) - logit(low)], [logit(high) - logit(centre)]])


def plot_pair(pair: PairPlot, out_stem: Path) -> list[Path]:
    """Draw one pair and write ``<out_stem>.png`` and ``<out_stem>.svg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curate.core.atomic import atomic_path

    id_values = [*pair.baseline_id, *pair.other_id, *(p.id_accuracy for p in pair.points)]
    ood_values = [*pair.baseline_ood, *pair.other_ood, *(p.ood_accuracy for p in pair.points)]
    for point in pair.points:
        id_values += [*(point.id_bounds or ())]
        ood_values += [*(point.ood_bounds or ())]
    x_low, x_high = _axis_range(id_values)
    y_low, y_high = _axis_range(ood_values)

    figure, axes = plt.subplots(figsize=(7, 6.5))
    line = np.linspace(min(x_low, y_low), max(x_high, y_high), 200)
    axes.plot(line, line, linestyle="--", color="black", linewidth=1, label="y = x")
    if len(pair.baseline_id):
        axes.scatter(
            logit(pair.baseline_id), logit(pair.baseline_ood),
            color="tab:blue", alpha=0.6, s=28, label=pair.baseline_label, zorder=3,
        )  # fmt: skip
    if len(pair.other_id):
        axes.scatter(
            logit(pair.other_id), logit(pair.other_ood), marker="s", facecolors="none",
            edgecolors="tab:gray", s=32, zorder=3,
            label="other baseline family (multi-ID plane only, not in this fit)",
        )  # fmt: skip
    for xs, ys, label in fit_segments(pair, line):
        axes.plot(xs, ys, color="tab:red", linewidth=1.5, label=label)
    colours = plt.get_cmap("tab10")
    for index, point in enumerate(pair.points):
        colour = colours((index + 1) % 10)
        x, y = float(logit(point.id_accuracy)), float(logit(point.ood_accuracy))
        axes.errorbar(
            x, y,
            xerr=_logit_error(point.id_accuracy, point.id_bounds),
            yerr=_logit_error(point.ood_accuracy, point.ood_bounds),
            fmt="o", color=colour, capsize=3, markersize=7, zorder=5,
        )  # fmt: skip
        axes.annotate(point.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)

    x_ticks = percent_ticks(*(float(v) for v in inverse_logit([x_low, x_high])))
    y_ticks = percent_ticks(*(float(v) for v in inverse_logit([y_low, y_high])))
    axes.set_xticks([float(logit(t / 100)) for t in x_ticks], [f"{t:g}" for t in x_ticks])
    axes.set_yticks([float(logit(t / 100)) for t in y_ticks], [f"{t:g}" for t in y_ticks])
    axes.set_xlim(x_low, x_high)
    axes.set_ylim(y_low, y_high)
    axes.grid(color="lightgray", linewidth=0.6)
    axes.set_xlabel(f"{pair.id_task} accuracy (%, logit scale)")
    axes.set_ylabel(f"{pair.shift_task} accuracy (%, logit scale)")
    axes.set_title(pair.title or f"{pair.id_task} → {pair.shift_task}", fontsize=10)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    figure.tight_layout()

    out_stem = Path(out_stem)
    written = []
    for extension in ("png", "svg"):
        path = out_stem.with_name(f"{out_stem.name}.{extension}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=extension, dpi=150)
        written.append(path)
    plt.close(figure)
    return written


def fit_segments(pair: PairPlot, line: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The baseline's lines to draw over the logit-scale x values ``line``: ``(x, y, label)``
    per piece of ``pair.fit_pieces``, each only over its own ID range, else ``pair.fit``
    over all of it."""
    pieces = pair.fit_pieces or ((FitPiece(pair.fit),) if pair.fit is not None else ())
    splits = [float(logit(b)) for p in pieces for b in (p.low, p.high) if b is not None]
    line = np.union1d(line, [x for x in splits if line[0] < x < line[-1]])  # pieces meet
    segments = []
    for piece in pieces:
        inside = np.ones(len(line), dtype=bool)
        if piece.low is not None:
            inside &= line >= float(logit(piece.low))
        if piece.high is not None:
            inside &= line <= float(logit(piece.high))
        fit = piece.fit
        where = f" ({piece.label})" if piece.label else ""
        label = (
            f"baseline fit{where}: slope {fit.slope:.2f}, intercept {fit.intercept:.2f}, "
            f"R² {fit.r_squared:.2f}, n {fit.n_points}"
        )
        xs = line[inside]
        segments.append((xs, fit.slope * xs + fit.intercept, label))
    return segments


def _accuracy_bounds(
    runs: Sequence[RunResult], task: str, mean: float, std: float | None
) -> tuple[float, float] | None:
    """Seed spread (+- std) for several seeds, else a bootstrap 95% interval over test images."""
    from curate.eval.er_uncertainty import resampled_accuracy

    if std is not None:
        return (max(mean - std, 1e-4), min(mean + std, 1 - 1e-4))
    correct = runs[0].tasks[task].correct
    if correct is None:
        return None
    draws = resampled_accuracy(correct[None, :], 1000, np.random.default_rng(0))[:, 0]
    low, high = np.percentile(draws, [2.5, 97.5])
    return (float(low), float(high))


def leaderboard_plots(leaderboard: Leaderboard) -> list[PairPlot]:
    """One :class:`PairPlot` per comparability key and ID -> shift pair of a leaderboard
    (the key is in the title and file name when there are several)."""
    from curate.eval.baselines import baseline_points
    from curate.eval.collect import ID_FAMILY

    plots = []
    several = len(leaderboard.keys) > 1
    for key, summaries in leaderboard.by_key().items():
        pairs = sorted({(s.id_task, s.shift_task) for g in summaries for s in g.shifts})
        for id_task, shift_task in pairs:
            points = []
            for summary in summaries:
                if (id_task, shift_task) not in {(s.id_task, s.shift_task) for s in summary.shifts}:
                    continue
                runs = summary.group.runs
                (id_mean, id_std), (ood_mean, ood_std) = (
                    summary.accuracy[id_task],
                    summary.accuracy[shift_task],
                )
                points.append(
                    PlotPoint(
                        label=summary.group.label,
                        id_accuracy=id_mean,
                        ood_accuracy=ood_mean,
                        id_bounds=_accuracy_bounds(runs, id_task, id_mean, id_std),
                        ood_bounds=_accuracy_bounds(runs, shift_task, ood_mean, ood_std),
                    )
                )
            baselines = baseline_points(leaderboard.baselines, (id_task, shift_task))
            others = baseline_points(
                [run for run in leaderboard.baselines if run.baseline_family != ID_FAMILY],
                (id_task, shift_task),
                family=None,
            )
            title = f"{id_task} → {shift_task}" + (f"  (setup {key[:12]})" if several else "")
            plots.append(
                PairPlot(
                    id_task=id_task,
                    shift_task=shift_task,
                    baseline_id=baselines.accuracy[:, 0],
                    baseline_ood=baselines.accuracy[:, 1],
                    fit=leaderboard.fits.get((id_task, shift_task)),
                    points=tuple(points),
                    title=title,
                    setup_key=key if several else "",
                    other_id=others.accuracy[:, 0],
                    other_ood=others.accuracy[:, 1],
                )
            )
    return plots


def testbed_plot(shift: str) -> PairPlot:
    """The testbed's STANDARD models and its baseline for one ImageNet shift (a sanity check):
    one line, or ImageNet-A's two, each drawn over its own side of the split."""
    from curate.eval.testbed import testbed_fit, testbed_points

    points = testbed_points(shift)
    fit = testbed_fit(shift)
    bounds = [(None, None)] if fit.pivot is None else [(None, fit.pivot), (fit.pivot, None)]
    labels = [""] if fit.pivot is None else [f"ID {label} %" for label in fit.piece_labels]
    return PairPlot(
        id_task=f"ImageNet {points.shift.id_column}",
        shift_task=shift,
        baseline_id=points.id_accuracy,
        baseline_ood=points.ood_accuracy,
        fit=None,
        fit_pieces=tuple(
            FitPiece(piece, low, high, label)
            for piece, (low, high), label in zip(fit.pieces, bounds, labels, strict=True)
        ),
        points=(),
        title=f"imagenet-testbed (STANDARD models): {points.shift.id_column} → {shift}",
        baseline_label="testbed STANDARD models",
    )


def write_plots(plots: Sequence[PairPlot], out_dir: Path) -> list[Path]:
    """Write every plot under ``out_dir`` as ``<id>__<shift>[__<setup>].png`` and ``.svg``."""
    written = []
    for pair in plots:
        written += plot_pair(pair, Path(out_dir) / pair.file_stem)
    return written


def plot_results(roots: Sequence[Path], out_dir: Path, group_by_key: bool = False) -> list[Path]:
    """Plot every ID -> shift pair of the results under ``roots`` (``curate plot``)."""
    from curate.core.errors import UserInputError
    from curate.eval.collect import collect_runs
    from curate.leaderboard.groups import group_runs, require_comparable
    from curate.leaderboard.model import summarize

    runs = collect_runs(roots)
    require_comparable(group_runs(runs), group_by_key)
    plots = leaderboard_plots(summarize(runs, n_boot=0))
    if not plots:
        raise UserInputError(
            f"nothing to plot under {', '.join(map(str, roots))}: no scored run has a shift task "
            "together with its ID task"
        )
    return write_plots(plots, out_dir)
