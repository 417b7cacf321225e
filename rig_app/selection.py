"""Which takes and songs of a session go into a published query set, and why not.

The choice is a record in the session (``Session.selection``, docs/session-format.md,
"Selection"); audio is never deleted to leave something out::

    {"format": "afp-rig-selection", "version": 1,
     "excluded": [{"take": "low", "song": 3, "reason": "door slammed at 1:02"}],
     "notes": [{"take": "low", "song": null, "text": "..."}]}

``take`` null: that song in every take; ``song`` null: the whole take (``song`` is the
program's song index, 0 for the first; the commands and pages number songs from 1, as
the rig lists them). A note with both null is about the session.
The Dataset page and ``afp-rig exclude / include / selection`` edit it through
``Selection``; ``rig_app.export`` honours it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from afp_core.fileutil import check_document, one_line
from rig_app.session import Session, SessionError

__all__ = [
    "SELECTION_FORMAT",
    "SELECTION_VERSION",
    "Exclusion",
    "Note",
    "Selection",
    "check_target",
    "describe_target",
    "find_song",
    "session_song_titles",
]

SELECTION_FORMAT = "afp-rig-selection"
SELECTION_VERSION = 1


@dataclass(frozen=True)
class Exclusion:
    """A take, a song (in every take) or one song of one take left out, with the reason."""

    take: str | None
    song: int | None
    reason: str

    def covers(self, take: str, song: int | None) -> bool:
        """Whether it leaves out ``song`` of ``take`` (``song`` None: the whole take)."""
        if self.take is not None and self.take != take:
            return False
        if song is None:
            return self.song is None and self.take == take
        return self.song is None or self.song == song


@dataclass(frozen=True)
class Note:
    """Free text about a take, a song or one song of one take (both None: the session)."""

    take: str | None
    song: int | None
    text: str


@dataclass
class Selection:
    """The exclusions and notes of a session (see the module docstring)."""

    exclusions: list[Exclusion] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    @classmethod
    def from_session(cls, session: Session) -> Selection:
        """The session's selection (empty when it has none); ``SessionError`` in one line,
        naming session.json, for a malformed record."""
        data = session.selection
        if data is None:
            return cls()
        where = f"{session.path}: selection"
        check_document(data, SELECTION_FORMAT, SELECTION_VERSION, where, SessionError)
        try:
            exclusions = [
                Exclusion(_take(e["take"]), _song(e["song"]), _text(e["reason"], "reason"))
                for e in _entries(data, "excluded")
            ]
            notes = [
                Note(_take(n["take"]), _song(n["song"]), _text(n["text"], "text"))
                for n in _entries(data, "notes")
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"{where} is malformed ({one_line(exc)})") from None
        for exclusion in exclusions:
            if exclusion.take is None and exclusion.song is None:
                raise SessionError(f"{where} is malformed (an exclusion names no take or song)")
        return cls(exclusions, notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SELECTION_FORMAT,
            "version": SELECTION_VERSION,
            "excluded": [dataclasses.asdict(e) for e in self.exclusions],
            "notes": [dataclasses.asdict(n) for n in self.notes],
        }

    def reason_excluded(self, take: str, song: int | None = None) -> str | None:
        """Why ``song`` of ``take`` is left out (``song`` None: the whole take); None when
        it is not. The narrowest exclusion that covers it gives the reason."""
        covering = [e for e in self.exclusions if e.covers(take, song)]
        if not covering:
            return None
        covering.sort(key=lambda e: (e.take is None, e.song is None))
        return covering[0].reason

    def exclude(self, take: str | None, song: int | None, reason: str) -> None:
        """Leave out ``song`` of ``take`` (None: every take / the whole take) because of
        ``reason`` (required); replaces the reason of the same exclusion."""
        if take is None and song is None:
            raise SessionError("an exclusion needs a take, a song or both")
        reason = " ".join(str(reason).split())
        if not reason:
            raise SessionError("give the reason for leaving it out")
        self.exclusions = [e for e in self.exclusions if (e.take, e.song) != (take, song)]
        self.exclusions.append(Exclusion(take, song, reason))

    def include(self, take: str | None, song: int | None) -> None:
        """Remove the exclusions inside this scope: ``include(take, None)`` every exclusion
        of that take, ``include(None, song)`` that song's in every take, ``include(take,
        song)`` that one. A wider exclusion (the whole take, the song in every take) stays:
        ``reason_excluded`` still answers for it."""
        self.exclusions = [
            e
            for e in self.exclusions
            if not ((take is None or e.take == take) and (song is None or e.song == song))
        ]

    def set_note(self, take: str | None, song: int | None, text: str) -> None:
        """The note on ``song`` of ``take`` (None as in ``exclude``); empty text removes it."""
        text = str(text).strip()
        self.notes = [n for n in self.notes if (n.take, n.song) != (take, song)]
        if text:
            self.notes.append(Note(take, song, text))

    def note(self, take: str | None, song: int | None) -> str:
        """The note on exactly this take and song ("" when there is none)."""
        return next((n.text for n in self.notes if (n.take, n.song) == (take, song)), "")

    def store(self, session: Session) -> None:
        """Put the selection in ``session`` and save session.json (atomically). An empty
        selection is stored as none."""
        session.selection = self.to_dict() if self.exclusions or self.notes else None
        session.save()


def _entries(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError(f"{key!r} must be a list of objects")
    return value


def _take(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"take {value!r} is not a label or null")
    return value


def _song(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"song {value!r} is not a song index or null")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} {value!r} is not text")
    return value


# ---------------------------------------------------------------------- addressing


def session_song_titles(session: Session) -> list[str]:
    """The titles of the program's songs, by song index."""
    if session.program is None:
        raise SessionError(f"{session.path}: the session has no program yet")
    return [str(song.get("title", "")) for song in session.program.get("songs") or []]


