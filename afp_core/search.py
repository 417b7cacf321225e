"""Decide which song a query's window fingerprints come from.

The query is n window vectors; window j starts j hops (``db.query_hop_s``, the model's)
into the query. The database stores ``db.density`` windows per query hop, so query window
j lines up with stored window start + density * j, and stored window p lies
p * ``db.stored_hop_s`` seconds into its song. Each window retrieves its k nearest
database vectors (``SearchConfig.k`` by default). Two decision rules:

- ``search_majority_vote`` (the paper, §3): every hit votes for its song; most votes wins.
- ``search_offset_consistent`` (docs/design.md §3.2): every hit proposes a (song, start)
  alignment; each alignment is re-scored by the mean inner product between the query
  windows and the song's windows at start + j (vectors rebuilt from the index), so hits
  must agree on where in the song the query is, not only on which song; windows that
  resemble every song are discounted (``afp_core.hubness``).

``identify_vectors`` dispatches and applies a "no match" threshold. ``calibrate_threshold``
estimates that threshold from the database alone (see its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import numpy as np

from afp_core.config import SearchConfig
from afp_core.database import FingerprintDB, Song
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.hubness import HUB_WEIGHT

Method = Literal["sequence", "vote"]
METHODS: tuple[Method, ...] = ("sequence", "vote")
# Alternatives listed in a Match (best first, one per song).
N_CANDIDATES = 5
# Floats gathered per re-scoring chunk (candidates x windows x dim): bounds memory.
_RESCORE_CHUNK = 1 << 22
# Calibration draws a span again while it holds an uninformative fingerprint, this often.
_REDRAWS = 20
# PQ-rebuilt copies of the same vector agree to ~0.95 cosine: above this they are one.
_SAME_FINGERPRINT = 0.9


class SearchableDB(Protocol):
    """What the decision rules need from a database: a ``FingerprintDB``, or several
    searched as one (``afp_core.shards.ShardedDB``)."""

    @property
    def path(self) -> object: ...
    @property
    def dim(self) -> int: ...
    @property
    def density(self) -> int: ...
    @property
    def stored_hop_s(self) -> float: ...
    @property
    def nprobe(self) -> int: ...
    @nprobe.setter
    def nprobe(self, value: int) -> None: ...
    @property
    def search_settings(self) -> dict[str, Any]: ...
    def stored_span(self, n_windows: int) -> int: ...
    def songs(self, status: str | None = None) -> list[Song]: ...
    def song(self, song_id: int) -> Song: ...
    def search(
        self, queries: np.ndarray, k: int, exclude_song: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def song_spans(self, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...
    def hubness_penalty(self, ids: np.ndarray) -> np.ndarray | None: ...
    def check_model(self, model_info: dict[str, Any]) -> None: ...
    def info(self) -> dict[str, Any]: ...


def as_method(value: str) -> Method:
    """``value`` as a decision rule; ``ConfigError`` naming the rules if it is none."""
    for method in METHODS:
        if value == method:
            return method
    raise ConfigError(f"method: {value!r} is not one of {', '.join(METHODS)}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One song a query may come from, where in it, and how well it fits."""

    song: Song
    offset_s: float
    score: float


@dataclasses.dataclass(frozen=True)
class Match:
    """The decision for one query; ``song`` is None for "no match".

    ``offset_s`` is where the query starts inside the song, in seconds. ``score`` is the
    similarity-weighted vote share (vote) or mean similarity of the aligned windows (sequence).
    ``candidates`` are the best alternatives, one per song, best first (also kept when
    the threshold rejects the match).
    """

    song: Song | None
    offset_s: float | None
    score: float
    method: str
    candidates: list[Candidate]


def search_majority_vote(
    db: SearchableDB,
    vectors: np.ndarray,
    k: int = SearchConfig.k,
    exclude_song: int | None = None,
) -> Match:
    """The paper's rule: each window's k neighbours vote for their songs; most votes wins.

    Ties go to the higher summed similarity. The offset is the most common
    (neighbour position - window index) among the winner's votes. Score = the summed
    similarity of the song's votes / (n k): the vote share weighted by how close the
    votes are (a vote share alone is no confidence: the k neighbours of one window are
    often k neighbouring windows of one song, whatever the query).
    """
    queries = _check_query(db, vectors)
    n = len(queries)
    scores, ids = db.search(queries, k, exclude_song=exclude_song)
    song_ids, positions = db.locate(ids)
    valid = song_ids >= 0
    if not valid.any():
        return Match(None, None, 0.0, "vote", [])
    starts = (positions - db.density * np.arange(n)[:, None])[valid]
    hit_songs, sims = song_ids[valid], scores[valid].astype(np.float64)

    songs, inverse = np.unique(hit_songs, return_inverse=True)
    votes = np.bincount(inverse, minlength=len(songs))
    summed = np.bincount(inverse, weights=sims, minlength=len(songs))
    order = np.lexsort((-summed, -votes))[:N_CANDIDATES]
    candidates = []
    for slot in order:
        mine = inverse == slot
        offsets, offset_inverse = np.unique(starts[mine], return_inverse=True)
        offset_votes = np.bincount(offset_inverse)
        offset_sims = np.bincount(offset_inverse, weights=sims[mine])
        best = np.lexsort((-offset_sims, -offset_votes))[0]
        candidates.append(
            Candidate(
                song=db.song(int(songs[slot])),
                offset_s=float(offsets[best]) * db.stored_hop_s,
                score=float(summed[slot]) / (n * k),
            )
        )
    top = candidates[0]
    return Match(top.song, top.offset_s, top.score, "vote", candidates)


