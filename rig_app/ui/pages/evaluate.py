"""Evaluate page: the real-world protocol on the open session or on an exported query set
(paper §3, Table 4).

Top: what to evaluate: the open session or a query set folder (``afp-rig export``; no
session needs to be open; its takes are listed as the set labels them), a checkpoint
(default: the shipped model, or a database's own model), the fingerprints to search (a
database folder, or a library folder indexed on the fly), the query lengths (a set's own
by default), the decision rules, the takes and the report folder (default:
``<session or set>/evaluations/<date-time>``; a read-only set asks for one); one click
runs ``rig_app.evaluate.evaluate_session`` on a worker with progress and cancel.
Bottom: the result as paper Table 4 (rows query lengths, columns rule x take), the
accuracy-vs-length plot (one line per take and rule), the notes, and the report folder
(opened in the file manager); a previous report of the session or set can be shown again.

Everything here only draws ``rig_app.evaluate.EvaluationView``s read back from the
report folders on worker threads.
"""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QColor, QDesktopServices, QFontMetrics
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from afp_core.errors import AfpError
from afp_core.fileutil import one_line
from afp_core.protocols.querysets import (
    QUERYSET_FILE,
    QuerySetError,
    QuerySetSession,
    is_queryset_folder,
    read_queryset,
)
from afp_core.protocols.realworld import RealWorldSettings, take_sort_key
from afp_core.protocols.sessions import is_session_folder
from afp_core.shipped import SHIPPED_MODEL
from rig_app.evaluate import (
    EVALUATIONS_DIR,
    MEASURES,
    METHOD_NAMES,
    REPORT_FILE,
    EvaluationView,
    Series,
    evaluate_and_view,
    evaluations_folder,
    load_evaluation,
    parse_lengths,
    previous_reports,
    short_path,
    value_range,
)
from rig_app.session import Session
from rig_app.ui.pages import Page, placeholder
from rig_app.ui.pages.inspect import take_colour
from rig_app.ui.state import RigState
from rig_app.ui.workers import TaskPanel, Worker

__all__ = ["EvaluatePage"]

DEFAULT_LENGTHS = " ".join(f"{x:g}" for x in RealWorldSettings().lengths_s)
RULES = (
    ("sequence", "offset-consistent search"),
    ("vote", "majority vote (the paper's)"),
)
RULE_STYLES = {"sequence": (Qt.PenStyle.SolidLine, "o"), "vote": (Qt.PenStyle.DashLine, "s")}
_RED = "color: #b00020;"
_GREY = "color: palette(placeholder-text);"
_CELL_LOW = QColor(255, 255, 255)
_CELL_HIGH = QColor(120, 200, 130)
_GROUP = QColor(236, 236, 236)


def _shipped_text() -> str:
    try:
        where = SHIPPED_MODEL.relative_to(SHIPPED_MODEL.parents[2])
    except ValueError:
        where = SHIPPED_MODEL
    return f"shipped model ({where.as_posix()})"


