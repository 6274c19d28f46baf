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


@dataclasses.dataclass(frozen=True)
class GateVcpus:
    """Stop (``paused=True``) or restart a domain's vCPUs: its kernel stops making progress.

    One-way messages to a threaded actor are not ordered, so each carries ``seq``, increasing
    per hypervisor: the kernel ignores a gate older than the last one it applied."""

    endpoint: str
    paused: bool
    seq: int = 0


@dataclasses.dataclass(frozen=True)
class SizeMemory:
    """Create or grow a domain's memory file to ``nr_pages`` frames."""

    path: str
    nr_pages: int


@dataclasses.dataclass(frozen=True)
class ReleaseMemory:
    path: str


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


Effect = Deliver | GateVcpus | SizeMemory | ReleaseMemory | WatchVcpu | ConsoleLine
