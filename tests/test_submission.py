"""Submission bundles: a good bundle verifies (directory and .tar.gz); a changed, missing or
added file, a record edited behind a recomputed checksum, and incomparable results are
rejected with the file named. The same for a bundle of an imported model (a CLIP trained on the
candidate pool elsewhere), whose ER is checked against a hand fit of the testbed table."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import tarfile

import numpy as np
import polars as pl
import pytest
from result_records import ID_TASK, POOL_ID_TASK, SHIFT_TASK, on_line, write_baselines, write_run
from typer.testing import CliRunner

import curate.cli.imports  # noqa: F401  (registers import-results)
import curate.cli.results  # noqa: F401  (registers the commands tested here)
from curate.cli.app import app
from curate.core.errors import UserInputError
from curate.core.manifest import Manifest, produced_by
from curate.core.uid import load_subset, make_uid, save_subset
from curate.eval.external_er import external_effective_robustness
from curate.eval.external_results import load_openclip_table
from curate.eval.records import pack_correct, read_records, unpack_correct
from curate.eval.testbed import TESTBED_CSV
from curate.leaderboard.external import EXTERNAL_SETUP
from curate.submission import (
    CHECKSUMS_FILE,
    KIND_EXTERNAL,
    KIND_RUNS,
    BundleError,
    create_bundle,
    verify_bundle,
)

SLOPE, INTERCEPT = 0.8, -0.6


@pytest.fixture
def subset(tmp_path):
    """A candidate pool with two scored seeds; the baselines live in a separate folder."""
    pool = tmp_path / "pool"
    write_baselines(tmp_path / "baselines", SLOPE, INTERCEPT)
    subset = tmp_path / "subset"
    uids = [make_uid("demo", str(i)) for i in range(50)]
    save_subset(uids, subset / "uids.npy")  # the kept set, as build-pool writes it
    (subset / "recipe.yaml").write_text(
        "name: clip-score\nstages:\n  - clip_score: {threshold: 0.2}\n"
    )
    Manifest(
        name="candidate",
        kind="subset",
        source={"pool": str(pool), "pool_name": "pool", "recipe": "clip-score"},
        sample_count=len(uids),
        has_images=False,
        produced_by=produced_by("build-pool"),
    ).write(subset)
    for seed in (0, 1):
        write_run(
            subset,
            f"tiny-seed{seed}",
            {
                ID_TASK: 0.5 + 0.01 * seed,
                SHIFT_TASK: on_line(0.5, SLOPE, INTERCEPT, 0.05),
                POOL_ID_TASK: 0.4,
            },
            pool=str(subset),
            seed=seed,
        )
    return subset


def _bundle(subset, tmp_path, name="bundle"):
    return create_bundle(subset, tmp_path / name, baselines=[tmp_path / "baselines"])


def _rewrite_checksum(bundle, name):
    listing = bundle / CHECKSUMS_FILE
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    lines = [
        f"{digest}  {name}" if line.endswith(f"  {name}") else line
        for line in listing.read_text().splitlines()
    ]
    listing.write_text("\n".join(lines) + "\n")


def test_bundle_round_trip_and_claimed_er(subset, tmp_path):
    summary = _bundle(subset, tmp_path)
    bundle = summary.path
    assert summary.runs == ("tiny-seed0", "tiny-seed1") and len(summary.baselines) == 5
    for name in ("bundle.json", "config.json", "uids.npy", "recipe.yaml", "baseline_fit.json",
                 "effective_robustness.json", "results/tiny-seed0/results.jsonl",
                 "results/tiny-seed0/run.json", "baselines/baseline-0/results.jsonl"):  # fmt: skip
        assert (bundle / name).is_file(), name
    # checksums.sha256 is sha256sum's format and covers every other file
    lines = (bundle / CHECKSUMS_FILE).read_text().splitlines()
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(line.split("  ")[1] for line in lines) == [
        f for f in files if f != CHECKSUMS_FILE
    ]
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert load_subset(bundle / "uids.npy") == sorted(make_uid("demo", str(i)) for i in range(50))

    # the claimed ER equals an independent OLS on the baseline records
    points = []
    for path in sorted((bundle / "baselines").glob("*/results.jsonl")):
        accuracy = {r["dataset"]: r["metrics"]["acc1"] for r in read_records(path)}
        points.append((accuracy[ID_TASK], accuracy[SHIFT_TASK]))
    x, y = (np.log(np.array(v) / (1 - np.array(v))) for v in zip(*points, strict=True))
    slope, intercept = np.polyfit(x, y, 1)
    claims = json.loads((bundle / "effective_robustness.json").read_text())
    claim = claims[f"{ID_TASK} -> {SHIFT_TASK}"]
    assert claim["fit"]["slope"] == pytest.approx(slope, abs=1e-10)
    run = claim["runs"]["tiny-seed1"]
    expected = run["ood_accuracy"] - 1 / (
        1 + np.exp(-(slope * np.log(run["id_accuracy"] / (1 - run["id_accuracy"])) + intercept))
    )
    assert run["effective_robustness"] == pytest.approx(expected, abs=1e-10)
    assert claim["mean_effective_robustness"] == pytest.approx(0.05, abs=0.01)

    verified = verify_bundle(bundle)
    assert (
        verified.digest
        == summary.digest
        == hashlib.sha256((bundle / CHECKSUMS_FILE).read_bytes()).hexdigest()
    )


def test_tarball_bundle_verifies(subset, tmp_path):
    summary = create_bundle(subset, tmp_path / "bundle.tar.gz", baselines=[tmp_path / "baselines"])
    assert summary.path.is_file()
    assert verify_bundle(summary.path).digest == summary.digest
    result = CliRunner().invoke(app, ["verify", str(summary.path)])
    assert result.exit_code == 0 and "OK" in result.output


def test_verify_rejects_a_changed_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    with open(bundle / "recipe.yaml", "a") as handle:
        handle.write("  - dedup: {}\n")
    with pytest.raises(BundleError, match=r"recipe\.yaml: checksum mismatch"):
        verify_bundle(bundle)
    result = CliRunner().invoke(app, ["verify", str(bundle)])
    assert isinstance(result.exception, UserInputError)  # the entry point prints it, exit 2


def test_verify_rejects_a_missing_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    (bundle / "uids.npy").unlink()
    with pytest.raises(BundleError, match=r"uids\.npy: listed in checksums\.sha256 but missing"):
        verify_bundle(bundle)


def test_verify_rejects_an_added_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    shutil.copy(
        bundle / "results/tiny-seed0/results.jsonl", bundle / "results/tiny-seed0/extra.jsonl"
    )
    with pytest.raises(BundleError, match=r"extra\.jsonl: not listed"):
        verify_bundle(bundle)


def test_verify_rejects_an_edited_record_behind_a_recomputed_checksum(subset, tmp_path):
    """Raise the OOD accuracy of one run consistently (bits and acc1) and fix its checksum:
    the files agree with the checksums, but the claimed ER no longer follows from them."""
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed0/results.jsonl"
    records = read_records(bundle / name)
    for record in records:
        if record["dataset"] == SHIFT_TASK:
            n = record["metrics"]["n"]
            correct = unpack_correct(record["correct_bits"], n)
            correct[np.flatnonzero(~correct)[:40]] = True
            record["correct_bits"] = pack_correct(correct)
            record["metrics"]["acc1"] = float(correct.mean())
    (bundle / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _rewrite_checksum(bundle, name)
    with pytest.raises(BundleError, match=r"effective_robustness\.json.*tiny-seed0.*claimed"):
        verify_bundle(bundle)


def test_verify_rejects_acc1_that_disagrees_with_the_correct_bits(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed1/results.jsonl"
    text = (bundle / name).read_text()
    records = [json.loads(line) for line in text.splitlines()]
    records[0]["metrics"]["acc1"] += 0.1
    (bundle / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _rewrite_checksum(bundle, name)
    with pytest.raises(
        BundleError, match=r"tiny-seed1/results\.jsonl: .* disagrees with its correct_bits"
    ):
        verify_bundle(bundle)


def test_incomparable_results_are_refused_and_rejected(subset, tmp_path):
    write_run(
        subset, "other-setup", {ID_TASK: 0.5, SHIFT_TASK: 0.3, POOL_ID_TASK: 0.4},
        pool=str(subset), key="key-2",
    )  # fmt: skip
    with pytest.raises(UserInputError, match="not comparable: they differ in comparability_key"):
        _bundle(subset, tmp_path)

    shutil.rmtree(subset / "results" / "other-setup")
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed1/results.jsonl"
    text = (
        (bundle / name)
        .read_text()
        .replace('"comparability_key": "key-1"', '"comparability_key": "key-2"')
    )
    (bundle / name).write_text(text)
    _rewrite_checksum(bundle, name)
    with pytest.raises(
        BundleError, match=r"tiny-seed1/results\.jsonl: not comparable: comparability_key"
    ):
        verify_bundle(bundle)


def test_submit_needs_baselines(subset, tmp_path):
    with pytest.raises(UserInputError, match="no baseline runs found"):
        create_bundle(subset, tmp_path / "bundle")


# --- a CLIP trained on the candidate pool elsewhere, imported with `curate import-results` ---

MODEL = "ViT-B-32/candidate-s0"
EVAL_RESULTS = {  # DataComp's eval_results.jsonl: key -> acc1 (fractions)
    "imagenet1k": 0.634,
    "imagenetv2": 0.551,
    "imagenet_sketch": 0.402,
    "objectnet": 0.431,
    "imagenet-r": 0.695,
    "imagenet-a": 0.312,
    "cifar10": 0.912,
}
SHIFTS = ("imagenetv2", "imagenet_sketch", "objectnet", "imagenet-r", "imagenet-a")


def _imagenetv2_line(id_accuracy: float) -> float:
    """Predicted ImageNetV2 accuracy from the testbed CSV by hand: its fit set (STANDARD, full
    ImageNet >= 55 %, no subsampled/aws/batch64 models), np.polyfit in logit space."""
    column = "imagenetv2-matched-frequency-format-val"
    with open(TESTBED_CSV, newline="") as handle:
        points = [
            (float(r["val"]) / 100, float(r[column]) / 100)
            for r in csv.DictReader(handle)
            if r["val"]
            and r[column]
            and r["model_type"] == "STANDARD"
            and float(r["val"]) >= 55
            and not any(part in r["model"].lower() for part in ("subsample", "aws", "batch64"))
        ]
    x, y = (np.array(v) for v in zip(*points, strict=True))
    slope, intercept = np.polyfit(np.log(x / (1 - x)), np.log(y / (1 - y)), 1)
    return 1 / (1 + math.exp(-(slope * math.log(id_accuracy / (1 - id_accuracy)) + intercept)))


def _import(tmp_path, *args):
    result = CliRunner().invoke(app, ["import-results", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def imported(tmp_path):
    """DataComp's eval_results.jsonl of one CLIP, imported as MODEL."""
    jsonl = tmp_path / "eval" / "eval_results.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text(
        "".join(
            json.dumps({"key": key, "dataset": key, "metrics": {"acc1": acc, "acc5": None}}) + "\n"
            for key, acc in EVAL_RESULTS.items()
        )
    )
    _import(tmp_path, jsonl, "--model", MODEL, "--out", tmp_path / "external")
    return tmp_path / "external"


