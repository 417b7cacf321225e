"""The status bar speaks of the page shown and of the job just started (offscreen)."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from afp_core.tasks import TaskState

pytest.importorskip("PySide6")

JOB_MS = 30_000


@pytest.fixture
def window(qtbot):
    from rig_app.ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    yield window
    for page in window.pages:
        page.cancel_jobs()
        qtbot.waitUntil(lambda page=page: not page.workers, timeout=JOB_MS)


def _wait(task: TaskState, release: threading.Event) -> None:
    task.set_total(0, "waiting")
    release.wait(JOB_MS / 1000)


def test_status_bar_is_cleared_when_the_page_changes(qtbot, window):
    message = window.statusBar().currentMessage
    window.show_page("Songs").status.emit("Songs: 3 added, 0 duplicate(s), 0 failed")
    assert message() == "Songs: 3 added, 0 duplicate(s), 0 failed"
    window.show_page("Evaluate")
    assert message() == ""  # the Songs page's news is not about the Evaluate page
    window.show_page("Evaluate").status.emit("Evaluate: showing x")
    window.show_page("Evaluate")  # the same page again: its message stays
    assert message() == "Evaluate: showing x"


def test_status_bar_says_which_job_started(qtbot, window):
    from rig_app.ui.workers import TaskPanel, Worker

    message = window.statusBar().currentMessage
    window.show_page("Songs").status.emit("Songs: 3 added, 0 duplicate(s), 0 failed")
    page = window.show_page("Songs")
    release = threading.Event()
    panel = TaskPanel()
    qtbot.addWidget(panel)
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.start_job(Worker(_wait, release), panel, "adding songs …")
        assert message() == "Songs: adding songs …"  # replaces the stale message
        release.set()
