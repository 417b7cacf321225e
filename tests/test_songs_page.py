"""The Songs page's table and its 'Last addition' box (offscreen)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import soundfile as sf

from rig_app.program import synthesize_song
from rig_app.session import Session

pytest.importorskip("PySide6")

RATE = 16000
JOB_MS = 60_000


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


def _library(folder: Path) -> Path:
    """Two songs deep in folders with long names: a long 'Source' for each."""
    deep = folder / ("a-folder-with-a-long-name-" * 3) / "music library of the rig"
    deep.mkdir(parents=True)
    for index, title in enumerate(("A rather long title for a song", "Beta")):
        audio = synthesize_song(2.0, RATE, seed=index)
        sf.write(deep / f"Band {index} - {title}.wav", audio, RATE)
    return deep


def test_source_column_fills_the_table_and_keeps_the_file_name(qtbot, window, tmp_path):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QHeaderView

    from rig_app.ui.pages.songs import COLUMNS, SOURCE_COLUMN

    page = window.show_page("Songs")
    assert window.new_session(tmp_path / "session") is None
    assert not page.results_box.isVisible()  # nothing added yet: no empty box
    assert not page.panel.isVisible()  # nor an empty progress row
    page.min_duration.setValue(1.0)
    with qtbot.waitSignal(page.job_done, timeout=JOB_MS):
        page.add_items([str(_library(tmp_path / "library"))])
    assert page.table.rowCount() == 2
    assert page.results_box.isVisible()
    assert page.results_title.text().startswith("Last addition: 2 added")
    assert not page.panel.isVisible()  # done: the box says how it went

    header = page.table.horizontalHeader()
    assert COLUMNS[SOURCE_COLUMN] == "Source"
    assert header.sectionResizeMode(SOURCE_COLUMN) == QHeaderView.ResizeMode.Stretch
    # the file name shows: elided in the middle, on one line (not cut after a folder)
    assert page.table.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert not page.table.wordWrap()
    # the columns fill the table exactly: Source is neither cut at the edge nor a sliver
    widths = [header.sectionSize(c) for c in range(len(COLUMNS))]
    assert sum(widths) == page.table.viewport().width()
    assert widths[SOURCE_COLUMN] >= 200
    assert header.sectionViewportPosition(SOURCE_COLUMN) + widths[SOURCE_COLUMN] <= (
        page.table.viewport().width()
    )
    source = page.table.item(0, SOURCE_COLUMN)
    assert source.toolTip() == source.text() and source.text().endswith(".wav")

    # another session: the last addition was not to it
    other = Session.create(tmp_path / "other").folder
    assert window.open_session(other) is None
    assert not page.results_box.isVisible() and page.results.count() == 0
