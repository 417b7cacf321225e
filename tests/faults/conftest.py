"""The fault suite: real ``afp index``, ``afp train`` and ``afp-rig record`` processes
killed (SIGKILL or SIGINT) at named points, and a bad-file corpus.

Every test adds rows to ``LEDGER``; the table is printed at the end of the run: per
command, kills tried / survived / data lost, and bad inputs tried / reported clearly /
crashes.
"""

from __future__ import annotations

import dataclasses

import pytest


@dataclasses.dataclass
class Ledger:
    faults: list[tuple[str, bool, bool]] = dataclasses.field(default_factory=list)
    inputs: list[tuple[str, bool, bool]] = dataclasses.field(default_factory=list)

    def fault(self, name: str, survived: bool, lost: bool) -> None:
        self.faults.append((name, survived, lost))

    def bad_input(self, name: str, clear: bool, crashed: bool) -> None:
        self.inputs.append((name, clear, crashed))


LEDGER = Ledger()


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:
    if not (LEDGER.faults or LEDGER.inputs):
        return
    write = terminalreporter.write_line
    write("")
    write("fault suite                      tried  survived  data lost")
    faults = LEDGER.faults
    # one row per command: a fault's name starts with it ("afp index (neural) SIGKILL ...")
    commands = dict.fromkeys(" ".join(name.split()[:2]) for name, *_ in faults)
    for command in commands:
        rows = [fault for fault in faults if fault[0].startswith(command + " ")]
        write(
            f"  {command + ' kills':<32}{len(rows):5d}  {sum(s for _, s, _ in rows):8d}"
            f"  {sum(lost for *_, lost in rows):9d}"
        )
    inputs = LEDGER.inputs
    write("                                 tried  clear     crashes")
    write(
        f"  bad inputs                      {len(inputs):5d}  {sum(c for _, c, _ in inputs):8d}"
        f"  {sum(crash for *_, crash in inputs):9d}"
    )
    for name, survived, lost in faults:
        if not survived or lost:
            write(f"  FAILED: {name}")