def find_song(session: Session, text: str) -> int:
    """The song index ``text`` names: a number is the song's number as the rig lists songs
    (1 for the first: ``afp-rig program``, ``quality``, ``selection``), anything else a
    title (case and spacing ignored). One-line ``SessionError`` naming session.json if
    none or several match."""
    titles = session_song_titles(session)
    listing = f"songs 1-{len(titles)}" if titles else "no songs"
    text = str(text).strip()
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= len(titles):
            raise SessionError(f"{session.path}: no song {number} ({listing})")
        return number - 1
    key = " ".join(text.casefold().split())
    found = [i for i, title in enumerate(titles) if " ".join(title.casefold().split()) == key]
    if not found:
        raise SessionError(
            f"{session.path}: no song titled {text!r} ({listing}; give a title or a number)"
        )
    if len(found) > 1:
        raise SessionError(
            f"{session.path}: several songs are titled {text!r} (songs "
            f"{', '.join(str(i + 1) for i in found)}); give the number"
        )
    return found[0]


def check_target(session: Session, take: str | None, song: int | None) -> None:
    """The take exists and the song index is the program's; one line naming session.json."""
    if take is not None:
        session.take(take)
    if song is not None:
        count = len(session_song_titles(session))
        if not 0 <= song < count:
            raise SessionError(
                f"{session.path}: no song with index {song} (the program has {count})"
            )


def describe_target(session: Session, take: str | None, song: int | None) -> str:
    """``take low``, ``song 3 'Title' in every take``, ``song 3 'Title' of take low`` (songs
    numbered from 1, as the rig lists them; ``song`` is the index)."""
    if song is None:
        return f"take {take}" if take is not None else "the session"
    titles = session_song_titles(session)
    title = titles[song] if 0 <= song < len(titles) else "?"
    where = "in every take" if take is None else f"of take {take}"
    return f"song {song + 1} {title!r} {where}"
