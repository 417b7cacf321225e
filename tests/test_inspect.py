"""Inspect: average spectra, peak survival and excerpt spectrograms of aligned takes, and
the page that shows them (offscreen, on a real session folder)."""

from __future__ import annotations

import html
import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from scipy import signal

from afp_core.audio import load_audio, probe_audio
from afp_core.errors import Cancelled
from afp_core.tasks import TaskState
from rig_app import inspect
from rig_app.align import align_take
from rig_app.inspect import (
    InspectError,
    compute_excerpt,
    compute_spectra,
    inspect_targets,
    match_peaks,
    read_span,
    smooth_octave,
)
from rig_app.program import ProgramSong, build_program, synthesize_song
from rig_app.session import Session

pytest.importorskip("PySide6")

RATE = 16000
CUTOFF_HZ = 2000.0
SONG_S = 8.0
JOB_MS = 60_000


def _through(x: np.ndarray, label: str, rng: np.random.Generator) -> np.ndarray:
    """The program as a take heard it: a clean copy, low-passed, or buried in noise."""
    if label == "lowpass":  # zero phase: the filter adds no delay the alignment must see
        sos = signal.butter(8, CUTOFF_HZ, "low", fs=RATE, output="sos")
        y = 0.5 * signal.sosfiltfilt(sos, x)
    elif label == "noisy":
        y = x + rng.standard_normal(len(x)) * np.std(x)  # 0 dB SNR
    else:
        y = x.astype(np.float64)
    return y + rng.standard_normal(len(x)) * 1e-4


