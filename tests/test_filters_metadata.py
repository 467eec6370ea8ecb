"""Metadata and score filters (basic, clip_score, laion2b, text_based) against direct
re-implementations of DataComp's rules (baselines/utils.py) and langid.py itself."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from langid.langid import LanguageIdentifier, model
from pydantic import ValidationError

from curate.core.errors import UserInputError
from curate.core.shipped_data import CIFAR10_CLASSES
from curate.core.uid import make_uid
from curate.filters.catalog import get_stage
from curate.filters.clip_score import datacomp_threshold, select_by_clip_score
from curate.filters.language_id import LANGUAGES, identify_languages, langid_model
from curate.filters.registry import StageContext
from curate.filters.text_based import matching_class
from curate.filters.vocabulary import load_vocabulary, vocabulary_lines

CAPTIONS = [
    "a photo of a cat sitting on a red mat",
    "Beautiful sunset over the ocean with palm trees",
    "Ein großer Hund läuft durch den Park",
    "un chat noir dort sur le canapé",
    "猫がソファで寝ている写真",
    "Фотография собаки на траве",
    "red car",  # two words
    "a b c",  # three words, five characters
    "dogs run",
    "the old lighthouse on the rocky coast",
    "",
]


@pytest.fixture(scope="module")
def langid_reference():
    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return identifier.classify


def run_stage(name, rows, params, pool_root, embeddings_name=None):
    stage = get_stage(name)
    rows = rows.with_row_index("row") if "row" not in rows.columns else rows
    context = StageContext(
        rows=rows,
        pool_root=pool_root,
        seed=0,
        work_dir=pool_root / "work",
        embeddings_name=embeddings_name,
    )
    return stage.run(context, stage.params_model.model_validate(params))


# -- language ID ---------------------------------------------------------------------------


def test_vectorised_language_id_equals_langid(langid_reference):
    rng = np.random.default_rng(0)
    words = " ".join(CAPTIONS).split()
    texts = (
        CAPTIONS
        + [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(100)]
        + ["x" * 700]
    )
    codes, probabilities = identify_languages(texts)
    reference = [langid_reference(text) for text in texts]
    assert list(codes) == [code for code, _ in reference]
    np.testing.assert_allclose(probabilities, [p for _, p in reference], rtol=1e-9, atol=1e-12)
    assert list(codes[:6]) == ["en", "en", "de", "fr", "ja", "ru"]
    assert langid_model().languages == tuple(LANGUAGES)


def test_language_id_scores_each_distinct_caption_once():
    codes, probabilities = identify_languages(["a dog on the beach"] * 3 + [None])  # type: ignore[list-item]
    assert list(codes[:3]) == ["en"] * 3 and len(set(probabilities[:3])) == 1
    assert len(codes) == 4


# -- basic -----------------------------------------------------------------------------------


def datacomp_basic_reference(
    frame: pl.DataFrame, classify, min_side=200, max_ratio=3.0
) -> np.ndarray:
    """DataComp's load_uids_with_basic_filter_helper, row by row, with langid as the model."""
    keep = []
    for text, width, height in frame.select("text", "width", "height").iter_rows():
        short, long = min(width, height), max(width, height)
        ratio = long / short if short else float("inf")
        keep.append(
            classify(text)[0] == "en"
            and len(text.split()) > 2
            and len(text) > 5
            and short >= min_side
            and ratio <= max_ratio
        )
    return np.array(keep)


def test_basic_matches_datacomp_rule_at_boundaries(tmp_path, langid_reference):
    english = "the old lighthouse on the rocky coast"
    cases = [
        (english, 200, 200),  # exactly the minimum side: kept
        (english, 199, 400),  # one pixel short
        (english, 600, 200),  # aspect exactly 3: kept
        (english, 601, 200),  # aspect just over 3
        (english, 200, 700),  # aspect 3.5, portrait
        (english, 0, 0),
        ("red car", 300, 300),  # exactly two words
        ("Cat sat here", 300, 300),  # three words: kept
        ("a b c", 300, 300),  # exactly five characters
        ("the\u2003old\x1clighthouse", 300, 300),  # Unicode and \x1c separators: 3 words
        ("Ein großer Hund läuft durch den Park", 300, 300),
    ]
    frame = pl.DataFrame(cases, schema=["text", "width", "height"], orient="row")
    result = run_stage("basic", frame, {}, tmp_path)
    assert result.keep.tolist() == datacomp_basic_reference(frame, langid_reference).tolist()
    assert result.keep[[0, 2, 7, 9]].all() and not result.keep[[1, 3, 4, 5, 6, 8, 10]].any()
    assert result.reason[0] is None
    assert result.reason[1] == "image too small (199 x 400 < 200)"
    assert result.reason[4] == "aspect ratio 3.5 > 3.0"
    assert result.reason[6].startswith("caption too short (2 words, 7 chars)")
    assert result.reason[8].endswith("caption too short (3 words, 5 chars)")
    assert result.reason[10].startswith("not en (lang=de, p=1.0)")
    assert result.report["removed_size"] == 2


