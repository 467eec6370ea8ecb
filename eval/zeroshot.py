"""Zero-shot classification: class names x prompt templates -> one text embedding per class
(open_clip's ``build_zero_shot_classifier``: each prompt embedded and L2-normalised, averaged
over the templates, renormalised), then each image goes to its most similar class.

Metrics as CLIP_benchmark reports them: top-1 accuracy (and top-5 with more than 5
classes) and mean per-class recall (the average over classes of the fraction of that class's
images classified correctly; classes without test images are left out). The per-image
correctness vector is kept for the bootstraps of effective robustness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ZeroShotResult:
    metrics: dict[str, float | int]
    correct: np.ndarray  # bool, one per image, in dataset order


def class_embeddings(
    model: Any,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    device: str = "cpu",
) -> np.ndarray:
    """(classes, dim) float32: averaged, renormalised prompt embeddings per class."""
    from open_clip import build_zero_shot_classifier

    weights = build_zero_shot_classifier(
        model, tokenizer, list(classnames), list(templates), num_classes_per_batch=10, device=device
    )
    return weights.T.float().cpu().numpy()


def classify(
    image_features: np.ndarray, class_weights: np.ndarray, labels: np.ndarray
) -> ZeroShotResult:
    """Metrics of assigning each (normalised) image feature to its most similar class."""
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(image_features, np.float32) @ np.asarray(class_weights, np.float32).T
    predictions = logits.argmax(axis=1)
    correct = predictions == labels
    metrics: dict[str, float | int] = {
        "acc1": float(correct.mean()) if correct.size else 0.0,
        "mean_per_class_recall": mean_per_class_recall(predictions, labels),
        "n": int(labels.size),
    }
    if class_weights.shape[0] > 5:
        top5 = np.argpartition(-logits, 5, axis=1)[:, :5]
        metrics["acc5"] = float((top5 == labels[:, None]).any(axis=1).mean())
    return ZeroShotResult(metrics, correct)


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    classes, per_class_count = np.unique(labels, return_counts=True)
    hits = np.bincount(labels[predictions == labels], minlength=int(classes.max()) + 1)
    return float(np.mean(hits[classes] / per_class_count)) if classes.size else 0.0
