"""The progress bar every long stage shows (rich), with a samples/s rate."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    total: int | None,
    description: str,
    enabled: bool,
    *,
    completed: int = 0,
    unit: str = "samples",
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich bar with done/total, rate and time left; a no-op when
    disabled. ``completed`` starts the bar part-way (work done by an earlier, resumed run)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task(description, total=total, completed=completed, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")

        yield advance
