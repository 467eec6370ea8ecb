"""Language identification of many captions at once, with the model that ships inside the
``langid`` package (langid.py, Lui & Baldwin 2012: 97 languages, byte n-gram naive Bayes).
Nothing is downloaded.

``langid.classify`` walks each caption's bytes in a Python loop (about 500 captions/s here).
The same model is linear in the states its byte automaton visits, so this module folds the
feature -> class log-probabilities into one row per automaton state once, steps the
automaton over all captions in parallel with numpy (one step per byte position), and sums
the visited states' rows: the same log-probabilities as ``langid.classify`` (up to float
rounding), for whole columns at a time.

DataComp's baselines use fastText's lid.176 model and keep a caption when its top language
is ``en`` (no probability threshold); this module answers the same question with langid's
model, so ambiguous captions (very short ones, names, file names) can be decided differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# langid.py's 97 languages (ISO 639-1), in its model's order; checked against the model in tests.
LANGUAGES = (
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu "
    "he hi hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt "
    "nb ne nl nn no oc or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk "
    "ur vi vo wa xh zh zu"
).split()
BATCH_BYTES = 1 << 16  # caption bytes per batch: bounds the (bytes x languages) float64 gather


def check_language(language: str) -> str:
    """For parameter validation: a typo fails before any work, not by keeping nothing."""
    if language not in LANGUAGES:
        raise ValueError(f"langid knows no language {language!r}; use one of {' '.join(LANGUAGES)}")
    return language


@dataclass(frozen=True)
class LanguageModel:
    next_state: np.ndarray  # (states * 256,) int32: next_state[(state << 8) + byte]
    state_log_prob: np.ndarray  # (states, languages) float64: summed log P(feature | language)
    prior_log_prob: np.ndarray  # (languages,) float64: log P(language)
    languages: tuple[str, ...]


@cache
def langid_model() -> LanguageModel:
    """langid.py's bundled model, rearranged for batch scoring (about 1 s, once per process)."""
    from langid.langid import LanguageIdentifier
    from langid.langid import model as model_string

    identifier = LanguageIdentifier.from_modelstring(model_string, norm_probs=False)
    next_state = np.frombuffer(
        identifier.tk_nextmove, dtype=np.dtype(identifier.tk_nextmove.typecode)
    )
    state_count = len(next_state) >> 8
    feature_log_prob = np.asarray(identifier.nb_ptc, dtype=np.float64)
    state_log_prob = np.zeros((state_count, feature_log_prob.shape[1]), dtype=np.float64)
    for state, features in identifier.tk_output.items():
        for feature in features:
            state_log_prob[state] += feature_log_prob[feature]
    return LanguageModel(
        next_state=next_state.astype(np.int32),
        state_log_prob=state_log_prob,
        prior_log_prob=np.asarray(identifier.nb_pc, dtype=np.float64),
        languages=tuple(identifier.nb_classes),
    )


def identify_languages(texts: pa.Array | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Most likely language and its probability (normalised over langid's 97 languages)
    for each text: ``(codes, probabilities)``, two arrays aligned with ``texts``.

    Nulls count as empty captions. Texts are scored once per distinct value.
    """
    array = pa.array(texts, type=pa.large_string()) if isinstance(texts, list) else texts
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = pc.fill_null(array.cast(pa.large_string()), "")
    if len(array) == 0:
        return np.array([], dtype=object), np.array([], dtype=np.float64)
    encoded = pc.dictionary_encode(array)
    codes, probabilities = _classify_distinct(encoded.dictionary)
    indices = encoded.indices.to_numpy()
    return codes[indices], probabilities[indices]


def _classify_distinct(texts: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    model = langid_model()
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    data = (
        np.frombuffer(texts.buffers()[2], dtype=np.uint8)
        if texts.buffers()[2]
        else np.zeros(0, np.uint8)
    )
    log_prob = np.empty((len(texts), len(model.languages)), dtype=np.float64)
    start = 0
    while start < len(texts):
        stop = int(np.searchsorted(offsets, offsets[start] + BATCH_BYTES, side="right")) - 1
        stop = min(max(stop, start + 1), len(texts))
        log_prob[start:stop] = _log_prob_batch(model, data, offsets[start : stop + 1])
        start = stop
    best = np.argmax(log_prob, axis=1)
    best_log_prob = np.take_along_axis(log_prob, best[:, None], axis=1)
    # P(best) = 1 / sum_l exp(log p_l - log p_best), as langid's norm_probs.
    with np.errstate(over="ignore"):
        probability = 1.0 / np.exp(log_prob - best_log_prob).sum(axis=1)
    return np.asarray(model.languages, dtype=object)[best], probability


def _log_prob_batch(model: LanguageModel, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Unnormalised log-probabilities for the texts ``data[offsets[i]:offsets[i+1]]``."""
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    # Longest first, so that the texts still running at byte position t are a prefix.
    order = np.argsort(-lengths, kind="stable")
    sorted_starts = starts[order]
    sorted_lengths = lengths[order]
    visited = np.empty(int(lengths.sum()), dtype=np.int32)
    out_starts = np.concatenate(([0], np.cumsum(sorted_lengths)[:-1]))
    state = np.zeros(len(order), dtype=np.int32)
    running = len(order)
    for position in range(int(sorted_lengths[0]) if len(order) else 0):
        while running and sorted_lengths[running - 1] <= position:
            running -= 1
        byte = data[sorted_starts[:running] + position]
        state[:running] = model.next_state[(state[:running] << 8) + byte]
        visited[out_starts[:running] + position] = state[:running]
    log_prob = np.tile(model.prior_log_prob, (len(order), 1))
    nonempty = sorted_lengths > 0
    if nonempty.any():
        sums = np.add.reduceat(model.state_log_prob[visited], out_starts[nonempty], axis=0)
        log_prob[nonempty] += sums
    result = np.empty_like(log_prob)
    result[order] = log_prob
    return result
