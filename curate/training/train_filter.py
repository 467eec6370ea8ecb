"""`curate train-filter`: a data-filtering network in the DFN sense (Fang et al. 2023).

A small CLIP trained with the same loop as `curate score`, but on trusted data only (a clean
labelled slice captioned by class-name templates, or a pool / candidate pool the user trusts),
so that its image-text similarity says how well a caption fits its image. The result is a
curate checkpoint directory: ``curate embed --checkpoint DIR`` embeds a pool with it and the
clip-score filter then uses its scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.core.atomic import staged_output, write_json
from curate.core.manifest import code_version
from curate.training.checkpoint import is_complete_checkpoint
from curate.training.data import TrainingSet, labelled_parquet_training_set, open_training_set
from curate.training.scales import get_scale

DEFAULT_CAPTION_TEMPLATES = ("a photo of a {}.",)
TRAIN_INFO = "train_filter.json"


def trusted_training_set(
    trusted: str | Path, caption_templates: Sequence[str] | None, row_filter: str | None
) -> TrainingSet:
    """A pool / candidate pool directory, or a labelled parquet (a path or ``demo:NAME``)."""
    text = str(trusted)
    if text.startswith("demo:"):
        from curate.core import shipped_data as demo_data

        path = demo_data.path(text.removeprefix("demo:"))
    else:
        path = Path(text)
    if path.is_dir():
        return open_training_set(path)
    return labelled_parquet_training_set(
        path, list(caption_templates or DEFAULT_CAPTION_TEMPLATES), row_filter
    )


def train_filter(
    trusted: str | Path,
    out: Path | str,
    *,
    scale_name: str = "tiny",
    seed: int = 0,
    caption_templates: Sequence[str] | None = None,
    row_filter: str | None = None,
    scales_file: Path | str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train and publish the filter network to ``out``; returns what train_filter.json says.

    A killed run resumes from its last checkpoint when the same command is rerun.
    """
    from curate.training.loop import train_clip

    out = Path(out).resolve()
    training_set = trusted_training_set(trusted, caption_templates, row_filter)
    scale = get_scale(scale_name, scales_file)
    with staged_output(out, overwrite=overwrite, resume=True) as staging:
        info = {
            "trained_on": training_set.identity,
            "scale": scale_name,
            "config": scale.model_dump(),
            "seed": seed,
            "code_version": code_version(),
        }
        if is_complete_checkpoint(staging) and (staging / TRAIN_INFO).is_file():
            info = json.loads((staging / TRAIN_INFO).read_text("utf-8"))  # killed before publish
        else:
            outcome = train_clip(
                training_set,
                scale,
                seed,
                state_path=staging / "train_state.pt",
                checkpoint_dir=staging,
                show_progress=show_progress,
            )
            info["train"] = outcome.summary()
            write_json(staging / TRAIN_INFO, info)
    return info