def _submit_external(subset, tmp_path, external, *extra, name="external-bundle"):
    out = tmp_path / name
    result = CliRunner().invoke(
        app, ["submit", str(subset), "--external", str(external), *extra, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out, result


def test_imported_model_round_trip(subset, tmp_path, imported):
    bundle, submitted = _submit_external(subset, tmp_path, imported)  # one model: no --model
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == ["bundle.json", "checksums.sha256", "config.json",
                     "effective_robustness.json", "external_results.parquet", "recipe.yaml",
                     "uids.npy"]  # fmt: skip
    assert load_subset(bundle / "uids.npy") == sorted(make_uid("demo", str(i)) for i in range(50))
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["kind"] == KIND_EXTERNAL and manifest["model"] == MODEL
    assert manifest["comparability_key"] == EXTERNAL_SETUP and manifest["subset"]["sample_count"]
    config = json.loads((bundle / "config.json").read_text())
    assert config["comparability_key"] == EXTERNAL_SETUP
    assert config["model"]["arch"] == "ViT-B-32" and config["model"]["pretrained"] == "candidate-s0"
    assert config["tasks"] == {"cifar10": 10000, "imagenet-a": 7500, "imagenet-r": 30000,
                               "imagenet1k": 50000, "imagenet_sketch": 50889,
                               "imagenetv2": 10000, "objectnet": 18574}  # fmt: skip
    assert (
        config["baseline"]["testbed_sha256"] == hashlib.sha256(TESTBED_CSV.read_bytes()).hexdigest()
    )
    rows = pl.read_parquet(bundle / "external_results.parquet")
    assert dict(zip(rows["task"], rows["accuracy"], strict=True)) == EVAL_RESULTS

    claims = json.loads((bundle / "effective_robustness.json").read_text())
    assert claims["comparability_key"] == EXTERNAL_SETUP and set(claims["shifts"]) == set(SHIFTS)
    v2 = claims["shifts"]["imagenetv2"]
    expected = EVAL_RESULTS["imagenetv2"] - _imagenetv2_line(EVAL_RESULTS["imagenet1k"])
    assert v2["effective_robustness"] == pytest.approx(expected, abs=1e-9)
    assert v2["x_axis"] == "val" and claims["shifts"]["objectnet"]["x_axis"].startswith("val (")
    average = claims["average"]
    assert average["effective_robustness"] == pytest.approx(
        np.mean([claims["shifts"][s]["effective_robustness"] for s in SHIFTS]), abs=1e-12
    )
    for row in [*claims["shifts"].values(), average]:
        assert row["er_low"] < row["effective_robustness"] < row["er_high"]
        assert row["extrapolated"] is False and "baseline fit" in row["interval_covers"]
    assert f"average: ER {100 * average['effective_robustness']:+.2f} points" in submitted.output

    summary = verify_bundle(bundle)
    assert summary.kind == KIND_EXTERNAL and summary.model == MODEL
    assert summary.effective_robustness == claims
    assert summary.digest == hashlib.sha256((bundle / CHECKSUMS_FILE).read_bytes()).hexdigest()
    result = CliRunner().invoke(app, ["verify", str(bundle)])
    assert result.exit_code == 0 and f"OK: {bundle}" in result.output and MODEL in result.output


def test_imported_model_from_the_openclip_table(subset, tmp_path):
    """A folder of 121 models needs --model; the bundle holds that model's rows only, and its
    ER is what the leaderboard computes for it among all the models."""
    _import(tmp_path, "--openclip-table", "--out", tmp_path / "openclip")
    result = CliRunner().invoke(
        app, ["submit", str(subset), "--external", str(tmp_path / "openclip"), "--out",
              str(tmp_path / "b")],
    )  # fmt: skip
    assert isinstance(result.exception, UserInputError)
    assert "holds 121 models; pass --model" in str(result.exception)
    with pytest.raises(UserInputError, match=r"no model 'ViT-B-32/opnai'.*ViT-B-32/openai"):
        create_bundle(
            subset, tmp_path / "b", external=tmp_path / "openclip", model="ViT-B-32/opnai"
        )

    model = "ViT-B-32/openai"
    bundle = tmp_path / "openclip-bundle.tar.gz"
    summary = create_bundle(subset, bundle, external=tmp_path / "openclip", model=model)
    assert bundle.is_file() and summary.model == model
    table = load_openclip_table()
    with tarfile.open(bundle) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".parquet"))
        rows = pl.read_parquet(archive.extractfile(member))
    assert rows["model"].unique().to_list() == [model]
    assert rows.height == table.filter(pl.col("model") == model).height == 38
    everyone = external_effective_robustness(table, n_boot=0).table.filter(pl.col("model") == model)
    claimed = summary.effective_robustness
    for row in everyone.iter_rows(named=True):
        mine = claimed["average"] if row["shift"] == "average" else claimed["shifts"][row["shift"]]
        assert mine["effective_robustness"] == pytest.approx(row["effective_robustness"], abs=1e-12)
    assert verify_bundle(bundle).digest == summary.digest


