"""The recipe search's sweep as a rich table (`curate search-recipe`)."""

from __future__ import annotations

from typing import Any

from curate.eval.er_uncertainty import interval_covers
from curate.leaderboard.groups import GroupSummary
from curate.recipe_search import SearchResult, points_label, value_label


def sweep_table(result: SearchResult) -> Any:
    """The sweep as a rich table: one row per value, ranked by ER (percentage points)."""
    from rich.table import Table

    summaries = [row.summary for row in result.rows]
    id_tasks = sorted({task for s in summaries for task in s.id_tasks})
    shifts = sorted({(sh.id_task, sh.shift_task) for s in summaries for sh in s.shifts})
    table = Table(
        title=f"{result.param} of stage {result.stage_index} ({result.stage}) at scale "
        f"{result.scale}, seeds {list(result.seeds)}; ranked by ER",
        caption="accuracy % (mean ± std over seeds); ER in points [95% interval"
        + _interval_covers(result)
        + "]",
    )
    for column in ("#", result.param, "kept"):
        table.add_column(column, justify="left" if column == result.param else "right")
    for task in id_tasks:
        table.add_column(f"{task} acc", justify="right")
    for _, shift_task in shifts:
        table.add_column(f"{shift_task} acc", justify="right")
        table.add_column(f"{shift_task} ER", justify="right")
    if len(shifts) > 1:
        table.add_column("avg ER", justify="right")
    table.add_column("mean acc", justify="right")
    for row in result.rows:
        summary = row.summary
        by_pair = {(s.id_task, s.shift_task): s for s in summary.shifts}
        cells = [str(row.rank or "-"), value_label(row.value), f"{row.kept:,}"]
        cells += [_accuracy(summary, task) for task in id_tasks]
        for pair in shifts:
            shift = by_pair.get(pair)
            er = shift.er if shift else None
            cells.append(_accuracy(summary, pair[1]))
            cells.append(
                "-"
                if er is None
                else f"{points_label(er.mean)}"
                + ("" if er.interval.low is None else
                   f" [{points_label(er.interval.low)}, {points_label(er.interval.high)}]")
            )  # fmt: skip
        if len(shifts) > 1:
            cells.append(points_label(row.average_er))
        cells.append(points_label(row.mean_accuracy, signed=False))
        style = "bold" if row is result.best_er else None
        table.add_row(*cells, style=style)
    return table


def _accuracy(summary: GroupSummary, task: str) -> str:
    mean, std = summary.accuracy.get(task, (None, None))
    if mean is None:
        return "-"
    return points_label(mean, signed=False) + ("" if std is None else f" ± {100 * std:.1f}")


def _interval_covers(result: SearchResult) -> str:
    """The caption's ", covering <what>" for the ER intervals: test images only with one seed,
    + seeds with more ("" when no point has an ER)."""
    ers = [shift.er for row in result.rows for shift in row.summary.shifts if shift.er]
    texts = dict.fromkeys(interval_covers(er.interval.method, er.n_seeds, er.n_seeds) for er in ers)
    return f", covering {'; '.join(texts)}" if texts else ""
