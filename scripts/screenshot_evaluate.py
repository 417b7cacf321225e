"""Screenshot of the Evaluate page with a real result (offscreen; no display needed).

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_evaluate.py [--out docs/screenshots]
        [--work DIR]

Builds the demo's session (``rig_app.demo``): excerpts of development songs the shipped
model did not train on, a speech-babble noise program, and low / mid / high takes
simulated offline through the virtual room, each aligned by its markers. Then, in the
app, the Evaluate page evaluates the shipped model against a small library folder (the
session's songs and some other development songs), which the page indexes on the fly,
and the page is saved as evaluate.png. ``--work DIR`` keeps the session, the library and
its database there, so that a second run reuses them. Needs ``./dev data`` (the
development audio).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afp_core.audio import probe_audio  # noqa: E402
from afp_core.checkpoint import load_checkpoint  # noqa: E402
from afp_core.devdata import INSTALL_HINT, find_dev_music  # noqa: E402
from afp_core.shipped import SHIPPED_MODEL  # noqa: E402
from rig_app.demo import (  # noqa: E402
    DemoOptions,
    build_demo_session,
    make_demo_takes,
    pick_demo_songs,
)
from rig_app.session import SESSION_FILE  # noqa: E402

OTHER_SONGS = 200  # library songs besides the session's (the shortest first)


def build(work: Path) -> tuple[Path, Path]:
    """(session folder, library folder) in ``work``; reused when there already."""
    session_dir, library = work / "dev-session", work / "library"
    if (session_dir / SESSION_FILE).is_file() and library.is_dir():
        return session_dir, library
    music = find_dev_music()
    if not music:
        raise SystemExit(f"screenshot_evaluate: {INSTALL_HINT}")
    meta = load_checkpoint(SHIPPED_MODEL).meta.get("data", {})
    unseen = set(meta.get("validation_titles", [])) | set(meta.get("test_titles", []))
    options = DemoOptions(out=work, songs=5, excerpt_s=40.0, live=False)
    songs = pick_demo_songs(music, unseen, options, print)
    session = build_demo_session(session_dir, songs, options, print)
    how, takes = make_demo_takes(session, options, print)
    for take in takes:
        print(f"take {take.describe()} ({how})")
    library.mkdir(parents=True, exist_ok=True)
    chosen = {song.path for song in songs}
    others = sorted((p for p in music if p not in chosen), key=lambda p: probe_audio(p).duration_s)
    for path in [*chosen, *others[:OTHER_SONGS]]:
        link = library / path.name
        if not link.exists():
            link.symlink_to(path)
    return session_dir, library


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--work", type=Path, help="keep the session and database here")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication
    from screenshot_app import settle, wait_for

    from rig_app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])  # noqa: F841 - Qt needs it alive
    with tempfile.TemporaryDirectory(prefix="afp-rig-evaluate-") as scratch:
        work = args.work or Path(scratch)
        session, library = build(work)
        window = MainWindow()
        window.resize(1180, 900)
        window.show()
        if error := window.open_session(session):
            raise SystemExit(f"screenshot_evaluate: {error}")
        page = window.show_page("Evaluate")
        page.set_library(library)
        worker = page.evaluate()
        last = [""]

        def show(done: float, total: float, message: str) -> None:
            phase = message.split(":")[0]
            if phase != last[0]:
                print(f"{100 * done / max(total, 1e-9):5.1f} % {message}", flush=True)
                last[0] = phase

        if worker is not None:
            worker.progress.connect(show)
        wait_for(worker, "the evaluation")
        if page.view is None:
            raise SystemExit(f"screenshot_evaluate: {page.message_text}")
        print(page.view.table_markdown)
        settle(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "evaluate.png"
        window.grab().save(str(path))
        print(f"{path}: {path.stat().st_size // 1024} KB")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
