"""Effective robustness: hand-computed cases, the testbed fit against an independent OLS, the
multi-ID fit against numpy lstsq, and the bootstrap / seed intervals on simulations."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest
from result_records import ID_TASK, POOL_ID_TASK, SHIFT_TASK, run_result
from scipy import stats

from curate.core.errors import UserInputError
from curate.eval import testbed
from curate.eval.effective_robustness import (
    ACCURACY_EPS,
    effective_robustness,
    fit_logit_line,
    fit_logit_plane,
    inverse_logit,
    logit,
    multi_id_effective_robustness,
)
from curate.eval.er_uncertainty import er_difference, estimate_er
from curate.eval.testbed import TESTBED_CSV, TESTBED_SHIFTS


def test_logit_matches_formula_and_is_finite_at_0_and_1():
    for p in (0.01, 0.3, 0.5, 0.9):
        assert logit(p) == pytest.approx(math.log(p / (1 - p)), abs=1e-12)
        assert inverse_logit(math.log(p / (1 - p))) == pytest.approx(p, abs=1e-12)
    assert logit(0.0) == pytest.approx(math.log(ACCURACY_EPS / (1 - ACCURACY_EPS)))
    assert logit(1.0) == pytest.approx(-logit(0.0))
    assert np.isfinite(logit([0.0, 1.0])).all()


def test_points_on_a_known_logit_line_have_zero_er_and_exact_fit():
    slope, intercept = 0.7, -0.4
    ids = np.array([0.2, 0.35, 0.5, 0.65, 0.8])
    oods = 1 / (1 + np.exp(-(slope * np.log(ids / (1 - ids)) + intercept)))
    fit = fit_logit_line(ids, oods)
    assert fit.slope == pytest.approx(slope, abs=1e-12)
    assert fit.intercept == pytest.approx(intercept, abs=1e-12)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.n_points == 5
    for id_acc, ood_acc in zip(ids, oods, strict=True):
        assert effective_robustness(id_acc, ood_acc, fit).value == pytest.approx(0.0, abs=1e-12)


def test_point_above_the_line_has_er_equal_to_the_gap_in_accuracy_units():
    fit = fit_logit_line([0.2, 0.8], [0.1, 0.5])  # two points: the line passes through both
    # Hand computation: slope = (logit .5 - logit .1) / (logit .8 - logit .2) = ln 9 / (2 ln 4)
    assert fit.slope == pytest.approx(math.log(9) / (2 * math.log(4)), abs=1e-12)
    id_acc = 0.5  # logit 0: predicted = sigmoid(intercept), intercept = mean of the y logits
    predicted = 1 / (1 + math.exp(-0.5 * (math.log(1 / 9) + 0.0)))
    er = effective_robustness(id_acc, predicted + 0.05, fit)
    assert er.predicted_ood_accuracy == pytest.approx(predicted, abs=1e-12)
    assert er.value == pytest.approx(0.05, abs=1e-12)
    assert er.fit is fit


def test_a_fit_needs_two_baselines_of_different_id_accuracy():
    with pytest.raises(UserInputError, match="at least 2"):
        fit_logit_line([0.5], [0.4])
    with pytest.raises(UserInputError, match="same ID accuracy"):
        fit_logit_line([0.5, 0.5], [0.4, 0.3])


# The testbed's fit sets, re-derived here from its plotting scripts (modestyachts/imagenet-testbed
# plotting/paper_*.py): (x column, x cutoff, names hidden from the plot, split at resnet50's x).
_TESTBED_RULES = {
    "imagenetv2-matched-frequency-format-val": ("val", 55, (), False),
    "imagenet-sketch": ("val", 55, (), False),
    "objectnet-1.0-beta": ("val-on-objectnet-classes", 55, (), False),
    "imagenet-r": ("val-on-imagenet-r-classes", 75, (), False),
    "imagenet-a": ("val-on-imagenet-a-classes", 75, ("resnet50",), True),
}
# published by the testbed's plots (scipy.stats.linregress on its fit set): n, slope, intercept
_TESTBED_EXPECTED = {
    "imagenetv2-matched-frequency-format-val": [(85, 0.923228773, -0.4976898817)],
    "imagenet-sketch": [(85, 1.070915414, -2.370072913)],
    "objectnet-1.0-beta": [(85, 0.9809103795, -1.928288907)],
    "imagenet-r": [(80, 0.6368439843, -2.10771562)],
    "imagenet-a": [(33, 0.6894464991, -5.140046172), (51, 2.955959517, -10.27739709)],
}


def _testbed_rows() -> list[dict[str, str]]:
    with open(TESTBED_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def _independent_testbed_pieces(shift: str, x_column: str | None = None):
    """The testbed's fit set(s) as (model, x%, y%) lists, read with the csv module."""
    column, cutoff, hidden, split = _TESTBED_RULES[shift]
    if x_column is not None:  # the testbed's `--option no-subsample`: x = val, shown at val >= 55
        column, cutoff = x_column, 55
    rows = _testbed_rows()
    chosen = [
        (row["model"], float(row[column]), float(row[shift]))
        for row in rows
        if row[column]
        and row[shift]
        and row["model_type"] == "STANDARD"
        and "subsample" not in row["model"].lower()
        and "aws" not in row["model"].lower()
        and "batch64" not in row["model"].lower()
        and row["model"].lower() not in hidden
        and float(row[column]) >= cutoff
    ]
    if not split:
        return [chosen]
    pivot = next(float(row[column]) for row in rows if row["model"] == "resnet50")
    return [[c for c in chosen if c[1] < pivot], [c for c in chosen if c[1] > pivot]]


