"""`curate baseline`: the kinds of standard models and the cache reach run_baselines."""

from __future__ import annotations

import sys

import pytest

import curate.cli.main
import curate.runs.baseline
from curate.runs.baseline import BaselineModel


@pytest.fixture
def calls(monkeypatch):
    received = []
    monkeypatch.setattr(
        curate.runs.baseline, "run_baselines", lambda out, **kwargs: received.append(kwargs)
    )
    return received


def _run(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["curate", "baseline", *argv])
    try:
        curate.cli.main.main()
    except SystemExit as exited:
        if exited.code:
            raise


def test_models_and_cache_are_passed_and_budgets_default_only_alone(monkeypatch, tmp_path, calls):
    _run(monkeypatch, "--out", str(tmp_path / "b"), "--seeds", "0")
    assert calls[-1]["budgets"] == [15000, 30000, 60000] and calls[-1]["models"] == []
    assert calls[-1]["cache"] is None

    _run(
        monkeypatch,
        "--out", str(tmp_path / "b"),
        "--model", "curate-tiny-rn:15000,30000",
        "--model", "-:128:no-augment",
        "--model", "curate-tiny-vit-p8:256:augment",
        "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert calls[-1]["budgets"] == []  # --model alone: only the kinds named
    assert calls[-1]["models"] == [
        BaselineModel((15000, 30000), arch="curate-tiny-rn"),
        BaselineModel((128,), augment=False),
        BaselineModel((256,), arch="curate-tiny-vit-p8", augment=True),
    ]
    assert calls[-1]["cache"] == tmp_path / "cache"

    _run(monkeypatch, "--out", str(tmp_path / "b"), "--budgets", "512", "--model", "a:128")
    assert calls[-1]["budgets"] == [512] and len(calls[-1]["models"]) == 1


@pytest.mark.parametrize("spec", ["curate-tiny-rn", "rn:15k", "rn:128:augmented", ":128", "rn:"])
def test_a_bad_model_spec_is_one_line_naming_it(monkeypatch, capsys, calls, spec):
    with pytest.raises(SystemExit) as exited:
        _run(monkeypatch, "--model", spec)
    assert exited.value.code == 2 and not calls
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --model") and "\n" not in message and repr(spec) in message