def test_tampered_claimed_er_fails_naming_the_file(subset, tmp_path, imported):
    bundle, _ = _submit_external(subset, tmp_path, imported)
    claims = json.loads((bundle / "effective_robustness.json").read_text())
    claims["shifts"]["imagenet-r"]["effective_robustness"] += 0.01
    (bundle / "effective_robustness.json").write_text(json.dumps(claims))
    with pytest.raises(BundleError, match=r"effective_robustness\.json: checksum mismatch"):
        verify_bundle(bundle)
    _rewrite_checksum(bundle, "effective_robustness.json")  # consistent files, false claim
    with pytest.raises(
        BundleError,
        match=r"effective_robustness\.json\.shifts\.imagenet-r\.effective_robustness: claimed",
    ):
        verify_bundle(bundle)


def test_tampered_imported_rows_fail(subset, tmp_path, imported):
    bundle, _ = _submit_external(subset, tmp_path, imported)
    name = "external_results.parquet"
    rows = pl.read_parquet(bundle / name)
    better = rows.with_columns(
        accuracy=pl.when(pl.col("task") == "imagenet-r").then(0.75).otherwise(pl.col("accuracy"))
    )
    better.write_parquet(bundle / name)
    with pytest.raises(BundleError, match=r"external_results\.parquet: checksum mismatch"):
        verify_bundle(bundle)
    _rewrite_checksum(bundle, name)  # the rows no longer give the claimed ER
    with pytest.raises(BundleError, match=r"effective_robustness\.json\.shifts\.imagenet-r\."):
        verify_bundle(bundle)
    pl.concat([rows, rows.with_columns(model=pl.lit("other/model"))]).write_parquet(bundle / name)
    _rewrite_checksum(bundle, name)
    with pytest.raises(BundleError, match=r"external_results\.parquet: 2 models"):
        verify_bundle(bundle)


