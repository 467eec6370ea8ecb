"""The demo pool: ground truth matches the requested rates, the same seed gives the same
bytes, and each kind of noise really is what its label says (checked on the images)."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from curate.cli.main import app
from curate.core.errors import UserInputError
from curate.core.layout import PoolLayout
from curate.core.pool import Pool
from curate.demo.captions import CLASS_SYNONYMS
from curate.demo.pool import NoiseRates, build_demo_pool, plan_demo_pool

SIZE = 200
HOLDOUT = 40
# Not the defaults, and chosen so that several counts need rounding (size * rate not whole).
RATES = NoiseRates(
    mismatched_caption=0.253,
    spam_caption=0.0625,
    exact_duplicate=0.05,
    near_duplicate=0.0775,
    off_topic=0.1,
    tiny=0.03,
    extreme_aspect=0.0325,
)


def _build(out: Path, seed: int) -> Pool:
    build_demo_pool(out, seed=seed, size=SIZE, rates=RATES, holdout_size=HOLDOUT)
    return Pool.open(out)


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, Pool]:
    root = tmp_path_factory.mktemp("demo")
    return {"a": _build(root / "a", 1), "a_again": _build(root / "a_again", 1)}


@pytest.fixture(scope="module")
def samples(pools) -> pl.DataFrame:
    return pools["a"].samples()


@pytest.fixture(scope="module")
def images(pools, samples) -> dict[str, bytes]:
    """uid -> image bytes, read back from the shards."""
    data = pools["a"].read_images(samples)
    return dict(zip(samples["uid"], data, strict=True))


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L").resize((32, 32)), dtype=np.float64)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_noise_counts_match_the_requested_rates(pools, samples):
    counts = dict(samples.group_by("noise").len().iter_rows())
    rates = {field: getattr(RATES, field) for field in RATES.__dataclass_fields__}
    for kind, rate in rates.items():
        assert abs(counts.get(kind, 0) - rate * SIZE) <= 0.5, kind
    assert counts["clean"] == SIZE - sum(counts[k] for k in rates)
    assert samples.height == SIZE and samples["uid"].n_unique() == SIZE
    assert pools["a"].manifest.sample_count == SIZE
    assert counts["mismatched_caption"] == 51  # 50.6 rounds up: the count, not the floor


def test_same_seed_same_bytes_other_seed_differs(pools, tmp_path):
    first, again = pools["a"], pools["a_again"]
    assert first.samples().equals(again.samples())
    assert first.layout.samples.read_bytes() == again.layout.samples.read_bytes()
    assert first.layout.holdout.read_bytes() == again.layout.holdout.read_bytes()
    shards = [p.relative_to(first.root) for p in first.shard_paths()]
    assert shards == [p.relative_to(again.root) for p in again.shard_paths()]
    for shard in shards:
        assert (first.root / shard).read_bytes() == (again.root / shard).read_bytes()

    other = _build(tmp_path / "b", 2).samples()
    assert set(other["uid"]) != set(first.samples()["uid"])
    assert dict(other.group_by("noise").len().iter_rows()) == dict(
        first.samples().group_by("noise").len().iter_rows()
    )


def test_exact_duplicates_are_byte_identical_copies_of_clean_samples(samples, images):
    by_uid = samples.select("uid", "noise", "sha256").rows_by_key("uid", unique=True)
    exact = samples.filter(pl.col("noise") == "exact_duplicate")
    assert exact.height > 0
    for uid, original, sha in exact.select("uid", "duplicate_of", "sha256").iter_rows():
        assert by_uid[original][0] == "clean"
        assert sha == by_uid[original][1] == hashlib.sha256(images[uid]).hexdigest()
        assert images[uid] == images[original]
    assert samples.filter(pl.col("noise") != "exact_duplicate")["sha256"].n_unique() == (
        SIZE - exact.height
    )


def _apply(detail: str, data: bytes) -> np.ndarray:
    """The original's pixels after the transform ``detail`` names (the reference)."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L")
        if detail == "hflip":
            image = ImageOps.mirror(image)
        elif detail.startswith("crop"):
            crop = int(detail.removeprefix("crop").split("_")[0])
            box = (crop, crop, image.width - crop, image.height - crop)
            image = image.crop(box).resize(image.size, Image.Resampling.BICUBIC)
        else:
            assert re.fullmatch(r"jpeg_q\d+", detail), detail
        return np.asarray(image, dtype=np.float64)


def test_near_duplicates_are_transforms_of_their_original(samples, images):
    near = samples.filter(pl.col("noise") == "near_duplicate")
    assert near.height > 0
    clean = samples.filter(pl.col("noise") == "clean")["uid"].to_list()
    for uid, original, detail in near.select("uid", "duplicate_of", "noise_detail").iter_rows():
        assert images[uid] != images[original]
        copy = _pixels(images[uid])
        assert _correlation(copy, _apply(detail, images[original])) > 0.95, detail
        unrelated = clean[(clean.index(original) + 1) % len(clean)]
        assert _correlation(copy, _apply(detail, images[unrelated])) < 0.9
    kinds = {re.sub(r"\d+", "", detail) for detail in near["noise_detail"]}
    assert kinds == {"jpeg_q", "crop_resize", "hflip"}


def test_tiny_and_extreme_aspect_sizes_hold(samples, images):
    tiny = samples.filter(pl.col("noise") == "tiny")
    extreme = samples.filter(pl.col("noise") == "extreme_aspect")
    assert tiny.height > 0 and extreme.height > 0
    assert tiny["width"].is_between(8, 16).all() and tiny["height"].is_between(8, 16).all()
    ratio = pl.max_horizontal("width", "height") / pl.min_horizontal("width", "height")
    assert extreme.select(ratio.min()).item() >= 3
    others = samples.filter(~pl.col("noise").is_in(["tiny", "extreme_aspect"]))
    assert set(others.select(pl.struct("width", "height")).to_series().struct.unnest().rows()) <= {
        (32, 32),
        (28, 28),
    }
    for uid, width, height in extreme.select("uid", "width", "height").iter_rows():
        with Image.open(io.BytesIO(images[uid])) as image:
            assert image.size == (width, height)


