"""The fused rule: a neural and a landmark database of one library answering together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afp_core.cli import main
from afp_core.errors import ConfigError, DatabaseError
from afp_core.fusion import METHOD, FusedRecogniser
from afp_core.landmark import LandmarkRecogniser
from afp_core.query import load_query
from afp_core.recogniser import NeuralRecogniser, open_recogniser
from afp_core.search import Candidate, Match
from tests.test_cli import write_excerpt


def neural_recogniser(db: Path) -> NeuralRecogniser:
    recogniser = open_recogniser(db)
    assert isinstance(recogniser, NeuralRecogniser)
    return recogniser


def landmark_recogniser(db: Path) -> LandmarkRecogniser:
    recogniser = open_recogniser(db)
    assert isinstance(recogniser, LandmarkRecogniser)
    return recogniser


@pytest.fixture(scope="module")
def databases(tmp_path_factory, song_library, untrained_checkpoint) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fusion")
    library = str(song_library[0].parent)
    neural, landmark = root / "neural", root / "landmark"
    assert (
        main(["index", str(neural), library, "--model", str(untrained_checkpoint), "--quiet"]) == 0
    )
    assert main(["index", str(landmark), library, "--landmark", "--quiet"]) == 0
    return neural, landmark


@pytest.fixture(scope="module")
def fused(databases) -> FusedRecogniser:
    neural, landmark = databases
    return FusedRecogniser(neural_recogniser(neural), landmark_recogniser(landmark))


def test_both_methods_agreeing_outweigh_either(fused, tmp_path) -> None:
    query = write_excerpt(tmp_path / "q.wav", 2, 6.0, 5, None)
    audio = load_query(query, fused.sample_rate)
    analysis = fused.analyse(audio)
    match = fused.identify(analysis, 0.0, 5.0, METHOD)
    assert match.song is not None and match.song.title == "song2"
    assert abs(match.offset_s - 6.0) <= 0.5
    neural = fused.neural.identify(analysis.neural, 0.0, 5.0, "sequence")
    landmark = fused.landmark.identify(analysis.landmark, 0.0, 5.0, "landmark")
    assert neural.song.title == landmark.song.title == "song2"
    # the fused score of a song both name is the sum of their scaled scores
    alone_n = fused.combine(neural, Match(None, None, 0.0, "landmark", []), 5.0)
    alone_l = fused.combine(Match(None, None, 0.0, "sequence", []), landmark, 5.0)
    assert match.score == pytest.approx(alone_n.score + alone_l.score)
    assert match.score >= fused.threshold(METHOD, 5.0)
    # left out of both databases, the song is not answered
    song_id = match.song.id
    without = fused.identify(analysis, 0.0, 5.0, METHOD, exclude_song=song_id)
    assert without.song is None or without.song.id != song_id


def test_a_sure_method_beats_an_unsure_one(fused) -> None:
    songs = fused.neural.songs()
    a, b = songs[0], songs[1]
    lm_b = next(s for s in fused.landmark.songs() if s.checksum == b.checksum)
    threshold = fused.landmark.threshold("landmark", 3.0)
    neural = Match(a, 1.0, 0.5, "sequence", [Candidate(a, 1.0, 0.5)])
    landmark = Match(lm_b, 2.0, 4 * threshold, "landmark", [Candidate(lm_b, 2.0, 4 * threshold)])
    match = fused.combine(neural, landmark, 3.0)
    assert match.song.id == b.id and match.offset_s == 2.0
    assert [c.song.id for c in match.candidates][:2] == [b.id, a.id]


def test_fused_identify_and_evaluate_from_the_command_line(databases, tmp_path, capsys) -> None:
    neural, landmark = databases
    query = write_excerpt(tmp_path / "q.wav", 4, 3.0, 4, None)
    args = ["identify", str(neural), str(query), "--json", "--method", "fused"]
    assert main([*args, "--landmark-db", str(landmark)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["song"] == "song4" and record["method"] == "fused"
    assert record["threshold"] == 1.0 and record["best"]["song"] == "song4"
    assert main(args) == 1
    assert "--method fused and --landmark-db go together" in capsys.readouterr().err
    swapped = ["identify", str(neural), str(query), "--method", "fused", "--landmark-db"]
    assert main([*swapped, str(neural)]) == 1
    assert "must be a landmark database" in capsys.readouterr().err


def test_databases_of_different_libraries_are_refused(databases, tmp_path, song_library) -> None:
    neural, _ = databases
    other = tmp_path / "other"
    assert main(["index", str(other), str(song_library[0]), "--landmark", "--quiet"]) == 0
    # one shared song is enough to pair; none is refused
    assert FusedRecogniser(neural_recogniser(neural), landmark_recogniser(other))
    empty = tmp_path / "empty"
    lone = tmp_path / "lone.wav"
    write_excerpt(lone, 0, 0.0, 12, 20.0)
    assert main(["index", str(empty), str(lone), "--landmark", "--quiet"]) == 0
    with pytest.raises(DatabaseError, match="holds none of the songs"):
        FusedRecogniser(neural_recogniser(neural), landmark_recogniser(empty))
    pair = FusedRecogniser(neural_recogniser(neural), landmark_recogniser(other))
    with pytest.raises(ConfigError, match="method"):
        pair.threshold("vote", 1.0)