def _polyfit_logit(points) -> tuple[float, float]:
    x = np.array([p[1] for p in points]) / 100
    y = np.array([p[2] for p in points]) / 100
    slope, intercept = np.polyfit(np.log(x / (1 - x)), np.log(y / (1 - y)), 1)
    return float(slope), float(intercept)


@pytest.mark.parametrize("shift", sorted(TESTBED_SHIFTS))
def test_testbed_fit_equals_an_independent_polyfit_and_the_published_numbers(shift):
    fit = testbed.testbed_fit(shift)
    pieces = _independent_testbed_pieces(shift)
    assert len(fit.pieces) == len(pieces) == len(_TESTBED_EXPECTED[shift])
    assert set(fit.models) == {p[0] for piece in pieces for p in piece}
    for line, points, (n, slope, intercept) in zip(
        fit.pieces, pieces, _TESTBED_EXPECTED[shift], strict=True
    ):
        reference = _polyfit_logit(points)
        assert line.n_points == len(points) == n
        assert line.slope == pytest.approx(reference[0], abs=1e-6)
        assert line.intercept == pytest.approx(reference[1], abs=1e-6)
        assert line.slope == pytest.approx(slope, abs=1e-6)
        assert line.intercept == pytest.approx(intercept, abs=1e-6)
    assert "resnet50_aws_baseline" not in fit.models
    assert "resnet50_imagenet_100percent_batch64_original_images" not in fit.models


# ER (percent points) against the testbed's line, recomputed from its published fit
@pytest.mark.parametrize(
    ("shift", "model"),
    [
        ("imagenetv2-matched-frequency-format-val", "resnet50_clip_zeroshot"),
        ("imagenet-sketch", "vit_b_32_clip_zeroshot"),
        ("objectnet-1.0-beta", "resnet152"),
        ("imagenet-r", "efficientnet-l2-noisystudent"),
        ("imagenet-a", "resnet152"),  # x below resnet50's: the lower piece
        ("imagenet-a", "vit_b_32_clip_zeroshot"),  # above: the upper piece
    ],
)
def test_testbed_er_of_one_model_equals_the_hand_computation(shift, model):
    column = _TESTBED_RULES[shift][0]
    row = next(row for row in _testbed_rows() if row["model"] == model)
    x, y = float(row[column]), float(row[shift])
    pieces = _independent_testbed_pieces(shift)
    piece = pieces[0] if len(pieces) == 1 or x < 91.86 else pieces[1]
    slope, intercept = _polyfit_logit(piece)
    t = slope * math.log(x / (100 - x)) + intercept
    expected = y - 100 / (1 + math.exp(-t))
    er = testbed.testbed_fit(shift).effective_robustness(x / 100, y / 100)
    assert 100 * er.value == pytest.approx(expected, abs=1e-6)


