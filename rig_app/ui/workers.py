"""Background work for the views, in the style of superqt's thread workers.

A ``Worker`` runs a plain function ``fn(task, *args, **kwargs)`` on a ``QThreadPool``
thread, where ``task`` is an ``afp_core.tasks.TaskState``: the function reports progress
through it and checks it for cancellation, exactly as on the command line. The worker
turns that into Qt signals, which reach the views on the GUI thread:

* ``progress(done, total, message)`` while it runs (at most about 20 per second),
* then exactly one of ``finished(result)``, ``errored(message)`` or ``cancelled()``,
* then ``done()`` whatever happened (for clean-up).

An ``AfpError`` becomes its one-line message, and so does a write that found the disk
full (as ``afp`` words it); any other exception becomes one line too, with the traceback
logged: a bug in a job never takes the application down.
``TaskPanel`` is a progress bar, a message and a Cancel button bound to a worker; the bar
counts in the task's ``unit`` ("1,234 / 5,000 s of audio") when the work names one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, SignalInstance
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from afp_core.errors import AfpError, Cancelled, as_disk_full
from afp_core.fileutil import one_line
from afp_core.tasks import TaskState

__all__ = ["TaskPanel", "Worker", "WorkerSignals"]

log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_S = 0.05
_BAR_STEPS = 1000


class WorkerSignals(QObject):
    """The signals of one ``Worker`` (a QRunnable cannot have signals itself)."""

    progress = Signal(float, float, str)
    finished = Signal(object)
    errored = Signal(str)
    cancelled = Signal()
    done = Signal()


class Worker(QRunnable):
    """Runs ``fn(task, *args, **kwargs)`` on a thread pool; see the module docstring."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.setAutoDelete(False)  # Python owns it: the views keep a reference while it runs
        self.signals = WorkerSignals()
        self.task = TaskState(self._report)
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._last_report = 0.0
        self._last_message = ""
        self._running = threading.Event()
        self._ended = threading.Event()

    # the signals, reachable as worker.progress etc. as in superqt
    @property
    def progress(self) -> SignalInstance:
        return self.signals.progress

    @property
    def finished(self) -> SignalInstance:
        return self.signals.finished

    @property
    def errored(self) -> SignalInstance:
        return self.signals.errored

    @property
    def cancelled(self) -> SignalInstance:
        return self.signals.cancelled

    @property
    def done(self) -> SignalInstance:
        return self.signals.done

    @property
    def is_running(self) -> bool:
        return self._running.is_set() and not self._ended.is_set()

    @property
    def has_ended(self) -> bool:
        return self._ended.is_set()

    def start(self, pool: QThreadPool | None = None) -> Worker:
        """Queue the work on ``pool`` (the global pool by default); returns self."""
        self._running.set()
        (pool or QThreadPool.globalInstance()).start(self)
        return self

    def cancel(self) -> None:
        """Ask the function to stop at its next check (thread-safe)."""
        self.task.cancel()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the work is over (for shutdown and scripts, not the GUI)."""
        return self._ended.wait(timeout_s)

    def run(self) -> None:  # called on a pool thread
        signals = self.signals
        try:
            result = self._fn(self.task, *self._args, **self._kwargs)
        except Cancelled:
            signals.cancelled.emit()
        except AfpError as exc:
            signals.errored.emit(one_line(exc))
        except Exception as exc:
            full = as_disk_full(exc)
            if full is not None:  # no bug: said as afp says it
                signals.errored.emit(str(full))
            else:
                log.exception("background job %s failed", getattr(self._fn, "__name__", self._fn))
                signals.errored.emit(f"unexpected error: {type(exc).__name__}: {one_line(exc)}")
        else:
            if self.task.cancelled and result is None:
                signals.cancelled.emit()
            else:
                signals.finished.emit(result)
        finally:
            self._ended.set()
            signals.done.emit()

    def _report(self, done: float, total: float, message: str) -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        recent = now - self._last_report < _PROGRESS_INTERVAL_S
        if recent and message == self._last_message and not final:
            return
        self._last_report = now
        self._last_message = message
        self.signals.progress.emit(float(done), float(total), message)


class TaskPanel(QWidget):
    """A progress bar, the job's latest message and a Cancel button, bound to a worker."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._worker: Worker | None = None
        self.bar = QProgressBar()
        self.bar.setRange(0, _BAR_STEPS)
        self.bar.setTextVisible(False)
        self.bar.setMaximumWidth(260)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.cancel_button)
        self.bar.setVisible(False)
        # shown while a job runs and to say how one failed: an empty or "done" row says
        # nothing the page does not show itself
        self.setVisible(False)

    @property
    def worker(self) -> Worker | None:
        return self._worker

    def bind(self, worker: Worker, message: str = "working ...") -> None:
        """Follow ``worker`` until it ends (call before ``worker.start``)."""
        self._worker = worker
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_errored)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(self._on_done)
        self.bar.setRange(0, 0)  # busy until the first progress report gives a total
        self.bar.setTextVisible(False)
        self.bar.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self._show(message)
        self.setVisible(True)

    def cancel(self) -> None:
        if self._worker is not None and not self._worker.has_ended:
            self._worker.cancel()
            self.cancel_button.setEnabled(False)
            self._show("cancelling ...")

    def _show(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #b00020;" if error else "")

    def _on_progress(self, done: float, total: float, message: str) -> None:
        unit = self._worker.task.unit if self._worker is not None else ""
        if total > 0:
            self.bar.setRange(0, _BAR_STEPS)
            self.bar.setValue(round(_BAR_STEPS * min(1.0, done / total)))
            # numbers only where they count something: a bare fraction says "%" already
            self.bar.setFormat(f"{done:,.0f} / {total:,.0f} {unit}" if unit else "%p %")
            self.bar.setTextVisible(bool(unit))
        if message and self.cancel_button.isEnabled():
            self._show(message)

    def _on_finished(self, _result: object) -> None:
        self._show("")

    def _on_errored(self, message: str) -> None:
        self._show(message, error=True)

    def _on_cancelled(self) -> None:
        self._show("cancelled; what was finished is kept")

    def _on_done(self) -> None:
        self.bar.setVisible(False)
        self.cancel_button.setVisible(False)
        self._worker = None
        if not self.message.text():  # finished: the page shows the result
            self.setVisible(False)