def _mentions(text: str, class_name: str) -> bool:
    words = "|".join(re.escape(s) for s in CLASS_SYNONYMS[class_name])
    return re.search(rf"\b({words})\b", text.lower()) is not None


def test_captions_match_or_mismatch_as_labelled(samples):
    for noise, text, class_name, detail in samples.select(
        "noise", "text", "class_name", "noise_detail"
    ).iter_rows():
        if noise in ("clean", "exact_duplicate", "near_duplicate", "tiny", "extreme_aspect"):
            assert _mentions(text, class_name), text
        elif noise == "mismatched_caption":
            told = detail.removeprefix("caption of ")
            assert told != class_name and _mentions(text, told), text
            assert not _mentions(text, class_name), text
        elif noise == "spam_caption":
            assert not any(_mentions(text, name) for name in CLASS_SYNONYMS), text
    digits = samples.filter(pl.col("noise") == "off_topic")
    assert (digits["origin"] == "mnist").all() and (digits["width"] == 28).all()
    assert set(samples.filter(pl.col("origin") == "mnist")["noise"]) == {"off_topic"}


def test_holdout_is_disjoint_from_the_pool_with_the_same_source_mix(pools, samples):
    pool = pools["a"]
    assert pool.manifest.extra["holdout"] == {
        "path": "holdout.parquet",
        "rows": HOLDOUT,
        "task": "pool-holdout",
    }
    holdout = pl.read_parquet(PoolLayout(pool.root).holdout)
    assert holdout.columns[:4] == ["image", "label", "class_name", "source"]
    assert holdout.height == HOLDOUT
    hashes = {hashlib.sha256(b).hexdigest() for b in holdout["image"].struct.field("bytes")}
    assert not hashes & set(samples["sha256"])
    assert not set(holdout["image"].struct.field("path")) & set(samples["origin_path"])
    on_topic = samples.filter(pl.col("origin") != "mnist")
    share = (on_topic["origin"] == "cinic10_imagenet").mean()
    assert abs((holdout["source"] == "cinic10_imagenet").mean() - share) < 0.1
    assert set(holdout["source"]) <= {"cifar10", "cinic10_imagenet"}


def test_no_diverse_source_uses_cifar_only():
    plan = plan_demo_pool(seed=0, size=100, holdout_size=10, diverse_source=False)
    assert set(plan.samples["origin"]) == {"cifar10", "mnist"}
    assert set(plan.holdout["source"]) == {"cifar10"}


def test_impossible_requests_are_refused_with_the_option_to_change():
    with pytest.raises(UserInputError, match="add up to"):
        NoiseRates(mismatched_caption=0.7, spam_caption=0.4)
    with pytest.raises(UserInputError, match="--tiny-rate"):
        NoiseRates(tiny=1.5)
    with pytest.raises(UserInputError, match="--size"):
        plan_demo_pool(size=40_000)


def test_cli_writes_a_pool_and_prints_the_ground_truth(tmp_path):
    out = tmp_path / "cli_pool"
    args = ["demo-pool", "--out", str(out), "--size", "50", "--holdout-size", "5"]
    result = CliRunner().invoke(app, [*args, "--spam-caption-rate", "0.2"])
    assert result.exit_code == 0, result.output
    assert "spam_caption" in result.output
    assert (Pool.open(out).samples()["noise"] == "spam_caption").sum() == 10
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_diverse_views_add_crops_of_clean_diverse_samples_only():
    base = plan_demo_pool(seed=3, size=SIZE, rates=RATES, holdout_size=HOLDOUT).samples
    plan = plan_demo_pool(
        seed=3, size=SIZE, rates=RATES, holdout_size=HOLDOUT, diverse_views=3
    ).samples
    originals = base.filter((pl.col("noise") == "clean") & (pl.col("origin") == "cinic10_imagenet"))
    views = plan.filter(
        pl.col("noise_detail").str.starts_with("view ") & (pl.col("noise") == "clean")
    )
    assert originals.height > 0 and views.height == 2 * originals.height
    assert plan.height == base.height + views.height and plan["uid"].is_unique().all()
    by_uid = {row["uid"]: row for row in base.iter_rows(named=True)}
    for row in views.iter_rows(named=True):
        match = re.fullmatch(r"view ([23]) of ([0-9a-f]{32}): crop (\d+)x(\d+)\+\d+\+\d+( hflip)?",
                             row["noise_detail"])  # fmt: skip
        assert match, row["noise_detail"]
        original = by_uid[match.group(2)]
        assert (row["noise"], row["origin"], row["label"]) == ("clean", "cinic10_imagenet",
                                                               original["label"])  # fmt: skip
        assert 0.45 <= int(match.group(3)) * int(match.group(4)) / 32**2 <= 0.9
        view = Image.open(io.BytesIO(row["image"]))
        assert view.size == Image.open(io.BytesIO(original["image"])).size
        assert row["image"] != original["image"]
    # the samples drawn before the views are the same with or without them
    drawn_first = base.filter(~pl.col("noise").is_in(["exact_duplicate", "near_duplicate",
                                                      "off_topic"]))  # fmt: skip
    assert drawn_first.sort("uid").equals(plan.filter(pl.col("uid").is_in(
        drawn_first["uid"].implode())).sort("uid"))  # fmt: skip
