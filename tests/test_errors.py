"""One error root: what curate raises on purpose is a CurateError and prints as one line; a
builtin exception from a bug keeps its traceback."""

from __future__ import annotations

import sys

import pytest

import curate.build_pool.recipe
import curate.cli.main
from curate.core.errors import (
    USER_ERRORS,
    CurateError,
    InputNotFoundError,
    InUseError,
    NotAPoolError,
    OutputExistsError,
    UserInputError,
)


def test_every_user_error_is_under_the_root():
    for error in (UserInputError, InputNotFoundError, OutputExistsError, NotAPoolError, InUseError):
        assert issubclass(error, CurateError)
    assert USER_ERRORS == (CurateError,)
    assert not issubclass(FileNotFoundError, USER_ERRORS)
    # callers catching the builtins still catch curate's own
    assert issubclass(InputNotFoundError, FileNotFoundError)
    assert issubclass(OutputExistsError, FileExistsError)


def _run_cli(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["curate", *argv])
    curate.cli.main.main()


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exited:
        _run_cli(monkeypatch, "validate-recipe", "no_such_recipe_anywhere")
    assert exited.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "\n" not in message
    assert "no_such_recipe_anywhere" in message


def test_a_builtin_error_from_a_bug_keeps_its_traceback(monkeypatch):
    def broken(name):
        raise FileNotFoundError("a bug, not the user's input")

    monkeypatch.setattr(curate.build_pool.recipe, "load_recipe", broken)
    with pytest.raises(FileNotFoundError, match="a bug"):
        _run_cli(monkeypatch, "validate-recipe", "clip_score_top30")
