"""Program page: build the music and noise programs and look at what came out."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from rig_app.jobs import (
    ProgramOptions,
    ProgramView,
    build_session_program,
    format_duration,
    load_program_view,
    program_is_stale,
)
from rig_app.session import Session
from rig_app.ui.pages import Collapsible, Page
from rig_app.ui.state import RigState
from rig_app.ui.widgets import WaveformOverview
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["ProgramPage"]

SONG_COLUMNS = ("Title", "Start", "Length", "LUFS before", "LUFS after", "Gain", "Note")
SAMPLE_RATES = (48000, 44100, 32000, 16000)
_OVERLOAD = (("lower its gain (never clip)", "lower_gain"), ("limit its peaks", "limit"))


def _spin(low: float, high: float, value: float, suffix: str, step: float = 0.5) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(1)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


def _lufs(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _gain(gain_db: float) -> str:
    return "0.0 dB" if abs(gain_db) < 0.05 else f"{gain_db:+.1f} dB"


class ProgramPage(Page):
    """Build settings on the left, the built program's summary and overview on the right."""

    title = "Program"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self._view: ProgramView | None = None
        self._loaded_for: Session | None = None

        defaults = ProgramOptions()
        self.target_lufs = _spin(-40.0, -5.0, defaults.target_lufs, " LUFS")
        self.overload = QComboBox()
        for text, value in _OVERLOAD:
            self.overload.addItem(text, value)
        self.gap = _spin(0.0, 10.0, defaults.gap_s, " s", 0.1)
        self.noise_list = QListWidget()
        self.noise_list.setMaximumHeight(72)
        self.noise_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.add_noise_button = QPushButton("Add…")
        self.add_noise_button.clicked.connect(self._on_add_noise)
        self.remove_noise_button = QPushButton("Remove")
        self.remove_noise_button.clicked.connect(self._on_remove_noise)
        self.noise_level = _spin(-40.0, 20.0, defaults.noise_level_db, " dB")
        self.noise_level.setToolTip("Noise loudness relative to the music's")

        self.sample_rate = QComboBox()
        for rate in SAMPLE_RATES:
            self.sample_rate.addItem(f"{rate} Hz", rate)
        self.peak_ceiling = _spin(-12.0, 0.0, defaults.peak_ceiling_db, " dBTP", 0.1)
        self.min_song = _spin(0.0, 3600.0, defaults.min_song_s, " s", 10.0)
        self.min_song.setToolTip("Songs shorter than this are refused")
        self.seed = QSpinBox()
        self.seed.setRange(0, 1_000_000)
        self.seed.setToolTip("Shuffle of the noise clips")
        advanced_box = QWidget()
        advanced = QFormLayout(advanced_box)
        advanced.setContentsMargins(16, 0, 0, 0)
        advanced.addRow("Sample rate:", self.sample_rate)
        advanced.addRow("Peak ceiling:", self.peak_ceiling)
        advanced.addRow("Shortest song:", self.min_song)
        advanced.addRow("Noise shuffle seed:", self.seed)
        self.advanced = Collapsible("Advanced", advanced_box)

        self.build_button = QPushButton("Build program")
        self.build_button.setDefault(True)
        self.build_button.clicked.connect(self.build)
        self.panel = TaskPanel()

        noise_buttons = QHBoxLayout()
        noise_buttons.addWidget(self.add_noise_button)
        noise_buttons.addWidget(self.remove_noise_button)
        noise_buttons.addStretch(1)
        noise_box = QVBoxLayout()
        noise_box.addWidget(self.noise_list)
        noise_box.addLayout(noise_buttons)
        form = QFormLayout()
        form.addRow("Target loudness:", self.target_lufs)
        form.addRow("A song that would clip:", self.overload)
        form.addRow("Silence around markers:", self.gap)
        form.addRow("Noise clips:", noise_box)
        form.addRow("Noise level:", self.noise_level)
        settings = QGroupBox("Build settings")
        settings_layout = QVBoxLayout(settings)
        settings_layout.addLayout(form)
        settings_layout.addWidget(self.advanced)
        settings_layout.addWidget(self.build_button)
        settings_layout.addStretch(1)
        settings.setMaximumWidth(420)

        self.facts: dict[str, QLabel] = {}
        facts = QGridLayout()
        for row, name in enumerate(("Length", "Markers", "Songs", "Sample rate", "Noise")):
            label = QLabel("—")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            facts.addWidget(QLabel(f"{name}:"), row, 0)
            facts.addWidget(label, row, 1)
            self.facts[name] = label
        facts.setColumnStretch(1, 1)
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        self.stale = QLabel("")
        self.stale.setWordWrap(True)
        self.stale.setStyleSheet("color: #b00020;")
        summary = QGroupBox("Program")
        summary_layout = QVBoxLayout(summary)
        summary_layout.addLayout(facts)
        summary_layout.addWidget(self.stale)
        summary_layout.addWidget(self.notes)
        summary_layout.addStretch(1)

        self.overview = WaveformOverview()
        self.table = QTableWidget(0, len(SONG_COLUMNS))
        self.table.setHorizontalHeaderLabels(SONG_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(True)

        top = QHBoxLayout()
        top.addWidget(settings, 0)
        top.addWidget(summary, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.panel)
        layout.addWidget(self.overview, 1)
        layout.addWidget(self.table, 1)
        state.songs_changed.connect(self._on_songs_changed)
        self.refresh()

    # --- settings --------------------------------------------------------------------------

    def options(self) -> ProgramOptions:
        """The build settings as the form shows them."""
        return ProgramOptions(
            target_lufs=self.target_lufs.value(),
            on_overload=self.overload.currentData(),
            peak_ceiling_db=self.peak_ceiling.value(),
            gap_s=self.gap.value(),
            noise_files=tuple(self._noise_paths()),
            noise_level_db=self.noise_level.value(),
            seed=self.seed.value(),
            sample_rate=int(self.sample_rate.currentData()),
            min_song_s=self.min_song.value(),
        )

    def _noise_paths(self) -> list[Path]:
        return [
            Path(self.noise_list.item(i).data(Qt.ItemDataRole.UserRole))
            for i in range(self.noise_list.count())
        ]

    def add_noise_files(self, paths: list[str | Path]) -> None:
        """Add noise clips (files) to the list, each once."""
        known = set(self._noise_paths())
        for path in map(Path, paths):
            if path not in known:
                item = QListWidgetItem(path.name)
                item.setData(Qt.ItemDataRole.UserRole, str(path))
                item.setToolTip(str(path))
                self.noise_list.addItem(item)
                known.add(path)

    def _on_add_noise(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Noise clips", "", "Audio (*.wav *.flac *.ogg *.mp3 *.opus);;All (*)"
        )
        self.add_noise_files(list(files))

    def _on_remove_noise(self) -> None:
        for item in self.noise_list.selectedItems():
            self.noise_list.takeItem(self.noise_list.row(item))

    # --- jobs ------------------------------------------------------------------------------

    def build(self) -> Worker | None:
        """Build the program from the form's settings in a worker; returns it."""
        session = self.session
        if session is None or self.busy:
            return None
        worker = Worker(build_session_program, session, self.options())
        worker.finished.connect(self._on_built)
        worker.errored.connect(self._on_error)
        worker.cancelled.connect(self._on_cancelled)
        self._set_enabled(False)
        return self.start_job(worker, self.panel, "building the program …")

    def _load(self, session: Session) -> None:
        self._loaded_for = session
        worker = Worker(load_program_view, session)
        worker.finished.connect(self._on_loaded)
        worker.errored.connect(self._on_error)
        self.start_job(worker, self.panel, "loading the program …")

    def _on_built(self, view: ProgramView) -> None:
        self._show(view)
        self.status.emit(
            f"Program: {format_duration(view.duration_s)}, {view.marker_count} markers, "
            f"{len(view.songs)} songs"
        )
        self.state.program_changed.emit()
        self.state.songs_changed.emit()

    def _on_loaded(self, view: ProgramView | None) -> None:
        if self._loaded_for is self.session:
            self._show(view)

    def _on_error(self, message: str) -> None:
        self.status.emit(f"Program: {message}")

    def _on_cancelled(self) -> None:
        self.status.emit("Program: build cancelled; the session keeps its previous program")

    def _on_songs_changed(self) -> None:
        if self._view is not None and self.session is not None:
            self._view.stale = program_is_stale(self.session)
            self._show(self._view)

    def _on_session_changed(self, session: Session | None) -> None:
        self._show(None)
        if session is not None and session.program is not None:
            self._load(session)
        self.refresh()

    # --- view ------------------------------------------------------------------------------

    def _set_enabled(self, enabled: bool) -> None:
        self.build_button.setEnabled(enabled and bool(self.session and self.session.songs))
        for widget in (self.add_noise_button, self.remove_noise_button):
            widget.setEnabled(enabled)

    def refresh(self) -> None:
        self._set_enabled(self.session is not None and not self.busy)
        if self.session is None:
            self.notes.setText("Create or open a session first.")
        elif not self.session.songs and self._view is None:
            self.notes.setText("Add songs on the Songs page, then build the program here.")
        elif self._view is None and self.session.program is None:
            self.notes.setText("No program yet: choose the settings and press Build program.")

    @property
    def view(self) -> ProgramView | None:
        return self._view

    def _show(self, view: ProgramView | None) -> None:
        self._view = view
        if view is None:
            for label in self.facts.values():
                label.setText("—")
            self.notes.setText("")
            self.stale.setText("")
            self.overview.set_program(None)
            self.table.setRowCount(0)
            self.refresh()
            return
        self.facts["Length"].setText(
            f"{format_duration(view.duration_s)} ({view.samples:,} samples)"
        )
        self.facts["Markers"].setText(f"{view.marker_count} sweeps (start, between songs, end)")
        target = "" if view.target_lufs is None else f", normalised to {view.target_lufs:g} LUFS"
        self.facts["Songs"].setText(f"{len(view.songs)}{target}")
        self.facts["Sample rate"].setText(f"{view.sample_rate} Hz")
        self.facts["Noise"].setText("noise track, same length" if view.has_noise else "none")
        if view.notes:
            self.notes.setText("Notes:\n" + "\n".join(f"• {note}" for note in view.notes))
            self.notes.setStyleSheet("color: #8a5a00;")
        else:
            self.notes.setText("Every song reached the target loudness without clipping.")
            self.notes.setStyleSheet("")
        self.stale.setText(
            "The session's songs changed since this program was built: build it again."
            if view.stale
            else ""
        )
        self.overview.set_program(
            view.overview,
            [(song.title, song.start_s, song.end_s) for song in view.songs],
            [seconds for _, seconds in view.markers],
        )
        self.table.setRowCount(len(view.songs))
        for row, song in enumerate(view.songs):
            cells = (
                song.title,
                format_duration(song.start_s),
                format_duration(song.duration_s),
                _lufs(song.loudness_before),
                _lufs(song.loudness_after),
                _gain(song.gain_db),
                song.note,
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                if 1 <= column <= 5:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(row, column, item)
