"""curate's exceptions. Every error curate raises on purpose is a :class:`CurateError`; the CLI
prints those as one line. Anything else (a builtin ``FileNotFoundError`` from a bug, say) is a
defect and keeps its traceback."""

from __future__ import annotations


class CurateError(Exception):
    """Root of the errors curate raises on purpose, with a message meant for the user."""


class UserInputError(CurateError, ValueError):
    """Input the user must fix: the message names the file, row or field and what to do."""


class InputNotFoundError(UserInputError, FileNotFoundError):
    """A file or folder the user named (or that an input refers to) does not exist."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output already exists and the user did not ask to overwrite or resume it."""


class NotAPoolError(UserInputError):
    """A directory is not a complete pool (missing or unreadable manifest)."""


class InUseError(CurateError, RuntimeError):
    """Another process holds the lock on an output."""


USER_ERRORS: tuple[type[BaseException], ...] = (CurateError,)