def test_testbed_er_matches_the_research_note_for_clip_on_imagenet_a():
    # from an independent scipy run of the testbed's rule: RN50 CLIP zero-shot, ImageNet-A
    row = next(row for row in _testbed_rows() if row["model"] == "resnet50_clip_zeroshot")
    er = testbed.testbed_fit("imagenet-a").effective_robustness(
        float(row["val-on-imagenet-a-classes"]) / 100, float(row["imagenet-a"]) / 100
    )
    assert 100 * er.value == pytest.approx(20.92486292, abs=1e-6)


@pytest.mark.parametrize("shift", ["objectnet-1.0-beta", "imagenet-r", "imagenet-a"])
def test_full_imagenet_axis_uses_the_same_models_and_an_independent_fit(shift):
    class_restricted = testbed.testbed_fit(shift)
    on_val = testbed.testbed_fit(shift, x_column="val")
    assert on_val.x_column == "val"
    assert set(on_val.models) == set(class_restricted.models)  # no cutoff bites on this table
    pieces = _independent_testbed_pieces(shift, x_column="val")
    for line, points in zip(on_val.pieces, pieces, strict=True):
        slope, intercept = _polyfit_logit(points)
        assert line.n_points == len(points)
        assert line.slope == pytest.approx(slope, abs=1e-6)
        assert line.intercept == pytest.approx(intercept, abs=1e-6)
    if shift == "imagenet-a":
        assert on_val.pivot == pytest.approx(0.7613, abs=1e-4)  # resnet50's val accuracy


@pytest.mark.parametrize(
    "shift", sorted(name for name, shift in TESTBED_SHIFTS.items() if shift.split_at_model is None)
)
def test_single_line_testbed_fit_matches_scipy_linregress(shift):
    points = [p for piece in _independent_testbed_pieces(shift) for p in piece]
    x = np.array([p[1] for p in points]) / 100
    y = np.array([p[2] for p in points]) / 100
    reference = stats.linregress(np.log(x / (1 - x)), np.log(y / (1 - y)))
    (fit,) = testbed.testbed_fit(shift).pieces
    assert fit.n_points == len(points)
    assert fit.slope == pytest.approx(reference.slope, abs=1e-10)
    assert fit.intercept == pytest.approx(reference.intercept, abs=1e-10)
    assert fit.r_squared == pytest.approx(reference.rvalue**2, abs=1e-10)


def test_testbed_imagenetv2_fit_is_the_tight_published_trend():
    (fit,) = testbed.testbed_fit("imagenetv2-matched-frequency-format-val").pieces
    assert fit.r_squared > 0.99  # ImageNetV2 is the textbook "accuracy on the line" case
    assert 0.85 < fit.slope < 1.0


def test_multi_id_fit_matches_numpy_lstsq():
    rng = np.random.default_rng(3)
    id_accuracies = rng.uniform(0.2, 0.8, size=(12, 2))
    ood = rng.uniform(0.1, 0.6, size=12)
    fit = fit_logit_plane(id_accuracies, ood)
    x = np.log(id_accuracies / (1 - id_accuracies))
    y = np.log(ood / (1 - ood))
    design = np.column_stack([x, np.ones(12)])
    reference, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert fit.coefficients == pytest.approx(tuple(reference[:2]), abs=1e-10)
    assert fit.intercept == pytest.approx(reference[2], abs=1e-10)
    residual = y - design @ reference
    assert fit.r_squared == pytest.approx(1 - residual @ residual / np.sum((y - y.mean()) ** 2))
    assert fit.rank == 3 and fit.well_determined


