"""How sure is an effective robustness number? Bootstrap over test images, spread over seeds.

Two independent sources of noise:

* **Test images.** A test set is a sample. We resample the images of the ID test set and of
  the OOD test set (with replacement, independently of each other), evaluate every model on
  the same resample from its recorded per-image correctness (``correct_bits``), and recompute
  ER. When every baseline run carries correctness on both test sets the baseline line is
  **refitted on each resample** (its uncertainty enters the interval); otherwise (e.g. the
  testbed, or older records) the fit is held fixed and only the evaluated runs are resampled.
  Comparing two pools uses the same resamples for both (a paired bootstrap).
* **Training seeds.** Runs of the same pool, recipe and scale with different seeds: mean and
  standard deviation (ddof=1) of their ER, and a t-interval over seeds.

The interval reported for a group of ``k`` seeds:

* ``k = 1``: the percentile interval of the bootstrap ("bootstrap-percentile");
* ``k >= 2``: ``mean +- t(dof) * sqrt(s^2 / k + v_img)`` where ``s`` is the seed standard
  deviation and ``v_img`` the bootstrap variance of the seed-mean ER ("t-seeds+bootstrap",
  or "t-seeds" when no correctness was recorded): the two sources add, being independent.
  ``dof`` is Welch-Satterthwaite's, with ``k - 1`` for the seed term and the bootstrap term
  taken as known: ``k - 1`` when seeds dominate, large when test images dominate.

A difference between two groups adds their seed variances (Welch's degrees of freedom) to the
paired bootstrap variance of the difference. Its interval excludes 0 or not; a *verdict* on
it needs at least :data:`MIN_SEEDS_FOR_VERDICT` seeds per group: with one seed the interval
covers test-image noise only, and the difference between two single training runs is mostly
training noise (in the demo, seed 0's +2.7 [+0.0, +5.4] was +0.9 over three seeds), so the
verdict is "untested (1 seed)" however narrow the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from curate.core.errors import UserInputError
from curate.eval.baselines import (
    BaselinePoints,
    baseline_points,
    tiny_baseline_fit,
    tiny_baseline_plane,
)
from curate.eval.collect import RunResult
from curate.eval.effective_robustness import (
    LinearFit,
    MultiLinearFit,
    effective_robustness,
    inverse_logit,
    logit,
    multi_id_effective_robustness,
)

DEFAULT_BOOTSTRAP = 1000
DEFAULT_CONFIDENCE = 0.95
MIN_SEEDS_FOR_VERDICT = 2
_CHUNK = 256


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    method: str
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class ErEstimate:
    """ER of a group of runs (seeds) on one ID -> shift pair, with its interval and fit."""

    id_task: str
    shift_task: str
    mean: float
    std: float | None
    n_seeds: int
    per_seed: tuple[float, ...]
    interval: Interval
    image_se: float | None
    baseline_refit: bool
    fit: LinearFit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ErDifference:
    """ER of group A minus ER of group B on one pair.

    ``significant`` says only whether the interval excludes 0; :attr:`verdict` is what may be
    claimed, which also needs :data:`MIN_SEEDS_FOR_VERDICT` seeds in both groups.
    """

    id_task: str
    shift_task: str
    difference: float
    interval: Interval
    significant: bool
    n_seeds_a: int = 1
    n_seeds_b: int = 1

    @property
    def tested(self) -> bool:
        return min(self.n_seeds_a, self.n_seeds_b) >= MIN_SEEDS_FOR_VERDICT

    @property
    def verdict(self) -> str:
        return difference_verdict(self.interval.excludes_zero, min(self.n_seeds_a, self.n_seeds_b))

    @property
    def covers(self) -> str:
        return interval_covers(self.interval.method, self.n_seeds_a, self.n_seeds_b)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "covers": self.covers}


def interval_covers(method: str, n_seeds_a: int, n_seeds_b: int) -> str:
    """What a difference's interval accounts for: the test images (bootstrap), the training
    seeds (both groups' spreads), or one group's seeds only when the other ran one seed."""
    images = method in ("bootstrap-percentile", "t-seeds+bootstrap")
    seeded = sum(count > 1 for count in (n_seeds_a, n_seeds_b))
    seeds = {0: "", 1: "one pool's seeds", 2: "seeds"}[seeded if method.startswith("t-") else 0]
    if images and seeds:
        return f"test images + {seeds}"
    if images:
        return "test images only"
    return f"{seeds} only" if seeds else "nothing"


def difference_verdict(excludes_zero: bool, min_seeds: int) -> str:
    """ "significant" / "not significant" with enough seeds per group, else "untested"."""
    if min_seeds < MIN_SEEDS_FOR_VERDICT:
        return f"untested ({min_seeds} seed{'s' if min_seeds != 1 else ''})"
    return "significant" if excludes_zero else "not significant"


@dataclass(frozen=True)
class MultiIdErEstimate:
    id_tasks: tuple[str, ...]
    shift_task: str
    mean: float
    std: float | None
    n_seeds: int
    per_seed: tuple[float, ...]
    fit: MultiLinearFit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resampled_accuracy(correct: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Accuracy of each row of ``correct`` (models, images) on ``n_boot`` bootstrap resamples
    of the images, the same resamples for every model: shape (n_boot, models)."""
    models, images = correct.shape
    values = correct.T.astype(np.float64)
    out = np.empty((n_boot, models))
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        drawn = rng.integers(0, images, size=(size, images))
        flat = (drawn + images * np.arange(size)[:, None]).ravel()
        counts = np.bincount(flat, minlength=size * images).reshape(size, images).astype(np.float64)
        out[start : start + size] = counts @ values / images
    return out


def ols_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of an OLS line through each row's points (rows, points)."""
    x_centred = x - x.mean(axis=1, keepdims=True)
    spread = np.sum(x_centred**2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.sum(x_centred * (y - y.mean(axis=1, keepdims=True)), axis=1) / spread
    intercept = y.mean(axis=1) - slope * x.mean(axis=1)
    return slope, intercept


def seed_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def _t_quantile(confidence: float, dof: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def _percentile_interval(draws: np.ndarray, confidence: float) -> Interval:
    alpha = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(draws, [alpha, 100 - alpha])
    return Interval(float(low), float(high), "bootstrap-percentile", confidence)


def _combined_interval(
    centre: float,
    seed_variances: Sequence[tuple[float, int]],
    draws: np.ndarray | None,
    confidence: float,
) -> Interval:
    """Seed variances (variance of a group's mean, its seed count) plus the image bootstrap."""
    seeds = [(variance, count) for variance, count in seed_variances if count > 1]
    if not seeds:
        if draws is None:
            return Interval(None, None, "none", confidence)
        return _percentile_interval(draws, confidence)
    image_variance = 0.0 if draws is None else float(np.nanvar(draws, ddof=1))
    total = sum(variance for variance, _ in seeds) + image_variance
    # Welch-Satterthwaite; the bootstrap variance counts as known (infinite degrees of freedom).
    denominator = sum(variance**2 / (count - 1) for variance, count in seeds)
    dof = total**2 / denominator if denominator > 0 else np.inf
    half = _t_quantile(confidence, dof) * float(np.sqrt(total))
    method = "t-seeds" if draws is None else "t-seeds+bootstrap"
    return Interval(centre - half, centre + half, method, confidence)


def _have_correct(runs: Sequence[RunResult], task: str) -> bool:
    """Every run recorded per-image correctness on ``task``, on test sets of one size."""
    vectors = [run.tasks[task].correct for run in runs]
    if any(vector is None for vector in vectors):
        return False
    return len({vector.size for vector in vectors}) == 1


def _bootstrap_group_means(
    groups: Sequence[Sequence[RunResult]],
    points: BaselinePoints,
    fit: LinearFit,
    id_task: str,
    shift_task: str,
    n_boot: int,
    seed: int,
) -> tuple[list[np.ndarray] | None, bool]:
    """Per group, the bootstrap draws of its seed-mean ER (shared resamples), and whether the
    baseline was refitted on each resample. None when some run lacks per-image correctness."""
    runs = [run for group in groups for run in group]
    if n_boot <= 0 or not (_have_correct(runs, id_task) and _have_correct(runs, shift_task)):
        return None, False
    id_size = runs[0].tasks[id_task].correct.size
    ood_size = runs[0].tasks[shift_task].correct.size
    refit = (
        len(points) >= 2
        and points.correct[0] is not None
        and points.correct[1] is not None
        and points.correct[0].shape[1] == id_size
        and points.correct[1].shape[1] == ood_size
    )
    id_rows = [run.tasks[id_task].correct for run in runs]
    ood_rows = [run.tasks[shift_task].correct for run in runs]
    if refit:
        id_rows = [*points.correct[0], *id_rows]
        ood_rows = [*points.correct[1], *ood_rows]
    id_rng, ood_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(2)
    )
    id_accuracy = resampled_accuracy(np.stack(id_rows), n_boot, id_rng)
    ood_accuracy = resampled_accuracy(np.stack(ood_rows), n_boot, ood_rng)
    if refit:
        m = len(points)
        slope, intercept = ols_rows(logit(id_accuracy[:, :m]), logit(ood_accuracy[:, :m]))
        id_accuracy, ood_accuracy = id_accuracy[:, m:], ood_accuracy[:, m:]
        slope, intercept = slope[:, None], intercept[:, None]
    else:
        slope, intercept = fit.slope, fit.intercept
    er = ood_accuracy - inverse_logit(slope * logit(id_accuracy) + intercept)
    means, start = [], 0
    for group in groups:
        means.append(er[:, start : start + len(group)].mean(axis=1))
        start += len(group)
    return means, refit


def _point_ers(
    runs: Sequence[RunResult], fit: LinearFit, id_task: str, shift_task: str
) -> list[float]:
    return [
        effective_robustness(run.accuracy(id_task), run.accuracy(shift_task), fit).value
        for run in runs
    ]


def _check_runs(runs: Sequence[RunResult], id_task: str, shift_task: str) -> None:
    if not runs:
        raise ValueError("no runs to estimate effective robustness for")
    for run in runs:
        for task in (id_task, shift_task):
            if run.accuracy(task) is None:
                raise UserInputError(
                    f"{run.results_path}: run {run.run_id} has no accuracy on {task}"
                )


def estimate_er(
    runs: Sequence[RunResult],
    baselines: Sequence[RunResult],
    id_task: str,
    shift_task: str,
    *,
    fit: LinearFit | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ErEstimate:
    """ER of the runs (seeds of one pool) against the baseline fit, with an interval.

    ``fit`` defaults to the tiny-baseline fit of ``baselines``; pass e.g. a testbed fit to
    measure against another baseline (it is then held fixed in the bootstrap).
    """
    _check_runs(runs, id_task, shift_task)
    points = baseline_points(baselines, (id_task, shift_task))
    if fit is None:
        fit = tiny_baseline_fit(baselines, id_task, shift_task)
    else:
        points = baseline_points([], (id_task, shift_task))
    per_seed = _point_ers(runs, fit, id_task, shift_task)
    mean, std = seed_spread(per_seed)
    draws, refit = _bootstrap_group_means([runs], points, fit, id_task, shift_task, n_boot, seed)
    group_draws = None if draws is None else draws[0]
    seed_variance = [] if std is None else [(std**2 / len(runs), len(runs))]
    return ErEstimate(
        id_task=id_task,
        shift_task=shift_task,
        mean=mean,
        std=std,
        n_seeds=len(runs),
        per_seed=tuple(per_seed),
        interval=_combined_interval(mean, seed_variance, group_draws, confidence),
        image_se=None if group_draws is None else float(np.nanstd(group_draws, ddof=1)),
        baseline_refit=refit,
        fit=fit,
    )


def er_difference(
    runs_a: Sequence[RunResult],
    runs_b: Sequence[RunResult],
    baselines: Sequence[RunResult],
    id_task: str,
    shift_task: str,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ErDifference:
    """ER(A) - ER(B) with an interval from a paired image bootstrap plus both seed spreads."""
    _check_runs(runs_a, id_task, shift_task)
    _check_runs(runs_b, id_task, shift_task)
    points = baseline_points(baselines, (id_task, shift_task))
    fit = tiny_baseline_fit(baselines, id_task, shift_task)
    er_a = _point_ers(runs_a, fit, id_task, shift_task)
    er_b = _point_ers(runs_b, fit, id_task, shift_task)
    difference = float(np.mean(er_a) - np.mean(er_b))
    draws, _ = _bootstrap_group_means(
        [runs_a, runs_b], points, fit, id_task, shift_task, n_boot, seed
    )
    seed_variances = [
        (float(np.var(values, ddof=1)) / len(values), len(values))
        for values in (er_a, er_b)
        if len(values) > 1
    ]
    paired = None if draws is None else draws[0] - draws[1]
    interval = _combined_interval(difference, seed_variances, paired, confidence)
    return ErDifference(
        id_task,
        shift_task,
        difference,
        interval,
        interval.excludes_zero,
        n_seeds_a=len(runs_a),
        n_seeds_b=len(runs_b),
    )


def estimate_multi_id_er(
    runs: Sequence[RunResult],
    baselines: Sequence[RunResult],
    id_tasks: Sequence[str],
    shift_task: str,
) -> MultiIdErEstimate:
    """Shi et al.'s ER against a plane fitted on several ID sets; spread over seeds."""
    fit = tiny_baseline_plane(baselines, id_tasks, shift_task)
    per_seed = [
        multi_id_effective_robustness(
            [run.accuracy(task) for task in id_tasks], run.accuracy(shift_task), fit
        ).value
        for run in runs
    ]
    mean, std = seed_spread(per_seed)
    return MultiIdErEstimate(
        id_tasks=tuple(id_tasks),
        shift_task=shift_task,
        mean=mean,
        std=std,
        n_seeds=len(runs),
        per_seed=tuple(per_seed),
        fit=fit,
    )
