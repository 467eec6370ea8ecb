"""Each image source of `curate ingest`, with the bad inputs each one meets."""

from __future__ import annotations

import hashlib
import json
import tarfile

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.core.pool import Pool
from curate.core.pool_writer import IngestError
from curate.ingest import detect_format, ingest, ingest_hf_dataset
from curate.ingest.base import IngestOptions
from tests.conftest import make_image_bytes

CLASSES = ["cat", "dog", "ship"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hf_parquet(path, rows, *, caption_type=None, with_caption=True, row_group_size=4):
    """A parquet file in the `datasets` image layout (image struct, caption, label, class_name)."""
    columns = {
        "image": pa.array(
            [{"bytes": r["image"], "path": f"img{i}.jpg"} for i, r in enumerate(rows)],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        ),
        "label": pa.array([r["label"] for r in rows], pa.int64()),
        "class_name": pa.array([CLASSES[r["label"]] for r in rows]),
    }
    if with_caption:
        columns["caption"] = pa.array([r["caption"] for r in rows], caption_type or pa.binary())
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def _rows(n):
    return [
        {"image": make_image_bytes(i), "caption": f"photo {i}".encode(), "label": i % 3}
        for i in range(n)
    ]


def _report(pool_dir):
    return json.loads((pool_dir / "ingest_report.json").read_text())


def test_hf_parquet_keeps_good_rows_and_counts_bad_ones(tmp_path):
    rows = _rows(12)
    rows[2]["image"] = rows[2]["image"][:200]  # truncated JPEG
    rows[5]["caption"] = b"   "
    rows[7]["caption"] = b"caf\xe9 au lait"  # latin-1, not UTF-8
    rows[9]["image"] = b"not an image at all"
    _hf_parquet(tmp_path / "train.parquet", rows)
    assert detect_format(tmp_path / "train.parquet") == "hf-parquet"

    result = ingest(tmp_path / "train.parquet", tmp_path / "pool", samples_per_shard=5)

    good = [i for i in range(12) if i not in (2, 5, 7, 9)]
    samples = Pool.open(tmp_path / "pool").samples()
    assert samples["sha256"].to_list() == [_sha(rows[i]["image"]) for i in good]
    assert samples["text"].to_list() == [f"photo {i}" for i in good]
    assert samples["class_name"].to_list() == [CLASSES[i % 3] for i in good]
    assert samples["label"].to_list() == [i % 3 for i in good]
    assert samples["uid"].n_unique() == len(good)
    report = result.report
    assert report == _report(tmp_path / "pool")
    assert report["skipped_by_reason"] == {
        "cannot decode image": 2,
        "empty caption": 1,
        "caption is not valid UTF-8 (invalid continuation byte at byte 3)": 1,
    }
    wheres = {e["where"]: e["reason"] for e in report["skip_examples"]}
    assert set(wheres) == {f"train.parquet row {i}" for i in (2, 5, 7, 9)}
    assert "UTF-8" in wheres["train.parquet row 7"]
    # the shards are ordinary webdataset tars
    dataset = wds.WebDataset(
        [str(p) for p in Pool.open(tmp_path / "pool").shard_paths()], shardshuffle=False
    )
    assert [_sha(s["jpg"]) for s in dataset] == samples["sha256"].to_list()


def test_hf_parquet_without_caption_names_the_missing_column(tmp_path):
    rows = _rows(4)
    _hf_parquet(tmp_path / "labelled.parquet", rows, with_caption=False)
    with pytest.raises(IngestError) as error:
        ingest(tmp_path / "labelled.parquet", tmp_path / "pool")
    message = str(error.value)
    assert "labelled.parquet" in message and "missing caption column" in message
    assert "--caption-template 'a photo of a {class_name}'" in message
    assert not (tmp_path / "pool").exists()

    options = IngestOptions(caption_template="a photo of a {class_name}")
    ingest(tmp_path / "labelled.parquet", tmp_path / "pool", options=options)
    texts = Pool.open(tmp_path / "pool").samples()["text"].to_list()
    assert texts == [f"a photo of a {CLASSES[i % 3]}" for i in range(4)]

    with pytest.raises(IngestError, match="labelled.parquet.*no column 'title'"):
        ingest(
            tmp_path / "labelled.parquet",
            tmp_path / "p2",
            options=IngestOptions(caption_column="title"),
        )
    with pytest.raises(IngestError, match="uses column.*species"):
        ingest(
            tmp_path / "labelled.parquet",
            tmp_path / "p2",
            options=IngestOptions(caption_template="a {species}"),
        )


def test_missing_image_column_is_named(tmp_path):
    pq.write_table(pa.table({"caption": ["a", "b"], "label": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(IngestError, match=r"t\.parquet: missing image column"):
        ingest(tmp_path / "t.parquet", tmp_path / "pool", format="hf-parquet")


def test_hf_datasets_saved_and_in_memory(tmp_path):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    images = [make_image_bytes(100 + i, fmt="PNG") for i in range(6)]
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": [0, 1, 2, 0, 1, 2]},
        features=features,
    )
    # a saved DatasetDict: the split must be named; ClassLabel names give {class_name}
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0, 1])}).save_to_disk(
        tmp_path / "saved"
    )
    assert detect_format(tmp_path / "saved") == "hf-disk"
    options = IngestOptions(caption_template="a photo of a {class_name}")
    with pytest.raises(IngestError, match="holds splits train, test; choose one with --split"):
        ingest(tmp_path / "saved", tmp_path / "p0", options=options)
    ingest(
        tmp_path / "saved",
        tmp_path / "p1",
        options=IngestOptions(caption_template="a photo of a {class_name}", split="train"),
    )
    samples = Pool.open(tmp_path / "p1").samples()
    assert samples["sha256"].to_list() == [_sha(b) for b in images]
    assert samples["text"].to_list() == [f"a photo of a {CLASSES[i % 3]}" for i in range(6)]
    assert samples["image_ext"].unique().to_list() == ["png"]

    # a Dataset loaded from local parquet files, offline
    dataset.to_parquet(str(tmp_path / "local.parquet"))
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "local.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    ingest_hf_dataset(loaded, tmp_path / "p2", options=options)
    assert Pool.open(tmp_path / "p2").samples()["sha256"].to_list() == [_sha(b) for b in images]


