"""The application's pages (Songs, Program, Record, Inspect, Dataset, Evaluate) and what they
share."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QToolButton, QVBoxLayout, QWidget

from rig_app.session import Session
from rig_app.ui.state import RigState
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["Collapsible", "Page", "placeholder"]


class Page(QWidget):
    """A page bound to the app state; ``status`` carries messages for the status bar.

    ``job_done`` is emitted after a job's own result slots ran and the page redrew.
    """

    status = Signal(str)
    job_done = Signal()
    title = "Page"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._workers: set[Worker] = set()
        state.session_changed.connect(self._on_session_changed)

    @property
    def session(self) -> Session | None:
        return self.state.session

    @property
    def workers(self) -> tuple[Worker, ...]:
        """The page's jobs not wrapped up yet."""
        return tuple(self._workers)

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    def start_job(
        self, worker: Worker, panel: TaskPanel | None = None, message: str = "working ..."
    ) -> Worker:
        """Run ``worker``, shown on ``panel``; the state counts it as a running job.

        The status bar says so: what it said before (maybe another page's news) is stale.
        """
        self.state.begin_job()
        self._workers.add(worker)
        self.status.emit(f"{self.title}: {message}")
        if panel is not None:
            panel.bind(worker, message)
        worker.done.connect(self._on_worker_done)
        worker.start()
        self.refresh()
        return worker

    def cancel_jobs(self) -> None:
        """Ask every running job of the page to stop."""
        for worker in self._workers:
            worker.cancel()

    def _on_worker_done(self) -> None:
        ended = {worker for worker in self._workers if worker.has_ended}
        self._workers -= ended
        for _ in ended:
            self.state.end_job()
        self.refresh()
        if ended:
            self.job_done.emit()

    def _on_session_changed(self, _session: Session | None) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Redraw from the state (override)."""


def placeholder(text: str) -> QLabel:
    """A greyed hint shown where a page has nothing to show yet."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(placeholder-text); padding: 6px;")
    return label


class Collapsible(QWidget):
    """A title button that shows or hides ``content`` (hidden at first)."""

    def __init__(self, title: str, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setArrowType(Qt.ArrowType.RightArrow)
        self.button.setAutoRaise(True)
        self.content = content
        content.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(content)
        self.button.toggled.connect(self.set_expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.content.setVisible(expanded)
        if self.button.isChecked() != expanded:
            self.button.setChecked(expanded)
        self.button.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
