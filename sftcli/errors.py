"""Exceptions that end a command with a clear message instead of a traceback.

A :class:`UserError` is something the user can fix (a config key, a file, a checkpoint); the CLI prints its
message and exits with code 2. Anything else is a bug or a fault and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
# A run stopped by SIGTERM/SIGINT after saving a checkpoint; `resume=auto` continues it.
EXIT_PREEMPTED = 75
# Training stopped on a non-finite loss or gradient (trainer.nonfinite=stop, or too many skips).
EXIT_NONFINITE = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): one line for a user."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """An error the user can fix; reported as one message with exit code 2."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A bad config key, type or value."""


class DataError(UserError):
    """A missing or malformed data file, column, row or label."""


class ModelError(UserError):
    """A model path that is not a model, or a model that does not fit the data."""


class CheckpointError(UserError):
    """A damaged, missing or mismatching checkpoint."""


class NonFiniteError(Exception):
    """A non-finite loss or gradient stopped training (not a user error: exit code 3)."""

    exit_code = EXIT_NONFINITE


class Preempted(Exception):
    """Training was stopped by a signal after saving a checkpoint."""

    exit_code = EXIT_PREEMPTED


def user_error(exc: BaseException) -> BaseException:
    """An OSError about a path the command was given (a name too long, a folder that is a file, no
    permission) is the user's to fix: one message naming the path, exit 2. Other errors stay as they are."""
    if isinstance(exc, OSError) and exc.filename is not None:
        error = UserError(f"{exc.filename}: {exc.strerror or exc}")
        error.__cause__ = exc
        return error
    return exc


def report_error(exc: BaseException, debug: bool) -> None:
    """One line on stderr for an error that ends a command (with its traceback first when debugging)."""
    import sys
    import traceback

    if debug:
        traceback.print_exception(exc)
    print(f"sft: error: {exc}", file=sys.stderr, flush=True)
