"""Effective robustness of externally evaluated CLIPs against the ImageNet testbed's baselines.

Input: the long table of :mod:`curate.eval.external_results` (one row per model x task,
``accuracy`` a fraction, ``n_test``). Each model's ImageNet accuracy (``imagenet1k``) is its ID
point; each of the five natural shifts is compared with the testbed's line for that shift,
fitted over the testbed's own fit set of STANDARD models (:mod:`curate.eval.testbed`).

The x axis. The testbed plots ImageNetV2 and ImageNet-Sketch against full ImageNet accuracy
(``val``), but ObjectNet, ImageNet-R and ImageNet-A against ImageNet accuracy restricted to
each shift's classes. An external table only has full ImageNet accuracy, so those three shifts
are measured against a line fitted on ``val`` over the same testbed models (the testbed's own
``no-subsample`` variant); every row says which axis it used (``x_axis``).

Extrapolation. A model whose ImageNet accuracy lies outside the fit set's range (56.5-84.7 %
on the shipped table) is measured against a line that no baseline supports there: its ER is
reported with ``extrapolated = True`` and left out of group averages by default.

Uncertainty. ``er_low`` / ``er_high`` are a percentile interval over ``n_boot`` seeded
replicates, each of which (a) redraws the model's ImageNet and shift accuracies as binomial
proportions over their test sets (``n_test``; the ImageNet draw is shared by the five shifts)
and (b) refits the testbed line on a bootstrap resample of the testbed's models (ImageNet-A:
each of its two pieces resampled on its own). It covers test-set sampling and the baseline fit,
not training-seed noise: there is one published checkpoint per model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.errors import UserInputError
from curate.eval.effective_robustness import inverse_logit, logit
from curate.eval.testbed import (
    FULL_IMAGENET,
    TESTBED_CSV,
    TestbedFit,
    testbed_fit,
    testbed_points,
    testbed_shift,
)

ID_TASK = "imagenet1k"
SHIFT_TO_TESTBED: dict[str, str] = {
    "imagenetv2": "imagenetv2-matched-frequency-format-val",
    "imagenet_sketch": "imagenet-sketch",
    "objectnet": "objectnet-1.0-beta",
    "imagenet-r": "imagenet-r",
    "imagenet-a": "imagenet-a",
}
"""External task id -> the testbed column it is compared with."""
AVERAGE = "average"
"""The ``shift`` of a model's mean ER over the five shifts (only when it has all five)."""
X_AXIS_SAME = "val"
X_AXIS_FALLBACK = "val (class-restricted unavailable)"
INTERVAL_COVERS = (
    "test-set sampling + baseline fit; no training-seed noise: one published checkpoint per model"
)
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CONFIDENCE = 0.95

ER_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "arch": pl.String(),
    "arch_family": pl.String(),
    "pretrained": pl.String(),
    "training_data": pl.String(),
    "training_data_scale": pl.String(),
    "training_filter": pl.String(),
    "samples_seen": pl.Int64(),
    "shift": pl.String(),
    "testbed_column": pl.String(),
    "x_axis": pl.String(),
    "baseline_piece": pl.String(),
    "id_accuracy": pl.Float64(),
    "ood_accuracy": pl.Float64(),
    "predicted_ood_accuracy": pl.Float64(),
    "effective_robustness": pl.Float64(),
    "er_low": pl.Float64(),
    "er_high": pl.Float64(),
    "extrapolated": pl.Boolean(),
    "n_id": pl.Int64(),
    "n_ood": pl.Int64(),
    "interval_covers": pl.String(),
}
"""One row per model x shift (and x ``average``); accuracies and ER are fractions."""


@dataclass(frozen=True)
class ExternalEr:
    """ER of every model on every shift it has, and what could not be measured."""

    table: pl.DataFrame
    fits: dict[str, TestbedFit]
    n_boot: int
    seed: int
    confidence: float
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def id_range(self) -> tuple[float, float]:
        """The ID range (fractions) inside which no shift's line is extrapolated."""
        lows, highs = zip(*(fit.x_range for fit in self.fits.values()), strict=True)
        return max(lows), min(highs)


def x_axis_label(shift: str) -> str:
    """``val`` where the testbed itself plots the shift against full ImageNet, else the fallback."""
    same = testbed_shift(SHIFT_TO_TESTBED[shift]).id_column == FULL_IMAGENET
    return X_AXIS_SAME if same else X_AXIS_FALLBACK


def testbed_baselines(path: Path = TESTBED_CSV) -> dict[str, TestbedFit]:
    """Each external shift's testbed baseline on full-ImageNet x (the axis external tables have)."""
    return {
        shift: testbed_fit(column, path, x_column=FULL_IMAGENET)
        for shift, column in SHIFT_TO_TESTBED.items()
    }


