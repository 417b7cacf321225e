"""Small helpers shared by both packages: streamed checksums, atomic writes (files and
folders), sizes, one-line messages and timestamps."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import shutil
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Parent folders are created. If the body raises, the temporary file is removed and
    ``path`` is left as it was. Readers never see a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder so that os.replace is a rename on one file system; the writer creates
    # the file itself so it gets the usual permissions rather than mkstemp's 0600.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with removed_on_failure(tmp, target):
        yield tmp
        _fsync(tmp)
        tmp.replace(target)
        _fsync(target.parent)  # the rename itself must survive a power cut


@contextmanager
def removed_on_failure(path: Path, shown: Path) -> Iterator[None]:
    """Delete the file ``path`` if the body raises (one cut short by a full disk: its space
    is freed for the rerun); a failed write that names no file, or ``path``, is made to
    name ``shown``, the file the user knows (``path`` is a hidden temporary)."""
    try:
        yield
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno and exc.filename in (None, str(path)):
            exc.filename = str(shown)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it becomes ``path``.

    ``path`` must not exist or be an empty folder (callers check first, to say so in
    their own words). If the body raises, the temporary folder is removed and ``path`` is
    left as it was: nobody sees a half-written folder.
    """
    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    building.mkdir()
    try:
        yield building
        if target.is_dir():
            target.rmdir()  # empty; renaming onto a folder is not portable
        building.replace(target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """``np.save`` ``array`` to ``path`` atomically (see ``atomic_path``); returns the path.

    Through Python's writes, which raise for every failed one: numpy's own to a real file
    (C stdio) lose a failed last flush, and a full disk would leave a short file unsaid.
    """
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        # an object with a write() and nothing else: numpy then writes through it
        np.save(types.SimpleNamespace(write=handle.write), array)
    return Path(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_size(path: Path) -> int:
    """Bytes in ``path``; 0 when it cannot be read (missing, removed meanwhile)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 KB`` ... ``3.2 GB`` (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601 (what manifests, sessions and takes record)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec=timespec)


def one_line(exc: BaseException | str) -> str:
    """An exception's text (or a message) folded onto one line (for one-line user errors)."""
    if isinstance(exc, str):
        return " ".join(exc.split())
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return " ".join(str(exc).split()) or type(exc).__name__


def read_json_object(path: Path, error: type[Exception], name: str | None = None) -> dict:
    """The JSON object in ``path``; anything else raises ``error`` with a one-line reason
    naming the file as ``name`` (default: its path)."""
    name = name or str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except json.JSONDecodeError as exc:
        raise error(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{name}: cannot read ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise error(f"{name}: expected a JSON object, found {type(data).__name__}")
    return data


def check_document(
    data: Any,
    fmt: str,
    version: int,
    where: str | Path,
    error: type[Exception],
    version_key: str = "version",
) -> int:
    """Check a versioned document's format tag and version (1..``version``); returns it."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a JSON object, found {type(data).__name__}")
    if data.get("format") != fmt:
        raise error(f"{where}: not an {fmt} file (format {data.get('format')!r})")
    found = data.get(version_key)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise error(f"{where}: bad {version_key} {found!r}")
    if found > version:
        raise error(f"{where}: {fmt} version {found} is newer than this afp reads ({version})")
    return found
