"""User-facing errors.

Every error a user can cause (bad file, wrong checkpoint, missing database) is an
``AfpError`` whose message is one line naming the thing and the problem. The command
line prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AfpError(Exception):
    """An error caused by input, with a one-line message meant for the user."""


class AudioError(AfpError):
    """An audio file cannot be read, is empty or too short."""


class ConfigError(AfpError):
    """A configuration has an unknown key, a wrong type or an invalid value."""


class CheckpointError(AfpError):
    """A checkpoint file is missing, corrupt or of the wrong kind."""


class DatabaseError(AfpError):
    """A fingerprint database folder is missing, corrupt or used with the wrong model."""


class Cancelled(AfpError):  # noqa: N818 - reads as a state, like asyncio.CancelledError
    """Long work was stopped by the user; what was finished is kept."""
