"""Exceptions that carry a message for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

from curate.atomic import InUseError
from curate.manifest import NotAPoolError


class UserInputError(ValueError):
    """Input the user must fix: the message names the file, row or field and what to do."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserInputError,
    NotAPoolError,
    InUseError,
    FileExistsError,
    FileNotFoundError,
)