def test_single_id_er_positive_but_multi_id_er_zero_when_pool_id_explains_it():
    """OOD accuracy depends on both ID sets (Shi et al.'s premise). A model strong on the
    second ID set looks effectively robust against ID-1 alone, but not against both."""
    rng = np.random.default_rng(0)
    id1 = rng.uniform(0.3, 0.7, size=10)
    id2 = rng.uniform(0.2, 0.4, size=10)  # baselines: weak on the pool distribution

    def ood_of(a, b):
        return inverse_logit(0.6 * logit(a) + 0.6 * logit(b) - 0.2)

    baselines_ood = ood_of(id1, id2)
    pool_model = (0.5, 0.75)  # strong on the pool's own held-out data
    pool_ood = float(ood_of(*pool_model))
    single = effective_robustness(pool_model[0], pool_ood, fit_logit_line(id1, baselines_ood))
    plane = fit_logit_plane(np.column_stack([id1, id2]), baselines_ood)
    multi = multi_id_effective_robustness(pool_model, pool_ood, plane)
    assert single.value > 0.1
    assert multi.value == pytest.approx(0.0, abs=1e-9)
    assert plane.coefficients == pytest.approx((0.6, 0.6), abs=1e-9)
    assert plane.r_squared == pytest.approx(1.0)


SLOPE, INTERCEPT, TRUE_GAP = 0.8, -0.6, 0.04