def test_basic_demo_thresholds_keep_small_images(tmp_path, langid_reference):
    frame = pl.DataFrame(
        {
            "text": ["a photo of a small bird", "a photo of a small bird"],
            "width": [32, 32],
            "height": [32, 200],
        }
    )
    result = run_stage("basic", frame, {"min_side": 0, "max_aspect_ratio": 10}, tmp_path)
    assert (
        result.keep.tolist()
        == datacomp_basic_reference(frame, langid_reference, 0, 10).tolist()
        == [True, True]
    )


def test_basic_reads_datacomp_size_columns_and_names_missing_ones(tmp_path):
    frame = pl.DataFrame(
        {"text": ["a photo of a dog"], "original_width": [640], "original_height": [480]}
    )
    assert run_stage("basic", frame, {}, tmp_path).keep.tolist() == [True]
    with pytest.raises(UserInputError, match="original_width"):
        run_stage("basic", frame.drop("original_width"), {}, tmp_path)


# -- clip_score ------------------------------------------------------------------------------


def datacomp_keep(scores: np.ndarray, fraction: float) -> np.ndarray:
    """DataComp's get_threshold + load_uids_with_threshold_helper, verbatim in numpy."""
    n = int(len(scores) * fraction)
    if n == len(scores):  # DataComp's own indexing would raise here; keep every scored row
        return ~np.isnan(scores)
    threshold = -np.sort(-scores)[n]
    return scores >= threshold


def make_pool(tmp_path, scores: np.ndarray, embedding_scores: np.ndarray | None = None):
    uids = [make_uid("pool", str(i)) for i in range(len(scores))]
    rows = pl.DataFrame(
        {
            "uid": uids,
            "text": ["a photo"] * len(uids),
            "clip_b32_similarity_score": pl.Series(scores, dtype=pl.Float32),
        }
    )
    rows.write_parquet(tmp_path / "samples.parquet")
    if embedding_scores is not None:
        directory = tmp_path / "embeddings" / "tiny"
        directory.mkdir(parents=True)
        (directory / "meta.json").write_text(json.dumps({"model": "test"}))
        frame = pl.DataFrame(
            {"uid": uids, "clip_score": pl.Series(embedding_scores, dtype=pl.Float32)}
        )
        frame.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(
            directory / "clip_score.parquet"
        )
    return rows.with_row_index("row")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.29, 1.0])
def test_clip_score_fraction_matches_datacomp_with_ties(tmp_path, fraction):
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(0.3, 0.05, 997), 2).astype(np.float32)  # many exact ties
    scores[5] = np.nan
    rows = make_pool(tmp_path, scores, embedding_scores=scores[::-1].copy())
    expected = datacomp_keep(scores, fraction)
    by_column = run_stage(
        "clip_score", rows, {"fraction": fraction, "column": "clip_b32_similarity_score"}, tmp_path
    )
    assert by_column.keep.tolist() == expected.tolist()
    by_embeddings = run_stage("clip_score", rows, {"fraction": fraction}, tmp_path)
    assert by_embeddings.keep.tolist() == datacomp_keep(scores[::-1].copy(), fraction).tolist()
    np.testing.assert_array_equal(by_embeddings.score, scores[::-1])
    if 0 < fraction < 1:
        threshold = by_column.report["threshold"]
        assert (scores == np.float32(threshold)).sum() > 1  # the test does exercise ties
        assert expected.sum() > int(len(scores) * fraction)
    if fraction == 0:
        assert expected.sum() == (scores == np.nanmax(scores)).sum()


