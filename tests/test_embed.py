"""`curate embed` on a small real pool with a real (randomly initialised) open_clip model.

The reference is a direct computation: the same weights, built by open_clip itself, applied
to the images read back through Pool.read_images and to the captions of samples.parquet.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from dataclasses import replace

import huggingface_hub.constants
import numpy as np
import open_clip
import polars as pl
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import curate.cli.main
import curate.embed.pool_embeddings
from curate.cli.app import app
from curate.core.embedding_store import load_embeddings
from curate.core.errors import UserInputError
from curate.core.manifest import read_manifest
from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.embed.pool_embeddings import embed_pool
from curate.models.configs import register_curate_models
from curate.models.loading import ArchitectureMismatchError, load_clip
from tests.conftest import make_image_bytes

ARCH = "curate-tiny-vit-p4"
BATCH = 8  # every run uses the same batch size, so float results are comparable exactly


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 3-shard pool (20 + 20 + 15 samples), a model, and its weights saved three ways."""
    root = tmp_path_factory.mktemp("embed")
    with PoolWriter(
        root / "pool", name="tiny", source={"type": "test"}, command="test", samples_per_shard=20
    ) as writer:
        for i in range(55):
            size = (32 + (i % 5) * 9, 32 + (i % 3) * 13)  # non-square: exercises resize + crop
            image = make_image_bytes(i, size, "PNG" if i % 11 == 0 else "JPEG")
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    image=image,
                    text=f"a photo of thing {i} " + "word " * (i % 7),
                )
            )
    register_curate_models()
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH).eval()
    state = model.state_dict()
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    save_file(state, str(checkpoint / "model.safetensors"))
    (checkpoint / "model_config.json").write_text(json.dumps({"arch": ARCH}))
    # open_clip training's layout: {"state_dict": ...} with DistributedDataParallel prefixes
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
        root / "epoch_3.pt",
    )
    reference = embed_pool(
        root / "pool",
        arch=None,
        checkpoint=checkpoint,
        name="ref",
        batch_size=BATCH,
        workers=2,
        progress=False,
    )
    return root, model, reference


def _direct_embeddings(pool_root, model):
    """Reference: open_clip's own transform, tokenizer and model, one sample at a time."""
    _, _, preprocess = open_clip.create_model_and_transforms(ARCH)
    tokenizer = open_clip.get_tokenizer(ARCH)
    pool = Pool.open(pool_root)
    samples = pool.samples()
    images = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in pool.read_images(samples)])
    with torch.no_grad():
        image = model.encode_image(images, normalize=True).numpy()
        text = model.encode_text(tokenizer(samples["text"].to_list()), normalize=True).numpy()
    return image, text


def test_embeddings_equal_direct_model_computation(setup):
    root, model, report = setup
    stored = load_embeddings(root / "pool", "ref")
    assert stored.image.shape == stored.text.shape == (55, 96)
    assert stored.image.dtype == stored.text.dtype == np.float16
    for vectors in (stored.image, stored.text):
        np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    image, text = _direct_embeddings(root / "pool", model)
    np.testing.assert_allclose(stored.image.astype(np.float32), image, atol=1.5e-3)
    np.testing.assert_allclose(stored.text.astype(np.float32), text, atol=1.5e-3)
    assert report.rows == 55 and report.shards_total == 3 and len(report.shards_computed) == 3


