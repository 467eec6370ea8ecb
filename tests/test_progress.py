"""Long work shows progress on a terminal and in a log file alike."""

from __future__ import annotations

import curate.core.progress as progress


def test_progress_goes_to_a_log_as_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)  # a line per advance
    with progress.progress_bar(4, "training", True, unit="samples") as advance:
        for _ in range(4):
            advance(1, "loss 0.5")
    lines = capsys.readouterr().err.strip().splitlines()  # stderr is not a terminal here
    assert lines[0].startswith("training: 1/4 samples (25%)") and lines[0].endswith("loss 0.5")
    assert lines[-1].startswith("training: 4/4 samples (100%)") and lines[-1].endswith("done")


def test_disabled_progress_prints_nothing(capsys):
    with progress.progress_bar(3, "quiet", False) as advance:
        advance(3)
    assert capsys.readouterr().err == ""
