"""Record page: pick the devices, check levels, record the low/mid/high takes, align them.

The audio runs in ``rig_app.capture`` on PortAudio's threads; this page only polls the
recorder (or the input meter) from a 20 Hz timer on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from afp_core.protocols.sessions import TAKE_LABELS, describe_xruns
from afp_core.tasks import TaskState
from rig_app.align import Alignment
from rig_app.capture import InputMeter, TakeRecorder, TakeResult, play_test_tone
from rig_app.devices import Device, list_devices
from rig_app.jobs import (
    TakeSettings,
    align_session_take,
    describe_alignment,
    format_duration,
    format_number,
    record_session_take,
)
from rig_app.room import RoomError, VirtualRoom
from rig_app.session import Session, TakeEntry
from rig_app.ui.pages import Collapsible, Page
from rig_app.ui.state import RigState
from rig_app.ui.widgets import LevelMeter
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["RecordPage"]

ANCHOR_COLUMNS = ("Marker", "In program", "In take", "SNR", "Residual", "Used")

POLL_MS = 50
SAMPLE_RATES = (48000, 44100, 32000, 16000)
TAKE_HINTS = {"low": "speaker far", "mid": "speaker in between", "high": "speaker close"}
DEFAULT_DISTANCES = {"low": 3.0, "mid": 1.5, "high": 0.5}
_NO_NOISE = "(none: the noise plays elsewhere)"
_RED = "color: #b00020;"
_GREEN = "color: #1e7832;"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f} s"


def _start_meter(task: TaskState, device: str | int, sample_rate: int | None) -> InputMeter:
    meter = InputMeter(device, sample_rate=sample_rate)
    meter.start()
    return meter


def _play_tone(task: TaskState, device: str | int, sample_rate: int | None) -> str:
    play_test_tone(device, sample_rate=sample_rate)
    return str(device)


def _list(task: TaskState, refresh: bool) -> list[Device]:
    return list_devices(refresh=refresh)


class _TakeRow:
    """The widgets of one take: chooser, speaker distance, notes and status."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.radio = QRadioButton(f"{label}  ({TAKE_HINTS.get(label, '')})")
        self.distance = QDoubleSpinBox()
        self.distance.setRange(0.0, 100.0)
        self.distance.setDecimals(2)
        self.distance.setSingleStep(0.1)
        self.distance.setSuffix(" m")
        self.distance.setValue(DEFAULT_DISTANCES.get(label, 1.0))
        self.notes = QLineEdit()
        self.notes.setPlaceholderText("room, speaker, microphone …")
        self.status = QLabel("not recorded")
        self.status.setWordWrap(True)