def test_another_testbed_table_fails(subset, tmp_path, imported):
    bundle, _ = _submit_external(subset, tmp_path, imported)
    config = json.loads((bundle / "config.json").read_text())
    config["baseline"]["testbed_sha256"] = "0" * 64
    (bundle / "config.json").write_text(json.dumps(config))
    _rewrite_checksum(bundle, "config.json")
    with pytest.raises(BundleError, match=r"config\.json: baseline\.testbed_sha256 '0+' is not"):
        verify_bundle(bundle)


def test_own_runs_and_an_imported_model_never_mix(subset, tmp_path, imported):
    result = CliRunner().invoke(
        app, ["submit", str(subset), "--external", str(imported), "--results", str(subset),
              "--out", str(tmp_path / "mixed")],
    )  # fmt: skip
    assert isinstance(result.exception, UserInputError)
    assert "either --external" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(UserInputError, match="--model 'ViT-B-32/x' names an imported model"):
        create_bundle(subset, tmp_path / "mixed", model="ViT-B-32/x")
    with pytest.raises(UserInputError, match=r"not a `curate import-results` folder"):
        create_bundle(subset, tmp_path / "mixed", external=tmp_path / "baselines")

    # a bundle whose files mix both setups fails even with consistent checksums
    runs_bundle = _bundle(subset, tmp_path).path
    assert json.loads((runs_bundle / "bundle.json").read_text())["kind"] == KIND_RUNS
    bundle, _ = _submit_external(subset, tmp_path, imported)
    shutil.copytree(runs_bundle / "results", bundle / "results")
    (bundle / CHECKSUMS_FILE).write_text(
        "".join(
            f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(bundle).as_posix()}\n"
            for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS_FILE
        )
    )
    with pytest.raises(BundleError, match=r"results: curate's own runs in a bundle of an imported"):
        verify_bundle(bundle)


def test_a_bundle_without_kind_is_curates_own_runs(subset, tmp_path):
    """Bundles made before bundle.json had ``kind`` still verify."""
    bundle = _bundle(subset, tmp_path).path
    manifest = json.loads((bundle / "bundle.json").read_text())
    del manifest["kind"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    _rewrite_checksum(bundle, "bundle.json")
    assert verify_bundle(bundle).kind == KIND_RUNS
