"""The evaluation suite: zero-shot metrics against hand-computed cases, the classifier against
a numpy computation on a real open_clip model, retrieval recall against brute force, the task
registry's validation and data formats, and records that let a rerun skip finished tasks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from curate.core.atomic import write_parquet
from curate.core.errors import UserInputError
from curate.core.image_tables import iter_wds
from curate.eval.datasets import load_task_data
from curate.eval.evaluate import evaluate_tasks
from curate.eval.records import read_records, unpack_correct
from curate.eval.retrieval import retrieval_metrics
from curate.eval.tasks import load_registry
from curate.eval.zeroshot import class_embeddings, classify, mean_per_class_recall
from curate.models.configs import register_curate_models
from curate.models.loading import LoadedClip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_model():
    register_curate_models()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("curate-tiny-vit-p4")
    model.eval()
    tokenizer = open_clip.get_tokenizer("curate-tiny-vit-p4")
    identity = {"arch": "curate-tiny-vit-p4", "checkpoint": None, "pretrained": None}
    return LoadedClip(model, preprocess, tokenizer, identity)


# -- zero-shot metrics ----------------------------------------------------------------------
def test_classify_hand_computed_case():
    # 3 classes on the axes; images point mostly along one axis
    weights = np.eye(3, dtype=np.float32)
    features = np.array(
        [[0.9, 0.1, 0], [0.2, 0.8, 0], [0.7, 0.3, 0], [0, 0.1, 0.9], [0, 0.6, 0.4], [0.5, 0, 0.4]],
        dtype=np.float32,
    )
    labels = np.array([0, 1, 1, 2, 2, 0])
    # predictions: 0, 1, 0, 2, 1, 0 -> correct: T, T, F, T, F, T
    result = classify(features, weights, labels)
    np.testing.assert_array_equal(result.correct, [True, True, False, True, False, True])
    assert result.metrics["acc1"] == pytest.approx(4 / 6)
    # recall per class: class 0: 2/2, class 1: 1/2, class 2: 1/2 -> mean 2/3
    assert result.metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert result.metrics["n"] == 6 and "acc5" not in result.metrics


def test_mean_per_class_recall_is_balanced_accuracy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 500)
    labels[labels == 4] = 5  # a class with no test images is left out
    predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 7, 500))
    recalls = [np.mean(predictions[labels == c] == c) for c in np.unique(labels)]
    assert mean_per_class_recall(predictions, labels) == pytest.approx(np.mean(recalls))
    assert 4 not in np.unique(labels)


def test_class_embeddings_match_a_numpy_computation(tiny_model):
    classnames, templates = ["cat", "dog"], ["a photo of a {}.", "a {} picture", "{}"]
    weights = class_embeddings(tiny_model.model, tiny_model.tokenizer, classnames, templates)
    expected = []
    for name in classnames:
        with torch.no_grad():
            prompts = tiny_model.tokenizer([t.format(name) for t in templates])
            embedded = tiny_model.model.encode_text(prompts).numpy()
        embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
        mean = embedded.mean(axis=0)
        expected.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(weights, np.stack(expected), atol=1e-5)


# -- retrieval ------------------------------------------------------------------------------
def test_retrieval_recall_matches_brute_force():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(40, 8)).astype(np.float32)
    text_to_image = np.concatenate([np.arange(40), rng.integers(0, 40, 25)])  # some have 2+
    texts = images[text_to_image] + rng.normal(scale=1.2, size=(65, 8)).astype(np.float32)
    metrics = retrieval_metrics(images, texts, text_to_image)
    scores = texts @ images.T
    for k in (1, 5, 10):
        image_hits = [text_to_image[t] in np.argsort(-scores[t])[:k] for t in range(65)]
        text_hits = [
            any(text_to_image[j] == i for j in np.argsort(-scores[:, i])[:k]) for i in range(40)
        ]
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(np.mean(image_hits))
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(np.mean(text_hits))
    assert 0 < metrics["image_retrieval_recall@1"] < metrics["image_retrieval_recall@10"] < 1


# -- the registry ---------------------------------------------------------------------------
def test_builtin_registry_and_demo_tasks():
    registry = load_registry()
    assert registry.tasks["cinic10-imagenet"].task_info == {
        "kind": "shift",
        "shift_of": "cifar10-test",
    }
    assert registry.task_ids(["cifar10", "cifar10-test"]) == ["cifar10-test", "cinic10-imagenet"]
    shift = load_task_data(registry, "cinic10-imagenet", pool=None)
    assert len(shift) == 761 and shift.classnames[0] == "airplane"  # the split == test half
    assert load_task_data(registry, "pool-holdout", pool=None) is None  # optional, no pool


def write_tasks(path: Path, tasks: dict) -> Path:
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


def test_registry_errors_name_the_task_and_field(tmp_path, monkeypatch):
    bad = write_tasks(
        tmp_path / "typo.yaml",
        {
            "t": {
                "kind": "id",
                "images": {"path": "x.parquet", "fliter": "a = 1"},
                "classnames": ["a"],
            }
        },
    )
    with pytest.raises(UserInputError, match=r"tasks\.t\.images\.fliter"):
        load_registry(bad)
    orphan = write_tasks(
        tmp_path / "orphan.yaml",
        {"s": {"kind": "shift", "shift_of": "nope", "images": {"path": "x"}, "classnames": ["a"]}},
    )
    with pytest.raises(UserInputError, match="shift_of 'nope' is not a task"):
        load_registry(orphan)
    env = write_tasks(
        tmp_path / "env.yaml",
        {"e": {"kind": "id", "images": {"path": "${CURATE_TEST_UNSET}/val"}, "classnames": ["a"]}},
    )
    monkeypatch.delenv("CURATE_TEST_UNSET", raising=False)
    with pytest.raises(UserInputError, match="export CURATE_TEST_UNSET="):
        load_registry(env).task_path("e", None)
    with pytest.raises(UserInputError, match="unknown task or task set 'cifar11'"):
        load_registry().task_ids(["cifar11"])


def test_folder_and_webdataset_layouts(tmp_path):
    for label, name in enumerate(["b_class", "a_class"]):  # sorted folder names are the labels
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(label + 1):
            (tmp_path / "folder" / name / f"{i}.png").write_bytes(png(label * 10 + i))
    shards = tmp_path / "wds" / "test"
    shards.mkdir(parents=True)
    with tarfile.open(shards / "0.tar", "w") as archive:
        for i in range(5):
            for extension, payload in (("webp", png(i)), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{extension}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    (tmp_path / "wds" / "classnames.txt").write_text("zero\none\n")
    (tmp_path / "wds" / "zeroshot_classification_templates.txt").write_text("a photo of {c}.\n")
    registry = load_registry(
        write_tasks(
            tmp_path / "tasks.yaml",
            {
                "f": {
                    "kind": "id",
                    "images": {"format": "folder", "path": "folder"},
                    "classnames": ["a", "b"],
                    "templates": ["{}"],
                },
                "w": {"kind": "id", "images": {"format": "wds", "path": "wds"}},
            },
        )
    )
    folder = load_task_data(registry, "f", None)
    assert [p.parent.name for p in folder.images] == ["a_class", "a_class", "b_class"]
    np.testing.assert_array_equal(folder.labels, [0, 0, 1])
    wds = load_task_data(registry, "w", None)
    assert wds.classnames == ["zero", "one"] and wds.templates == ["a photo of {}."]
    assert [label for _, label in iter_wds(wds.tars)] == [0, 1, 0, 1, 0]


# -- records --------------------------------------------------------------------------------
def test_records_append_and_a_rerun_skips_finished_tasks(tmp_path, tiny_model):
    labels = [0, 1, 2, 1, 0, 2, 2, 1]
    write_parquet(
        tmp_path / "test.parquet",
        pl.DataFrame(
            {
                "image": [{"bytes": png(100 + i), "path": None} for i in range(len(labels))],
                "label": labels,
                "class_name": [["cat", "dog", "bird"][x] for x in labels],
                "split": ["test", "pool"] * 4,
            }
        ),
    )
    registry = load_registry(
        write_tasks(
            tmp_path / "tasks.yaml",
            {
                "animals": {
                    "kind": "id",
                    "images": {"path": "test.parquet"},
                    "classnames": "from_data",
                    "templates": ["a photo of a {}."],
                },
                "animals-test": {
                    "kind": "shift",
                    "shift_of": "animals",
                    "images": {"path": "test.parquet", "filter": "split = 'test'"},
                    "classnames": "from_data",
                    "templates": ["a {}"],
                },
            },
        )
    )
    results = tmp_path / "results.jsonl"
    run = {"run_id": "r1", "comparability_key": "k"}
    first = evaluate_tasks(tiny_model, ["animals"], registry, results, run)
    assert [o.status for o in first] == ["done"]
    with open(results, "a") as handle:  # a kill while writing leaves a torn last line
        handle.write('{"dataset": "animals-te')
    second = evaluate_tasks(tiny_model, ["animals", "animals-test"], registry, results, run)
    assert [o.status for o in second] == ["skipped (finished)", "done"]
    records = read_records(results)
    assert [r["dataset"] for r in records] == ["animals", "animals-test"]  # torn line dropped
    assert len(results.read_text().splitlines()) == 2
    # the record's correctness is the model's: recompute the predictions directly
    record = records[0]
    data = load_task_data(registry, "animals", None)
    pixels = torch.stack([tiny_model.preprocess(Image.open(io.BytesIO(b))) for b in data.images])
    with torch.no_grad():
        feats = tiny_model.model.encode_image(pixels, normalize=True).numpy()
    weights = class_embeddings(
        tiny_model.model, tiny_model.tokenizer, data.classnames, data.templates
    )
    expected = (feats @ weights.T).argmax(1) == data.labels
    np.testing.assert_array_equal(unpack_correct(record["correct_bits"], 8), expected)
    assert record["task_info"] == {"kind": "id", "shift_of": None} and record["run"] == run
