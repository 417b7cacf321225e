"""User-facing errors.

Every error a user can cause (bad file, wrong checkpoint, missing database) is an
``AfpError`` whose message is one line naming the thing and the problem. The command
line prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

# A write that found no room: the disk, the user's quota or the file-size limit is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# faiss's C++ file calls (the on-disk lists' truncate) raise a RuntimeError ending in strerror
_DISK_FULL_STRERRORS = tuple(os.strerror(code) for code in sorted(DISK_FULL))


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


class DiskFull(AfpError):  # noqa: N818 - names the situation, like Cancelled
    """A write found the disk full (``describe_disk_full``). Not a ``DatabaseError``: the
    indexing loop skips a file for one of those, and a full disk must stop it."""


def describe_disk_full(path: object) -> str:
    """The one line for a write to ``path`` that found the disk full (None: unknown file).

    Files are written whole or not at all (``afp_core.fileutil.atomic_path``, SQLite
    transactions): the run stops with what it finished kept, and a rerun finishes it.
    """
    where = f"{path}: " if path else ""
    return (
        f"{where}no space left on the disk (nothing was half-written; "
        "free space and run again to finish)"
    )


def as_disk_full(exc: BaseException, path: object = None) -> DiskFull | None:
    """``exc`` as a ``DiskFull`` naming ``path`` (default: the file the error names) when it
    is a write that found no room, else None: the one place that tells the two apart."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return DiskFull(describe_disk_full(path or exc.filename))
    if isinstance(exc, RuntimeError) and str(exc).endswith(_DISK_FULL_STRERRORS):
        return DiskFull(describe_disk_full(path))
    return None
