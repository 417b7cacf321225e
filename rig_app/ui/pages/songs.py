"""Songs page: the session's songs, and adding more by URL, file or folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from rig_app.jobs import add_session_songs, format_duration
from rig_app.session import Session, SongEntry
from rig_app.songs import MIN_DURATION_S, SongResult
from rig_app.ui.pages import Collapsible, Page
from rig_app.ui.state import RigState
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["SongsPage"]

COLUMNS = ("Title", "Artist", "Duration", "Loudness before", "Loudness after", "Source")
SOURCE_COLUMN = COLUMNS.index("Source")
_ADDED = QColor(30, 120, 50)
_DUPLICATE = QColor(150, 110, 0)
_FAILED = QColor(176, 0, 32)


def _lufs(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} LUFS"


class SongsPage(Page):
    """Table of the session's songs; URL field, Add files, Add folder; per-item results."""

    title = "Songs"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("https://… (a song page or a direct link to audio)")
        self.url_edit.returnPressed.connect(self._on_add_url)
        self.add_url_button = QPushButton("Add URL")
        self.add_url_button.clicked.connect(self._on_add_url)
        self.add_files_button = QPushButton("Add files…")
        self.add_files_button.clicked.connect(self._on_add_files)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self._on_add_folder)

        self.min_duration = QDoubleSpinBox()
        self.min_duration.setRange(0.0, 3600.0)
        self.min_duration.setDecimals(1)
        self.min_duration.setSuffix(" s")
        self.min_duration.setValue(MIN_DURATION_S)
        self.min_duration.setToolTip(
            "Songs shorter than this are refused (the paper cuts queries from whole songs)"
        )
        advanced_box = QWidget()
        advanced_form = QFormLayout(advanced_box)
        advanced_form.setContentsMargins(16, 0, 0, 0)
        advanced_form.addRow("Shortest song accepted:", self.min_duration)
        self.advanced = Collapsible("Advanced", advanced_box)

        self.panel = TaskPanel()

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setDefaultSectionSize(22)
        # a long path keeps its start and its file name (one line: wrapped, it would be
        # cut after a folder), the full text in the tooltip
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.table.horizontalHeader()
        # titles whole; the source takes the rest of the width, however wide the window
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(SOURCE_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("")

        self.results = QListWidget()
        self.results.setWordWrap(True)
        self.results_title = QLabel("Last addition")

        add_row = QHBoxLayout()
        add_row.addWidget(self.url_edit, 1)
        add_row.addWidget(self.add_url_button)
        add_row.addSpacing(12)
        add_row.addWidget(self.add_files_button)
        add_row.addWidget(self.add_folder_button)

        table_box = QWidget()
        table_layout = QVBoxLayout(table_box)
        table_layout.setContentsMargins(0, 0, 0, 0)
        table_layout.addWidget(self.table, 1)
        table_layout.addWidget(self.summary)
        results_box = self.results_box = QWidget()
        results_box.setVisible(False)  # until something was added: an empty box says nothing
        results_layout = QVBoxLayout(results_box)
        results_layout.setContentsMargins(0, 0, 0, 0)
        results_layout.addWidget(self.results_title)
        results_layout.addWidget(self.results, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(table_box)
        splitter.addWidget(results_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(add_row)
        layout.addWidget(self.advanced)
        layout.addWidget(self.panel)
        layout.addWidget(splitter, 1)
        state.songs_changed.connect(self.refresh)
        state.program_changed.connect(self.refresh)
        self.refresh()

    # --- actions -------------------------------------------------------------------------

    def add_items(self, items: Sequence[str | Path]) -> Worker | None:
        """Add URLs, files and folders in a worker; returns it (None when nothing to do)."""
        session = self.session
        if session is None or not items or self.busy:
            return None
        self.results.clear()
        self.results_title.setText(f"Adding {len(items)} item(s) …")
        self.results_box.setVisible(True)
        worker = Worker(
            add_session_songs,
            session,
            list(items),
            min_duration_s=self.min_duration.value(),
        )
        worker.finished.connect(self._on_added)
        worker.errored.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        self._set_enabled(False)
        return self.start_job(worker, self.panel, "adding songs …")

    def _on_add_url(self) -> None:
        url = self.url_edit.text().strip()
        if url and self.add_items([url]) is not None:
            self.url_edit.clear()

    def _on_add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add song files", "", "Audio (*.wav *.flac *.ogg *.mp3 *.opus *.m4a);;All (*)"
        )
        if files:
            self.add_items(files)

    def _on_add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add every song in a folder")
        if folder:
            self.add_items([folder])

    # --- results -------------------------------------------------------------------------

    def _on_added(self, results: list[SongResult]) -> None:
        added = sum(r.ok for r in results)
        duplicates = sum(r.duplicate for r in results)
        failed = len(results) - added - duplicates
        for result in results:
            if result.ok and result.song is not None:
                text, colour = f"added: {result.song.title} ({result.item})", _ADDED
            elif result.duplicate:
                text, colour = f"duplicate: {result.error}", _DUPLICATE
            else:
                text, colour = f"failed: {result.error}", _FAILED
            item = QListWidgetItem(text)
            item.setForeground(colour)
            item.setToolTip(text)
            self.results.addItem(item)
        summary = f"{added} added, {duplicates} duplicate(s), {failed} failed"
        self.results_title.setText(f"Last addition: {summary}")
        self.status.emit(f"Songs: {summary}")
        self.state.songs_changed.emit()

    def _on_failed(self, message: str) -> None:
        self.results_title.setText("Last addition failed")
        item = QListWidgetItem(f"failed: {message}")
        item.setForeground(_FAILED)
        self.results.addItem(item)
        self.status.emit(f"Songs: {message}")
        self.state.songs_changed.emit()

    def _on_cancelled(self) -> None:
        self.results_title.setText("Last addition cancelled; the songs added before are kept")
        self.status.emit("Songs: cancelled")
        self.state.songs_changed.emit()

    # --- view ----------------------------------------------------------------------------

    def _on_session_changed(self, session: Session | None) -> None:
        self.results.clear()  # the last addition was to the other session
        self.results_box.setVisible(False)
        super()._on_session_changed(session)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (
            self.url_edit,
            self.add_url_button,
            self.add_files_button,
            self.add_folder_button,
            self.min_duration,
        ):
            widget.setEnabled(enabled)

    def refresh(self) -> None:
        session = self.session
        self._set_enabled(session is not None and not self.busy)
        songs: list[SongEntry] = [] if session is None else list(session.songs)
        self.table.setRowCount(len(songs))
        for row, song in enumerate(songs):
            cells = (
                song.title,
                song.artist,
                format_duration(song.duration_s),
                _lufs(song.loudness_before),
                _lufs(song.loudness_after),
                song.source,
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                if column in (2, 3, 4):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(row, column, item)
        if session is None:
            self.summary.setText("Create or open a session to add songs.")
        elif not songs:
            self.summary.setText("No songs yet: add URLs, files or a folder above.")
        else:
            total = sum(song.duration_s for song in songs)
            self.summary.setText(f"{len(songs)} songs, {format_duration(total)} in all")
