"""Every command explains itself: `curate COMMAND --help` works and shows an example."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import curate.cli.main  # noqa: F401  (registers the commands)
from curate.cli.app import app

COMMANDS = sorted(get_command(app).commands)


def test_the_app_has_its_commands():
    assert {"ingest", "embed", "build-pool", "score", "leaderboard", "sql", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`curate {command} --help` shows no example"