def search_offset_consistent(
    db: SearchableDB,
    vectors: np.ndarray,
    k: int = SearchConfig.k,
    exclude_song: int | None = None,
    hub_weight: float = HUB_WEIGHT,
) -> Match:
    """Offset-consistent ("sequence") search; score = mean similarity of aligned windows,
    less ``hub_weight`` x their mean hubness penalty (``afp_core.hubness``; none where the
    database has not measured it).

    Candidates are the distinct (song, start = hit position - density * window index) of
    all hits; those whose aligned windows leave the song are dropped (so a query longer
    than a song cannot match it). With no candidate left the score is -1 (the lowest
    possible similarity).
    """
    queries = _check_query(db, vectors)
    n = len(queries)
    _, ids = db.search(queries, k, exclude_song=exclude_song)
    song_ids, positions = db.locate(ids)
    valid = song_ids >= 0
    steps = db.density * np.arange(n)
    starts = (positions - steps[:, None])[valid]
    pairs = np.unique(np.stack([song_ids[valid], starts], axis=1), axis=0)
    first, count = db.song_spans(pairs[:, 0])
    inside = (pairs[:, 1] >= 0) & (pairs[:, 1] + steps[-1] < count)
    pairs, first = pairs[inside], first[inside]
    if len(pairs) == 0:
        return Match(None, None, -1.0, "sequence", [])

    window_ids = (first + pairs[:, 1])[:, None] + steps
    mean_sims = _score_alignments(db, queries, window_ids, hub_weight)
    # Best first; ties broken by song id then start so results are reproducible.
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -mean_sims))
    candidates: list[Candidate] = []
    seen: set[int] = set()
    for slot in order:
        song_id = int(pairs[slot, 0])
        if song_id in seen:
            continue
        seen.add(song_id)
        candidates.append(
            Candidate(
                song=db.song(song_id),
                offset_s=float(pairs[slot, 1]) * db.stored_hop_s,
                score=float(mean_sims[slot]),
            )
        )
        if len(candidates) == N_CANDIDATES:
            break
    top = candidates[0]
    return Match(top.song, top.offset_s, top.score, "sequence", candidates)


