"""Named points where the fault suite (``tests/faults``) stops a real process on purpose.

A run with ``AFP_FAULT_AT=<point>[:<n>]`` sends itself ``AFP_FAULT_SIGNAL`` (``KILL``, the
default, ``INT``, as Ctrl-C, or ``STOP``, which holds it there until a ``SIGCONT``, for a
test to act meanwhile) on the n-th arrival (default: the first) at ``point``:
the suite can then kill ``afp index`` in the middle of a commit or of the calibration,
which no timing from outside can hit reliably, and check that the rerun ends where an
uninterrupted run does. Without the variable (always, outside the suite) a point costs
one dictionary lookup.

Points: ``index.staged`` (a song's vectors staged), ``index.extracted`` (a file
fingerprinted in a worker process of ``afp index --workers``, not yet handed over; each
worker counts its own arrivals), ``index.commit`` (the new index or
postings file written, the catalogue not yet pointing to it) and ``index.calibrate``
(one calibration query answered), in both kinds of database; ``train.step`` (a training
step done, not saved) and ``train.save`` (the training state saved, the model not yet);
``record.synced`` (the take file's header made to cover what was written, in the
recorder's writer thread) and ``record.recorded`` (a take recorded, not yet stored in its
session).
"""

from __future__ import annotations

import os
import signal

_arrivals: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Stop here if the fault suite asked for it (see the module's docstring)."""
    wanted = os.environ.get("AFP_FAULT_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(nth or 1):
        kind = os.environ.get("AFP_FAULT_SIGNAL", "KILL")
        signals = {"INT": signal.SIGINT, "STOP": signal.SIGSTOP}
        os.kill(os.getpid(), signals.get(kind, signal.SIGKILL))
