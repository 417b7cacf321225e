"""The main window: session bar on top, page list on the left, the page, a status bar."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import PySide6
from PySide6.QtCore import QObject, QSize, Qt, QThreadPool
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from afp_core.errors import AfpError
from afp_core.fileutil import one_line
from rig_app.jobs import format_duration, recover_session_takes, unstored_takes
from rig_app.session import Session
from rig_app.ui.pages import Page
from rig_app.ui.pages.dataset import DatasetPage
from rig_app.ui.pages.evaluate import EvaluatePage
from rig_app.ui.pages.inspect import InspectPage
from rig_app.ui.pages.program import ProgramPage
from rig_app.ui.pages.record import RecordPage
from rig_app.ui.pages.songs import SongsPage
from rig_app.ui.state import RigState
from rig_app.ui.workers import Worker

__all__ = ["MainWindow", "find_binding_problem", "find_display_problem", "run_app"]

_PROBE_CALLS = 200


def find_binding_problem() -> str | None:
    """Why this PySide6 build cannot run the app here, in one line (None when it can).

    PySide6 6.12.0's stable-ABI wheel drops a reference to None on every call of a method
    returning nothing. From Python 3.12 on None is immortal and that is harmless; on 3.11
    None's count reaches zero after some thousands of calls and Python aborts
    ("deallocating None"), typically minutes into a recording.
    """
    if sys.version_info >= (3, 12):
        return None
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(_PROBE_CALLS):
        probe.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    if lost < _PROBE_CALLS // 2:
        return None
    import PySide6

    python = ".".join(map(str, sys.version_info[:3]))
    return (
        f"PySide6 {PySide6.__version__} loses a reference to None on every call under Python "
        f"{python}, which crashes the app after a while; install another version "
        "(pip install 'pyside6-essentials==6.11.3') or use Python 3.12+"
    )


def find_display_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why Qt's X11 (xcb) platform cannot start here, in one line (None when it can).

    Qt itself only says that "xcb-cursor0 or libxcb-cursor0 is needed" whatever is missing;
    this names the libraries the xcb plugin cannot load and the Debian packages that hold
    them. Other platforms (offscreen, wayland) are not checked.
    """
    env = os.environ if environ is None else environ
    platform = env.get("QT_QPA_PLATFORM", "xcb" if env.get("DISPLAY") else "")
    if not platform.startswith("xcb") or shutil.which("ldd") is None:
        return None
    qt = Path(PySide6.__file__).resolve().parent / "Qt"
    missing: list[str] = []
    for library in (qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"):
        if not library.is_file():
            continue
        result = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            name, _, where = line.strip().partition(" => ")
            if where.strip() == "not found" and name not in missing:
                missing.append(name)
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(_debian_package(name) for name in missing))
    return (
        f"Qt's X11 platform cannot load {', '.join(missing)}; install them "
        f"(Debian: apt-get install {packages}, or scripts/install_system_packages.sh)"
    )


def _debian_package(soname: str) -> str:
    """Debian's package for a library soname (its naming policy): libfoo.so.1 -> libfoo1,
    libfoo-x11.so.0 -> libfoo-x11-0 (a hyphen where the name ends in a digit)."""
    stem, _, version = soname.lower().partition(".so.")
    major = version.split(".")[0]
    return f"{stem}-{major}" if stem[-1].isdigit() else stem + major


