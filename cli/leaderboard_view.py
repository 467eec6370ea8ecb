"""Rich tables of a leaderboard for the terminal (`curate leaderboard`, `curate demo`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.eval.er_uncertainty import (
    ErEstimate,
)
from curate.leaderboard.model import Leaderboard
from curate.leaderboard.pairs import PairDifference


def _percent(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _er_cell(er: ErEstimate | None) -> str:
    if er is None:
        return "-"
    low, high = er.interval.low, er.interval.high
    interval = "" if low is None else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * er.mean:+.1f}{interval}"


def rich_tables(leaderboard: Leaderboard) -> list[Any]:
    """One rich table per comparability key (accuracies and ER in percentage points)."""
    from rich.table import Table

    tables = []
    for key, summaries in leaderboard.by_key().items():
        shifts = sorted({(s.id_task, s.shift_task) for g in summaries for s in g.shifts})
        id_tasks = sorted({task for g in summaries for task in g.id_tasks})
        samples = summaries[0].group.runs[0].samples_seen
        table = Table(
            title=f"setup {key[:12]} (samples seen {samples}); ranked by {leaderboard.rank_by}",
            caption="accuracy % (mean ± std over seeds); ER in points [95% interval]",
        )
        for column in ("#", "pool", "recipe", "scale", "seeds"):
            table.add_column(column)
        for task in id_tasks:
            table.add_column(f"{task} acc", justify="right")
        for _, shift_task in shifts:
            table.add_column(f"{shift_task} acc", justify="right")
            table.add_column(f"{shift_task} ER", justify="right")
            table.add_column(f"{shift_task} multi-ID ER", justify="right")
        table.add_column("avg ER", justify="right")
        table.add_column("avg acc", justify="right")
        for summary in summaries:
            by_pair = {(s.id_task, s.shift_task): s for s in summary.shifts}
            cells = [
                str(summary.rank),
                Path(summary.group.pool).name,
                summary.group.recipe,
                summary.group.scale,
                f"{len(summary.group.runs)}: {summary.group.seeds}",
            ]
            cells += [_percent(*summary.accuracy.get(task, (None, None))) for task in id_tasks]
            for pair in shifts:
                shift = by_pair.get(pair)
                cells.append(_percent(*summary.accuracy.get(pair[1], (None, None))))
                cells.append(_er_cell(shift.er) if shift else "-")
                multi = shift.multi_id_er if shift else None
                cells.append("-" if multi is None else f"{100 * multi.mean:+.1f}")
            average = summary.average_er
            cells.append("-" if average is None else f"{100 * average:+.1f}")
            cells.append(_percent(summary.average_accuracy))
            table.add_row(*cells)
        tables.append(table)
        differences = [d for d in leaderboard.differences if d.comparability_key == key]
        if differences:
            tables.append(_differences_rich_table(key, differences))
    return tables


def _differences_rich_table(key: str, differences: Sequence[PairDifference]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"setup {key[:12]}: ER differences between pools (A ranked above B)",
        caption="points [95% interval]: paired bootstrap over test images + seed spreads",
    )
    for column in ("shift", "pool A", "pool B", "ER(A) − ER(B)", "significant"):
        table.add_column(column)
    for d in differences:
        interval = "" if d.low is None else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        table.add_row(
            d.shift_task, d.pool_a, d.pool_b, f"{100 * d.difference:+.1f}{interval}",
            ("yes" if d.significant else "no")
            + ("" if d.seed_noise_included else " (1 seed: test images only)"),
        )  # fmt: skip
    return table
