"""`curate import-results`: the four upstream formats, written here exactly as their tools write
them, round-trip into the canonical long table; every bad input is one line naming file and line."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import duckdb
import polars as pl
import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.core.errors import UserInputError
from curate.core.manifest import read_manifest
from curate.eval.external_results import (
    EXTERNAL_SCHEMA,
    import_results,
    load_openclip_table,
    openclip_table_path,
    read_results,
    wilson_interval,
)
from curate.eval.external_tags import TAGS, samples_seen_from_tag
from curate.eval.external_tasks import TASKS, canonical_task
from curate.leaderboard.external import external_leaderboard

runner = CliRunner()


def cb_dump(dataset: str, model: str, pretrained: str, task: str, metrics: dict) -> dict:
    """The dict CLIP_benchmark's cli.py dumps, keys in its order."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": metrics,
        "language": "en",
    }


def write_cb_json(folder: Path, dump: dict) -> Path:
    """A file named by cli.py's default template, written with json.dump (bare NaN and all)."""
    dataset_slug = dump["dataset"].replace("wds/", "", 1).replace("/", "_")
    pretrained_slug = Path(dump["pretrained"]).name  # cli.py: basename of a checkpoint path
    name = f"{dataset_slug}_{pretrained_slug}_{dump['model']}_en_{dump['task']}.json"
    path = folder / name
    with open(path, "w") as handle:
        json.dump(dump, handle)
    return path


def write_cb_build_csv(path: Path, dumps: list[dict], seed: int = 3) -> Path:
    """`clip_benchmark build`: metrics flattened, model_fullname added, columns in set order."""
    rows, fieldnames = [], []
    for dump in dumps:
        row = dict(dump["metrics"])
        row.update(dump)
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        rows.append(row)
        fieldnames += [f for f in row if f not in fieldnames]
    random.Random(seed).shuffle(fieldnames)  # upstream: a set, hash-randomised order
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def datacomp_line(key: str, name: str, metrics: dict, main: str = "acc1") -> str:
    metrics = {**metrics, "main_metric": metrics.get(main)}
    return json.dumps({"key": key, "dataset": name, "metrics": metrics}) + "\n"


def invoke_error(args: list[str]) -> str:
    result = runner.invoke(app, ["import-results", *args])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, UserInputError), repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message
    return message


# --- the shipped open_clip table ---------------------------------------------------------------


def test_shipped_openclip_table_round_trips() -> None:
    table = load_openclip_table()
    assert table.schema == pl.Schema(EXTERNAL_SCHEMA)
    assert table["model"].n_unique() == 121 and table.height == 121 * 38
    with open(openclip_table_path(), newline="") as handle:
        rows = list(csv.DictReader(handle))
    cell = next(r for r in rows if r["name"] == "ViT-B-32" and r["pretrained"] == "openai")
    b32 = table.filter(pl.col("model") == "ViT-B-32/openai").row(0, named=True)
    assert b32["task"] == "imagenet1k" and b32["accuracy"] == float(cell["ImageNet 1k"])
    assert b32["training_data"] == "OpenAI WIT" and b32["n_test"] == 50000
    assert b32["source_line"] == rows.index(cell) + 2
    shifts = dict(
        table.filter(pl.col("model") == "ViT-B-32/openai").select("task", "accuracy").iter_rows()
    )
    assert shifts["objectnet"] == 0.4431 and shifts["imagenetv2"] == 0.5592
    # every tag of the shipped table is known; accuracy columns all numbers in [0, 1]
    assert table["training_data"].null_count() == 0
    assert table["accuracy"].is_between(0, 1).all()
    cp = table.filter(pl.col("model") == "ViT-B-32/commonpool_m_clip_s128m_b4k").row(0, named=True)
    assert (cp["training_data"], cp["training_data_scale"], cp["training_filter"]) == (
        "CommonPool-M (CLIP score)",
        "medium",
        "clip",
    )
    assert cp["samples_seen"] == 128_000_000


def test_alias_table_covers_every_openclip_column() -> None:
    header = pl.read_csv(openclip_table_path(), n_rows=1).columns
    tasks = header[5:]  # name, pretrained, params, FLOPs, average; then one column per task
    assert len(tasks) == 38
    assert {canonical_task(t) for t in tasks} == {t.key for t in TASKS}
    assert canonical_task("wds/imagenet1k") == canonical_task("ImageNet 1k") == "imagenet1k"
    assert canonical_task("vtab_cifar100") == "vtab/cifar100"