def read_queryset_folder(folder: Path | str) -> QuerySetSession:
    """A query set folder as the page evaluates it; one-line ``QuerySetError`` saying what
    the folder is instead (none, a session, something else, unreadable)."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            raise QuerySetError(f"{folder}: no such folder")
        if not is_queryset_folder(folder):
            if is_session_folder(folder):
                raise QuerySetError(
                    f"{folder}: a session, not a query set: evaluate it as the open session "
                    "(open it with the buttons above)"
                )
            raise QuerySetError(
                f"{folder}: not a query set folder (no {QUERYSET_FILE}); make one with "
                "`afp-rig export` or Export on the Dataset page"
            )
        return read_queryset(folder)
    except OSError as exc:
        raise QuerySetError(f"{folder}: cannot read ({one_line(exc)})") from None


def describe_queryset(queryset: QuerySetSession) -> str:
    """One line: its sessions, takes, clips, lengths and songs."""
    ids = [str(s.get("id", "")) for s in queryset.sessions]
    clips = sum(len(c) for by_song in queryset.clips.values() for c in by_song.values())
    lengths = " ".join(f"{x:g}" for x in queryset.lengths_s)
    takes = len(queryset.takes)
    return (
        f"Query set of {len(ids)} session{'s' if len(ids) != 1 else ''} "
        f"({', '.join(ids)}): {takes} take{'s' if takes != 1 else ''}, {clips} clips of "
        f"{lengths} s, {len(queryset.songs)} songs"
    )


def _queryset_take_tips(queryset: QuerySetSession) -> dict[str, str]:
    """Take label -> what the set says about the take (its session, conditions, clips)."""
    several = len(queryset.sessions) > 1
    tips = {}
    for session in queryset.sessions:
        for take in session.get("takes") or ():
            if not isinstance(take, dict):
                continue
            label = (
                f"{session.get('id')}/{take.get('label')}" if several else str(take.get("label"))
            )
            parts = [f"take {take.get('label')} of session {session.get('id')}"]
            if take.get("recorded_at"):
                parts.append(f"recorded {take['recorded_at']}")
            if take.get("room"):
                parts.append(f"room {take['room']}")
            ratio = take.get("music_to_noise_db")
            if isinstance(ratio, int | float):
                parts.append(f"music-to-noise {ratio:.1f} dB")
            count = sum(len(c) for c in queryset.clips.get(label, {}).values())
            parts.append(f"{count} clips")
            tips[label] = ", ".join(parts)
    return tips


def _browse_row(edit: QLineEdit, button: QPushButton) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class EvaluatePage(Page):
    """Inputs on top, the result (table, plot, notes, report folder) below."""

    title = "Evaluate"

    def __init__(self, state: RigState, parent: QWidget | None = None) -> None:
        super().__init__(state, parent)
        self._view: EvaluationView | None = None
        self._untrusted: list[str] = []  # flagged or unaligned takes (``TakeVerdict``)
        self._job: Worker | None = None
        self._job_kind = ""
        self._job_source: Path | None = None
        self._queryset: QuerySetSession | None = None
        self._queryset_text: str | None = ""  # the folder text last read (None: read again)
        self._queryset_error = ""
        self._queryset_writable = True
        self._auto_lengths = DEFAULT_LENGTHS  # the lengths the page filled in itself
        self._written: dict[Path, list[Path]] = {}  # reports written elsewhere, by source
        self._labels: list[QLabel] = []

        inputs = self._build_inputs()
        result = self._build_result()
        layout = QVBoxLayout(self)
        layout.addWidget(inputs)
        layout.addWidget(result, 1)
        layout.addStretch(0)  # takes the room only while the result is hidden

        state.takes_changed.connect(self._on_takes_changed)
        state.program_changed.connect(self._on_takes_changed)
        self._on_source_changed()
        self._on_session_changed(state.session)

    def _build_inputs(self) -> QGroupBox:
        """What to evaluate (the open session or a query set), with what, and where to."""
        self.empty = placeholder("")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        source = self._build_source()
        grid = self._build_form()
        self.panel = TaskPanel()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # the labels of both grids line up, whichever rows are shown
        width = max(label.sizeHint().width() for label in self._labels)
        source.setColumnMinimumWidth(0, width)
        grid.setColumnMinimumWidth(0, width)
        self.form = QWidget()
        self.form.setLayout(grid)
        inputs = QGroupBox("Evaluate a model on recorded takes (paper §3)")
        inputs_layout = QVBoxLayout(inputs)
        inputs_layout.addLayout(source)
        inputs_layout.addWidget(self.empty)
        inputs_layout.addWidget(self.form)
        inputs_layout.addWidget(self.panel)
        inputs_layout.addWidget(self.message)
        return inputs

    def _build_source(self) -> QGridLayout:
        """The choice between the open session and a query set folder."""
        self.use_session = QRadioButton("the open session")
        self.use_queryset = QRadioButton("a query set folder")
        self.use_session.setChecked(True)
        self.use_queryset.setToolTip(
            "A folder exported by `afp-rig export` (or Export on the Dataset page): the "
            "protocol's queries cut from the aligned takes of one or more sessions; no "
            "session needs to be open"
        )
        self._mode_group = QButtonGroup(self)
        self._mode_group.addButton(self.use_session)
        self._mode_group.addButton(self.use_queryset)
        self.queryset = QLineEdit()
        self.queryset.setPlaceholderText("a folder written by afp-rig export or the Dataset page")
        self.queryset.editingFinished.connect(self._on_queryset_edited)
        self.queryset_browse = QPushButton("Browse…")
        self.queryset_browse.clicked.connect(self._on_browse_queryset)
        self.queryset_info = QLabel("")
        # one line, cut where the page is too narrow (the tooltip holds it all): a wrapped
        # label here is given the height of several lines and leaves gaps around it
        self.queryset_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.queryset_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.use_queryset.toggled.connect(self._on_mode_changed)
        source = QGridLayout()
        source.setColumnStretch(1, 1)
        source.addWidget(self._label("Evaluate:"), 0, 0)
        choice = QHBoxLayout()
        choice.setContentsMargins(0, 0, 0, 0)
        choice.addWidget(self.use_session)
        choice.addSpacing(12)
        choice.addWidget(self.use_queryset)
        choice.addLayout(_browse_row(self.queryset, self.queryset_browse), 1)
        source.addLayout(choice, 0, 1)
        source.addWidget(self.queryset_info, 1, 1)
        return source

    def _build_form(self) -> QGridLayout:
        """Model, fingerprints, query lengths and rules, takes, report folder."""
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setColumnStretch(2, 1)
        self._build_model_rows(grid)
        grid.addWidget(self._label("Queries:"), 3, 0)
        grid.addLayout(self._build_queries(), 3, 1, 1, 2)
        grid.addWidget(self._label("Takes:"), 4, 0)
        grid.addLayout(self._build_takes(), 4, 1, 1, 2)
        grid.addWidget(self.takes_note, 5, 1, 1, 2)
        grid.addWidget(self._label("Report folder:"), 6, 0)
        grid.addLayout(self._build_report_folder(), 6, 1, 1, 2)
        return grid

    def _build_model_rows(self, grid: QGridLayout) -> None:
        """The model, and the database or library it is searched in (``grid``'s rows 0-2)."""
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText(
            f"{_shipped_text()}; a database is searched with its own model"
        )
        self.checkpoint.setToolTip(
            "The model to evaluate (a checkpoint file). Empty: the shipped model; a database "
            "is searched with the model it was built with, and refuses another one."
        )
        self.checkpoint_browse = QPushButton("Browse…")
        self.checkpoint_browse.clicked.connect(self._on_browse_checkpoint)
        self.use_database = QRadioButton("Database")
        self.use_library = QRadioButton("Library, indexed on the fly")
        self.use_database.setChecked(True)
        self._source_group = QButtonGroup(self)
        self._source_group.addButton(self.use_database)
        self._source_group.addButton(self.use_library)
        self.database = QLineEdit()
        self.database.setPlaceholderText("a database folder (afp index)")
        self.library = QLineEdit()
        self.database_browse = QPushButton("Browse…")
        self.library_browse = QPushButton("Browse…")
        self.database_browse.clicked.connect(lambda: self._browse_folder(self.database))
        self.library_browse.clicked.connect(lambda: self._browse_folder(self.library))
        self.use_database.toggled.connect(self._on_source_changed)
        grid.addWidget(self._label("Model:"), 0, 0)
        grid.addLayout(_browse_row(self.checkpoint, self.checkpoint_browse), 0, 1, 1, 2)
        grid.addWidget(self._label("Fingerprints:"), 1, 0)
        grid.addWidget(self.use_database, 1, 1)
        grid.addLayout(_browse_row(self.database, self.database_browse), 1, 2)
        grid.addWidget(self.use_library, 2, 1)
        grid.addLayout(_browse_row(self.library, self.library_browse), 2, 2)

    def _build_queries(self) -> QHBoxLayout:
        """Query lengths and the decision rules."""
        self.lengths = QLineEdit(DEFAULT_LENGTHS)
        self.lengths.setToolTip("Query lengths in seconds, back to back inside every song")
        self.lengths.setMaximumWidth(150)
        self.rules = {name: QCheckBox(text) for name, text in RULES}
        for box in self.rules.values():
            box.setChecked(True)
        queries = QHBoxLayout()
        queries.addWidget(self.lengths)
        queries.addWidget(QLabel("s"))
        queries.addSpacing(16)
        queries.addWidget(QLabel("Rules:"))
        for box in self.rules.values():
            queries.addWidget(box)
        queries.addStretch(1)
        return queries

    def _build_takes(self) -> QHBoxLayout:
        """A box per take (filled in by the session), and whether untrusted takes count;
        ``self.takes_note`` says why a take is not ticked."""
        self.takes_row = QHBoxLayout()
        self.takes_row.setContentsMargins(0, 0, 0, 0)
        self.take_boxes: dict[str, QCheckBox] = {}
        self.allow_unchecked = QCheckBox("evaluate unaligned or flagged takes anyway")
        self.allow_unchecked.setToolTip(
            "A flagged take (its alignment failed a check, or audio was lost while "
            "recording) or an unaligned take (read as if it started exactly with the "
            "program) is evaluated only when this is ticked; the report says which"
        )
        self.allow_unchecked.toggled.connect(self._on_allow_unchecked)
        self.takes_note = QLabel("")
        self.takes_note.setWordWrap(True)
        self.takes_note.setStyleSheet(_RED)
        takes = QHBoxLayout()
        takes.addLayout(self.takes_row)
        takes.addSpacing(16)
        takes.addWidget(self.allow_unchecked)
        takes.addStretch(1)
        return takes

    def _build_report_folder(self) -> QHBoxLayout:
        """Where the report goes, and the Evaluate button."""
        self.out = QLineEdit()
        self.out_browse = QPushButton("Browse…")
        self.out_browse.clicked.connect(lambda: self._browse_folder(self.out))
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setDefault(True)
        self.evaluate_button.setMinimumWidth(110)
        self.evaluate_button.clicked.connect(lambda: self.evaluate())
        out_row = _browse_row(self.out, self.out_browse)
        out_row.addSpacing(12)
        out_row.addWidget(self.evaluate_button)
        return out_row

    def _build_result(self) -> QGroupBox:
        """The report shown: its folder, earlier reports, the measure, table and plot."""
        self.report_label = QLabel("")
        self.report_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Open the report folder in the file manager")
        self.open_button.clicked.connect(self.open_report_folder)
        self.previous = QComboBox()
        self.previous.setMinimumContentsLength(24)
        self.show_button = QPushButton("Show")
        self.show_button.setToolTip("Show the chosen report")
        self.show_button.clicked.connect(lambda: self.load_report())
        self.measure = QComboBox()
        for key in MEASURES:
            self.measure.addItem(MEASURES[key].format(tol=0.5), key)
        self.measure.currentIndexChanged.connect(self._draw)
        self.full_axis = QCheckBox("full 0–100 % axis")
        self.full_axis.setToolTip(
            "Show the plot's whole 0-100 % range; unticked, the axis fits the values "
            "(look at its numbers before comparing two reports)"
        )
        self.full_axis.toggled.connect(self._draw)
        top = QHBoxLayout()
        top.addWidget(QLabel("Report:"))
        top.addWidget(self.report_label, 1)
        top.addWidget(self.open_button)
        top.addSpacing(16)
        top.addWidget(QLabel("Previous:"))
        top.addWidget(self.previous)
        top.addWidget(self.show_button)
        measure_row = QHBoxLayout()
        measure_row.addWidget(QLabel("Measure:"))
        measure_row.addWidget(self.measure)
        measure_row.addSpacing(12)
        measure_row.addWidget(self.full_axis)
        measure_row.addStretch(1)

        self._build_figure()
        self.result_empty = placeholder(
            "No result shown yet: press Evaluate, or show a previous report."
        )
        self.result_stack = QStackedWidget()
        self.result_stack.addWidget(self.result_empty)
        self.result_stack.addWidget(self.figure)
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        self.notes.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes.setStyleSheet(_GREY)
        result = self.result_box = QGroupBox("Result")
        result_layout = QVBoxLayout(result)
        result_layout.addLayout(top)
        result_layout.addLayout(measure_row)
        result_layout.addWidget(self.result_stack, 1)
        result_layout.addWidget(self.notes)
        return result

    def _build_figure(self) -> None:
        """The result table and plot side by side (``self.figure``)."""
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.plot_widget = pg.PlotWidget(background="w")
        self.plot = self.plot_widget.getPlotItem()
        for name in ("left", "bottom"):
            axis = self.plot.getAxis(name)
            axis.setPen("k")
            axis.setTextPen("k")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "Query length (s)", color="k")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.legend = self.plot.addLegend(
            offset=(-8, -8),
            brush=pg.mkBrush(255, 255, 255, 230),
            pen="k",
            labelTextColor="k",
            labelTextSize="8pt",
            verSpacing=-6,
        )
        self.plot_widget.setMinimumHeight(220)
        self.figure = QSplitter(Qt.Orientation.Horizontal)
        self.figure.addWidget(self.table)
        self.figure.addWidget(self.plot_widget)
        self.figure.setChildrenCollapsible(False)
        self.figure.setStretchFactor(0, 1)
        self.figure.setStretchFactor(1, 1)

    def _label(self, text: str) -> QLabel:
        label = QLabel(text)
        self._labels.append(label)
        return label

    # --- state ---------------------------------------------------------------------------

    @property
    def view(self) -> EvaluationView | None:
        """The result shown (None: none)."""
        return self._view

    @property
    def placeholder_text(self) -> str:
        """The hint shown instead of the form ('' when the form is shown)."""
        return "" if self.empty.isHidden() else self.empty.text()

    @property
    def message_text(self) -> str:
        return self.message.text()

    @property
    def using_queryset(self) -> bool:
        """Whether the page evaluates a query set folder rather than the open session."""
        return self.use_queryset.isChecked()

    @property
    def queryset_session(self) -> QuerySetSession | None:
        """The query set read from the folder chosen (None: none, or it failed)."""
        return self._queryset

    @property
    def source_folder(self) -> Path | None:
        """What Evaluate evaluates: the query set's folder or the open session's."""
        if self.using_queryset:
            return None if self._queryset is None else self._queryset.folder
        return None if self.session is None else self.session.folder

    def _on_session_changed(self, session: Session | None) -> None:
        name = f" ({session.folder.name})" if session is not None else " (none open)"
        self.use_session.setText(f"the open session{name}")
        if self.using_queryset:  # the set shown stays
            self.refresh()
            return
        self._view = None
        self._show_message("")
        self._read_takes()
        self._fill_previous()
        self._draw()

    def _on_takes_changed(self) -> None:
        if not self.using_queryset:
            self._read_takes()

    def _on_mode_changed(self) -> None:
        self._view = None
        self._show_message("")
        if self.using_queryset:
            self._load_queryset()
        self._apply_lengths()
        self._read_takes()
        self._fill_previous()
        self._draw()

    # --- the query set ------------------------------------------------------------------

    def set_queryset(self, folder: Path | str) -> str:
        """Evaluate the query set in ``folder`` (read now, again if it was before: it may
        have changed); '' or why it cannot be."""
        self.queryset.setText(str(folder))
        self._queryset_text = None  # read it again
        self._on_queryset_edited()
        self.use_queryset.setChecked(True)
        return self._queryset_error

    def _on_queryset_edited(self) -> None:
        changed = self._load_queryset()
        if not self.using_queryset:
            if changed and self._queryset_text:
                self.use_queryset.setChecked(True)  # a folder chosen there is to be evaluated
            return
        if changed:
            self._view = None
            self._show_message("")
            self._apply_lengths()
            self._read_takes()
            self._fill_previous()
            self._draw()

    def _load_queryset(self) -> bool:
        """Read the folder typed if it changed (quick: the set's index files); whether it
        did. An error is shown under the row, in one line."""
        text = self.queryset.text().strip()
        if text == self._queryset_text:
            return False
        self._queryset_text = text
        self._queryset, self._queryset_error = None, ""
        if text:
            try:
                self._queryset = read_queryset_folder(Path(text))
            except AfpError as exc:
                self._queryset_error = one_line(exc)
        queryset = self._queryset
        self._queryset_writable = (
            queryset is None or evaluations_folder(queryset.folder) is not None
        )
        if queryset is not None:
            where = (
                f"reports go into its {EVALUATIONS_DIR}/ folder"
                if self._queryset_writable
                else "the folder is read-only: choose a folder for the report below"
            )
            self.queryset_info.setText(f"{describe_queryset(queryset)}; {where}.")
        else:
            self.queryset_info.setText(self._queryset_error)
        self.queryset_info.setToolTip(self.queryset_info.text())
        self.queryset_info.setStyleSheet(_RED if self._queryset_error else _GREY)
        return True

    def _on_browse_queryset(self) -> None:
        start = self.queryset.text() or (str(self.session.folder.parent) if self.session else "")
        folder = QFileDialog.getExistingDirectory(self, "Choose a query set folder", start)
        if folder:
            self.set_queryset(folder)

    def _apply_lengths(self) -> None:
        """The set's own query lengths in set mode, the paper's otherwise, unless typed."""
        queryset = self._queryset if self.using_queryset else None
        wanted = DEFAULT_LENGTHS
        tip = "Query lengths in seconds, back to back inside every song"
        if queryset is not None and queryset.lengths_s:
            wanted = " ".join(f"{x:g}" for x in queryset.lengths_s)
            tip += f"; the query set holds queries of {wanted} s"
        if self.lengths.text().strip() in (DEFAULT_LENGTHS, self._auto_lengths):
            self.lengths.setText(wanted)
        self._auto_lengths = wanted
        self.lengths.setToolTip(tip)

    # --- takes ---------------------------------------------------------------------------

    def _take_entries(self) -> list[tuple[str, str, str, bool, str]]:
        """(label, box text, tooltip, trusted, why not) per take of what is evaluated."""
        if self.using_queryset:
            queryset = self._queryset
            if queryset is None:
                return []
            tips = _queryset_take_tips(queryset)
            # every take of a set was trusted when it was exported
            return [
                (take.label, take.label, tips.get(take.label, take.label), True, "")
                for take in queryset.takes
            ]
        session = self.session
        return [
            (
                entry.label,
                entry.label if entry.verdict.trusted else f"{entry.label} ({entry.verdict.status})",
                f"{entry.label}: {entry.verdict.describe()}",
                entry.verdict.trusted,
                f"{entry.label} is {entry.verdict.describe()}",
            )
            for entry in (session.takes if session is not None else ())
        ]

    def _read_takes(self) -> None:
        takes = sorted(self._take_entries(), key=lambda t: take_sort_key(t[0]))
        while self.takes_row.count():
            item = self.takes_row.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.take_boxes = {}
        self._untrusted = [label for label, _, _, trusted, _ in takes if not trusted]
        for label, text, tip, trusted, _ in takes:
            box = QCheckBox(text)
            box.setToolTip(tip)
            box.setChecked(trusted or self.allow_unchecked.isChecked())
            self.takes_row.addWidget(box)
            self.take_boxes[label] = box
        why = [reason for _, _, _, trusted, reason in takes if not trusted]
        them = "it" if len(why) == 1 else "them"
        self.takes_note.setText(
            f"{'; '.join(why)}. Align again on the Record page, or tick “evaluate … anyway” "
            f"to evaluate {them} (the report then says so)."
            if why
            else ""
        )
        self.takes_note.setVisible(bool(why))
        self.refresh()

    def _on_allow_unchecked(self, checked: bool) -> None:
        # asking to evaluate flagged takes means ticking them
        for label in self._untrusted:
            if label in self.take_boxes:
                self.take_boxes[label].setChecked(checked)

    def _problem(self) -> str:
        if self.using_queryset:
            if self._queryset is None:
                return (
                    "Choose a query set folder above: one written by afp-rig export or by "
                    "Export on the Dataset page (the protocol's queries cut from the aligned "
                    "takes of one or more sessions). No session needs to be open."
                )
            return ""
        session = self.session
        if session is None:
            return (
                "No session open: create or open one with the buttons above, or choose "
                "“a query set folder” to evaluate an exported query set."
            )
        if session.program is None:
            return (
                "This session has no program yet: build it on the Program page, record and "
                "align takes on the Record page, then evaluate them here."
            )
        if not session.takes:
            return (
                "No take yet: record a take on the Record page (it is aligned when recording "
                "ends), then evaluate it here."
            )
        return ""

    def refresh(self) -> None:
        problem = self._problem()
        self.empty.setText(problem)
        self.empty.setVisible(bool(problem))
        self.form.setVisible(not problem)
        self.result_box.setVisible(not problem)
        queryset = self.using_queryset
        self.queryset_info.setVisible(queryset and bool(self.queryset_info.text()))
        self.allow_unchecked.setVisible(not queryset)  # a set holds trusted takes only
        self._update_hints()
        busy = self.busy
        for widget in (
            self.use_session,
            self.use_queryset,
            self.checkpoint,
            self.checkpoint_browse,
            self.use_database,
            self.use_library,
            self.lengths,
            self.allow_unchecked,
            self.out,
            self.out_browse,
            self.previous,
            *self.rules.values(),
            *self.take_boxes.values(),
        ):
            widget.setEnabled(not busy)
        for widget in (self.queryset, self.queryset_browse):
            widget.setEnabled(not busy)
        self._on_source_changed()
        self.evaluate_button.setEnabled(not busy and not problem)
        self.show_button.setEnabled(not busy and self.previous.count() > 0)
        self.open_button.setEnabled(self._view is not None)
        self.panel.setVisible(self.panel.worker is not None)

    def _on_source_changed(self) -> None:
        busy = self.busy
        database = self.use_database.isChecked()
        for widget in (self.database, self.database_browse):
            widget.setEnabled(database and not busy)
        for widget in (self.library, self.library_browse):
            widget.setEnabled(not database and not busy)

    def _update_hints(self) -> None:
        """The placeholders saying where things go, for the session or the set."""
        if self.using_queryset:
            what, where = "the set's songs", "<query set>/evaluations"
            if not self._queryset_writable:
                self.out.setPlaceholderText(
                    "the query set is read-only: choose a folder for the report"
                )
                self.library.setPlaceholderText(
                    "a folder of songs holding the set's songs; indexed into a database "
                    "beside the report folder (the set is read-only)"
                )
                self.previous.setToolTip(f"Reports in {where}, newest first")
                return
        else:
            what, where = "the session's songs", "<session>/evaluations"
        self.out.setPlaceholderText(f"{where}/<date-time>")
        self.library.setPlaceholderText(
            f"a folder of songs holding {what}; indexed into {where}/db-…, resumed and reused"
        )
        self.previous.setToolTip(f"Reports in {where}, newest first")

    def _fill_previous(self, select: Path | None = None) -> None:
        self.previous.clear()
        source = self.source_folder
        if source is not None:
            found = previous_reports(source)
            for index, folder in enumerate(found):
                text = folder.name + (" (latest)" if index == 0 else "")
                self.previous.addItem(text, str(folder))
            # reports of it written elsewhere since the app started (a read-only set's)
            for folder in self._written.get(source, []):
                if folder not in found and (folder / REPORT_FILE).is_file():
                    self.previous.addItem(short_path(folder), str(folder))
        if select is not None:
            index = self.previous.findData(str(select))
            if index >= 0:
                self.previous.setCurrentIndex(index)
        self.refresh()

    def _show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(_RED if error else "")
        self.message.setVisible(bool(text))

    # --- inputs ----------------------------------------------------------------------------

    def options(self) -> dict[str, object]:
        """``evaluate_session``'s keyword arguments from the form (``AfpError`` if bad)."""
        if self.using_queryset and not self._queryset_writable and not self.out.text().strip():
            raise AfpError(
                f"{self.queryset.text().strip()}: the query set is read-only: choose a folder "
                "for the report (Report folder, Browse…)"
            )
        lengths = parse_lengths(self.lengths.text())
        rules = tuple(name for name, box in self.rules.items() if box.isChecked())
        if not rules:
            raise AfpError("tick at least one decision rule")
        takes = tuple(label for label, box in self.take_boxes.items() if box.isChecked())
        if not takes:
            raise AfpError("tick at least one take")
        settings = RealWorldSettings(
            lengths_s=lengths,
            methods=None if len(rules) == len(RULES) else rules,
            takes=takes,
            allow_unchecked=self.allow_unchecked.isChecked(),
        )
        options: dict[str, object] = {"settings": settings}
        checkpoint = self.checkpoint.text().strip()
        options["checkpoint"] = Path(checkpoint) if checkpoint else None
        if self.use_database.isChecked():
            folder = self.database.text().strip()
            if not folder:
                raise AfpError("choose a database folder (or a library folder to index)")
            options["database"] = Path(folder)
        else:
            folder = self.library.text().strip()
            if not folder:
                raise AfpError("choose a library folder (or a database folder)")
            options["library"] = Path(folder)
        out = self.out.text().strip()
        options["out"] = Path(out) if out else None
        return options

    def set_database(self, folder: Path | str) -> None:
        self.use_database.setChecked(True)
        self.database.setText(str(folder))

    def set_library(self, folder: Path | str) -> None:
        self.use_library.setChecked(True)
        self.library.setText(str(folder))

    def _on_browse_checkpoint(self) -> None:
        start = self.checkpoint.text() or str(SHIPPED_MODEL.parent)
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a checkpoint", start, "Checkpoints (*.pt);;All files (*)"
        )
        if path:
            self.checkpoint.setText(path)

    def _browse_folder(self, edit: QLineEdit) -> None:
        source = self.source_folder
        start = edit.text() or (str(source) if source is not None else "")
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        if folder:
            edit.setText(folder)

    # --- jobs --------------------------------------------------------------------------------

    def evaluate(self) -> Worker | None:
        """Run the evaluation the form describes in a worker; returns it (None: refused)."""
        if self.using_queryset and not self.busy:
            self._on_queryset_edited()  # a folder typed but not read yet
        source = self.source_folder
        if source is None or self.busy or self._problem():
            return None
        try:
            options = self.options()
        except AfpError as exc:
            self._show_message(one_line(exc), error=True)
            if "read-only" in str(exc):
                self.out.setFocus()
            return None
        self._show_message("")
        worker = Worker(evaluate_and_view, source, **options)
        self._job_source = source
        return self._start(worker, "evaluate", "checking the inputs …")

    def load_report(self, folder: Path | str | None = None) -> Worker | None:
        """Show a report folder (default: the one chosen under Previous) in a worker."""
        if folder is None:
            data = self.previous.currentData()
            if not data:
                return None
            folder = Path(str(data))
        if self.busy:
            return None
        self._show_message("")
        worker = Worker(load_evaluation, Path(folder))
        return self._start(worker, "load", f"reading {Path(folder).name} …")

    def _start(self, worker: Worker, kind: str, message: str) -> Worker:
        self._job, self._job_kind = worker, kind
        worker.finished.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(self._on_job_done)
        return self.start_job(worker, self.panel, message)

    def _on_result(self, view: EvaluationView) -> None:
        self._view = view
        if self._job_kind == "evaluate":
            source = self._job_source
            if source is not None and view.folder.parent != source / EVALUATIONS_DIR:
                self._written.setdefault(source, []).append(view.folder)
            self._fill_previous(select=view.folder)
            self.status.emit(f"Evaluate: report written to {view.folder}")
        else:
            self.status.emit(f"Evaluate: showing {view.folder}")
        self._draw()

    def _on_error(self, message: str) -> None:
        self._show_message(message, error=True)
        self.status.emit(f"Evaluate: {message}")

    def _on_cancelled(self) -> None:
        if self._job_kind == "evaluate":
            text = (
                "Cancelled: no report was written. Songs indexed so far are kept; indexing "
                "resumes where it stopped next time."
            )
        else:
            text = "Cancelled."
        self._show_message(text)

    def _on_job_done(self) -> None:
        self._job, self._job_kind, self._job_source = None, "", None

    def open_report_folder(self) -> bool:
        """Open the shown report's folder in the desktop's file manager."""
        if self._view is None:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._view.folder)))

    # --- drawing ---------------------------------------------------------------------------

    @property
    def measure_key(self) -> str:
        return str(self.measure.currentData() or "accuracy")

    def _draw(self) -> None:
        view = self._view
        self.plot.clear()
        self.legend.clear()
        if view is None:
            self.table.clear()
            self.table.setRowCount(0)
            self.table.setColumnCount(0)
            self.report_label.setText("—")
            self.notes.setText("")
            self.result_stack.setCurrentWidget(self.result_empty)
            self.refresh()
            return
        self.result_stack.setCurrentWidget(self.figure)
        measure = self.measure_key
        for index in range(self.measure.count()):
            key = self.measure.itemData(index)
            self.measure.setItemText(index, view.measure_title(key))
        self._fill_table(view, measure)
        self._draw_plot(view, measure)
        self.report_label.setText(str(view.folder))
        self.report_label.setToolTip(view.describe)
        lines = [f"{view.source}: {view.describe}; {view.trials} queries identified."]
        lines += [f"• {note}" for note in view.notes]
        self.notes.setText("\n".join(lines))
        self.refresh()

    def _fill_table(self, view: EvaluationView, measure: str) -> None:
        """Row 0 names the rules over their takes; then a row per query length."""
        headers, rows = view.table(measure)
        self.table.clear()
        self.table.clearSpans()
        self.table.setColumnCount(len(headers))
        self.table.setRowCount(len(rows) + 1)
        self.table.setHorizontalHeaderLabels(headers)
        for column, (_, method, take, _) in enumerate(view.columns(), start=2):
            item = self.table.horizontalHeaderItem(column)  # set by the labels above
            if item is None:
                continue
            item.setForeground(pg.mkColor(take_colour(take, view.takes.index(take))))
            item.setToolTip(f"take {take}, {METHOD_NAMES.get(method, method)}")
        column = 2
        for text, span in view.column_groups():
            item = QTableWidgetItem(text)
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            font = item.font()
            font.setBold(True)
            item.setFont(font)
            item.setBackground(_GROUP)
            self.table.setItem(0, column, item)
            if span > 1:
                self.table.setSpan(0, column, 1, span)
            column += span
        for column in (0, 1):
            blank = QTableWidgetItem("")
            blank.setFlags(Qt.ItemFlag.ItemIsEnabled)
            blank.setBackground(_GROUP)
            self.table.setItem(0, column, blank)
        # shaded from the table's worst value (white) to its best (green)
        values = [float(t) for row in rows for t in row[2:] if t != "–"]
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        worse, better = (high, low) if measure == "no_match_rate" else (low, high)
        for r, row in enumerate(rows, start=1):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                align = Qt.AlignmentFlag.AlignRight if c else Qt.AlignmentFlag.AlignLeft
                item.setTextAlignment(align | Qt.AlignmentFlag.AlignVCenter)
                if c >= 2 and text != "–":
                    spread = better - worse
                    share = 1.0 if abs(spread) < 1e-9 else (float(text) - worse) / spread
                    item.setBackground(_blend(share))
                    item.setForeground(QColor(0, 0, 0))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        header = self.table.horizontalHeader()
        bold = self.table.font()
        bold.setBold(True)
        metrics = QFontMetrics(bold)
        column = 2
        for text, span in view.column_groups():  # the takes share what their rule needs
            least = (metrics.horizontalAdvance(text) + 16 + span - 1) // span
            for c in range(column, column + span):
                header.resizeSection(c, max(header.sectionSize(c), least, 48))
            column += span
        width = sum(header.sectionSize(c) for c in range(len(headers)))
        scroll = self.table.verticalScrollBar().sizeHint().width()
        self.table.setMinimumWidth(min(width + 2 * self.table.frameWidth() + scroll, 620))

    def _draw_plot(self, view: EvaluationView, measure: str) -> None:
        title = view.measure_title(measure)
        short = title.split(" (")[0]
        self.plot.setLabel("left", f"{short} (%)", color="k")
        for series in view.series(measure):
            style, symbol = RULE_STYLES.get(series.method, (Qt.PenStyle.DotLine, "t"))
            colour = take_colour(series.take, view.takes.index(series.take))
            self.plot.plot(
                list(series.lengths_s),
                list(series.values),
                pen=pg.mkPen(colour, width=2, style=style),
                symbol=symbol,
                symbolSize=7,
                symbolBrush=colour,
                symbolPen=pg.mkPen(colour),
                name=series.label,
                antialias=True,
            )
        shown = view.series(measure)
        low, high = value_range(shown, full=self.full_axis.isChecked())
        self.plot.setYRange(low, high, padding=0)
        lengths = list(view.lengths_s)
        if lengths:
            self.plot.getAxis("bottom").setTicks([[(x, f"{x:g}") for x in lengths], []])
            span = max(lengths) - min(lengths)
            pad = 0.04 * span + 0.3
            self.plot.setXRange(min(lengths) - pad, max(lengths) + pad, padding=0)
            corner = _legend_corner(shown, min(lengths), span, (low + high) / 2)
            self.legend.setOffset(corner)
        self.plot.setTitle(f"{short} vs query length", color="k", size="10pt")

    # --- for tests and scripts -----------------------------------------------------------

    def table_cells(self) -> list[list[str]]:
        """The table's text: the header row, the rules row, a row per query length."""
        headers = [
            item.text() if (item := self.table.horizontalHeaderItem(c)) is not None else ""
            for c in range(self.table.columnCount())
        ]
        rows = [
            [
                item.text() if (item := self.table.item(r, c)) is not None else ""
                for c in range(self.table.columnCount())
            ]
            for r in range(self.table.rowCount())
        ]
        return [headers, *rows]


