"""Inspect page: what the channel did to the music (paper Figures 2 and 3).

Top: the average spectrum of the clean program against each aligned take, over all songs
or one song, each take level-matched to the clean program at 300-3000 Hz, with a table of
each take's level, its coloration below 300 Hz and above 3 kHz and the share of the clean
program's spectral peaks it kept, the key in a row under the plot. Bottom: spectrograms of
one excerpt of the clean program and of a take side by side, on one dB colour range (a
toggle), with their peaks, linked axes and a shared time cursor.

The numbers come from ``rig_app.inspect`` on worker threads; this page only draws them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from afp_core.colours import take_colour as shared_take_colour
from afp_core.errors import AfpError
from afp_core.fileutil import one_line
from rig_app.inspect import (
    ANALYSIS_RATES,
    COLOUR_RANGE_DB,
    DEFAULT_EXCERPT_S,
    ExcerptView,
    InspectError,
    InspectTargets,
    SpectraView,
    SpectrumScope,
    compute_excerpt,
    compute_spectra,
    inspect_targets,
    smooth_octave,
    song_titles,
)
from rig_app.session import Session
from rig_app.ui.pages import Page, placeholder
from rig_app.ui.state import RigState
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["InspectPage"]

CLEAN_COLOUR = "#202020"
KEPT_COLOUR = "#ffffff"
LOST_COLOUR = "#ff2d2d"
CURSOR_COLOUR = "#ffd400"
MIN_FREQ_HZ = 40.0
SMOOTHING = 12  # 1/12 octave
EXCERPT_DELAY_MS = 250
TABLE_COLUMNS = ("Take", "Level", "< 300 Hz", "> 3 kHz", "Peaks kept")
_RATE_TEXT = {16000: "16 kHz (the whole band)", 8000: "8 kHz (what the model hears)"}
_RED = "color: #b00020;"


def take_colour(label: str, index: int) -> str:
    """The take's colour, the one the reports' figures use (``afp_core.colours``)."""
    return shared_take_colour(label, index)


def _percent(share: float) -> str:
    return "—" if not math.isfinite(share) else f"{100 * share:.0f} %"


def _db(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    value = round(value, 1) + 0.0  # no "-0.0"
    return f"{value:+.1f} dB"


def _legend_html(entries: list[tuple[str, str]]) -> str:
    """A one-line key: a thick line in each curve's colour, then its name."""
    return "&nbsp;&nbsp;&nbsp;&nbsp;".join(
        f'<span style="color:{colour}; font-weight:bold;">&#x2501;&#x2501;</span>&nbsp;'
        f"{html.escape(name)}"
        for name, colour in entries
    )


def _frequency_ticks(low_hz: float, high_hz: float) -> list[tuple[float, str]]:
    """Ticks of a log-frequency axis (positions are log10 Hz): 50, 100, 200, 300, 500 ..."""
    ticks = []
    for decade in (10, 100, 1000, 10000):
        for step in (1, 2, 3, 5):
            hz = step * decade
            if low_hz <= hz <= high_hz:
                text = f"{hz // 1000}k" if hz >= 1000 else str(hz)
                ticks.append((math.log10(hz), text))
    return ticks


def _plot(title: str = "") -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w")
    item = widget.getPlotItem()
    for name in ("left", "bottom"):
        axis = item.getAxis(name)
        axis.setPen("k")
        axis.setTextPen("k")
    if title:
        item.setTitle(title, color="k", size="10pt")
    widget.setMinimumHeight(180)
    return widget


