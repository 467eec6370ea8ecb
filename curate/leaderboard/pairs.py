"""Pairwise ER differences between the candidate pools of one setup (comparability key).

"Pool A has ER +1.8 and pool B +0.3" does not say that A beats B: both ERs share the same
baseline fit and test images, so their difference has its own, usually narrower, interval.
For every pair of pools under one key and every shift, this computes ER(A) − ER(B) with a
paired bootstrap over test images (refitting the baseline line) plus both seed spreads
(:func:`curate.eval.er_uncertainty.er_difference`), and whether the interval excludes 0. A is the
better-ranked pool of the pair, so a positive difference is "the ranking holds".

The verdict ("significant" / "not significant") needs two or more seeds of both pools; with
one seed the interval covers test images only and the verdict is "untested (1 seed)": two
single training runs differ by training noise that no test-image bootstrap sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from curate.eval.collect import RunResult
from curate.eval.er_uncertainty import (
    MIN_SEEDS_FOR_VERDICT,
    difference_verdict,
    er_difference,
    interval_covers,
)
from curate.leaderboard.groups import GroupSummary


@dataclass(frozen=True)
class PairDifference:
    comparability_key: str
    id_task: str
    shift_task: str
    pool_a: str  # group labels (pool/recipe/scale); A is ranked above B
    pool_b: str
    difference: float  # ER(A) - ER(B), accuracy fraction
    low: float | None
    high: float | None
    method: str
    excludes_zero: bool  # the interval's, whatever it covers
    n_seeds_a: int
    n_seeds_b: int

    @property
    def tested(self) -> bool:
        """Both pools ran enough seeds for the interval to hold training-seed noise."""
        return min(self.n_seeds_a, self.n_seeds_b) >= MIN_SEEDS_FOR_VERDICT

    @property
    def significant(self) -> bool | None:
        """The verdict as a boolean: None when untested."""
        return self.excludes_zero if self.tested else None

    @property
    def verdict(self) -> str:
        return difference_verdict(self.excludes_zero, min(self.n_seeds_a, self.n_seeds_b))

    @property
    def covers(self) -> str:
        """What the interval's width accounts for: test images only, or test images + seeds."""
        return interval_covers(self.method, self.n_seeds_a, self.n_seeds_b)

    def describe(self) -> str:
        interval = "" if self.low is None else f" [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        return (
            f"{self.pool_a} − {self.pool_b} on {self.shift_task}: "
            f"{100 * self.difference:+.1f}{interval} points ({self.covers}), {self.verdict}"
        )


def pairwise_differences(
    ranked: Sequence[GroupSummary],
    baselines: Sequence[RunResult],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> list[PairDifference]:
    """Every pair of groups of the same key (in rank order) and every shift both have an ER on."""
    by_key: dict[str, list[GroupSummary]] = {}
    for summary in ranked:
        by_key.setdefault(summary.group.comparability_key, []).append(summary)
    pairs = []
    for key in sorted(by_key):
        members = sorted(by_key[key], key=lambda s: (s.rank is None, s.rank or 0))
        for better, worse in combinations(members, 2):
            shared = _shifts_with_er(better) & _shifts_with_er(worse)
            for id_task, shift_task in sorted(shared):
                result = er_difference(
                    better.group.runs, worse.group.runs, baselines, id_task, shift_task,
                    n_boot=n_boot, confidence=confidence, seed=seed,
                )  # fmt: skip
                pairs.append(
                    PairDifference(
                        comparability_key=key,
                        id_task=id_task,
                        shift_task=shift_task,
                        pool_a=better.group.label,
                        pool_b=worse.group.label,
                        difference=result.difference,
                        low=result.interval.low,
                        high=result.interval.high,
                        method=result.interval.method,
                        excludes_zero=result.interval.excludes_zero,
                        n_seeds_a=len(better.group.runs),
                        n_seeds_b=len(worse.group.runs),
                    )
                )
    return pairs


def _shifts_with_er(summary: GroupSummary) -> set[tuple[str, str]]:
    return {(s.id_task, s.shift_task) for s in summary.shifts if s.er is not None}


def differences_table(differences: Sequence[PairDifference]) -> Any:
    import polars as pl

    schema = {
        "comparability_key": pl.String, "id_task": pl.String, "shift_task": pl.String,
        "pool_a": pl.String, "pool_b": pl.String, "er_difference": pl.Float64,
        "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_method": pl.String,
        "covers": pl.String, "excludes_zero": pl.Boolean, "n_seeds_a": pl.Int64,
        "n_seeds_b": pl.Int64, "verdict": pl.String, "significant": pl.Boolean,
    }  # fmt: skip
    rows = [
        {
            "comparability_key": d.comparability_key,
            "id_task": d.id_task,
            "shift_task": d.shift_task,
            "pool_a": d.pool_a,
            "pool_b": d.pool_b,
            "er_difference": d.difference,
            "ci_low": d.low,
            "ci_high": d.high,
            "ci_method": d.method,
            "covers": d.covers,
            "excludes_zero": d.excludes_zero,
            "n_seeds_a": d.n_seeds_a,
            "n_seeds_b": d.n_seeds_b,
            "verdict": d.verdict,
            "significant": d.significant,  # null when untested
        }
        for d in differences
    ]
    return pl.DataFrame(rows, schema=schema, strict=False)