def _simulated_er(n_images: int, sim: int, n_boot: int = 200):
    """Baselines exactly on the line in expectation, one pool TRUE_GAP above it; per-image
    correctness drawn at random, so the measured ER scatters around the true ER."""
    rng = np.random.default_rng(sim)

    def draw(p):
        return rng.random(n_images) < p

    baselines = []
    for index, id_p in enumerate((0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
        ood_p = float(inverse_logit(SLOPE * logit(id_p) + INTERCEPT))
        baselines.append(
            run_result(f"b{index}", {ID_TASK: draw(id_p), SHIFT_TASK: draw(ood_p)}, baseline=True)
        )
    pool_id = 0.55
    pool_ood = float(inverse_logit(SLOPE * logit(pool_id) + INTERCEPT)) + TRUE_GAP
    pool = run_result("pool", {ID_TASK: draw(pool_id), SHIFT_TASK: draw(pool_ood)})
    return estimate_er([pool], baselines, ID_TASK, SHIFT_TASK, n_boot=n_boot, seed=sim)


def test_bootstrap_interval_covers_the_true_er_and_narrows_with_more_images():
    estimates = [_simulated_er(1000, sim) for sim in range(30)]
    assert all(e.baseline_refit and e.interval.method == "bootstrap-percentile" for e in estimates)
    covered = sum(e.interval.low <= TRUE_GAP <= e.interval.high for e in estimates)
    assert covered >= 25  # nominal 95% of 30 = 28.5; a broken interval covers far less
    widths = {
        n: np.mean(
            [e.interval.high - e.interval.low for e in (_simulated_er(n, s) for s in range(5))]
        )
        for n in (500, 4000)
    }
    assert widths[4000] < 0.6 * widths[500]  # ~ sqrt(8) narrower in theory


def test_fit_is_held_fixed_when_baselines_carry_no_correctness():
    rng = np.random.default_rng(1)
    baselines = [
        run_result(
            f"b{i}",
            {ID_TASK: rng.random(500) < p, SHIFT_TASK: rng.random(500) < p - 0.15},
            baseline=True,
            with_bits=False,
        )
        for i, p in enumerate((0.4, 0.55, 0.7))
    ]
    pool = run_result("p", {ID_TASK: rng.random(500) < 0.5, SHIFT_TASK: rng.random(500) < 0.4})
    estimate = estimate_er([pool], baselines, ID_TASK, SHIFT_TASK, n_boot=200)
    assert not estimate.baseline_refit
    assert estimate.interval.low < estimate.mean < estimate.interval.high


def test_seed_interval_is_the_t_interval_when_no_correctness_is_recorded():
    rng = np.random.default_rng(2)
    baselines = [
        run_result(f"b{i}", {ID_TASK: rng.random(800) < p, SHIFT_TASK: rng.random(800) < p - 0.2},
                   baseline=True)
        for i, p in enumerate((0.4, 0.5, 0.6, 0.7))
    ]  # fmt: skip
    seeds = [
        run_result(f"s{s}", {ID_TASK: rng.random(800) < 0.55, SHIFT_TASK: rng.random(800) < 0.42},
                   seed=s, with_bits=False)
        for s in range(4)
    ]  # fmt: skip
    estimate = estimate_er(seeds, baselines, ID_TASK, SHIFT_TASK)
    per_seed = np.array(estimate.per_seed)
    low, high = stats.t.interval(0.95, 3, loc=per_seed.mean(), scale=stats.sem(per_seed))
    assert estimate.interval.method == "t-seeds"
    assert estimate.n_seeds == 4 and estimate.std == pytest.approx(per_seed.std(ddof=1))
    assert (estimate.interval.low, estimate.interval.high) == pytest.approx((low, high))


def test_difference_between_pools_is_significant_only_when_it_is_real():
    rng = np.random.default_rng(4)
    n = 4000
    baselines = [
        run_result(
            f"b{i}",
            {
                ID_TASK: rng.random(n) < p,
                SHIFT_TASK: rng.random(n) < inverse_logit(0.8 * logit(p) - 0.6),
            },
            baseline=True,
        )
        for i, p in enumerate((0.3, 0.45, 0.6, 0.75))
    ]
    on_line = float(inverse_logit(0.8 * logit(0.55) - 0.6))

    def pool(name, gap, seed):
        return run_result(
            name,
            {ID_TASK: rng.random(n) < 0.55, SHIFT_TASK: rng.random(n) < on_line + gap},
            seed=seed,
        )

    robust = [pool(f"r{s}", 0.10, s) for s in range(2)]
    plain = [pool(f"p{s}", 0.0, s) for s in range(2)]
    plain_again = [pool(f"q{s}", 0.0, s) for s in range(2)]
    real = er_difference(robust, plain, baselines, ID_TASK, SHIFT_TASK, n_boot=300)
    null = er_difference(plain_again, plain, baselines, ID_TASK, SHIFT_TASK, n_boot=300)
    assert real.difference == pytest.approx(0.10, abs=0.03)
    assert real.significant and real.interval.low > 0
    assert not null.significant and null.interval.low < 0 < null.interval.high


def test_multi_id_estimate_uses_pool_holdout_as_second_id_set():
    from curate.eval.er_uncertainty import estimate_multi_id_er

    rng = np.random.default_rng(5)
    n = 2000
    runs = []
    for i, (a, b) in enumerate([(0.3, 0.2), (0.5, 0.25), (0.7, 0.3), (0.4, 0.35), (0.6, 0.22)]):
        ood = float(inverse_logit(0.6 * logit(a) + 0.6 * logit(b) - 0.2))
        runs.append(
            run_result(
                f"b{i}",
                {
                    ID_TASK: rng.random(n) < a,
                    POOL_ID_TASK: rng.random(n) < b,
                    SHIFT_TASK: rng.random(n) < ood,
                },
                baseline=True,
            )
        )
    estimate = estimate_multi_id_er(runs[:2], runs, (ID_TASK, POOL_ID_TASK), SHIFT_TASK)
    assert estimate.fit.n_points == 5 and estimate.fit.id_tasks == (ID_TASK, POOL_ID_TASK)
    assert estimate.n_seeds == 2 and abs(estimate.mean) < 0.05


def test_multi_id_fit_refuses_an_exact_or_degenerate_plane():
    three = np.array([[0.2, 0.3], [0.4, 0.35], [0.5, 0.6]])
    with pytest.raises(UserInputError, match="at least 4 baseline models, got 3"):
        fit_logit_plane(three, np.array([0.1, 0.2, 0.3]))
    collinear = np.array([[0.2, 0.2], [0.3, 0.3], [0.4, 0.4], [0.5, 0.5]])
    with pytest.raises(UserInputError, match="move together"):
        fit_logit_plane(collinear, np.array([0.1, 0.2, 0.3, 0.35]))


def test_single_id_line_uses_only_id_only_baselines_and_the_plane_uses_every_family():
    """A second baseline family (models on the pool's own distribution) exists for the
    multi-ID plane; it lies on another line and must not bend the single-ID fit."""
    from curate.eval.baselines import tiny_baseline_fit, tiny_baseline_plane

    rng = np.random.default_rng(6)
    n = 3000

    def point(name, a, b, ood, family):
        return run_result(
            name,
            {ID_TASK: rng.random(n) < a, POOL_ID_TASK: rng.random(n) < b,
             SHIFT_TASK: rng.random(n) < ood},
            baseline=True, family=family,
        )  # fmt: skip

    id_only = [
        point(f"i{i}", p, p - 0.1, float(inverse_logit(0.8 * logit(p) - 0.6)), "id")
        for i, p in enumerate((0.3, 0.45, 0.6, 0.75))
    ]
    pool_family = [
        point(f"p{i}", p, p + 0.1, float(inverse_logit(0.8 * logit(p) - 0.6)) + 0.15, "pool")
        for i, p in enumerate((0.35, 0.5, 0.65))
    ]
    fit = tiny_baseline_fit(id_only + pool_family, ID_TASK, SHIFT_TASK)
    alone = tiny_baseline_fit(id_only, ID_TASK, SHIFT_TASK)
    assert fit.n_points == 4 and (fit.slope, fit.intercept) == (alone.slope, alone.intercept)
    assert fit.slope == pytest.approx(0.8, abs=0.1)
    plane = tiny_baseline_plane(id_only + pool_family, (ID_TASK, POOL_ID_TASK), SHIFT_TASK)
    assert plane.n_points == 7
    pool_run = [point("x", 0.5, 0.6, float(inverse_logit(0.8 * logit(0.5) - 0.6)), "id")]
    pool_run = [replace(pool_run[0], baseline=False, baseline_family=None)]
    single = estimate_er(pool_run, id_only + pool_family, ID_TASK, SHIFT_TASK, n_boot=50)
    assert single.fit.n_points == 4 and abs(single.mean) < 0.04


def test_testbed_plot_draws_imagenet_a_as_the_testbeds_two_lines(tmp_path):
    from curate.eval.effective_robustness import logit
    from curate.report.plots import fit_segments, testbed_plot, write_plots

    fit = testbed.testbed_fit("imagenet-a")
    pair = testbed_plot("imagenet-a")
    line = np.linspace(float(logit(0.5)), float(logit(0.97)), 200)  # the split: 91.86 %
    (low_x, low_y, low_label), (high_x, high_y, high_label) = fit_segments(pair, line)
    pivot = float(logit(fit.pivot))
    assert low_x.max() == pytest.approx(pivot) and high_x.min() == pytest.approx(pivot)
    for (xs, ys), piece in zip([(low_x, low_y), (high_x, high_y)], fit.pieces, strict=True):
        assert np.allclose(ys, piece.slope * xs + piece.intercept)
    assert "ID < 91.86 %" in low_label and f"n {fit.pieces[1].n_points}" in high_label
    ((xs, ys, _),) = fit_segments(testbed_plot("imagenet-r"), line)  # one line, all of it
    assert len(xs) == len(line)
    assert [p.name for p in write_plots([pair], tmp_path)] == [
        f"{pair.file_stem}.png",
        f"{pair.file_stem}.svg",
    ]