def _bootstrap_pieces(
    fit: TestbedFit, path: Path, rng: np.random.Generator, n_boot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts (pieces, n_boot) of the line refitted on resampled testbed models."""
    points = testbed_points(fit.shift.shift, path, x_column=fit.x_column)
    x, y = logit(points.id_accuracy), logit(points.ood_accuracy)
    index = fit.piece_index(points.id_accuracy)
    slopes, intercepts = [], []
    for piece in range(len(fit.pieces)):
        px, py = x[index == piece], y[index == piece]
        n = px.size
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (n_boot, n)
        mean_x, mean_y = weights @ px, weights @ py
        var_x = weights @ (px * px) - mean_x**2
        cov_xy = weights @ (px * py) - mean_x * mean_y
        slope = np.divide(cov_xy, var_x, out=np.full(n_boot, np.nan), where=var_x > 1e-12)
        slopes.append(slope)
        intercepts.append(mean_y - slope * mean_x)
    return np.array(slopes), np.array(intercepts)


def _binomial_draws(
    accuracy: np.ndarray, n_test: np.ndarray, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """(models, n_boot) accuracies redrawn over their test sets; fixed where n_test is unknown."""
    known = n_test > 0
    trials = np.where(known, n_test, 1).astype(np.int64)
    draws = rng.binomial(
        trials[:, None], np.clip(accuracy, 0.0, 1.0)[:, None], (len(accuracy), n_boot)
    )
    return np.where(known[:, None], draws / trials[:, None], accuracy[:, None])


_DESCRIPTORS: dict[str, pl.DataType] = {
    c: ER_SCHEMA[c]
    for c in (
        "arch", "pretrained", "training_data", "training_data_scale", "training_filter",
        "samples_seen",
    )
}  # fmt: skip


def _wide(table: pl.DataFrame) -> pl.DataFrame:
    """One row per model with its ImageNet and shift accuracies and test-set sizes."""
    needed = {"model", "task", "accuracy", "n_test"}
    missing = needed - set(table.columns)
    if missing:
        raise UserInputError(f"external results table: missing columns {sorted(missing)}")
    tasks = [ID_TASK, *SHIFT_TO_TESTBED]
    long = table.filter(pl.col("task").is_in(tasks))
    present = [c for c in _DESCRIPTORS if c in table.columns]
    meta = table.group_by("model", maintain_order=True).agg(pl.col(present).first())
    accuracy = long.pivot(on="task", index="model", values="accuracy", aggregate_function="first")
    n_test = long.pivot(on="task", index="model", values="n_test", aggregate_function="first")
    n_test = n_test.rename({t: f"n_{t}" for t in n_test.columns if t != "model"})
    wide = meta.join(accuracy, on="model", how="left").join(n_test, on="model", how="left")
    absent = {c: _DESCRIPTORS[c] for c in _DESCRIPTORS if c not in wide.columns}
    absent |= {t: pl.Float64() for t in tasks if t not in wide.columns}
    absent |= {f"n_{t}": pl.Int64() for t in tasks if f"n_{t}" not in wide.columns}
    wide = wide.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in absent.items())
    return wide.sort("model")


def arch_family(arch: pl.Expr) -> pl.Expr:
    """The architecture without open_clip's activation suffix (``ViT-B-32-quickgelu`` ->
    ``ViT-B-32``): the same network, loaded with the QuickGELU its checkpoint was trained with."""
    return arch.str.replace(r"-quickgelu$", "")


def external_effective_robustness(
    table: pl.DataFrame,
    *,
    testbed_path: Path = TESTBED_CSV,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ExternalEr:
    """ER of each model of an external results table on each testbed shift, and on average."""
    if not 0.0 < confidence < 1.0:
        raise UserInputError(f"confidence {confidence} is not in (0, 1)")
    if n_boot < 0:
        raise UserInputError(f"bootstrap resamples {n_boot} < 0")
    wide = _wide(table)
    skipped: Counter[str] = Counter()
    no_id = wide.filter(pl.col(ID_TASK).is_null())
    if no_id.height:
        skipped[f"no {ID_TASK} accuracy (no ID point)"] += no_id.height
    wide = wide.filter(pl.col(ID_TASK).is_not_null())
    if wide.height == 0:  # nothing to measure: an empty table, the reason in ``skipped``
        empty = pl.DataFrame(schema=ER_SCHEMA)
        return ExternalEr(empty, testbed_baselines(testbed_path), n_boot, seed, confidence, skipped)
    fits = testbed_baselines(testbed_path)
    rng = np.random.default_rng(seed)
    models = wide.height
    id_acc = wide[ID_TASK].to_numpy().astype(np.float64)
    id_n = wide[f"n_{ID_TASK}"].fill_null(0).to_numpy()
    id_draws = _binomial_draws(id_acc, id_n, rng, n_boot) if n_boot else np.empty((models, 0))
    alpha = (1.0 - confidence) / 2

    frames: list[pl.DataFrame] = []
    per_shift_er: list[np.ndarray] = []
    per_shift_reps: list[np.ndarray] = []
    per_shift_pred: list[np.ndarray] = []
    per_shift_ood: list[np.ndarray] = []
    for shift, fit in fits.items():
        ood = wide[shift].to_numpy().astype(np.float64)  # NaN where missing
        has = ~np.isnan(ood)
        missing = int((~has).sum())
        if missing:
            skipped[f"no {shift} accuracy"] += missing
        predicted = fit.predict(id_acc)
        er = ood - predicted
        if n_boot:
            slopes, intercepts = _bootstrap_pieces(fit, testbed_path, rng, n_boot)
            ood_n = wide[f"n_{shift}"].fill_null(0).to_numpy()
            ood_draws = _binomial_draws(np.nan_to_num(ood), ood_n, rng, n_boot)
            piece = fit.piece_index(id_draws)  # (models, n_boot)
            columns = np.arange(n_boot)[None, :]
            line = slopes[piece, columns] * logit(id_draws) + intercepts[piece, columns]
            replicates = np.where(has[:, None], ood_draws - inverse_logit(line), np.nan)
        else:
            replicates = np.full((models, 0), np.nan)
        per_shift_er.append(er)
        per_shift_reps.append(replicates)
        per_shift_pred.append(predicted)
        per_shift_ood.append(ood)
        frames.append(
            _rows(
                wide,
                shift,
                fit.shift.shift,
                x_axis_label(shift),
                fit,
                id_acc,
                ood,
                predicted,
                er,
                replicates,
                fit.extrapolated(id_acc),
                alpha,
            )
        )
    all_er = np.array(per_shift_er)  # (shifts, models)
    complete = ~np.isnan(all_er).any(axis=0)
    extrapolated_any = np.array([fit.extrapolated(id_acc) for fit in fits.values()]).any(axis=0)
    frames.append(
        _rows(
            wide,
            AVERAGE,
            "mean of the 5 shifts",
            "val (ImageNetV2, Sketch); " + X_AXIS_FALLBACK + " (ObjectNet, R, A)",
            None,
            id_acc,
            np.where(complete, np.mean(per_shift_ood, axis=0), np.nan),
            np.mean(per_shift_pred, axis=0),
            np.where(complete, all_er.mean(axis=0), np.nan),
            np.mean(per_shift_reps, axis=0),
            extrapolated_any,
            alpha,
        ).filter(pl.Series(complete))
    )
    result = pl.concat(frames, how="vertical").filter(pl.col("ood_accuracy").is_not_null())
    return ExternalEr(
        table=result.select(list(ER_SCHEMA)).cast(ER_SCHEMA),
        fits=fits,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        skipped=skipped,
    )


def _rows(
    wide: pl.DataFrame,
    shift: str,
    testbed_column: str,
    x_axis: str,
    fit: TestbedFit | None,
    id_acc: np.ndarray,
    ood: np.ndarray,
    predicted: np.ndarray,
    er: np.ndarray,
    replicates: np.ndarray,
    extrapolated: np.ndarray,
    alpha: float,
) -> pl.DataFrame:
    if replicates.shape[1]:
        low, high = np.nanquantile(replicates, [alpha, 1 - alpha], axis=1)
    else:
        low = high = np.full(len(er), np.nan)
    if fit is None:
        piece = [None] * len(er)
    else:
        labels = np.array(fit.piece_labels, dtype=object)
        piece = list(labels[fit.piece_index(id_acc)])
    valid = ~np.isnan(ood)
    return wide.select(
        "model",
        "arch",
        arch_family(pl.col("arch")).alias("arch_family"),
        "pretrained",
        "training_data",
        "training_data_scale",
        "training_filter",
        "samples_seen",
        pl.lit(shift).alias("shift"),
        pl.lit(testbed_column).alias("testbed_column"),
        pl.lit(x_axis).alias("x_axis"),
        pl.Series("baseline_piece", piece, dtype=pl.String),
        pl.Series("id_accuracy", id_acc),
        pl.Series("ood_accuracy", np.where(valid, ood, np.nan)).fill_nan(None),
        pl.Series("predicted_ood_accuracy", predicted),
        pl.Series("effective_robustness", np.where(valid, er, np.nan)).fill_nan(None),
        pl.Series("er_low", low).fill_nan(None),
        pl.Series("er_high", high).fill_nan(None),
        pl.Series("extrapolated", extrapolated.astype(bool)),
        pl.col(f"n_{ID_TASK}").alias("n_id"),
        (pl.col(f"n_{shift}") if shift != AVERAGE else pl.lit(None, pl.Int64)).alias("n_ood"),
        pl.lit(INTERVAL_COVERS).alias("interval_covers"),
    )
