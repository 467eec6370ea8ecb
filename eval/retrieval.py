"""Zero-shot image <-> text retrieval recall@k, as CLIP_benchmark defines it.

``text_to_image[j]`` is the image that caption j describes (an image may have several).
- image retrieval recall@k: the fraction of captions whose image is among the k images most
  similar to the caption;
- text retrieval recall@k: the fraction of images with at least one of their captions among
  the k captions most similar to the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10)


def retrieval_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float | int]:
    image_features = np.asarray(image_features, np.float32)
    text_features = np.asarray(text_features, np.float32)
    text_to_image = np.asarray(text_to_image, np.int64)
    scores = text_features @ image_features.T  # (texts, images)
    # rank of the true image for each caption: images scoring strictly higher
    true_score = scores[np.arange(len(text_to_image)), text_to_image]
    image_rank = (scores > true_score[:, None]).sum(axis=1)
    # for each image, the best rank among its captions in that image's caption ranking
    by_image = scores.T  # (images, texts)
    positive = np.zeros(by_image.shape, dtype=bool)
    positive[text_to_image, np.arange(len(text_to_image))] = True
    best_positive = np.where(positive, by_image, -np.inf).max(axis=1)
    text_rank = (np.where(positive, -np.inf, by_image) > best_positive[:, None]).sum(axis=1)
    has_caption = positive.any(axis=1)
    metrics: dict[str, float | int] = {
        "n_images": int(has_caption.sum()),
        "n_texts": int(len(text_to_image)),
    }
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((image_rank < k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float((text_rank[has_caption] < k).mean())
    return metrics