class MainWindow(QMainWindow):
    """The rig's window; ``open_session``/``new_session`` work without dialogs too."""

    def __init__(self, state: RigState | None = None) -> None:
        super().__init__()
        self.state = state or RigState()
        self.setWindowTitle("afp-rig — recording rig")

        self.new_button = QPushButton("New session…")
        self.new_button.clicked.connect(self._on_new_clicked)
        self.open_button = QPushButton("Open session folder…")
        self.open_button.clicked.connect(self._on_open_clicked)
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar = QHBoxLayout()
        bar.addWidget(self.new_button)
        bar.addWidget(self.open_button)
        bar.addSpacing(12)
        bar.addWidget(self.folder_label, 1)

        # Offered, never forced, when the session has takes a killed recording left behind.
        self.recover_label = QLabel()
        self.recover_label.setWordWrap(True)
        self.recover_button = QPushButton("Recover")
        self.recover_button.clicked.connect(self.recover_takes)
        self.recover_bar = QWidget()
        offer = QHBoxLayout(self.recover_bar)
        offer.setContentsMargins(0, 0, 0, 0)
        offer.addWidget(self.recover_label, 1)
        offer.addWidget(self.recover_button)
        self.recover_bar.setVisible(False)
        self._recovery: Worker | None = None

        self.songs_page = SongsPage(self.state)
        self.program_page = ProgramPage(self.state)
        self.record_page = RecordPage(self.state)
        self.inspect_page = InspectPage(self.state)
        self.dataset_page = DatasetPage(self.state)
        self.evaluate_page = EvaluatePage(self.state)
        self.pages: list[Page] = [
            self.songs_page,
            self.program_page,
            self.record_page,
            self.inspect_page,
            self.dataset_page,
            self.evaluate_page,
        ]
        self.page_list = QListWidget()
        self.stack = QStackedWidget()
        for page in self.pages:
            self.page_list.addItem(page.title)
            self.stack.addWidget(page)
            page.status.connect(self.show_status)
        self.page_list.setFixedWidth(120)
        self.page_list.setStyleSheet("QListWidget::item { padding: 6px 8px; }")
        # before the switch: the new page may post its own message as it shows
        self.page_list.currentRowChanged.connect(self._on_page_changed)
        self.page_list.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.page_list.setCurrentRow(0)

        body = QHBoxLayout()
        body.addWidget(self.page_list)
        body.addWidget(self.stack, 1)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addLayout(bar)
        layout.addWidget(self.recover_bar)
        layout.addLayout(body, 1)
        self.setCentralWidget(central)

        self.state.session_changed.connect(self._on_session_changed)
        self.state.busy_changed.connect(self._on_busy_changed)
        self._on_session_changed(self.state.session)
        self.statusBar().showMessage("Ready")

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(1100, 760)

    # --- sessions --------------------------------------------------------------------------

    def open_session(self, folder: Path | str) -> str | None:
        """Open the session in ``folder``; returns the error message, None on success."""
        try:
            self.state.open_session(folder)
        except AfpError as exc:
            return self._error(one_line(exc))
        self.show_status(f"Opened {folder}")
        return None

    def new_session(self, folder: Path | str) -> str | None:
        """Create a session in ``folder``; returns the error message, None on success."""
        try:
            self.state.create_session(folder)
        except (AfpError, OSError) as exc:
            return self._error(one_line(exc))
        self.show_status(f"Created a new session in {folder}")
        return None

    def show_page(self, title: str) -> Page:
        """Switch to the page called ``title`` and return it."""
        for index, page in enumerate(self.pages):
            if page.title == title:
                self.page_list.setCurrentRow(index)
                return page
        raise KeyError(title)

    def show_status(self, message: str) -> None:
        self.statusBar().showMessage(message)

    def _on_page_changed(self, _row: int) -> None:
        self.statusBar().clearMessage()  # another page's message is not about this one

    def _error(self, message: str) -> str:
        self.show_status(message)
        return message

    def _on_new_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "New session: choose or create an empty folder"
        )
        if folder:
            error = self.new_session(folder)
            if error:
                QMessageBox.warning(self, "New session", error)

    def _on_open_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a session folder")
        if folder:
            error = self.open_session(folder)
            if error:
                QMessageBox.warning(self, "Open session", error)

    # --- takes a killed recording left behind ---------------------------------------------

    def recover_takes(self) -> Worker | None:
        """Store the open session's unstored takes in a worker (``recover_session_takes``)."""
        session = self.state.session
        if session is None or self._recovery is not None or self.state.busy:
            return None
        worker = Worker(recover_session_takes, session)
        worker.finished.connect(self._on_recovered)
        worker.errored.connect(self._on_recovery_failed)
        worker.done.connect(self._on_recovery_done)
        self._recovery = worker
        self.recover_button.setEnabled(False)
        self.state.begin_job()
        return worker.start()

    def _offer_recovery(self, session: Session | None) -> None:
        labels = unstored_takes(session) if session is not None else []
        self.recover_bar.setVisible(bool(labels))
        if labels:
            names = ", ".join(labels)
            self.recover_label.setText(
                f"Take {names} was recorded but is not in the session (the recording was "
                "interrupted). Recover it into the session?"
            )

    def _on_recovered(self, results: list) -> None:
        done = ", ".join(f"{r.label} ({format_duration(r.duration_s)})" for r in results)
        self.state.takes_changed.emit()
        self._offer_recovery(self.state.session)
        self.show_status(f"Recovered take {done}; align it on the Record page")

    def _on_recovery_failed(self, message: str) -> None:
        self.recover_label.setText(message)  # the offer stays: Recover tries again
        self.show_status(message)

    def _on_recovery_done(self) -> None:
        self._recovery = None
        self.state.end_job()  # busy_changed enables the button again

    def _on_session_changed(self, session: Session | None) -> None:
        self._offer_recovery(session)
        if session is None:
            self.folder_label.setText("No session open")
            self.setWindowTitle("afp-rig — recording rig")
        else:
            self.folder_label.setText(f"Session: {session.folder}")
            self.setWindowTitle(f"afp-rig — {session.folder.name}")

    def _on_busy_changed(self, busy: bool) -> None:
        self.new_button.setEnabled(not busy)
        self.open_button.setEnabled(not busy)
        self.recover_button.setEnabled(not busy)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        self.record_page.shutdown()
        for page in self.pages:
            page.cancel_jobs()
        QThreadPool.globalInstance().waitForDone(10_000)
        super().closeEvent(event)


def run_app(session: Path | str | None = None, argv: Sequence[str] | None = None) -> int:
    """Start the application (optionally with a session open); returns its exit status."""
    problem = find_display_problem() or find_binding_problem()
    if problem is not None:
        raise AfpError(problem)
    app = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    app.setApplicationName("afp-rig")
    window = MainWindow()
    window.resize(window.sizeHint())
    if session is not None:
        error = window.open_session(session)
        if error:
            QMessageBox.warning(window, "Open session", error)
    window.show()
    return int(app.exec())
