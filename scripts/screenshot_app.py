"""Screenshots of every page of the rig app on the quick demo's session, in a real X window.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \\
        .venv/bin/python scripts/screenshot_app.py [--demo demo-quick] [--out docs/screenshots]

The session is the quick demo's (``afp-rig demo --quick --offline --out DEMO``): four
excerpts of development songs the shipped model did not train on, a speech-babble noise
program, three takes (low, mid, high) simulated through the virtual room and aligned, and
the evaluation of the shipped model on them. When DEMO/session holds no evaluation yet the
script runs that demo first (a few minutes on 2 cores; the development music of
``./dev data``). Then it opens the session in the app at 1280 x 900, shows each page, waits
for the page's own work (the device list, the Inspect page's spectra and spectrograms, the
Evaluate page's latest report) and saves songs.png, program.png, record.png, inspect.png,
dataset.png (with the sessions of ``--also`` in the same table) and evaluate.png as the X
server shows them; ``--only`` picks pages. ``--queryset SET`` adds evaluate-queryset.png:
the Evaluate page on an exported query set (DEMO/query-set is the demo session's) with
its latest report, evaluated first with DEMO/db when it holds none. With the virtual
audio devices (``rig_app.virtual_devices``) the Record page lists them and shows the
microphone's level during a test tone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from rig_app.ui.main_window import MainWindow
    from rig_app.ui.pages import Page
    from rig_app.ui.workers import Worker

SIZE = (1280, 900)
JOB_S = 600.0  # the Inspect page's analysis on a busy machine
DEVICE_S = 30.0  # listing devices, opening the microphone, a test tone


def ensure_demo(demo: Path) -> Path:
    """DEMO/session with an evaluation, made by the quick demo when missing."""
    from rig_app.demo import quick_demo_options, run_demo_job
    from rig_app.evaluate import previous_reports

    session = demo / "session"
    if not previous_reports(session):
        print(f"screenshot_app: no evaluated session in {demo}: running the quick demo")
        run_demo_job(quick_demo_options(out=demo, live=False))
    return session


def settle(seconds: float = 0.2) -> None:
    """Let queued signals and repaints through."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(round(seconds * 1000), loop.quit)
    loop.exec()


def wait_for(worker: Worker | None, what: str, timeout_s: float = JOB_S) -> bool:
    """Run the event loop until ``worker`` is done (False: not within ``timeout_s``)."""
    import faulthandler

    from PySide6.QtCore import QEventLoop, QTimer

    if worker is None:
        raise SystemExit(f"screenshot_app: could not start {what}")
    if not worker.has_ended:
        loop = QEventLoop()
        worker.done.connect(loop.quit)
        QTimer.singleShot(round(timeout_s * 1000), loop.quit)
        loop.exec()
    settle()
    if not worker.has_ended:
        print(f"screenshot_app: {what}: not done after {timeout_s:g} s; where it is:")
        faulthandler.dump_traceback(all_threads=True)
    return worker.has_ended


def wait_idle(page: Page, what: str, timeout_s: float = JOB_S) -> bool:
    """Until the page's jobs (started as it showed) are over (False: not in time)."""
    for _ in range(5):  # a job's end may start another (the excerpt after the spectra)
        for worker in page.workers:
            if not wait_for(worker, what, timeout_s):
                return False
        settle(0.3)
        if not page.workers:
            return True
    return False


def save(window: MainWindow, title: str, out: Path) -> None:
    """The window as the X server shows it (no window manager under Xvfb: no frame)."""
    from PySide6.QtGui import QGuiApplication

    settle(0.5)
    image = QGuiApplication.primaryScreen().grabWindow(window.winId())
    if image.isNull():
        image = window.grab()
    path = out / f"{title.lower()}.png"
    if not image.save(str(path)):
        raise SystemExit(f"screenshot_app: cannot write {path}")
    print(f"{path}: {image.width()} x {image.height()}, {path.stat().st_size // 1024} KB")


def show_record(window: MainWindow, devices: object | None, out: Path) -> None:
    record = window.record_page
    window.show_page("Record")
    listed = wait_idle(record, "listing the audio devices", DEVICE_S)
    record.rows["high"].radio.setChecked(True)  # its alignment: markers, offset, drift
    if devices is None or not listed:
        save(window, "Record", out)
        return
    # the meter, live: listen to the room while a test tone plays
    record.listen.setChecked(True)
    if wait_idle(record, "opening the microphone", DEVICE_S):
        tone = record.play_tone(record.music_out)
        settle(0.7)
        save(window, "Record", out)
        wait_for(tone, "the test tone", DEVICE_S)
    else:
        save(window, "Record", out)
    record.listen.setChecked(False)


