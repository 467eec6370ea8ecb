"""A killed ingest leaves no complete-looking pool, and rerunning it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from curate.core.atomic import staging_dir_for
from curate.core.embedding_store import load_embeddings
from curate.core.errors import NotAPoolError
from curate.core.pool import Pool
from curate.core.uid import make_uid
from curate.ingest import ingest, load_source
from curate.ingest.base import IngestOptions
from curate.ingest.run import write_pool
from tests.conftest import make_image_bytes

ROWS, PER_SHARD, BLOCK_AT = 70, 10, 50


def _image_folder(root):
    (root / "images").mkdir(parents=True)
    lines = ["file,caption"]
    for i in range(ROWS):
        path = root / "images" / f"{i}.jpg"
        if i == BLOCK_AT:
            os.mkfifo(path)  # reading it blocks: the ingest stops here, mid-run, every time
        else:
            path.write_bytes(make_image_bytes(i))
        lines.append(f"images/{i}.jpg,caption {i}")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")


def _identity(path):
    return path.stat().st_ino, path.stat().st_mtime_ns


def _wait_for_shards(staging, count, process, timeout=60.0):
    progress = staging / "progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ingest ended early: {process.communicate()}")
        if progress.is_file() and json.loads(progress.read_text())["shards_done"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the ingest made no progress")


def test_killed_ingest_leaves_no_pool_and_resumes(tmp_path):
    source, out = tmp_path / "photos", tmp_path / "pool"
    _image_folder(source)
    command = [
        sys.executable,
        "-m",
        "curate.cli.main",
        "ingest",
        str(source),
        "--out",
        str(out),
        "--samples-per-shard",
        str(PER_SHARD),
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = staging_dir_for(out)
    try:
        _wait_for_shards(staging, BLOCK_AT // PER_SHARD, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    assert not out.exists()
    with pytest.raises(NotAPoolError):
        Pool.open(staging)
    finished = {p.name: _identity(p) for p in (staging / "shards").glob("*.tar")}
    assert sorted(finished) == [f"{i:05d}.tar" for i in range(BLOCK_AT // PER_SHARD)]

    fifo = source / "images" / f"{BLOCK_AT}.jpg"
    fifo.unlink()
    fifo.write_bytes(make_image_bytes(BLOCK_AT))
    ingest(source, out, samples_per_shard=PER_SHARD)

    pool = Pool.open(out)
    # the shards finished before the kill were kept, not rewritten
    assert {n: _identity(out / "shards" / n) for n in finished} == finished
    reference = tmp_path / "reference"
    ingest(source, reference, samples_per_shard=PER_SHARD)
    assert pool.samples().equals(Pool.open(reference).samples())
    for shard in Pool.open(reference).shard_paths():
        assert (out / "shards" / shard.name).read_bytes() == shard.read_bytes()
    assert pool.samples()["text"].to_list() == [f"caption {i}" for i in range(ROWS)]


class Crash(Exception):
    pass


def _crash_after(parts, count):
    for index, part in enumerate(parts):
        if index == count:
            raise Crash
        yield part


def test_metadata_ingest_resumes_after_a_crash_mid_way(tmp_path):
    source = tmp_path / "meta"
    source.mkdir()
    rng = np.random.default_rng(0)
    vectors = []
    for part in range(3):
        index = range(part * 4, part * 4 + 4)
        pl.DataFrame(
            {
                "uid": [make_uid("m", str(i)) for i in index],
                "url": [f"http://example.com/{i}" for i in index],
                "text": [f"text {i}" for i in index],
            }
        ).write_parquet(source / f"{part}.parquet")
        image = rng.standard_normal((4, 8)).astype(np.float16)
        vectors.append(image)
        np.savez(source / f"{part}.npz", b32_img=image, b32_txt=image[::-1])

    def run(out, crash_after=None):
        reader = load_source("datacomp").read(source, IngestOptions())
        if crash_after is not None:
            reader.parts = _crash_after(reader.parts, crash_after)
        return write_pool(
            reader,
            out,
            fmt="datacomp",
            name="m",
            source_record={"t": 1},
            params={},
            samples_per_shard=10,
            overwrite=False,
            show_progress=False,
        )

    out = tmp_path / "pool"
    with pytest.raises(Crash):
        run(out, crash_after=2)
    staging = staging_dir_for(out)
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["parts_done"] == 2 and progress["rows_done"] == 8
    staged = np.load(staging / "embeddings" / "datacomp-b32" / "image.npy", mmap_mode="r+")
    assert staged.shape == (8, 8)
    staged[0] = np.eye(8, dtype=np.float16)[0]  # a marker: a resumed run keeps this row
    staged.flush()
    del staged
    assert not out.exists()

    run(out)
    run(tmp_path / "reference")
    stored = load_embeddings(out, "datacomp-b32")
    assert np.array_equal(stored.image[0], np.eye(8, dtype=np.float16)[0])
    expected = np.concatenate(vectors).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(stored.image[1:], expected[1:], atol=2e-3)
    reference = load_embeddings(tmp_path / "reference", "datacomp-b32")
    assert np.array_equal(stored.image[1:], reference.image[1:])
    assert np.array_equal(stored.text, reference.text)
    assert Pool.open(out).samples().equals(Pool.open(tmp_path / "reference").samples())
