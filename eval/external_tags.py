"""open_clip pretrained tags -> the training data behind them, and samples seen where the tag says.

Sources: open_clip's docs/PRETRAINED.md, docs/datacomp_models.md, src/open_clip/pretrained.py.
``samples_seen`` comes only from the tag itself (``_s34b_``: 34e9 samples; DataComp and
CommonPool tags use DataComp's exact budgets, ``s13b`` = 12.8e9, ``s1b`` = 1.28e9,
``s128m`` = 1.28e8, ``s13m`` = 1.28e7); a tag that encodes no count (``openai``,
``laion400m_e32``, ``dfn2b``, ...) gets null, never an estimate. An unknown tag gets null
training data; the importer counts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class TrainingData:
    group: str
    """Canonical training-data group name, e.g. "LAION-2B", "CommonPool-L (CLIP score)"."""
    scale: str | None = None
    """DataComp scale ("small", "medium", "large", "xlarge") for DataComp/CommonPool data."""
    filter: str | None = None
    """DataComp filter: "none", "basic", "text", "image", "laion", "clip", "image∩clip"."""
    arch_prefix: str | None = None
    """The tag means this data only for architectures starting with this (generic tags)."""


_SCALES = {"s": "small", "m": "medium", "l": "large", "xl": "xlarge"}
_SCALE_LETTER = {"s": "S", "m": "M", "l": "L", "xl": "XL"}
_FILTER_LABELS = {
    "none": "no filter",
    "basic": "basic",
    "text": "text",
    "image": "image",
    "laion": "LAION filter",
    "clip": "CLIP score",
}
_DATACOMP_BUDGETS = {"13b": 12_800_000_000, "1b": 1_280_000_000, "128m": 128_000_000}
_DATACOMP_BUDGETS["13m"] = 12_800_000
_COMMONPOOL_TAGS = {
    "xl": ("s13b_b90k", ("none", "clip", "laion")),
    "l": ("s1b_b8k", ("none", "basic", "text", "image", "laion", "clip")),
    "m": ("s128m_b4k", ("none", "basic", "text", "image", "laion", "clip")),
    "s": ("s13m_b4k", ("none", "basic", "text", "image", "laion", "clip")),
}


def _commonpool_tags() -> dict[str, TrainingData]:
    tags = {}
    for letter, (suffix, filters) in _COMMONPOOL_TAGS.items():
        for name in filters:
            tag = (
                f"commonpool_{letter}_{suffix}"
                if name == "none"
                else (f"commonpool_{letter}_{name}_{suffix}")
            )
            group = f"CommonPool-{_SCALE_LETTER[letter]} ({_FILTER_LABELS[name]})"
            tags[tag] = TrainingData(group, _SCALES[letter], name)
    return tags


_LAION2B = TrainingData("LAION-2B")
_LAION400M = TrainingData("LAION-400M")
_MERGED2B = TrainingData("Merged-2B")  # EVA: 1.6B LAION-2B + 0.4B COYO-700M
_DATACOMP_1B = TrainingData("DataComp-1B", "xlarge", "image∩clip")

TAGS: dict[str, TrainingData] = {
    "openai": TrainingData("OpenAI WIT"),
    "yfcc15m": TrainingData("YFCC-15M"),
    "cc12m": TrainingData("CC12M"),
    "laion400m_e31": _LAION400M,
    "laion400m_e32": _LAION400M,
    "laion400m_s11b_b41k": _LAION400M,
    "laion400m_s13b_b51k": _LAION400M,
    "laion2b": _LAION2B,
    "laion2b_e16": _LAION2B,
    "laion2b_s4b_b115k": _LAION2B,
    "laion2b_s9b_b144k": _LAION2B,
    "laion2b_s12b_b32k": _LAION2B,
    "laion2b_s12b_b42k": _LAION2B,
    "laion2b_s13b_b82k": _LAION2B,
    "laion2b_s13b_b82k_augreg": _LAION2B,
    "laion2b_s13b_b90k": _LAION2B,
    "mscoco_finetuned_laion2b_s13b_b90k": _LAION2B,  # CoCa, then fine-tuned on MSCOCO
    "laion2b_s26b_b102k_augreg": _LAION2B,
    "laion2b_s29b_b131k_ft": _LAION2B,
    "laion2b_s29b_b131k_ft_soup": _LAION2B,
    "laion2b_s32b_b79k": _LAION2B,
    "laion2b_s32b_b82k": _LAION2B,
    "laion2b_s34b_b79k": _LAION2B,
    "laion2b_s34b_b82k_augreg": _LAION2B,
    "laion2b_s34b_b82k_augreg_rewind": _LAION2B,
    "laion2b_s34b_b82k_augreg_soup": _LAION2B,
    "laion2b_s34b_b88k": _LAION2B,
    "laion2b_s39b_b160k": _LAION2B,
    "laion_aesthetic_s13b_b82k": TrainingData("LAION-aesthetic"),
    "laion_aesthetic_s13b_b82k_augreg": TrainingData("LAION-aesthetic"),
    "laion5b_s13b_b90k": TrainingData("LAION-5B"),
    "frozen_laion5b_s13b_b90k": TrainingData("LAION-5B"),  # LiT on a frozen LAION-2B tower
    "merged2b_s4b_b131k": _MERGED2B,
    "merged2b_s6b_b61k": _MERGED2B,
    "merged2b_s8b_b131k": _MERGED2B,
    "merged2b_s11b_b114k": _MERGED2B,
    "datacomp_xl_s13b_b90k": _DATACOMP_1B,
    "datacomp_s34b_b86k": _DATACOMP_1B,
    "datacomp1b": _DATACOMP_1B,
    "datacomp_l_s1b_b8k": TrainingData("DataComp-L", "large", "image∩clip"),
    "datacomp_m_s128m_b4k": TrainingData("DataComp-M", "medium", "image∩clip"),
    "datacomp_s_s13m_b4k": TrainingData("DataComp-S", "small", "image∩clip"),
    **_commonpool_tags(),
    "dfn2b": TrainingData("DFN-2B"),
    "dfn5b": TrainingData("DFN-5B"),
    "metaclip_400m": TrainingData("MetaCLIP-400M"),
    "metaclip_fullcc": TrainingData("MetaCLIP-2.5B"),
    "webli": TrainingData("WebLI"),
    "v1": TrainingData("LAION-COCO-NLLB", arch_prefix="nllb-clip"),
}
"""Every pretrained tag of open_clip's results table (and a few more), by tag."""

