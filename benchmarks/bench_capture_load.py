"""Capture headroom under load: live takes through the virtual devices on a busy machine.

Three takes (low, mid, high) are recorded at once, as the demo records them: one set of
PulseAudio virtual devices per take, the program played through the default virtual
room. While they record, ``--load`` processes burn CPU (on top of whatever else runs).
Each take is then aligned by its markers. Reported per run: the xruns PortAudio
reported (and where), the markers the alignment dropped (audio inserted or lost in the
devices' own buffers shows there, not as an xrun), and whether each take is ok.

``--order overlap`` prepares each take in its own thread and records it as soon as it is
ready (a take may record while another's room is still being rendered); ``--order
prepared`` renders every take first and starts the recordings together.
``--default-priority`` leaves the recorder's threads at the process's nice value instead
of raising them (``rig_app.capture._raised_priority``).

Measured on the development VM (2 cores; 2 burners beside a training run and other test
runs, load average 5-10), 81.5 s program, latency 0.2 s, blocksize 1024, takes ok /
flagged / not aligned, and takes with xruns (all were output underflows):

* overlap, default priority (as the demo recorded before): 3 / 0 / 3 of 6, 3 with xruns;
* prepared, default priority: 10 / 2 / 3 of 15, 3 with xruns;
* prepared, raised priority: 16 / 4 / 1 of 21, 3 with xruns (three alternating pairs with
  the line above: 7 / 1 / 1 against 5 / 2 / 2 of 9);
* prepared, default priority, latency 0.5 s: 3 / 2 / 1 of 6, 2 with xruns: no better.

Most takes still lost are markers dropped with no xrun reported: audio inserted or lost
inside the virtual devices' own loopbacks (their daemon already runs at nice -11).

Run: .venv/bin/python benchmarks/bench_capture_load.py [--program-s 60] [--load 2]
     [--latency 0.2] [--blocksize 1024] [--order prepared] [--default-priority]
     [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from afp_core.protocols.sessions import describe_xruns
from rig_app import capture
from rig_app.align import AlignmentError, align_take
from rig_app.capture import TakeConfig, TakeResult, record_take
from rig_app.program import ProgramSong, build_noise_program, build_program, synthesize_song
from rig_app.room import VirtualRoom, live_take_audio
from rig_app.virtual_devices import start_virtual_devices

RATE = 16_000  # the demo's program rate
LABELS = ("low", "mid", "high")
BURN = "import numpy as np\nx = np.random.rand(400, 400)\nwhile True:\n    x = x @ x; x /= x.max()"


def make_program(seconds: float):
    count = max(2, round(seconds / 12))
    songs = [
        ProgramSong(synthesize_song(seconds / count, RATE, seed=i), f"song {i}")
        for i in range(count)
    ]
    program = build_program(songs, RATE, min_song_s=0.0)
    rng = np.random.default_rng(0)
    noise = build_noise_program(
        [0.1 * rng.standard_normal(20 * RATE).astype(np.float32)],
        program.samples,
        RATE,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    return program, noise


def run_once(args: argparse.Namespace, program, noise, folder: Path) -> list[str]:
    room = VirtualRoom()
    songs = [(s.start, s.end) for s in program.songs]
    devices = [start_virtual_devices(prefix=f"{label}_") for label in LABELS]
    results: dict[str, TakeResult] = {}
    ready = threading.Barrier(len(LABELS))

    def take(label: str, route) -> None:
        music, noisy, _ = live_take_audio(room, program.music, noise, RATE, label, songs)
        config = TakeConfig(
            music_out=route.music_out,
            noise_out=route.noise_out,
            mic_in=route.mic_in,
            sample_rate=RATE,
            label=label,
            latency=args.latency,
            blocksize=args.blocksize,
        )
        if args.order == "prepared":
            ready.wait()
        results[label] = record_take(config, music, noisy, folder / f"{label}.wav")

    try:
        threads = [
            threading.Thread(target=take, args=(label, route))
            for label, route in zip(LABELS, devices, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for route in devices:
            route.stop()
    lines = []
    for label in LABELS:
        result = results[label]
        recording = np.fromfile(result.path, dtype="<f4", offset=56)  # the rig's header
        kinds = ", ".join(f"{key} {n}" for key, n in result.xruns.items() if n)
        xruns = describe_xruns(result.xrun_total, result.xrun_times_s)
        xruns += f" ({kinds})" if kinds else ""
        try:
            alignment = align_take(recording, RATE, program, name=label)
        except AlignmentError as exc:
            lines.append(f"  {label}: {xruns}, not aligned ({exc})")
            continue
        dropped = [a.label for a in alignment.anchors if a.take_s is not None and not a.used]
        verdict = alignment.verdict(result.xrun_total, result.xrun_times_s).status
        lines.append(
            f"  {label}: {xruns}, "
            f"{len(dropped)} of {len(alignment.anchors)} markers dropped, max residual "
            f"{alignment.max_residual_ms:.3f} ms: {verdict}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--program-s", type=float, default=60.0)
    parser.add_argument("--load", type=int, default=2, help="CPU-burning processes")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--blocksize", type=int, default=1024)
    parser.add_argument("--order", choices=("overlap", "prepared"), default="prepared")
    parser.add_argument("--default-priority", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.default_priority:
        capture._raised_priority = contextlib.nullcontext  # type: ignore[assignment]
    program, noise = make_program(args.program_s)
    print(
        f"{len(program.songs)} songs, program {program.duration_s:.1f} s, {args.load} burners, "
        f"latency {args.latency} s, blocksize {args.blocksize}, order {args.order}, "
        f"{'default' if args.default_priority else 'raised'} priority, "
        f"load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    burners = [
        subprocess.Popen([sys.executable, "-c", BURN], env={**os.environ, "OMP_NUM_THREADS": "1"})
        for _ in range(args.load)
    ]
    try:
        for repeat in range(args.repeats):
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as folder:
                lines = run_once(args, program, noise, Path(folder))
            print(
                f"run {repeat + 1} ({time.monotonic() - started:.0f} s, load average "
                f"{os.getloadavg()[0]:.2f}):"
            )
            print("\n".join(lines), flush=True)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


if __name__ == "__main__":
    main()
