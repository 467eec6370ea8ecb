"""The leaderboard as data: every group's summary, ranked within its comparability key, the
baseline fits and the pairwise ER differences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from curate.core.errors import UserInputError
from curate.eval.baselines import LineSpread
from curate.eval.collect import RunResult
from curate.eval.effective_robustness import LinearFit
from curate.eval.er_uncertainty import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
)
from curate.leaderboard.groups import (
    RANK_BY,
    GroupSummary,
    _baseline_fits,
    _line_spreads,
    _ranked,
    _summarize_group,
    group_runs,
)
from curate.leaderboard.pairs import PairDifference, pairwise_differences


@dataclass(frozen=True)
class Leaderboard:
    summaries: tuple[GroupSummary, ...]
    baselines: tuple[RunResult, ...]
    fits: dict[tuple[str, str], LinearFit | None]
    rank_by: str
    differences: tuple[PairDifference, ...] = ()  # every pair of pools of one key, per shift
    # each fitted line's residual spread and ID range (the extrapolation flags' reference)
    spreads: dict[tuple[str, str], LineSpread] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return sorted({summary.group.comparability_key for summary in self.summaries})

    def by_key(self) -> dict[str, list[GroupSummary]]:
        tables: dict[str, list[GroupSummary]] = {}
        for summary in self.summaries:
            tables.setdefault(summary.group.comparability_key, []).append(summary)
        return tables


def summarize(
    runs: Sequence[RunResult],
    *,
    rank_by: str = "er",
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Leaderboard:
    """Group, estimate ER for every group and shift, and rank (within comparability keys)."""
    if rank_by not in RANK_BY:
        raise UserInputError(f"--rank-by must be one of {', '.join(RANK_BY)}, not {rank_by!r}")
    baselines = [run for run in runs if run.baseline]
    groups = group_runs(runs)
    fits = _baseline_fits(groups, baselines)
    spreads = _line_spreads(fits, baselines)
    summaries = _ranked(
        [
            _summarize_group(group, baselines, fits, spreads, n_boot, confidence, seed)
            for group in groups
        ],
        rank_by,
    )
    differences = pairwise_differences(
        summaries, baselines, n_boot=n_boot, confidence=confidence, seed=seed
    )
    return Leaderboard(
        tuple(summaries), tuple(baselines), fits, rank_by, tuple(differences), spreads
    )
