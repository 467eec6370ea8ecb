"""The embedding stages on DataComp's .npz used in place: the same bytes as a --copy pool's,
with nothing copied (curate.core.embedding_store, curate.dedup.blocks.NpyFile)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.core.embedding_store import (
    PartsArray,
    embedding_parts,
    list_embeddings,
    load_embeddings,
)
from curate.core.errors import UserInputError
from curate.core.executor import LocalExecutor
from curate.dedup.blocks import NpyFile
from curate.ingest import ingest
from curate.ingest.datacomp import reference_in_place
from curate.sql.query import PoolCatalog
from tests.test_ingest_datacomp import _metadata_folder

SIZES = (300, 250, 350)
KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt")


def _unit16(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def _save_parts(folder, arrays, compressed=(False, False, False)) -> None:
    edges = np.cumsum([0, *SIZES])
    for part, packed in enumerate(compressed):
        chosen = {k: v[edges[part] : edges[part + 1]] for k, v in arrays.items()}
        (np.savez_compressed if packed else np.savez)(folder / f"{part:08d}.npz", **chosen)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """A DataComp folder (3 parquet + uncompressed .npz of float16 vectors, unit length but
    for one part of l14, near-duplicates planted within and across files), ingested in place
    and with --copy."""
    root = tmp_path_factory.mktemp("npz")
    _, arrays = _metadata_folder(root / "meta", sizes=SIZES, compressed=(False, False, False))
    rng = np.random.default_rng(3)
    total = sum(SIZES)
    originals = rng.choice(400, 80, replace=False)
    copies = rng.choice(np.arange(400, total), 80, replace=False)
    for key in ("b32_img", "l14_img"):
        noisy = arrays[key][originals].astype(np.float32)
        noisy += 0.02 * rng.standard_normal(noisy.shape).astype(np.float32) / noisy.shape[1] ** 0.5
        arrays[key][copies] = _unit16(noisy)
    for key in ("l14_img", "l14_txt"):  # not unit length: both pools normalise them alike
        arrays[key][SIZES[0] + SIZES[1] :] *= np.float16(2.5)
    _save_parts(root / "meta", arrays)
    reference_in_place(root / "meta", root / "in_place")
    ingest(root / "meta", root / "copied")
    image = arrays["b32_img"].astype(np.float32)
    np.save(root / "eval.npy", _unit16(image[rng.choice(total, 20, replace=False)]))
    target = image[rng.choice(total, 5, replace=False)].repeat(8, axis=0)  # a few regions
    np.save(root / "target.npy", _unit16(target + 0.1 * rng.standard_normal(target.shape)))
    return root


def test_in_place_sets_are_the_copied_arrays(pools):
    in_place, copied = pools / "in_place", pools / "copied"
    assert list_embeddings(in_place) == list_embeddings(copied) == ["datacomp-b32", "datacomp-l14"]
    assert not (in_place / "embeddings").exists()
    assert not [p for p in in_place.rglob("*") if p.name in ("image.npy", "text.npy")]
    rng = np.random.default_rng(0)
    for name in ("datacomp-b32", "datacomp-l14"):
        view, stored = load_embeddings(in_place, name), load_embeddings(copied, name)
        assert isinstance(view.image, PartsArray) and isinstance(view.text, PartsArray)
        assert view.image.shape == stored.image.shape and view.image.dtype == np.float16
        for ours, theirs in ((view.image, stored.image), (view.text, stored.text)):
            assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes()
            rows = rng.integers(0, len(theirs), 200)  # any order, repeats, every part
            for key in (rows, slice(290, 560), -1, 299, rows % 2 == 0, (rows[:5], slice(0, 3))):
                if isinstance(key, np.ndarray) and key.dtype == bool:
                    key = np.resize(key, len(theirs))
                assert np.array_equal(ours[key], theirs[key]), key
        drop = ("pool", "produced_by")
        assert {k: v for k, v in view.meta.items() if k not in drop} == {
            k: v for k, v in stored.meta.items() if k not in drop
        }
        assert view.meta["pool"]["root"] == str(in_place.resolve())

        _, parts, _ = embedding_parts(in_place, name)
        assert [p.rows for p in parts.parts] == list(SIZES)
        reader, whole = NpyFile.of(parts), np.asarray(stored.image)
        assert reader.dtype == "<f2" and reader.shape == whole.shape
        for start, stop in ((0, 900), (299, 301), (250, 600), (880, 2000), (5, 5)):
            assert reader.range(start, stop).tobytes() == whole[start:stop].tobytes()
        rows = rng.integers(0, len(whole), 500)
        assert reader.take(rows).tobytes() == whole[rows].tobytes()
        assert reader.take(np.arange(895, 305, -1)).tobytes() == whole[895:305:-1].tobytes()

    with PoolCatalog.open([in_place]) as catalog:  # `curate sql` lists the sets in place
        (found,) = catalog.query("SELECT name, rows, dim, has_text FROM embeddings ORDER BY name")
    assert found.frame.rows() == [("datacomp-b32", 900, 16, True), ("datacomp-l14", 900, 24, True)]


RECIPE = """\
name: npz
seed: 1
embeddings: {embeddings}
stages:
  - stage: decontaminate
    params: {{eval_embeddings: ["{eval}"], threshold: 0.97}}
  - stage: near_dedup
    params: {{threshold: 0.97, keep: highest_clip_score{near}}}
  - stage: semdedup
    params: {{eps: 0.3, n_clusters: 8}}
  - stage: image_based
    params: {{target_embeddings: "{target}", n_clusters: 30}}
