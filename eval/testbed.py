"""Baseline fits from the ImageNet robustness testbed's published accuracies (Taori et al. 2020).

The shipped table (``eval/data/imagenet_testbed_accuracies.csv``, percent) has one row per
model. Only STANDARD models (trained on ImageNet, no robustness intervention) enter a fit.
The testbed pairs each shift with the ImageNet accuracy it is compared against: ImageNetV2 and
ImageNet-Sketch against the whole validation set (``val``); ObjectNet, ImageNet-R and
ImageNet-A, which cover only some ImageNet classes, against validation accuracy on those
classes (``val-on-<shift>-classes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.core.errors import UserInputError
from curate.eval.effective_robustness import LinearFit, fit_logit_line

TESTBED_CSV = Path(__file__).parent / "data" / "imagenet_testbed_accuracies.csv"
STANDARD = "STANDARD"


@dataclass(frozen=True)
class ImageNetShift:
    """One shift column of the testbed and the ID column it is plotted against."""

    shift: str
    id_column: str
    excluded_models: tuple[str, ...] = ()
    note: str = ""


TESTBED_SHIFTS: dict[str, ImageNetShift] = {
    shift.shift: shift
    for shift in (
        ImageNetShift("imagenetv2-matched-frequency-format-val", "val"),
        ImageNetShift("imagenet-sketch", "val"),
        ImageNetShift("objectnet-1.0-beta", "val-on-objectnet-classes"),
        ImageNetShift("imagenet-r", "val-on-imagenet-r-classes"),
        ImageNetShift(
            "imagenet-a",
            "val-on-imagenet-a-classes",
            excluded_models=("resnet50",),
            note=(
                "ImageNet-A kept only images a ResNet-50 misclassifies, so resnet50's 0% is by "
                "construction; the testbed's ImageNet-A plot leaves it out, and so does this fit"
            ),
        ),
    )
}


@dataclass(frozen=True)
class ImageNetShiftPoints:
    shift: ImageNetShift
    models: tuple[str, ...]
    id_accuracy: np.ndarray
    ood_accuracy: np.ndarray


def testbed_shift(name: str) -> ImageNetShift:
    if name not in TESTBED_SHIFTS:
        raise UserInputError(
            f"unknown testbed shift {name!r}; choose one of: {', '.join(TESTBED_SHIFTS)}"
        )
    return TESTBED_SHIFTS[name]


def testbed_points(
    name: str, path: Path = TESTBED_CSV, standard_only: bool = True
) -> ImageNetShiftPoints:
    """Accuracies (fractions) of the testbed models that have both columns of ``name``'s pair."""
    import polars as pl

    shift = testbed_shift(name)
    table = pl.read_csv(path, infer_schema_length=None)
    missing = {"model", "model_type", shift.id_column, shift.shift} - set(table.columns)
    if missing:
        raise UserInputError(f"{path}: missing columns {sorted(missing)}")
    rows = table.filter(
        pl.col(shift.id_column).is_not_null()
        & pl.col(shift.shift).is_not_null()
        & ~pl.col("model").is_in(list(shift.excluded_models))
    )
    if standard_only:
        rows = rows.filter(pl.col("model_type") == STANDARD)
    return ImageNetShiftPoints(
        shift=shift,
        models=tuple(rows["model"].to_list()),
        id_accuracy=rows[shift.id_column].to_numpy() / 100.0,
        ood_accuracy=rows[shift.shift].to_numpy() / 100.0,
    )


def fit_testbed(name: str, path: Path = TESTBED_CSV) -> LinearFit:
    """The logit-space baseline line of the testbed's STANDARD models for one shift."""
    points = testbed_points(name, path)
    return fit_logit_line(
        points.id_accuracy,
        points.ood_accuracy,
        id_task=points.shift.id_column,
        ood_task=points.shift.shift,
        source="imagenet-testbed",
    )
