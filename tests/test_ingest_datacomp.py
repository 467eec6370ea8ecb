"""DataComp-style metadata (parquet + .npz embeddings) -> a metadata-only pool."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from curate.core.embedding_store import list_embeddings, load_embeddings
from curate.core.pool import Pool
from curate.core.pool_writer import IngestError
from curate.core.uid import make_uid
from curate.ingest import detect_format, ingest


def _unit(rng, rows, dim):
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def _metadata_folder(root, sizes=(7, 5), compressed=(False, True), seed=0):
    """DataComp's schema, one .npz per parquet; returns the concatenated input tables/arrays."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    tables, arrays = [], {k: [] for k in ("b32_img", "b32_txt", "l14_img", "l14_txt")}
    start = 0
    for part, (rows, packed) in enumerate(zip(sizes, compressed, strict=True)):
        index = range(start, start + rows)
        table = pl.DataFrame(
            {
                "uid": [make_uid("dc", str(i)) for i in index],
                "url": [f"http://example.com/{i}.jpg" for i in index],
                "text": [f"caption {i}" for i in index],
                "original_width": [100 + i for i in index],
                "original_height": [50 + i for i in index],
                "clip_b32_similarity_score": rng.random(rows).astype(np.float32),
                "clip_l14_similarity_score": rng.random(rows).astype(np.float32),
                "sha256": [f"{i:064x}" for i in index],
            }
        )
        part_arrays = {
            "b32_img": _unit(rng, rows, 16),
            "b32_txt": _unit(rng, rows, 16),
            "l14_img": _unit(rng, rows, 24),
            "l14_txt": _unit(rng, rows, 24),
        }
        table.write_parquet(root / f"{part:08d}.parquet")
        (np.savez_compressed if packed else np.savez)(root / f"{part:08d}.npz", **part_arrays)
        tables.append(table)
        for key, value in part_arrays.items():
            arrays[key].append(value)
        start += rows
    return pl.concat(tables), {k: np.concatenate(v) for k, v in arrays.items()}


def test_metadata_pool_with_embeddings_row_aligned(tmp_path):
    table, arrays = _metadata_folder(tmp_path / "meta", sizes=(7, 5))
    # bad rows: invalid uid, empty caption; a uid repeated in the second file
    table = table.with_columns(
        uid=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("NOT-A-UID")).otherwise("uid"),
        text=pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("  ")).otherwise("text"),
    )
    table = table.with_columns(
        uid=pl.when(pl.int_range(pl.len()) == 9).then(pl.lit(table["uid"][0])).otherwise("uid")
    )
    table.slice(0, 7).write_parquet(tmp_path / "meta" / "00000000.parquet")
    table.slice(7).write_parquet(tmp_path / "meta" / "00000001.parquet")
    assert detect_format(tmp_path / "meta") == "datacomp"

    result = ingest(tmp_path / "meta", tmp_path / "pool")

    pool = Pool.open(tmp_path / "pool")
    assert not pool.manifest.has_images and not result.has_images
    kept = [i for i in range(12) if i not in (2, 4, 9)]
    samples = pool.samples()
    assert samples.height == len(kept) == pool.manifest.sample_count
    expected = table[kept]
    assert samples["uid"].to_list() == expected["uid"].to_list()
    assert samples["width"].to_list() == expected["original_width"].to_list()
    assert samples["height"].to_list() == expected["original_height"].to_list()
    for column in ("url", "text", "sha256", "clip_b32_similarity_score"):
        assert samples[column].to_list() == expected[column].to_list()
    assert samples["shard"].null_count() == samples.height == samples["key"].null_count()
    assert set(samples["source"].to_list()) == {"meta"}
    assert result.report["skipped_by_reason"] == {
        "invalid uid": 1,
        "empty caption": 1,
        "duplicate uid": 1,
    }

    assert list_embeddings(pool.root) == ["datacomp-b32", "datacomp-l14"]
    for name, prefix in (("datacomp-b32", "b32"), ("datacomp-l14", "l14")):
        stored = load_embeddings(pool.root, name)
        assert stored.image.dtype == np.float16
        # row i of the arrays is row i of samples.parquet: the input rows that were kept
        np.testing.assert_allclose(stored.image, arrays[f"{prefix}_img"][kept], atol=2e-3)
        np.testing.assert_allclose(stored.text, arrays[f"{prefix}_txt"][kept], atol=2e-3)
        assert stored.meta["rows"] == len(kept) and stored.meta["pretrained"] == "openai"
        scores = pl.read_parquet(pool.layout.embeddings(name).clip_score)
        assert scores["uid"].to_list() == samples["uid"].to_list()
        reference = np.einsum(
            "ij,ij->i", stored.image.astype(np.float32), stored.text.astype(np.float32)
        )
        np.testing.assert_allclose(scores["clip_score"].to_numpy(), reference, rtol=1e-6)
    report = json.loads(pool.layout.ingest_report.read_text())
    assert {e["where"] for e in report["skip_examples"]} >= {
        "00000000.parquet row 2",
        "00000000.parquet row 4",
    }


def test_metadata_pool_without_npz_and_bad_layouts(tmp_path):
    table, _ = _metadata_folder(tmp_path / "meta", sizes=(4, 3))
    (tmp_path / "meta" / "00000001.npz").unlink()
    with pytest.raises(IngestError, match=r"00000001\.npz is missing while 1 other"):
        ingest(tmp_path / "meta", tmp_path / "pool")
    (tmp_path / "meta" / "00000000.npz").unlink()
    ingest(tmp_path / "meta", tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    assert pool.samples()["uid"].to_list() == table["uid"].to_list()
    assert list_embeddings(pool.root) == []

    np.savez(tmp_path / "meta" / "00000000.npz", b32_img=np.zeros((3, 4), np.float16))
    np.savez(tmp_path / "meta" / "00000001.npz", b32_img=np.zeros((3, 4), np.float16))
    with pytest.raises(IngestError, match=r"00000000\.npz: b32_img has 3 rows but 00000000"):
        ingest(tmp_path / "meta", tmp_path / "p2")

    table.drop("url").write_parquet(tmp_path / "meta" / "00000001.parquet")
    with pytest.raises(IngestError, match=r"00000001\.parquet: missing column\(s\) url"):
        ingest(tmp_path / "meta", tmp_path / "p2", format="datacomp")
