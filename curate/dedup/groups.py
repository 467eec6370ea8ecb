"""Groups of rows linked by pairs, and which single row of each group is kept.

Connected components are found by vectorised union-find (hooking of roots plus pointer
jumping over numpy arrays) rather than a Python loop over edges, so millions of pairs are fine.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

GroupKeep = Literal["lowest_row", "highest_clip_score"]


def connected_components(n_rows: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Label of each row = the smallest row position in its connected component."""
    parent = np.arange(n_rows, dtype=np.int64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    while True:
        root_left, root_right = parent[left], parent[right]
        differ = root_left != root_right
        if not differ.any():
            return parent
        low = np.minimum(root_left[differ], root_right[differ])
        high = np.maximum(root_left[differ], root_right[differ])
        np.minimum.at(parent, high, low)  # hook each root under the smallest root it touches
        while True:  # pointer jumping: every row points straight at its root again
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def linked_groups(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(linked, labels): the sorted positions that are in at least one pair, and for each its
    connected component's label (its smallest index into ``linked``). Rows in no pair are
    groups of one and are left out, so the memory follows the pairs, not the pool."""
    linked = np.unique(np.concatenate([left, right]).astype(np.int64, copy=False))
    labels = connected_components(
        len(linked), np.searchsorted(linked, left), np.searchsorted(linked, right)
    )
    return linked, labels


def keep_order(
    rows: np.ndarray, keep: GroupKeep, clip_score: np.ndarray | None = None
) -> np.ndarray:
    """Positions in preference order: lowest pool row first, or highest clip_score first
    (missing scores last, ties to the lower pool row)."""
    rows = np.asarray(rows)
    if keep == "lowest_row":
        return np.argsort(rows, kind="stable")
    if clip_score is None:
        raise ValueError("keep='highest_clip_score' needs clip scores")
    score = np.nan_to_num(np.asarray(clip_score, dtype=np.float64), nan=-np.inf)
    return np.lexsort((rows, -score))


def keep_one_per_group(labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, representative position of each row's group): the group's first row in
    ``order`` is kept. Rows alone in their group are kept and represent themselves."""
    labels = np.asarray(labels)
    unique_labels, first = np.unique(labels[order], return_index=True)
    chosen = order[first]
    keep = np.zeros(len(labels), dtype=bool)
    keep[chosen] = True
    representative_of_label = np.empty(labels.max() + 1 if len(labels) else 0, dtype=np.int64)
    representative_of_label[unique_labels] = chosen
    return keep, representative_of_label[labels]