def show_dataset(window: MainWindow, others: list[Path], out: Path) -> None:
    """The Dataset page with the open session and ``others`` in one table, a row chosen."""
    page = window.dataset_page
    for folder in others:
        page.add_session(folder)
    window.show_page("Dataset")
    wait_idle(page, "listing the output devices", DEVICE_S)
    page.table.selectRow(1)
    save(window, "Dataset", out)


def show_queryset(window: MainWindow, queryset: Path, database: Path, out: Path) -> None:
    """The Evaluate page in query-set mode: the set's latest report (evaluated if none)."""
    window.show_page("Evaluate")
    page = window.evaluate_page
    if error := page.set_queryset(queryset):
        raise SystemExit(f"screenshot_app: {error}")
    page.set_database(database)
    if page.previous.count():
        done = wait_for(page.load_report(), "reading the query set's latest report")
    else:
        print(f"screenshot_app: no report in {queryset}: evaluating it with {database}")
        done = wait_for(page.evaluate(), "evaluating the query set")
    if not done or page.view is None:
        raise SystemExit(f"screenshot_app: {page.message_text}")
    save(window, "Evaluate-queryset", out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo-quick", help="demo folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--no-devices", action="store_true", help="no virtual audio devices")
    parser.add_argument(
        "--also",
        type=Path,
        nargs="*",
        default=[],
        metavar="SESSION",
        help="more sessions for the Dataset page's table (one query set spans sessions)",
    )
    parser.add_argument(
        "--only", nargs="*", metavar="PAGE", help="only these pages (default: every page)"
    )
    parser.add_argument(
        "--queryset",
        type=Path,
        metavar="SET",
        help="the Evaluate page on this query set too (DEMO/query-set): evaluate-queryset.png",
    )
    args = parser.parse_args()
    wanted = {name.lower() for name in args.only} if args.only else None
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    if os.environ["QT_QPA_PLATFORM"].startswith("xcb") and not os.environ.get("DISPLAY"):
        raise SystemExit("screenshot_app: no X display: run it under xvfb-run (see --help)")
    session = ensure_demo(args.demo.resolve())

    with contextlib.ExitStack() as stack:
        devices = None
        if not args.no_devices:
            from rig_app.virtual_devices import VirtualDevicesError, start_virtual_devices

            try:
                devices = stack.enter_context(start_virtual_devices())
            except VirtualDevicesError as exc:
                print(f"screenshot_app: no virtual devices, no level shown ({exc})")
        from PySide6.QtWidgets import QApplication

        from rig_app.ui.main_window import MainWindow, find_display_problem

        if problem := find_display_problem():
            raise SystemExit(f"screenshot_app: {problem}")
        app = QApplication.instance() or QApplication([])  # noqa: F841 - Qt needs it alive
        window = MainWindow()
        window.resize(*SIZE)
        window.move(0, 0)
        window.show()
        if error := window.open_session(session):
            raise SystemExit(f"screenshot_app: {error}")
        args.out.mkdir(parents=True, exist_ok=True)

        def shoot(page: str) -> bool:
            return wanted is None or page in wanted

        if shoot("songs"):
            window.show_page("Songs")
            save(window, "Songs", args.out)
        if shoot("program"):
            program = window.show_page("Program")
            wait_idle(program, "loading the program")
            save(window, "Program", args.out)
        if shoot("record"):
            show_record(window, devices, args.out)
        if shoot("inspect"):
            window.show_page("Inspect")
            inspect = window.inspect_page
            wait_idle(inspect, "the spectra and spectrograms")
            if inspect.workers or inspect.spectra is None or inspect.excerpt is None:
                raise SystemExit("screenshot_app: the Inspect page computed nothing")
            save(window, "Inspect", args.out)
        if shoot("dataset"):
            show_dataset(window, args.also, args.out)
        if shoot("evaluate"):
            window.show_page("Evaluate")
            evaluate = window.evaluate_page
            evaluate.set_database(args.demo.resolve() / "db")  # what the demo searched
            read = wait_for(evaluate.load_report(), "reading the latest report")
            if not read or evaluate.view is None:
                raise SystemExit(f"screenshot_app: {evaluate.message_text}")
            save(window, "Evaluate", args.out)
            if args.queryset is not None:
                show_queryset(window, args.queryset.resolve(), args.demo.resolve() / "db", args.out)
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
