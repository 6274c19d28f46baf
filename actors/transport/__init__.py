"""The transport seam: every message between actors goes through here.

DESIGN.md: hypercalls, upcalls, xenstore traffic and migration records all cross one small
interface, :class:`Transport`. The components do not know which one they hold; they name
their peers by actor name (``h1/hypervisor``, ``h1/dom3``, :mod:`.naming`) and never hold Ray
handles. The family:

* :mod:`.raycall`: :class:`~.raycall.RayTransport`, plain Ray actor calls, and the
  :class:`~.raycall.Endpoint` every actor's shell mixes in;
* :mod:`.hvpipe` and :mod:`.samehost`: the same-host fast path, a shared-memory pipe to the
  host's hypervisor carrying a process's hypercalls up and its upcalls down;
* :mod:`.hypercall_client`, :mod:`.xs_client` and :mod:`.clients`: what a process holds to
  make hypercalls and talk to xenstored;
* :mod:`.naming` and :mod:`.launch`: actor names, placement on hosts, the Ray environment,
  and starting an actor of a given kind.
"""

from __future__ import annotations

import os
from typing import Any, Protocol


class PeerGone(Exception):
    """The destination actor does not exist (any more), or died during the call."""


class Transport(Protocol):
    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        """Request/response: returns what the destination's handler returned."""

    def send(self, dest: str, kind: str, *args: Any) -> None:
        """One-way: like an interrupt, nobody waits and a dead destination is ignored."""

    def forget(self, dest: str) -> None:
        """Drop any cached route to ``dest`` (it was destroyed or restarted)."""

    def prefetch(self, dest: str) -> None:
        """Find the route to ``dest`` now, in the background, so that the first message to
        it does not wait for the lookup (a Ray name lookup takes 0.1-0.4 s here)."""


class Endpoint:
    """What every actor's shell mixes in: one entry point, ``deliver(kind, *args)``, which
    calls ``self.on_<kind>(*args)``. The Ray transport calls it remotely; the in-process test
    host (``tests/inprocess.py``) calls the same shells directly."""

    def deliver(self, kind: str, *args: Any) -> Any:
        handler = getattr(self, f"on_{kind}", None)
        if handler is None:
            raise ValueError(f"{type(self).__name__} has no handler for {kind!r}")
        return handler(*args)

    def on_process(self) -> dict[str, Any]:
        """Where this actor runs: its OS pid (``xenray list --json`` shows it), and the pid of
        its Ray node's raylet, whose every worker process belongs to the same host (what a
        fence of that host kills: ``cluster.fault.processes``)."""
        return {"pid": os.getpid(), "raylet_pid": int(os.environ.get("RAY_RAYLET_PID", 0))}