def test_hf_imagefolder_dataset_reads_image_paths(tmp_path):
    import datasets

    folder = tmp_path / "folder"
    for i, name in enumerate(["cat", "dog"]):
        (folder / name).mkdir(parents=True)
        (folder / name / f"{i}.jpg").write_bytes(make_image_bytes(200 + i))
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache")
    )
    options = IngestOptions(caption_template="a photo of a {class_name}")
    refused = ingest_hf_dataset(loaded, tmp_path / "no-root", options=options)
    assert refused.report["accepted"] == 0  # no folder named: its paths are not read
    assert refused.report["skipped_by_reason"] == {"image path outside the source folder": 2}
    result = ingest_hf_dataset(loaded, tmp_path / "pool", options=options, image_root=folder)
    samples = Pool.open(tmp_path / "pool").samples().sort("text")
    assert result.report["accepted"] == 2
    assert samples["text"].to_list() == ["a photo of a cat", "a photo of a dog"]
    assert samples["sha256"].to_list() == [_sha(make_image_bytes(200 + i)) for i in range(2)]


def test_image_folder_csv_and_jsonl(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_bytes(make_image_bytes(300 + i))
    (folder / "3.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    lines = [b"file,caption,label"] + [f"{i}.jpg,a photo {i},{i}".encode() for i in range(6)]
    lines[2] = b"1.jpg,,1"  # empty caption
    lines[5] = b"4.jpg,na\xefve caption,4"  # not UTF-8
    lines.append(b"missing.jpg,no such file,9")
    (folder / "captions.csv").write_bytes(b"\n".join(lines) + b"\n")
    assert detect_format(folder) == "image-folder"
    result = ingest(folder, tmp_path / "pool")
    samples = Pool.open(tmp_path / "pool").samples()
    assert samples["text"].to_list() == ["a photo 0", "a photo 2", "a photo 5"]
    assert samples["label"].to_list() == ["0", "2", "5"]
    assert samples["file"].to_list() == ["0.jpg", "2.jpg", "5.jpg"]
    wheres = {e["where"]: e["reason"] for e in result.report["skip_examples"]}
    assert wheres["captions.csv row 1 (1.jpg)"] == "empty caption"
    assert "not valid UTF-8" in wheres["captions.csv row 4 (4.jpg)"]
    assert "cannot decode image" in wheres["captions.csv row 3 (3.jpg)"]
    assert "unreadable image file" in wheres["captions.csv row 6 (missing.jpg)"]

    records = [json.dumps({"path": f"{i}.jpg", "text": f"caption {i}"}) for i in (0, 2)]
    (tmp_path / "c.jsonl").write_text(records[0] + "\n{broken\n" + records[1] + "\n")
    result = ingest(
        tmp_path / "c.jsonl",
        tmp_path / "pool2",
        options=IngestOptions(captions_file=tmp_path / "c.jsonl"),
    )
    assert result.report["accepted"] == 0  # paths are relative to the table: none found
    (folder / "more.jsonl").write_text(records[0] + "\n{broken\n" + records[1] + "\n")
    result = ingest(
        folder,
        tmp_path / "pool3",
        format="image-folder",
        options=IngestOptions(captions_file=folder / "more.jsonl"),
    )
    assert Pool.open(tmp_path / "pool3").samples()["text"].to_list() == ["caption 0", "caption 2"]
    assert result.report["skip_examples"][0]["where"] == "more.jsonl row 1"

    (folder / "other.csv").write_text("name,words\n0.jpg,x\n")
    with pytest.raises(IngestError, match="other.csv: missing file column"):
        ingest(
            folder, tmp_path / "pool4", options=IngestOptions(captions_file=folder / "other.csv")
        )
    (folder / "captions.csv").rename(folder / "first.csv")  # no longer the obvious choice
    with pytest.raises(IngestError, match="need exactly one captions table.*--captions FILE"):
        ingest(folder, tmp_path / "pool4")


def _write_tar(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for key, image, caption in samples:
            sink.write(
                {
                    "__key__": key,
                    "jpg": image,
                    "txt": caption.encode(),
                    "json": json.dumps({"caption": caption}).encode(),
                }
            )


def test_img2dataset_folder_with_a_truncated_tar(tmp_path):
    """Samples before the damage are kept; the rest of the tar is one skip naming it."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    shards = [
        [(f"{s:05d}{i:04d}", make_image_bytes(s * 100 + i), f"caption {s} {i}") for i in range(6)]
        for s in range(2)
    ]
    for s, samples in enumerate(shards):
        _write_tar(folder / f"{s:05d}.tar", samples)
        pq.write_table(
            pa.table(
                {
                    "key": [k for k, _, _ in samples] + [f"{s:05d}9999"],
                    "url": [f"http://example.com/{k}.jpg" for k, _, _ in samples]
                    + ["http://x/404"],
                    "caption": [c for _, _, c in samples] + ["lost"],
                    "status": ["success"] * 6 + ["failed_to_download"],
                    "error_message": [None] * 6 + ["HTTP Error 404: Not Found"],
                }
            ),
            folder / f"{s:05d}.parquet",
        )
    damaged = folder / "00001.tar"
    with tarfile.open(damaged) as archive:
        cut = archive.getmember("000010003.jpg").offset_data + 100  # inside sample 3's image
    damaged.write_bytes(damaged.read_bytes()[:cut])
    assert detect_format(folder) == "img2dataset"

    result = ingest(folder, tmp_path / "pool")
    samples = Pool.open(tmp_path / "pool").samples()
    kept = shards[0] + shards[1][:3]
    assert samples["text"].to_list() == [c for _, _, c in kept]
    assert samples["sha256"].to_list() == [_sha(b) for _, b, _ in kept]
    assert samples["url"].to_list() == [f"http://example.com/{k}.jpg" for k, _, _ in kept]
    assert result.report["skipped_by_reason"] == {"download failed": 2, "damaged tar": 1}
    damage = [e for e in result.report["skip_examples"] if e["reason"].startswith("damaged")]
    assert damage[0]["where"] == str(damaged)
    assert "3 samples kept" in damage[0]["reason"] and "after key 000010002" in damage[0]["reason"]


def test_detection_and_unknown_input(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(Exception, match="cannot tell the format"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(IngestError, match="unknown format 'zip'; choose one of: img2dataset"):
        ingest(tmp_path / "notes.txt", tmp_path / "pool", format="zip")
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "nowhere", tmp_path / "pool")
    pq.write_table(pa.table({"uid": ["a"], "url": ["u"], "text": ["t"]}), tmp_path / "m.parquet")
    assert detect_format(tmp_path / "m.parquet") == "datacomp"
    assert pl.read_parquet(tmp_path / "m.parquet").height == 1


def test_string_captions_and_one_row_per_row_group(tmp_path):
    rows = [dict(r, caption=f"a {CLASSES[r['label']]}") for r in _rows(3)]
    _hf_parquet(tmp_path / "t.parquet", rows, caption_type=pa.string(), row_group_size=1)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 3
    ingest(tmp_path / "t.parquet", tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    assert pool.read_images(pool.samples()) == [r["image"] for r in rows]
    assert pool.samples()["text"].to_list() == ["a cat", "a dog", "a ship"]
