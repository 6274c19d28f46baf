"""What the hypervisor's state machine asks its Ray shell to do (effects are data).

The state machine never touches a file, a process or the transport; it returns these and
``actor.py`` carries them out in order, before the hypercall's reply leaves.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Deliver:
    """Raise an upcall at ``endpoint`` for these (already dequeued) event-channel ports."""

    endpoint: str
    domid: int
    ports: tuple[int, ...]
    vcpu: int = 0  # the vCPU they are for (a DomU's kernel counts them per vCPU)


@dataclasses.dataclass(frozen=True)
class GateVcpus:
    """Stop (``paused=True``) or restart a domain's vCPUs: its kernel stops making progress.

    One-way messages to a threaded actor are not ordered, so each carries ``seq``, increasing
    per hypervisor: the kernel ignores a gate older than the last one it applied."""

    endpoint: str
    paused: bool
    seq: int = 0


@dataclasses.dataclass(frozen=True)
class RunVcpu:
    """The scheduler gave vCPU ``vcpu`` a pCPU (``run``) or took it away: a vCPU runs guest
    code only while it holds one, and stops at its next kernel entry when it loses it.
    Ordered by ``seq``, from the same counter as :class:`GateVcpus`."""

    endpoint: str
    vcpu: int
    run: bool
    seq: int


@dataclasses.dataclass(frozen=True)
class SizeMemory:
    """Create or grow a domain's memory file to ``nr_pages`` frames."""

    path: str
    nr_pages: int


@dataclasses.dataclass(frozen=True)
class ReleaseMemory:
    path: str


@dataclasses.dataclass(frozen=True)
class PunchMemory:
    """A domain gave these pages back (``decrease_reservation``): punch them out of its
    memory file, so the host really gets the memory back. ``runs``: ``(first pfn, count)``."""

    path: str
    runs: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class WatchVcpu:
    """Watch the process running a domain's vCPUs: its death is the domain crashing. Its
    ``endpoint`` gets the domain's upcalls and gates from now on (find its route now)."""

    domid: int
    pid: int
    endpoint: str = ""


@dataclasses.dataclass(frozen=True)
class ConsoleLine:
    """``CONSOLEIO_write``: text for the hypervisor's own console (its log)."""

    domid: int
    text: str


Effect = (Deliver | GateVcpus | RunVcpu | SizeMemory | ReleaseMemory | PunchMemory
          | WatchVcpu | ConsoleLine)
