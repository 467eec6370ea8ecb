"""The small real data sets shipped with curate (built by ``scripts/make_demo_data.py``).

Every file is a parquet table in the Hugging Face ``datasets`` image layout:
``image`` {bytes, path}, ``label`` (int64), ``class_name``, ``source``; the mnist and
cinic10_imagenet files also have ``split`` ("pool" or "test"). See README.md here.
"""

from __future__ import annotations

from pathlib import Path

from curate.core.errors import InputNotFoundError

# The files live with the demo (curate/demo/data/); core only knows where, so that any layer
# can resolve a "demo:NAME" path without importing the demo.
DEMO_DATA_DIR = Path(__file__).resolve().parents[1] / "demo" / "data"

NAMES = (
    "cifar10_train",
    "cifar10_test",
    "cinic10_imagenet",
    "mnist",
    "usps_test",
    "usps_train",
)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def path(name: str) -> Path:
    """Path of one shipped file, by name with or without ``.parquet`` (e.g. ``"cifar10_test"``)."""
    stem = name.removesuffix(".parquet")
    if stem not in NAMES:
        raise InputNotFoundError(
            f"no demo data file {name!r}; the shipped files are: {', '.join(NAMES)}"
        )
    file = DEMO_DATA_DIR / f"{stem}.parquet"
    if not file.is_file():
        raise InputNotFoundError(
            f"{file} is missing from this installation; rebuild it with "
            "`python scripts/make_demo_data.py` (needs the shared data folder)"
        )
    return file
