"""``laion2b``: the LAION-2B-en rule as DataComp reproduces it ("LAION-2B filtering" baseline):
CLIP score >= 0.28 and an English caption.

LAION's 0.28 is a cosine similarity of OpenAI's ViT-B/32 (DataComp's
``clip_b32_similarity_score``); other models score on other scales, so set ``threshold``
for the model that made the scores. DataComp detects English with gcld3; curate uses
langid.py's bundled model (:mod:`curate.filters.language_id`). The score is checked first and the
language only for the samples that pass it, so a removed sample's reason names the first
rule it failed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from curate.filters.basic import LanguageParams, language_keep
from curate.filters.clip_score import (
    ScoreSourceParams,
    row_scores,
    score_columns,
    threshold_stage_result,
)
from curate.filters.registry import StageContext, StageResult, register_stage


class Laion2bParams(ScoreSourceParams, LanguageParams):
    threshold: float = Field(
        0.28, description="keep samples with CLIP score >= this (LAION: 0.28 with ViT-B/32)"
    )


def _columns(params: Laion2bParams, available: Sequence[str]) -> list[str]:
    return [*score_columns(params, available), "text"]


@register_stage("laion2b", Laion2bParams, columns=_columns, per_row=True)
def laion2b(context: StageContext, params: Laion2bParams) -> StageResult:
    scores = row_scores(context, params)
    by_score = threshold_stage_result(scores, params.threshold, {})
    keep = by_score.keep.copy()
    reason = np.full(len(keep), None, dtype=object)
    reason[~keep] = by_score.reason
    checked = keep.nonzero()[0]
    language_ok, language_reason = language_keep(context.rows["text"].gather(checked), params)
    keep[checked] = language_ok
    reason[checked] = language_reason
    return StageResult(
        keep=keep,
        reason=reason,
        score=scores,
        score_column=params.column,
        report={
            "threshold": params.threshold,
            "removed_score": int((~by_score.keep).sum()),
            "removed_language": int((~language_ok).sum()),
        },
    )