_SAMPLES_RE = re.compile(r"(?:^|_)s(\d+)([bm])_b\d+k")


def samples_seen_from_tag(tag: str) -> int | None:
    """Samples seen as the tag encodes them (``_s34b_b79k``), else None."""
    match = _SAMPLES_RE.search(tag)
    if match is None:
        return None
    count, unit = match.groups()
    if tag.startswith(("commonpool_", "datacomp_")) and f"{count}{unit}" in _DATACOMP_BUDGETS:
        return _DATACOMP_BUDGETS[f"{count}{unit}"]
    return int(count) * (1_000_000_000 if unit == "b" else 1_000_000)


def tag_table() -> pl.DataFrame:
    """The tag table as a frame: pretrained, training_data, scale, filter, arch_prefix."""
    return pl.DataFrame(
        {
            "pretrained": list(TAGS),
            "training_data": [t.group for t in TAGS.values()],
            "training_data_scale": [t.scale for t in TAGS.values()],
            "training_filter": [t.filter for t in TAGS.values()],
            "arch_prefix": [t.arch_prefix for t in TAGS.values()],
        },
        schema={
            "pretrained": pl.String,
            "training_data": pl.String,
            "training_data_scale": pl.String,
            "training_filter": pl.String,
            "arch_prefix": pl.String,
        },
    )


def with_training_data(table: pl.DataFrame) -> pl.DataFrame:
    """Add training_data, training_data_scale, training_filter and samples_seen from the
    ``pretrained`` tag (and ``arch`` for generic tags); unknown tags get nulls."""
    joined = table.join(tag_table(), on="pretrained", how="left")
    wrong_arch = pl.col("arch_prefix").is_not_null() & ~pl.col("arch").fill_null(
        ""
    ).str.starts_with(pl.col("arch_prefix"))
    data_cols = ["training_data", "training_data_scale", "training_filter"]
    samples = pl.col("pretrained").map_elements(samples_seen_from_tag, return_dtype=pl.Int64)
    return joined.with_columns(
        *[pl.when(wrong_arch).then(None).otherwise(pl.col(c)).alias(c) for c in data_cols],
        samples_seen=samples,
    ).drop("arch_prefix")
