"""Runs grouped into comparable candidates and their ER per shift.

Runs are grouped by (comparability key, pool, recipe, scale); the seeds of a group are
aggregated (mean, std, interval: :mod:`curate.eval.er_uncertainty`). Runs marked ``baseline``
are not ranked: they are the points of the baseline fit every group is measured against.

Two runs are comparable only when their ``comparability_key`` matches (same architecture,
samples seen, batch size, schedule, precision and eval task set). Ranks are computed within
a key, never across keys; :func:`require_comparable` refuses a mixed set unless the caller
asks for one table per key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from curate.core.errors import UserInputError
from curate.eval.baselines import LineSpread, line_spread, tiny_baseline_fit
from curate.eval.collect import KIND_ID, KIND_POOL_ID, RunResult
from curate.eval.effective_robustness import LinearFit
from curate.eval.er_uncertainty import (
    ErEstimate,
    MultiIdErEstimate,
    estimate_er,
    estimate_multi_id_er,
    seed_spread,
)

RANK_BY = ("er", "id", "average")


@dataclass(frozen=True)
class RunGroup:
    """The seeds of one pool, recipe and scale under one comparability key."""

    comparability_key: str
    pool: str
    recipe: str
    scale: str
    runs: tuple[RunResult, ...]

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs if run.seed is not None)

    @property
    def label(self) -> str:
        parts = (Path(self.pool).name, self.recipe, self.scale)
        return "/".join(dict.fromkeys(part for part in parts if part))  # unique, in order


@dataclass(frozen=True)
class ShiftSummary:
    id_task: str
    shift_task: str
    er: ErEstimate | None
    multi_id_er: MultiIdErEstimate | None
    problem: str | None = None
    # the group's mean ID accuracy lies outside the baselines' ID range: the ER is measured
    # against an extrapolated line (None: no line)
    extrapolated: bool | None = None


@dataclass(frozen=True)
class GroupSummary:
    group: RunGroup
    accuracy: dict[str, tuple[float, float | None]]
    id_tasks: tuple[str, ...]
    shifts: tuple[ShiftSummary, ...]
    rank: int | None = None

    @property
    def average_er(self) -> float | None:
        values = [shift.er.mean for shift in self.shifts if shift.er is not None]
        return float(np.mean(values)) if values else None

    @property
    def extrapolated(self) -> bool | None:
        """Some shift's ER is measured outside the baselines' ID range (None: no ER)."""
        flags = [shift.extrapolated for shift in self.shifts if shift.extrapolated is not None]
        return any(flags) if flags else None

    @property
    def average_accuracy(self) -> float | None:
        values = [mean for mean, _ in self.accuracy.values()]
        return float(np.mean(values)) if values else None

    @property
    def id_accuracy(self) -> float | None:
        values = [self.accuracy[task][0] for task in self.id_tasks if task in self.accuracy]
        return float(np.mean(values)) if values else None

    def score(self, rank_by: str) -> float | None:
        return {"er": self.average_er, "id": self.id_accuracy, "average": self.average_accuracy}[
            rank_by
        ]


def group_runs(runs: Iterable[RunResult]) -> list[RunGroup]:
    """Non-baseline runs grouped by (comparability key, pool, recipe, scale)."""
    grouped: dict[tuple[str, str, str, str], list[RunResult]] = {}
    for run in runs:
        if not run.baseline:
            key = (run.comparability_key, run.pool, run.recipe, run.scale)
            grouped.setdefault(key, []).append(run)
    return [RunGroup(*key, runs=tuple(members)) for key, members in sorted(grouped.items())]


def require_comparable(groups: Sequence[RunGroup], group_by_key: bool) -> None:
    """Refuse to put runs of different comparability keys in one ranking."""
    keys: dict[str, list[RunGroup]] = {}
    for group in groups:
        keys.setdefault(group.comparability_key, []).append(group)
    if len(keys) <= 1 or group_by_key:
        return
    described = "; ".join(
        f"{key[:12]}: {', '.join(group.label or group.pool for group in members)}"
        for key, members in sorted(keys.items())
    )
    raise UserInputError(
        f"these results come from {len(keys)} different training/eval setups (comparability "
        f"keys {described}); runs of different setups cannot be ranked side by side. Pass "
        "--group-by-key for one table per setup, or pass only the roots of one setup"
    )


def _summarize_group(
    group: RunGroup,
    baselines: Sequence[RunResult],
    fits: dict[tuple[str, str], LinearFit | None],
    spreads: dict[tuple[str, str], LineSpread],
    n_boot: int,
    confidence: float,
    seed: int,
) -> GroupSummary:
    first = group.runs[0]
    tasks = [task for task, result in first.tasks.items() if result.accuracy is not None]
    accuracy = {}
    for task in tasks:
        values = [run.accuracy(task) for run in group.runs]
        if all(value is not None for value in values):
            accuracy[task] = seed_spread(values)
    pool_id_tasks = sorted(first.tasks_of_kind(KIND_POOL_ID))
    shifts = []
    for id_task, shift_task in sorted(first.shift_pairs()):
        if id_task not in accuracy or shift_task not in accuracy:
            continue
        fit = fits.get((id_task, shift_task))
        if fit is None:
            problem = (
                f"no ER: fewer than 2 baseline runs (of different ID accuracy) with {id_task} "
                f"and {shift_task}; train baselines with `curate baseline`"
            )
            shifts.append(ShiftSummary(id_task, shift_task, None, None, problem))
            continue
        er = estimate_er(
            group.runs, baselines, id_task, shift_task,
            n_boot=n_boot, confidence=confidence, seed=seed,
        )  # fmt: skip
        multi, problem = None, None
        if pool_id_tasks and pool_id_tasks[0] in accuracy:
            try:
                multi = estimate_multi_id_er(
                    group.runs, baselines, (id_task, pool_id_tasks[0]), shift_task
                )
            except UserInputError as error:
                problem = f"no multi-ID ER: {error}"
        spread = spreads.get((id_task, shift_task))
        extrapolated = None if spread is None else spread.extrapolated(accuracy[id_task][0])
        shifts.append(ShiftSummary(id_task, shift_task, er, multi, problem, extrapolated))
    return GroupSummary(
        group=group,
        accuracy=accuracy,
        id_tasks=tuple(sorted(first.tasks_of_kind(KIND_ID))),
        shifts=tuple(shifts),
    )


def _baseline_fits(
    groups: Sequence[RunGroup], baselines: Sequence[RunResult]
) -> dict[tuple[str, str], LinearFit | None]:
    pairs = {pair for group in groups for run in group.runs for pair in run.shift_pairs()}
    pairs |= {pair for run in baselines for pair in run.shift_pairs()}
    fits: dict[tuple[str, str], LinearFit | None] = {}
    for id_task, shift_task in sorted(pairs):
        try:
            fits[(id_task, shift_task)] = tiny_baseline_fit(baselines, id_task, shift_task)
        except UserInputError:
            fits[(id_task, shift_task)] = None
    return fits


def _line_spreads(
    fits: dict[tuple[str, str], LinearFit | None], baselines: Sequence[RunResult]
) -> dict[tuple[str, str], LineSpread]:
    """Each fitted line's residual spread and ID range."""
    return {
        pair: line_spread(baselines, *pair, fit) for pair, fit in fits.items() if fit is not None
    }


def _ranked(summaries: list[GroupSummary], rank_by: str) -> list[GroupSummary]:
    """Rank within each comparability key (best first; groups without a score last)."""
    ranked = []
    by_key: dict[str, list[GroupSummary]] = {}
    for summary in summaries:
        by_key.setdefault(summary.group.comparability_key, []).append(summary)
    for key in sorted(by_key):
        members = sorted(
            by_key[key],
            key=lambda s: (s.score(rank_by) is None, -(s.score(rank_by) or 0.0), s.group.label),
        )
        ranked.extend(replace(summary, rank=index) for index, summary in enumerate(members, 1))
    return ranked


def slug(task: str) -> str:
    """A task id as a SQL-friendly column name part: ``cinic10-imagenet`` -> ``cinic10_imagenet``"""
    return re.sub(r"[^0-9a-zA-Z]+", "_", task).strip("_").lower()
