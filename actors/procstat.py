"""What the kernel says of a process on this host, from ``/proc/<pid>/stat`` (proc(5)).

The hypervisor reads a domain's CPU time here, the toolstack whether a domain's process is
stopped (a frozen domain answers nothing: ``xl list`` shows it unresponsive), and a nemesis
a process's start time, which tells a pid apart from a later process that reused it.
"""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _fields(pid: int) -> list[str] | None:
    """The fields after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The one-letter state (R, S, D, T when stopped, Z...); None if there is no such pid."""
    fields = _fields(pid)
    return None if fields is None else fields[0]


def stopped(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP, or a tracer): it runs nothing until SIGCONT."""
    return state(pid) in ("T", "t")


def start_time(pid: int) -> int | None:
    """When it started, in clock ticks since boot."""
    fields = _fields(pid)
    return None if fields is None else int(fields[19])


def cpu_ns(pid: int | None) -> int:
    """utime + stime, in ns; 0 for no process."""
    fields = _fields(pid) if pid else None
    if fields is None:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK
