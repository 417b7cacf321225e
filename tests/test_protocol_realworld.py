"""The real-world protocol on a real session folder with known truth.

The session is written by the rig's own code (``rig_app.session``): a program of
synthesised songs with markers, takes "recorded" as the program delayed by 0.25 s (the
clean take) or with white noise over the songs (the noisy take, silent around the
markers as the rig's noise program is), each aligned by ``align_take``. The database
holds the same songs, fingerprinted by an untrained (seeded) model: it finds clean audio
on the 0.5 s window grid and little else, so a clean aligned take scores near 100 % and
the noisy one far lower: exactly what the protocol must measure, offsets included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from afp_core.audio import load_audio
from afp_core.database import FingerprintDB, Song
from afp_core.errors import AfpError, Cancelled, ConfigError, DatabaseError
from afp_core.fileutil import file_sha256
from afp_core.indexing import describe_model, extract_file_vectors, load_database_model
from afp_core.protocols.realworld import (
    RealWorldCell,
    RealWorldResult,
    RealWorldSettings,
    check_realworld_settings,
    map_session_songs,
    plan_realworld,
    run_realworld_comparison,
    run_realworld_protocol,
)
from afp_core.protocols.report import read_report, write_realworld_report
from afp_core.protocols.sessions import (
    SessionReadError,
    SessionSong,
    partial_take_note,
    read_session,
)
from afp_core.recogniser import NeuralRecogniser, open_recogniser
from afp_core.search import calibrate_threshold
from afp_core.tasks import TaskState
from rig_app.align import align_take
from rig_app.program import ProgramSong, build_program
from rig_app.session import Session

RATE = 8000


def known_cell(result: RealWorldResult, take: str, method: str, length_s: float) -> RealWorldCell:
    """``result.cell(...)``, which must be there."""
    cell = result.cell(take, method, length_s)
    assert cell is not None, (take, method, length_s)
    return cell


def build_db(folder: Path, paths: list[Path], checkpoint_path: Path, calibrate: bool = True):
    """A database of ``paths`` as ``afp index`` builds it, calibrated for 3 s queries only
    (the full calibration of every query length takes longer than this whole file)."""
    from afp_core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    db = FingerprintDB.create(
        folder, describe_model(checkpoint), dim=128, checkpoint=checkpoint_path
    )
    for path in paths:
        vectors = extract_file_vectors(checkpoint.model, path)
        db.stage_song(path.stem, "", str(path.resolve()), 24.0, file_sha256(path), vectors)
    db.commit()
    if calibrate:
        for method in ("sequence", "vote"):
            calibrate_threshold(db, 5, method=method, trials=40)
    return folder


def write_session(
    folder: Path,
    song_paths: list[Path],
    takes: dict[str, float | None],
    *,
    align: bool = True,
    seed: int = 0,
    rate: int = RATE,
) -> Path:
    """A session of ``song_paths`` at ``rate`` with one take per label: clean (None) or
    white noise at that SNR over the songs. Each take is the program delayed by 0.25 s,
    then aligned."""
    songs = [ProgramSong(load_audio(p, rate), p.stem, source=str(p)) for p in song_paths]
    program = build_program(songs, rate, min_song_s=1.0)
    session = Session.create(folder)
    session.set_program(program)
    rng = np.random.default_rng(seed)
    inside = np.zeros(program.samples)
    for slot in program.songs:
        inside[slot.start : slot.end] = 1.0
    for label, snr in takes.items():
        take = program.music.astype(np.float64)
        if snr is not None:
            power = np.mean(take[inside > 0] ** 2)
            noise = rng.standard_normal(len(take)) * np.sqrt(power / 10 ** (snr / 10))
            take = take + inside * noise
        recording = np.concatenate([np.zeros(rate // 4), take, np.zeros(rate // 2)])
        recording = recording.astype(np.float32)
        if align:
            alignment = align_take(recording, rate, program, name=label)
            assert alignment.ok
            session.add_take(label, recording, rate, alignment=alignment)
        else:
            session.add_take(label, take.astype(np.float32), rate)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, song_library, untrained_checkpoint):
    root = tmp_path_factory.mktemp("realworld")
    db = build_db(root / "db", song_library[:4], untrained_checkpoint)
    session = write_session(root / "session", song_library[:4], {"low": None, "high": 5.0})
    return db, session


@pytest.fixture(scope="module")
def result(world):
    db, session = world
    return run_realworld_protocol(open_recogniser(db), session)


def test_clean_take_near_perfect_noisy_take_lower_offsets_right(result):
    assert result.takes == ("low", "high")  # paper order, whatever the session's order
    assert result.methods == ("sequence", "vote")
    # four 24 s songs: 24 one-second queries each, 1 fifteen-second query each
    assert known_cell(result, "low", "sequence", 1).queries == 4 * 24
    assert known_cell(result, "low", "vote", 15).queries == 4
    for method in ("sequence", "vote"):
        for length in (3, 4, 5, 10, 15):
            cell = known_cell(result, "low", method, length)
            assert cell.accuracy >= 0.9, (method, length, cell)
            assert cell.offset_accuracy >= 0.9, (method, length, cell)
        low = np.mean(
            [c.accuracy for c in result.summary if c.take == "low" and c.method == method]
        )
        high = np.mean(
            [c.accuracy for c in result.summary if c.take == "high" and c.method == method]
        )
        assert high < low - 0.3, (method, low, high)
    # every hit on the clean take has the query's true offset, queries back to back
    clean = [t for t in result.trials if t.take == "low" and t.method == "sequence"]
    assert all(t.offset_s == pytest.approx(t.true_offset_s) for t in clean if t.song_hit)
    starts = [t.start_s for t in clean if t.song == "song0" and t.length_s == 5]
    assert starts == [0.0, 5.0, 10.0, 15.0]
    # the threshold was calibrated for 3 s and longer: shorter queries are never rejected
    # by it (only when there is no candidate at all); longer ones may be
    assert all(t.threshold is None for t in result.trials if t.length_s < 3)
    assert all(t.threshold is not None for t in result.trials if t.length_s >= 3)
    for cell in result.summary:
        assert cell.offset_accuracy <= cell.accuracy
        assert cell.accuracy_with_rejection <= cell.accuracy
        assert 0 <= cell.no_match_rate <= 1


def test_report_written_and_read_back(result, tmp_path):
    out = write_realworld_report(tmp_path / "report", result, extra={"command": "test"})
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png",
        "report.json",
        "table.md",
        "tradeoff.png",
        "trials.csv",
    ]
    assert "At 1 % false matches" in (out / "table.md").read_text()
    report = read_report(out)
    assert report.protocol == "realworld"
    assert len(report.trials) == len(result.trials)
    first = report.trials[0]
    assert isinstance(first["song_hit"], bool) and isinstance(first["length_s"], float)
    assert first["song"] == result.trials[0].song
    assert report.data["command"] == "test"
    assert report.data["settings"]["lengths_s"] == [1, 2, 3, 4, 5, 10, 15]
    assert report.data["systems"][0]["recogniser"]["checkpoint_sha256"]
    assert set(report.data["versions"]) >= {"afp", "torch", "faiss", "numpy"}
    assert [t["label"] for t in report.data["session"]["takes"]] == ["low", "high"]
    assert report.data["session"]["takes"][0]["alignment"]["ok"] is True
    cell = next(c for c in report.summary if c["take"] == "low" and c["length_s"] == 3)
    assert cell["accuracy"] == known_cell(result, "low", cell["method"], 3).accuracy
    assert report.figure is not None and report.figure.read_bytes()[:4] == b"\x89PNG"
    table = report.table
    assert "| query | queries | sequence low | sequence high | vote low | vote high |" in table
    row = next(line for line in table.splitlines() if line.startswith("| 3 s |"))
    assert row.startswith("| 3 s | 32 | 100.0 |")
    # no temporary files left behind
    assert not list(out.glob(".*"))


def test_comparison_shares_one_reading_and_labels_systems(world):
    db, session = world
    settings = RealWorldSettings(lengths_s=(5,), takes=("low",), methods=("sequence",))
    first, second = run_realworld_comparison(
        [open_recogniser(db), open_recogniser(db)], session, settings, systems=["a", "b"]
    )
    assert (first.system, second.system) == ("a", "b")
    assert [c.accuracy for c in first.summary] == [c.accuracy for c in second.summary]
    assert known_cell(first, "low", "sequence", 5).queries == 16


def test_unaligned_take_is_refused_before_any_work(world, song_library, tmp_path):
    db, _ = world
    session = write_session(tmp_path / "s", song_library[:4], {"low": None}, align=False)
    recogniser = open_recogniser(db)

    def fail(done, total, message):
        raise AssertionError("work started")

    with pytest.raises(SessionReadError) as error:
        run_realworld_protocol(recogniser, session, task=TaskState(fail))
    message = str(error.value)
    assert "\n" not in message and "take 'low' is not aligned" in message
    assert f"afp-rig align {session} --label low" in message

    # explicitly allowed: the raw take is read as starting with the program (it does here)
    settings = RealWorldSettings(lengths_s=(3,), allow_unchecked=True)
    result = run_realworld_protocol(recogniser, session, settings)
    assert known_cell(result, "low", "sequence", 3).accuracy == 1.0
    assert any("authors' assumption" in note for note in result.notes)


def copy_session_with(session: Path, folder: Path, edit) -> Path:
    """A session.json in ``folder`` naming ``session``'s files, changed by ``edit(data)``."""
    folder.mkdir()
    data = json.loads((session / "session.json").read_text())
    for take in data["takes"]:
        for key in ("raw_file", "aligned_file"):
            take[key] = str((session / take[key]).resolve())
    data["program"]["program_file"] = str((session / data["program"]["program_file"]).resolve())
    edit(data)
    (folder / "session.json").write_text(json.dumps(data))
    return folder


def test_failed_alignment_is_refused(world, tmp_path):
    _, session = world

    def fail_high(data):
        data["takes"][1]["alignment"]["ok"] = False

    copy = copy_session_with(session, tmp_path / "copy", fail_high)
    with pytest.raises(SessionReadError, match="'high' is flagged: the alignment failed its"):
        plan_realworld([open_recogniser(world[0])], copy)
    # choosing only the good take is fine
    plan = plan_realworld([open_recogniser(world[0])], copy, RealWorldSettings(takes=("low",)))
    assert [s.take.label for s in plan.sources] == ["low"]


def test_take_with_xruns_is_flagged_and_evaluated_only_when_asked(world, tmp_path):
    # the same rule as the rig's views: audio lost while recording makes a take untrusted
    _, session = world
    copy = copy_session_with(
        session, tmp_path / "copy", lambda data: data["takes"][0].update(xruns=3)
    )
    with pytest.raises(SessionReadError, match="'low' is flagged: 3 buffer under/overruns"):
        plan_realworld([open_recogniser(world[0])], copy)
    allowed = RealWorldSettings(allow_unchecked=True)
    plan = plan_realworld([open_recogniser(world[0])], copy, allowed)
    assert [s.take.label for s in plan.sources] == ["low", "high"]
    assert plan.notes == [
        "take 'low': flagged: 3 buffer under/overruns while recording (audio lost or "
        "repeated); evaluated as asked"
    ]


def test_partial_take_is_flagged_and_evaluated_on_the_songs_it_holds(world, song_library, tmp_path):
    # a recording killed during the third song: the raw file holds a prefix of the take
    db, _ = world
    folder = write_session(tmp_path / "s", song_library[:4], {"low": None})
    session = Session.load(folder)
    program = session.load_program()
    raw = load_audio(session.resolve(session.take("low").raw_file), RATE)
    stop_s = 0.25 + program.songs[2].start_s + 5.0
    alignment = align_take(raw[: round(stop_s * RATE)], RATE, program, name="low")
    missing = [song.title for song in program.songs[2:]]
    assert alignment.missing_songs == missing
    assert [song.title for song in alignment.songs] == [s.title for s in program.songs[:2]]
    session.add_take("low", raw[: round(stop_s * RATE)], RATE, alignment=alignment, replace=True)

    recogniser = open_recogniser(db)
    with pytest.raises(SessionReadError, match="'low' is flagged: partial take: 2 songs missing"):
        plan_realworld([recogniser], folder)
    settings = RealWorldSettings(lengths_s=(5,), methods=("sequence",), allow_unchecked=True)
    result = run_realworld_protocol(recogniser, folder, settings)
    assert {t.song for t in result.trials} == {s.title for s in program.songs[:2]}
    assert known_cell(result, "low", "sequence", 5).queries == 2 * 4
    assert known_cell(result, "low", "sequence", 5).accuracy == 1.0
    assert any(partial_take_note(missing) in note for note in result.notes)


def test_song_missing_from_database_is_named_before_work(world, song_library, tmp_path):
    db, _ = world
    session = write_session(tmp_path / "s", song_library[3:5], {"low": None}, align=False)
    with pytest.raises(DatabaseError) as error:
        plan_realworld([open_recogniser(db)], session, RealWorldSettings(allow_unchecked=True))
    message = str(error.value)
    assert "\n" not in message
    assert "1 of the session's 2 songs are not in the database: 'song4'" in message
    assert f"afp index {db} {song_library[4]}" in message