class _Spectrogram:
    """One spectrogram plot: image, colour bar, kept/lost peaks and a movable cursor."""

    def __init__(self, kept_name: str, lost_name: str) -> None:
        self.widget = _plot()
        self.plot = self.widget.getPlotItem()
        self.plot.setLabel("bottom", "Time in song", units="s", color="k")
        self.plot.setLabel("left", "Frequency", units="Hz", color="k")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.colour_bar = pg.ColorBarItem(
            values=(-COLOUR_RANGE_DB, 0.0),
            colorMap=pg.colormap.get("viridis"),
            interactive=False,
            width=12,
            pen="k",
        )
        self.colour_bar.setImageItem(self.image, insert_in=self.plot)
        self.colour_bar.axis.setPen("k")
        self.colour_bar.axis.setTextPen("k")
        self.colour_bar.axis.setLabel("dB", color="k")
        self.legend = self.plot.addLegend(
            offset=(-4, 4),
            brush=pg.mkBrush(0, 0, 0, 170),
            labelTextColor="w",
            labelTextSize="8pt",
            verSpacing=-6,
        )
        self.kept = pg.ScatterPlotItem(
            symbol="o", size=5, pen=pg.mkPen("k", width=0.6), brush=KEPT_COLOUR, name=kept_name
        )
        self.lost = pg.ScatterPlotItem(
            symbol="x", size=7, pen=None, brush=LOST_COLOUR, name=lost_name
        )
        self.plot.addItem(self.kept)
        self.plot.addItem(self.lost)
        self.cursor = pg.InfiniteLine(
            angle=90,
            movable=True,
            pen=pg.mkPen(CURSOR_COLOUR, width=2),
            hoverPen=pg.mkPen(CURSOR_COLOUR, width=4),
        )
        self.cursor.setZValue(20)
        self.plot.addItem(self.cursor, ignoreBounds=True)
        self.plot.setMouseEnabled(x=True, y=False)

    def show(
        self,
        spec_db: np.ndarray,
        times_s: np.ndarray,
        freqs_hz: np.ndarray,
        kept: tuple[np.ndarray, np.ndarray],
        lost: tuple[np.ndarray, np.ndarray],
        title: str,
        levels: tuple[float, float],
    ) -> None:
        self.image.setImage(spec_db, autoLevels=False)
        self.colour_bar.setLevels(levels)
        hop = float(times_s[1] - times_s[0]) if len(times_s) > 1 else 0.0
        bin_hz = float(freqs_hz[1] - freqs_hz[0]) if len(freqs_hz) > 1 else 0.0
        if len(times_s):
            self.image.setRect(
                QRectF(
                    float(times_s[0]) - hop / 2,
                    -bin_hz / 2,
                    hop * len(times_s),
                    bin_hz * len(freqs_hz),
                )
            )
        self.kept.setData(x=kept[0], y=kept[1])
        self.lost.setData(x=lost[0], y=lost[1])
        self.plot.setTitle(title, color="k", size="10pt")

    def clear(self, title: str = "") -> None:
        self.image.clear()
        self.kept.setData(x=[], y=[])
        self.lost.setData(x=[], y=[])
        self.plot.setTitle(title, color="k", size="10pt")

    @property
    def has_image(self) -> bool:
        return self.image.image is not None and self.image.image.size > 0

    @property
    def levels(self) -> tuple[float, float]:
        """The dB range the colours span (the colour bar's)."""
        low, high = self.colour_bar.levels()
        return float(low), float(high)


