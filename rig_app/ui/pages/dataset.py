"""Dataset page: choose what goes into a published query set, across several sessions.

Top: the sessions in the table (the open one, and any added with "Add session…"). Then
one table of every song of every take (``rig_app.dataset.collect_rows``) with its quality
figures (``rig_app.quality``), flags in colour and whether it is in the set; a text filter
and a "show" choice (all, flagged, left out, included); sorting by any column. Buttons
leave a song of a take, a whole take or a song in every take out (with a reason), put it
back, or note something, all stored in the session's selection (``rig_app.selection``),
never by deleting audio. "Play clean" / "Play take" play the same seconds of the song,
clean and as recorded, on an output device to help decide. "Measure quality" makes the
records takes aligned by an older version lack. Export writes the chosen songs as a query
set (``rig_app.export``) with progress and Cancel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from afp_core.errors import AfpError
from afp_core.fileutil import one_line
from rig_app.dataset import (
    DatasetRow,
    collect_rows,
    measure_missing_quality,
    play_excerpt,
    summarise_rows,
)
from rig_app.devices import Device, list_devices
from rig_app.evaluate import parse_lengths
from rig_app.selection import Selection
from rig_app.session import Session
from rig_app.ui.pages import Page, placeholder
from rig_app.ui.state import RigState
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["DatasetPage"]

AnyIndex = QModelIndex | QPersistentModelIndex


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _fault_counts(row: DatasetRow) -> tuple[int, int, int]:
    return row.clipped_samples or 0, row.dropouts or 0, row.xruns or 0


def _faults(row: DatasetRow) -> str:
    """``"40 clipped · 1 dropout"``: what went wrong inside the song, blank when nothing."""
    names = ("clipped", "dropout", "xrun")
    parts = [
        f"{n} {name}{'s' * (n > 1 and name != 'clipped')}"
        for n, name in zip(_fault_counts(row), names, strict=True)
        if n
    ]
    return " · ".join(parts) if row.measured else "—"


# (header, text of a row, sort key of a row, tooltip)
COLUMNS: tuple[tuple[str, Callable[[DatasetRow], str], Callable[[DatasetRow], Any], str], ...] = (
    ("Session", lambda r: r.session_name, lambda r: r.session_name, "the session folder"),
    ("Take", lambda r: r.take, lambda r: r.take, "the take's label"),
    ("#", lambda r: str(r.song + 1), lambda r: r.song, "the song's place in the program"),
    ("Title", lambda r: r.title, lambda r: r.title.casefold(), ""),
    ("Condition", lambda r: r.condition, lambda r: r.condition, "devices or room, noise"),
    (
        "Music/noise",
        lambda r: (
            _number(r.music_to_noise_db, "+.1f") + (" dB" * (r.music_to_noise_db is not None))
        ),
        lambda r: -math.inf if r.music_to_noise_db is None else r.music_to_noise_db,
        "music-to-noise ratio at the microphone, measured from the take",
    ),
    (
        "Peak",
        lambda r: _number(r.peak_dbfs, ".1f"),
        lambda r: -math.inf if r.peak_dbfs is None else r.peak_dbfs,
        "peak of the raw recording over the song (dBFS)",
    ),
    (
        "Faults",
        lambda r: _faults(r),
        lambda r: sum(_fault_counts(r)),
        "clipped samples, dropouts and buffer under/overruns inside the song (blank: none)",
    ),
    (
        "LUFS",
        lambda r: _number(r.loudness_lufs, ".1f"),
        lambda r: -math.inf if r.loudness_lufs is None else r.loudness_lufs,
        "loudness of the song in the take (BS.1770)",
    ),
    (
        "In set",
        lambda r: "yes" if r.included else "no",
        lambda r: r.included,
        "whether the song of this take goes into the query set",
    ),
    ("Note", lambda r: r.note, lambda r: r.note, "your note on this song of this take"),
    (
        "Why",
        lambda r: r.excluded or "; ".join(r.flags),
        lambda r: (r.excluded or "", "; ".join(r.flags)),
        "why it is left out, else its flags",
    ),
)
WHY_COLUMN = [c[0] for c in COLUMNS].index("Why")
SHOW = ("All songs", "Flagged", "Left out", "Included")
_WIDEST = {"Session": 170, "Title": 190, "Condition": 210, "Note": 160}  # pixels
_FLAGGED = QColor(255, 236, 179)  # amber: look at it
_LEFT_OUT = QColor(128, 128, 128)
_NOT_OK = QColor(176, 0, 32)
SCOPES = (
    ("this song of this take", "song"),
    ("the whole take", "take"),
    ("this song in every take of the session", "every"),
)


class DatasetModel(QAbstractTableModel):
    """The rows as a Qt table (read-only: edits go through the selection, then reload)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[DatasetRow] = []

    def set_rows(self, rows: Sequence[DatasetRow]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(  # noqa: N802 - Qt's name
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMNS[section][3] or None
        return None

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[column][1](row)
        if role == Qt.ItemDataRole.UserRole:
            return COLUMNS[column][2](row)
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [f"{row.title} — take {row.take} of {row.session_name}: {row.verdict}"]
            if row.excluded:
                lines.append(f"left out: {row.excluded}")
            lines += [f"• {flag}" for flag in row.flags]
            if not row.measured:
                lines.append("no quality record: press Measure quality")
            return "\n".join(lines)
        if role == Qt.ItemDataRole.BackgroundRole and row.flags and row.included:
            return QBrush(_FLAGGED)
        if role == Qt.ItemDataRole.ForegroundRole:
            if not row.included:
                return QBrush(_LEFT_OUT)
            if column == 1 and row.verdict != "ok":
                return QBrush(_NOT_OK)
        if role == Qt.ItemDataRole.FontRole and not row.included:
            font = QFont()
            font.setItalic(True)
            return font
        return None


class DatasetFilter(QSortFilterProxyModel):
    """Text filter over every column, and the "show" choice; sorts by each column's key."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.show = SHOW[0]
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_filter(self, text: str, show: str) -> None:
        if not hasattr(self, "beginFilterChange"):  # Qt before 6.10
            self.text, self.show = text.casefold().strip(), show
            self.invalidateRowsFilter()
            return
        self.beginFilterChange()
        self.text, self.show = text.casefold().strip(), show
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: AnyIndex) -> bool:  # noqa: N802
        model = self.sourceModel()
        assert isinstance(model, DatasetModel)
        row = model.rows[source_row]
        if self.show == "Flagged" and not row.flags:
            return False
        if self.show == "Left out" and row.included:
            return False
        if self.show == "Included" and not row.included:
            return False
        if not self.text:
            return True
        return any(self.text in getter(row).casefold() for _, getter, _, _ in COLUMNS)

    def lessThan(self, left: AnyIndex, right: AnyIndex) -> bool:  # noqa: N802 - Qt's name
        a, b = left.data(Qt.ItemDataRole.UserRole), right.data(Qt.ItemDataRole.UserRole)
        try:
            return bool(a < b)
        except TypeError:
            return str(a) < str(b)


class DatasetPage(Page):
    """Sessions on top, the table in the middle, selection, listening and export below."""

    title = "Dataset"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self.extra_sessions: list[Session] = []  # added here, besides the open one
        self._devices: list[Device] = []
        self._player: Worker | None = None

        # --- sessions ---------------------------------------------------------------------
        self.sessions_list = QListWidget()
        self.sessions_list.setMaximumHeight(72)
        self.add_session_button = QPushButton("Add session…")
        self.add_session_button.clicked.connect(self._on_add_session)
        self.remove_session_button = QPushButton("Remove")
        self.remove_session_button.setToolTip("Take an added session off this table")
        self.remove_session_button.clicked.connect(self._on_remove_session)

        # --- the table --------------------------------------------------------------------
        self.model = DatasetModel()
        self.proxy = DatasetFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # the rows' own order first
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        # fitted to the contents on every refresh, the wordy ones capped, so the flags
        # (last) keep the rest of the width
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(WHY_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter: title, take, session, condition, flag…")
        self.filter_edit.setClearButtonEnabled(True)
        self.show_combo = QComboBox()
        self.show_combo.addItems(SHOW)
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.show_combo.currentTextChanged.connect(self._apply_filter)
        self.summary = QLabel("")
        self.empty = placeholder(
            "Open a session (or add sessions here) with aligned takes: every song of every "
            "take is listed with its quality figures, to choose what goes into a query set."
        )

        # --- choosing -----------------------------------------------------------------------
        self.exclude_button = QPushButton("Leave out…")
        self.exclude_button.setToolTip(
            "Leave the selected songs out of the query set, with a reason"
        )
        self.exclude_button.clicked.connect(self._on_exclude)
        self.include_button = QPushButton("Put back")
        self.include_button.clicked.connect(self._on_include)
        self.note_button = QPushButton("Note…")
        self.note_button.clicked.connect(self._on_note)
        self.measure_button = QPushButton("Measure quality")
        self.measure_button.setToolTip(
            "Make the quality record of aligned takes that have none (aligned by an older "
            "version), in every session of the table"
        )
        self.measure_button.clicked.connect(self._on_measure)

        # --- listening ----------------------------------------------------------------------
        self.output_combo = QComboBox()
        self.output_combo.setMinimumContentsLength(18)
        self.output_combo.setToolTip("The output device excerpts play on")
        self.play_clean_button = QPushButton("Play clean")
        self.play_take_button = QPushButton("Play take")
        self.stop_button = QPushButton("Stop")
        tip = "Play the same 8 s from the middle of the selected song: {}"
        self.play_clean_button.setToolTip(tip.format("the program as played"))
        self.play_take_button.setToolTip(tip.format("the take, as the microphone recorded it"))
        self.play_clean_button.clicked.connect(lambda: self._on_play("clean"))
        self.play_take_button.clicked.connect(lambda: self._on_play("take"))
        self.stop_button.clicked.connect(self._on_stop)

        # --- export -------------------------------------------------------------------------
        self.format_combo = QComboBox()
        self.format_combo.addItem("query clips + data card (folder)", "folder")
        self.format_combo.addItem("the paper authors' layout", "authors")
        self.lengths_edit = QLineEdit("1 2 3 5 10 15")
        self.lengths_edit.setToolTip("Query lengths in seconds")
        self.per_song = QSpinBox()
        self.per_song.setRange(0, 1000)
        self.per_song.setSpecialValueText("all")
        self.per_song.setToolTip("Queries per song and length (all: back to back)")
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._on_export)
        self.panel = TaskPanel()

        self._layout()
        state.takes_changed.connect(self.refresh)

    def _layout(self) -> None:
        sessions_row = QHBoxLayout()
        sessions_row.addWidget(QLabel("Sessions:"))
        sessions_row.addWidget(self.sessions_list, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.add_session_button)
        buttons.addWidget(self.remove_session_button)
        buttons.addStretch(1)
        sessions_row.addLayout(buttons)

        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addWidget(QLabel("Show:"))
        filter_row.addWidget(self.show_combo)

        choose = QHBoxLayout()
        for button in (self.exclude_button, self.include_button, self.note_button):
            choose.addWidget(button)
        choose.addWidget(self.measure_button)
        choose.addSpacing(24)
        choose.addWidget(QLabel("Listen on:"))
        choose.addWidget(self.output_combo)
        for button in (self.play_clean_button, self.play_take_button, self.stop_button):
            choose.addWidget(button)
        choose.addStretch(1)

        export_box = QGroupBox("Export the included songs as a query set")
        export = QHBoxLayout(export_box)
        export.addWidget(QLabel("Format:"))
        export.addWidget(self.format_combo)
        export.addWidget(QLabel("Lengths (s):"))
        export.addWidget(self.lengths_edit)
        export.addWidget(QLabel("Per song:"))
        export.addWidget(self.per_song)
        export.addStretch(1)
        export.addWidget(self.export_button)

        layout = QVBoxLayout(self)
        layout.addLayout(sessions_row)
        layout.addLayout(filter_row)
        layout.addWidget(self.empty)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)
        layout.addLayout(choose)
        layout.addWidget(export_box)
        layout.addWidget(self.panel)

    # --- what is shown --------------------------------------------------------------------

    @property
    def sessions(self) -> list[Session]:
        """The open session first, then the added ones (each once)."""
        found = [self.session] if self.session is not None else []
        seen = {s.folder.resolve() for s in found}
        for session in self.extra_sessions:
            if session.folder.resolve() not in seen:
                seen.add(session.folder.resolve())
                found.append(session)
        return found

    def refresh(self) -> None:
        sessions = self.sessions
        self.sessions_list.clear()
        for session in sessions:
            opened = " (open)" if session is self.session else ""
            self.sessions_list.addItem(f"{session.folder}{opened}")
        try:
            rows = collect_rows(sessions)
        except AfpError as exc:
            rows = []
            self.summary.setText(one_line(exc))
        else:
            self.summary.setText(summarise_rows(rows) if rows else "")
        self.model.set_rows(rows)
        self.table.resizeColumnsToContents()
        for column, (name, *_) in enumerate(COLUMNS):
            cap = _WIDEST.get(name)
            if cap and self.table.columnWidth(column) > cap:
                self.table.setColumnWidth(column, cap)
        self.empty.setVisible(not rows)
        self.table.setVisible(bool(rows))
        if not self.output_combo.count() and not self.busy:
            self._list_outputs()
        self._update_buttons()

    def _apply_filter(self) -> None:
        self.proxy.set_filter(self.filter_edit.text(), self.show_combo.currentText())

    def selected_rows(self) -> list[DatasetRow]:
        indexes = self.table.selectionModel().selectedRows()
        return [self.model.rows[self.proxy.mapToSource(i).row()] for i in indexes]

    def _update_buttons(self) -> None:
        chosen = self.selected_rows()
        idle = not self.busy
        for button in (self.exclude_button, self.note_button):
            button.setEnabled(idle and bool(chosen))
        self.include_button.setEnabled(idle and any(not r.included for r in chosen))
        self.measure_button.setEnabled(
            idle and any(not r.measured and r.verdict != "not aligned" for r in self.model.rows)
        )
        playing = self._player is not None and not self._player.has_ended
        can_play = len(chosen) == 1 and bool(self.output_combo.currentData()) and not playing
        self.play_clean_button.setEnabled(can_play)
        self.play_take_button.setEnabled(can_play and chosen[0].verdict != "not aligned")
        self.stop_button.setEnabled(playing)
        self.export_button.setEnabled(idle and any(r.included for r in self.model.rows))
        self.add_session_button.setEnabled(idle)
        self.remove_session_button.setEnabled(idle and bool(self.extra_sessions))

    # --- sessions -------------------------------------------------------------------------

    def add_session(self, folder: Path | str) -> Session:
        """Show ``folder``'s session in the table too (``SessionError`` if it is none)."""
        session = Session.load(folder)
        self.extra_sessions.append(session)
        self.refresh()
        return session

    def _on_add_session(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a session folder")
        if not folder:
            return
        try:
            self.add_session(folder)
        except AfpError as exc:
            QMessageBox.warning(self, "Add session", one_line(exc))

    def _on_remove_session(self) -> None:
        item = self.sessions_list.currentItem()
        text = item.text() if item is not None else ""
        kept = [s for s in self.extra_sessions if str(s.folder) != text]
        self.extra_sessions = kept if item is not None else self.extra_sessions[:-1]
        self.refresh()

    # --- choosing -------------------------------------------------------------------------

    def exclude(self, rows: Sequence[DatasetRow], scope: str, reason: str) -> None:
        """Leave ``rows`` out (``scope``: "song", "take" or "every", as in ``SCOPES``)."""
        self._edit(rows, lambda sel, r: sel.exclude(*_target(r, scope), reason))

    def include(self, rows: Sequence[DatasetRow]) -> None:
        """Put ``rows`` back: whatever leaves them out (their song, take or song in every take)."""

        def put_back(selection: Selection, row: DatasetRow) -> None:
            for take, song in ((row.take, row.song), (row.take, None), (None, row.song)):
                selection.exclusions = [
                    e for e in selection.exclusions if (e.take, e.song) != (take, song)
                ]

        self._edit(rows, put_back)

    def set_note(self, rows: Sequence[DatasetRow], text: str) -> None:
        self._edit(rows, lambda sel, r: sel.set_note(r.take, r.song, text))

    def _edit(
        self, rows: Sequence[DatasetRow], change: Callable[[Selection, DatasetRow], None]
    ) -> None:
        try:
            for session in {id(r.session): r.session for r in rows}.values():
                selection = Selection.from_session(session)
                for row in rows:
                    if row.session is session:
                        change(selection, row)
                selection.store(session)
        except AfpError as exc:
            QMessageBox.warning(self, "Dataset", one_line(exc))
        self.refresh()

    def _on_exclude(self) -> None:
        rows = self.selected_rows()
        if not rows:
            return
        scope, ok = QInputDialog.getItem(
            self, "Leave out", "Leave out:", [label for label, _ in SCOPES], 0, False
        )
        if not ok:
            return
        reason, ok = QInputDialog.getText(self, "Leave out", "Why (kept with the choice):")
        if ok and reason.strip():
            self.exclude(rows, dict(SCOPES)[scope], reason)

    def _on_include(self) -> None:
        self.include(self.selected_rows())

    def _on_note(self) -> None:
        rows = self.selected_rows()
        if not rows:
            return
        text, ok = QInputDialog.getText(
            self, "Note", "Note on the selected songs (empty removes it):", text=rows[0].note
        )
        if ok:
            self.set_note(rows, text)

    def _on_measure(self) -> None:
        worker = Worker(measure_missing_quality, self.sessions)
        worker.finished.connect(lambda _: self.refresh())
        self.start_job(worker, self.panel, "measuring the takes' quality")

    # --- listening ------------------------------------------------------------------------

    def _list_outputs(self) -> None:
        worker = Worker(lambda task: list_devices())
        worker.finished.connect(self._on_outputs)
        worker.start()
        self._lister = worker  # kept alive until it reports

    def _on_outputs(self, devices: list[Device]) -> None:
        self.output_combo.clear()
        outputs = [d for d in devices if d.supports("output")]
        for device in outputs:
            self.output_combo.addItem(device.name, device.name)
        if not outputs:
            self.output_combo.addItem("(no output device)", None)
        self._update_buttons()

    def _on_play(self, source: str) -> None:
        rows = self.selected_rows()
        device = self.output_combo.currentData()
        if len(rows) != 1 or not device:
            return
        self._player = Worker(play_excerpt, rows[0], source, device)
        self._player.errored.connect(lambda message: self.status.emit(f"Dataset: {message}"))
        self._player.done.connect(self._update_buttons)
        self._player.start()
        self.status.emit(f"Dataset: playing {source} of {rows[0].title} ({rows[0].take})")
        self._update_buttons()

    def _on_stop(self) -> None:
        if self._player is not None:
            self._player.cancel()

    # --- export ---------------------------------------------------------------------------

    def _on_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the query set into")
        if folder:
            self.export(Path(folder))

    def export(self, out_dir: Path) -> Worker | None:
        """Export the included songs of the table's sessions into ``out_dir`` on a worker."""
        from rig_app.export import export_query_set

        try:
            lengths = parse_lengths(self.lengths_edit.text())
        except AfpError as exc:
            self.panel.setVisible(True)
            self.panel.message.setText(one_line(exc))
            return None
        worker = Worker(
            export_query_set,
            [s.folder for s in self.sessions],
            out_dir,
            lengths_s=lengths,
            per_song=self.per_song.value() or None,
            layout=self.format_combo.currentData(),
        )
        worker.finished.connect(
            lambda _result: self.status.emit(f"Dataset: query set written to {out_dir}")
        )
        return self.start_job(worker, self.panel, f"exporting to {out_dir}")


def _target(row: DatasetRow, scope: str) -> tuple[str | None, int | None]:
    """(take, song) an exclusion of ``row`` names for ``scope``."""
    if scope == "take":
        return row.take, None
    if scope == "every":
        return None, row.song
    return row.take, row.song