def test_tags_and_samples_seen() -> None:
    assert samples_seen_from_tag("laion2b_s34b_b79k") == 34_000_000_000
    assert samples_seen_from_tag("datacomp_xl_s13b_b90k") == 12_800_000_000
    assert samples_seen_from_tag("commonpool_s_clip_s13m_b4k") == 12_800_000
    assert (
        samples_seen_from_tag("openai") is None and samples_seen_from_tag("laion400m_e32") is None
    )
    assert TAGS["datacomp1b"].filter == "image∩clip"


def test_wilson_interval_matches_scipy() -> None:
    k, n = 31667, 50000  # ViT-B-32/openai on ImageNet, CLIP_benchmark's exact count
    frame = pl.DataFrame({"acc": [k / n], "n": [float(n)]})
    low, high = wilson_interval(pl.col("acc"), pl.col("n"))
    got = frame.select(low.alias("low"), high.alias("high")).row(0)
    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert got == pytest.approx((want.low, want.high), abs=1e-12)
    small = binomtest(3, 7500).proportion_ci(method="wilson")
    low, high = wilson_interval(pl.col("acc"), pl.col("n"))
    got = pl.DataFrame({"acc": [3 / 7500], "n": [7500.0]}).select(low.alias("l"), high.alias("h"))
    assert got.row(0) == pytest.approx((small.low, small.high), abs=1e-12)


# --- the other formats ---------------------------------------------------------------------------


def test_clip_benchmark_json_round_trip(tmp_path: Path) -> None:
    in1k = write_cb_json(
        tmp_path,
        cb_dump(
            "wds/imagenet1k",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            "zeroshot_classification",
            {"acc1": 0.66528, "acc5": 0.8913, "mean_per_class_recall": 0.6650},
        ),
    )
    pcam = write_cb_json(  # 2 classes: acc5 is NaN, written as a bare NaN
        tmp_path,
        cb_dump(
            "wds/vtab/pcam",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            "zeroshot_classification",
            {"acc1": 0.5, "acc5": float("nan"), "mean_per_class_recall": 0.5},
        ),
    )
    assert (
        "NaN" in pcam.read_text()
        and pcam.name == "vtab_pcam_laion2b_s34b_b79k_ViT-B-32_en_zeroshot_classification.json"
    )
    flickr5 = write_cb_json(  # default --recall_k 5: no recall@1, so no main metric: skipped
        tmp_path,
        cb_dump(
            "flickr30k",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            "zeroshot_retrieval",
            {"image_retrieval_recall@5": 0.85, "text_retrieval_recall@5": 0.94},
        ),
    )
    coco = write_cb_json(
        tmp_path,
        cb_dump(
            "mscoco_captions",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            "zeroshot_retrieval",
            {"image_retrieval_recall@1": 0.3, "text_retrieval_recall@1": 0.5},
        ),
    )
    result = import_results([in1k, pcam, flickr5, coco])
    table = result.table
    assert table.schema == pl.Schema(EXTERNAL_SCHEMA)
    got = dict(table.select("task", "accuracy").iter_rows())
    assert got == {
        "imagenet1k": 0.66528,
        "vtab/pcam": 0.5,
        "retrieval/mscoco_2014_5k_test_image_text_retrieval": pytest.approx(0.4),
    }
    assert set(table["format"]) == {"clip_benchmark_json"}
    assert table["model"].unique().to_list() == ["ViT-B-32/laion2b_s34b_b79k"]
    assert table["samples_seen"][0] == 34_000_000_000
    assert result.skipped == {
        "no mean_recall@1 in metrics: retrieval/flickr_1k_test_image_text_retrieval": 1
    }
    row = table.filter(pl.col("task") == "imagenet1k").row(0, named=True)
    want = binomtest(round(0.66528 * 50000), 50000).proportion_ci(method="wilson")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((want.low, want.high), abs=1e-12)
    mscoco = table.filter(pl.col("task").str.starts_with("retrieval")).row(0, named=True)
    assert mscoco["ci_low"] is None and mscoco["n_test"] == 5000  # not a binomial proportion