class InspectPage(Page):
    """Average spectra of clean vs takes; spectrograms of an excerpt with their peaks."""

    title = "Inspect"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self._targets: InspectTargets | None = None
        self._problem = ""
        self._spectra: SpectraView | None = None
        self._excerpt: ExcerptView | None = None
        self._analysed_key: tuple[object, ...] | None = None
        self._spectra_worker: Worker | None = None
        self._excerpt_worker: Worker | None = None
        self._excerpt_pending = False
        self._spectra_pending = False

        self.empty = placeholder("")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)

        top = self._build_top()
        spectra_box = self._build_spectra()
        excerpt_box = self._build_excerpt()
        self.figure = QSplitter(Qt.Orientation.Vertical)
        self.figure.addWidget(spectra_box)
        self.figure.addWidget(excerpt_box)
        self.figure.setChildrenCollapsible(False)
        self.figure.setStretchFactor(0, 1)
        self.figure.setStretchFactor(1, 1)
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.addLayout(top)
        content_layout.addWidget(self.figure, 1)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(content)
        layout = QVBoxLayout(self)
        layout.addWidget(self.stack)

        state.takes_changed.connect(self._on_inputs_changed)
        state.program_changed.connect(self._on_inputs_changed)
        self._on_session_changed(state.session)

    def _build_top(self) -> QHBoxLayout:
        """The analysis rate, Analyse again and Export PNG."""
        self.rate = QComboBox()
        for rate in ANALYSIS_RATES:
            self.rate.addItem(_RATE_TEXT.get(rate, f"{rate} Hz"), rate)
        self.rate.setToolTip("Sample rate the audio is analysed at")
        self.rate.currentIndexChanged.connect(self._on_rate_changed)
        self.analyse_button = QPushButton("Analyse again")
        self.analyse_button.setToolTip("Compute the average spectra and peak counts again")
        self.analyse_button.clicked.connect(lambda: self.analyse())
        self.export_button = QPushButton("Export PNG…")
        self.export_button.setToolTip("Save the plots as they are shown")
        self.export_button.clicked.connect(self._on_export_clicked)
        top = QHBoxLayout()
        top.addWidget(QLabel("Analysis rate:"))
        top.addWidget(self.rate)
        top.addWidget(self.analyse_button)
        top.addStretch(1)
        top.addWidget(self.export_button)
        return top

    def _build_spectra(self) -> QGroupBox:
        """Average spectra of the clean program and the takes, beside the takes' table."""
        self.scope = QComboBox()
        self.scope.setMinimumContentsLength(18)
        self.scope.currentIndexChanged.connect(self._draw_spectra)
        self.difference = QCheckBox("Difference to clean")
        self.difference.setToolTip("Plot each take minus the clean program (the coloration)")
        self.difference.toggled.connect(self._draw_spectra)
        self.spectra_widget = _plot()
        self.spectra_plot = self.spectra_widget.getPlotItem()
        self.spectra_plot.setLogMode(x=True, y=False)
        self.spectra_plot.setLabel("bottom", "Frequency (Hz)", color="k")
        self.spectra_plot.showGrid(x=True, y=True, alpha=0.25)
        # the key in a row of its own: inside the plot, any corner hides some curve
        # (below 200 Hz the takes fall to the bottom, the top is the loud midrange)
        self.spectra_legend = QLabel("")
        self.spectra_legend.setTextFormat(Qt.TextFormat.RichText)
        self.spectra_legend.setWordWrap(True)
        self.spectra_panel = TaskPanel()
        self.spectra_note = QLabel("")
        self.spectra_note.setWordWrap(True)
        self._build_table()
        scope_row = QHBoxLayout()
        scope_row.addWidget(QLabel("Songs:"))
        scope_row.addWidget(self.scope, 1)
        scope_row.addWidget(self.difference)
        side = QVBoxLayout()
        side.addLayout(scope_row)
        side.addWidget(self.table)
        side.addWidget(self.table_note)
        side.addStretch(1)
        plot_column = QVBoxLayout()
        plot_column.addWidget(self.spectra_widget, 1)
        plot_column.addWidget(self.spectra_legend)
        spectra_row = QHBoxLayout()
        spectra_row.addLayout(plot_column, 1)
        spectra_row.addLayout(side)
        spectra_box = QGroupBox("Average spectrum: clean program vs takes (Welch)")
        spectra_layout = QVBoxLayout(spectra_box)
        spectra_layout.addLayout(spectra_row, 1)
        spectra_layout.addWidget(self.spectra_note)
        spectra_layout.addWidget(self.spectra_panel)
        return spectra_box

    def _build_table(self) -> None:
        """Per take: level, coloration and the share of the clean program's peaks kept."""
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        tips = (
            "",
            "The take's level relative to the clean program at 300-3000 Hz",
            "Mean coloration below 300 Hz (level-matched take minus clean)",
            "Mean coloration from 3 kHz up (level-matched take minus clean)",
            "Share of the clean program's spectral peaks found in the take (±2 bins, ±2 frames)",
        )
        for column, tip in enumerate(tips):
            header_item = self.table.horizontalHeaderItem(column)  # set by the labels above
            if tip and header_item is not None:
                header_item.setToolTip(tip)
        self.table.setMinimumWidth(330)
        self.table.setMaximumWidth(400)
        self.table_note = QLabel("")
        self.table_note.setWordWrap(True)
        self.table_note.setMaximumWidth(400)

    def _build_excerpt(self) -> QGroupBox:
        """Spectrograms of one excerpt, clean and recorded, with their spectral peaks."""
        controls = self._build_excerpt_controls()
        self.clean_view = _Spectrogram("kept in the take", "lost in the take")
        self.take_view = _Spectrogram("also in clean", "not in clean")
        self.take_view.plot.setXLink(self.clean_view.plot)
        self.take_view.plot.setYLink(self.clean_view.plot)
        self.clean_view.cursor.sigPositionChanged.connect(self._on_cursor_moved)
        self.take_view.cursor.sigPositionChanged.connect(self._on_cursor_moved)
        self.excerpt_panel = TaskPanel()
        self.excerpt_note = QLabel("")
        self.excerpt_note.setWordWrap(True)
        images = QHBoxLayout()
        images.addWidget(self.clean_view.widget, 1)
        images.addWidget(self.take_view.widget, 1)
        excerpt_box = QGroupBox("Spectrograms of an excerpt, with spectral peaks")
        excerpt_layout = QVBoxLayout(excerpt_box)
        excerpt_layout.addLayout(controls)
        excerpt_layout.addLayout(images, 1)
        excerpt_layout.addWidget(self.excerpt_note)
        excerpt_layout.addWidget(self.excerpt_panel)
        return excerpt_box

    def _build_excerpt_controls(self) -> QHBoxLayout:
        """Which take, song, start and length; the colour range; the cursor's reading."""
        self.take = QComboBox()
        self.song = QComboBox()
        self.song.setMinimumContentsLength(16)
        self.start = QDoubleSpinBox()
        self.start.setDecimals(1)
        self.start.setSingleStep(1.0)
        self.start.setSuffix(" s")
        self.start.setToolTip("Where the excerpt starts, seconds from the song's start")
        self.length = QDoubleSpinBox()
        self.length.setRange(1.0, 120.0)
        self.length.setDecimals(1)
        self.length.setSingleStep(1.0)
        self.length.setSuffix(" s")
        self.length.setValue(DEFAULT_EXCERPT_S)
        self.same_levels = QCheckBox("Same colour range")
        self.same_levels.setChecked(True)
        self.same_levels.setToolTip(
            f"Colour both spectrograms from the clean program's loudest level down "
            f"{COLOUR_RANGE_DB:g} dB, so that a colour means the same level in both (a quieter "
            "take looks darker); untick to colour each from its own loudest level"
        )
        self.same_levels.toggled.connect(self._draw_excerpt)
        self.cursor_label = QLabel("")
        self._excerpt_timer = QTimer(self)
        self._excerpt_timer.setSingleShot(True)
        self._excerpt_timer.setInterval(EXCERPT_DELAY_MS)
        self._excerpt_timer.timeout.connect(lambda: self.show_excerpt())
        self.take.currentIndexChanged.connect(self._schedule_excerpt)
        self.song.currentIndexChanged.connect(self._on_song_changed)
        self.start.valueChanged.connect(self._schedule_excerpt)
        self.length.valueChanged.connect(self._schedule_excerpt)
        controls = QHBoxLayout()
        for text, widget in (
            ("Take:", self.take),
            ("Song:", self.song),
            ("Start:", self.start),
            ("Length:", self.length),
        ):
            controls.addWidget(QLabel(text))
            controls.addWidget(widget)
        controls.addSpacing(12)
        controls.addWidget(self.same_levels)
        controls.addStretch(1)
        controls.addWidget(self.cursor_label)
        return controls

    # --- what there is to inspect ------------------------------------------------------------

    @property
    def targets(self) -> InspectTargets | None:
        return self._targets

    @property
    def spectra(self) -> SpectraView | None:
        return self._spectra

    @property
    def excerpt(self) -> ExcerptView | None:
        return self._excerpt

    @property
    def placeholder_text(self) -> str:
        """The hint shown instead of the plots ('' when the plots are shown)."""
        return self.empty.text() if self.stack.currentWidget() is self.empty else ""

    @property
    def sample_rate(self) -> int:
        return int(self.rate.currentData())

    def _on_session_changed(self, session: Session | None) -> None:
        self._spectra = None
        self._excerpt = None
        self._analysed_key = None
        self._read_targets(session)
        self._start_if_visible()

    def _on_inputs_changed(self) -> None:
        self._analysed_key = None
        self._read_targets(self.session)
        self._start_if_visible()

    def _read_targets(self, session: Session | None) -> None:
        self._targets = None
        if session is None:
            self._problem = "No session open: create or open one with the buttons above."
        else:
            try:
                self._targets = inspect_targets(session)
                self._problem = ""
            except AfpError as exc:
                text = one_line(exc)
                self._problem = text[0].upper() + text[1:] + "."
        self._fill_controls()
        self.refresh()

    def _fill_controls(self) -> None:
        targets = self._targets
        take, song = self.take.currentText(), self.song.currentIndex()
        for combo in (self.take, self.song):
            combo.blockSignals(True)
            combo.clear()
        if targets is not None:
            for entry in targets.takes:
                text = f"{entry.label} (flagged)" if entry.flagged else entry.label
                self.take.addItem(text, entry.label)
            self.song.addItems(song_titles(targets.songs))
            labels = [entry.label for entry in targets.takes]
            preferred = take.split(" ")[0] if take else ""
            # by default the most distorted take: the one worth looking at
            for wanted in (preferred, "high", "mid", "low"):
                if wanted in labels:
                    self.take.setCurrentIndex(labels.index(wanted))
                    break
            self.song.setCurrentIndex(min(max(song, 0), len(targets.songs) - 1))
        for combo in (self.take, self.song):
            combo.blockSignals(False)
        self._update_start_range()

    def _update_start_range(self) -> None:
        targets = self._targets
        index = self.song.currentIndex()
        if targets is None or index < 0:
            return
        duration = targets.songs[index].duration_s
        self.start.blockSignals(True)
        self.start.setRange(0.0, max(0.0, duration - 1.0))
        self.start.blockSignals(False)

    # --- jobs --------------------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self._start_if_visible()

    def _start_if_visible(self) -> None:
        if self._targets is None or not self.isVisible():
            return
        if self._analysed_key != self._key():
            self.analyse()
        if self._excerpt is None or self._excerpt.sample_rate != self.sample_rate:
            self.show_excerpt()

    def _key(self) -> tuple[object, ...]:
        targets = self._targets
        takes = () if targets is None else targets.takes
        return (id(self.session), self.sample_rate, takes)

    def analyse(self) -> Worker | None:
        """Compute the average spectra and peak counts in a worker; returns it."""
        session = self.session
        if session is None or self._targets is None:
            return None
        if self._spectra_worker is not None:  # start again once the running one stopped
            self._spectra_worker.cancel()
            self._spectra_pending = True
            return None
        self._analysed_key = self._key()
        self._spectra_pending = False
        worker = Worker(compute_spectra, session, self.sample_rate)
        worker.finished.connect(self._on_spectra)
        worker.errored.connect(self._on_spectra_error)
        worker.cancelled.connect(self._on_spectra_cancelled)
        worker.done.connect(self._on_spectra_done)
        self._spectra_worker = worker
        self.spectra_note.setText("")
        return self.start_job(worker, self.spectra_panel, "average spectra …")

    def show_excerpt(self) -> Worker | None:
        """Compute the chosen excerpt's spectrograms in a worker; returns it."""
        self._excerpt_timer.stop()
        session = self.session
        if session is None or self._targets is None or self.take.currentIndex() < 0:
            return None
        if self._excerpt_worker is not None:  # the newest request wins
            self._excerpt_worker.cancel()
            self._excerpt_pending = True
            return None
        self._excerpt_pending = False
        worker = Worker(
            compute_excerpt,
            session,
            self.take.currentData(),
            self.song.currentIndex(),
            self.start.value(),
            self.length.value(),
            self.sample_rate,
        )
        worker.finished.connect(self._on_excerpt)
        worker.errored.connect(self._on_excerpt_error)
        worker.done.connect(self._on_excerpt_done)
        self._excerpt_worker = worker
        return self.start_job(worker, self.excerpt_panel, "spectrograms …")

    def _schedule_excerpt(self) -> None:
        if self._targets is not None and self.isVisible():
            self._excerpt_timer.start()

    def _on_song_changed(self) -> None:
        self._update_start_range()
        self._schedule_excerpt()

    def _on_rate_changed(self) -> None:
        self._start_if_visible()

    def _on_spectra(self, view: SpectraView) -> None:
        self._spectra = view
        index = self.scope.currentIndex()
        self.scope.blockSignals(True)
        self.scope.clear()
        self.scope.addItem(f"All songs ({len(view.scopes) - 1})")
        self.scope.addItems([f"{i}. {scope.name}" for i, scope in enumerate(view.scopes[1:], 1)])
        self.scope.setCurrentIndex(min(max(index, 0), len(view.scopes) - 1))
        self.scope.blockSignals(False)
        self._draw_spectra()
        kept = ", ".join(
            f"{label} {_percent(view.overall.peaks[label].share)}" for label in view.takes
        )
        self.status.emit(f"Inspect: clean peaks kept over all songs: {kept}")

    def _on_spectra_error(self, message: str) -> None:
        self.spectra_note.setText(message)
        self.spectra_note.setStyleSheet(_RED)
        self.status.emit(f"Inspect: {message}")

    def _on_spectra_cancelled(self) -> None:
        self._analysed_key = None
        if not self._spectra_pending:
            self.spectra_note.setText("Cancelled: press Analyse again to compute the spectra.")
            self.spectra_note.setStyleSheet("")

    def _on_spectra_done(self) -> None:
        self._spectra_worker = None
        if self._spectra_pending:
            QTimer.singleShot(0, self._start_if_visible)

    def _on_excerpt(self, view: ExcerptView) -> None:
        self._excerpt = view
        self._draw_excerpt()

    def _on_excerpt_error(self, message: str) -> None:
        self.excerpt_note.setText(message)
        self.excerpt_note.setStyleSheet(_RED)

    def _on_excerpt_done(self) -> None:
        self._excerpt_worker = None
        if self._excerpt_pending:
            QTimer.singleShot(0, self.show_excerpt)

    # --- drawing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        if self._targets is None:
            self.empty.setText(self._problem)
            self.stack.setCurrentWidget(self.empty)
        else:
            self.stack.setCurrentIndex(1)
        for panel in (self.spectra_panel, self.excerpt_panel):
            # only while a job runs: the notes under the plots say how it ended
            panel.setVisible(panel.worker is not None)
        self.export_button.setEnabled(self._spectra is not None or self._excerpt is not None)

    def scope_index(self) -> int:
        return max(0, self.scope.currentIndex())

    def _draw_spectra(self) -> None:
        plot = self.spectra_plot
        plot.clear()
        view = self._spectra
        if view is None or not view.scopes:
            self.table.setRowCount(0)
            self.spectra_legend.setText("")
            return
        scope = view.scopes[min(self.scope_index(), len(view.scopes) - 1)]
        difference = self.difference.isChecked()
        freqs = scope.freqs_hz
        show = freqs >= MIN_FREQ_HZ
        x = freqs[show]
        low, high = view.band_hz
        band = pg.LinearRegionItem(
            values=(math.log10(low), math.log10(high)),
            movable=False,
            brush=pg.mkBrush(0, 0, 0, 18),
            pen=pg.mkPen(None),
        )
        band.setZValue(-10)
        plot.addItem(band, ignoreBounds=True)
        ys = []
        key = [("clean (0 dB)" if difference else "clean program", CLEAN_COLOUR)]
        clean = smooth_octave(freqs, scope.clean_db, SMOOTHING)
        if difference:
            zero = plot.plot(
                x, np.zeros_like(x), pen=pg.mkPen(CLEAN_COLOUR, width=2), name=key[0][0]
            )
            zero.setZValue(5)
        else:
            curve = plot.plot(x, clean[show], pen=pg.mkPen(CLEAN_COLOUR, width=2.5), name=key[0][0])
            curve.setZValue(5)  # on top: a take that did not colour the music hides under it
            ys.append(clean[show])
        for index, label in enumerate(view.takes):
            if label not in scope.takes_db:
                continue
            take = smooth_octave(freqs, scope.takes_db[label], SMOOTHING)
            y = (take - clean)[show] if difference else take[show]
            ys.append(y)
            name = f"{label} ({_db(scope.gain_db[label])})" if not difference else label
            if label in view.flagged:
                name += " flagged"
            colour = take_colour(label, index)
            plot.plot(x, y, pen=pg.mkPen(colour, width=2), name=name, antialias=True)
            key.append((name, colour))
        self.spectra_legend.setText(_legend_html(key))
        plot.setLabel(
            "left",
            "Take − clean (dB)" if difference else "Level (dB re full scale)",
            color="k",
        )
        text = pg.TextItem(
            f"levels matched at {low:g}–{high:g} Hz", color="#444444", anchor=(0.5, 0.0)
        )
        plot.addItem(text, ignoreBounds=True)
        text.setPos(math.log10(math.sqrt(low * high)), 0.0)
        top_hz = 0.95 * view.sample_rate / 2
        if ys:
            inside = x <= top_hz
            values = np.concatenate([y[inside] for y in ys])
            top = float(np.max(values))
            bottom = max(float(np.min(values)), top - (40.0 if difference else 70.0))
            margin = 0.05 * (top - bottom) + 1.0
            plot.setYRange(bottom - margin, top + 2 * margin, padding=0)
            text.setPos(math.log10(math.sqrt(low * high)), top + 2 * margin)
        plot.setXRange(math.log10(MIN_FREQ_HZ), math.log10(top_hz), padding=0.01)
        plot.getAxis("bottom").setTicks([_frequency_ticks(MIN_FREQ_HZ, top_hz), []])
        self._fill_table(view, scope)
        smoothing = f"1/{SMOOTHING}-octave smoothed"
        self.spectra_note.setStyleSheet("")
        self.spectra_note.setText(
            f"{scope.name}: {scope.seconds:.0f} s analysed at {view.sample_rate} Hz, Welch "
            f"segments of {view.n_fft} samples, {smoothing}. Each take is shifted so that "
            f"its mean level at {low:g}–{high:g} Hz (shaded) equals the clean program's; "
            "the key under the plot gives the shift."
        )

    def _fill_table(self, view: SpectraView, scope: SpectrumScope) -> None:
        self.table.setRowCount(len(view.takes))
        rows = max(1, len(view.takes))
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header + 22 * rows + 2 * self.table.frameWidth() + 2)
        high_end = view.sample_rate / 2
        for row, label in enumerate(view.takes):
            present = label in scope.takes_db
            peaks = scope.peaks.get(label)
            cells = (
                label + (" (flagged)" if label in view.flagged else ""),
                _db(scope.gain_db[label]) if present else "—",
                _db(scope.band_mean_db(label, MIN_FREQ_HZ, 300.0)) if present else "—",
                _db(scope.band_mean_db(label, 3000.0, 0.9 * high_end)) if present else "—",
                _percent(peaks.share) if peaks else "—",
            )
            for column, value in enumerate(cells):
                item = QTableWidgetItem(value)
                if column:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                else:
                    item.setForeground(pg.mkColor(take_colour(label, row)))
                if column == 4 and peaks:
                    item.setToolTip(
                        f"{peaks.kept} of {peaks.clean} clean peaks found in the take "
                        f"(the take has {peaks.take} peaks)"
                    )
                self.table.setItem(row, column, item)
        self.table_note.setText(
            "Level: the take against the clean program at 300–3000 Hz. "
            "< 300 Hz, > 3 kHz: mean coloration there. "
            "Peaks kept: clean spectral peaks found again in the take."
        )
        self.table_note.setStyleSheet("color: palette(placeholder-text);")

    def _draw_excerpt(self) -> None:
        view = self._excerpt
        if view is None:
            self.clean_view.clear()
            self.take_view.clear()
            return
        count = view.count
        clean_t, clean_f = view.peak_points("clean")
        take_t, take_f = view.peak_points("take")
        kept, matched = view.clean_kept, view.take_matched
        clean_levels, take_levels = view.colour_levels(same=self.same_levels.isChecked())
        self.clean_view.show(
            view.clean.db,
            view.clean.times_s,
            view.clean.freqs_hz,
            (clean_t[kept], clean_f[kept]),
            (clean_t[~kept], clean_f[~kept]),
            f"Clean program — {count.clean} peaks",
            clean_levels,
        )
        self.take_view.show(
            view.take_spec.db,
            view.take_spec.times_s,
            view.take_spec.freqs_hz,
            (take_t[matched], take_f[matched]),
            (take_t[~matched], take_f[~matched]),
            f"Take “{view.take}” — {count.take} peaks",
            take_levels,
        )
        end = view.start_s + view.length_s
        self.clean_view.plot.setXRange(view.start_s, end, padding=0)
        self.clean_view.plot.setYRange(0, view.sample_rate / 2, padding=0)
        self.set_cursor(view.start_s + view.length_s / 2)
        self.excerpt_note.setStyleSheet("")
        low, high = view.peak_band_hz
        self.excerpt_note.setText(
            f"{view.song}, {view.start_s:.1f}–{end:.1f} s at {view.sample_rate} Hz: "
            f"the take kept {count.kept} of the clean program's {count.clean} spectral peaks "
            f"({_percent(count.share)}; kept: a take peak within {view.tolerance_text}). "
            f"Peaks as the landmark method picks them ({low:g}–{high:g} Hz, at most "
            f"{view.peaks_per_second:g} per second). Drag the yellow cursor to compare."
        )
        self.refresh()

    # --- the shared cursor -------------------------------------------------------------------

    def set_cursor(self, seconds: float) -> None:
        """Put the time cursor of both spectrograms at ``seconds`` (song time)."""
        self.clean_view.cursor.setValue(seconds)

    @property
    def cursor_s(self) -> tuple[float, float]:
        """The cursor positions of the clean and take spectrograms."""
        return float(self.clean_view.cursor.value()), float(self.take_view.cursor.value())

    def _on_cursor_moved(self, line: pg.InfiniteLine) -> None:
        value = float(line.value())
        for other in (self.clean_view.cursor, self.take_view.cursor):
            if other is not line and float(other.value()) != value:
                other.setValue(value)
        self.cursor_label.setText(f"cursor at {value:.2f} s")

    # --- export ------------------------------------------------------------------------------

    def export_png(self, path: Path | str) -> Path:
        """Save the plots as shown (both groups) to ``path`` as a PNG; returns the path."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")
        image = self.figure.grab()
        if image.isNull() or not image.save(str(path), "PNG"):
            raise InspectError(f"{path}: cannot write the PNG")
        return path

    def _on_export_clicked(self) -> None:
        view = self._excerpt
        name = "inspect.png"
        if view is not None:
            name = f"inspect-{view.take}-song{view.song_index + 1}.png"
        folder = self.session.folder if self.session is not None else Path.home()
        target, _ = QFileDialog.getSaveFileName(
            self, "Export the plots", str(folder / name), "PNG image (*.png)"
        )
        if not target:
            return
        try:
            written = self.export_png(target)
        except AfpError as exc:
            self.status.emit(f"Inspect: {one_line(exc)}")
            return
        self.status.emit(f"Inspect: saved {written}")
