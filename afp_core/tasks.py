"""Progress and cancellation for long work, shared by the CLI, the app and the tests.

Long functions take a ``TaskState`` (after Orange's TaskState): they report progress with
``advance``/``set_total`` and call ``check_cancelled`` between units of work, which raises
``Cancelled`` once someone called ``cancel`` from another thread. What the function
finished before that is kept by the function itself (staged songs, written files).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from afp_core.errors import Cancelled

ProgressCallback = Callable[[float, float, str], None]
"""Called as (done, total, message) whenever progress changes."""


class TaskState:
    """Progress counter with a thread-safe cancel flag.

    ``unit`` names what ``done`` and ``total`` count ("s of audio", "songs"), for a view
    that shows them as numbers; "" when they are only a fraction of the work.
    """

    def __init__(self, on_progress: ProgressCallback | None = None) -> None:
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self.done = 0.0
        self.total = 0.0
        self.message = ""
        self.unit = ""

    def set_total(self, total: float, message: str = "", unit: str | None = None) -> None:
        """Start counting to ``total`` (0: unknown) in ``unit`` (None: the same as before)."""
        self.total = float(total)
        self.done = 0.0
        if unit is not None:
            self.unit = unit
        self._emit(message)

    def advance(self, amount: float = 1.0, message: str = "") -> None:
        self.done += amount
        self._emit(message)

    def set_message(self, message: str) -> None:
        self._emit(message)

    def cancel(self) -> None:
        self._cancel.set()

    def fork(self, on_progress: ProgressCallback | None = None) -> TaskState:
        """A task for work running beside others (e.g. one thread of several): its own
        progress, the same cancel flag (cancelling either cancels both)."""
        child = TaskState(on_progress)
        child._cancel = self._cancel
        return child

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user; finished work is kept")

    def _emit(self, message: str) -> None:
        if message:
            self.message = message
        if self._on_progress is not None:
            self._on_progress(self.done, self.total, self.message)


class TqdmProgress:
    """A ``ProgressCallback`` drawing one tqdm bar on stderr (command line)."""

    def __init__(self, unit: str = "it", description: str = "", scale: float = 1.0) -> None:
        import sys

        from tqdm import tqdm

        # in a log file every redraw is a new chunk of text: redraw rarely there
        interval = 0.1 if sys.stderr.isatty() else 30.0
        self._bar = tqdm(
            total=0,
            unit=unit,
            desc=description,
            dynamic_ncols=True,
            leave=True,
            mininterval=interval,
        )
        self._scale = scale

    def __call__(self, done: float, total: float, message: str) -> None:
        bar = self._bar
        total_units = round(total * self._scale, 1)
        if bar.total != total_units:
            bar.total = total_units
        if message:
            bar.set_postfix_str(message[-40:], refresh=False)
        bar.update(round(done * self._scale, 1) - bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def progress_task(quiet: bool, unit: str = "it", description: str = "") -> Iterator[TaskState]:
    """A ``TaskState`` drawing a tqdm bar on stderr (none when ``quiet``), closed after."""
    bar = None if quiet else TqdmProgress(unit=unit, description=description)
    try:
        yield TaskState(bar)
    finally:
        if bar is not None:
            bar.close()
