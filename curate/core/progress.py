"""The progress bar every long stage shows, with a rate: a rich bar on a terminal, and one
plain line every few seconds when the output goes to a log (so a job's log shows it moving)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Protocol

LOG_EVERY_SECONDS = 10.0


class Advance(Protocol):
    def __call__(self, n: int, note: str = "") -> None: ...


@contextlib.contextmanager
def progress_bar(
    total: int | None,
    description: str,
    enabled: bool,
    *,
    completed: int = 0,
    unit: str = "samples",
) -> Iterator[Advance]:
    """Yield ``advance(n, note="")``: n more units done; ``note`` (e.g. the loss) is shown
    after the rate. A no-op when disabled. ``completed`` starts the bar part-way (work done
    by an earlier, resumed run)."""
    if not enabled:
        yield lambda n, note="": None
        return
    if not sys.stderr.isatty():
        with _log_lines(total, description, completed, unit) as advance:
            yield advance
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
        TextColumn("{task.fields[rate]} {task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task(description, total=total, completed=completed, rate="", note="")

        def advance(n: int, note: str = "") -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "", note=note)

        yield advance


@contextlib.contextmanager
def _log_lines(total: int | None, description: str, completed: int, unit: str) -> Iterator[Advance]:
    started = last = time.monotonic()
    done = completed

    def line(note: str) -> str:
        elapsed = max(time.monotonic() - started, 1e-9)
        of = f"/{total:,}" if total else ""
        share = f" ({100 * done / total:.0f}%)" if total else ""
        rate = (done - completed) / elapsed
        return f"{description}: {done:,}{of} {unit}{share}, {rate:,.0f} {unit}/s {note}".rstrip()

    def advance(n: int, note: str = "") -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            print(line(note), file=sys.stderr, flush=True)

    yield advance
    print(line("done"), file=sys.stderr, flush=True)
