"""A corpus of bad inputs driven through the real CLI: each one must end in a counted skip
(exit 0, a complete pool whose ingest_report.json names it) or a clear one-line error that
names the file (exit 2, no output directory), never a traceback, never a partial output,
and never a file written anywhere but the expected output.

The corpus is generated in ``tmp_path``. Starting a Python process that imports the CLI
costs 2-4 s here, so instead of one process per case every case runs in ONE separate
process (``_DRIVER`` below) that calls the console script's entry point
``curate.cli.main.main()`` with each case's argv, exactly as ``curate ...`` would, and captures
its exit status, stdout and stderr. Any exception escaping ``main()`` is printed as the
interpreter would (a "Traceback"), which fails the case.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, SourceSample
from tests.conftest import make_image_bytes

REPO = Path(__file__).resolve().parents[1]

_DRIVER = r"""
import contextlib, io, json, sys, traceback
import curate.cli.main
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["curate", *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            curate.cli.main.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, sys.__stdout__)
"""


# -- corpus builders ---------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels that compresses to a few KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    block = row * 1000
    parts = [packer.compress(block) for _ in range(height // 1000)]
    parts += [packer.compress(row * (height % 1000)), packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _good(key: str, seed: int) -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", make_image_bytes(seed)), (f"{key}.txt", f"caption {seed}".encode())]


def _img2dataset(
    folder: Path, members: list[tuple[str, bytes]], *, keys: list[str] | None = None
) -> None:
    """img2dataset's layout: 00000.tar, and 00000.parquet listing ``keys`` as downloaded."""
    folder.mkdir()
    (folder / "00000.tar").write_bytes(_tar_bytes(members))
    if keys is not None:
        table = pa.table(
            {
                "url": [f"http://example.com/{k}.jpg" for k in keys],
                "key": keys,
                "status": ["success"] * len(keys),
                "error_message": [None] * len(keys),
            }
        )
        pq.write_table(table, folder / "00000.parquet")


def _hf_parquet(file: Path, columns: dict[str, pa.Array]) -> None:
    pq.write_table(pa.table(columns), file)


