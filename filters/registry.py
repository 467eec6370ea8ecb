"""The stage registry: every filter and dedup stage is a function of the pool's table
(and embeddings where needed) that returns a keep-mask and a reason, registered by name
together with the pydantic model of its parameters (so recipes are validated before work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    """Base for stage parameters: unknown or mistyped fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


@dataclass(frozen=True)
class StageContext:
    """What a stage sees: the rows still in play (in pool order) and how to reach more.

    ``rows`` holds ``samples.parquet``'s columns for the surviving samples plus ``row``,
    the sample's index in ``samples.parquet`` (use it to index embeddings).
    """

    rows: pl.DataFrame
    pool_root: Path
    seed: int
    work_dir: Path  # scratch space for this stage (caches, indexes); may be reused on resume
    embeddings_name: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, compare=False)

    def image_embeddings(self) -> np.ndarray:
        """Float32 image embeddings of ``rows`` (row-aligned with ``rows``)."""
        return np.asarray(self._embeddings().image[self.rows["row"].to_numpy()], dtype=np.float32)

    def text_embeddings(self) -> np.ndarray:
        text = self._embeddings().text
        if text is None:
            raise ValueError(f"{self.pool_root}: embeddings have no text vectors")
        return np.asarray(text[self.rows["row"].to_numpy()], dtype=np.float32)

    def _embeddings(self) -> Any:
        from curate.core.embedding_store import load_embeddings

        if "embeddings" not in self._cache:
            self._cache["embeddings"] = load_embeddings(self.pool_root, self.embeddings_name)
        return self._cache["embeddings"]


@dataclass(frozen=True)
class StageResult:
    """keep[i] answers for ``rows[i]``; ``reason`` explains removals (one string, or one
    per row); ``score`` is the value the decision was made on, where there is one."""

    keep: np.ndarray
    reason: str | np.ndarray
    score: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)  # stage-specific stats for the log


StageFunction = Callable[[StageContext, Any], StageResult]


@dataclass(frozen=True)
class Stage:
    name: str
    params_model: type[StageParams]
    run: StageFunction
    needs_embeddings: bool


REGISTERED: dict[str, Stage] = {}  # filled as stage modules are imported; read via catalog


def register_stage(
    name: str, params_model: type[StageParams], *, needs_embeddings: bool = False
) -> Callable[[StageFunction], StageFunction]:
    """Register a stage function under ``name``; :mod:`curate.filters.catalog` imports it."""

    def decorate(function: StageFunction) -> StageFunction:
        if name in REGISTERED:
            raise ValueError(f"stage {name!r} registered twice")
        REGISTERED[name] = Stage(name, params_model, function, needs_embeddings)
        return function

    return decorate
