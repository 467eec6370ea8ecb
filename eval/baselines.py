"""Tiny-scale baselines: the runs marked ``run.baseline = true`` (made by ``curate baseline``).

They are standard models trained on ID data only, at several budgets, so that their ID and OOD
accuracies trace the logit-linear trend that effective robustness is measured against
(:mod:`curate.eval.effective_robustness`). The ImageNet-scale source is :mod:`curate.eval.testbed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from curate.core.errors import UserInputError
from curate.eval.collect import ID_FAMILY, RunResult
from curate.eval.effective_robustness import (
    LinearFit,
    MultiLinearFit,
    fit_logit_line,
    fit_logit_plane,
    logit,
)

TINY_BASELINE_SOURCE = "tiny-baselines"


@dataclass(frozen=True)
class BaselinePoints:
    """Accuracies (fractions) of the baseline runs that have every task of ``tasks``.

    ``accuracy`` has shape (runs, tasks); ``correct[t]`` stacks the runs' per-image
    correctness on ``tasks[t]`` (runs, images), or is None when a run lacks it or the runs'
    test sets differ in size (then a bootstrap keeps the fit fixed).
    """

    tasks: tuple[str, ...]
    run_ids: tuple[str, ...]
    accuracy: np.ndarray
    correct: tuple[np.ndarray | None, ...]

    def __len__(self) -> int:
        return len(self.run_ids)


def baseline_points(
    baselines: Sequence[RunResult], tasks: Sequence[str], family: str | None = ID_FAMILY
) -> BaselinePoints:
    """``family`` picks one baseline family (default: the ID-only models of the single-ID
    line); None takes every family (the multi-ID plane, which needs ID axes that vary
    independently)."""
    usable = [
        run
        for run in baselines
        if run.baseline
        and (family is None or run.baseline_family == family)
        and all(run.accuracy(task) is not None for task in tasks)
    ]
    accuracy = np.array(
        [[run.accuracy(task) for task in tasks] for run in usable], dtype=np.float64
    )
    correct: list[np.ndarray | None] = []
    for task in tasks:
        vectors = [run.tasks[task].correct for run in usable]
        sizes = {None if vector is None else vector.size for vector in vectors}
        correct.append(
            np.stack(vectors) if usable and len(sizes) == 1 and None not in sizes else None
        )
    return BaselinePoints(
        tasks=tuple(tasks),
        run_ids=tuple(run.run_id for run in usable),
        accuracy=accuracy.reshape(len(usable), len(tasks)),
        correct=tuple(correct),
    )


def tiny_baseline_fit(baselines: Sequence[RunResult], id_task: str, shift_task: str) -> LinearFit:
    points = baseline_points(baselines, (id_task, shift_task))
    return fit_logit_line(
        points.accuracy[:, 0],
        points.accuracy[:, 1],
        id_task=id_task,
        ood_task=shift_task,
        source=TINY_BASELINE_SOURCE,
    )


@dataclass(frozen=True)
class LineSpread:
    """How closely the baseline models follow their own line, and the ID range it covers.

    The residual standard errors are sqrt(sum of squared residuals / (n - 2)) (two fitted
    parameters; None for n = 2, where the line passes through both points): in logit units,
    and in OOD accuracy (each baseline's OOD accuracy minus the line's prediction, i.e. its own
    ER). A line through one architecture at several budgets has a tiny spread that says nothing
    about other standard models; a line through several kinds of models has the spread that
    makes "on the line" a finding. A candidate whose ID accuracy lies outside
    [``id_min``, ``id_max``] is measured against an extrapolated line.
    """

    residual_std_logit: float | None
    residual_std_accuracy: float | None
    id_min: float
    id_max: float
    n_points: int

    def extrapolated(self, id_accuracy: float) -> bool:
        return not self.id_min <= id_accuracy <= self.id_max


def line_spread(
    baselines: Sequence[RunResult], id_task: str, shift_task: str, fit: LinearFit
) -> LineSpread:
    """The residuals of ``fit`` (the tiny-baseline fit of the same baselines) and its ID range."""
    points = baseline_points(baselines, (id_task, shift_task))
    id_accuracy, ood_accuracy = points.accuracy[:, 0], points.accuracy[:, 1]
    residual_logit = logit(ood_accuracy) - (fit.slope * logit(id_accuracy) + fit.intercept)
    residual_accuracy = ood_accuracy - fit.predict(id_accuracy)
    dof = len(points) - 2

    def standard_error(residuals: np.ndarray) -> float | None:
        return float(np.sqrt(np.sum(residuals**2) / dof)) if dof > 0 else None

    return LineSpread(
        residual_std_logit=standard_error(residual_logit),
        residual_std_accuracy=standard_error(residual_accuracy),
        id_min=float(id_accuracy.min()),
        id_max=float(id_accuracy.max()),
        n_points=len(points),
    )


def tiny_baseline_plane(
    baselines: Sequence[RunResult], id_tasks: Sequence[str], shift_task: str
) -> MultiLinearFit:
    points = baseline_points(baselines, (*id_tasks, shift_task), family=None)
    if len(points) < len(id_tasks) + 2:
        raise UserInputError(
            f"only {len(points)} baseline runs have accuracies on all of "
            f"{', '.join((*id_tasks, shift_task))} (a multi-ID fit needs {len(id_tasks) + 2}); "
            "evaluate the baseline checkpoints on the raw pool's holdout too "
            "(`curate evaluate RUN/checkpoint --pool RAW_POOL`), and train more baselines, "
            "among them a family on the pool's own distribution whose ID accuracies move "
            "differently (`curate score CANDIDATE --baseline-family pool`; `curate demo "
            "--full` does both)"
        )
    return fit_logit_plane(
        points.accuracy[:, :-1],
        points.accuracy[:, -1],
        id_tasks=tuple(id_tasks),
        ood_task=shift_task,
    )