def test_clip_score_and_meta(setup):
    root, _, _ = setup
    stored = load_embeddings(root / "pool", "ref")
    scores = pl.read_parquet(root / "pool/embeddings/ref/clip_score.parquet")
    assert scores.columns == ["uid", "clip_score"] and scores["clip_score"].dtype == pl.Float32
    assert scores["uid"].to_list() == Pool.open(root / "pool").samples()["uid"].to_list()
    expected = (stored.image.astype(np.float32) * stored.text.astype(np.float32)).sum(axis=1)
    np.testing.assert_allclose(scores["clip_score"].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    meta = stored.meta
    weights = root / "checkpoint/model.safetensors"
    assert meta["arch"] == ARCH and meta["pretrained"] is None
    assert meta["checkpoint"] == str(weights.resolve())
    assert meta["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (meta["dim"], meta["rows"], meta["precision"]) == (96, 55, "fp32")
    assert meta["preprocess"]["size"] == [32, 32] and meta["produced_by"]["command"] == "embed"
    assert not (root / "pool/embeddings/.ref.partial").exists()


def test_cli_with_pt_state_dict_equals_safetensors_checkpoint(setup):
    root, _, _ = setup
    result = CliRunner().invoke(
        app,
        [
            "embed",
            str(root / "pool"),
            "--model",
            ARCH,
            "--pretrained",
            str(root / "epoch_3.pt"),
            "--batch-size",
            str(BATCH),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    names = {p.name for p in (root / "pool/embeddings").iterdir() if not p.name.startswith(".")}
    digest = hashlib.sha256((root / "epoch_3.pt").read_bytes()).hexdigest()[:8]
    assert names == {"ref", f"curate-tiny-vit-p4-epoch_3-{digest}"}
    from_pt = load_embeddings(root / "pool", f"curate-tiny-vit-p4-epoch_3-{digest}")
    reference = load_embeddings(root / "pool", "ref")
    assert np.array_equal(from_pt.image, reference.image)
    assert np.array_equal(from_pt.text, reference.text)


def test_resume_after_crash_skips_finished_shards(setup, monkeypatch):
    root, _, _ = setup
    forwarded: list[int] = []
    crash_at_batch: list[int | None] = [6]  # shard 0 is batches 1-3; crash inside shard 1

    class Killed(Exception):
        pass

    def count_forward(module, inputs, output):
        forwarded.append(inputs[0].shape[0])
        if len(forwarded) == crash_at_batch[0]:
            raise Killed

    def observed_load_clip(*args, **kwargs):
        loaded = load_clip(*args, **kwargs)
        loaded.model.visual.register_forward_hook(count_forward)
        return loaded

    monkeypatch.setattr(curate.embed.pool_embeddings, "load_clip", observed_load_clip)
    run = dict(
        arch=ARCH,
        checkpoint=root / "checkpoint",
        name="resumed",
        batch_size=BATCH,
        workers=0,
        progress=False,
    )
    with pytest.raises(Killed):
        embed_pool(root / "pool", **run)
    assert not (root / "pool/embeddings/resumed").exists()
    progress = json.loads((root / "pool/embeddings/.resumed.partial/progress.json").read_text())
    assert progress["finished"] == ["shards/00000.tar"]

    forwarded.clear()
    crash_at_batch[0] = None
    report = embed_pool(root / "pool", **run)
    assert report.shards_computed == ("shards/00001.tar", "shards/00002.tar")
    assert sum(forwarded) == report.rows_computed == 35  # shard 0's 20 images not recomputed
    resumed, reference = (load_embeddings(root / "pool", n) for n in ("resumed", "ref"))
    assert np.array_equal(resumed.image, reference.image)
    assert np.array_equal(resumed.text, reference.text)
    scores = [
        pl.read_parquet(root / f"pool/embeddings/{n}/clip_score.parquet")
        for n in ("resumed", "ref")
    ]
    assert scores[0].equals(scores[1])
    with pytest.raises(FileExistsError, match="--overwrite"):
        embed_pool(root / "pool", **run)


def test_architecture_mismatch_names_file_and_first_key(setup, tmp_path):
    root, model, _ = setup
    wrong = dict(model.state_dict())
    wrong["visual.conv1.weight"] = torch.zeros(96, 3, 8, 8)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"wrong\.pt.*'visual\.conv1\.weight'"):
        load_clip(ARCH, checkpoint=tmp_path / "wrong.pt")
    del wrong["visual.conv1.weight"]
    wrong["visual.extra"] = torch.zeros(1)
    save_file(wrong, str(tmp_path / "missing.safetensors"))
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"missing\.safetensors.*'visual\.conv1\.weight' is missing.*1 more",
    ):
        load_clip(ARCH, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ArchitectureMismatchError, match="holds a curate-tiny-vit-p4 model"):
        load_clip("ViT-B-32", checkpoint=root / "checkpoint")


def test_bad_inputs_are_clear_errors(setup, tmp_path):
    root, _, _ = setup
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_clip(ARCH, checkpoint=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip(ARCH, pretrained="runs/missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="garbage.pt: cannot read weights"):
        load_clip(ARCH, pretrained=str(tmp_path / "garbage.pt"))
    with pytest.raises(UserInputError, match="did you mean ViT-B-32"):
        load_clip("ViT-B-23", pretrained="openai")
    with pytest.raises(UserInputError, match="known tags: none"):
        load_clip(ARCH, pretrained="laion2b")
    with pytest.raises(UserInputError, match="--name"):
        embed_pool(root / "pool", arch=ARCH, checkpoint=root / "checkpoint", name="../x")


def test_metadata_only_pool_is_a_one_line_cli_error(setup, tmp_path, monkeypatch, capsys):
    root, _, _ = setup
    pool = tmp_path / "metadata_only"
    shutil.copytree(root / "pool", pool, ignore=shutil.ignore_patterns("shards", "embeddings"))
    replace(read_manifest(pool), has_images=False).write(pool)
    monkeypatch.setattr(
        "sys.argv", ["curate", "embed", str(pool), "--checkpoint", str(root / "checkpoint")]
    )
    with pytest.raises(SystemExit) as exit_info:
        curate.cli.main.main()
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "metadata-only pool" in message and "curate download" in message
    assert "Traceback" not in message


def test_pretrained_tag_goes_through_open_clip(setup, tmp_path, monkeypatch):
    root, model, _ = setup
    tag_cfg = {"file": str(root / "epoch_3.pt"), "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {"curate_test": tag_cfg})
    loaded = load_clip(ARCH, pretrained="curate-test")
    assert loaded.identity["pretrained"] == "curate-test" and loaded.identity["checkpoint"] is None
    assert loaded.identity["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # the tag's preprocessing
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    # A real tag whose weights are not cached fails fast and clearly when offline.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(UserInputError, match="ViT-B-32/laion2b_s34b_b79k.*HF_HUB_OFFLINE"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert time.perf_counter() - started < 10


def test_damaged_shard_is_a_clear_error_from_a_worker(setup, tmp_path):
    root, _, _ = setup
    pool = tmp_path / "damaged"
    shutil.copytree(root / "pool", pool, ignore=shutil.ignore_patterns("embeddings"))
    shard = pool / "shards/00001.tar"
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive if m.isfile()]
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            if member.name == "000010003.jpg":
                data = data[:40]  # truncated JPEG
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    with pytest.raises(UserInputError, match=r"00001\.tar: cannot decode image 000010003"):
        embed_pool(
            pool,
            arch=ARCH,
            checkpoint=root / "checkpoint",
            batch_size=BATCH,
            workers=1,
            progress=False,
        )
