"""Real processes, real signals: how a nemesis reaches a part of a host, and how a dead host
is fenced.

Every part of an emulated host is an OS process: its Ray node's raylet, and the raylet's
worker processes (the hypervisor, Dom0's daemons, one per DomU). A worker keeps the raylet's
pid in its environment (``RAY_RAYLET_PID``, which Ray's workers use to share the raylet's
fate), so the processes of a host are found from its raylet's pid even after the raylet
itself is gone, which is what fencing a lost host needs (DESIGN.md, failure semantics: no
domain runs where xenray says it does not). Signals reach processes on this machine only;
a fence that cannot reach a host's processes reports them as lost.

A pid is named together with its start time (``/proc/<pid>/stat`` field 22), so a pid that
the kernel reused for an unrelated process is never signalled.
"""

from __future__ import annotations

import dataclasses
import os
import signal

from actors.procstat import start_time, state

PROC = "/proc"


@dataclasses.dataclass(frozen=True)
class Process:
    """One process of a host: pid plus start time (clock ticks since boot)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        """The same process still exists (and is not a zombie)."""
        return start_time(self.pid) == self.start and state(self.pid) not in (None, "Z", "X")

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if this is still the same process; whether it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def node_processes(raylet_pid: int) -> list[Process]:
    """Every live process whose raylet is ``raylet_pid`` (the raylet's workers, orphaned or
    not), in pid order; the raylet itself is not among them."""
    if raylet_pid <= 0:
        return []
    needle = f"RAY_RAYLET_PID={raylet_pid}".encode()
    found = []
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"{PROC}/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if needle in environ and (proc := Process.of(int(entry))) is not None:
            found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def kill_all(procs: list[Process], sig: int = signal.SIGKILL) -> list[int]:
    """Signal each process that is still the same one; the pids signalled."""
    return [p.pid for p in procs if p.signal(sig)]
