"""Baseline fits from the ImageNet robustness testbed's published accuracies (Taori et al. 2020).

The shipped table (``eval/data/imagenet_testbed_accuracies.csv``, percent) has one row per
model. The testbed pairs each shift with the ImageNet accuracy it is compared against:
ImageNetV2 and ImageNet-Sketch against the whole validation set (``val``); ObjectNet, ImageNet-R
and ImageNet-A, which cover only some ImageNet classes, against validation accuracy on those
classes (``val-on-<shift>-classes``).

The fit set is the testbed's own, read from its plotting scripts (modestyachts/imagenet-testbed,
``plotting/paper_nat_shift_imagenetv2.py``, ``paper_appendix_imagenet_sketch.py``,
``paper_objectnet.py``, ``paper_appendix_imagenet_r.py``, ``paper_imagenet_a.py``):

* ``prepare_df_for_plotting`` keeps the rows that have both columns (``dropna``);
* ``show_in_plot``: ``'subsample' not in name`` and the ID accuracy at least 55 % (75 % on
  the class-restricted axes of ImageNet-R and ImageNet-A); ImageNet-A also hides ``resnet50``;
* ``use_for_line_fit``: shown, model type STANDARD, and ``'aws' not in name`` and
  ``'batch64' not in name`` (this drops ``resnet50_aws_baseline`` and
  ``resnet50_imagenet_100percent_batch64_original_images``);
* ``plotter.model_scatter_plot``: ``scipy.stats.linregress`` of ``log(p / (1 - p))`` of both
  accuracies. ImageNet-A (``plotter.model_scatter_plot_imagenet_a`` with
  ``use_for_line_fit_one`` / ``_two``) is fitted as two lines, below and above ResNet-50's ID
  accuracy (91.86 % on the ImageNet-A classes): ImageNet-A kept only images that a ResNet-50
  gets wrong, so models weaker and stronger than that ResNet-50 follow different trends.

For a model known only by its full-ImageNet accuracy, :func:`testbed_fit` takes ``x_column=
"val"``: the testbed's own ``--option no-subsample`` of ``paper_objectnet.py`` and
``paper_imagenet_a.py`` (x = ``val``, shown at ``val >= 55``, ImageNet-A split at resnet50's
``val``, 76.13 %); ImageNet-R has no such option there and gets the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.core.errors import UserInputError
from curate.eval.effective_robustness import (
    EffectiveRobustness,
    LinearFit,
    effective_robustness,
    fit_logit_line,
)

if TYPE_CHECKING:
    import polars as pl

TESTBED_CSV = Path(__file__).parent / "data" / "imagenet_testbed_accuracies.csv"
STANDARD = "STANDARD"
FULL_IMAGENET = "val"
NOT_SHOWN_NAME_PARTS = ("subsample",)
"""``show_in_plot``: the testbed hides the subsampled-training-set models (lower-cased name)."""
NOT_FITTED_NAME_PARTS = ("aws", "batch64")
"""``use_for_line_fit``: two STANDARD models the testbed leaves out of every line."""
FULL_IMAGENET_CUTOFF = 55.0


@dataclass(frozen=True)
class ImageNetShift:
    """One shift column of the testbed and the ID column it is plotted against.

    ``id_cutoff`` is ``show_in_plot``'s lower bound on the ID column (percent);
    ``split_at_model`` names the model whose ID accuracy splits the fit into two lines.
    """

    shift: str
    id_column: str
    id_cutoff: float = FULL_IMAGENET_CUTOFF
    excluded_models: tuple[str, ...] = ()
    split_at_model: str | None = None
    script: str = ""
    note: str = ""


TESTBED_SHIFTS: dict[str, ImageNetShift] = {
    shift.shift: shift
    for shift in (
        ImageNetShift(
            "imagenetv2-matched-frequency-format-val",
            "val",
            script="plotting/paper_nat_shift_imagenetv2.py",
        ),
        ImageNetShift(
            "imagenet-sketch", "val", script="plotting/paper_appendix_imagenet_sketch.py"
        ),
        ImageNetShift(
            "objectnet-1.0-beta", "val-on-objectnet-classes", script="plotting/paper_objectnet.py"
        ),
        ImageNetShift(
            "imagenet-r",
            "val-on-imagenet-r-classes",
            id_cutoff=75.0,
            script="plotting/paper_appendix_imagenet_r.py",
        ),
        ImageNetShift(
            "imagenet-a",
            "val-on-imagenet-a-classes",
            id_cutoff=75.0,
            excluded_models=("resnet50",),
            split_at_model="resnet50",
            script="plotting/paper_imagenet_a.py",
            note=(
                "ImageNet-A kept only images a ResNet-50 misclassifies, so resnet50's 0% is by "
                "construction: the testbed leaves it out and fits two lines, below and above "
                "resnet50's ID accuracy"
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
    id_column: str = ""


@dataclass(frozen=True)
class TestbedFit:
    """The testbed's baseline for one shift: one logit line, or two pieces split at ``pivot``.

    ``pieces[0]`` holds for ID accuracy below ``pivot`` (a fraction on ``x_column``),
    ``pieces[1]`` at or above it; a model exactly at the pivot (only resnet50, which is left
    out) is in neither of the testbed's fit sets. ``x_range`` is the fit set's ID range.
    """

    __test__ = False  # not a pytest class despite the name

    shift: ImageNetShift
    x_column: str
    pieces: tuple[LinearFit, ...]
    pivot: float | None
    models: tuple[str, ...]
    x_range: tuple[float, float]

    @property
    def n_points(self) -> int:
        return sum(piece.n_points for piece in self.pieces)

    @property
    def piece_labels(self) -> tuple[str, ...]:
        """Which ID accuracies (percent) each piece covers: ``all``, or ``< p`` and ``> p``."""
        if self.pivot is None:
            return ("all",)
        return (f"< {100 * self.pivot:.2f}", f"> {100 * self.pivot:.2f}")

    def piece_index(self, id_accuracy: Any) -> np.ndarray:
        x = np.asarray(id_accuracy, dtype=np.float64)
        if self.pivot is None:
            return np.zeros(x.shape, dtype=np.int64)
        return (x >= self.pivot).astype(np.int64)

    def line(self, id_accuracy: float) -> LinearFit:
        return self.pieces[int(self.piece_index(id_accuracy))]

    def predict(self, id_accuracy: Any) -> np.ndarray:
        """Predicted OOD accuracy (fraction) for ID accuracies (fractions on ``x_column``)."""
        x = np.asarray(id_accuracy, dtype=np.float64)
        index = self.piece_index(x)
        predictions = [piece.predict(x) for piece in self.pieces]
        return np.choose(index, predictions) if len(predictions) > 1 else predictions[0]

    def effective_robustness(self, id_accuracy: float, ood_accuracy: float) -> EffectiveRobustness:
        return effective_robustness(id_accuracy, ood_accuracy, self.line(id_accuracy))

    def extrapolated(self, id_accuracy: Any) -> np.ndarray:
        """True where an ID accuracy lies outside the fit set's ID range."""
        x = np.asarray(id_accuracy, dtype=np.float64)
        return (x < self.x_range[0]) | (x > self.x_range[1])


