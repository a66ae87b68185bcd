"""Errors a user can fix (a missing file, a bad flag): the CLI prints them on one line."""

from __future__ import annotations

__all__ = ["DivergedError", "UserError"]


class UserError(ValueError):
    """A problem with the user's input, not with the code: the CLI prints the message alone and
    exits with status 2 (``-v`` shows the traceback)."""


class DivergedError(UserError):
    """The training loss or a metric turned NaN or infinite (a learning rate or loss weight too
    large): the run stops, and is not recorded as finished."""
