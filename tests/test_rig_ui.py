"""The rig app offscreen: workers, and each page doing its real job through them."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("PySide6")

from afp_core.errors import AfpError
from afp_core.tasks import TaskState
from rig_app import jobs
from rig_app.jobs import ProgramOptions, add_session_songs, build_session_program
from rig_app.program import synthesize_song
from rig_app.session import Session
from rig_app.ui.main_window import MainWindow, find_binding_problem
from rig_app.ui.workers import TaskPanel, Worker
from tests.rig_fixtures import write_killed_take

pytest_plugins = ["tests.rig_fixtures"]

RATE = 16000
JOB_MS = 60_000


def _write_library(folder: Path, seconds: float = 3.0) -> Path:
    """Three short songs ('Artist - Title.wav'), one quiet with loud hits, and a bad file."""
    folder.mkdir(parents=True)
    for index, title in enumerate(("Alpha", "Beta", "Gamma")):
        audio = synthesize_song(seconds, RATE, seed=index)
        if title == "Gamma":  # normalising it would clip: its gain must be lowered
            audio = 0.1 * audio
            audio[RATE // 2 :: RATE] = 0.3
        sf.write(folder / f"Band {index} - {title}.wav", audio, RATE)
    (folder / "broken.wav").write_text("not audio at all\n")
    return folder


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return _write_library(tmp_path / "library")


@pytest.fixture
def window(qtbot) -> Iterator[MainWindow]:
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 760)
    window.show()
    yield window
    for page in window.pages:
        page.cancel_jobs()
        qtbot.waitUntil(lambda page=page: not page.workers, timeout=JOB_MS)


def _session_with_songs(folder: Path, library: Path) -> Session:
    session = Session.create(folder)
    results = add_session_songs(TaskState(), session, [library], min_duration_s=1.0)
    assert sum(r.ok for r in results) == 3
    return session


# --- workers ------------------------------------------------------------------------------


def test_this_pyside6_build_can_run_the_app():
    assert find_binding_problem() is None


def _count_to(task: TaskState, n: int) -> int:
    task.set_total(n, "counting")
    for i in range(n):
        task.check_cancelled()
        task.advance(1, f"at {i + 1}")
    return n


def test_worker_reports_progress_then_its_result(qtbot):
    worker = Worker(_count_to, 5)
    progress: list[tuple[float, float, str]] = []
    worker.progress.connect(lambda *args: progress.append(args))
    with (
        qtbot.waitSignal(worker.finished, timeout=JOB_MS) as result,
        qtbot.waitSignal(worker.done, timeout=JOB_MS),
    ):
        worker.start()
    assert result.args == [5]
    assert progress[-1] == (5.0, 5.0, "at 5")


def _fail(task: TaskState, exc: Exception) -> None:
    raise exc


def test_worker_turns_errors_into_one_line_and_logs_bugs(qtbot, caplog):
    worker = Worker(_fail, AfpError("song.wav: not audio\n(details)"))
    with qtbot.waitSignal(worker.errored, timeout=JOB_MS) as blocker:
        worker.start()
    assert blocker.args == ["song.wav: not audio (details)"]

    worker = Worker(_fail, ValueError("bad\nvalue"))
    with (
        caplog.at_level(logging.ERROR, logger="rig_app.ui.workers"),
        qtbot.waitSignal(worker.errored, timeout=JOB_MS) as blocker,
    ):
        worker.start()
    assert blocker.args == ["unexpected error: ValueError: bad value"]
    assert "Traceback" in caplog.text

    caplog.clear()
    full = OSError(errno.ENOSPC, "No space left on device", "/data/take.wav")
    worker = Worker(_fail, full)
    with qtbot.waitSignal(worker.errored, timeout=JOB_MS) as blocker:
        worker.start()
    (message,) = blocker.args
    assert message.startswith("/data/take.wav: no space left on the disk")
    assert "Traceback" not in caplog.text


def _wait_for_cancel(task: TaskState, started: threading.Event) -> str:
    started.set()
    while True:
        task.check_cancelled()
        threading.Event().wait(0.01)


def test_cancel_ends_a_worker_with_the_cancelled_signal(qtbot):
    started = threading.Event()
    worker = Worker(_wait_for_cancel, started)
    panel = TaskPanel()
    qtbot.addWidget(panel)
    panel.bind(worker)
    finished: list[object] = []
    worker.finished.connect(finished.append)
    with qtbot.waitSignal(worker.cancelled, timeout=JOB_MS):
        worker.start()
        assert started.wait(10)
        panel.cancel_button.click()
    qtbot.waitUntil(lambda: panel.worker is None)
    assert not finished
    assert "cancelled" in panel.message.text()
    assert not panel.cancel_button.isVisible()


def test_task_panel_shows_only_while_working_or_to_say_what_failed(qtbot):
    panel = TaskPanel()
    qtbot.addWidget(panel)
    assert panel.isHidden()  # no job: no empty row
    worker = Worker(_count_to, 5)
    panel.bind(worker)
    assert not panel.isHidden()
    with qtbot.waitSignal(worker.done, timeout=JOB_MS):
        worker.start()
    assert panel.isHidden() and panel.message.text() == ""  # the page shows the result
    worker = Worker(_fail, AfpError("song.wav: not audio"))
    panel.bind(worker)
    with qtbot.waitSignal(worker.done, timeout=JOB_MS):
        worker.start()
    assert not panel.isHidden() and panel.message.text() == "song.wav: not audio"


# --- window and pages ---------------------------------------------------------------------


def test_every_page_builds_and_shows(window, qtbot, tmp_path):
    for title in ("Songs", "Program", "Record"):
        page = window.show_page(title)
        assert page.isVisible()
        assert window.stack.currentWidget() is page
    qtbot.waitUntil(lambda: not window.record_page.workers, timeout=JOB_MS)
    assert "No session" in window.folder_label.text()
    assert not window.songs_page.add_files_button.isEnabled()

    error = window.open_session(tmp_path / "nowhere")
    assert error is not None and "not a session folder" in error
    assert window.new_session(tmp_path / "s1") is None
    assert "s1" in window.folder_label.text()
    assert window.songs_page.add_files_button.isEnabled()
    assert "already exists" in window.new_session(tmp_path / "s1")


def test_songs_page_adds_files_in_a_worker_and_reports_each_item(window, qtbot, library):
    assert window.new_session(library.parent / "session") is None
    page = window.songs_page
    page.min_duration.setValue(1.0)
    again = library / "Band 1 - Beta.wav"
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        worker = page.add_items([str(library), str(again)])
        assert worker is not None
    assert page.table.rowCount() == 3
    titles = sorted(page.table.item(row, 0).text() for row in range(3))
    assert titles == ["Alpha", "Beta", "Gamma"]
    assert page.table.item(0, 1).text().startswith("Band")
    lines = [page.results.item(i).text() for i in range(page.results.count())]
    assert sum(line.startswith("added:") for line in lines) == 3
    failed = [line for line in lines if line.startswith("failed:")]
    assert len(failed) == 1 and "broken.wav" in failed[0] and "\n" not in failed[0]
    assert any(line.startswith("duplicate:") and "Beta" in line for line in lines)
    assert "3 added, 1 duplicate(s), 1 failed" in page.results_title.text()
    assert len(Session.load(window.state.session.folder).songs) == 3
    assert page.add_files_button.isEnabled()


def test_program_page_builds_in_a_worker_and_shows_the_summary(window, qtbot, library, tmp_path):
    session = _session_with_songs(tmp_path / "session", library)
    noise = tmp_path / "noise.wav"
    sf.write(noise, 0.1 * np.random.default_rng(0).standard_normal(2 * RATE), RATE)
    assert window.open_session(session.folder) is None
    page = window.show_page("Program")
    page.min_song.setValue(1.0)
    page.add_noise_files([noise])
    page.noise_level.setValue(-6.0)
    assert page.options().noise_files == (noise,)
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.build()
    view = page.view
    assert view is not None and view.marker_count == 4 and view.has_noise
    assert page.facts["Markers"].text().startswith("4 sweeps")
    assert page.facts["Songs"].text().startswith("3")
    assert "gain lowered" in page.notes.text()
    assert page.table.rowCount() == 3
    assert page.table.item(0, 3).text() != "—"  # loudness before
    assert page.overview.has_data
    stored = Session.load(session.folder)
    assert stored.program is not None and stored.program["noise_file"] == "program/noise.wav"
    assert all(song.loudness_after is not None for song in stored.songs)
    songs_page = window.show_page("Songs")
    assert songs_page.table.item(0, 4).text().endswith("LUFS")

    other = MainWindow()  # opening the session again shows the stored program
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.program_page.job_done, timeout=JOB_MS):
        assert other.open_session(session.folder) is None
    assert other.program_page.view is not None
    assert other.program_page.view.marker_count == 4


def test_program_build_cancelled_midway_writes_nothing(
    window, qtbot, library, tmp_path, monkeypatch
):
    session = _session_with_songs(tmp_path / "session", library)
    entered, release = threading.Event(), threading.Event()
    real_load = jobs.load_audio

    def slow_load(path, rate):
        entered.set()
        release.wait(10)
        return real_load(path, rate)

    monkeypatch.setattr(jobs, "load_audio", slow_load)
    assert window.open_session(session.folder) is None
    page = window.show_page("Program")
    page.min_song.setValue(1.0)
    worker = page.build()
    assert worker is not None
    assert entered.wait(10)
    with qtbot.waitSignal(worker.cancelled, timeout=JOB_MS):
        page.panel.cancel_button.click()
        release.set()
    qtbot.waitUntil(lambda: not page.workers, timeout=JOB_MS)
    assert page.view is None
    assert not (session.folder / "program").exists()
    assert Session.load(session.folder).program is None
    assert page.build_button.isEnabled()


def test_record_page_records_aligns_and_stores_a_take(
    virtual_devices, window, qtbot, library, tmp_path
):
    session = Session.create(tmp_path / "session")
    short = _write_library(tmp_path / "short", seconds=1.5)
    add_session_songs(TaskState(), session, [short], min_duration_s=1.0)
    noise = tmp_path / "noise.wav"
    sf.write(noise, 0.1 * np.random.default_rng(0).standard_normal(2 * RATE), RATE)
    options = ProgramOptions(gap_s=0.5, min_song_s=1.0, noise_files=(noise,), noise_level_db=-10)
    build_session_program(TaskState(), session, options)
    assert window.open_session(session.folder) is None
    page = window.show_page("Record")
    qtbot.waitUntil(lambda: page.mic_in.count() > 0 and not page.workers, timeout=JOB_MS)
    assert page.music_out.currentData() == virtual_devices.music_out
    assert page.noise_out.currentData() == virtual_devices.noise_out
    assert page.mic_in.currentData() == virtual_devices.mic_in
    page.lead_in.setValue(0.5)
    page.tail.setValue(1.0)
    page.rows["mid"].radio.setChecked(True)
    page.rows["mid"].distance.setValue(1.25)
    page.rows["mid"].notes.setText("test room")
    levels: list[float] = []
    page.timer.timeout.connect(lambda: levels.append(page.meter.level_db))

    assert page.record() is not None
    assert page.stop_button.isEnabled() and not page.record_button.isEnabled()
    qtbot.waitUntil(lambda: not page.workers, timeout=JOB_MS)
    assert page.last_alignment is not None, (page.take_message.text(), page.result_message.text())
    assert page.result_fields["Quality"].text() == "ok"
    assert page.result_fields["Drift"].text().endswith("ppm")
    assert page.anchors.rowCount() == 4
    assert "finished" in page.progress.format()
    assert page.xruns.text() == "0 xruns"
    assert max(levels) > -60.0  # the meter followed the microphone while recording
    status = page.rows["mid"].status.text()
    assert ", aligned, drift " in status and status.endswith(" ppm: ok"), status
    take = Session.load(session.folder).take("mid")
    assert take.alignment is not None and take.alignment["ok"]
    assert take.speaker_distance_m == 1.25 and take.notes == "test room"
    assert take.devices["noise_out"] == virtual_devices.noise_out
    assert take.aligned_file is not None and (session.folder / take.aligned_file).is_file()
    assert page.record_button.isEnabled()

    first = page.last_alignment
    assert page.align_button.isEnabled()
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.align_button.click()
    assert page.last_alignment is not first and page.last_alignment.ok
    assert Session.load(session.folder).take("mid").recorded_at == take.recorded_at


def test_record_page_without_a_program_says_what_to_do(window, tmp_path):
    assert window.new_session(tmp_path / "session") is None
    page = window.show_page("Record")
    assert "Build the program first" in page.hint.text()
    assert not page.record_button.isEnabled()
    page.noise_out.setCurrentIndex(0)
    assert page.settings() is None or page.settings().noise_out is None
    assert page.rows["low"].radio.isChecked()
    assert page.rows["high"].status.text() == "not recorded"


def test_opening_a_session_with_a_killed_take_offers_to_recover_it(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QApplication

    session = Session.create(tmp_path / "session")
    audio = synthesize_song(3.0, RATE, seed=0)
    write_killed_take(session.folder / "takes" / "low.raw.wav", audio, RATE, RATE, "low")
    assert not window.recover_bar.isVisible()
    assert window.open_session(session.folder) is None
    assert window.recover_bar.isVisible() and QApplication.activeModalWidget() is None
    assert "Take low was recorded but is not in the session" in window.recover_label.text()
    page = window.show_page("Record")
    assert page.rows["low"].status.text() == "not recorded"

    qtbot.waitUntil(window.recover_button.isEnabled, timeout=JOB_MS)  # the page lists devices
    window.recover_button.click()
    message = window.statusBar().currentMessage
    qtbot.waitUntil(lambda: message().startswith("Recovered take low (0:03.0)"), timeout=JOB_MS)
    assert not window.recover_bar.isVisible()
    assert Session.load(session.folder).take("low").notes.startswith("recovered after")
    assert page.rows["low"].status.text() != "not recorded"
    window.open_session(session.folder)  # nothing left to offer
    assert not window.recover_bar.isVisible()


XVFB = shutil.which("Xvfb")


@pytest.mark.skipif(
    XVFB is None, reason="Xvfb is not installed (scripts/install_system_packages.sh)"
)
def test_the_window_opens_on_a_real_x_display(tmp_path):
    """Qt's xcb platform on a virtual X server (not offscreen): the libraries it loads are
    all there and the window maps; a screenshot of the display shows it."""
    assert XVFB is not None  # or skipped
    display = ":97"
    server = subprocess.Popen(
        [XVFB, display, "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        script = (
            "import sys\n"
            "from PySide6.QtWidgets import QApplication\n"
            "from rig_app.ui.main_window import MainWindow, find_display_problem\n"
            "assert find_display_problem() is None, find_display_problem()\n"
            "app = QApplication(sys.argv[:1])\n"
            "assert app.platformName() == 'xcb', app.platformName()\n"
            "window = MainWindow()\n"
            "window.show()\n"
            "for _ in range(50):\n"
            "    app.processEvents()\n"
            "assert window.isVisible() and window.windowHandle().isExposed()\n"
            "shot = app.primaryScreen().grabWindow(0)\n"
            "assert shot.save(sys.argv[1])\n"
            "print('exposed', shot.width(), shot.height())\n"
        )
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        for _ in range(50):  # the server needs a moment to listen
            if Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
                break
            time.sleep(0.1)
        shot = tmp_path / "screen.png"
        result = subprocess.run(
            [sys.executable, "-c", script, str(shot)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "exposed 1280 900" in result.stdout
        assert shot.stat().st_size > 10_000  # a drawn window, not a blank screen
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_missing_x11_library_is_named_with_its_package(monkeypatch):
    from rig_app.ui import main_window

    real_run = subprocess.run

    def ldd_without_icccm(args, **kwargs):
        result = real_run(args, **kwargs)
        lines = [
            "\tlibxcb-icccm.so.4 => not found" if "libxcb-icccm" in line else line
            for line in result.stdout.splitlines()
        ]
        return subprocess.CompletedProcess(args, 0, "\n".join(lines), "")

    # Mocked: a missing system library cannot be arranged on a test machine that has it.
    monkeypatch.setattr(main_window.subprocess, "run", ldd_without_icccm)
    problem = main_window.find_display_problem({"DISPLAY": ":0"})
    assert problem is not None and "libxcb-icccm.so.4" in problem
    assert "apt-get install libxcb-icccm4" in problem and "\n" not in problem
    assert main_window.find_display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert main_window._debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert main_window._debian_package("libX11-xcb.so.1") == "libx11-xcb1"
