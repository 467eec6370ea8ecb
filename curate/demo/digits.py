"""The demo's second world: handwritten digits, where the natural shift is MNIST -> USPS.

The pool holds the shipped MNIST "pool" digits (ID source) and, as the more diverse source,
USPS training digits (another country's postal scans: thicker strokes, 16 px, centred
differently), each with a web-style caption that names its digit. The ID test set is the
MNIST "test" split (task mnist-test) and the shift is the 2,007 USPS test digits (usps-test),
so the shift set is larger than the CIFAR world's 761 CINIC images. The two demo recipes,
``demo_digits_mnist_only`` and ``demo_digits_add_usps``, differ only in the diverse source;
the baseline line is standard models on MNIST alone (eval/tasks.yaml task set ``digits``).

Every sample is clean (so the pool has no ground-truth ``noise`` column): this world tests the
diversity effect alone, which the CIFAR world's noise would otherwise blur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curate.core import shipped_data as demo_data
from curate.core.errors import UserInputError
from curate.core.uid import make_uid
from curate.demo import captions as demo_captions
from curate.demo.pool import DemoPlan, DemoPoolSummary, write_demo_plan

DEFAULT_USPS = 3_000  # all the shipped USPS training digits
_HOLDOUT_SCHEMA = {
    "image": pl.Struct({"bytes": pl.Binary, "path": pl.String}),
    "label": pl.Int64,
    "class_name": pl.String,
    "source": pl.String,
    "text": pl.String,
}


def _digits(name: str, origin: str, split: str | None) -> pl.DataFrame:
    table = pl.read_parquet(demo_data.path(name))
    if split is not None:
        table = table.filter(pl.col("split") == split)
    return table.select(
        pl.col("image").struct.field("bytes").alias("image"),
        pl.col("image").struct.field("path").alias("path"),
        "label",
        "class_name",
        pl.lit(origin).alias("origin"),
    )


def plan_digits_pool(*, seed: int = 0, usps: int = DEFAULT_USPS) -> DemoPlan:
    """All MNIST pool digits plus ``usps`` USPS training digits (a seeded draw), shuffled."""
    rng = np.random.default_rng(seed)
    mnist = _digits("mnist", "mnist", "pool")
    usps_all = _digits("usps_train", "usps", None)
    if not 0 <= usps <= usps_all.height:
        raise UserInputError(
            f"--usps {usps}: the demo data has {usps_all.height:,} USPS training digits"
        )
    chosen = usps_all[np.sort(rng.choice(usps_all.height, usps, replace=False))]
    samples = pl.concat([mnist, chosen])
    samples = samples.with_columns(
        pl.Series(
            "text", demo_captions.digit_captions(samples["label"].to_list(), rng), dtype=pl.String
        ),
        pl.Series(
            "uid",
            [
                make_uid("curate-demo-digits", origin, path)
                for origin, path in samples.select("origin", "path").iter_rows()
            ],
        ),
    )
    samples = samples[rng.permutation(samples.height)]
    return DemoPlan(samples=samples, holdout=pl.DataFrame(schema=_HOLDOUT_SCHEMA))


def build_digits_pool(
    out: Path, *, seed: int = 0, usps: int = DEFAULT_USPS, show_progress: bool = False
) -> DemoPoolSummary:
    params = {"world": "digits", "seed": seed, "usps": usps}
    return write_demo_plan(
        out,
        plan_digits_pool(seed=seed, usps=usps),
        params,
        show_progress=show_progress,
        description="digits pool",
    )