def testbed_shift(name: str) -> ImageNetShift:
    if name not in TESTBED_SHIFTS:
        raise UserInputError(
            f"unknown testbed shift {name!r}; choose one of: {', '.join(TESTBED_SHIFTS)}"
        )
    return TESTBED_SHIFTS[name]


def read_testbed(path: Path = TESTBED_CSV) -> pl.DataFrame:
    import polars as pl

    if not Path(path).is_file():
        raise UserInputError(f"{path}: no such testbed table")
    return pl.read_csv(path, infer_schema_length=None)


def _fit_set_filter(shift: ImageNetShift, x_column: str) -> pl.Expr:
    """The testbed's ``show_in_plot & use_for_line_fit`` for ``shift`` plotted on ``x_column``."""
    import polars as pl

    name = pl.col("model").str.to_lowercase()
    cutoff = shift.id_cutoff if x_column == shift.id_column else FULL_IMAGENET_CUTOFF
    shown = pl.col(x_column) >= cutoff
    for part in (*NOT_SHOWN_NAME_PARTS, *NOT_FITTED_NAME_PARTS):
        shown &= ~name.str.contains(part, literal=True)
    return shown & (pl.col("model_type") == STANDARD)


def testbed_points(
    name: str,
    path: Path = TESTBED_CSV,
    standard_only: bool = True,
    x_column: str | None = None,
) -> ImageNetShiftPoints:
    """Accuracies (fractions) of the testbed models that have both columns of ``name``'s pair.

    ``standard_only``: the testbed's fit set (see the module docstring); otherwise every model
    with both columns except ``excluded_models``. ``x_column`` replaces the shift's ID column
    (``"val"``: full ImageNet accuracy; the fit set then uses the testbed's ``no-subsample``
    rule).
    """
    import polars as pl

    shift = testbed_shift(name)
    x_column = x_column or shift.id_column
    table = read_testbed(path)
    missing = {"model", "model_type", x_column, shift.shift} - set(table.columns)
    if missing:
        raise UserInputError(f"{path}: missing columns {sorted(missing)}")
    rows = table.filter(
        pl.col(x_column).is_not_null()
        & pl.col(shift.shift).is_not_null()
        & ~pl.col("model").is_in(list(shift.excluded_models))
    )
    if standard_only:
        rows = rows.filter(_fit_set_filter(shift, x_column))
    return ImageNetShiftPoints(
        shift=shift,
        models=tuple(rows["model"].to_list()),
        id_accuracy=rows[x_column].to_numpy() / 100.0,
        ood_accuracy=rows[shift.shift].to_numpy() / 100.0,
        id_column=x_column,
    )


def _pivot(shift: ImageNetShift, x_column: str, path: Path) -> float | None:
    if shift.split_at_model is None:
        return None
    import polars as pl

    row = read_testbed(path).filter(pl.col("model") == shift.split_at_model)
    if row.height != 1 or row[x_column][0] is None:
        raise UserInputError(
            f"{path}: {shift.shift}'s fit splits at {shift.split_at_model}'s {x_column}, "
            "which the table lacks"
        )
    return float(row[x_column][0]) / 100.0


def testbed_fit(name: str, path: Path = TESTBED_CSV, x_column: str | None = None) -> TestbedFit:
    """The testbed's baseline for one shift exactly as its plots fit it (ImageNet-A: two lines)."""
    points = testbed_points(name, path, x_column=x_column)
    shift, x_column = points.shift, points.id_column
    pivot = _pivot(shift, x_column, path)
    x, y = points.id_accuracy, points.ood_accuracy
    # the testbed's logit has no clipping; curate's clips at 1e-4, which moves none of these
    masks = [np.ones(x.size, dtype=bool)] if pivot is None else [x < pivot, x > pivot]
    pieces = tuple(
        fit_logit_line(
            x[mask],
            y[mask],
            id_task=x_column,
            ood_task=shift.shift,
            source="imagenet-testbed" + ("" if pivot is None else f" piece {i + 1}/2"),
        )
        for i, mask in enumerate(masks)
    )
    return TestbedFit(
        shift=shift,
        x_column=x_column,
        pieces=pieces,
        pivot=pivot,
        models=points.models,
        x_range=(float(x.min()), float(x.max())),
    )
