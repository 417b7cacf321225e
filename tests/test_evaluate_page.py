"""Evaluate: ``rig_app.evaluate.evaluate_session`` on a real session folder with known truth,
and the page that runs it (offscreen).

The session and the database come from the real-world protocol's tests
(``tests.test_protocol_realworld``): three synthesised songs in a program with markers,
a clean take ('low') and one with white noise at 5 dB SNR ('high'), both aligned by the
rig; a database of the same songs made by an untrained (seeded) model, which finds clean
audio on the 0.5 s window grid and little else. So the clean take scores 100 % and the
noisy one clearly less, whichever way the fingerprints were made.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from afp_core import indexing
from afp_core.checkpoint import load_checkpoint
from afp_core.database import FingerprintDB
from afp_core.errors import Cancelled, ConfigError, DatabaseError
from afp_core.hubness import measure_hubness
from afp_core.protocols.realworld import RealWorldSettings
from afp_core.protocols.report import read_report
from afp_core.protocols.sessions import SessionReadError, read_session
from afp_core.search import calibrate_threshold
from afp_core.shipped import SHIPPED_MODEL
from afp_core.tasks import TaskState
from rig_app import evaluate
from rig_app.evaluate import (
    evaluate_session,
    library_database_folder,
    load_evaluation,
    parse_lengths,
    previous_reports,
)
from tests.test_protocol_realworld import build_db, known_cell, write_session

pytest.importorskip("PySide6")

JOB_MS = 180_000
SETTINGS = RealWorldSettings(lengths_s=(3, 5))
SONGS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory, song_library, untrained_checkpoint):
    root = tmp_path_factory.mktemp("evaluate")
    db = build_db(root / "db", song_library[:SONGS], untrained_checkpoint)
    session = write_session(root / "session", song_library[:SONGS], {"low": None, "high": 5.0})
    return root, db, session


class Progress:
    """A TaskState recording what it reports; optionally cancels on a message."""

    def __init__(self, cancel_on: str | None = None) -> None:
        self.reports: list[tuple[float, float, str]] = []
        self.cancel_on = cancel_on
        self.task = TaskState(self._report)

    def _report(self, done: float, total: float, message: str) -> None:
        self.reports.append((done, total, message))
        if self.cancel_on is not None and self.cancel_on in message:
            self.task.cancel()

    def fractions(self) -> list[float]:
        return [d / t for d, t, _ in self.reports if t > 0]


def _copy_library(folder: Path, paths: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for path in paths:
        shutil.copy(path, folder / path.name)
    return folder


# --- GUI-free ------------------------------------------------------------------------------


def test_evaluates_a_session_with_a_database(world, tmp_path):
    _, db, session = world
    progress = Progress()
    folder, results = evaluate_session(
        progress.task, session, database=db, out=tmp_path / "report", settings=SETTINGS
    )
    assert folder == tmp_path / "report"
    (result,) = results
    # the clean take: every query (majority vote of an untrained model misses a few)
    assert known_cell(result, "low", "sequence", 3).accuracy == 1.0
    assert known_cell(result, "low", "vote", 3).accuracy >= 0.9
    for method in ("sequence", "vote"):
        assert known_cell(result, "low", method, 3).queries == SONGS * 8
        assert known_cell(result, "high", method, 3).accuracy < 0.75  # clearly less than clean
    # one bar, filled once, messages saying the phase
    fractions = progress.fractions()
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any(m.startswith("evaluating: low: ") for _, _, m in progress.reports)
    # counting seconds of audio: every song of both takes
    seconds = 2 * sum(song.duration_s for song in read_session(session).songs)
    assert progress.task.unit == "s of audio"
    assert progress.reports[-1][:2] == pytest.approx((seconds, seconds))
    report = read_report(folder)
    assert report.data["inputs"]["database"] == str(db)
    assert report.data["inputs"]["library"] is None
    assert len(report.trials) == 2 * 2 * SONGS * (8 + 4)  # takes x rules x songs x queries

    view = load_evaluation(None, folder)
    headers, rows = view.table("accuracy")
    assert headers == ["query", "queries", "low", "high", "low", "high"]
    assert view.column_groups() == [("offset-consistent", 2), ("majority vote", 2)]
    assert [row[:3] for row in rows] == [["3 s", "24", "100.0"], ["5 s", "12", "100.0"]]
    high = known_cell(result, "high", "vote", 5).accuracy
    assert rows[1][5] == f"{100 * high:.1f}"
    series = {s.label: s for s in view.series("accuracy")}
    assert sorted(series) == [
        "high, majority vote",
        "high, offset-consistent",
        "low, majority vote",
        "low, offset-consistent",
    ]
    assert series["low, offset-consistent"].lengths_s == (3.0, 5.0)
    assert series["low, offset-consistent"].values == (100.0, 100.0)


def test_summary_names_the_checkpoint_by_its_path_and_model(tmp_path, monkeypatch):
    from afp_core.fileutil import file_sha256

    session = tmp_path / "session"
    spec = {"name": "nafp", "arch": {"width": 0.25, "dim": 128}}

    def describe(checkpoint: Path, **info) -> str:
        system = {"checkpoint": str(checkpoint), "model": spec, "database": str(db), **info}
        return evaluate._describe(
            {"session": {"folder": str(session)}, "systems": [{"recogniser": system}]}
        )

    db = session / "evaluations" / "db-library-0123456789"
    text = describe(db / "model.pt", checkpoint_sha256=file_sha256(SHIPPED_MODEL))
    assert text == (
        "model evaluations/db-library-0123456789/model.pt (nafp width 0.25, the shipped model), "
        "database evaluations/db-library-0123456789"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    db = tmp_path / "home" / "dbs" / "music"
    text = describe(db / "model.pt", checkpoint_sha256="0" * 64, trained=True)
    assert text == "model ~/dbs/music/model.pt (nafp width 0.25), database ~/dbs/music"
    assert describe(Path("/elsewhere/m.pt"), trained=False).startswith(
        "model /elsewhere/m.pt (nafp width 0.25, untrained)"
    )


def test_progress_bar_counts_seconds_of_audio(qtbot, world, tmp_path):
    from rig_app.ui.workers import TaskPanel, Worker

    _, db, session = world
    panel = TaskPanel()
    qtbot.addWidget(panel)
    worker = Worker(evaluate_session, session, database=db, out=tmp_path / "r", settings=SETTINGS)
    panel.bind(worker)
    shown: list[tuple[bool, str]] = []  # after the panel's own slot: what it shows
    worker.progress.connect(lambda *_: shown.append((panel.bar.isTextVisible(), panel.bar.text())))
    with qtbot.waitSignal(worker.done, timeout=JOB_MS):
        worker.start()
    seconds = 2 * sum(song.duration_s for song in read_session(session).songs)
    counted = [text for visible, text in shown if visible]
    assert counted and all(text.endswith(f" / {seconds:,.0f} s of audio") for text in counted)
    assert counted[-1] == f"{seconds:,.0f} / {seconds:,.0f} s of audio"
    assert "s/s" not in " ".join(counted)  # no rate of a fraction


def test_default_report_folder_is_in_the_session(world):
    _, db, session = world
    before = set(previous_reports(session))
    settings = RealWorldSettings(lengths_s=(5,), takes=("low",), methods=("sequence",))
    folder, _ = evaluate_session(TaskState(), session, database=db, settings=settings)
    assert folder.parent == session / "evaluations"
    assert folder not in before and previous_reports(session)[0] == folder
    assert read_report(folder).data["settings"]["takes"] == ["low"]


def test_library_is_indexed_on_the_fly_resumed_and_reused(
    world, song_library, untrained_checkpoint, monkeypatch
):
    root, _, session = world
    library = _copy_library(root / "library", song_library[: SONGS + 1])  # one song more
    extracted: list[str] = []
    real = indexing.extract_file_vectors

    def counting(model, path, **kwargs):
        extracted.append(Path(path).name)
        return real(model, path, **kwargs)

    monkeypatch.setattr(indexing, "extract_file_vectors", counting)
    calibrated: list[int] = []

    def calibrate_5s(db, model, device="cpu", task=None):  # every length: a minute here
        calibrated.append(len(db.songs("indexed")))
        measure_hubness(db, task=task)
        for method in ("sequence", "vote"):
            calibrate_threshold(db, 9, method=method, trials=40)
        db.save_search_settings(calibrated_generation=db.generation)

    monkeypatch.setattr(indexing, "calibrate_thresholds", calibrate_5s)
    options = {"library": library, "checkpoint": untrained_checkpoint, "settings": SETTINGS}
    db_dir = library_database_folder(session, library, load_checkpoint(untrained_checkpoint).sha256)
    assert db_dir.parent == session / "evaluations" and db_dir.name.startswith("db-library-")

    # cancelled while indexing the third file: the first two stay, no report is written
    reports = set(previous_reports(session))
    third = sorted(p.name for p in library.iterdir())[2]
    progress = Progress(cancel_on=f"indexing the library: {third}")
    with pytest.raises(Cancelled):
        evaluate_session(progress.task, session, **options)
    assert set(previous_reports(session)) == reports
    staged = {s.source for s in FingerprintDB.open(db_dir).songs()}
    assert len(staged) == 2 and len(extracted) == 3
    assert any(m.startswith("checking the library") for _, _, m in progress.reports)

    # next time: only the rest is extracted, then the whole library is indexed
    extracted.clear()
    progress = Progress()
    folder, (result,) = evaluate_session(progress.task, session, **options)
    assert sorted(extracted) == sorted(p.name for p in library.iterdir())[2:]
    assert len(FingerprintDB.open(db_dir).songs("indexed")) == SONGS + 1
    assert calibrated == [SONGS + 1]  # the "no match" threshold, once all songs are in
    assert result.recogniser["database"] == str(db_dir)
    assert known_cell(result, "low", "sequence", 3).accuracy == 1.0
    assert known_cell(result, "high", "sequence", 3).accuracy < 0.75
    assert any("added 2 songs" in note for note in result.notes)
    fractions = progress.fractions()
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    phases = [m.split(":")[0] for _, _, m in progress.reports if m]
    assert phases.index("indexing the library") < phases.index("evaluating")
    assert read_report(folder).data["inputs"]["library"] == str(library)

    # and the time after: the database is reused, nothing extracted
    extracted.clear()
    _, (again,) = evaluate_session(TaskState(), session, **options)
    assert extracted == [] and calibrated == [SONGS + 1]
    assert any(f"{SONGS + 1} already in the database" in note for note in again.notes)
    assert [c.accuracy for c in again.summary] == [c.accuracy for c in result.summary]


def test_unaligned_take_is_refused_before_any_work(world, song_library, tmp_path):
    _, db, _ = world
    session = write_session(tmp_path / "s", song_library[:SONGS], {"low": None}, align=False)
    progress = Progress()
    with pytest.raises(SessionReadError) as error:
        evaluate_session(progress.task, session, database=db, settings=SETTINGS)
    message = str(error.value)
    assert "\n" not in message and "take 'low' is not aligned" in message
    assert f"afp-rig align {session} --label low" in message
    assert progress.reports == []
    assert not (session / "evaluations").exists()
    # the library way too, before the library is read or a database made
    with pytest.raises(SessionReadError, match="'low' is not aligned"):
        evaluate_session(progress.task, session, library=tmp_path, settings=SETTINGS)
    assert progress.reports == []


def test_checkpoint_not_the_databases_model_is_refused(world):
    _, db, session = world
    progress = Progress()
    with pytest.raises(DatabaseError) as error:
        evaluate_session(progress.task, session, database=db, checkpoint=SHIPPED_MODEL)
    message = str(error.value)
    assert "\n" not in message and str(db) in message
    assert not any(m.startswith("evaluating") for _, _, m in progress.reports)


def test_library_without_the_sessions_songs_is_refused(world, song_library, tmp_path):
    _, _, session = world
    library = _copy_library(tmp_path / "other", song_library[SONGS:])
    progress = Progress()
    with pytest.raises(ConfigError) as error:
        evaluate_session(progress.task, session, library=library, settings=SETTINGS)
    message = str(error.value)
    assert "\n" not in message
    assert f"{SONGS} of the session's {SONGS} songs are not in the library" in message
    assert "'song0'" in message and "add their files to the library folder" in message
    sha = load_checkpoint(SHIPPED_MODEL).sha256
    assert not library_database_folder(session, library, sha).exists()  # nothing indexed
    with pytest.raises(ConfigError, match="holds the session itself"):
        evaluate_session(TaskState(), session, library=session.parent, settings=SETTINGS)


def test_inputs_are_checked(world, tmp_path):
    _, db, session = world
    with pytest.raises(ConfigError, match="either a database folder or a library"):
        evaluate_session(TaskState(), session)
    with pytest.raises(ConfigError, match="either a database folder or a library"):
        evaluate_session(TaskState(), session, database=db, library=tmp_path)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        evaluate_session(TaskState(), session, database=db, checkpoint=tmp_path / "x.pt")
    with pytest.raises(SessionReadError, match="not a session folder"):
        evaluate_session(TaskState(), tmp_path, database=db)
    assert parse_lengths("1 2, 3;4.5 10s") == (1, 2, 3, 4.5, 10)
    for bad in ("", "1 x", "0", "-2", "nan"):
        with pytest.raises(ConfigError, match="query lengths"):
            parse_lengths(bad)


# --- the page ------------------------------------------------------------------------------


@pytest.fixture
def window(qtbot):
    from rig_app.ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 800)
    window.show()
    yield window
    for page in window.pages:
        page.cancel_jobs()
        qtbot.waitUntil(lambda page=page: not page.workers, timeout=JOB_MS)


def _page(window, session: Path):
    assert window.open_session(session) is None
    return window.show_page("Evaluate")


def test_page_comes_last_and_says_what_to_do(qtbot, window, song_library, tmp_path):
    titles = [page.title for page in window.pages]
    assert titles[-3:] == ["Inspect", "Dataset", "Evaluate"]
    page = window.show_page("Evaluate")
    assert "No session open" in page.placeholder_text
    unaligned = write_session(tmp_path / "s", song_library[:2], {"low": None}, align=False)
    assert window.open_session(unaligned) is None
    # the take's verdict, said as everywhere else; it is not ticked, so nothing runs
    assert page.placeholder_text == ""
    assert page.take_boxes["low"].text() == "low (not aligned)"
    assert not page.take_boxes["low"].isChecked()
    assert page.takes_note.text().startswith("low is not aligned. Align again on the Record")
    assert page.evaluate() is None and not page.workers
    assert page.message.text() == "tick at least one take"
    # asking to evaluate untrusted takes ticks them, and unasking unticks them
    page.allow_unchecked.setChecked(True)
    assert page.take_boxes["low"].isChecked()
    page.allow_unchecked.setChecked(False)
    assert not page.take_boxes["low"].isChecked()


def test_page_evaluates_in_a_worker_and_shows_the_result(qtbot, window, world, monkeypatch):
    from PySide6.QtCore import Qt

    _, db, session = world
    page = _page(window, session)
    assert page.placeholder_text == ""
    assert list(page.take_boxes) == ["low", "high"]
    assert page.lengths.text() == "1 2 3 4 5 10 15"  # the paper's, by default
    assert "shipped model (assets/models/afp-default.pt)" in page.checkpoint.placeholderText()
    assert page.view is None and not page.open_button.isEnabled()
    page.set_database(db)
    page.lengths.setText("3 5")
    before = set(previous_reports(session))
    qtbot.mouseClick(page.evaluate_button, Qt.MouseButton.LeftButton)
    assert page.workers  # the work runs in the background, not in the click
    assert not page.evaluate_button.isEnabled() and not page.database.isEnabled()
    assert page.panel.isVisible() and page.panel.cancel_button.isVisible()
    assert window.state.busy
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        pass
    assert not page.workers and not window.state.busy and page.evaluate_button.isEnabled()
    assert page.message_text == ""

    (new,) = set(previous_reports(session)) - before
    assert page.view is not None and page.view.folder == new
    report = read_report(new)
    assert report.data["settings"]["lengths_s"] == [3, 5]
    # the table: paper Table 4's shape, the numbers of the report
    cells = page.table_cells()
    assert cells[0] == ["query", "queries", "low", "high", "low", "high"]
    assert cells[1] == ["", "", "offset-consistent", "", "majority vote", ""]  # spanning
    assert page.table.columnSpan(0, 2) == 2 and page.table.columnSpan(0, 4) == 2
    assert [row[0] for row in cells[2:]] == ["3 s", "5 s"]
    assert cells[2][1:3] == ["24", "100.0"]
    high = next(
        c for c in report.summary if (c["take"], c["method"], c["length_s"]) == ("high", "vote", 5)
    )
    assert cells[3][5] == f"{100 * high['accuracy']:.1f}"
    # the plot: a line per take and rule, in percent
    curves = {item.name(): item for item in page.plot.listDataItems()}
    assert set(curves) == {
        "low, offset-consistent",
        "low, majority vote",
        "high, offset-consistent",
        "high, majority vote",
    }
    xs, ys = curves["high, majority vote"].getData()
    assert list(xs) == [3.0, 5.0] and ys[1] == pytest.approx(100 * high["accuracy"])
    assert list(curves["low, offset-consistent"].getData()[1]) == [100.0, 100.0]
    assert "Accuracy" in page.plot.getAxis("left").labelText
    # the folder, the notes, the list of previous reports
    assert page.report_label.text() == str(new)
    assert page.open_button.isEnabled()
    assert page.previous.currentData() == str(new)
    assert f"{len(report.trials)} queries identified" in page.notes.text()
    # the model by its file and architecture, not "model model.pt"
    assert f"model {db / 'model.pt'} (nafp width 0.25, untrained)" in page.notes.text()
    opened = []
    monkeypatch.setattr(
        "rig_app.ui.pages.evaluate.QDesktopServices.openUrl",
        lambda url: opened.append(url.toLocalFile()) or True,
    )
    assert page.open_report_folder() and opened == [str(new)]
    # another measure: the same report, other numbers
    page.measure.setCurrentIndex(page.measure.findData("no_match_rate"))
    assert "rate" in page.plot.getAxis("left").labelText
    cells = page.table_cells()
    low = {
        (c["method"], c["length_s"]): c["no_match_rate"]
        for c in report.summary
        if c["take"] == "low"
    }
    assert cells[2][2] == f"{100 * low['sequence', 3]:.1f}"
    assert cells[2][4] == f"{100 * low['vote', 3]:.1f}"
    assert cells[2][2] != cells[2][4]  # the numbers changed with the measure


def test_page_shows_a_previous_report(qtbot, window, world, tmp_path):
    _, db, session = world
    settings = RealWorldSettings(lengths_s=(2, 4), takes=("high",), methods=("vote",))
    folder, (result,) = evaluate_session(TaskState(), session, database=db, settings=settings)
    page = _page(window, session)
    assert page.view is None
    assert page.previous.currentData() == str(folder)  # the newest first
    assert page.previous.currentText().endswith("(latest)")
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.show_button.click()
    assert page.view is not None and page.view.folder == folder
    cells = page.table_cells()
    assert cells[:2] == [["query", "queries", "high"], ["", "", "majority vote"]]
    assert cells[2] == ["2 s", "36", f"{100 * known_cell(result, 'high', 'vote', 2).accuracy:.1f}"]
    assert [item.name() for item in page.plot.listDataItems()] == ["high, majority vote"]
    # a folder that is not a report: one line, in red, the shown result kept
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.load_report(tmp_path)
    assert "not a finished evaluation report" in page.message_text
    assert "\n" not in page.message_text and "b00020" in page.message.styleSheet()
    assert page.view.folder == folder


def test_value_range_fits_the_data_with_a_margin():
    def line(*values: float) -> evaluate.Series:
        return evaluate.Series("x", "s", "low", "vote", tuple(range(len(values))), values)

    assert evaluate.value_range([line(60.0, 80.0), line(70.0, 95.0)]) == pytest.approx(
        (60.0 - 2.8, 95.0 + 2.8)
    )
    assert evaluate.value_range([line(100.0, 100.0)]) == (95.0, 105.0)  # at least 10 points
    assert evaluate.value_range([line(0.0, 1.0)]) == (-3.0, 7.0)
    full = evaluate.FULL_RANGE
    assert evaluate.value_range([line(60.0, 80.0)], full=True) == full == (-3.0, 105.0)
    assert evaluate.value_range([]) == full


def test_page_accuracy_axis_fits_the_values_unless_asked_for_0_to_100(qtbot, window, world):
    _, db, session = world
    settings = RealWorldSettings(lengths_s=(3, 5), takes=("low",))  # the clean take: ~100 %
    folder, _ = evaluate_session(TaskState(), session, database=db, settings=settings)
    page = _page(window, session)
    assert not page.full_axis.isChecked()
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.load_report(folder)
    values = [y for item in page.plot.listDataItems() for y in item.getData()[1]]
    assert min(values) >= 85.0
    low, high = page.plot.getViewBox().viewRange()[1]
    assert min(values) - 10 <= low < min(values) and max(values) < high <= 105.0
    assert low > 50  # 0 % is not on the axis
    page.full_axis.setChecked(True)
    assert page.plot.getViewBox().viewRange()[1] == pytest.approx([-3.0, 105.0])
    page.full_axis.setChecked(False)
    assert page.plot.getViewBox().viewRange()[1] == pytest.approx([low, high])


def test_page_errors_are_one_line_in_the_page(qtbot, window, world):
    _, db, session = world
    page = _page(window, session)
    page.set_database(db)
    page.lengths.setText("3 x")
    assert page.evaluate() is None and not page.workers
    assert "'x' is not a number of seconds" in page.message_text
    page.lengths.setText("3")
    page.checkpoint.setText(str(SHIPPED_MODEL))  # not the database's model
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        assert page.evaluate() is not None
    text = page.message_text
    assert str(db) in text and "\n" not in text and "Traceback" not in text
    assert "b00020" in page.message.styleSheet()
    assert page.view is None and not page.panel.isVisible()
    page.checkpoint.clear()
    page.set_library("")
    assert page.evaluate() is None and "choose a library folder" in page.message_text


def test_page_cancel_leaves_no_result(qtbot, window, world, monkeypatch):
    _, db, session = world
    page = _page(window, session)
    page.set_database(db)
    page.lengths.setText("3 5")
    started = threading.Event()
    real = evaluate.evaluate_session

    def slow(task, *args, **kwargs):
        started.set()
        for _ in range(600):  # until cancelled; the real function then stops at its check
            if task.cancelled:
                break
            threading.Event().wait(0.05)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_session", slow)
    before = set(previous_reports(session))
    worker = page.evaluate()
    assert worker is not None and started.wait(10)
    with qtbot.waitSignal(worker.cancelled, timeout=JOB_MS):
        page.panel.cancel()
    qtbot.waitUntil(lambda: not page.workers, timeout=JOB_MS)
    assert page.view is None  # nothing half-done shown
    assert set(previous_reports(session)) == before  # and nothing written
    assert "Cancelled: no report was written" in page.message_text
    assert not window.state.busy and page.evaluate_button.isEnabled()
    assert not page.panel.isVisible()


# --- a query set instead of the open session ----------------------------------------------


@pytest.fixture(scope="module")
def queryset(world):
    """The session exported as a query set (``afp-rig export``), every 3 s and 5 s query."""
    from rig_app.export import write_query_set

    root, _, session = world
    write_query_set([session], root / "set", lengths_s=SETTINGS.lengths_s)
    return root / "set"


def _summary(report) -> list[tuple]:
    keys = ("take", "method", "length_s", "queries", "accuracy", "offset_accuracy")
    return sorted(tuple(c[k] for k in keys) for c in report.summary)


def test_page_evaluates_a_query_set_as_afp_evaluate_does(qtbot, window, world, queryset, tmp_path):
    """No session open: the set's takes, its lengths, its folder; the same numbers as
    ``afp evaluate realworld DB SET``."""
    from PySide6.QtCore import Qt

    from afp_core.cli import main as afp_main

    _, db, _ = world
    page = window.show_page("Evaluate")
    assert (
        "No session open" in page.placeholder_text and "a query set folder" in page.placeholder_text
    )
    assert page.use_session.text() == "the open session (none open)"
    assert page.set_queryset(queryset) == ""
    assert page.using_queryset and page.placeholder_text == "" and page.result_box.isVisibleTo(page)
    assert list(page.take_boxes) == ["low", "high"]
    assert all(box.isChecked() for box in page.take_boxes.values())
    assert page.take_boxes["low"].toolTip().startswith("take low of session session, recorded ")
    assert page.take_boxes["low"].toolTip().endswith(f"{SONGS * (8 + 4)} clips")
    assert not page.allow_unchecked.isVisibleTo(page)  # a set holds trusted takes only
    assert page.lengths.text() == "3 5"  # the set's own lengths
    info = page.queryset_info.text()
    assert info == (
        f"Query set of 1 session (session): 2 takes, {2 * SONGS * 12} clips of 3 5 s, 3 songs; "
        "reports go into its evaluations/ folder."
    )
    assert page.out.placeholderText() == "<query set>/evaluations/<date-time>"
    before = set(previous_reports(queryset))
    assert page.previous.count() == len(before)

    page.set_database(db)
    qtbot.mouseClick(page.evaluate_button, Qt.MouseButton.LeftButton)
    assert page.workers and page.panel.isVisible() and page.panel.cancel_button.isVisible()
    assert not page.use_session.isEnabled() and not page.queryset.isEnabled()
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        pass
    assert page.message_text == "" and page.view is not None
    (folder,) = set(previous_reports(queryset)) - before
    assert page.view.folder == folder and folder.parent == queryset / "evaluations"
    assert page.previous.currentData() == str(folder)
    assert page.previous.currentText() == f"{folder.name} (latest)"
    assert page.notes.text().startswith(f"query set {queryset.name}: ")
    report = read_report(folder)
    assert report.data["session"]["origin"] == "queryset"
    assert report.data["inputs"]["session"] == str(queryset)

    # the command on the same set: the same trials, cell for cell
    out = tmp_path / "cli"
    args = ["evaluate", "realworld", str(db), str(queryset), "--lengths", "3", "5"]
    assert afp_main([*args, "--out", str(out), "--quiet"]) == 0
    command = read_report(out)
    assert _summary(report) == _summary(command) and len(report.trials) == len(command.trials)
    assert page.table_cells()[0] == ["query", "queries", "low", "high", "low", "high"]
    headers, rows = load_evaluation(None, out).table("accuracy")
    assert page.table_cells()[0] == headers and page.table_cells()[2:] == rows
    assert rows[0][1:3] == ["24", "100.0"]  # the clean take: every query

    # a session opened meanwhile does not replace the set; choosing it does
    assert window.open_session(world[2]) is None
    assert (
        page.using_queryset and page.view is not None and list(page.take_boxes) == ["low", "high"]
    )
    assert page.use_session.text() == "the open session (session)"
    page.use_session.setChecked(True)
    assert page.view is None and page.lengths.text() == "1 2 3 4 5 10 15"  # the paper's again
    assert page.allow_unchecked.isVisibleTo(page)
    assert folder not in {Path(page.previous.itemData(i)) for i in range(page.previous.count())}
    page.use_queryset.setChecked(True)
    assert page.lengths.text() == "3 5" and page.previous.currentData() == str(folder)


def test_page_query_set_of_several_sessions_labels_takes_by_session(
    qtbot, window, world, song_library, tmp_path
):
    from rig_app.export import write_query_set

    _, db, session = world
    other = write_session(tmp_path / "other", song_library[:SONGS], {"mid": 10.0}, seed=1)
    both = tmp_path / "both"
    write_query_set([session, other], both, lengths_s=(5,))
    page = window.show_page("Evaluate")
    assert page.set_queryset(both) == ""
    assert list(page.take_boxes) == ["other/mid", "session/low", "session/high"]
    assert page.take_boxes["other/mid"].toolTip().startswith("take mid of session other")
    assert page.queryset_info.text().startswith("Query set of 2 sessions (session, other): 3 takes")
    page.set_database(db)
    page.take_boxes["session/high"].setChecked(False)
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        assert page.evaluate() is not None
    assert page.message_text == "" and page.view is not None
    headers = ["query", "queries", "other/mid", "session/low", "other/mid", "session/low"]
    assert page.table_cells()[0] == headers
    assert page.table_cells()[2][3] == "100.0"  # session/low, offset-consistent, 5 s


def test_page_query_set_errors_are_one_line(
    qtbot, window, world, queryset, song_library, untrained_checkpoint, tmp_path
):
    _, _, session = world
    page = window.show_page("Evaluate")

    def refused(folder: Path, says: str) -> None:
        error = page.set_queryset(folder)
        assert says in error and "\n" not in error, error
        assert page.queryset_info.text() == error and "b00020" in page.queryset_info.styleSheet()
        assert page.using_queryset and page.queryset_session is None
        assert "Choose a query set folder above" in page.placeholder_text
        assert not page.take_boxes and page.evaluate() is None and not page.workers

    refused(tmp_path / "nowhere", "no such folder")
    refused(tmp_path, "not a query set folder (no queryset.json); make one with `afp-rig export`")
    refused(session, "a session, not a query set: evaluate it as the open session")
    broken = tmp_path / "broken"
    shutil.copytree(queryset, broken, ignore=shutil.ignore_patterns("evaluations"))
    (broken / "queries.csv").unlink()
    refused(broken, "queries.csv: no such file (the query set is incomplete)")
    (broken / "queryset.json").write_text("{not json")
    refused(broken, "queryset.json")

    # songs the database lacks: said in one line before any query is identified
    other_db = build_db(tmp_path / "otherdb", song_library[SONGS:], untrained_checkpoint, False)
    assert page.set_queryset(queryset) == "" and page.placeholder_text == ""
    reports = set(previous_reports(queryset))
    page.set_database(other_db)
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        assert page.evaluate() is not None
    text = page.message_text
    assert f"{SONGS} of the query set's {SONGS} songs are not in the database" in text
    assert str(other_db) in text and "\n" not in text and "b00020" in page.message.styleSheet()
    assert page.view is None and set(previous_reports(queryset)) == reports


def test_read_only_query_set_asks_for_a_report_folder(
    qtbot, window, world, queryset, tmp_path, monkeypatch
):
    _, db, _ = world
    real = evaluate.folder_writable
    monkeypatch.setattr(
        evaluate,
        "folder_writable",
        lambda folder: not Path(folder).absolute().is_relative_to(queryset) and real(folder),
    )
    # without the page: refused before any work, in one line
    progress = Progress()
    with pytest.raises(ConfigError) as error:
        evaluate_session(progress.task, queryset, database=db, settings=SETTINGS)
    assert "cannot be written (read-only)" in str(error.value)
    assert "choose a folder for the report" in str(error.value) and progress.reports == []
    with pytest.raises(ConfigError, match="cannot be written"):
        evaluate_session(TaskState(), queryset, database=db, out=queryset / "evaluations" / "x")
    # a library's database goes beside the report folder then
    homes: list[Path] = []

    def index_then_plan(task, session, library, checkpoint, settings, device, notes, home):
        homes.append(home)
        raise Cancelled()

    monkeypatch.setattr(evaluate, "_index_then_plan", index_then_plan)
    with pytest.raises(Cancelled):
        evaluate_session(TaskState(), queryset, library=tmp_path, out=tmp_path / "r" / "1")
    assert homes == [tmp_path / "r"]

    page = window.show_page("Evaluate")
    assert page.set_queryset(queryset) == ""
    assert page.queryset_info.text().endswith(
        "the folder is read-only: choose a folder for the report below."
    )
    assert (
        page.out.placeholderText() == "the query set is read-only: choose a folder for the report"
    )
    assert "beside the report folder" in page.library.placeholderText()
    page.set_database(db)
    assert page.evaluate() is None and not page.workers
    assert "the query set is read-only: choose a folder for the report" in page.message_text
    assert "\n" not in page.message_text
    out = tmp_path / "reports" / "first"
    page.out.setText(str(out))
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        assert page.evaluate() is not None
    assert page.message_text == "" and page.view is not None and page.view.folder == out
    assert not (queryset / "evaluations" / out.name).exists()
    # listed with the set's own reports while the app runs
    assert page.previous.currentData() == str(out)


def test_page_cancel_on_a_query_set_leaves_no_result(qtbot, window, world, queryset, monkeypatch):
    _, db, _ = world
    page = window.show_page("Evaluate")
    assert page.set_queryset(queryset) == ""
    page.set_database(db)
    started = threading.Event()
    real = evaluate.evaluate_session

    def slow(task, *args, **kwargs):
        started.set()
        for _ in range(600):
            if task.cancelled:
                break
            threading.Event().wait(0.05)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_session", slow)
    before = set(previous_reports(queryset))
    worker = page.evaluate()
    assert worker is not None and started.wait(10)
    with qtbot.waitSignal(worker.cancelled, timeout=JOB_MS):
        page.panel.cancel()
    qtbot.waitUntil(lambda: not page.workers, timeout=JOB_MS)
    assert page.view is None and set(previous_reports(queryset)) == before
    assert "Cancelled: no report was written" in page.message_text
    assert page.evaluate_button.isEnabled() and page.queryset.isEnabled()
