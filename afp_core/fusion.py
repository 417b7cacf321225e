"""Neural and landmark evidence combined into one decision (a third rule, ``fused``).

The two methods fail differently: learned fingerprints keep their similarity where noise
hides most spectral peaks, landmark hashes are exact where the peaks survive and are
nearly never matched by chance. Their scores live on different scales (a mean cosine
similarity, a count of aligned hashes), so each is first put on the scale of its own
calibration for the query's length:

    r = (score - impostor mean) / (threshold - impostor mean)

0 is what a song that is not in the database typically scores, 1 is the "no match"
threshold (about 1 % false matches, ``afp_core.calibration`` and
``LandmarkDB.calibrate_thresholds``). Every song either method proposes gets the sum of
its two r values (a method that did not propose it adds nothing), so two methods that
agree on a song outweigh one that is sure of another. The fused score is the best song's
sum; its offset is the landmark method's where it proposed the song (aligned hashes place
a query to a frame, 16 ms), else the neural one's.

The threshold of the fused rule is ``FUSED_THRESHOLD`` = 1: at least one method at its
own threshold, or both most of the way there. ``afp evaluate`` measures its false-match
rate on impostors like any other rule's. Both databases must hold the same songs (they
are paired by content checksum); a song only one of them holds can only be proposed by
that one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from afp_core.audio import resample, window_count
from afp_core.database import Song
from afp_core.errors import ConfigError, DatabaseError
from afp_core.landmark import LandmarkRecogniser, Landmarks
from afp_core.recogniser import NeuralRecogniser
from afp_core.search import Candidate, Match, stored_impostor_mean, stored_threshold

METHOD = "fused"
FUSED_THRESHOLD = 1.0
NEURAL_RULE = "sequence"


@dataclasses.dataclass(frozen=True)
class FusedAnalysis:
    neural: np.ndarray
    landmark: Landmarks


class FusedRecogniser:
    """A neural database and a landmark database of the same library, answering as one."""

    kind = "fused"
    methods: tuple[str, ...] = (METHOD,)

    def __init__(self, neural: NeuralRecogniser, landmark: LandmarkRecogniser) -> None:
        self.neural = neural
        self.landmark = landmark
        self.sample_rate = neural.sample_rate
        self.hop_s = neural.hop_s
        self.min_query_s = max(neural.min_query_s, landmark.min_query_s)
        by_checksum = {s.checksum: s for s in landmark.songs()}
        self._to_landmark = {
            s.id: by_checksum[s.checksum].id for s in neural.songs() if s.checksum in by_checksum
        }
        self._to_neural = {lm: nn for nn, lm in self._to_landmark.items()}
        if not self._to_landmark:
            raise DatabaseError(
                f"{landmark.db.path}: holds none of the songs of {neural.db.path}; a fused "
                f"rule needs two databases of the same library"
            )
        self._neural_scale(neural.min_query_s)  # says now, not mid-evaluation, if uncalibrated

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "database": str(self.neural.db.path),  # names it in tables: "fused (<neural db>)"
            "landmark_database": str(self.landmark.db.path),
            "neural": self.neural.describe(),
            "landmark": self.landmark.describe(),
            "neural_rule": NEURAL_RULE,
            "threshold": FUSED_THRESHOLD,
            "shared_songs": len(self._to_landmark),
        }

    def songs(self) -> list[Song]:
        return self.neural.songs()

    def analyse(self, audio: np.ndarray) -> FusedAnalysis:
        other = self.landmark.sample_rate
        landmark_audio = audio if other == self.sample_rate else resample(
            audio, self.sample_rate, other
        )  # fmt: skip
        return FusedAnalysis(self.neural.analyse(audio), self.landmark.analyse(landmark_audio))

    def identify(
        self,
        analysis: FusedAnalysis,
        start_s: float,
        length_s: float,
        method: str,
        exclude_song: int | None = None,
    ) -> Match:
        if method != METHOD:
            raise ConfigError(f"method: {method!r} is not one of {', '.join(self.methods)}")
        neural = self.neural.identify(
            analysis.neural, start_s, length_s, NEURAL_RULE, exclude_song=exclude_song
        )
        excluded = None if exclude_song is None else self._to_landmark.get(exclude_song, -1)
        landmark = self.landmark.identify(
            analysis.landmark, start_s, length_s, "landmark", exclude_song=excluded
        )
        return self.combine(neural, landmark, length_s)

    def combine(self, neural: Match, landmark: Match, length_s: float) -> Match:
        """The fused decision from each method's answer to the same query."""
        n_scale = self._neural_scale(length_s)
        l_scale = self._landmark_scale(length_s)
        evidence: dict[int, float] = {}
        offsets: dict[int, float] = {}
        songs: dict[int, Song] = {}
        # the landmark's candidates last, so that their offsets win
        for candidates, scale, to_id in (
            (neural.candidates, n_scale, lambda song_id: song_id),
            (landmark.candidates, l_scale, self._to_neural.get),
        ):
            for c in candidates:
                song_id = to_id(c.song.id)
                if song_id is None:
                    continue
                evidence[song_id] = evidence.get(song_id, 0.0) + _relative(c.score, *scale)
                offsets[song_id] = c.offset_s
                songs.setdefault(song_id, c.song)
        if not evidence:
            return Match(None, None, 0.0, METHOD, [])
        neural_songs = {s.id: s for s in self.neural.songs()}
        ranked = sorted(evidence, key=lambda i: (-evidence[i], i))
        candidates = [
            Candidate(song=neural_songs.get(i, songs[i]), offset_s=offsets[i], score=evidence[i])
            for i in ranked
        ][:5]
        top = candidates[0]
        return Match(top.song, top.offset_s, top.score, METHOD, candidates)

    def threshold(self, method: str, length_s: float) -> float | None:
        if method != METHOD:
            raise ConfigError(f"method: {method!r} is not one of {', '.join(self.methods)}")
        return FUSED_THRESHOLD

    def _neural_scale(self, length_s: float) -> tuple[float, float]:
        db, audio = self.neural.db, self.neural.model.spec.audio
        n = max(1, window_count(round(length_s * audio.sample_rate), audio.window, audio.hop))
        threshold = stored_threshold(db, NEURAL_RULE, n, k=self.neural.k)
        mean = stored_impostor_mean(db, NEURAL_RULE, n, k=self.neural.k)
        if threshold is None or mean is None:
            raise DatabaseError(
                f"{db.path}: a fused rule needs the neural database calibrated on impostor "
                f"excerpts (afp index calibrates after adding songs)"
            )
        return mean, threshold

    def _landmark_scale(self, length_s: float) -> tuple[float, float]:
        db = self.landmark.db
        return db.stored_impostor_mean(length_s), float(db.stored_threshold(length_s))


def _relative(score: float, mean: float, threshold: float) -> float:
    """``score`` on the scale where the impostor mean is 0 and the threshold is 1."""
    return (score - mean) / max(threshold - mean, 1e-9)
