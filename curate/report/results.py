"""The scored results as the page shows them: one leaderboard per setup (comparability key),
every ER with its interval, what the interval covers and, with 2+ seeds, whether it excludes 0
(one seed: "untested (1 seed)"), the baseline runs and fits, the ID-vs-OOD plots, and the
exact training configuration of each setup.

The numbers come from :mod:`curate.leaderboard` (grouping, seed aggregation, bootstrap) and
the plots from :mod:`curate.report.plots`; this module only arranges them for the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.eval.collect import RunResult
from curate.eval.er_uncertainty import MIN_SEEDS_FOR_VERDICT, difference_verdict, interval_covers
from curate.leaderboard.groups import GroupSummary, ShiftSummary
from curate.leaderboard.model import Leaderboard, summarize
from curate.leaderboard.pairs import PairDifference
from curate.report.images import data_uri
from curate.report.plots import leaderboard_plots, write_plots

PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ErCell:
    mean: float
    std: float | None
    low: float | None
    high: float | None
    method: str
    per_seed: tuple[float, ...]
    baseline_refit: bool
    n_seeds: int

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval excludes 0 (None when there is no interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0

    @property
    def covers(self) -> str:
        """What the interval accounts for: "test images + baseline fit only" for one seed whose
        bootstrap refitted the baseline line, "test images + seeds" for 2+ seeds, ..."""
        covered = interval_covers(self.method, self.n_seeds, self.n_seeds)
        if self.baseline_refit and covered.startswith("test images"):
            covered = covered.replace("test images", "test images + baseline fit", 1)
        return covered

    @property
    def verdict(self) -> str | None:
        """ "significant" / "not significant" with :data:`MIN_SEEDS_FOR_VERDICT` seeds (the
        interval then holds the seed spread), else "untested (1 seed)"; None without interval."""
        if self.excludes_zero is None:
            return None
        return difference_verdict(self.excludes_zero, self.n_seeds)

    @property
    def significant(self) -> bool | None:
        """The verdict as a boolean: None when untested or there is no interval."""
        if self.excludes_zero is None or self.n_seeds < MIN_SEEDS_FOR_VERDICT:
            return None
        return self.excludes_zero


@dataclass(frozen=True)
class ShiftCell:
    ood_accuracy: tuple[float, float | None] | None
    er: ErCell | None
    multi_id_er: tuple[float, float | None] | None
    problem: str | None
    extrapolated: bool | None = None  # ID accuracy outside the baselines' ID range


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int | None
    pool_name: str
    anchor: str | None  # the candidate pool's section on the page, when it is under DIR
    pool_path: str
    recipe: str
    scale: str
    seeds: tuple[int, ...]
    n_runs: int
    kept: int | None
    accuracy: Mapping[str, tuple[float, float | None]]
    shifts: Mapping[tuple[str, str], ShiftCell]
    average_er: float | None
    extrapolated: bool | None = None


@dataclass(frozen=True)
class Setup:
    key: str
    samples_seen: int | None
    id_tasks: tuple[str, ...]
    shift_pairs: tuple[tuple[str, str], ...]
    rows: tuple[LeaderboardRow, ...]
    settings: Mapping[str, Any]  # the scale: arch, image size, samples seen, batch, lr, ...
    tasks: tuple[str, ...]
    code_versions: tuple[str, ...]
    differences: tuple[PairDifference, ...] = ()  # pairwise ER(A) - ER(B), A ranked above B


@dataclass(frozen=True)
class PlotView:
    title: str
    png_uri: str
    png_file: str  # relative to the report folder
    svg_file: str
    width: int  # of the PNG, in pixels
    height: int


@dataclass(frozen=True)
class BaselineRow:
    run_id: str
    family: str | None  # "id": on the single-ID line; others: the multi-ID plane only
    samples_seen: int | None
    seed: int | None
    accuracy: Mapping[str, float | None]
    model: str = ""  # architecture, and "no augmentation" when it trained without


@dataclass(frozen=True)
class FitRow:
    id_task: str
    shift_task: str
    slope: float | None
    intercept: float | None
    r_squared: float | None
    n_points: int
    # the baseline models' scatter around the line (n - 2 dof): logit units, accuracy fraction
    residual_std_logit: float | None = None
    residual_std_accuracy: float | None = None
    id_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class ResultsView:
    setups: tuple[Setup, ...]
    plots: tuple[PlotView, ...]
    baselines: tuple[BaselineRow, ...]
    baseline_tasks: tuple[str, ...]
    fits: tuple[FitRow, ...]
    rank_by: str
    n_boot: int
    confidence: float
    code_versions: tuple[str, ...]  # of the baseline runs


def scale_settings(run: RunResult) -> dict[str, Any]:
    """The scale a run was trained with: run.json's ``config`` (or the record's run.config)."""
    inner = run.config.get("config")
    return dict(inner) if isinstance(inner, Mapping) else dict(run.config)


def _model(run: RunResult) -> str:
    settings = scale_settings(run)
    arch = str(settings.get("arch") or "?")
    return arch if settings.get("augment", True) else f"{arch}, no augmentation"


def describe_code_version(version: Any) -> str:
    if not isinstance(version, Mapping):
        return "unknown"
    parts = [f"curate {version.get('curate', '?')}"]
    if version.get("git_commit"):
        parts.append(f"git {str(version['git_commit'])[:12]}")
    if version.get("python"):
        parts.append(f"Python {version['python']}")
    return ", ".join(parts)


def _code_versions(runs: Sequence[RunResult]) -> tuple[str, ...]:
    return tuple(sorted({describe_code_version(run.config.get("code_version")) for run in runs}))


def _er_cell(shift: ShiftSummary) -> ErCell | None:
    er = shift.er
    if er is None:
        return None
    return ErCell(
        mean=er.mean,
        std=er.std,
        low=er.interval.low,
        high=er.interval.high,
        method=er.interval.method,
        per_seed=tuple(er.per_seed),
        baseline_refit=er.baseline_refit,
        n_seeds=er.n_seeds,
    )


def _row(summary: GroupSummary, subsets: Mapping[str, tuple[str, str, int]]) -> LeaderboardRow:
    group = summary.group
    name, anchor, kept = subsets.get(str(Path(group.pool).resolve()), (None, None, None))
    shifts = {}
    for shift in summary.shifts:
        multi = shift.multi_id_er
        shifts[(shift.id_task, shift.shift_task)] = ShiftCell(
            ood_accuracy=summary.accuracy.get(shift.shift_task),
            er=_er_cell(shift),
            multi_id_er=None if multi is None else (multi.mean, multi.std),
            problem=shift.problem,
            extrapolated=shift.extrapolated,
        )
    return LeaderboardRow(
        rank=summary.rank,
        pool_name=name or Path(group.pool).name or group.pool,
        anchor=anchor,
        pool_path=group.pool,
        recipe=group.recipe,
        scale=group.scale,
        seeds=tuple(group.seeds),
        n_runs=len(group.runs),
        kept=kept,
        accuracy=dict(summary.accuracy),
        shifts=shifts,
        average_er=summary.average_er,
        extrapolated=summary.extrapolated,
    )


def _setups(board: Leaderboard, subsets: Mapping[str, tuple[str, str, int]]) -> tuple[Setup, ...]:
    setups = []
    for key, summaries in board.by_key().items():
        first = summaries[0].group.runs[0]
        runs = [run for summary in summaries for run in summary.group.runs]
        setups.append(
            Setup(
                key=key,
                samples_seen=first.samples_seen,
                id_tasks=tuple(sorted({t for s in summaries for t in s.id_tasks})),
                shift_pairs=tuple(
                    sorted({(x.id_task, x.shift_task) for s in summaries for x in s.shifts})
                ),
                rows=tuple(_row(summary, subsets) for summary in summaries),
                settings=scale_settings(first),
                tasks=tuple(sorted(first.tasks)),
                code_versions=_code_versions(runs),
                differences=tuple(d for d in board.differences if d.comparability_key == key),
            )
        )
    return tuple(setups)


def _plots(board: Leaderboard, out_dir: Path) -> tuple[PlotView, ...]:
    from PIL import Image

    pairs = leaderboard_plots(board)
    write_plots(pairs, out_dir / PLOTS_DIR)
    views = []
    for pair in pairs:
        png = out_dir / PLOTS_DIR / f"{pair.file_stem}.png"
        with Image.open(png) as image:
            width, height = image.size
        views.append(
            PlotView(
                title=pair.title or f"{pair.id_task} → {pair.shift_task}",
                png_uri=data_uri(png.read_bytes(), "image/png"),
                png_file=f"{PLOTS_DIR}/{pair.file_stem}.png",
                svg_file=f"{PLOTS_DIR}/{pair.file_stem}.svg",
                width=width,
                height=height,
            )
        )
    return tuple(views)


def results_view(
    runs: Sequence[RunResult],
    out_dir: Path,
    subsets: Mapping[str, tuple[str, str, int]],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
    rank_by: str = "er",
) -> ResultsView:
    """Rank the runs and draw the plots into ``out_dir/plots``.

    ``subsets`` maps a candidate pool's resolved path to (name, page anchor, kept samples).
    """
    board = summarize(runs, rank_by=rank_by, n_boot=n_boot, confidence=confidence, seed=seed)
    baselines = sorted(board.baselines, key=lambda r: (r.samples_seen or 0, r.seed or 0, r.run_id))
    baseline_tasks = tuple(sorted({task for run in baselines for task in run.tasks}))
    return ResultsView(
        setups=_setups(board, subsets),
        plots=_plots(board, out_dir),
        baselines=tuple(
            BaselineRow(
                run_id=run.run_id,
                family=run.baseline_family,
                samples_seen=run.samples_seen,
                seed=run.seed,
                accuracy={task: run.accuracy(task) for task in baseline_tasks},
                model=_model(run),
            )
            for run in baselines
        ),
        baseline_tasks=baseline_tasks,
        fits=tuple(
            FitRow(
                id_task=id_task,
                shift_task=shift_task,
                slope=fit and fit.slope,
                intercept=fit and fit.intercept,
                r_squared=fit and fit.r_squared,
                n_points=fit.n_points if fit else 0,
                residual_std_logit=spread and spread.residual_std_logit,
                residual_std_accuracy=spread and spread.residual_std_accuracy,
                id_range=spread and (spread.id_min, spread.id_max),
            )
            for (id_task, shift_task), fit in sorted(board.fits.items())
            for spread in [board.spreads.get((id_task, shift_task))]
        ),
        rank_by=rank_by,
        n_boot=n_boot,
        confidence=confidence,
        code_versions=_code_versions(baselines),
    )
