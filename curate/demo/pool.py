"""A realistic noisy web-style demo pool, made from the shipped demo data, with ground truth.

The pool mixes clean CIFAR-10 images (and, by default, the more diverse ImageNet-origin
CINIC-10 "pool" images) with the defects a curator has to find. Each sample's ``noise``
column says which defect it carries (exactly one)::

    clean               an image of the class with a web-style caption of that class
    mismatched_caption  the caption describes another class
    spam_caption        boilerplate: "click here for free shipping", "IMG_2034.JPG", ...
    exact_duplicate     the same bytes as another (clean) sample; ``duplicate_of`` is its uid
    near_duplicate      a re-encode, small crop + resize back, or horizontal flip of one
    off_topic           an MNIST digit with a web-ish caption (origin "mnist")
    tiny                the image downscaled to 8-16 px a side
    extreme_aspect      the image stretched or padded to about 1:3.5 (e.g. 112x32)

Counts are computed from the rates (``round(rate * size)``, clean takes the rest) and the
rows are assigned by a seeded permutation, so the ground truth matches the requested rates
exactly up to rounding, and the same seed gives byte-identical shards.

A held-out slice of the clean distribution (same source mix, clean captions, never in the
pool) is written to ``holdout.parquet`` in the pool: the "pool-holdout" ID test set.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from curate.core import shipped_data as demo_data
from curate.core.atomic import write_parquet
from curate.core.errors import UserInputError
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.core.progress import progress_bar
from curate.core.uid import make_uid
from curate.demo import captions as demo_captions

# The columns a demo plan may carry into samples.parquet (the ground truth and the source).
GROUND_TRUTH_COLUMNS = ("label", "class_name", "origin", "noise", "noise_detail", "duplicate_of")
# Kinds that use one of the base (CIFAR/CINIC) images of their own, besides "clean".
_BASE_NOISE = ("mismatched_caption", "spam_caption", "tiny", "extreme_aspect")

DEFAULT_SIZE = 10_500
DEFAULT_HOLDOUT_SIZE = 1_000
DEFAULT_SAMPLES_PER_SHARD = 2_000
JPEG_QUALITY = 75  # the quality of the CIFAR/CINIC source files


@dataclass(frozen=True)
class NoiseRates:
    """Fraction of the pool that carries each defect (the rest is clean).

    30 % mismatched captions costs a tiny CLIP 6-8 points of zero-shot accuracy at an equal
    training budget (measured on this demo), so a good filter visibly helps.
    """

    mismatched_caption: float = 0.30
    spam_caption: float = 0.05
    exact_duplicate: float = 0.04
    near_duplicate: float = 0.04
    off_topic: float = 0.08
    tiny: float = 0.02
    extreme_aspect: float = 0.02

    def __post_init__(self) -> None:
        for kind, rate in asdict(self).items():
            if not 0.0 <= rate <= 1.0:
                raise UserInputError(
                    f"{rate_option(kind)} {rate}: a rate is a fraction between 0 and 1"
                )
        total = sum(asdict(self).values())
        if total > 1.0:
            raise UserInputError(
                f"the noise rates add up to {total:.3f} > 1; lower some of them "
                "(the clean share is what remains)"
            )

    def counts(self, size: int) -> dict[str, int]:
        """Samples per noise kind in a pool of ``size`` (rounded; clean takes the rest)."""
        counts = {kind: round(rate * size) for kind, rate in asdict(self).items()}
        clean = size - sum(counts.values())
        if clean < 0:
            raise UserInputError(
                f"with --size {size} the rounded noise counts exceed the pool size; "
                "lower a rate or change --size"
            )
        return {"clean": clean, **counts}


def rate_option(kind: str) -> str:
    """The command-line option that sets a noise kind's rate."""
    return f"--{kind.replace('_', '-')}-rate"


@dataclass(frozen=True)
class DemoPlan:
    samples: pl.DataFrame  # one row per pool sample, in pool order, with image bytes
    holdout: pl.DataFrame  # HF image layout: image{bytes,path}, label, class_name, source, text


@dataclass(frozen=True)
class DemoPoolSummary:
    path: Path
    sample_count: int
    noise_counts: dict[str, int]
    origin_counts: dict[str, int]
    holdout_rows: int