class RecordPage(Page):
    """Devices, level meter, the three takes, Record / Stop / Abort and the alignment."""

    title = "Record"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self._devices: list[Device] = []
        self._devices_listed = False
        self._recorder: TakeRecorder | None = None
        self._record_worker: Worker | None = None
        self._meter: InputMeter | None = None
        self._last_result: TakeResult | None = None
        self.last_alignment: Alignment | None = None
        self._aligning = ""

        self.take_message = QLabel("")
        self.take_message.setWordWrap(True)
        self.hint = QLabel("")
        self.hint.setStyleSheet("color: palette(placeholder-text);")
        devices = self._build_devices()
        takes = self._build_takes()
        self.advanced = self._build_advanced()
        controls = self._build_controls()
        result = self._build_result()
        self.panel = TaskPanel()
        for row in self.rows.values():
            row.radio.toggled.connect(self._on_take_chosen)

        layout = QVBoxLayout(self)
        layout.addWidget(self.hint)
        layout.addWidget(devices)
        layout.addWidget(takes)
        layout.addWidget(self.advanced)
        layout.addLayout(controls)
        layout.addWidget(self.take_message)
        layout.addWidget(self.panel)
        layout.addWidget(result, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._poll)
        state.takes_changed.connect(self.refresh)
        state.program_changed.connect(self.refresh)
        self.refresh()

    def _build_devices(self) -> QGroupBox:
        """Music and noise outputs, microphone, sample rate, input level."""
        self.music_out = QComboBox()
        self.noise_out = QComboBox()
        self.mic_in = QComboBox()
        for combo in (self.music_out, self.noise_out, self.mic_in):
            combo.setMinimumContentsLength(24)
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
        self.music_tone = QPushButton("Test tone")
        self.music_tone.clicked.connect(lambda: self.play_tone(self.music_out))
        self.noise_tone = QPushButton("Test tone")
        self.noise_tone.clicked.connect(lambda: self.play_tone(self.noise_out))
        self.listen = QPushButton("Listen")
        self.listen.setCheckable(True)
        self.listen.setToolTip("Show the microphone's level")
        self.listen.toggled.connect(self._on_listen)
        self.sample_rate = QComboBox()
        self.sample_rate.addItem("as the program", None)
        for rate in SAMPLE_RATES:
            self.sample_rate.addItem(f"{rate} Hz", rate)
        self.refresh_button = QPushButton("Refresh devices")
        self.refresh_button.clicked.connect(lambda: self.list_devices(refresh=True))
        self.meter = LevelMeter()
        self.device_message = QLabel("")
        self.device_message.setWordWrap(True)

        devices = QGroupBox("Devices")
        grid = QGridLayout(devices)
        grid.addWidget(QLabel("Music output:"), 0, 0)
        grid.addWidget(self.music_out, 0, 1)
        grid.addWidget(self.music_tone, 0, 2)
        grid.addWidget(QLabel("Noise output:"), 1, 0)
        grid.addWidget(self.noise_out, 1, 1)
        grid.addWidget(self.noise_tone, 1, 2)
        grid.addWidget(QLabel("Microphone:"), 2, 0)
        grid.addWidget(self.mic_in, 2, 1)
        grid.addWidget(self.listen, 2, 2)
        grid.addWidget(QLabel("Sample rate:"), 3, 0)
        grid.addWidget(self.sample_rate, 3, 1)
        grid.addWidget(self.refresh_button, 3, 2)
        grid.addWidget(QLabel("Input level:"), 4, 0)
        grid.addWidget(self.meter, 4, 1, 1, 2)
        grid.addWidget(self.device_message, 5, 0, 1, 3)
        grid.setColumnStretch(1, 1)
        return devices

    def _build_takes(self) -> QGroupBox:
        """A row per take: the chosen one, speaker distance, notes, status."""
        self.rows = {label: _TakeRow(label) for label in TAKE_LABELS}
        self.take_group = QButtonGroup(self)
        takes = QGroupBox("Takes")
        takes_grid = QGridLayout(takes)
        for column, name in enumerate(("Take", "Speaker distance", "Notes", "Status")):
            title = QLabel(f"<b>{name}</b>")
            takes_grid.addWidget(title, 0, column)
        for row_index, row in enumerate(self.rows.values(), 1):
            self.take_group.addButton(row.radio)
            takes_grid.addWidget(row.radio, row_index, 0)
            takes_grid.addWidget(row.distance, row_index, 1)
            takes_grid.addWidget(row.notes, row_index, 2)
            takes_grid.addWidget(row.status, row_index, 3)
        takes_grid.setColumnStretch(2, 1)
        takes_grid.setColumnStretch(3, 2)
        self.rows[TAKE_LABELS[0]].radio.setChecked(True)
        return takes

    def _build_advanced(self) -> Collapsible:
        """Silence before the program, recording after it, the virtual room."""
        self.lead_in = QDoubleSpinBox()
        self.lead_in.setRange(0.0, 30.0)
        self.lead_in.setSuffix(" s")
        self.lead_in.setValue(1.0)
        self.tail = QDoubleSpinBox()
        self.tail.setRange(0.0, 60.0)
        self.tail.setSuffix(" s")
        self.tail.setValue(2.0)
        advanced_box = QWidget()
        advanced = QFormLayout(advanced_box)
        advanced.setContentsMargins(16, 0, 0, 0)
        advanced.addRow("Silence before the program:", self.lead_in)
        advanced.addRow("Recording after it ends:", self.tail)
        self.virtual_room = QCheckBox("play through a virtual room")
        self.virtual_room.setToolTip(
            "Without a lab (e.g. on the virtual devices): the music as a laptop speaker in a "
            "simulated room delivers it to a laptop microphone, the noise from a speaker at "
            "the take's distance; the take's notes say so (rig_app.room)"
        )
        advanced.addRow("Virtual room:", self.virtual_room)
        return Collapsible("Advanced", advanced_box)

    def _build_controls(self) -> QHBoxLayout:
        """Record, Stop, Abort, Align again, the take's progress and xruns."""
        self.record_button = QPushButton("● Record")
        self.record_button.clicked.connect(self._on_record_clicked)
        self.stop_button = QPushButton("■ Stop")
        self.stop_button.setToolTip("End the take early and keep it")
        self.stop_button.clicked.connect(self.stop)
        self.abort_button = QPushButton("Abort")
        self.abort_button.setToolTip("Stop at once; what was recorded is kept")
        self.abort_button.clicked.connect(self.abort)
        self.align_button = QPushButton("Align again")
        self.align_button.setToolTip("Align the chosen take to the program again")
        self.align_button.clicked.connect(lambda: self.align())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("not recording")
        self.progress.setTextVisible(True)
        self.xruns = QLabel(describe_xruns(0))
        controls = QHBoxLayout()
        controls.addWidget(self.record_button)
        controls.addWidget(self.stop_button)
        controls.addWidget(self.abort_button)
        controls.addWidget(self.align_button)
        controls.addWidget(self.progress, 1)
        controls.addWidget(self.xruns)
        return controls

    def _build_result(self) -> QGroupBox:
        """The chosen take's alignment: offset, drift, residuals, quality, anchors."""
        self.result_fields: dict[str, QLabel] = {}
        result = QGroupBox("Alignment")
        result_grid = QGridLayout(result)
        names = ("Offset", "Drift", "Max residual", "Min marker SNR", "Quality")
        for index, name in enumerate(names):
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            result_grid.addWidget(QLabel(f"{name}:"), index // 3, 2 * (index % 3))
            result_grid.addWidget(value, index // 3, 2 * (index % 3) + 1)
            self.result_fields[name] = value
        self.result_message = QLabel("")
        self.result_message.setWordWrap(True)
        result_grid.addWidget(self.result_message, 2, 0, 1, 6)
        self.anchors = QTableWidget(0, len(ANCHOR_COLUMNS))
        self.anchors.setHorizontalHeaderLabels(ANCHOR_COLUMNS)
        self.anchors.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.anchors.verticalHeader().setVisible(False)
        self.anchors.verticalHeader().setDefaultSectionSize(22)
        header = self.anchors.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        result_grid.addWidget(self.anchors, 3, 0, 1, 6)
        for column in (1, 3, 5):
            result_grid.setColumnStretch(column, 1)
        return result

    # --- devices ---------------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._devices_listed:
            self.list_devices(refresh=False)

    def list_devices(self, refresh: bool = False) -> Worker | None:
        """Fill the device pickers in a worker (``refresh`` re-reads PortAudio's list)."""
        if self._recorder is not None:
            return None
        self._devices_listed = True
        self._stop_meter()
        worker = Worker(_list, refresh)
        worker.finished.connect(self._on_devices)
        worker.errored.connect(self._on_device_error)
        return self.start_job(worker, self.panel, "listing audio devices …")

    def _on_devices(self, devices: list[Device]) -> None:
        self._devices = devices
        self._fill(self.music_out, "output", "music", [])
        self._fill(self.noise_out, "output", "noise", [_NO_NOISE])
        self._fill(self.mic_in, "input", "mic", [])
        outputs = sum(d.supports("output") for d in devices)
        inputs = sum(d.supports("input") for d in devices)
        self.device_message.setStyleSheet("" if outputs and inputs else _RED)
        self.device_message.setText(
            f"{outputs} output and {inputs} input device(s)"
            if outputs and inputs
            else "No usable audio devices: connect them and press Refresh devices."
        )
        self.refresh()

    def _on_device_error(self, message: str) -> None:
        self.device_message.setStyleSheet(_RED)
        self.device_message.setText(message)

    def _fill(self, combo: QComboBox, kind: str, hint: str, extra: Sequence[str]) -> None:
        previous = combo.currentText()
        combo.clear()
        for text in extra:
            combo.addItem(text, None)
        names = [d.name for d in self._devices]
        for device in self._devices:
            if device.supports(kind):  # type: ignore[arg-type]
                # a name is kept across refreshes; the index only where names repeat
                key: str | int = device.name if names.count(device.name) == 1 else device.index
                combo.addItem(f"{device.name} ({device.hostapi})", key)
        texts = [combo.itemText(i) for i in range(combo.count())]
        if previous in texts:
            combo.setCurrentIndex(texts.index(previous))
            return
        for index in range(len(extra), combo.count()):
            if hint in combo.itemText(index).lower():
                combo.setCurrentIndex(index)
                return

    def play_tone(self, combo: QComboBox) -> Worker | None:
        device = combo.currentData()
        if device is None or self._recorder is not None:
            return None
        worker = Worker(_play_tone, device, self.sample_rate.currentData())
        worker.finished.connect(self._on_tone_played)
        worker.errored.connect(self._on_device_error)
        return self.start_job(worker, self.panel, f"playing a test tone on {combo.currentText()}")

    def _on_tone_played(self, name: str) -> None:
        self.status.emit(f"Test tone played on {name}")

    def _on_listen(self, on: bool) -> None:
        if not on:
            self._stop_meter()
            return
        device = self.mic_in.currentData()
        if device is None:
            self.listen.setChecked(False)
            return
        worker = Worker(_start_meter, device, self.sample_rate.currentData())
        worker.finished.connect(self._on_meter_started)
        worker.errored.connect(self._on_meter_failed)
        self.start_job(worker, self.panel, "opening the microphone …")

    def _on_meter_started(self, meter: InputMeter) -> None:
        if not self.listen.isChecked() or self._recorder is not None:
            meter.stop()
            return
        self._meter = meter
        self.timer.start()

    def _on_meter_failed(self, message: str) -> None:
        self.listen.setChecked(False)
        self._on_device_error(message)

    def _stop_meter(self) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.stop()
        if self.listen.isChecked():
            self.listen.blockSignals(True)
            self.listen.setChecked(False)
            self.listen.blockSignals(False)
        if self._recorder is None:
            self.timer.stop()
            self.meter.set_level(float("-inf"))

    # --- recording -------------------------------------------------------------------------

    @property
    def chosen_label(self) -> str:
        for label, row in self.rows.items():
            if row.radio.isChecked():
                return label
        return TAKE_LABELS[0]

    def settings(self, label: str | None = None, replace: bool = False) -> TakeSettings | None:
        """The take the page would record now (None when a device is not chosen)."""
        label = label or self.chosen_label
        music, mic = self.music_out.currentData(), self.mic_in.currentData()
        if music is None or mic is None:
            return None
        row = self.rows[label]
        return TakeSettings(
            label=label,
            music_out=music,
            mic_in=mic,
            noise_out=self.noise_out.currentData(),
            sample_rate=self.sample_rate.currentData(),
            speaker_distance_m=row.distance.value(),
            notes=row.notes.text().strip(),
            lead_in_s=self.lead_in.value(),
            tail_s=self.tail.value(),
            replace=replace,
            room=(
                VirtualRoom().with_noise_distance(label, row.distance.value())
                if self.virtual_room.isChecked()
                else None
            ),
        )

    def _on_record_clicked(self) -> None:
        session = self.session
        if session is None:
            return
        label = self.chosen_label
        replace = False
        if session.find_take(label) is not None or session.raw_take_path(label).exists():
            answer = QMessageBox.question(
                self,
                "Replace take",
                f"There is a '{label}' take already. Record it again and replace it?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            replace = True
        self.record(label, replace=replace)

    def record(self, label: str | None = None, replace: bool = False) -> Worker | None:
        """Record the chosen take in a worker, then align it; returns the recording worker."""
        session = self.session
        try:
            settings = self.settings(label, replace)
        except RoomError as exc:  # e.g. a distance that does not fit the virtual room
            self._show_take_message(str(exc), True)
            return None
        if session is None or settings is None or self._record_worker is not None:
            if settings is None:
                self._show_take_message("Choose a music output and a microphone first.", True)
            return None
        self._stop_meter()
        self._last_result = None
        self.last_alignment = None
        self._clear_result()
        worker = Worker(record_session_take, session, settings, on_recorder=self._set_recorder)
        worker.finished.connect(self._on_recorded)
        worker.errored.connect(self._on_record_failed)
        worker.done.connect(self._on_record_done)
        self._record_worker = worker
        self.progress.setValue(0)
        self.progress.setFormat(f"{settings.label}: starting …")
        self._show_take_message("")
        self.timer.start()
        self.start_job(worker, message=f"recording '{settings.label}' …")
        self.refresh()
        return worker

    def _set_recorder(self, recorder: TakeRecorder) -> None:
        self._recorder = recorder  # called on the worker's thread: one assignment only

    def stop(self) -> None:
        """End the take early; it is kept and aligned."""
        if self._record_worker is not None:
            self._record_worker.cancel()
            self.progress.setFormat("stopping …")

    def abort(self) -> None:
        """Stop the streams at once; what was recorded is kept."""
        recorder = self._recorder
        if recorder is not None and recorder.state in ("recording", "finishing"):
            recorder.abort(wait=False)
            self.progress.setFormat("aborting …")
        elif self._record_worker is not None:
            self._record_worker.cancel()

    def _poll(self) -> None:
        recorder = self._recorder
        if recorder is not None:
            self.meter.set_level(recorder.level_db)
            total = recorder.total_s
            done = recorder.recorded_s
            if total > 0 and recorder.state != "ready":
                self.progress.setValue(round(1000 * min(1.0, done / total)))
                self.progress.setFormat(
                    f"{recorder.config.label}: {format_duration(done)} of {format_duration(total)}"
                )
            xruns = recorder.xrun_total
            self.xruns.setText(describe_xruns(xruns, recorder.xrun_times_s))
            self.xruns.setStyleSheet(_RED if xruns else "")
        elif self._meter is not None:
            self.meter.set_level(self._meter.rms_dbfs)

    def _on_recorded(self, result: TakeResult) -> None:
        self._last_result = result
        self.progress.setValue(round(1000 * result.frames / max(1, result.frames_expected)))
        self.progress.setFormat(
            f"{result.label}: {format_duration(result.duration_s)} recorded ({result.ended_by})"
        )
        self.xruns.setText(describe_xruns(result.xrun_total, result.xrun_times_s))
        problems = result.problems
        text = f"Take '{result.label}' {result.ended_by}" + (
            f": {'; '.join(problems)}" if problems else ""
        )
        self._show_take_message(text, bool(problems) or result.xrun_total > 0)
        self.state.takes_changed.emit()
        self.status.emit(text)

    def _on_record_failed(self, message: str) -> None:
        self.progress.setFormat("not recorded")
        self._show_take_message(message, error=True)
        self.status.emit(f"Record: {message}")

    def _on_record_done(self) -> None:
        self.timer.stop()
        self._recorder = None
        self._record_worker = None
        self.meter.set_level(float("-inf"))
        result = self._last_result
        if result is not None and result.frames > 0:
            self.align(result.label)
        self.refresh()

    def align(self, label: str | None = None) -> Worker | None:
        """Align a stored take in a worker and show the result."""
        session = self.session
        label = label or self.chosen_label
        if session is None or session.find_take(label) is None:
            return None
        self._aligning = label
        worker = Worker(align_session_take, session, label)
        worker.finished.connect(self._on_aligned)
        worker.errored.connect(self._on_align_refused)
        return self.start_job(worker, self.panel, f"aligning '{label}' …")

    def _on_aligned(self, alignment: Alignment) -> None:
        self.last_alignment = alignment
        self.state.takes_changed.emit()
        xruns, places = self._xruns_of(self._aligning)
        self._show_alignment(alignment, xruns, places)
        self.status.emit("Alignment: " + describe_alignment(alignment, xruns, places))

    def _on_align_refused(self, message: str) -> None:
        self._clear_result()
        self.result_fields["Quality"].setText("not aligned")
        self.result_fields["Quality"].setStyleSheet(_RED)
        self.result_message.setStyleSheet(_RED)
        self.result_message.setText(f"Refused: {message}")
        self.status.emit(f"Alignment refused: {message}")

    # --- view ------------------------------------------------------------------------------

    def _xruns_of(self, label: str) -> tuple[int, list[float]]:
        """The stored take's xruns and where they were."""
        session = self.session
        take = None if session is None else session.find_take(label)
        return (0, []) if take is None else (take.xruns, take.xrun_times_s)

    def _show_take_message(self, text: str, error: bool = False) -> None:
        self.take_message.setText(text)
        self.take_message.setStyleSheet(_RED if error else "")

    def _clear_result(self) -> None:
        for value in self.result_fields.values():
            value.setText("—")
            value.setStyleSheet("")
        self.result_message.setText("")
        self.result_message.setStyleSheet("")
        self.anchors.setRowCount(0)

    def _show_alignment(
        self, alignment: Alignment | None, xruns: int = 0, places: Sequence[float] = ()
    ) -> None:
        self._clear_result()
        if alignment is None:
            return
        fields = self.result_fields
        fields["Offset"].setText(f"{alignment.offset_s * 1000:.2f} ms")
        fields["Drift"].setText(f"{alignment.drift_ppm:+.1f} ppm")
        fields["Max residual"].setText(format_number(alignment.max_residual_ms, "ms", 3))
        fields["Min marker SNR"].setText(format_number(alignment.min_snr_db, "dB", 1))
        verdict = alignment.verdict(xruns, places)
        fields["Quality"].setText(verdict.status)
        fields["Quality"].setStyleSheet(_GREEN if verdict.trusted else _RED)
        # notes of a trusted alignment are information (a weak marker it did without)
        reasons = list(verdict.reasons) or list(alignment.notes)
        self.anchors.setRowCount(len(alignment.anchors))
        for row, anchor in enumerate(alignment.anchors):
            cells = (
                anchor.label,
                _seconds(anchor.program_s),
                _seconds(anchor.take_s),
                format_number(anchor.snr_db, "dB", 1),
                format_number(anchor.residual_ms, "ms", 3),
                "yes" if anchor.used else f"no: {anchor.note}",
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(anchor.note or text)
                if 1 <= column <= 4:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.anchors.setItem(row, column, item)
        used = sum(anchor.used for anchor in alignment.anchors)
        self.result_message.setText(
            f"{used} of {len(alignment.anchors)} markers used ({alignment.method})"
            + (f"; {'; '.join(reasons)}" if reasons else "")
        )

    def _on_take_chosen(self, checked: bool) -> None:
        if not checked or self._record_worker is not None:
            return
        session = self.session
        label = self.chosen_label
        take = None if session is None else session.find_take(label)
        self.refresh()
        if take is not None and take.alignment is not None:
            self._show_alignment(take.load_alignment(), take.xruns, take.xrun_times_s)
        else:
            self._clear_result()
            if take is not None:
                self.result_message.setText(f"Take '{label}' is not aligned.")

    def _on_session_changed(self, session: Session | None) -> None:
        self._on_take_chosen(True)

    def refresh(self) -> None:
        session = self.session
        recording = self._record_worker is not None
        program = None if session is None else session.program
        has_noise = program is not None and bool(program.get("noise_file"))
        devices_ready = self.music_out.count() > 0 and self.mic_in.count() > 0
        self.record_button.setEnabled(program is not None and devices_ready and not recording)
        self.stop_button.setEnabled(recording)
        self.abort_button.setEnabled(recording)
        chosen = self.chosen_label
        self.align_button.setEnabled(
            not self.busy
            and session is not None
            and program is not None
            and session.find_take(chosen) is not None
        )
        for widget in (
            self.music_out,
            self.mic_in,
            self.sample_rate,
            self.refresh_button,
            self.music_tone,
            self.listen,
            self.virtual_room,
        ):
            widget.setEnabled(not recording)
        if program is not None and not has_noise:
            self.noise_out.setCurrentIndex(0)  # (none): there is no noise track to play
        noise_usable = not recording and (has_noise or program is None)
        self.noise_out.setEnabled(noise_usable)
        self.noise_tone.setEnabled(noise_usable)
        self.noise_out.setToolTip("" if noise_usable else "The program has no noise track")
        for label, row in self.rows.items():
            row.radio.setEnabled(not recording)
            take = None if session is None else session.find_take(label)
            row.status.setText("not recorded" if take is None else self._take_status(take))
            row.status.setStyleSheet(_RED if take is not None and not take.verdict.trusted else "")
        if session is None:
            self.hint.setText("Create or open a session first.")
        elif program is None:
            self.hint.setText("Build the program first (Program page), then record it here.")
        else:
            self.hint.setText("")
        self.hint.setVisible(bool(self.hint.text()))

    @staticmethod
    def _take_status(take: TakeEntry) -> str:
        """``10:02, aligned, drift +3.1 ppm: ok`` or ``recorded: not aligned``."""
        if take.alignment is None:
            return f"recorded: {take.verdict.describe()}"
        samples = take.alignment.get("take_samples")
        seconds = ""
        if isinstance(samples, int) and take.recording_rate:
            seconds = f"{format_duration(samples / take.recording_rate)}, "
        drift = float(take.alignment.get("drift_ppm") or 0.0)
        return f"{seconds}aligned, drift {drift:+.1f} ppm: {take.verdict.describe()}"

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the meter and abort a running take (the window is closing)."""
        self._stop_meter()
        recorder = self._recorder
        if recorder is not None and recorder.state in ("recording", "finishing"):
            recorder.abort(wait=True, timeout=5.0)
