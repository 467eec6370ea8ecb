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
        table.add_column("outside baselines' ID range", justify="center")
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
            extrapolated = summary.extrapolated
            cells.append("-" if extrapolated is None else "yes" if extrapolated else "no")
            table.add_row(*cells)
        tables.append(table)
        differences = [d for d in leaderboard.differences if d.comparability_key == key]
        if differences:
            tables.append(_differences_rich_table(key, differences))
    if any(fit is not None for fit in leaderboard.fits.values()):
        tables.append(_fits_rich_table(leaderboard))
    return tables


def _fits_rich_table(leaderboard: Leaderboard) -> Any:
    """The baseline lines: fit, how far the baseline models scatter around it, its ID range."""
    from rich.table import Table

    table = Table(
        title="baseline lines: logit(OOD) = slope × logit(ID) + intercept",
        caption="residual std: the baseline models' scatter around their own line (n − 2 "
        "dof), in logit units and in OOD accuracy points; an ER inside it is on the line",
    )
    for column in ("ID → shift", "slope", "intercept", "R²", "n", "residual std logit",
                   "residual std points", "ID range %"):  # fmt: skip
        table.add_column(column, justify="right")
    for (id_task, shift_task), fit in sorted(leaderboard.fits.items()):
        if fit is None:
            continue
        spread = leaderboard.spreads.get((id_task, shift_task))
        logit_std = spread and spread.residual_std_logit
        points_std = spread and spread.residual_std_accuracy
        table.add_row(
            f"{id_task} → {shift_task}",
            f"{fit.slope:.2f}",
            f"{fit.intercept:+.2f}",
            f"{fit.r_squared:.2f}",
            str(fit.n_points),
            "-" if logit_std is None else f"{logit_std:.3f}",
            "-" if points_std is None else f"{100 * points_std:.1f}",
            "-" if spread is None else f"{100 * spread.id_min:.1f}–{100 * spread.id_max:.1f}",
        )
    return table


def _differences_rich_table(key: str, differences: Sequence[PairDifference]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"setup {key[:12]}: ER differences between pools (A ranked above B)",
        caption="points [95% interval]: paired bootstrap over test images, plus the seed "
        "spreads when both pools ran 2+ seeds; a verdict needs 2+ seeds of both pools",
    )
    for column in ("shift", "pool A", "pool B", "ER(A) − ER(B)", "interval covers", "verdict"):
        table.add_column(column)
    for d in differences:
        interval = "" if d.low is None else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        table.add_row(
            d.shift_task, d.pool_a, d.pool_b, f"{100 * d.difference:+.1f}{interval}",
            d.covers, d.verdict,
        )  # fmt: skip
    return table
