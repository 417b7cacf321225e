"""Running the real commands for the fault suite, optionally stopped at a named point
(``afp_core.faults``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

TIMEOUT_S = 300


def run_command(
    module: str,
    *args: str,
    fault: str | None = None,
    sig: str = "KILL",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m module args`` to the end; with ``fault``, it stops itself there with
    ``sig`` (``KILL`` or ``INT``, as Ctrl-C)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AFP_FAULT")}
    clean |= env or {}
    if fault is not None:
        clean |= {"AFP_FAULT_AT": fault, "AFP_FAULT_SIGNAL": sig}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        # a suite started in the background inherits SIGINT ignored (and so would afp)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_afp(*args: str, fault: str | None = None, sig: str = "KILL") -> subprocess.CompletedProcess:
    return run_command("afp_core.cli", *args, fault=fault, sig=sig)


def killed_code(sig: str) -> int:
    """The exit status of a command stopped with ``sig``: killed, or 130 after Ctrl-C."""
    return -signal.SIGKILL if sig == "KILL" else 130
