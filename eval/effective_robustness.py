"""Effective robustness: OOD accuracy above what a baseline predicts from ID accuracy.

Taori et al. 2020 ("Measuring Robustness to Natural Distribution Shifts in Image
Classification"): accuracies of standard models (trained on the ID training set, no
robustness intervention) lie on a line once both axes are logit-transformed. Fit
``logit(OOD) = slope * logit(ID) + intercept`` by ordinary least squares over those baseline
models only; a model's effective robustness is its OOD accuracy minus the line's prediction,
mapped back to accuracy units::

    ER = acc_ood - sigmoid(slope * logit(acc_id) + intercept)

Shi et al. 2023 ("Effective Robustness against Natural Distribution Shifts for Models with
Different Training Data"): when models are trained on different data, one ID test set is not
enough; regress ``logit(OOD)`` on the logits of several ID test sets (one per training
distribution) jointly, and measure ER against that plane (:func:`fit_logit_plane`).

This module is the one place for the logit transform; accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from curate.core.errors import UserInputError

ACCURACY_EPS = 1e-4
"""Accuracies are clipped to [ACCURACY_EPS, 1 - ACCURACY_EPS] before the logit.

An accuracy of exactly 0 or 1 (a degenerate model, a tiny test set, a bootstrap resample)
has an infinite logit. 1e-4 is finer than one image of any test set under 10,000 images
(every task curate ships), so only exact 0 and 1 move, and the logit stays within +-9.21.
"""


def clip_accuracy(accuracy: Any) -> np.ndarray:
    return np.clip(np.asarray(accuracy, dtype=np.float64), ACCURACY_EPS, 1.0 - ACCURACY_EPS)


def logit(accuracy: Any) -> np.ndarray:
    """log(p / (1 - p)) of accuracies (fractions), clipped away from 0 and 1 first."""
    clipped = clip_accuracy(accuracy)
    return np.log(clipped) - np.log1p(-clipped)


def inverse_logit(value: Any) -> np.ndarray:
    """The sigmoid: maps a logit back to an accuracy (fraction)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(value, dtype=np.float64)))