def _image_struct(count: int) -> pa.Array:
    return pa.array(
        [{"bytes": make_image_bytes(i), "path": f"{i}.jpg"} for i in range(count)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(case_dir)`` builds it and returns the argv after ``curate``.

    ``skip`` (a reason fragment) expects exit 0 and a complete pool at ``case_dir/out`` whose
    ingest report counts the skip; ``error`` (fragments, the file's name among them) expects
    exit 2, one line on stderr and no ``out``.
    """

    id: str
    make: Callable[[Path, Path], list[str]]  # (case_dir, shared pool) -> argv
    skip: str | None = None
    accepted: int | None = None
    error: tuple[str, ...] = ()


def _ingest(case: Path, source: Path, *extra: str) -> list[str]:
    return ["ingest", str(source), "--out", str(case / "out"), "--quiet", *extra]


def _i2d_case(members: list[tuple[str, bytes]], keys: list[str] | None = None):
    def make(case: Path, pool: Path) -> list[str]:
        _img2dataset(case / "src", members, keys=keys)
        return _ingest(case, case / "src")

    return make


def _truncated_tar(case: Path, pool: Path) -> list[str]:
    members = _good("000", 0) + _good("001", 1) + _good("002", 2)
    _img2dataset(case / "src", members, keys=["000", "001", "002"])
    tar = case / "src" / "00000.tar"
    data = tar.read_bytes()
    cut = data.index(make_image_bytes(1)) + 100  # inside the second sample's image
    tar.write_bytes(data[:cut])
    return _ingest(case, case / "src")


def _corrupt_tar(*, with_parquet: bool):
    def make(case: Path, pool: Path) -> list[str]:
        members = _good("000", 0) + _good("001", 1) + _good("002", 2)
        _img2dataset(case / "src", members, keys=["000", "001", "002"] if with_parquet else None)
        tar = case / "src" / "00000.tar"
        data = bytearray(tar.read_bytes())
        at = data.index(b"001.jpg")  # the second sample's first header
        data[at : at + 512] = bytes(range(256)) * 2  # garbage header (bad checksum)
        tar.write_bytes(bytes(data))
        return _ingest(case, case / "src")

    return make


def _unreadable_parquet(case: Path, pool: Path) -> list[str]:
    argv = _i2d_case(_good("000", 0))(case, pool)
    (case / "src" / "00000.parquet").write_bytes(b"PAR1 junk")
    return argv


def _i2d_parquet_types(**columns: pa.Array):
    """img2dataset's parquet with some columns of the wrong type."""

    def make(case: Path, pool: Path) -> list[str]:
        argv = _i2d_case(_good("000", 0) + _good("001", 1), keys=["000", "001"])(case, pool)
        parquet = case / "src" / "00000.parquet"
        table = pq.read_table(parquet)
        for name, values in columns.items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        pq.write_table(table, parquet)
        return argv

    return make


def _garbage_file(name: str, data: bytes, *, source_is_file: bool = False):
    def make(case: Path, pool: Path) -> list[str]:
        (case / "src").mkdir()
        (case / "src" / name).write_bytes(data)
        return _ingest(case, case / "src" / name if source_is_file else case / "src")

    return make


def _parquet_case(columns: Callable[[], dict[str, pa.Array]], *extra: str):
    def make(case: Path, pool: Path) -> list[str]:
        (case / "src").mkdir()
        _hf_parquet(case / "src" / "train.parquet", columns())
        return _ingest(case, case / "src" / "train.parquet", *extra)

    return make


def _secret_outside(case: Path) -> Path:
    """A real image beside the source folder: an input must not be able to pull it in."""
    secret = case / "secret.jpg"
    secret.write_bytes(make_image_bytes(99))
    return secret


def _path_only_image(link: str | None = None, *, absolute: bool = False):
    """An HF-layout parquet whose second image has null bytes and a path that leaves ``src``:
    absolute, ``../secret.jpg``, or a symlink inside ``src`` pointing out."""

    def make(case: Path, pool: Path) -> list[str]:
        (case / "src").mkdir()
        secret = _secret_outside(case)
        if link is not None:
            (case / "src" / link).symlink_to(secret)
            path = link
        else:
            path = str(secret) if absolute else "../secret.jpg"
        images = pa.array(
            [{"bytes": make_image_bytes(0), "path": "0.jpg"}, {"bytes": None, "path": path}],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        _hf_parquet(case / "src" / "train.parquet", {"image": images, "text": ["a cat", "a dog"]})
        return _ingest(case, case / "src" / "train.parquet")

    return make


def _folder_outside_path(case: Path, pool: Path) -> list[str]:
    (case / "src").mkdir()
    (case / "src" / "0.jpg").write_bytes(make_image_bytes(0))
    secret = _secret_outside(case)
    (case / "src" / "captions.csv").write_text(f"file,caption\n0.jpg,a cat\n{secret},a dog\n")
    return _ingest(case, case / "src")


def _tar_without_end_blocks(case: Path, pool: Path) -> list[str]:
    """A tar cut exactly at a member boundary: every member whole, no end-of-archive blocks."""
    members = _good("000", 0) + _good("001", 1)
    _img2dataset(case / "src", members, keys=["000", "001"])
    tar = case / "src" / "00000.tar"
    data = tar.read_bytes()
    last = data.index(b"caption 1") + len(b"caption 1")
    tar.write_bytes(data[: -(-last // 512) * 512])  # up to the end of the last member's block
    return _ingest(case, case / "src")


def _sql_case(query: str, *extra: str):
    """`curate sql` over the shared pool, its result written beside the case."""

    def make(case: Path, pool: Path) -> list[str]:
        return ["sql", str(pool), query, "--output", str(case / "result.parquet"), *extra]

    return make


def _recipe_case(text: bytes | None):
    """build-pool with this recipe file (None: a directory where the recipe should be)."""

    def make(case: Path, pool: Path) -> list[str]:
        recipe = case / "recipe.yaml"
        if text is None:
            recipe.mkdir()
        else:
            recipe.write_bytes(text)
        return ["build-pool", str(recipe), "--pool", str(pool), "--out", str(case / "out")]

    return make


_SCALE = {
    "arch": "curate-tiny-vit-p4",
    "image_size": 32,
    "samples_seen": 64,
    "batch_size": 16,
    "lr": 1.0e-3,
    "weight_decay": 0.1,
    "warmup": 1,
}


def _scales_case(text: bytes):
    def make(case: Path, pool: Path) -> list[str]:
        (case / "scales.yaml").write_bytes(text)
        return [
            "score",
            str(pool),
            "--scale",
            "tiny-test",
            "--scales-file",
            str(case / "scales.yaml"),
        ]

    return make


def _scale_yaml(**changes: object) -> bytes:
    import yaml

    return yaml.safe_dump({"tiny-test": {**_SCALE, **changes}}).encode()


def _datacomp_case(damage: str):
    """`curate ingest` of DataComp metadata (2 parquet files with their .npz) used in place,
    damaged one way; the error must name the file (and row)."""

    def make(case: Path, pool: Path) -> list[str]:
        import numpy as np
        import polars as pl

        from tests.test_ingest_datacomp import _metadata_folder

        table, _ = _metadata_folder(case / "src", sizes=(7, 5), compressed=(False, False))
        second = table.slice(7)
        if damage == "schema":
            second = second.with_columns(pl.col("original_width").cast(pl.Float64))
            second.write_parquet(case / "src" / "00000001.parquet")
        elif damage == "missing_npz":
            (case / "src" / "00000001.npz").unlink()
        elif damage == "npz_rows":
            np.savez(case / "src" / "00000001.npz", b32_img=np.zeros((3, 4), np.float16))
        elif damage == "repeated_uid":
            repeat = pl.when(pl.int_range(pl.len()) == 2).then(pl.lit(table["uid"][6]))
            second.with_columns(uid=repeat.otherwise("uid")).write_parquet(
                case / "src" / "00000001.parquet"
            )
        return _ingest(case, case / "src", "--format", "datacomp")

    return make


def _datacomp_pool_case(damage: str):
    """build-pool over DataComp metadata used in place whose .npz cannot serve it."""

    def make(case: Path, pool: Path) -> list[str]:
        import numpy as np

        from curate.ingest.datacomp import reference_in_place
        from tests.test_ingest_datacomp import _metadata_folder

        deflated = (False, damage == "deflated")
        _metadata_folder(case / "src", sizes=(7, 5), compressed=deflated)
        reference_in_place(case / "src", case / "pool")
        if damage == "changed":
            npz = case / "src" / "00000001.npz"
            with np.load(npz) as arrays:
                np.savez(npz, **{key: arrays[key][::-1].copy() for key in arrays.files})
        stage = "  - stage: near_dedup\n    params: {threshold: 0.95}\n"
        (case / "recipe.yaml").write_text(
            f"name: bad\nseed: 0\nembeddings: datacomp-b32\nstages:\n{stage}"
        )
        return ["build-pool", str(case / "recipe.yaml"), "--pool", str(case / "pool"),
                "--out", str(case / "out")]  # fmt: skip

    return make


GOOD_RECIPE = "name: bad\nseed: 0\nstages:\n  - stage: basic\n    params:\n      min_words: 3\n"
I2D = "img2dataset"
CASES = [
    # -- curate sql ------------------------------------------------------------------------------
    Case(
        "sql-39-digit-integer-to-parquet",
        _sql_case("SELECT 170141183460469231731687303715884105727::HUGEINT AS c"),
        error=("column c", "HUGEINT", "38 digits"),
    ),
    Case(
        "sql-memory-limit-not-a-size",
        _sql_case("SELECT 1", "--memory-limit", "banana"),
        error=("--memory-limit", "banana"),
    ),
    Case(
        "sql-write-statement",
        _sql_case("CREATE TABLE t AS SELECT 1"),
        error=("read-only",),
    ),
    # -- curate ingest: img2dataset tar folders ------------------------------------------------
    Case(f"{I2D}-truncated-tar", _truncated_tar, skip="damaged tar", accepted=1),
    Case(
        f"{I2D}-corrupt-tar-header", _corrupt_tar(with_parquet=True), skip="damaged tar", accepted=1
    ),
    Case(
        f"{I2D}-corrupt-tar-header-no-parquet",
        _corrupt_tar(with_parquet=False),
        skip="damaged tar",
        accepted=1,
    ),
    Case(
        f"{I2D}-garbage-tar",
        _garbage_file("00000.tar", os.urandom(4096)),
        skip="damaged tar",
        accepted=0,
    ),
    Case(f"{I2D}-zero-byte-tar", _garbage_file("00000.tar", b""), skip="damaged tar", accepted=0),
    Case(
        f"{I2D}-dotdot-member",
        _i2d_case(_good("000", 0) + _good("../evil", 1)),
        skip="unsafe member name: '../evil'",
        accepted=1,
    ),
    Case(
        f"{I2D}-absolute-member",
        _i2d_case(_good("000", 0) + _good("/tmp/curate_evil_abs", 1)),
        skip="unsafe member name: '/tmp/curate_evil_abs'",
        accepted=1,
    ),
    Case(
        f"{I2D}-zero-byte-image",
        _i2d_case(_good("000", 0) + [("001.jpg", b""), ("001.txt", b"a cat")]),
        skip="zero-byte image",
        accepted=1,
    ),
    Case(
        f"{I2D}-no-end-of-archive-blocks",
        _tar_without_end_blocks,
        skip="possibly truncated tar",
        accepted=2,
    ),
    Case(
        f"{I2D}-repeated-key-other-bytes",
        _i2d_case(_good("000", 0) + _good("001", 1) + _good("000", 2)),
        skip="key conflict: key 000 appears again",
        accepted=2,
    ),
    Case(
        f"{I2D}-repeated-member-other-bytes",
        _i2d_case(_good("000", 0) + [("000.jpg", make_image_bytes(5))] + _good("001", 1)),
        skip="key conflict: member 000.jpg repeated with other bytes",
        accepted=2,
    ),
    Case(
        f"{I2D}-five-million-character-caption",
        _i2d_case(
            _good("000", 0) + [("001.jpg", make_image_bytes(1)), ("001.txt", b"a" * 5_000_000)]
        ),
        skip="caption longer than 10,000 characters",
        accepted=1,
    ),
    Case(
        "hf-parquet-absolute-image-path",
        _path_only_image(absolute=True),
        skip="image path outside the source folder",
        accepted=1,
    ),
    Case(
        "hf-parquet-dotdot-image-path",
        _path_only_image(),
        skip="image path outside the source folder",
        accepted=1,
    ),
    Case(
        "hf-parquet-symlink-out-of-folder",
        _path_only_image("link.jpg"),
        skip="image path outside the source folder",
        accepted=1,
    ),
    Case(
        "image-folder-absolute-path-in-captions",
        _folder_outside_path,
        skip="image path outside the source folder",
        accepted=1,
    ),
    Case(
        f"{I2D}-corrupt-jpeg",
        _i2d_case(
            _good("000", 0) + [("001.jpg", make_image_bytes(1)[:300]), ("001.txt", b"a cat")]
        ),
        skip="cannot decode image",
        accepted=1,
    ),
    Case(
        f"{I2D}-not-an-image",
        _i2d_case(_good("000", 0) + [("001.jpg", b"<html>404</html>"), ("001.txt", b"a cat")]),
        skip="cannot decode image",
        accepted=1,
    ),
    Case(
        f"{I2D}-bomb-png-30000px",
        _i2d_case(_good("000", 0) + [("001.png", _bomb_png(30000, 30000)), ("001.txt", b"a cat")]),
        skip="decompression bomb",
        accepted=1,
    ),
    Case(
        f"{I2D}-bomb-png-8200px",
        _i2d_case(_good("000", 0) + [("001.png", _bomb_png(8200, 8200)), ("001.txt", b"a cat")]),
        skip="decompression bomb",
        accepted=1,
    ),
    Case(
        f"{I2D}-non-utf8-caption",
        _i2d_case(
            _good("000", 0) + [("001.jpg", make_image_bytes(1)), ("001.txt", b"caf\xe9 \xff")]
        ),
        skip="not valid UTF-8",
        accepted=1,
    ),
    Case(
        f"{I2D}-empty-caption",
        _i2d_case(_good("000", 0) + [("001.jpg", make_image_bytes(1)), ("001.txt", b"  \n")]),
        skip="empty caption",
        accepted=1,
    ),
    Case(
        f"{I2D}-no-caption",
        _i2d_case(_good("000", 0) + [("001.jpg", make_image_bytes(1))]),
        skip="missing caption",
        accepted=1,
    ),
    Case(
        f"{I2D}-json-caption-not-text",
        _i2d_case(
            _good("000", 0) + [("001.jpg", make_image_bytes(1)), ("001.json", b'{"caption": 5}')]
        ),
        skip="caption is",
        accepted=1,
    ),
    Case(f"{I2D}-unreadable-parquet", _unreadable_parquet, error=("00000.parquet",)),
    Case(
        f"{I2D}-parquet-status-as-int",
        _i2d_parquet_types(status=pa.array([0, 1])),
        error=("00000.parquet", "status"),
    ),
    Case(
        f"{I2D}-parquet-key-as-int",
        _i2d_parquet_types(key=pa.array([0, 1])),
        error=("00000.parquet", "key"),
    ),
    # -- curate ingest: Hugging Face layout parquet --------------------------------------------
    Case(
        "parquet-image-as-int",
        _parquet_case(lambda: {"image": pa.array([1, 2]), "caption": pa.array(["a", "b"])}),
        error=("train.parquet", "image"),
    ),
    Case(
        "parquet-image-as-int-forced",
        _parquet_case(
            lambda: {"image": pa.array([1, 2]), "caption": pa.array(["a", "b"])},
            "--format",
            "hf-parquet",
            "--image-column",
            "image",
        ),
        error=("train.parquet", "image"),
    ),
    Case(
        "parquet-caption-as-list",
        _parquet_case(
            lambda: {"image": _image_struct(2), "caption": pa.array([["a"], ["b", "c"]])}
        ),
        error=("train.parquet", "caption"),
    ),
    Case(
        "parquet-caption-as-int",
        _parquet_case(lambda: {"image": _image_struct(2), "caption": pa.array([1, 2])}),
        error=("train.parquet", "caption"),
    ),
    Case(
        "parquet-missing-caption",
        _parquet_case(lambda: {"image": _image_struct(2)}),
        error=("train.parquet", "caption"),
    ),
    Case(
        "parquet-missing-image",
        _parquet_case(lambda: {"caption": pa.array(["a", "b"])}),
        error=("train.parquet",),
    ),
    Case(
        "parquet-image-bytes-null",
        _parquet_case(
            lambda: {
                "image": pa.array(
                    [{"bytes": make_image_bytes(0), "path": None}, {"bytes": None, "path": None}],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "caption": pa.array(["a", "b"]),
            }
        ),
        skip="no image bytes",
        accepted=1,
    ),
    Case(
        "parquet-corrupt-file",
        _garbage_file("train.parquet", b"PAR1" + os.urandom(256) + b"PAR1", source_is_file=True),
        error=("train.parquet",),
    ),
    Case(
        "parquet-zero-byte-file",
        _garbage_file("train.parquet", b"", source_is_file=True),
        error=("train.parquet",),
    ),
    # -- curate ingest: DataComp metadata used in place ------------------------------------------
    Case(
        "datacomp-schemas-differ",
        _datacomp_case("schema"),
        error=("00000001.parquet", "schema differs from 00000000.parquet"),
    ),
    Case(
        "datacomp-npz-missing",
        _datacomp_case("missing_npz"),
        error=("00000001.npz is missing",),
    ),
    Case(
        "datacomp-npz-wrong-row-count",
        _datacomp_case("npz_rows"),
        error=("00000001.npz", "has 3 rows but 00000001.parquet has 5"),
    ),
    Case(
        "datacomp-uid-repeated-across-files",
        _datacomp_case("repeated_uid"),
        error=("00000001.parquet row 2", "repeats", "00000000.parquet row 6"),
    ),
    Case(
        "datacomp-npz-deflated-for-an-embedding-stage",
        _datacomp_pool_case("deflated"),
        error=("00000001.npz", "compressed", "--copy"),
    ),
    Case(
        "datacomp-npz-changed-after-ingest",
        _datacomp_pool_case("changed"),
        error=("00000001.npz changed since `curate ingest`",),
    ),
    # -- curate build-pool: malformed recipes --------------------------------------------------
    Case(
        "recipe-bad-yaml",
        _recipe_case(b"name: bad\nstages: [\n  - stage: basic\n   params: {\n"),
        error=("recipe.yaml", "YAML"),
    ),
    Case(
        "recipe-unknown-stage",
        _recipe_case(GOOD_RECIPE.replace("basic", "basik").encode()),
        error=("recipe.yaml", "line 4", "stages[0].stage", "basik"),
    ),
    Case(
        "recipe-wrong-param-type",
        _recipe_case(GOOD_RECIPE.replace("3", "three").encode()),
        error=("recipe.yaml", "line 6", "min_words"),
    ),
    Case(
        "recipe-duplicate-key",
        _recipe_case(GOOD_RECIPE.replace("seed: 0\n", "seed: 0\nseed: 1\n").encode()),
        error=("recipe.yaml", "line 3", "seed", "twice"),
    ),
    Case(
        "recipe-unknown-field",
        _recipe_case((GOOD_RECIPE + "sed: 1\n").encode()),
        error=("recipe.yaml", "sed"),
    ),
    Case("recipe-empty-file", _recipe_case(b""), error=("recipe.yaml",)),
    Case("recipe-not-a-mapping", _recipe_case(b"- stage: basic\n"), error=("recipe.yaml",)),
    Case(
        "recipe-non-utf8",
        _recipe_case(GOOD_RECIPE.replace("bad", "b\xe9d").encode("latin-1")),
        error=("recipe.yaml", "UTF-8"),
    ),
    Case("recipe-is-a-directory", _recipe_case(None), error=("recipe.yaml",)),
    # -- curate score: malformed scales files --------------------------------------------------
    Case(
        "scales-unknown-field",
        _scales_case(_scale_yaml(learning_rate=0.1)),
        error=("scales.yaml", "tiny-test", "learning_rate"),
    ),
    Case(
        "scales-negative-batch",
        _scales_case(_scale_yaml(batch_size=-16)),
        error=("scales.yaml", "batch_size"),
    ),
    Case(
        "scales-warmup-not-shorter",
        _scales_case(_scale_yaml(warmup=4)),
        error=("scales.yaml", "warmup"),
    ),
    Case("scales-wrong-type", _scales_case(_scale_yaml(lr="fast")), error=("scales.yaml", "lr")),
    Case(
        "scales-bad-yaml",
        _scales_case(b"tiny-test:\n  arch: [\n  lr: 1\n"),
        error=("scales.yaml", "YAML"),
    ),
    Case("scales-empty-file", _scales_case(b""), error=("scales.yaml",)),
    Case(
        "scales-non-utf8",
        _scales_case(b"tiny-test:\n  arch: caf\xe9\n"),
        error=("scales.yaml", "UTF-8"),
    ),
]

XFAIL: dict[str, str] = {}
LOCK_FILES: set[str] = set()  # exclusive_lock removes its .out.lock when the work ends


# -- running the corpus --------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, object]:
    """Build every case, run them all through the CLI in one process, return what happened."""
    root = tmp_path_factory.mktemp("bad_inputs")
    pool = root / "pool"  # a real pool for build-pool and score
    with PoolWriter(pool, name="pool", source={"type": "test"}, command="test") as writer:
        for i in range(4):
            writer.add(SourceSample("test", f"row {i}", f"a photo number {i}", make_image_bytes(i)))
    cases = root / "cases"
    cases.mkdir()
    argvs, before = [], {}
    for case in CASES:
        folder = cases / case.id
        folder.mkdir()
        argvs.append(case.make(folder, pool))
        before[case.id] = _tree(folder)
    cwd = root / "cwd" / "inner"  # relative paths (``../evil.jpg``) would land here or above
    cwd.mkdir(parents=True)
    pool_tree = _tree(pool)
    outside = {p.name for p in root.parent.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = dict(zip([c.id for c in CASES], json.loads(run.stdout), strict=True))
    return {
        "results": results,
        "before": before,
        "cases": cases,
        "cwd": cwd,
        "pool": pool,
        "pool_tree_same": _tree(pool) == pool_tree,
        "outside_before": outside,
        "root": root,
    }


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c.id])])
        if c.id in XFAIL
        else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
def test_bad_input(case: Case, corpus) -> None:
    result = corpus["results"][case.id]
    folder: Path = corpus["cases"] / case.id
    out = folder / "out"
    detail = f"rc={result['rc']}\nstdout:\n{result['stdout']}\nstderr:\n{result['stderr']}"
    assert "Traceback" not in result["stderr"] + result["stdout"], detail
    new = _tree(folder) - corpus["before"][case.id]
    if case.skip is not None:
        assert result["rc"] == 0, detail
        assert (out / "manifest.json").is_file(), detail
        report = json.loads((out / "ingest_report.json").read_text())
        reasons = [e["reason"] for e in report["skip_examples"]]
        assert report["skipped"] >= 1 and any(case.skip in r for r in reasons), (report, detail)
        if case.accepted is not None:
            assert report["accepted"] == case.accepted, report
        assert Pool.open(out).samples().height == report["accepted"]
        assert f"{report['skipped']:,} skipped" in " ".join(result["stdout"].split()), detail
        assert all(p in LOCK_FILES or p == "out" or p.startswith("out/") for p in new), new
    else:
        assert result["rc"] == 2, detail
        message = result["stderr"].strip()
        assert message.startswith("error:") and "\n" not in message, detail
        for fragment in case.error:
            assert fragment in message, (fragment, detail)
        assert not out.exists(), detail
        assert new <= LOCK_FILES, new  # not even a staging directory: checked before any work
    assert not list(corpus["cwd"].parent.rglob("*evil*")), "a member escaped into the cwd"
    assert not list(corpus["cases"].rglob("*evil*")), "a member name became a file"


def test_nothing_written_outside(corpus) -> None:
    """No case wrote beside the corpus, into the shared pool (score results) or to /tmp."""
    root: Path = corpus["root"]
    assert _tree(corpus["cwd"].parent) == {"inner"}
    assert corpus["pool_tree_same"], "a failed build-pool/score wrote into the pool"
    assert {p.name for p in root.parent.iterdir()} == corpus["outside_before"]
    assert not Path("/tmp/curate_evil_abs.jpg").exists()


def test_count_of_cases_tried(corpus) -> None:
    tried = len(corpus["results"])
    print(f"bad inputs tried: {tried}")
    assert tried == len(CASES) == 61