"""


@pytest.mark.parametrize(
    "embeddings, near",
    [("datacomp-b32", ""), ("datacomp-l14", ", index: sharded_flat, shard_rows: 128")],
)
def test_embedding_stages_give_the_copied_pools_bytes(pools, tmp_path, embeddings, near):
    if embeddings == "datacomp-l14":  # the eval and target sets are b32's: use l14 rows
        image = np.asarray(load_embeddings(pools / "copied", embeddings).image)
        np.save(tmp_path / "eval.npy", image[:400:20])
        np.save(tmp_path / "target.npy", image[1:900:300].repeat(8, axis=0))
        eval_, target = tmp_path / "eval.npy", tmp_path / "target.npy"
    else:
        eval_, target = pools / "eval.npy", pools / "target.npy"
    text = RECIPE.format(embeddings=embeddings, eval=eval_, target=target, near=near)
    recipe = parse_recipe(text, source="npz.yaml")
    a = build_pool(recipe, pools / "in_place", tmp_path / "a")
    b = build_pool(recipe, pools / "copied", tmp_path / "b")
    stages = {s.stage: s for s in b.stages}
    assert all(stages[n].removed > 0 for n in ("decontaminate", "near_dedup", "semdedup"))
    assert 0 < stages["image_based"].rows_out < stages["image_based"].rows_in
    assert [s.rows_out for s in a.stages] == [s.rows_out for s in b.stages]
    for name in ("uids.npy", "decisions.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("over", ["pool", "remaining"])
def test_clip_score_from_an_in_place_set_equals_the_copied_pools(pools, tmp_path, over):
    """No clip_score.parquet in place: the scores are computed from the .npz as --copy
    computes the file (the threshold's passes on the executor, then the apply pass)."""
    text = (
        "name: cs\nstages:\n  - stage: basic\n    params: {min_words: 1}\n"
        "  - stage: clip_score\n"
        f"    params: {{fraction: 0.4, embeddings: datacomp-l14, over: {over}}}\n"
    )
    recipe = parse_recipe(text, source="cs.yaml")
    executor = LocalExecutor(workers=2)
    a = build_pool(recipe, pools / "in_place", tmp_path / "a", shard_rows=100, executor=executor)
    b = build_pool(recipe, pools / "copied", tmp_path / "b", shard_rows=100, executor=executor)
    assert 0 < a.kept == b.kept < sum(SIZES)
    assert not (pools / "in_place" / "embeddings").exists()  # nothing written into the pool
    for name in ("uids.npy", "decisions.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_clip_score_stage_called_alone_reads_the_in_place_scores(pools):
    """Without build-pool's plan the stage computes the whole pool's threshold itself."""
    from curate.core.pool import Pool
    from curate.filters.catalog import get_stage
    from curate.filters.registry import StageContext

    stage = get_stage("clip_score")
    params = stage.params_model.model_validate({"fraction": 0.3, "embeddings": "datacomp-b32"})
    results = []
    for name in ("in_place", "copied"):
        rows = Pool.open(pools / name).scan_samples().with_row_index("row").collect()
        context = StageContext(
            rows=rows[100:700], pool_root=pools / name, seed=0, work_dir=pools / "work"
        )
        results.append(stage.run(context, params))
    in_place, copied = results
    assert in_place.report == copied.report and in_place.report["over_rows"] == sum(SIZES)
    assert np.array_equal(in_place.keep, copied.keep) and 0 < in_place.keep.sum() < 600
    assert np.array_equal(in_place.score, copied.score)


def test_deflated_npz_is_a_one_line_error_naming_it(tmp_path):
    _metadata_folder(tmp_path / "meta", sizes=SIZES, compressed=(False, True, False))
    result = reference_in_place(tmp_path / "meta", tmp_path / "pool")  # deflated headers read
    (note,) = result.report["notes"]  # ingest says so at once, naming a file and --copy
    assert note.startswith("1 of 3 .npz files are compressed") and "--copy" in note
    assert str(tmp_path / "meta" / "00000001.npz") in note
    assert list_embeddings(tmp_path / "pool") == ["datacomp-b32", "datacomp-l14"]
    with pytest.raises(UserInputError) as caught:
        load_embeddings(tmp_path / "pool", "datacomp-b32")
    message = str(caught.value)
    assert "\n" not in message and "--copy" in message
    assert str((tmp_path / "meta" / "00000001.npz").resolve()) in message and "b32_img" in message
    recipe = parse_recipe(RECIPE.format(
        embeddings="datacomp-b32", eval=tmp_path / "e.npy", target=tmp_path / "t.npy", near=""
    ), source="npz.yaml")  # fmt: skip
    with pytest.raises(UserInputError, match=r"00000001\.npz: member b32_img\.npy is compressed"):
        build_pool(recipe, tmp_path / "pool", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "pool" / "manifest.json").read_text())["kind"] == "pool"


def test_an_npz_changed_after_ingest_is_caught_on_open(tmp_path):
    _metadata_folder(tmp_path / "meta", sizes=(7, 5), compressed=(False, False))
    reference_in_place(tmp_path / "meta", tmp_path / "pool")
    assert load_embeddings(tmp_path / "pool", "datacomp-b32").image.shape == (12, 16)
    npz = tmp_path / "meta" / "00000001.npz"
    with np.load(npz) as arrays:
        changed = {key: arrays[key][::-1].copy() for key in arrays.files}  # same size
    np.savez(npz, **changed)
    with pytest.raises(UserInputError, match=r"00000001\.npz changed since `curate ingest`"):
        load_embeddings(tmp_path / "pool", "datacomp-b32")