# -- source images ------------------------------------------------------------------------
def _image_columns(origin: str) -> list[pl.Expr]:
    return [
        pl.col("image").struct.field("bytes").alias("image"),
        pl.col("image").struct.field("path").alias("path"),
        pl.col("label"),
        pl.col("class_name"),
        pl.lit(origin).alias("origin"),
    ]


def load_base_images(diverse_source: bool) -> pl.DataFrame:
    """The on-topic images: CIFAR-10 train, plus CINIC-10's ImageNet-origin "pool" split."""
    tables = [pl.read_parquet(demo_data.path("cifar10_train")).select(_image_columns("cifar10"))]
    if diverse_source:
        cinic = pl.read_parquet(demo_data.path("cinic10_imagenet"))
        tables.append(
            cinic.filter(pl.col("split") == "pool").select(_image_columns("cinic10_imagenet"))
        )
    return pl.concat(tables)


def load_off_topic_images() -> pl.DataFrame:
    mnist = pl.read_parquet(demo_data.path("mnist")).filter(pl.col("split") == "pool")
    names = pl.Series(demo_captions.DIGIT_NAMES)
    return mnist.select(_image_columns("mnist")).with_columns(
        pl.col("label").map_elements(lambda d: names[d], return_dtype=pl.String).alias("class_name")
    )


# -- image transforms (each returns new JPEG bytes and a short description) ---------------
def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_tiny(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    width, height = (int(v) for v in rng.integers(8, 17, size=2))
    resized = _decode(data).resize((width, height), Image.Resampling.BILINEAR)
    return _jpeg(resized), f"{width}x{height}"


def make_extreme_aspect(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Stretch or pad a (square) image to a long side 3-4 times its short side."""
    image = _decode(data)
    short = min(image.size)
    long = int(rng.integers(3 * short, 4 * short + 1))
    wide = bool(rng.integers(2))
    size = (long, short) if wide else (short, long)
    if rng.integers(2):
        return _jpeg(image.resize(size, Image.Resampling.BICUBIC)), f"stretch_{size[0]}x{size[1]}"
    fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
    canvas = Image.new("RGB", size, fill)
    square = image.resize((short, short))
    canvas.paste(square, ((size[0] - short) // 2, (size[1] - short) // 2))
    return _jpeg(canvas), f"pad_{size[0]}x{size[1]}"


def make_near_duplicate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A re-encode at another quality, a small crop resized back, or a horizontal flip."""
    image = _decode(data)
    kind = int(rng.integers(3))
    if kind == 0:
        quality = int(rng.choice([30, 40, 50, 90, 95]))
        return _jpeg(image, quality), f"jpeg_q{quality}"
    if kind == 1:
        crop = int(rng.integers(1, 4))
        box = (crop, crop, image.width - crop, image.height - crop)
        resized = image.crop(box).resize(image.size, Image.Resampling.BICUBIC)
        return _jpeg(resized), f"crop{crop}_resize"
    return _jpeg(ImageOps.mirror(image)), "hflip"


def make_view(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Another photo of the same thing, as the web repeats a picture: a random crop of
    50-85 % of the area (aspect 3:4 to 4:3) resized back, mirrored half the time."""
    image = _decode(data)
    area = float(rng.uniform(0.5, 0.85)) * image.width * image.height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    width = min(image.width, max(1, round((area * aspect) ** 0.5)))
    height = min(image.height, max(1, round((area / aspect) ** 0.5)))
    left = int(rng.integers(0, image.width - width + 1))
    top = int(rng.integers(0, image.height - height + 1))
    view = image.crop((left, top, left + width, top + height)).resize(
        image.size, Image.Resampling.BICUBIC
    )
    mirrored = bool(rng.integers(2))
    if mirrored:
        view = ImageOps.mirror(view)
    return _jpeg(view), f"crop {width}x{height}+{left}+{top}{' hflip' if mirrored else ''}"


# -- planning -----------------------------------------------------------------------------
def _stratified_pick(groups: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` positions drawn per group in proportion to the group sizes (largest
    remainder), random within each group; returned sorted."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    values, sizes = np.unique(groups, return_counts=True)
    exact = sizes * count / len(groups)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]] += 1
    picked = [
        rng.permutation(np.flatnonzero(groups == value))[:want]
        for value, want in zip(values, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _uids(frame: pl.DataFrame) -> pl.Series:
    return pl.Series(
        "uid",
        [
            make_uid("curate-demo-pool", origin, path, noise)
            for origin, path, noise in frame.select("origin", "path", "noise").iter_rows()
        ],
    )


Transform = Callable[[bytes, np.random.Generator], tuple[bytes, str]]


def _transformed(
    frame: pl.DataFrame, kind: str, transform: Transform, rng: np.random.Generator
) -> pl.DataFrame:
    """Apply an image transform to the rows of one noise kind (image and noise_detail)."""
    rows = frame.with_row_index("_i").filter(pl.col("noise") == kind)
    results = [transform(data, rng) for data in rows["image"]]
    if not results:
        return frame
    index = rows["_i"].to_numpy()
    images = frame["image"].to_list()
    details = frame["noise_detail"].to_list()
    for i, (data, detail) in zip(index, results, strict=True):
        images[i], details[i] = data, detail
    return frame.with_columns(
        pl.Series("image", images, dtype=pl.Binary),
        pl.Series("noise_detail", details, dtype=pl.String),
    )


def _check_supply(counts: dict[str, int], n_base: int, holdout_size: int, base: int, digits: int):
    if n_base + holdout_size > base:
        raise UserInputError(
            f"this pool needs {n_base:,} on-topic images plus {holdout_size:,} held out, but the "
            f"demo data has {base:,} (CIFAR-10 train + CINIC pool split when "
            "--diverse-source); lower --size or --holdout-size, or raise the duplicate and "
            "off-topic rates"
        )
    if counts["off_topic"] > digits:
        raise UserInputError(
            f"{counts['off_topic']:,} off-topic samples requested but the demo data has "
            f"{digits:,} MNIST pool digits; lower {rate_option('off_topic')} or --size"
        )
    duplicates = counts["exact_duplicate"] + counts["near_duplicate"]
    if duplicates > counts["clean"]:
        raise UserInputError(
            f"{duplicates:,} duplicates requested but only {counts['clean']:,} clean samples "
            "to copy; lower the duplicate rates or the other noise rates"
        )


def _diverse_source_views(
    pooled: pl.DataFrame, views: int, rng: np.random.Generator
) -> pl.DataFrame:
    """``views - 1`` more views (:func:`make_view`) of every clean diverse-source sample, each
    with a fresh caption of its class: a larger diverse share without more source images.
    They are clean samples (noise ``clean``, ``noise_detail`` "view K of UID: crop ...")."""
    originals = pooled.filter(
        (pl.col("noise") == "clean") & (pl.col("origin") == "cinic10_imagenet")
    )
    frames = []
    for view in range(2, views + 1):
        results = [make_view(data, rng) for data in originals["image"]]
        captions = demo_captions.class_captions(originals["class_name"].to_list(), rng)
        frames.append(
            originals.with_columns(
                pl.Series("image", [data for data, _ in results], dtype=pl.Binary),
                pl.Series(
                    "noise_detail",
                    [
                        f"view {view} of {uid}: {detail}"
                        for uid, (_, detail) in zip(originals["uid"], results, strict=True)
                    ],
                    dtype=pl.String,
                ),  # fmt: skip
                pl.Series("text", captions, dtype=pl.String),
                (pl.col("path") + f"#view{view}").alias("path"),  # a copy's uid needs its own
                pl.Series(
                    "uid",
                    [
                        make_uid("curate-demo-pool", "view", str(view), uid)
                        for uid in originals["uid"]
                    ],
                ),
            )
        )
    return pl.concat(frames)


def plan_demo_pool(
    *,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    rates: NoiseRates | None = None,
    diverse_source: bool = True,
    diverse_views: int = 1,
    holdout_size: int = DEFAULT_HOLDOUT_SIZE,
) -> DemoPlan:
    """Every sample of the demo pool (in pool order) and the held-out slice, from one seed.

    ``diverse_views`` > 1 adds that many views in all (the original plus crops) of every clean
    diverse-source sample on top of ``size``."""
    if size < 1 or holdout_size < 0:
        raise UserInputError(
            f"--size must be ≥ 1 and --holdout-size ≥ 0 (got {size}, {holdout_size})"
        )
    if diverse_views < 1 or (diverse_views > 1 and not diverse_source):
        raise UserInputError(
            f"--diverse-views must be ≥ 1 (got {diverse_views}), and more than 1 needs "
            "--diverse-source"
        )
    rates = rates or NoiseRates()
    counts = rates.counts(size)
    rng = np.random.default_rng(seed)
    base = load_base_images(diverse_source)
    digits = load_off_topic_images()
    n_base = counts["clean"] + sum(counts[kind] for kind in _BASE_NOISE)
    _check_supply(counts, n_base, holdout_size, base.height, digits.height)

    origin_codes = np.unique(base["origin"].to_numpy(), return_inverse=True)[1]
    groups = origin_codes * len(demo_data.CIFAR10_CLASSES) + base["label"].to_numpy()
    holdout_rows = _stratified_pick(groups, holdout_size, rng)
    rest = np.setdiff1d(np.arange(base.height), holdout_rows)
    pool_rows = rest[_stratified_pick(groups[rest], n_base, rng)]

    # noise kinds of the base images, by seeded permutation
    kinds = np.repeat(["clean", *_BASE_NOISE], [counts["clean"], *(counts[k] for k in _BASE_NOISE)])
    noise = np.empty(n_base, dtype=object)
    noise[rng.permutation(n_base)] = kinds
    pooled = base[pool_rows].with_columns(
        pl.Series("noise", noise.tolist(), dtype=pl.String),
        pl.lit(None, dtype=pl.String).alias("noise_detail"),
        pl.lit(None, dtype=pl.String).alias("duplicate_of"),
    )
    classes = demo_data.CIFAR10_CLASSES
    labels = pooled["label"].to_numpy()
    mismatched = (pooled["noise"] == "mismatched_caption").to_numpy()
    caption_class = np.where(
        mismatched, demo_captions.other_classes(labels, len(classes), rng), labels
    )
    texts = demo_captions.class_captions([classes[c] for c in caption_class], rng)
    spam = np.flatnonzero((pooled["noise"] == "spam_caption").to_numpy())
    for i, text in zip(spam, demo_captions.spam_captions(len(spam), rng), strict=True):
        texts[i] = text
    pooled = pooled.with_columns(
        pl.Series("text", texts, dtype=pl.String),
        pl.when(pl.Series(mismatched))
        .then(pl.lit("caption of ") + pl.Series([classes[c] for c in caption_class]))
        .otherwise(pl.col("noise_detail"))
        .alias("noise_detail"),
    )
    pooled = _transformed(pooled, "tiny", make_tiny, rng)
    pooled = _transformed(pooled, "extreme_aspect", make_extreme_aspect, rng)
    pooled = pooled.with_columns(_uids(pooled))
    if diverse_views > 1:
        pooled = pl.concat([pooled, _diverse_source_views(pooled, diverse_views, rng)])

    # duplicates: copies of distinct clean samples, with a fresh caption of the true class
    n_exact, n_near = counts["exact_duplicate"], counts["near_duplicate"]
    clean_rows = np.flatnonzero((pooled["noise"] == "clean").to_numpy())
    originals = pooled[np.sort(rng.choice(clean_rows, n_exact + n_near, replace=False))]
    duplicate_kind = np.repeat(["exact_duplicate", "near_duplicate"], [n_exact, n_near])
    duplicates = originals.with_columns(
        pl.Series("noise", rng.permutation(duplicate_kind).tolist(), dtype=pl.String),
        pl.col("uid").alias("duplicate_of"),
        pl.Series(
            "text",
            demo_captions.class_captions(originals["class_name"].to_list(), rng),
            dtype=pl.String,
        ),
    )
    duplicates = _transformed(duplicates, "near_duplicate", make_near_duplicate, rng)
    duplicates = duplicates.with_columns(_uids(duplicates))

    off_topic = digits[np.sort(rng.choice(digits.height, counts["off_topic"], replace=False))]
    off_topic = off_topic.with_columns(
        pl.lit("off_topic").alias("noise"),
        pl.lit(None, dtype=pl.String).alias("noise_detail"),
        pl.lit(None, dtype=pl.String).alias("duplicate_of"),
        pl.Series(
            "text",
            demo_captions.off_topic_captions(off_topic["label"].to_list(), rng),
            dtype=pl.String,
        ),
    )
    off_topic = off_topic.with_columns(_uids(off_topic))

    columns = pooled.columns
    samples = pl.concat([pooled, duplicates.select(columns), off_topic.select(columns)])
    samples = samples[rng.permutation(samples.height)]

    held = base[holdout_rows]
    holdout = held.select(
        pl.struct(pl.col("image").alias("bytes"), pl.col("path")).alias("image"),
        "label",
        "class_name",
        pl.col("origin").alias("source"),
        pl.Series("text", demo_captions.class_captions(held["class_name"].to_list(), rng)),
    )
    return DemoPlan(samples=samples, holdout=holdout)


# -- writing ------------------------------------------------------------------------------
def build_demo_pool(
    out: Path,
    *,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    rates: NoiseRates | None = None,
    diverse_source: bool = True,
    diverse_views: int = 1,
    holdout_size: int = DEFAULT_HOLDOUT_SIZE,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    overwrite: bool = False,
    show_progress: bool = False,
) -> DemoPoolSummary:
    """Write the demo pool to ``out`` (webdataset shards, samples.parquet, holdout.parquet)."""
    rates = rates or NoiseRates()
    params = {
        "seed": seed,
        "size": size,
        "rates": asdict(rates),
        "diverse_source": diverse_source,
        "holdout_size": holdout_size,
    }
    if diverse_views > 1:  # the default pool's params (and so its identity) stay as they were
        params["diverse_views"] = diverse_views
    plan = plan_demo_pool(
        seed=seed,
        size=size,
        rates=rates,
        diverse_source=diverse_source,
        diverse_views=diverse_views,
        holdout_size=holdout_size,
    )
    return write_demo_plan(
        out,
        plan,
        params,
        samples_per_shard=samples_per_shard,
        overwrite=overwrite,
        show_progress=show_progress,
    )


def write_demo_plan(
    out: Path,
    plan: DemoPlan,
    params: dict,
    *,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    overwrite: bool = False,
    show_progress: bool = False,
    description: str = "demo pool",
) -> DemoPoolSummary:
    """Write a planned demo pool: shards, samples.parquet with the ground-truth columns, and
    the holdout (when the plan has one)."""
    out = Path(out)
    extras = [column for column in GROUND_TRUTH_COLUMNS if column in plan.samples.columns]
    # origin_path: the image's path inside the shipped demo data file it came from
    with (
        PoolWriter(
            out,
            name=out.name,
            source={"type": "demo", **params},
            command="demo-pool",
            params=params,
            samples_per_shard=samples_per_shard,
            overwrite=overwrite,
        ) as writer,
        progress_bar(plan.samples.height, description, show_progress) as advance,
    ):
        for i, row in enumerate(plan.samples.iter_rows(named=True)):
            advance(1)
            writer.add(
                SourceSample(
                    source=row["origin"],
                    where=f"demo pool row {i} ({row['origin']} {row['path']}, {row.get('noise')})",
                    text=row["text"],
                    image=row["image"],
                    uid=row["uid"],
                    extras={**{name: row[name] for name in extras}, "origin_path": row["path"]},
                )
            )
        if plan.holdout.height:
            write_parquet(writer.layout.holdout, plan.holdout)
            writer.extra["holdout"] = {
                "path": writer.layout.holdout.name,  # relative to the pool directory
                "rows": plan.holdout.height,
                "task": "pool-holdout",
            }
        if writer.accepted != plan.samples.height:
            raise RuntimeError(f"demo pool: the writer refused samples: {dict(writer.skips)}")
    samples = plan.samples
    return DemoPoolSummary(
        path=out,
        sample_count=samples.height,
        noise_counts=(
            dict(samples.group_by("noise").len().sort("noise").iter_rows())
            if "noise" in samples.columns
            else {}
        ),
        origin_counts=dict(samples.group_by("origin").len().sort("origin").iter_rows()),
        holdout_rows=plan.holdout.height,
    )
