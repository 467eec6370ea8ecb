"""ER of published CLIPs on the testbed's lines: the full-ImageNet fallback against an independent
fit, the extrapolation flag, a group summary against a hand computation, the intervals, and the
`curate robustness-by-data` command end to end on the shipped open_clip table."""

from __future__ import annotations

import csv
import math

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import curate.cli.commands  # noqa: F401  (registers every command)
from curate.cli.app import app
from curate.core.errors import OutputExistsError
from curate.eval.external_er import (
    AVERAGE,
    SHIFT_TO_TESTBED,
    X_AXIS_FALLBACK,
    external_effective_robustness,
)
from curate.eval.robustness_by_data import robustness_by_data
from curate.eval.testbed import TESTBED_CSV

SHIFTS = list(SHIFT_TO_TESTBED)


def _reference_line(column: str, id_accuracy: float) -> float:
    """The testbed's fit set on x = val (its `no-subsample` rule), fitted with np.polyfit;
    returns the predicted shift accuracy (fraction) at ``id_accuracy``."""
    with open(TESTBED_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    points = [
        (float(r["val"]), float(r[column]))
        for r in rows
        if r["val"]
        and r[column]
        and r["model_type"] == "STANDARD"
        and not any(part in r["model"].lower() for part in ("subsample", "aws", "batch64"))
        and float(r["val"]) >= 55
        and not (column == "imagenet-a" and r["model"] == "resnet50")
    ]
    if column == "imagenet-a":  # two pieces, split at resnet50's val accuracy
        pivot = next(float(r["val"]) for r in rows if r["model"] == "resnet50")
        below = 100 * id_accuracy < pivot
        points = [p for p in points if (p[0] < pivot) == below]
    x = np.array([p[0] for p in points]) / 100
    y = np.array([p[1] for p in points]) / 100
    slope, intercept = np.polyfit(np.log(x / (1 - x)), np.log(y / (1 - y)), 1)
    t = slope * math.log(id_accuracy / (1 - id_accuracy)) + intercept
    return 1 / (1 + math.exp(-t))


def _toy_table(models: dict[str, tuple[str, float, dict[str, float]]], n_test: int = 10_000):
    """Long external table: model -> (training data, ImageNet accuracy, shift accuracies)."""
    rows = []
    for model, (data, id_acc, shifts) in models.items():
        for task, accuracy in {"imagenet1k": id_acc, **shifts}.items():
            rows.append(
                {"model": model, "arch": "ViT-B-32", "pretrained": model.split("/")[1],
                 "training_data": data, "training_data_scale": None, "training_filter": None,
                 "samples_seen": None, "task": task, "accuracy": accuracy, "n_test": n_test}
            )  # fmt: skip
    return pl.DataFrame(rows, schema_overrides={"training_data_scale": pl.String,
                                                "training_filter": pl.String,
                                                "samples_seen": pl.Int64})  # fmt: skip


def _shifts(v2, sketch, objectnet, r, a):
    return dict(zip(SHIFTS, (v2, sketch, objectnet, r, a), strict=True))


TOY = {
    "ViT-B-32/x1": ("X", 0.62, _shifts(0.55, 0.40, 0.45, 0.70, 0.30)),
    "ViT-B-32/x2": ("X", 0.70, _shifts(0.62, 0.48, 0.52, 0.78, 0.45)),
    "ViT-B-32/x3": ("X", 0.78, _shifts(0.70, 0.55, 0.60, 0.85, 0.62)),
    "ViT-B-32/y1": ("Y", 0.66, _shifts(0.57, 0.35, 0.40, 0.60, 0.25)),
    "ViT-B-32/tiny": ("X", 0.05, _shifts(0.04, 0.02, 0.03, 0.06, 0.02)),
}


def test_full_imagenet_fallback_is_used_labelled_and_equals_an_independent_fit():
    er = external_effective_robustness(_toy_table(TOY), n_boot=0).table
    for shift in SHIFTS:
        rows = er.filter(pl.col("shift") == shift)
        expected_axis = "val" if shift in ("imagenetv2", "imagenet_sketch") else X_AXIS_FALLBACK
        assert set(rows["x_axis"]) == {expected_axis}
        for model, (_, id_acc, shifts) in TOY.items():
            row = rows.filter(pl.col("model") == model).row(0, named=True)
            predicted = _reference_line(SHIFT_TO_TESTBED[shift], id_acc)
            assert row["predicted_ood_accuracy"] == pytest.approx(predicted, abs=1e-9)
            assert row["effective_robustness"] == pytest.approx(shifts[shift] - predicted, abs=1e-9)
    a_pieces = set(er.filter(pl.col("shift") == "imagenet-a")["baseline_piece"])
    assert a_pieces == {"< 76.13", "> 76.13"}  # x2 below resnet50's val accuracy, x3 above


def test_model_outside_the_fit_range_is_flagged_and_left_out_of_group_numbers():
    result = robustness_by_data(_toy_table(TOY), n_boot=0)
    flagged = result.models.filter(pl.col("model") == "ViT-B-32/tiny")
    assert flagged["extrapolated"].all() and flagged.height == 6  # 5 shifts + average
    assert flagged["effective_robustness"].is_not_null().all()  # reported, marked
    inside = result.models.filter(pl.col("model") != "ViT-B-32/tiny")
    assert not inside["extrapolated"].any()
    x = result.by_data.filter((pl.col("training_data") == "X") & (pl.col("shift") == AVERAGE))
    assert x["n"][0] == 3 and x["n_extrapolated_excluded"][0] == 1
    assert "ViT-B-32/tiny" not in x["models"][0]
    assert any("1 lie outside" in line for line in result.reading)
    with_it = robustness_by_data(_toy_table(TOY), n_boot=0, include_extrapolated=True)
    x_all = with_it.by_data.filter((pl.col("training_data") == "X") & (pl.col("shift") == AVERAGE))
    assert x_all["n"][0] == 4


def test_group_summary_equals_a_hand_computation():
    result = robustness_by_data(_toy_table(TOY), n_boot=0)
    members = ["ViT-B-32/x1", "ViT-B-32/x2", "ViT-B-32/x3"]
    per_model = {
        m: [TOY[m][2][s] - _reference_line(SHIFT_TO_TESTBED[s], TOY[m][1]) for s in SHIFTS]
        for m in members
    }
    for index, shift in enumerate([*SHIFTS, AVERAGE]):
        values = np.array(
            [np.mean(v) if shift == AVERAGE else v[index] for v in per_model.values()]
        )
        row = result.by_data.filter(
            (pl.col("training_data") == "X") & (pl.col("shift") == shift)
        ).row(0, named=True)
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert row["std"] == pytest.approx(values.std(ddof=1), abs=1e-9)
        assert row["min"] == pytest.approx(values.min(), abs=1e-9)
        assert row["max"] == pytest.approx(values.max(), abs=1e-9)
    y = result.by_data.filter((pl.col("training_data") == "Y") & (pl.col("shift") == AVERAGE))
    assert y["n"][0] == 1 and y["std"][0] is None


def test_interval_covers_test_sampling_and_fit_and_is_seeded():
    small = external_effective_robustness(_toy_table(TOY, n_test=1_000), n_boot=400, seed=1)
    huge = external_effective_robustness(_toy_table(TOY, n_test=10**9), n_boot=400, seed=1)
    again = external_effective_robustness(_toy_table(TOY, n_test=1_000), n_boot=400, seed=1)
    assert small.table.equals(again.table)
    for table in (small.table, huge.table):
        assert (table["er_low"] <= table["effective_robustness"]).all()
        assert (table["effective_robustness"] <= table["er_high"]).all()
        assert set(table["interval_covers"]) == {
            "test-set sampling + baseline fit; no training-seed noise: one published "
            "checkpoint per model"
        }
    width_small = (small.table["er_high"] - small.table["er_low"]).mean()
    width_huge = (huge.table["er_high"] - huge.table["er_low"]).mean()
    assert width_huge > 0  # the baseline fit's own uncertainty remains
    assert width_small > 1.5 * width_huge  # 1,000 test images add binomial noise


def test_command_runs_end_to_end_on_the_shipped_table(tmp_path):
    out = tmp_path / "real"
    result = CliRunner().invoke(app, ["robustness-by-data", "--out", str(out), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "do not separate" in result.output
    assert "val (class-restricted unavailable)" in result.output
    for name in ("models", "by_data", "by_arch", "datacomp_filters", "separation"):
        assert (out / f"{name}.parquet").is_file() and (out / f"{name}.csv").is_file()
    assert (out / "real_clips_er.png").stat().st_size > 10_000
    models = pl.read_parquet(out / "models.parquet")
    average = models.filter(pl.col("shift") == AVERAGE)
    assert average["model"].n_unique() == average.height == 118  # 121 less 3 duplicates
    assert "RN50/openai" not in average["model"].to_list()  # = RN50-quickgelu/openai
    filters = pl.read_parquet(out / "datacomp_filters.parquet").filter(pl.col("shift") == AVERAGE)
    assert filters.height == 7  # CommonPool-L: none, basic, text, image, LAION, CLIP; DataComp-L
    by_arch = pl.read_parquet(out / "by_arch.parquet")
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14"} == set(by_arch["arch_family"])
    again = CliRunner().invoke(app, ["robustness-by-data", "--out", str(out), "--bootstrap", "0"])
    assert isinstance(again.exception, OutputExistsError)


def test_report_includes_the_published_clips_section(tmp_path):
    from result_records import write_baselines

    from curate.report.build import build_report

    write_baselines(tmp_path / "runs" / "baselines", slope=0.8, intercept=-0.6)
    result = build_report(tmp_path / "runs", tmp_path / "report", n_boot=20, external="openclip")
    page = result.index.read_text("utf-8")
    assert 'id="real-clips"' in page and "do not separate" in page
    assert (tmp_path / "report" / "real_clips" / "real_clips_er.png").is_file()
    assert (tmp_path / "report" / "real_clips" / "robustness_by_data.md").is_file()