def test_clip_score_threshold_over_pool_or_remaining_rows(tmp_path):
    scores = np.arange(100, dtype=np.float32) / 100
    rows = make_pool(tmp_path, scores)
    remaining = rows.filter(pl.col("row") % 2 == 0)
    params = {"fraction": 0.2, "column": "clip_b32_similarity_score"}
    over_pool = run_stage("clip_score", remaining, params, tmp_path)
    assert over_pool.keep.sum() == 10  # whole-pool threshold 0.79: even rows 0.80..0.98
    over_rest = run_stage("clip_score", remaining, {**params, "over": "remaining"}, tmp_path)
    assert over_rest.keep.tolist() == datacomp_keep(scores[::2], 0.2).tolist()
    fixed = run_stage(
        "clip_score", rows, {"threshold": 0.5, "column": "clip_b32_similarity_score"}, tmp_path
    )
    assert fixed.keep.sum() == 50 and fixed.reason == "clip score < 0.5"
    assert fixed.score_column == "clip_b32_similarity_score"  # not stored again


def test_clip_score_compares_float32_scores_in_float32(tmp_path):
    just_below = np.nextafter(np.float32(0.28), np.float32(0))
    scores = np.array([np.float32(0.28), just_below], dtype=np.float32)  # float32(0.28) > 0.28
    rows = make_pool(tmp_path, scores)
    keep = run_stage(
        "clip_score", rows, {"threshold": 0.28, "column": "clip_b32_similarity_score"}, tmp_path
    ).keep
    assert keep.tolist() == (scores >= 0.28).tolist() == [True, False]


def test_clip_score_errors_name_the_source(tmp_path):
    rows = make_pool(tmp_path, np.ones(3, dtype=np.float32))
    with pytest.raises(UserInputError, match="clip_l14_similarity_score"):
        run_stage(
            "clip_score", rows, {"fraction": 0.3, "column": "clip_l14_similarity_score"}, tmp_path
        )
    with pytest.raises(FileNotFoundError, match="embedding set"):
        run_stage("clip_score", rows, {"fraction": 0.3}, tmp_path)


def test_datacomp_threshold_is_the_sorted_element():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.integers(0, 20, 1000), rng.normal(0, 9, 500), [np.nan]])
    for fraction in (0.0, 0.001, 0.3, 0.999):
        expected = -np.sort(-scores)[int(len(scores) * fraction)]
        assert datacomp_threshold(scores, fraction) == expected
        assert datacomp_threshold(scores.copy(), fraction, overwrite=True) == expected
    assert datacomp_threshold(scores, 1.0) == -np.inf
    assert datacomp_threshold(np.array([]), 0.5) == -np.inf


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_select_by_clip_score_over_metadata_files(tmp_path, fraction):
    rng = np.random.default_rng(1)
    uids = [make_uid("meta", str(i)) for i in range(3000)]
    scores = np.round(rng.uniform(0.1, 0.4, 3000), 3)  # about 300 values: many ties
    scores[[10, 2000]] = np.nan
    missing = np.zeros(3000, dtype=bool)
    missing[1500] = True  # a null score
    for part in range(3):
        rows = slice(part * 1000, (part + 1) * 1000)
        column = pa.array(scores[rows], mask=missing[rows])
        table = pa.table({"uid": uids[rows], "clip_l14_similarity_score": column})
        pq.write_table(table, tmp_path / f"{part:08d}.parquet", row_group_size=300)
    paths = sorted(tmp_path.glob("*.parquet"))
    scores[missing] = np.nan  # pandas reads a null as NaN
    keep = datacomp_keep(scores, fraction)
    reference = np.array(
        [(int(u[:16], 16), int(u[16:32], 16)) for u, k in zip(uids, keep, strict=True) if k],
        np.dtype("u8,u8"),
    )
    reference.sort()
    selection = select_by_clip_score(paths, "clip_l14_similarity_score", fraction=fraction)
    assert selection.subset.dtype == np.dtype("u8,u8")
    assert np.array_equal(selection.subset, reference)
    by_threshold = select_by_clip_score(
        paths, "clip_l14_similarity_score", threshold=selection.threshold
    )
    assert np.array_equal(by_threshold.subset, reference)
    with pytest.raises(UserInputError, match="clip_b32_similarity_score"):
        select_by_clip_score(paths, "clip_b32_similarity_score", fraction=fraction)


# -- laion2b ---------------------------------------------------------------------------------


def test_laion2b_is_score_and_english(tmp_path, langid_reference):
    scores = np.array([0.30, 0.30, 0.27, 0.28, 0.5], dtype=np.float32)
    rows = make_pool(tmp_path, scores).with_columns(
        text=pl.Series(
            [
                "a dog on a beach",
                "Ein Hund am Strand",
                "a dog on a beach",
                "a red car parked",
                "猫の写真",
            ]
        )
    )
    result = run_stage("laion2b", rows, {"column": "clip_b32_similarity_score"}, tmp_path)
    reference = [
        s >= np.float32(0.28) and langid_reference(t)[0] == "en"
        for s, t in zip(scores, rows["text"], strict=True)
    ]
    assert result.keep.tolist() == reference == [True, False, False, True, False]
    assert result.reason[2].startswith("clip score") and result.reason[1].startswith("not en")


