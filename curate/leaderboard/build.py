"""`curate leaderboard`: collect every scored run under some roots, rank them and write the
database (:mod:`curate.leaderboard.tables`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from curate.core.errors import UserInputError
from curate.eval.collect import collect_runs
from curate.eval.er_uncertainty import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
)
from curate.leaderboard.external import (
    EXTERNAL_TABLE,
    external_leaderboard,
    find_external_results,
    load_external_results,
)
from curate.leaderboard.groups import group_runs, require_comparable
from curate.leaderboard.model import Leaderboard, summarize
from curate.leaderboard.tables import leaderboard_tables, write_database


def build_leaderboard(
    roots: Sequence[Path],
    out_dir: Path,
    *,
    rank_by: str = "er",
    group_by_key: bool = False,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[Leaderboard, dict[str, Path]]:
    """Collect results under ``roots``, rank them and write the database under ``out_dir``."""
    runs = collect_runs(roots)
    external = find_external_results(roots)  # `curate import-results` folders: own table
    if not runs and not external:
        raise UserInputError(
            f"no results found under {', '.join(map(str, roots))} (looked for "
            "results/<run_id>/results.jsonl); score a pool first (`curate score`)"
        )
    require_comparable(group_runs(runs), group_by_key)
    leaderboard = summarize(runs, rank_by=rank_by, n_boot=n_boot, confidence=confidence, seed=seed)
    tables = leaderboard_tables(runs, leaderboard)
    if external:
        tables[EXTERNAL_TABLE] = external_leaderboard(
            load_external_results(external), n_boot=n_boot, confidence=confidence, seed=seed
        )
    written = write_database(tables, out_dir)
    return leaderboard, written
