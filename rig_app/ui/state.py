"""The application's Qt-free model: the open session and what changed in it.

``RigState`` holds the open session and plain-callback events (napari's evented model
without Qt): views subscribe and redraw, and never keep their own copy of the data. What
the views run on the session (and the command line too) is in ``rig_app.jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from afp_core.errors import AfpError
from rig_app.session import Session

__all__ = ["Event", "RigState"]


class Event:
    """Callbacks called in order with the event's arguments (on the caller's thread)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    def connect(self, callback: Callable[..., None]) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            callback(*args)


class RigState:
    """The open session and what changed in it. Mutated on the GUI thread only."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.session_changed = Event()  # (session | None)
        self.songs_changed = Event()  # ()
        self.program_changed = Event()  # ()
        self.takes_changed = Event()  # ()
        self.busy_changed = Event()  # (busy: bool)
        self._jobs = 0

    @property
    def busy(self) -> bool:
        return self._jobs > 0

    def open_session(self, folder: Path | str) -> Session:
        """Load the session in ``folder`` and make it current (``SessionError`` if not)."""
        session = Session.load(folder)
        self._set(session)
        return session

    def create_session(self, folder: Path | str) -> Session:
        """Create a new session in ``folder`` and make it current."""
        session = Session.create(folder)
        self._set(session)
        return session

    def close_session(self) -> None:
        self._set(None)

    def _set(self, session: Session | None) -> None:
        if self.busy:
            raise AfpError("wait for the running job to end (or cancel it) first")
        self.session = session
        self.session_changed.emit(session)

    def begin_job(self) -> None:
        self._jobs += 1
        if self._jobs == 1:
            self.busy_changed.emit(True)

    def end_job(self) -> None:
        self._jobs = max(0, self._jobs - 1)
        if self._jobs == 0:
            self.busy_changed.emit(False)