def _score_alignments(
    db: SearchableDB, queries: np.ndarray, window_ids: np.ndarray, hub_weight: float
) -> np.ndarray:
    """Mean inner product of query window j with database vector window_ids[c, j], per c,
    less ``hub_weight`` x the mean hubness penalty of those vectors."""
    # Neighbouring alignments share most vectors: rebuild each distinct vector once.
    unique_ids, inverse = np.unique(window_ids, return_inverse=True)
    inverse = inverse.reshape(window_ids.shape)
    rebuilt = db.reconstruct(unique_ids)
    penalty = db.hubness_penalty(unique_ids) if hub_weight else None
    n, dim = queries.shape
    per_chunk = max(1, _RESCORE_CHUNK // (n * dim))
    means = np.empty(len(window_ids), np.float64)
    for start in range(0, len(window_ids), per_chunk):
        aligned = rebuilt[inverse[start : start + per_chunk]]  # (c, n, dim)
        means[start : start + per_chunk] = np.einsum("cnd,nd->c", aligned, queries) / n
    if penalty is not None:
        means -= hub_weight * penalty[inverse].mean(axis=1, dtype=np.float64)
    return means


def identify_vectors(
    db: SearchableDB,
    vectors: np.ndarray,
    method: Method = "sequence",
    k: int = SearchConfig.k,
    threshold: float | Literal["auto"] | None = None,
    exclude_song: int | None = None,
) -> Match:
    """Identify a query from its window vectors (n, dim).

    ``exclude_song`` searches as if that song were not in the database.

    ``threshold``: a score below it is "no match" (song None, candidates kept); None
    never rejects; 'auto' uses the database's calibrated threshold for this method and
    query length (``stored_threshold``), or none if it has not been calibrated.
    """
    if method not in METHODS:
        raise ConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    queries = _check_query(db, vectors)
    search = search_offset_consistent if method == "sequence" else search_majority_vote
    match = search(db, queries, k=k, exclude_song=exclude_song)
    if threshold == "auto":
        threshold = stored_threshold(db, method, len(queries), k=k)
    if threshold is not None and (match.song is None or match.score < threshold):
        return dataclasses.replace(match, song=None, offset_s=None)
    return match


def calibrate_threshold(
    db: FingerprintDB,
    n_windows: int,
    method: Method = "sequence",
    k: int = SearchConfig.k,
    trials: int = 200,
    quantile: float = 0.99,
    seed: int = 0,
    save: bool = True,
    uninformative: np.ndarray | None = None,
) -> float:
    """Estimate the "not in database" threshold for queries of ``n_windows`` windows.

    No audio is needed: each trial takes a random span of ``n_windows`` consecutive
    vectors of a random indexed song (rebuilt from the index) as the query and searches
    with that song EXCLUDED, so the best score is what a song that is not in the database
    would get against the others. The threshold is the ``quantile`` of those impostor
    scores, i.e. about ``1 - quantile`` false matches for unknown songs: an estimate from
    the database's own song pairs, rough for a database of few songs. Clean spans are
    smoother than recorded queries, so this errs on the high (safe) side. With ``save``,
    the value is stored in the manifest under ``search.thresholds[method]`` together with
    the ``k`` and ``nprobe`` it was measured with (scores depend on both).

    ``uninformative``: fingerprints that carry no identity, (m, dim), e.g. the model's
    fingerprint of digital silence, which every song's silent intro or tail shares. A span
    containing one is drawn again (up to 20 times): otherwise the few trials that land in
    silence score ~1.0 against other songs and set the high quantile by themselves.
    """
    if method not in METHODS:
        raise ConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if n_windows < 1 or trials < 1 or not 0.0 < quantile <= 1.0:
        raise ConfigError("calibration: need n_windows >= 1, trials >= 1, 0 < quantile <= 1")
    span = db.stored_span(n_windows)
    songs = [s for s in db.songs("indexed") if s.vector_count >= span]
    if len(db.songs("indexed")) < 2 or not songs:
        raise DatabaseError(
            f"{db.path}: calibration needs at least 2 indexed songs, one of them at least "
            f"{n_windows} windows long"
        )
    rng = np.random.default_rng(seed)
    weights = np.array([s.vector_count - span + 1 for s in songs], np.float64)
    picks = rng.choice(len(songs), size=trials, p=weights / weights.sum())
    search = search_offset_consistent if method == "sequence" else search_majority_vote
    impostor = np.empty(trials, np.float64)
    for trial, pick in enumerate(picks):
        song = songs[pick]
        if song.first_vector_id is None:
            raise DatabaseError(f"{db.path}: indexed song {song.id} has no vector ids")
        for _ in range(_REDRAWS):
            start = int(rng.integers(0, song.vector_count - span + 1))
            ids = db.density * np.arange(n_windows) + song.first_vector_id + start
            query = db.reconstruct(ids)
            query /= np.linalg.norm(query, axis=1, keepdims=True)
            if uninformative is None or float((query @ uninformative.T).max()) < _SAME_FINGERPRINT:
                break
        impostor[trial] = search(db, query, k=k, exclude_song=song.id).score
    threshold = float(np.quantile(impostor, quantile))
    if save:
        thresholds: dict[str, Any] = db.search_settings.get("thresholds", {})
        entry = thresholds.get(method, {})
        # a table measured another way (afp_core.calibration) is replaced, not mixed in
        if entry.get("k") != k or entry.get("nprobe") != db.nprobe or "source" in entry:
            entry = {"k": k, "nprobe": db.nprobe, "by_windows": {}}
        entry["by_windows"][str(n_windows)] = threshold
        thresholds[method] = entry
        db.save_search_settings(thresholds=thresholds)
    return threshold


def stored_threshold(
    db: SearchableDB, method: str, n_windows: int, k: int = SearchConfig.k
) -> float | None:
    """The calibrated threshold for ``method`` and queries of ``n_windows`` windows.

    Impostor scores fall as queries get longer, so the value calibrated for the longest
    length <= n_windows is used (safe: higher than the exact one). None when there is
    none, or when it was measured with another ``k`` or nprobe: a vote share out of
    4 neighbours means nothing out of 10.
    """
    return _stored(db, method, "by_windows", n_windows, k)


def stored_impostor_mean(
    db: SearchableDB, method: str, n_windows: int, k: int = SearchConfig.k
) -> float | None:
    """The mean impostor score behind ``stored_threshold`` (None where not measured)."""
    return _stored(db, method, "impostor_mean_by_windows", n_windows, k)


def _stored(db: SearchableDB, method: str, table: str, n_windows: int, k: int) -> float | None:
    """``table`` of the calibration entry at the longest length <= ``n_windows``."""
    entry = db.search_settings.get("thresholds", {}).get(method, {})
    if entry.get("k") != k or entry.get("nprobe") != db.nprobe:
        return None
    values = entry.get(table, {})
    lengths = sorted(int(key) for key in values if int(key) <= n_windows)
    return float(values[str(lengths[-1])]) if lengths else None


def _check_query(db: SearchableDB, vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim == 2 and array.shape[0] == 0:
        raise AudioError("query shorter than one window: no fingerprints to search")
    if array.ndim != 2 or array.shape[1] != db.dim:
        raise DatabaseError(
            f"{db.path}: query vectors have shape {array.shape}, expected (n, {db.dim})"
        )
    return np.ascontiguousarray(array, dtype=np.float32)
