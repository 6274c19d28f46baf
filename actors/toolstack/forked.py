"""The default launcher of a Ray host: each domain in a process its host's fork server forks.

A fork from the zygote, which has imported the kernel, takes milliseconds, so nothing needs
starting ahead of need (the ``ray`` launcher's pool, :mod:`.pool`, does that for Ray
workers, which take 2 s to start). The process is forked when xenstored is introduced to the
domain (its endpoint, ``h1/forkserver/vm-1a2b``, is where the domain's watch events go) and
bound to the domain when its vCPUs are handed over, as the pool's are.
"""

from __future__ import annotations

import threading
from typing import Any

from actors.transport import PeerGone, Transport
from actors.transport.naming import FORKSERVER, actor_name, forked_component

BIND_TIMEOUT_S = 60.0


class ForkLauncher:
    """:class:`~actors.toolstack.actor.Launcher` through ``host``'s fork server."""

    def __init__(self, host: str, transport: Transport) -> None:
        self.host, self.transport = host, transport
        self.server = actor_name(host, FORKSERVER)
        self._domains: dict[int, str] = {}  # domid -> the component of its process
        self._lock = threading.Lock()
        self.taken = 0
        transport.prefetch(self.server)  # the first create does not wait for its lookup

    def take(self, domid: int) -> str:
        component = self.transport.call(self.server, "spawn")
        with self._lock:
            self._domains[domid] = component
            self.taken += 1
        return actor_name(self.host, forked_component(component))

    def start(self, domid: int, secret: str, memory_path: str, resume: bool = False) -> int:
        with self._lock:
            component = self._domains[domid]
        return self.transport.call(actor_name(self.host, forked_component(component)), "bind",
                                   domid, secret, memory_path, resume, timeout=BIND_TIMEOUT_S)

    def kill(self, domid: int) -> None:
        with self._lock:
            component = self._domains.pop(domid, None)
        if component is not None:
            try:
                self.transport.call(self.server, "kill", component)
            except PeerGone:  # the host is going away: its fork server kills them all
                pass

    def adopt(self, endpoints: dict[int, str]) -> None:
        """The processes of the domains adopted are theirs again; any other process the fork
        server knows (one forked for a domain half built when the agent died) is killed."""
        keep = {endpoint.rpartition("/")[2]: domid for domid, endpoint in endpoints.items()}
        for component in self.transport.call(self.server, "processes"):
            if component in keep:
                with self._lock:
                    self._domains[keep[component]] = component
            else:
                self.transport.call(self.server, "kill", component)

    def close(self) -> None:
        """Nothing started ahead to stop: the domains' processes are the domains'."""

    def statistics(self) -> dict[str, Any]:
        """The pool's keys (:mod:`.pool`): nothing is kept ahead, every create is served."""
        with self._lock:
            return {"launcher": "fork", "size": 0, "idle": [], "starting": 0,
                    "taken": self.taken, "missed": 0}
