"""Training scales: the fixed compute budgets of `curate score`, read from a YAML file.

A scale is data (``curate/training/scales.yaml``, or a user file passed as
``--scales-file``), checked
field by field on load so that a typo fails before any training starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curate.core.errors import InputNotFoundError, UserInputError

SCALES_FILE = Path(__file__).resolve().with_name("scales.yaml")


class Scale(BaseModel):
    """One training budget and recipe (see the comments atop ``curate/training/scales.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    image_size: int = Field(gt=0)
    samples_seen: int = Field(gt=0)
    batch_size: int = Field(gt=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.98, ge=0, lt=1)
    eps: float = Field(default=1e-6, gt=0)
    warmup: int = Field(ge=0)
    schedule: Literal["cosine", "const"] = "cosine"
    precision: Literal["fp32", "amp_bf16", "amp"] = "fp32"
    workers: int = Field(default=0, ge=0)
    image_cache_gib: float = Field(default=2.0, ge=0)
    checkpoint_every: int = Field(default=100, gt=0)
    local_loss: bool = False
    gather_with_grad: bool = False
    augment: bool = True  # open_clip's random resized crop; false: every image whole, as is

    @model_validator(mode="after")
    def _warmup_fits(self) -> Scale:
        if self.warmup >= self.steps:
            raise ValueError(
                f"warmup ({self.warmup} steps) must be shorter than the run "
                f"({self.steps} steps = samples_seen / batch_size)"
            )
        return self

    @property
    def steps(self) -> int:
        """Optimizer steps: samples_seen rounded up to whole global batches."""
        return math.ceil(self.samples_seen / self.batch_size)

    def identity(self) -> dict[str, Any]:
        """The settings that name a run (run id, resume check): ``augment`` only when off, so
        that runs from before the field existed keep their ids."""
        settings = self.model_dump()
        if settings["augment"]:
            del settings["augment"]
        return settings

    def with_samples_seen(self, samples_seen: int) -> Scale:
        """The same recipe at another budget (the baseline line); warmup keeps its fraction."""
        fraction = self.warmup / self.steps
        steps = math.ceil(samples_seen / self.batch_size)
        warmup = min(round(fraction * steps), steps - 1)
        return Scale(**{**self.model_dump(), "samples_seen": samples_seen, "warmup": warmup})


def load_scales(path: Path | str | None = None) -> dict[str, Scale]:
    """Every scale in a scales file (the shipped one by default), validated."""
    path = Path(path) if path is not None else SCALES_FILE
    if not path.is_file():
        raise InputNotFoundError(f"scales file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserInputError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserInputError(f"{path}: expected a mapping of scale name -> settings")
    scales = {}
    for name, settings in raw.items():
        try:
            scales[str(name)] = Scale.model_validate(settings)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'scale'}: {e['msg']}"
                for e in error.errors()
            )
            raise UserInputError(f"{path}: scale {name!r}: {problems}") from None
    return scales


def get_scale(name: str, path: Path | str | None = None) -> Scale:
    scales = load_scales(path)
    if name not in scales:
        raise UserInputError(
            f"unknown scale {name!r}; scales in {path or SCALES_FILE}: {', '.join(scales)}"
        )
    return scales[name]
