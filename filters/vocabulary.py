"""Target vocabularies for the ``text_based`` stage: class names and their synonyms.

A vocabulary file is plain text, one class per line, its names separated by commas, as in
DataComp's and timm's ImageNet class-name lists ("tabby, tabby cat"); blank lines and
lines starting with ``#`` are ignored. ``vocab`` is one of:

- a name shipped in ``filters/vocab/`` (``cifar10``);
- ``imagenet21k``: the 21,843 ImageNet-21k (fall 2011) classes with their WordNet lemmas,
  read from the class lists that ship inside the ``timm`` package (installed with
  open_clip), so nothing is downloaded; DataComp's text-based baseline uses these classes.
  Its lemmas include one-letter and very common words ("a", "or", "image", "picture",
  "stock"): DataComp avoided them by looking up each caption word's first WordNet sense,
  which needs WordNet's data; here, drop them with the stage's ``min_term_chars`` and
  ``exclude`` (its report lists the classes that matched most, to spot such words);
- the path of any file in the format above.

Terms are normalised to their words (maximal runs of ``\\w`` characters, lowercased) joined
by single spaces, the same tokenisation the stage applies to captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import polars as pl

from curate.core.errors import InputNotFoundError, UserInputError

VOCAB_DIR = Path(__file__).parent / "vocab"
WORD = r"\w+"
_VOWELS = ("a", "e", "i", "o", "u")


@dataclass(frozen=True)
class Vocabulary:
    source: str  # the file or package data it came from
    term_class: pl.DataFrame  # term (normalised words), class (first name on its line)

    @property
    def max_words(self) -> int:
        return int(self.term_class["term"].str.count_matches(" ").max()) + 1


def words(text: pl.Expr) -> pl.Expr:
    """A caption's or term's words: lowercased maximal runs of letters, digits, underscore."""
    return text.str.to_lowercase().str.extract_all(WORD)


def _imagenet21k_lines() -> list[str]:
    spec = find_spec("timm")  # locates the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFoundError(
            "the imagenet21k vocabulary reads timm's class lists: pip install timm"
        )
    info = Path(spec.submodule_search_locations[0]) / "data" / "_info"
    lemmas = dict(
        line.split("\t", 1)
        for line in (info / "imagenet_synset_to_lemma.txt").read_text("utf-8").splitlines()
    )
    synsets = (info / "imagenet21k_goog_synsets.txt").read_text("utf-8").split()
    return [lemmas[synset] for synset in synsets]


PACKAGE_VOCABULARIES: dict[str, Callable[[], list[str]]] = {"imagenet21k": _imagenet21k_lines}


def vocabulary_names() -> list[str]:
    return sorted([p.stem for p in VOCAB_DIR.glob("*.txt")] + list(PACKAGE_VOCABULARIES))


def vocabulary_lines(vocab: str) -> tuple[str, list[str]]:
    """(where it came from, its lines) for a vocabulary name or file path."""
    if vocab in PACKAGE_VOCABULARIES:
        return f"{vocab} (timm's ImageNet class lists)", PACKAGE_VOCABULARIES[vocab]()
    shipped = VOCAB_DIR / f"{vocab}.txt"
    path = shipped if "/" not in vocab and shipped.is_file() else Path(vocab).expanduser()
    if not path.is_file():
        raise InputNotFoundError(
            f"vocabulary {vocab!r}: no file {path.resolve()} and no vocabulary of that name "
            f"({', '.join(vocabulary_names())}); give one of those names or a file's path"
        )
    return str(path), path.read_text("utf-8").splitlines()


def load_vocabulary(
    vocab: str, *, plurals: bool = True, min_term_chars: int = 1, exclude: Sequence[str] = ()
) -> Vocabulary:
    """Terms of a vocabulary, normalised; terms shorter than ``min_term_chars`` or listed in
    ``exclude`` are left out (before plurals are added)."""
    source, lines = vocabulary_lines(vocab)
    terms: list[str] = []
    classes: list[str] = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        names = [name.strip() for name in line.split(",") if name.strip()]
        terms += names
        classes += names[:1] * len(names)
    term_class = (
        pl.DataFrame(
            {"term": terms, "class": classes}, schema={"term": pl.String, "class": pl.String}
        )
        .with_columns(term=words(pl.col("term")).list.join(" "))
        .filter(
            pl.col("term").str.len_chars() >= max(min_term_chars, 1),
            ~pl.col("term").is_in(_normalised(exclude)),
        )
    )
    if term_class.is_empty():
        raise UserInputError(
            f"{source}: the vocabulary has no terms (one class per line, names separated by commas)"
        )
    if plurals:
        term_class = pl.concat([term_class, plural_forms(term_class)])
    return Vocabulary(source, term_class.unique(subset="term", keep="first", maintain_order=True))


def _normalised(terms: Sequence[str]) -> list[str]:
    frame = pl.DataFrame({"term": list(terms)}, schema={"term": pl.String})
    return frame.select(words(pl.col("term")).list.join(" "))["term"].to_list()


def plural_forms(term_class: pl.DataFrame) -> pl.DataFrame:
    """Regular English plurals of each term's last word: +s, +es, consonant+y -> +ies."""
    term = pl.col("term")
    consonant_y = term.str.ends_with("y") & ~term.str.slice(-2, 1).is_in(_VOWELS)
    return pl.concat(
        [
            term_class.with_columns(term=term + "s"),
            term_class.with_columns(term=term + "es"),
            term_class.filter(consonant_y).with_columns(
                term=term.str.slice(0, term.str.len_chars() - 1) + "ies"
            ),
        ]
    )
