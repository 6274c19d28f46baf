"""xenconsoled's shell: the only console file that knows about Ray.

It holds Dom0's credential with its own endpoint (``<host>/xenconsoled``), so the console
ports it binds raise their upcalls here, and its own xenstore connection, whose watch events
are pushed here as ``xs_event``. Everything else is :class:`ConsoleDaemon`.

Restartable (DESIGN.md "Failure semantics"): after a crash Ray runs ``__init__`` again on the
same endpoint, whose xenstore connection and watches xenstored kept, and the daemon's first
scan serves every running domain again; calls made meanwhile (``tail``) wait for it.
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.console.daemon import ConsoleDaemon
from actors.transport.clients import HostClients, host_clients
from actors.transport import Endpoint
from actors.transport.raycall import RayEndpoint


class ConsoleShell(Endpoint):
    """xenconsoled over Dom0's clients on endpoint ``<host>/xenconsoled`` (the in-process test
    host runs this very class; :class:`ConsoleActor` is it as a Ray actor)."""

    def __init__(self, host: str, clients: HostClients, log: Any, log_dir: str | None) -> None:
        self.log, self.xs = log, clients.xs
        self.daemon = ConsoleDaemon(host, clients.hv, self.xs, log_dir, log=log)
        self.daemon.start()
        self.log.info("xenconsoled up")

    def on_upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        self.daemon.upcall(domid, ports)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_tail(self, name: str, n: int) -> list[str]:
        return self.daemon.tail(name, n)

    def on_log_path(self, name: str) -> str:
        return self.daemon.log_path(name)

    def on_statistics(self) -> dict[str, Any]:
        return self.daemon.statistics()

    def close(self) -> None:
        self.daemon.close()


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ConsoleActor(RayEndpoint, ConsoleShell):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        log = xlog.setup(host=host, component="xenconsoled", log_dir=log_dir)
        super().__init__(host, host_clients(host, 0, dom0_secret, "xenconsoled", self.deliver,
                                            log), log, log_dir)
