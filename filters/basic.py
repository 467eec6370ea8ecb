"""``basic``: DataComp's basic filter (Gadre et al. 2023, "basic filtering" baseline).

Keeps a sample when its caption is in the wanted language, has more than two words and
more than five characters, and its image's shorter side is at least 200 px with an aspect
ratio (long side / short side) of at most 3. Every threshold is a parameter: the demo's
32 px images need ``min_side: 0``.

Words are counted as Python's ``str.split()`` counts them and characters as ``len(str)``
(Unicode code points), as DataComp does. Language: see :mod:`curate.filters.language_id`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curate.filters.language_id import check_language, identify_languages
from curate.filters.registry import (
    MissingColumnError,
    StageContext,
    StageParams,
    StageResult,
    register_stage,
)

# Python's str.split() separators: Unicode White_Space plus the ASCII separators \x1c-\x1f.
_WORD = r"[^\s\x1c-\x1f]+"
SIZE_COLUMNS = (("width", "height"), ("original_width", "original_height"))


class LanguageParams(StageParams):
    language: str = Field(
        "en",
        description="keep captions whose most likely language (langid.py's bundled model, "
        "97 languages) is this ISO 639-1 code",
    )
    min_language_probability: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="also require the language's normalised probability to be at least this; "
        "0 keeps every caption whose top language matches (DataComp's rule, no threshold)",
    )

    _known_language = field_validator("language")(check_language)


class BasicParams(LanguageParams):
    min_words: int = Field(
        3, ge=0, description="keep captions with at least this many words (DataComp: more than 2)"
    )
    min_chars: int = Field(
        6,
        ge=0,
        description="keep captions with at least this many characters (DataComp: more than 5)",
    )
    min_side: int = Field(
        200, ge=0, description="keep images whose shorter side is at least this many pixels"
    )
    max_aspect_ratio: float = Field(
        3.0, ge=1.0, description="keep images whose long side / short side is at most this"
    )


def language_keep(texts: pl.Series, params: LanguageParams) -> tuple[np.ndarray, np.ndarray]:
    """Keep-mask and per-row reason (None where kept) for the language rule."""
    codes, probabilities = identify_languages(texts.to_arrow())
    keep = (codes == params.language) & (probabilities >= params.min_language_probability)
    removed = pl.DataFrame({"lang": codes[~keep], "p": probabilities[~keep]})
    messages = removed.select(
        pl.format("not {} (lang={}, p={})", pl.lit(params.language), "lang", pl.col("p").round(2))
    ).to_series()
    reason = np.full(len(keep), None, dtype=object)
    reason[~keep] = messages.to_numpy()
    return keep, reason


def size_columns(rows: pl.DataFrame | Sequence[str]) -> tuple[str, str]:
    columns = rows.columns if isinstance(rows, pl.DataFrame) else list(rows)
    for width, height in SIZE_COLUMNS:
        if width in columns and height in columns:
            return width, height
    raise MissingColumnError(
        "the basic filter needs image sizes: samples.parquet has none of the column pairs "
        f"{SIZE_COLUMNS} (it has {columns}); ingest the images or use a pool that records them"
    )


def _columns(params: BasicParams, available: Sequence[str]) -> list[str]:
    return ["text", *size_columns(available)]


@register_stage("basic", BasicParams, columns=_columns, per_row=True)
def basic(context: StageContext, params: BasicParams) -> StageResult:
    rows = context.rows
    width, height = size_columns(rows)
    language_ok, language_reason = language_keep(rows["text"], params)
    sizes = rows.select(w=pl.col(width).fill_null(0), h=pl.col(height).fill_null(0))
    text = rows["text"].fill_null("")
    checks = (
        sizes.with_columns(
            words=text.str.count_matches(_WORD),
            chars=text.str.len_chars(),
            short_side=pl.min_horizontal("w", "h"),
            long_side=pl.max_horizontal("w", "h"),
        )
        .with_columns(
            ratio=pl.col("long_side").cast(pl.Float64) / pl.col("short_side").cast(pl.Float64),
        )
        .with_columns(
            caption_ok=(pl.col("words") >= params.min_words)
            & (pl.col("chars") >= params.min_chars),
            size_ok=pl.col("short_side") >= params.min_side,
            # x/0 is inf, 0/0 is NaN (above everything for polars): both fail, as in DataComp.
            ratio_ok=pl.col("ratio") <= params.max_aspect_ratio,
        )
    )
    rule_reasons = checks.select(
        caption=pl.when(~pl.col("caption_ok")).then(
            pl.format("caption too short ({} words, {} chars)", "words", "chars")
        ),
        size=pl.when(~pl.col("size_ok")).then(
            pl.format("image too small ({} x {} < {})", "w", "h", pl.lit(params.min_side))
        ),
        ratio=pl.when(~pl.col("ratio_ok")).then(
            pl.format(
                "aspect ratio {} > {}", pl.col("ratio").round(2), pl.lit(params.max_aspect_ratio)
            )
        ),
    )
    reason = (
        pl.DataFrame({"language": pl.Series(language_reason.tolist(), dtype=pl.String)})
        .hstack(rule_reasons)
        .select(pl.concat_str(pl.all(), separator="; ", ignore_nulls=True))
        .to_series()
    )
    keep = (
        language_ok
        & checks.select(pl.col("caption_ok") & pl.col("size_ok") & pl.col("ratio_ok"))
        .to_series()
        .to_numpy()
    )
    reason_array = reason.to_numpy().astype(object)
    reason_array[keep] = None
    return StageResult(
        keep=keep,
        reason=reason_array,
        report={
            "removed_language": int((~language_ok).sum()),
            "removed_caption": int((~checks["caption_ok"]).sum()),
            "removed_size": int((~checks["size_ok"]).sum()),
            "removed_aspect_ratio": int((~checks["ratio_ok"]).sum()),
        },
    )
