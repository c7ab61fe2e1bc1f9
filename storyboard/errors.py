"""One exception family; each error carries the exit code the CLI returns."""

from __future__ import annotations


class StoryboardError(Exception):
    """Base class: a message that says what went wrong and what to do next."""

    exit_code = 1


class InputError(StoryboardError):
    """Bad input or usage: a file, field or option the user can fix (exit 2)."""

    exit_code = 2


class LockedError(StoryboardError):
    """The run directory is held by another process (exit 3)."""

    exit_code = 3


class StageError(StoryboardError):
    """A stage could not produce its artifacts (exit 1)."""

    exit_code = 1


class PreflightError(StoryboardError):
    """A tool, font, model or key the run needs is missing (exit 1, before any work)."""

    exit_code = 1
