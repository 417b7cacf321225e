"""The paper authors' layout: song lists, importing the published material, exporting a
recorded session in it and importing that back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from afp_core.audio import load_audio
from afp_core.errors import Cancelled
from afp_core.protocols.realworld import RealWorldSettings, run_realworld_protocol
from afp_core.recogniser import open_recogniser
from afp_core.shipped import SHIPPED_MODEL
from afp_core.tasks import TaskState
from rig_app.align import align_take
from rig_app.authors import export_authors_layout, import_authors_layout, read_song_list
from rig_app.jobs import record_or_simulate_takes
from rig_app.program import ProgramSong, build_noise_program, build_program, synthesize_song
from rig_app.room import VirtualRoom
from rig_app.selection import Selection
from rig_app.session import Session, SessionError
from tests.conftest import synthesise_song
from tests.test_protocol_realworld import build_db
from tests.test_session import RATE, make_take


def write_song(path: Path, seconds: float, rate: int, seed: int) -> np.ndarray:
    audio = synthesize_song(seconds, rate, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate)
    return audio


def test_song_list_variants(tmp_path: Path) -> None:
    for name in ("a.wav", "b.flac", "sub/c.wav"):
        write_song(tmp_path / name, 0.5, RATE, seed=len(name))
    (tmp_path / "header.csv").write_text("index,file,title\n1,a.wav,First\n2,b.flac,Second\n")
    rows = read_song_list(tmp_path / "header.csv")
    assert [(r.file.name, r.title) for r in rows] == [("a.wav", "First"), ("b.flac", "Second")]

    (tmp_path / "plain.csv").write_text("a.wav\n\n# a comment\nc.wav\n")
    rows = read_song_list(tmp_path / "plain.csv")
    assert [r.file for r in rows] == [tmp_path / "a.wav", tmp_path / "sub" / "c.wav"]
    assert [r.title for r in rows] == ["a", "c"]

    (tmp_path / "semi.csv").write_text("Artist;Title;Path\nX;Song A;a.wav\nY;Song B;b.flac\n")
    rows = read_song_list(tmp_path / "semi.csv")
    assert [(r.artist, r.title, r.file.name) for r in rows] == [
        ("X", "Song A", "a.wav"),
        ("Y", "Song B", "b.flac"),
    ]

    (tmp_path / "tabs.tsv").write_text("b.flac\tsecond song\na.wav\tfirst song\n")
    assert [r.file.name for r in read_song_list(tmp_path / "tabs.tsv")] == ["b.flac", "a.wav"]

    (tmp_path / "missing.csv").write_text("file\na.wav\nnothere.wav\n")
    with pytest.raises(SessionError, match=r"line 3: song file 'nothere\.wav' not found"):
        read_song_list(tmp_path / "missing.csv")


def test_import_authors_layout(tmp_path: Path) -> None:
    rate = 16000
    layout = tmp_path / "authors"
    songs = [
        write_song(layout / "songs" / f"{i:02d} track.wav", 10.0, rate, seed=20 + i)
        for i in range(3)
    ]
    (layout / "test_songs.csv").write_text(
        "song,file\n" + "".join(f"Track {i},{i:02d} track.wav\n" for i in range(3))
    )
    program = np.concatenate(songs)
    sf.write(layout / "low.wav", make_take(program, rate, -50.0, 0.4, seed=2), rate)
    high = make_take(program, rate, 80.0, 0.4, seed=3)
    sf.write(layout / "high.wav", soxr.resample(high, rate, 22050), 22050)

    session = import_authors_layout(
        layout,
        tmp_path / "imported",
        sample_rate=rate,
        min_song_s=1.0,
        segment_s=6.0,
        edge_margin_s=1.0,
        checkpoints=2,
    )
    assert session.origin == "authors-layout" and "mid" in session.notes
    assert [s.title for s in session.songs] == ["Track 0", "Track 1", "Track 2"]
    assert session.program is not None and session.program["markers"] == []
    assert session.program["noise_file"] is None
    loaded = Session.load(tmp_path / "imported")
    assert [t.label for t in loaded.takes] == ["low", "high"]
    for label, ppm, take_rate in (("low", -50.0, rate), ("high", 80.0, 22050)):
        take = loaded.take(label)
        assert take.recording_rate == take_rate
        assert Path(take.raw_file) == (layout / f"{label}.wav").resolve()
        alignment = take.load_alignment()
        assert alignment is not None and alignment.method == "markerless"
        assert abs(alignment.offset_s - 0.4) < 0.5e-3
        assert abs(alignment.drift_ppm - ppm) < 3.0
        second = take.ground_truth[1]
        assert second["program_start_s"] == pytest.approx(10.0)
        assert second["take_start_s"] == pytest.approx(0.4 + 10.0 * (1 + ppm * 1e-6), abs=1e-3)
        aligned = sf.read(loaded.resolve(str(take.aligned_file)))[0]
        assert len(aligned) == len(program)


def test_import_needs_recordings_and_one_list(tmp_path: Path) -> None:
    layout = tmp_path / "empty"
    write_song(layout / "a.wav", 2.0, RATE, seed=1)
    (layout / "list.csv").write_text("a.wav\n")
    with pytest.raises(SessionError, match="none of the recordings"):
        import_authors_layout(layout, tmp_path / "out", min_song_s=1.0)
    (layout / "other.csv").write_text("a.wav\n")
    with pytest.raises(SessionError, match="expected one CSV song list"):
        import_authors_layout(layout, tmp_path / "out", min_song_s=1.0)


# Names in the published list's style: "Artist - Title.wav", apostrophes, several dashes.
PUBLISHED_NAMES = (
    "Band - Don't Stop.wav",
    "Singer - It's Late.wav",
    "Ensemble - Spring - Allegro.wav",
)


def test_import_the_published_layout_through_a_linked_song_folder(tmp_path: Path) -> None:
    rate = 16000
    elsewhere = tmp_path / "elsewhere" / "songs"
    songs = [
        write_song(elsewhere / name, 10.0, rate, seed=40 + i)
        for i, name in enumerate(PUBLISHED_NAMES)
    ]
    (elsewhere / "up").symlink_to("..", target_is_directory=True)  # a loop the search must end
    layout = tmp_path / "published"
    layout.mkdir()
    (layout / "true_songs").symlink_to(elsewhere, target_is_directory=True)
    (layout / "recording_songs.csv").write_text("\n".join(PUBLISHED_NAMES))  # no final newline
    (layout / "notes.csv").write_text("not,the,song,list\n")  # recording_songs.csv wins
    program = np.concatenate(songs)
    (layout / "recordings").mkdir()
    sf.write(layout / "recordings" / "low_t.wav", make_take(program, rate, 30.0, 0.3, seed=4), rate)
    sf.write(
        layout / "recordings" / "high_t.wav", make_take(program, rate, -60.0, 0.6, seed=5), rate
    )

    session = import_authors_layout(
        layout,
        tmp_path / "imported",
        sample_rate=rate,
        min_song_s=1.0,
        segment_s=6.0,
        edge_margin_s=1.0,
        checkpoints=2,
    )
    assert [s.title for s in session.songs] == [Path(name).stem for name in PUBLISHED_NAMES]
    # the songs are read through the link, and the session names them where they were found
    assert [Path(s.file) for s in session.songs] == [
        layout / "true_songs" / name for name in PUBLISHED_NAMES
    ]
    assert (
        session.notes
        == f"imported from {layout / 'recording_songs.csv'}; recordings not found: mid"
    )
    loaded = Session.load(session.folder)
    assert [t.label for t in loaded.takes] == ["low", "high"]
    for label, ppm, delay in (("low", 30.0, 0.3), ("high", -60.0, 0.6)):
        take = loaded.take(label)
        assert Path(take.raw_file) == (layout / "recordings" / f"{label}_t.wav").resolve()
        alignment = take.load_alignment()
        assert alignment is not None and alignment.ok
        assert abs(alignment.offset_s - delay) < 0.5e-3
        assert abs(alignment.drift_ppm - ppm) < 3.0
        assert [g["program_start_s"] for g in take.ground_truth] == pytest.approx([0.0, 10.0, 20.0])


def test_the_published_name_is_found_beside_the_plain_one_and_never_a_song(tmp_path: Path) -> None:
    rate = 16000
    layout = tmp_path / "layout"
    # a song that happens to be called "mid": a song, not the mid take
    songs = [
        write_song(layout / name, 10.0, rate, seed=60 + i)
        for i, name in enumerate(("a.wav", "mid.wav"))
    ]
    (layout / "songs.csv").write_text("a.wav\nmid.wav\n")
    program = np.concatenate(songs)
    (layout / "takes").mkdir()
    sf.write(layout / "takes" / "high_t.flac", make_take(program, rate, 0.0, 0.2, seed=6), rate)
    with pytest.raises(SessionError) as refused:
        import_authors_layout(layout / "songs.csv", tmp_path / "nothing", labels=("mid",))
    assert str(refused.value) == (f"{layout}: none of the recordings (mid_t.wav or mid.wav) found")
    session = import_authors_layout(
        layout / "songs.csv",
        tmp_path / "imported",
        sample_rate=rate,
        min_song_s=1.0,
        segment_s=4.0,
        edge_margin_s=1.0,
        checkpoints=2,
    )
    assert [t.label for t in session.takes] == ["high"]
    assert session.notes.endswith("recordings not found: low, mid")


def recorded_session(
    folder: Path, titles: list[str], labels: list[str], align: bool = True
) -> Session:
    """A session of short synthetic songs with a take per label, each the program on a
    drifting clock with a little noise, aligned by its markers (the rig's own path)."""
    songs = [ProgramSong(synthesize_song(3.0, RATE, seed=70 + i), t) for i, t in enumerate(titles)]
    program = build_program(songs, RATE, min_song_s=1.0)
    session = Session.create(folder)
    session.set_program(program)
    for number, label in enumerate(labels):
        take = make_take(program.music, RATE, 20.0 * number, 0.2, seed=number)
        alignment = align_take(take, RATE, program, name=label) if align else None
        session.add_take(label, take, RATE, alignment=alignment)
    return session


def read_wav(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return audio


def test_export_writes_the_layout_and_honours_the_selection(tmp_path: Path) -> None:
    titles = ["Band - Don't Stop", "AC/DC: Live", "band - don't stop"]
    session = recorded_session(tmp_path / "session", titles, ["low", "mid", "high"])
    selection = Selection.from_session(session)
    selection.exclude("mid", None, "microphone knocked over")
    selection.exclude("high", 1, "door slammed at 0:02")
    selection.store(session)
    task = TaskState()

    out = export_authors_layout([session.folder], tmp_path / "export", task=task)

    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "NOTES.txt",
        "recording_songs.csv",
        "recordings",
        "true_songs",
    ]
    # song 1 is left out of every recording: the layout has one song list
    names = ["Band - Don't Stop.wav", "band - don't stop (2).wav"]
    assert (out / "recording_songs.csv").read_text() == "".join(f"{n}\n" for n in names)
    assert sorted(p.name for p in (out / "true_songs").iterdir()) == sorted(names)
    assert sorted(p.name for p in (out / "recordings").iterdir()) == ["high_t.wav", "low_t.wav"]
    program = session.load_program()
    kept = [program.songs[0], program.songs[2]]
    for name, slot in zip(names, kept, strict=True):
        assert np.array_equal(
            read_wav(out / "true_songs" / name), program.music[slot.start : slot.end]
        )
    for label in ("low", "high"):
        aligned = read_wav(session.resolve(str(session.take(label).aligned_file)))
        joined = np.concatenate([aligned[slot.start : slot.end] for slot in kept])
        assert np.array_equal(read_wav(out / "recordings" / f"{label}_t.wav"), joined)
    notes = (out / "NOTES.txt").read_text()
    assert "- take 'mid': microphone knocked over" in notes
    assert "- song 1 'AC/DC: Live', from every recording: door slammed at 0:02 (take high)" in notes
    assert "low_t.wav (take 'low': ok)" in notes
    assert task.done == task.total == 4 and task.unit == "files"
    # the layout reads back: the song list with its titles, the recordings by their names
    rows = read_song_list(out / "recording_songs.csv")
    assert [r.title for r in rows] == ["Band - Don't Stop", "band - don't stop (2)"]


def test_export_refuses_before_writing_anything(tmp_path: Path) -> None:
    session = recorded_session(tmp_path / "s", ["a", "b"], ["low"])
    recorded_session(tmp_path / "raw", ["a", "b"], ["low"], align=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "file").write_text("")

    def refused(sessions: list[Path], out: Path) -> str:
        with pytest.raises(SessionError) as caught:
            export_authors_layout(sessions, out)
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        return str(caught.value)

    assert refused([session.folder], tmp_path / "full") == (
        f"{tmp_path / 'full'}: folder is not empty (export into a new or empty one)"
    )
    assert (
        refused([session.folder], tmp_path / "file")
        == f"{tmp_path / 'file'}: exists and is not a folder"
    )
    assert refused([session.folder, tmp_path / "raw"], tmp_path / "out") == (
        f"{tmp_path / 'raw' / 'session.json'}: take 'low' is not aligned "
        f"(afp-rig align {tmp_path / 'raw'} --label low)"
    )
    selection = Selection.from_session(session)
    selection.exclude("low", None, "too quiet")
    selection.store(session)
    assert refused([session.folder], tmp_path / "out") == (
        f"{session.path}: no take to export (every take is left out by the selection)"
    )
    # an unaligned take left out by the selection is no obstacle
    raw = Session.load(tmp_path / "raw")
    Selection([], []).store(raw)
    selection = Selection.from_session(raw)
    selection.exclude("low", None, "never aligned")
    selection.store(raw)
    assert refused([raw.folder], tmp_path / "out").endswith(
        "(every take is left out by the selection)"
    )
    # cancelled: nothing is left, not even the temporary folder
    task = TaskState()
    task.cancel()
    Selection([], []).store(session)
    with pytest.raises(Cancelled):
        export_authors_layout([session.folder], tmp_path / "out", task=task)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_several_sessions_each_in_a_folder_of_its_own(tmp_path: Path) -> None:
    first = recorded_session(tmp_path / "a" / "session", ["one", "two"], ["low"])
    second = recorded_session(tmp_path / "b" / "session", ["three", "four"], ["high"])
    (tmp_path / "export").mkdir()  # an empty folder is fine
    out = export_authors_layout([first.folder, second.folder], tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["session", "session-2"]
    assert (out / "session" / "recording_songs.csv").read_text() == "one.wav\ntwo.wav\n"
    assert (out / "session-2" / "recording_songs.csv").read_text() == "three.wav\nfour.wav\n"
    assert [p.name for p in (out / "session-2" / "recordings").iterdir()] == ["high_t.wav"]
    assert "Nothing was left out." in (out / "session" / "NOTES.txt").read_text()


@pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model")
def test_a_session_exported_and_imported_back_evaluates_the_same(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    paths = []
    for i in range(3):
        paths.append(library / f"song{i}.wav")
        sf.write(paths[-1], synthesise_song(300 + i, 8.0), 22050)
    # the trained model: the untrained one's 1 s votes flip under any sub-sample change
    db = build_db(tmp_path / "db", paths, SHIPPED_MODEL, calibrate=False)
    # 16 kHz, as the room's tests: the import's resampling low-passes near the program's
    # Nyquist frequency, which then lies above the 4 kHz the model hears
    rate = 16000
    songs = [ProgramSong(load_audio(p, rate), p.stem, source=str(p)) for p in paths]
    program = build_program(songs, rate, min_song_s=1.0)
    noise = build_noise_program(
        [synthesize_song(3.0, rate, seed=9)],
        program.samples,
        rate,
        -10.0,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    session = Session.create(tmp_path / "recorded")
    session.set_program(program, noise)
    made = record_or_simulate_takes(
        TaskState(), session, VirtualRoom(), ["low", "high"], live=False
    )
    assert all(take.alignment is not None and take.alignment.ok for take in made)

    layout = export_authors_layout([session.folder], tmp_path / "layout")
    imported = import_authors_layout(
        layout,
        tmp_path / "imported",
        sample_rate=rate,
        min_song_s=1.0,
        segment_s=6.0,
        edge_margin_s=1.0,
        checkpoints=2,
    )

    assert [s.title for s in imported.songs] == ["song0", "song1", "song2"]
    new_program = imported.load_program()
    # the same songs, sample for sample, now back to back from the first sample
    lengths = [slot.end - slot.start for slot in program.songs]
    assert [slot.end - slot.start for slot in new_program.songs] == lengths
    assert [slot.start for slot in new_program.songs] == [0, *np.cumsum(lengths[:-1])]
    for old, new in zip(program.songs, new_program.songs, strict=True):
        assert np.array_equal(
            new_program.music[new.start : new.end], program.music[old.start : old.end]
        )
    assert [t.label for t in imported.takes] == ["low", "high"]
    for take in imported.takes:
        assert Path(take.raw_file) == (layout / "recordings" / f"{take.label}_t.wav").resolve()
        alignment = take.load_alignment()
        assert alignment is not None and alignment.ok
        # each recording starts with song 1 on the program's clock (correlating through
        # the room's filters moves the estimate by a fraction of a millisecond)
        assert abs(alignment.offset_s) < 1e-3 and abs(alignment.drift_ppm) < 1.0
        assert [g["take_start_s"] for g in take.ground_truth] == pytest.approx(
            [slot.start_s for slot in new_program.songs], abs=1e-3
        )

    settings = RealWorldSettings(lengths_s=(1, 2, 3), threshold=None, impostors=False)
    before = run_realworld_protocol(open_recogniser(db), session.folder, settings)
    after = run_realworld_protocol(open_recogniser(db), imported.folder, settings)
    assert after.takes == before.takes == ("low", "high")
    for label in before.takes:
        for method in before.methods:
            for length in settings.lengths_s:
                old_cell = before.cell(label, method, length)
                new_cell = after.cell(label, method, length)
                assert old_cell is not None and new_cell is not None
                assert new_cell.queries == old_cell.queries > 0
                assert new_cell.accuracy == old_cell.accuracy, (label, method, length)