def test_clip_benchmark_build_csv_round_trip(tmp_path: Path) -> None:
    dumps = [
        cb_dump("imagenet1k", "ViT-L-14", "openai", "zeroshot_classification",
                {"acc1": 0.7554, "acc5": 0.9455, "mean_per_class_recall": 0.7551}),
        cb_dump("vtab/pcam", "ViT-L-14", "openai", "zeroshot_classification",
                {"acc1": 0.52, "acc5": float("nan"), "mean_per_class_recall": 0.52}),
        cb_dump("vtab/caltech101", "ViT-L-14", "openai", "zeroshot_classification",
                {"acc1": 0.84, "acc5": 0.95, "mean_per_class_recall": 0.87}),
        cb_dump("flickr30k", "ViT-L-14", "openai", "zeroshot_retrieval",
                {"image_retrieval_recall@5": 0.87, "text_retrieval_recall@5": 0.97}),
        cb_dump("cifar10", "ViT-L-14", "openai", "linear_probe",
                {"lp_acc1": 0.98, "lp_acc5": 1.0}),
    ]  # fmt: skip
    path = write_cb_build_csv(tmp_path / "benchmark.csv", dumps)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] != ["acc1", "acc5", "mean_per_class_recall"]  # really shuffled
    assert "nan" in path.read_text()
    result = import_results([path])
    got = dict(result.table.select("task", "accuracy").iter_rows())
    assert got == {"imagenet1k": 0.7554, "vtab/pcam": 0.52, "vtab/caltech101": 0.87}  # mpcr
    lines = dict(result.table.select("task", "source_line").iter_rows())
    assert lines == {"imagenet1k": 2, "vtab/pcam": 3, "vtab/caltech101": 4}
    assert set(result.table["format"]) == {"clip_benchmark_csv"}
    assert result.skipped == {
        "no mean_recall@1 in metrics: retrieval/flickr_1k_test_image_text_retrieval": 1,
        "not zero-shot (task=linear_probe)": 1,
    }


