from __future__ import annotations

import json
import tarfile

import polars as pl
import pytest
import webdataset as wds

from curate.core.atomic import exclusive_lock, staging_dir_for
from curate.core.errors import InUseError, NotAPoolError
from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, Skip, SourceSample
from tests.conftest import make_image_bytes


def _samples(n: int, bad_every: int = 0):
    for i in range(n):
        image = make_image_bytes(i)
        if bad_every and i % bad_every == 0:
            image = image[: len(image) // 3]  # truncated JPEG
        yield SourceSample(source="test", where=f"input row {i}", text=f"caption {i}", image=image)


def test_writes_webdataset_shards_and_samples(tmp_path):
    out = tmp_path / "pool"
    with PoolWriter(
        out, name="t", source={"type": "test"}, command="test", samples_per_shard=4
    ) as writer:
        writer.extend(_samples(10))
        writer.add(Skip("input row 99", "download failed: 404"))
        writer.add(
            SourceSample(source="test", where="row x", text=b"\xff\xfe", image=make_image_bytes(1))
        )
        writer.add(SourceSample(source="test", where="row y", text="  ", image=make_image_bytes(2)))
    pool = Pool.open(out)
    samples = pool.samples()
    assert samples.height == 10 == pool.manifest.sample_count
    assert samples["shard"].unique().sort().to_list() == [
        "shards/00000.tar",
        "shards/00001.tar",
        "shards/00002.tar",
    ]
    assert samples["key"][5] == "000010001"
    report = json.loads(pool.layout.ingest_report.read_text())
    assert report["skipped"] == 3
    assert any("UTF-8" in e["reason"] and e["where"] == "row x" for e in report["skip_examples"])
    # any webdataset loader reads the shards back
    dataset = wds.WebDataset([str(p) for p in pool.shard_paths()], shardshuffle=False)
    got = [(s["__key__"], s["txt"].decode(), json.loads(s["json"])["uid"]) for s in dataset]
    assert got == list(zip(samples["key"], samples["text"], samples["uid"], strict=True))


def test_bad_images_are_counted_skips(tmp_path):
    out = tmp_path / "pool"
    with PoolWriter(out, name="t", source={"type": "test"}, command="test") as writer:
        writer.extend(_samples(9, bad_every=3))
    assert Pool.open(out).manifest.sample_count == 6
    assert writer.report["skipped_by_reason"] == {"cannot decode image": 3}


def test_crash_mid_write_leaves_no_pool_and_resume_matches(tmp_path):
    out = tmp_path / "pool"

    class Crash(Exception):
        pass

    def crashing():
        for i, sample in enumerate(_samples(10)):
            if i == 7:
                raise Crash
            yield sample

    with pytest.raises(Crash):
        with PoolWriter(
            out, name="t", source={"type": "test"}, command="test", samples_per_shard=3
        ) as writer:
            writer.extend(crashing())
    assert not out.exists()
    with pytest.raises(NotAPoolError):
        Pool.open(staging_dir_for(out))
    with PoolWriter(
        out, name="t", source={"type": "test"}, command="test", samples_per_shard=3
    ) as writer:
        writer.extend(_samples(10))
    reference = tmp_path / "reference"
    with PoolWriter(
        reference, name="t", source={"type": "test"}, command="test", samples_per_shard=3
    ) as writer:
        writer.extend(_samples(10))
    for shard in sorted((reference / "shards").iterdir()):
        assert (out / "shards" / shard.name).read_bytes() == shard.read_bytes()
    assert pl.read_parquet(out / "samples.parquet").equals(
        pl.read_parquet(reference / "samples.parquet")
    )
    with tarfile.open(out / "shards" / "00000.tar") as archive:
        assert archive.getnames()[:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]


def test_existing_output_and_lock(tmp_path):
    out = tmp_path / "pool"
    with PoolWriter(out, name="t", source={"type": "test"}, command="test") as writer:
        writer.extend(_samples(2))
    with pytest.raises(FileExistsError, match="--overwrite"):
        with PoolWriter(out, name="t", source={"type": "test"}, command="test"):
            pass
    with exclusive_lock(out):
        with pytest.raises(InUseError, match="in use"):
            with PoolWriter(out, name="t", source={"type": "test"}, command="test", overwrite=True):
                pass
