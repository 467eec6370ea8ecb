"""Render the report page from its parts with a Jinja2 template (autoescaped: every caption,
name and reason is HTML-escaped). Numbers are formatted here, once, for the whole page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"
CAPTION_CHARS = 90  # longer captions are cut on the card; the full text is in its tooltip


def percent(value: float | None, digits: int = 1) -> str:
    """An accuracy (fraction) in percent: 0.4123 -> "41.2"."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def percent_spread(pair: tuple[float, float | None] | None) -> str:
    """(mean, std) of accuracies in percent: "41.2 ± 0.8", or "41.2" for one seed."""
    if pair is None:
        return "–"
    mean, std = pair
    return percent(mean) if std is None else f"{percent(mean)} ± {percent(std)}"


def points(value: float | None, digits: int = 1) -> str:
    """An ER (accuracy fraction) in signed percentage points: 0.031 -> "+3.1"."""
    return "–" if value is None else f"{100 * value:+.{digits}f}"


def share(value: float | None) -> str:
    """A fraction as a percentage with its sign: 0.25 -> "25.0 %"."""
    return "–" if value is None else f"{100 * value:.1f} %"


def count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def shorten(text: str, limit: int = CAPTION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        percent=percent,
        percent_spread=percent_spread,
        points=points,
        share=share,
        count=count,
        number=number,
        shorten=shorten,
    )
    return env


def render_page(page: Any) -> str:
    """The whole HTML document for a :class:`curate.report.build.ReportPage`."""
    return environment().get_template(PAGE_TEMPLATE).render(page=page)