# -- text_based ------------------------------------------------------------------------------


def test_text_based_matches_whole_words(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# comment\ncat, tabby cat\n\n  sports car ,coupe,\nbutterfly\n")
    texts = [
        "a cat.",
        "CAT on the mat",
        "the catalog",
        "a black-cat figurine",
        "my new Sports-car",
        "sports and a car",
        "three cats",
        "monarch butterflies",
        "bobcat",
        "",
    ]
    frame = pl.DataFrame({"text": texts})
    result = run_stage("text_based", frame, {"vocab": str(vocab)}, tmp_path)
    assert result.keep.tolist() == [True, True, False, True, True, False, True, True, False, False]
    assert result.reason[2] == f"no term of vocabulary {vocab} in caption"
    strict = run_stage("text_based", frame, {"vocab": str(vocab), "plurals": False}, tmp_path)
    assert strict.keep.tolist()[6:8] == [False, False]
    assert matching_class(
        pl.Series(["sports car and a cat", "coupe"]), load_vocabulary(str(vocab))
    ).to_list() == [
        "sports car",
        "sports car",
    ]


def test_vocabulary_files(tmp_path):
    cifar = load_vocabulary("cifar10", plurals=False)
    classes = cifar.term_class["class"].unique(maintain_order=True).to_list()
    assert classes == list(CIFAR10_CLASSES)  # the vocabulary follows the demo data's labels
    assert "jumbo jet" in cifar.term_class["term"].to_list() and cifar.max_words == 2
    with pytest.raises(FileNotFoundError, match=r"no-such-vocab.*cifar10"):
        load_vocabulary("no-such-vocab")
    (tmp_path / "empty.txt").write_text("# nothing\n\n , \n")
    with pytest.raises(UserInputError, match="empty.txt"):
        load_vocabulary(str(tmp_path / "empty.txt"))


def test_imagenet21k_vocabulary_comes_from_timm_class_lists():
    source, lines = vocabulary_lines("imagenet21k")
    assert len(lines) == 21_843 and "timm" in source
    vocabulary = load_vocabulary("imagenet21k", min_term_chars=3, exclude=["Golden-Retriever"])
    assert "a" not in vocabulary.term_class["term"].to_list()
    texts = pl.Series(["a tabby sleeping", "Golden Retriever puppies", "a photo of zzz"])
    assert matching_class(texts, vocabulary).to_list() == ["tabby", "retriever", None]


def test_text_based_with_language(tmp_path):
    frame = pl.DataFrame(
        {"text": ["a photo of my dog in the park", "Ein Foto von meinem dog im Park", "no match"]}
    )
    result = run_stage("text_based", frame, {"vocab": "cifar10", "language": "en"}, tmp_path)
    assert result.keep.tolist() == [True, False, False]
    assert result.report["top_classes"] == {"dog": 2}


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "params", "field"),
    [
        ("basic", {"min_sid": 0}, "min_sid"),
        ("basic", {"min_side": "large"}, "min_side"),
        ("basic", {"language": "english"}, "language"),
        ("laion2b", {"language": "EN"}, "language"),
        ("text_based", {"vocab": "cifar10", "language": "eng"}, "language"),
        ("clip_score", {"fraction": 0.3, "treshold": 0.2}, "treshold"),
        ("clip_score", {"fraction": 1.5}, "fraction"),
        ("clip_score", {"fraction": 0.3, "over": "everything"}, "over"),
        ("laion2b", {"threshold": "high"}, "threshold"),
        ("text_based", {"vocab": "cifar10", "plural": True}, "plural"),
        ("text_based", {}, "vocab"),
    ],
)
def test_bad_parameters_name_the_field(stage, params, field):
    with pytest.raises(ValidationError, match=field):
        get_stage(stage).params_model.model_validate(params)


def test_clip_score_needs_exactly_one_rule_and_source():
    model = get_stage("clip_score").params_model
    with pytest.raises(ValidationError, match="exactly one of threshold or fraction"):
        model.model_validate({"threshold": 0.2, "fraction": 0.3})
    with pytest.raises(ValidationError, match="exactly one of threshold or fraction"):
        model.model_validate({})
    with pytest.raises(ValidationError, match="not both"):
        model.model_validate({"fraction": 0.3, "column": "s", "embeddings": "e"})
