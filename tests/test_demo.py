"""The README's main job, on a small synthesised library instead of the dev music."""

from __future__ import annotations

import json

import pytest

from afp_core.cli import main
from afp_core.demo import DemoOptions, run_demo_job
from afp_core.errors import AfpError


def test_demo_runs_end_to_end_and_writes_report(tmp_path, song_library, untrained_checkpoint):
    options = DemoOptions(
        library=[song_library[0].parent],
        out=tmp_path / "out",
        held_out=2,
        excerpts=1,
        model=untrained_checkpoint,
        quiet=True,
    )
    report = run_demo_job(options)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["results"] == report["results"]
    assert saved["database"]["songs"] == 4
    clean = report["results"]["sequence"]["clean"]
    assert set(clean) == {"1", "2", "3", "4", "5", "10"}
    assert all(cell["queries"] == 4 for cell in clean.values())
    assert set(report["results"]["vote"]) == {"clean", "15 dB", "10 dB", "5 dB", "0 dB"}
    # two songs kept out, each queried clean and at 5 dB
    assert report["not_in_database"]["sequence"]["10"]["queries"] == 4
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| clean |" in markdown and "| 0 dB |" in markdown and "NOT in the database" in markdown

    # run again: the database is reused, nothing is extracted twice
    again = run_demo_job(options)
    assert again["indexing"]["added"] == 0 and again["indexing"]["already_indexed"] == 4


def test_demo_without_audio_says_what_to_install(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AfpError, match="at least 3 songs"):
        run_demo_job(DemoOptions(library=[empty], out=tmp_path / "out", quiet=True))
    assert main(["demo", "--library", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "afp: error:" in capsys.readouterr().err


def test_install_hint_names_the_packages():
    from afp_core.devdata import INSTALL_HINT

    assert "./dev data" in INSTALL_HINT and "wesnoth-1.16-music" in INSTALL_HINT
