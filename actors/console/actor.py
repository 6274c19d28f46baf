"""xenconsoled's Ray shell: the only console file that knows about Ray.

It holds Dom0's credential with its own endpoint (``<host>/xenconsoled``), so the console
ports it binds raise their upcalls here, and its own xenstore connection, whose watch events
are pushed here as ``xs_event``. Everything else is :class:`ConsoleDaemon`.
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.console.daemon import ConsoleDaemon
from actors.transport.clients import host_clients
from actors.transport.raycall import Endpoint


@ray.remote(max_restarts=0)
class ConsoleActor(Endpoint):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        self.log = xlog.setup(host=host, component="xenconsoled", log_dir=log_dir)
        dom0 = host_clients(host, 0, dom0_secret, "xenconsoled", self.deliver, self.log)
        self.xs = dom0.xs
        self.daemon = ConsoleDaemon(host, dom0.hv, self.xs, log_dir, log=self.log)
        self.daemon.start()
        self.log.info("xenconsoled up")

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        self.daemon.upcall(domid, ports)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_tail(self, name: str, n: int) -> list[str]:
        return self.daemon.tail(name, n)

    def on_log_path(self, name: str) -> str:
        return self.daemon.log_path(name)

    def on_statistics(self) -> dict[str, Any]:
        return self.daemon.statistics()