@dataclass(frozen=True)
class LinearFit:
    """``logit(OOD) = slope * logit(ID) + intercept`` fitted on ``n_points`` baseline models."""

    slope: float
    intercept: float
    r_squared: float
    n_points: int
    id_task: str = ""
    ood_task: str = ""
    source: str = ""

    def predict(self, id_accuracy: Any) -> np.ndarray:
        """Predicted OOD accuracy (fraction) for ID accuracies (fractions)."""
        return inverse_logit(self.slope * logit(id_accuracy) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EffectiveRobustness:
    """One model's ER on one ID -> OOD pair, in accuracy units (0.03 = 3 points above the line)."""

    value: float
    id_accuracy: float
    ood_accuracy: float
    predicted_ood_accuracy: float
    fit: LinearFit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MultiLinearFit:
    """``logit(OOD) = sum_i coefficients[i] * logit(ID_i) + intercept`` (Shi et al. 2023).

    ``rank`` below ``len(id_tasks) + 1`` means the baseline points do not determine the plane
    (e.g. the ID accuracies move together); the least-norm solution is reported then.
    """

    coefficients: tuple[float, ...]
    intercept: float
    r_squared: float
    n_points: int
    rank: int
    id_tasks: tuple[str, ...] = ()
    ood_task: str = ""

    def predict(self, id_accuracies: Any) -> np.ndarray:
        """Predicted OOD accuracy for ID accuracies of shape (..., len(coefficients))."""
        return inverse_logit(logit(id_accuracies) @ np.asarray(self.coefficients) + self.intercept)

    @property
    def well_determined(self) -> bool:
        return self.rank == len(self.coefficients) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MultiIdEffectiveRobustness:
    value: float
    id_accuracies: tuple[float, ...]
    ood_accuracy: float
    predicted_ood_accuracy: float
    fit: MultiLinearFit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r_squared(y: np.ndarray, residuals: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0.0:
        return 1.0 if float(np.sum(residuals**2)) == 0.0 else 0.0
    return 1.0 - float(np.sum(residuals**2)) / total


def fit_logit_line(
    id_accuracy: Any,
    ood_accuracy: Any,
    *,
    id_task: str = "",
    ood_task: str = "",
    source: str = "",
) -> LinearFit:
    """OLS of logit(OOD) on logit(ID) over baseline models (accuracies as fractions)."""
    x = logit(id_accuracy).ravel()
    y = logit(ood_accuracy).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} ID accuracies but {y.size} OOD accuracies")
    where = f" for {id_task} -> {ood_task}" if id_task or ood_task else ""
    if x.size < 2:
        raise UserInputError(
            f"a baseline fit{where} needs at least 2 baseline models, got {x.size}; "
            "train more baseline models (`curate baseline`)"
        )
    x_centred = x - x.mean()
    spread = float(np.sum(x_centred**2))
    if spread == 0.0:
        raise UserInputError(
            f"the baseline models{where} all have the same ID accuracy; a line needs "
            "baselines of different ID accuracy (vary samples seen or model size)"
        )
    slope = float(np.sum(x_centred * (y - y.mean())) / spread)
    intercept = float(y.mean() - slope * x.mean())
    residuals = y - (slope * x + intercept)
    return LinearFit(
        slope=slope,
        intercept=intercept,
        r_squared=_r_squared(y, residuals),
        n_points=int(x.size),
        id_task=id_task,
        ood_task=ood_task,
        source=source,
    )


def effective_robustness(
    id_accuracy: float, ood_accuracy: float, fit: LinearFit
) -> EffectiveRobustness:
    predicted = float(fit.predict(id_accuracy))
    return EffectiveRobustness(
        value=float(ood_accuracy) - predicted,
        id_accuracy=float(id_accuracy),
        ood_accuracy=float(ood_accuracy),
        predicted_ood_accuracy=predicted,
        fit=fit,
    )


# Above this condition number of the (centred, scaled) ID logits the plane's coefficients are
# set by noise: baselines that differ only in budget move along one direction in ID space.
MAX_ID_CONDITION = 30.0


def _collinearity(x: np.ndarray) -> float:
    centred = x - x.mean(axis=0)
    scale = np.linalg.norm(centred, axis=0)
    if np.any(scale == 0):
        return float("inf")
    return float(np.linalg.cond(centred / scale))


def fit_logit_plane(
    id_accuracies: Any,
    ood_accuracy: Any,
    *,
    id_tasks: tuple[str, ...] = (),
    ood_task: str = "",
) -> MultiLinearFit:
    """OLS with intercept of logit(OOD) on the logits of several ID accuracies (numpy lstsq).

    ``id_accuracies`` has shape (models, id sets); ``ood_accuracy`` has shape (models,).
    """
    x = logit(id_accuracies)
    if x.ndim != 2:
        raise ValueError("id_accuracies must be a (models, id sets) array")
    y = logit(ood_accuracy).ravel()
    if x.shape[0] != y.size:
        raise ValueError(f"{x.shape[0]} rows of ID accuracies but {y.size} OOD accuracies")
    parameters = x.shape[1] + 1
    if y.size <= parameters:
        # with as many points as parameters the plane passes through every point (R² = 1) and
        # says nothing about how well it fits: ask for at least one residual degree of freedom
        raise UserInputError(
            f"a multi-ID fit on {x.shape[1]} ID sets for {ood_task or 'this shift'} needs at "
            f"least {parameters + 1} baseline models, got {y.size}; train more baseline models"
        )
    design = np.column_stack([x, np.ones(y.size)])
    solution, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < parameters or _collinearity(x) > MAX_ID_CONDITION:
        raise UserInputError(
            f"the baseline models do not determine a multi-ID plane for {ood_task or 'this shift'}"
            f" (their ID accuracies move together: condition {_collinearity(x):.0f} > "
            f"{MAX_ID_CONDITION}); add baselines "
            "trained on the second ID distribution"
        )
    residuals = y - design @ solution
    return MultiLinearFit(
        coefficients=tuple(float(c) for c in solution[:-1]),
        intercept=float(solution[-1]),
        r_squared=_r_squared(y, residuals),
        n_points=int(y.size),
        rank=int(rank),
        id_tasks=tuple(id_tasks),
        ood_task=ood_task,
    )


def multi_id_effective_robustness(
    id_accuracies: Any, ood_accuracy: float, fit: MultiLinearFit
) -> MultiIdEffectiveRobustness:
    ids = np.asarray(id_accuracies, dtype=np.float64).ravel()
    predicted = float(fit.predict(ids))
    return MultiIdEffectiveRobustness(
        value=float(ood_accuracy) - predicted,
        id_accuracies=tuple(float(a) for a in ids),
        ood_accuracy=float(ood_accuracy),
        predicted_ood_accuracy=predicted,
        fit=fit,
    )
