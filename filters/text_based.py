"""``text_based``: keep samples whose caption names something from the downstream task's
vocabulary (DataComp's "text-based filtering" baseline keeps English captions with a word
whose first WordNet synset is an ImageNet-21k class; here: a class name or synonym).

Matching is by whole words, case-insensitive: a caption's words are its maximal runs of
letters, digits and underscores (regex ``\\w+``), and a term matches when its words appear
consecutively among them. So ``cat`` matches "A cat." and "cat-shaped" but not "catalog",
and ``sports car`` matches "Sports-car" too. With ``plurals: true`` a term's last word also
matches its regular English plurals (cats, boxes, ponies). Vocabularies: see
:mod:`curate.filters.vocabulary` (``cifar10``, ``imagenet21k`` or a class-name file's path).

Captions are tokenised and matched with polars over whole columns: every caption n-gram up
to the longest term is looked up in the vocabulary by a hash join, so vocabularies of any
size cost the same (a single regex alternation of 100k terms would not even compile).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curate.filters.basic import LanguageParams, language_keep
from curate.filters.language_id import check_language
from curate.filters.registry import (
    StageContext,
    StageParams,
    StageResult,
    merge_reports,
    register_stage,
)
from curate.filters.vocabulary import Vocabulary, load_vocabulary, words

ROWS_PER_CHUNK = 500_000  # captions tokenised at a time (bounds the exploded word table)


class TextBasedParams(StageParams):
    vocab: str = Field(
        description="'cifar10' (filters/vocab/), 'imagenet21k' (from timm's class lists) or the "
        "path of a class-name file: one class per line, synonyms separated by commas"
    )
    plurals: bool = Field(True, description="also match regular plurals of each term's last word")
    min_term_chars: int = Field(
        3, ge=1, description="ignore vocabulary terms shorter than this ('a', 'or', 'ox')"
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="vocabulary terms to ignore, e.g. words too common in captions "
        "('image', 'picture', 'stock' are ImageNet-21k lemmas)",
    )
    language: str | None = Field(
        None,
        description="also require this caption language (DataComp's text-based baseline: 'en')",
    )
    min_language_probability: float = Field(
        0.0, ge=0.0, le=1.0, description="with language: minimum probability of that language"
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str | None) -> str | None:
        return None if language is None else check_language(language)


def matching_class(texts: pl.Series, vocabulary: Vocabulary) -> pl.Series:
    """For each caption, the class of the first vocabulary term in it (null if none)."""
    parts = [
        _matching_class_chunk(texts.slice(start, ROWS_PER_CHUNK), vocabulary)
        for start in range(0, max(len(texts), 1), ROWS_PER_CHUNK)
    ]
    return pl.concat(parts)


def _matching_class_chunk(texts: pl.Series, vocabulary: Vocabulary) -> pl.Series:
    tokens = (
        pl.DataFrame({"text": texts})
        .with_row_index("row")
        .select("row", word=words(pl.col("text")))
        .explode("word")
        .drop_nulls("word")
        .with_row_index("position")
    )
    grams = []
    for length in range(1, vocabulary.max_words + 1):
        same_caption = pl.col("row").shift(-(length - 1)) == pl.col("row")
        gram = pl.concat_str([pl.col("word").shift(-k) for k in range(length)], separator=" ")
        grams.append(
            tokens.select(
                "row", "position", length=pl.lit(length), term=pl.when(same_caption).then(gram)
            )
        )
    first_match = (
        pl.concat(grams)
        .join(vocabulary.term_class, on="term", how="inner")
        .sort("row", "position", "length")
        .unique(subset="row", keep="first")
    )
    rows = pl.DataFrame({"row": pl.arange(0, len(texts), eager=True, dtype=pl.UInt32)})
    return rows.join(first_match, on="row", how="left", maintain_order="left")["class"]


def _merge_reports(reports: list[dict]) -> dict:
    """The vocabulary's size and source once, removal counts summed; the top classes are
    those of the shards' own top lists, summed (exact on a pool of one shard)."""
    if not reports:
        return {}
    counts = [{k: v for k, v in r.items() if k.startswith("removed_")} for r in reports]
    merged = {**reports[0], **merge_reports(counts)}
    classes: dict[str, int] = {}
    for report in reports:
        for name, count in report.get("top_classes", {}).items():
            classes[name] = classes.get(name, 0) + count
    top = sorted(classes.items(), key=lambda item: (-item[1], item[0]))[:20]
    return {**merged, "top_classes": dict(top)}


@register_stage(
    "text_based", TextBasedParams, columns=("text",), per_row=True, merge_reports=_merge_reports
)
def text_based(context: StageContext, params: TextBasedParams) -> StageResult:
    vocabulary = load_vocabulary(
        params.vocab,
        plurals=params.plurals,
        min_term_chars=params.min_term_chars,
        exclude=params.exclude,
    )
    texts = context.rows["text"].fill_null("")
    matched = matching_class(texts, vocabulary)
    keep = matched.is_not_null().to_numpy()
    reason = np.full(len(keep), None, dtype=object)
    reason[~keep] = f"no term of vocabulary {params.vocab} in caption"
    report: dict = {
        "vocabulary": vocabulary.source,
        "terms": vocabulary.term_class.height,
        "top_classes": dict(matched.drop_nulls().value_counts(sort=True).head(20).iter_rows()),
    }
    if params.language is not None:
        checked = keep.nonzero()[0]
        language = LanguageParams(
            language=params.language, min_language_probability=params.min_language_probability
        )
        language_ok, language_reason = language_keep(texts.gather(checked), language)
        keep[checked] = language_ok
        reason[checked] = language_reason
        report["removed_language"] = int((~language_ok).sum())
    return StageResult(keep=keep, reason=reason, report=report)
