"""A whole-pool stage's sparse answer: its pieces per shard give, together, the per-row
answer, and answers that do not fit the stage's rows are refused with a line naming them."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from curate.build_pool.decisions import StageAnswerError, check_sparse
from curate.filters.registry import NamedReasons, SparseResult


def random_answer(rng: np.random.Generator, rows: int) -> SparseResult:
    removed = np.flatnonzero(rng.random(rows) < 0.2)
    scored = np.flatnonzero(rng.random(rows) < 0.3)
    return SparseResult(
        rows=rows,
        removed=removed,
        reason=pl.Series([f"reason {r}" for r in removed], dtype=pl.String),
        scored=scored,
        score=rng.random(len(scored)).astype(np.float32),
    )


def test_pieces_make_the_per_row_answer():
    """Cut at random edges (empty pieces, pieces of one row, edges on removed rows), the
    pieces' per-row answers, joined, equal the whole answer's, which a loop builds by hand."""
    rng = np.random.default_rng(3)
    answer = random_answer(rng, 500)
    whole = answer.dense()
    removed, scored = (
        set(answer.removed.tolist()),
        dict(zip(answer.scored, answer.score, strict=True)),
    )
    assert whole.keep.tolist() == [r not in removed for r in range(500)]
    assert whole.reason.to_list() == [f"reason {r}" if r in removed else None for r in range(500)]
    assert np.array_equal(whole.score, [scored.get(r, np.nan) for r in range(500)], equal_nan=True)
    for _ in range(20):
        cuts = np.unique(np.concatenate([[0, 500], rng.integers(0, 501, 6), answer.removed[:2]]))
        pieces = [answer.piece(int(a), int(b - a)).dense() for a, b in itertools.pairwise(cuts)]
        assert np.array_equal(np.concatenate([p.keep for p in pieces]), whole.keep)
        assert pl.concat([p.reason for p in pieces]).to_list() == whole.reason.to_list()
        joined = np.concatenate([p.score for p in pieces])
        assert np.array_equal(joined, whole.score, equal_nan=True)


def test_one_reason_and_no_scores():
    answer = SparseResult(rows=5, removed=np.array([1, 4]), reason="dropped")
    piece = answer.piece(2, 3).dense()
    assert piece.keep.tolist() == [True, True, False] and piece.reason == "dropped"
    assert piece.score is None


def test_named_reasons_are_joined_per_piece():
    """Reasons naming another row's uid: each piece carries the uids of its own removed rows
    only, and its reasons equal the whole answer's."""
    answer = SparseResult(
        rows=50,
        removed=np.array([3, 10, 11, 40]),
        reason=NamedReasons("kept as uid", pl.Series("uid", ["u0", "u2", "u45", "u39"])),
    )
    whole = answer.dense().reason.to_list()
    expected = {3: "u0", 10: "u2", 11: "u45", 40: "u39"}
    assert whole == [f"kept as uid {expected[r]}" if r in expected else None for r in range(50)]
    piece = answer.piece(10, 20)
    assert piece.reason.uids.to_list() == ["u2", "u45"]
    assert piece.dense().reason.to_list() == whole[10:30]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": 9}, "answers for 9 rows"),
        ({"removed": np.array([3, 1])}, "removed positions that are not ascending"),
        ({"removed": np.array([1, 10])}, "removed positions that are not ascending"),
        ({"removed": np.array([-1, 2])}, "removed positions that are not ascending"),
        ({"removed": np.array([1.0, 2.0])}, "removed positions that are not ascending"),
        ({"reason": pl.Series(["a"])}, "1 reasons for 2 removed rows"),
        ({"score": None}, "scored rows without scores"),
        ({"scored": np.array([0, 0])}, "scored positions that are not ascending"),
        ({"score": np.zeros(3, np.float32)}, "3 scores for 2 scored rows"),
    ],
)
def test_answers_that_do_not_fit_are_refused(change, message):
    fields = {
        "rows": 10,
        "removed": np.array([1, 2]),
        "reason": pl.Series(["a", "b"]),
        "scored": np.array([0, 5]),
        "score": np.zeros(2, np.float32),
    }
    check_sparse("near_dedup", 3, 10, SparseResult(**fields))
    with pytest.raises(StageAnswerError, match=f"stage 3 \\(near_dedup\\) returned {message}"):
        check_sparse("near_dedup", 3, 10, SparseResult(**{**fields, **change}))