def _session(folder: Path, labels: tuple[str, ...] = ("copy", "lowpass", "noisy")) -> Session:
    songs = [ProgramSong(synthesize_song(SONG_S, RATE, seed=i), f"song {i}") for i in range(2)]
    program = build_program(songs, RATE, min_song_s=1.0)
    session = Session.create(folder)
    session.set_program(program)
    rng = np.random.default_rng(7)
    for label in labels:
        heard = _through(program.music.astype(np.float64), label, rng)
        take = np.concatenate([np.zeros(RATE // 4), heard, np.zeros(RATE // 2)])
        alignment = align_take(take.astype(np.float32), RATE, program, name=label)
        session.add_take(label, take.astype(np.float32), RATE, alignment=alignment)
    return session


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    """A program of two songs and three aligned takes: copy, 2 kHz low-pass, 0 dB noise."""
    return _session(tmp_path_factory.mktemp("inspect") / "session")


# --- GUI-free ----------------------------------------------------------------------------


def test_targets_say_what_is_missing(tmp_path: Path, session: Session) -> None:
    empty = Session.create(tmp_path / "empty")
    with pytest.raises(InspectError, match=r"no program yet.*Program page"):
        inspect_targets(empty)
    unaligned = _session(tmp_path / "unaligned", labels=())
    unaligned.add_take("low", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(InspectError, match=r"no aligned take yet \(low not aligned\)"):
        inspect_targets(unaligned)

    targets = inspect_targets(session)
    assert [t.label for t in targets.takes] == ["copy", "lowpass", "noisy"]
    assert [s.title for s in targets.songs] == ["song 0", "song 1"]
    assert targets.songs[0].duration_s == pytest.approx(SONG_S)
    assert not any(t.flagged for t in targets.takes)


def test_read_span_is_the_slice_of_the_whole_file(session: Session) -> None:
    path = inspect_targets(session).takes[1].path
    whole = load_audio(path, 8000)
    info = probe_audio(path)
    for start, stop in ((0, 4000), (12345, 30000), (len(whole) - 1000, len(whole) + 500)):
        part = read_span(info, start, stop, 8000)
        expected = whole[start:stop]
        assert len(part) == len(expected)
        np.testing.assert_allclose(part, expected, atol=2e-3)


def test_low_pass_take_falls_off_above_its_cutoff(session: Session) -> None:
    view = compute_spectra(TaskState(), session)
    assert view.sample_rate == RATE and view.takes == ["copy", "lowpass", "noisy"]
    assert [scope.name for scope in view.scopes] == ["All songs", "song 0", "song 1"]
    assert view.overall.seconds == pytest.approx(2 * SONG_S)
    assert view.overall.freqs_hz[-1] == pytest.approx(RATE / 2)
    for scope in view.scopes:
        low_band = scope.band_mean_db("lowpass", 300.0, 1500.0)
        high_band = scope.band_mean_db("lowpass", 3000.0, 6000.0)
        assert high_band < low_band - 20.0, scope.name  # the channel's coloration
        # an untouched copy is flat: no coloration anywhere that matters
        assert abs(scope.band_mean_db("copy", 100.0, 300.0)) < 1.0
        assert abs(scope.band_mean_db("copy", 300.0, 3000.0)) < 0.5
        assert abs(scope.gain_db["copy"]) < 0.5
        # level-matched: the take's mean in 300-3000 Hz equals the clean program's there
        inside = (scope.freqs_hz >= 300.0) & (scope.freqs_hz <= 3000.0)
        for label in view.takes:
            assert np.mean(scope.coloration_db(label)[inside]) == pytest.approx(0.0, abs=1e-6)


def test_peaks_survive_a_clean_copy_better_than_noise(session: Session) -> None:
    view = compute_spectra(TaskState(), session)
    overall = view.overall.peaks
    assert overall["copy"].clean > 100
    assert overall["copy"].share > 0.85
    assert overall["noisy"].share < overall["copy"].share - 0.3
    assert overall["lowpass"].share < overall["copy"].share - 0.2
    for label in view.takes:  # the songs add up to the whole
        songs = [scope.peaks[label] for scope in view.scopes[1:]]
        assert sum(p.clean for p in songs) == overall[label].clean
        assert sum(p.kept for p in songs) == overall[label].kept


def test_chunks_give_what_one_pass_gives(session: Session) -> None:
    """Streaming 2 s at a time must not change the spectra nor (much) the peak counts."""
    whole = compute_spectra(TaskState(), session, chunk_s=60.0)
    chunked = compute_spectra(TaskState(), session, chunk_s=2.0)
    for a, b in zip(whole.scopes, chunked.scopes, strict=True):
        np.testing.assert_allclose(a.clean_db, b.clean_db, atol=0.01)
        for label in whole.takes:
            np.testing.assert_allclose(a.takes_db[label], b.takes_db[label], atol=0.01)
        for label in whole.takes:
            assert b.peaks[label].clean == pytest.approx(a.peaks[label].clean, rel=0.05)
            assert b.peaks[label].share == pytest.approx(a.peaks[label].share, abs=0.05)


def test_what_the_model_hears_at_8_khz(session: Session) -> None:
    view = compute_spectra(TaskState(), session, 8000)
    assert view.overall.freqs_hz[-1] == pytest.approx(4000.0)
    assert view.n_fft == 1024
    excerpt = compute_excerpt(TaskState(), session, "lowpass", 0, 1.0, 3.0, 8000)
    assert excerpt.clean.freqs_hz[-1] == pytest.approx(4000.0)
    assert excerpt.sample_rate == 8000


def test_spectra_stop_when_cancelled(session: Session) -> None:
    reports: list[float] = []

    def cancel_on_first_report(done: float, total: float, message: str) -> None:
        reports.append(done)
        task.cancel()

    task = TaskState(cancel_on_first_report)
    with pytest.raises(Cancelled):
        compute_spectra(task, session, chunk_s=2.0)
    assert reports and reports[-1] < 2 * SONG_S


def test_excerpt_spectrograms_and_their_peaks(session: Session) -> None:
    copy = compute_excerpt(TaskState(), session, "copy", 1, 2.0, 4.0)
    assert copy.song == "song 1" and copy.length_s == pytest.approx(4.0)
    assert copy.clean.db.shape == copy.take_spec.db.shape
    assert copy.clean.times_s[0] >= 2.0 and copy.clean.times_s[-1] <= 6.0
    times, freqs = copy.peak_points("clean")
    assert len(times) == copy.count.clean > 20
    assert times.min() >= 2.0 and freqs.max() <= RATE / 2
    assert copy.count.share > 0.85
    noisy = compute_excerpt(TaskState(), session, "noisy", 1, 2.0, 4.0)
    assert noisy.count.clean == copy.count.clean  # same clean excerpt
    assert noisy.count.share < copy.count.share - 0.3
    # a low-pass take keeps almost no peak above its cutoff
    lowpass = compute_excerpt(TaskState(), session, "lowpass", 1, 2.0, 4.0)
    _, clean_freqs = lowpass.peak_points("clean")
    high = clean_freqs > 1.5 * CUTOFF_HZ
    assert high.sum() > 5
    assert lowpass.clean_kept[high].mean() < 0.2
    # an excerpt running past the song's end is cut there
    tail = compute_excerpt(TaskState(), session, "copy", 0, SONG_S - 3.0)
    assert tail.length_s == pytest.approx(3.0)


def test_excerpt_errors_are_one_line(session: Session) -> None:
    with pytest.raises(InspectError, match=r"excerpt start 9 s is outside 0-8.0 s"):
        compute_excerpt(TaskState(), session, "copy", 0, 9.0)
    with pytest.raises(InspectError, match="no aligned take labelled 'high'"):
        compute_excerpt(TaskState(), session, "high", 0)
    with pytest.raises(InspectError, match="no song 3"):
        compute_excerpt(TaskState(), session, "copy", 2)


def test_match_peaks_tolerance() -> None:
    clean = (np.array([10, 20, 30]), np.array([5, 5, 40]))
    take = (np.array([12, 25]), np.array([3, 5]))
    kept = match_peaks(clean, take, tolerance=(2, 2))
    assert kept.tolist() == [True, False, False]
    assert match_peaks(clean, take, tolerance=(5, 0)).tolist() == [False, True, False]
    assert match_peaks((np.array([], int), np.array([], int)), take).size == 0
    assert not match_peaks(clean, (np.array([], int), np.array([], int))).any()


def test_smoothing_keeps_a_flat_spectrum_flat() -> None:
    freqs = np.linspace(0, 8000, 1025)
    np.testing.assert_allclose(smooth_octave(freqs, np.full(1025, -30.0)), -30.0, atol=1e-6)
    step = np.where(freqs < 1000, 0.0, -40.0)
    smooth = smooth_octave(freqs, step)
    assert smooth[freqs < 800].max() == pytest.approx(0.0, abs=1e-6)
    assert smooth[freqs > 1200].max() == pytest.approx(-40.0, abs=1e-6)


# --- the page ----------------------------------------------------------------------------


@pytest.fixture
def window(qtbot):
    from rig_app.ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 760)
    window.show()
    yield window
    for page in window.pages:
        page.cancel_jobs()
        qtbot.waitUntil(lambda page=page: not page.workers, timeout=JOB_MS)


def _open(qtbot, window, folder: Path):
    assert window.open_session(folder) is None
    page = window.show_page("Inspect")

    def ready() -> None:
        assert not page.workers and page.spectra is not None and page.excerpt is not None

    qtbot.waitUntil(ready, timeout=JOB_MS)
    return page


def test_page_comes_after_record_and_says_what_to_do(qtbot, window, tmp_path: Path) -> None:
    titles = [page.title for page in window.pages]
    assert titles.index("Inspect") == titles.index("Record") + 1
    page = window.show_page("Inspect")
    assert "No session open" in page.placeholder_text
    assert window.open_session(_session(tmp_path / "no-takes", labels=()).folder) is None
    assert "No aligned take yet" in page.placeholder_text
    assert "Record page" in page.placeholder_text
    assert not page.workers  # nothing to compute


def test_page_computes_in_workers_and_plots(qtbot, window, session: Session) -> None:
    assert window.open_session(session.folder) is None
    page = window.show_page("Inspect")
    assert page.placeholder_text == ""
    assert page.workers  # the work runs in the background, not in show_page
    assert all(worker.is_running or worker.has_ended for worker in page.workers)
    qtbot.waitUntil(
        lambda: not page.workers and page.spectra is not None and page.excerpt is not None,
        timeout=JOB_MS,
    )
    # average spectra: the clean program and each take, over all songs
    curves = page.spectra_plot.listDataItems()
    assert curves[0].name() == "clean program"
    assert len(curves) == 4
    assert all(len(c.getData()[0]) > 100 for c in curves)
    assert page.scope.count() == 3
    assert page.table.rowCount() == 3
    kept = {page.table.item(r, 0).text(): page.table.item(r, 4).text() for r in range(3)}
    assert float(kept["copy"].split()[0]) > 85 > float(kept["noisy"].split()[0]) + 20
    page.scope.setCurrentIndex(2)
    assert page.spectra_plot.listDataItems()[0].getData()[1].size > 0
    page.difference.setChecked(True)
    assert page.spectra_plot.listDataItems()[0].name() == "clean (0 dB)"
    # spectrograms of the excerpt, with peaks (of the first take: none is called "high")
    excerpt = page.excerpt
    assert excerpt.take == page.take.currentData() == "copy"
    assert page.clean_view.has_image and page.take_view.has_image
    assert page.clean_view.image.image.shape == excerpt.clean.db.shape
    shown = len(page.clean_view.kept.getData()[0]) + len(page.clean_view.lost.getData()[0])
    assert shown == excerpt.count.clean
    assert len(page.take_view.kept.getData()[0]) == int(excerpt.take_matched.sum())
    page.take.setCurrentIndex(page.take.findData("noisy"))
    qtbot.waitUntil(lambda: not page.workers and page.excerpt.take == "noisy", timeout=JOB_MS)
    lost = int((~page.excerpt.clean_kept).sum())
    assert len(page.clean_view.lost.getData()[0]) == lost > 0.2 * page.excerpt.count.clean


def test_cursor_and_x_range_are_shared(qtbot, window, session: Session) -> None:
    page = _open(qtbot, window, session.folder)
    page.clean_view.cursor.setValue(3.25)
    assert page.cursor_s == (3.25, 3.25)
    page.take_view.cursor.setValue(1.5)  # as when the user drags it
    assert page.cursor_s == (1.5, 1.5)
    assert "1.50 s" in page.cursor_label.text()
    page.take_view.plot.setXRange(2.0, 4.0, padding=0)
    x_range = page.clean_view.plot.getViewBox().viewRange()[0]
    assert x_range == pytest.approx([2.0, 4.0])


def test_controls_choose_the_excerpt(qtbot, window, session: Session) -> None:
    page = _open(qtbot, window, session.folder)
    page.take.setCurrentIndex(page.take.findData("copy"))
    page.song.setCurrentIndex(1)
    page.start.setValue(2.0)
    page.length.setValue(3.0)
    qtbot.waitUntil(
        lambda: (
            not page.workers
            and page.excerpt.take == "copy"
            and page.excerpt.song_index == 1
            and page.excerpt.start_s == 2.0
            and page.excerpt.length_s == pytest.approx(3.0)
        ),
        timeout=JOB_MS,
    )
    assert page.clean_view.plot.getViewBox().viewRange()[0] == pytest.approx([2.0, 5.0])
    assert "song 1, 2.0–5.0 s" in page.excerpt_note.text()
    # what the model hears: both jobs run again at 8 kHz
    page.rate.setCurrentIndex(page.rate.findData(8000))
    qtbot.waitUntil(
        lambda: (
            not page.workers
            and page.spectra.sample_rate == 8000
            and page.excerpt.sample_rate == 8000
        ),
        timeout=JOB_MS,
    )
    assert page.clean_view.image.image.shape[0] == 513  # the landmark method's 1024-point frames


def test_spectra_key_is_a_row_under_the_plot_not_over_the_curves(
    qtbot, window, session: Session
) -> None:
    from PySide6.QtCore import QPoint, QRect

    page = _open(qtbot, window, session.folder)
    assert page.spectra_plot.legend is None  # nothing drawn over the low frequencies
    key = page.spectra_legend
    assert key.isVisible()
    names = [curve.name() for curve in page.spectra_plot.listDataItems()]
    assert names[0] == "clean program" and len(names) == 4
    text = key.text()
    assert all(html.escape(name) in text for name in names)
    assert text.index("clean program") < text.index("copy") < text.index("noisy")

    def rect(widget) -> QRect:
        return QRect(widget.mapTo(page, QPoint(0, 0)), widget.size())

    plot = rect(page.spectra_widget)
    assert not plot.intersects(rect(key)) and rect(key).top() > plot.bottom()
    page.difference.setChecked(True)
    assert "clean (0 dB)" in key.text()


def test_spectrograms_share_one_colour_range(qtbot, window, session: Session) -> None:
    page = _open(qtbot, window, session.folder)
    page.take.setCurrentIndex(page.take.findData("lowpass"))  # 6 dB quieter, no highs
    qtbot.waitUntil(lambda: not page.workers and page.excerpt.take == "lowpass", timeout=JOB_MS)
    excerpt = page.excerpt
    clean_top = float(np.percentile(excerpt.clean.db, 99.5))
    take_top = float(np.percentile(excerpt.take_spec.db, 99.5))
    assert take_top < clean_top - 3
    # by default one range, from the clean program's loudest down 70 dB
    assert page.same_levels.isChecked()
    assert page.clean_view.levels == page.take_view.levels
    assert page.clean_view.levels == pytest.approx((clean_top - 70, clean_top))
    # unticked: each its own range; the clean one does not move
    page.same_levels.setChecked(False)
    assert page.take_view.levels == pytest.approx((take_top - 70, take_top))
    assert page.clean_view.levels == pytest.approx((clean_top - 70, clean_top))
    page.same_levels.setChecked(True)
    assert page.take_view.levels == page.clean_view.levels
    assert excerpt.colour_levels() == (page.clean_view.levels, page.take_view.levels)


def test_export_writes_a_png(qtbot, window, session: Session, tmp_path: Path) -> None:
    from PySide6.QtGui import QImage

    page = _open(qtbot, window, session.folder)
    assert page.export_button.isEnabled()
    path = page.export_png(tmp_path / "figure")
    assert path == tmp_path / "figure.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = QImage(str(path))
    assert image.width() > 600 and image.height() > 400
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, 400, 7)}
    assert len(colours) > 50  # plots, not a blank widget


def test_cancel_stops_the_analysis(qtbot, window, session: Session, monkeypatch) -> None:
    page = _open(qtbot, window, session.folder)
    started = threading.Event()

    def slow(task: TaskState, *args, **kwargs):
        started.set()
        for _ in range(600):  # until cancelled (the real function then stops at its check)
            if task.cancelled:
                break
            threading.Event().wait(0.05)
        return inspect.compute_spectra(task, *args, **kwargs)

    monkeypatch.setattr("rig_app.ui.pages.inspect.compute_spectra", slow)
    before = page.spectra
    worker = page.analyse()
    assert worker is not None and started.wait(10)
    assert page.spectra_panel.cancel_button.isVisible()
    with qtbot.waitSignal(worker.cancelled, timeout=JOB_MS):
        page.spectra_panel.cancel()
    qtbot.waitUntil(lambda: not page.workers, timeout=JOB_MS)
    assert page.spectra is before  # nothing new drawn
    assert "Cancelled" in page.spectra_note.text()
    assert not page.spectra_panel.isVisible()  # the note says it; the panel is for work
    assert not window.state.busy


def test_a_broken_take_is_a_one_line_error(qtbot, window, tmp_path: Path) -> None:
    broken = _session(tmp_path / "broken", labels=("copy",))
    aligned = inspect_targets(broken).takes[0].path
    page = _open(qtbot, window, broken.folder)
    aligned.write_bytes(b"RIFF but not really a wave file")
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.analyse()
    text = page.spectra_note.text()
    assert str(aligned) in text and "\n" not in text and "Traceback" not in text
    assert "b00020" in page.spectra_note.styleSheet()  # shown in red
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.show_excerpt()
    assert str(aligned) in page.excerpt_note.text()