def datacomp_results(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "eval_results.jsonl"
    in1k = {"acc1": 0.0561, "acc5": 0.16, "mean_per_class_recall": 0.056}
    pcam = {"acc1": 0.5063, "acc5": None, "mean_per_class_recall": 0.5}  # 2 classes: null acc5
    pets = {"acc1": 0.1, "acc5": 0.3, "mean_per_class_recall": 0.12}
    flickr = {"image_retrieval_recall@1": 0.02, "text_retrieval_recall@1": 0.04}
    flickr["mean_recall@1"] = 0.03
    path.write_text(
        datacomp_line("imagenet1k", "ImageNet 1k", in1k)
        + datacomp_line("vtab/pcam", "PatchCamelyon", pcam)
        + datacomp_line("vtab/pets", "Oxford-IIIT Pet", pets, main="mean_per_class_recall")
        + datacomp_line(
            "retrieval/flickr_1k_test_image_text_retrieval", "Flickr", flickr, main="mean_recall@1"
        )
        + datacomp_line("fairness/fairface", "FairFace", {"acc1": 0.3}, main="none")
    )
    return path


def test_datacomp_jsonl_round_trip(tmp_path: Path) -> None:
    path = datacomp_results(tmp_path / "small_clip_filter")
    assert '"acc5": null' in path.read_text()
    by_folder = import_results([path])
    table = by_folder.table
    assert dict(table.select("task", "accuracy").iter_rows()) == {
        "imagenet1k": 0.0561,
        "vtab/pcam": 0.5063,
        "vtab/pets": 0.12,
        "retrieval/flickr_1k_test_image_text_retrieval": 0.03,
    }
    assert table["model"].unique().to_list() == ["small_clip_filter"]
    assert table["arch"].null_count() == table.height and table["training_data"].null_count() == 4
    assert by_folder.skipped == {
        "unscored task (DataComp gives it no main metric): fairness/fairface": 1
    }
    assert by_folder.unknown_training_data == {"": 1}
    named = read_results([path], model="ViT-B-32/commonpool_s_clip_s13m_b4k")
    first = named.row(0, named=True)
    assert (first["arch"], first["training_data"], first["samples_seen"]) == (
        "ViT-B-32",
        "CommonPool-S (CLIP score)",
        12_800_000,
    )
    lines = dict(named.select("task", "source_line").iter_rows())
    assert lines == {
        "imagenet1k": 1,
        "vtab/pcam": 2,
        "vtab/pets": 3,
        "retrieval/flickr_1k_test_image_text_retrieval": 4,
    }
    assert set(named["format"]) == {"datacomp_jsonl"}


# --- the command -------------------------------------------------------------------------------


def test_command_writes_table_sql_and_leaderboard(tmp_path: Path) -> None:
    path = datacomp_results(tmp_path / "runs" / "mine")
    unknown = write_cb_json(
        tmp_path,
        cb_dump("imagenet1k", "ViT-B-32", "/ckpts/epoch_32.pt", "zeroshot_classification",
                {"acc1": 0.61, "acc5": 0.87, "mean_per_class_recall": 0.6}),
    )  # fmt: skip
    out = tmp_path / "ext"
    result = runner.invoke(
        app,
        ["import-results", str(path), str(unknown), "--openclip-table", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "123 models" in result.output and "skipped 1: unscored task" in result.output
    assert "unknown training data: /ckpts/epoch_32.pt (1 models)" in result.output
    manifest = read_manifest(out)
    assert manifest.kind == "external_results" and manifest.extra["models"] == 123
    table = pl.read_parquet(out / "external_results.parquet")
    assert table.height == 121 * 38 + 4 + 1
    again = runner.invoke(app, ["import-results", str(path), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)

    shown = runner.invoke(
        app,
        ["sql", str(out), "SELECT count(DISTINCT model) AS n FROM external_results", "-f", "csv"],
    )
    assert shown.exit_code == 0, shown.output
    assert shown.output.split() == ["n", "123"]

    board_dir = tmp_path / "board"
    built = runner.invoke(app, ["leaderboard", str(tmp_path), "--out", str(board_dir)])
    assert built.exit_code == 0, built.output
    with duckdb.connect(str(board_dir / "leaderboard.duckdb"), read_only=True) as con:
        top = con.execute(
            "SELECT model, rank, comparability_key FROM external_leaderboard ORDER BY rank LIMIT 1"
        ).fetchone()
        n = con.execute("SELECT count(*) FROM external_leaderboard").fetchone()[0]
    assert n == 123 and top[1] == 1 and top[2] == "external:imagenet-testbed"
    board = external_leaderboard(table)
    assert top[0] == board["model"][0] == "ViT-L-14-336/openai"
    shift_ers = ["imagenetv2_er", "imagenet_sketch_er", "imagenet_a_er", "imagenet_r_er"]
    mean_er = board.select(pl.mean_horizontal(*shift_ers, "objectnet_er"))
    assert mean_er.to_series().to_list() == pytest.approx(board["average_er"].to_list())
    ranked = board.filter(pl.col("rank").is_not_null())
    assert not ranked["extrapolated"].any() and ranked["average_er"].is_sorted(descending=True)
    ers = ranked["average_er"].to_list()  # ties (identical quickgelu aliases) share a rank
    assert ranked["rank"].to_list() == [1 + sum(e > x for e in ers) for x in ers]
    unranked = board.filter(pl.col("rank").is_null())  # ImageNet accuracy outside the testbed's
    assert unranked["extrapolated"].fill_null(True).all()
    mine = board.filter(pl.col("model") == "mine").row(0, named=True)  # no shifts: no ER
    assert mine["rank"] is None and mine["average_er"] is None and mine["imagenet1k_acc"] == 0.0561


def test_command_help_has_an_example() -> None:
    shown = runner.invoke(app, ["import-results", "--help"])
    assert shown.exit_code == 0 and "Example: curate import-results" in shown.output
    assert "parent folder name" in shown.output


# --- bad input: one line naming file and line, or a counted skip --------------------------------


def test_unknown_task_error_and_counted_skip(tmp_path: Path) -> None:
    path = tmp_path / "eval_results.jsonl"
    path.write_text(
        datacomp_line("imagenet1k", "ImageNet 1k", {"acc1": 0.5})
        + datacomp_line("imagenet1kk", "typo", {"acc1": 0.5})
    )
    message = invoke_error([str(path), "--out", str(tmp_path / "o")])
    assert (
        f"{path}:2" in message
        and "imagenet1kk" in message
        and "did you mean imagenet1k," in message
    )
    result = runner.invoke(
        app, ["import-results", str(path), "--skip-unknown-tasks", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1: unknown task: imagenet1kk" in result.output


def test_unknown_openclip_column(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("name,pretrained,ImageNet 1k,ImageNet Sketchy\nViT-B-32,openai,0.6,0.4\n")
    message = invoke_error([str(path), "--out", str(tmp_path / "o")])
    assert f"{path}:1" in message and "ImageNet Sketchy" in message and "imagenet_sketch" in message


def test_duplicates_within_and_across_files(tmp_path: Path) -> None:
    path = tmp_path / "eval_results.jsonl"
    path.write_text(
        datacomp_line("imagenet1k", "ImageNet 1k", {"acc1": 0.5})
        + datacomp_line("wds/imagenet1k", "ImageNet 1k", {"acc1": 0.5})
    )
    message = invoke_error([str(path), "--model", "ViT-B-32/x", "--out", str(tmp_path / "o")])
    assert f"{path}:1 and {path}:2" in message
    table = tmp_path / "b32.csv"
    table.write_text("name,pretrained,ImageNet 1k\nViT-B-32,openai,0.6332\n")
    cb = write_cb_json(
        tmp_path,
        cb_dump("imagenet1k", "ViT-B-32", "openai", "zeroshot_classification", {"acc1": 0.63}),
    )
    message = invoke_error([str(table), str(cb), "--out", str(tmp_path / "o")])
    assert f"{table}:2 and {cb}:1" in message


@pytest.mark.parametrize(
    ("value", "needle"),
    [(63.3, "percentage"), (-0.1, "[0, 1]"), (float("nan"), "nan")],
)
def test_accuracy_out_of_range_or_nan(tmp_path: Path, value: float, needle: str) -> None:
    path = write_cb_json(
        tmp_path,
        cb_dump("imagenet1k", "ViT-B-32", "openai", "zeroshot_classification", {"acc1": value}),
    )
    message = invoke_error([str(path), "--out", str(tmp_path / "o")])
    assert f"{path}:1" in message and needle in message and "acc1" in message
    csv_path = tmp_path / "t.csv"
    cell = "nan" if math.isnan(value) else str(value)
    csv_path.write_text(
        f"name,pretrained,ImageNet 1k,ObjectNet\nA,openai,0.6,0.4\nB,x,0.5,{cell}\n"
    )
    message = invoke_error([str(csv_path), "--out", str(tmp_path / "o")])
    assert f"{csv_path}:3" in message and "ObjectNet" in message


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "eval_results.jsonl"
    path.write_text(
        datacomp_line("imagenet1k", "ImageNet 1k", {"acc1": 0.5}) + '{"key": "mnist",\n'
    )
    message = invoke_error([str(path), "--out", str(tmp_path / "o")])
    assert f"{path}:2" in message and "malformed JSON" in message
    broken = tmp_path / "x.json"
    broken.write_text('{"dataset": "imagenet1k",\n "model": }')
    message = invoke_error([str(broken), "--out", str(tmp_path / "o")])
    assert f"{broken}:2" in message and "malformed JSON" in message


def test_empty_file_and_missing_key(tmp_path: Path) -> None:
    empty = tmp_path / "eval_results.jsonl"
    empty.write_text("\n")
    message = invoke_error([str(empty), "--out", str(tmp_path / "o")])
    assert str(empty) in message and "empty file" in message
    dump = cb_dump("imagenet1k", "ViT-B-32", "openai", "zeroshot_classification", {"acc1": 0.6})
    del dump["pretrained"]
    path = write_cb_json(tmp_path, {**dump, "pretrained": "x"})
    path.write_text(json.dumps(dump))
    message = invoke_error([str(path), "--out", str(tmp_path / "o")])
    assert f"{path}:1" in message and "'pretrained'" in message
    no_acc = tmp_path / "results.jsonl"
    no_acc.write_text(datacomp_line("mnist", "MNIST", {"acc5": 0.9}))
    message = invoke_error([str(no_acc), "--out", str(tmp_path / "o")])
    assert f"{no_acc}:1" in message and "acc1" in message
    header_only = tmp_path / "benchmark.csv"
    header_only.write_text("dataset,model,pretrained,task,acc1\n")
    message = invoke_error([str(header_only), "--out", str(tmp_path / "o")])
    assert str(header_only) in message and "no rows" in message
    message = invoke_error(["--out", str(tmp_path / "o")])
    assert "--openclip-table" in message