def test_songs_map_by_checksum_then_title(song_library):
    catalogue = [
        Song(7, "Song0", "", "x", 24.0, file_sha256(song_library[0]), 0, 47, "indexed", ""),
        Song(
            8, "Another Title", "", "y", 24.0, file_sha256(song_library[1]), 47, 47, "indexed", ""
        ),
    ]

    def session_song(index: int, title: str, file: Path | None) -> SessionSong:
        return SessionSong(index, title, "", "", 0, 8000, RATE, file=file)

    mapped = map_session_songs(
        [session_song(0, "SONG0 ", None), session_song(1, "whatever", song_library[1])],
        catalogue,
        "db",
    )
    assert [(m.song_id, m.matched_by) for m in mapped] == [(7, "title"), (8, "checksum")]
    with pytest.raises(DatabaseError, match="'nope'; index them with: afp index db FILE"):
        map_session_songs([session_song(0, "nope", None)], catalogue, "db")


def test_checkpoint_not_matching_the_database_is_refused(world, tmp_path):
    from afp_core.checkpoint import load_checkpoint, save_checkpoint
    from afp_core.models import build_model
    from afp_core.shipped import UNTRAINED_SPEC

    db, _ = world
    other = save_checkpoint(tmp_path / "other.pt", build_model(UNTRAINED_SPEC, seed=1))
    with pytest.raises(DatabaseError, match="DB was built with model") as error:
        open_recogniser(db, other)
    assert "\n" not in str(error.value)
    database = FingerprintDB.open(db)
    with pytest.raises(DatabaseError, match="DB was built with model"):
        NeuralRecogniser(database, load_checkpoint(other))
    assert NeuralRecogniser(database, load_database_model(database)).kind == "neural"


def test_cancel_stops_between_songs(world):
    db, session = world
    task = TaskState(lambda done, total, msg: task.cancel() if done > 0 else None)
    with pytest.raises(Cancelled):
        run_realworld_protocol(
            open_recogniser(db), session, RealWorldSettings(lengths_s=(5,)), task=task
        )
    assert task.done == pytest.approx(24.0, abs=0.01)  # one song analysed, then stopped


def test_bad_settings_are_refused(world, song_library):
    db, session = world
    recogniser = open_recogniser(db)
    for settings, text in [
        (RealWorldSettings(lengths_s=(1.25,)), "not a multiple of the 0.5 s window hop"),
        (RealWorldSettings(lengths_s=(0.5,)), "shorter than the 1 s"),
        (RealWorldSettings(methods=("landmark",)), "decision rule landmark unknown"),
        (RealWorldSettings(takes=("mid",)), "no take labelled 'mid'"),
    ]:
        with pytest.raises(AfpError, match=text):
            plan_realworld([recogniser], session, settings)
    # the reader: song intervals on the program clock, song files as the session names them
    session_data = read_session(session)
    assert session_data.songs[0].start_s == pytest.approx(9.0)  # lead, marker, 7 s calibration, gap
    assert session_data.songs[0].duration_s == pytest.approx(24.0)
    assert session_data.songs[0].file == song_library[0]


def test_impostors_set_the_operating_point(result):
    """Every query answered again without its song: the impostor scores set a threshold
    that lets 1 % of them through, pooled over the takes."""
    assert all(t.impostor_score is not None for t in result.trials)
    clean = [t for t in result.trials if t.take == "low" and t.method == "sequence"]
    assert np.mean([t.score > t.impostor_score for t in clean]) > 0.95
    for cell in result.summary:
        pooled = [
            t.impostor_score
            for t in result.trials
            if t.method == cell.method and t.length_s == cell.length_s
        ]
        assert np.mean(np.asarray(pooled) >= cell.threshold_at_fmr) <= 0.01
        rows = [
            t
            for t in result.trials
            if (t.take, t.method, t.length_s) == (cell.take, cell.method, cell.length_s)
        ]
        assert cell.rejected_at_fmr == pytest.approx(
            np.mean([t.score < cell.threshold_at_fmr for t in rows])
        )
        assert cell.accuracy_at_fmr <= cell.accuracy
        if cell.false_match_rate_measured is not None:
            assert 0 <= cell.false_match_rate_measured <= 1


def test_false_match_rate_must_be_a_share():
    with pytest.raises(ConfigError, match="false-match rate"):
        check_realworld_settings(RealWorldSettings(false_match_rate=1.5))