def _legend_corner(
    series: list[Series], x0: float, span: float, middle: float = 50.0
) -> tuple[int, int]:
    """The legend's offset: the corner of the plot with the fewest points (bottom right
    when tied: accuracy rises with the query length, so that corner is usually free)."""
    corners = {(-8, -8): 0, (8, -8): 0, (-8, 8): 0, (8, 8): 0}  # BR, BL, TR, TL
    for line in series:
        for x, y in zip(line.lengths_s, line.values, strict=True):
            right = span <= 0 or (x - x0) / span >= 0.55
            left = span > 0 and (x - x0) / span <= 0.45
            for dx, dy in corners:
                in_x = right if dx < 0 else left
                in_y = y <= middle if dy < 0 else y >= middle
                if in_x and in_y:
                    corners[dx, dy] += 1
    return min(corners, key=lambda corner: corners[corner])


def _blend(share: float) -> QColor:
    share = min(1.0, max(0.0, share))
    return QColor(
        round(_CELL_LOW.red() + share * (_CELL_HIGH.red() - _CELL_LOW.red())),
        round(_CELL_LOW.green() + share * (_CELL_HIGH.green() - _CELL_LOW.green())),
        round(_CELL_LOW.blue() + share * (_CELL_HIGH.blue() - _CELL_LOW.blue())),
    )
