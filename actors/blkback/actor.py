"""blkback's shell: the only blkback file that knows about Ray.

It holds Dom0's credential with its own endpoint (``<host>/blkback``), so the ports it binds
raise their upcalls here, and its own xenstore connection, whose watch events are pushed
here as ``xs_event``. The control path is the xenbus backend core with blkback's driver
(xenbus.py), run by the shared executor (actors/xenbus/backend_io.py); the data path is
ring.py's :class:`BlkbackRings`. Restartable (DESIGN.md "Failure semantics"): Ray re-runs
``__init__`` after a crash, and the executor's start recovers every device from xenstore;
the frontends reconnect (reference 19.4).
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.blkback.ring import BlkbackRings
from actors.blkback.xenbus import BlkbackDriver
from actors.transport import Endpoint
from actors.transport.clients import HostClients, host_clients
from actors.transport.raycall import RayEndpoint
from actors.xenbus.backend import XenbusBackend
from actors.xenbus.backend_io import BackendIO


class BlkbackShell(Endpoint):
    """blkback over Dom0's clients on endpoint ``<host>/blkback`` (the in-process test host
    runs this very class; :class:`BlkbackActor` is it as a Ray actor)."""

    def __init__(self, host: str, clients: HostClients, log: Any) -> None:
        self.log, self.xs = log, clients.xs
        self.rings = BlkbackRings(clients.hv)
        self.backend = BackendIO(XenbusBackend(BlkbackDriver()), clients.hv, self.xs,
                                 self.rings, log)
        self.backend.start()
        self.log.info("blkback up", devices=len(self.backend.core.devices))

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        self.rings.upcall(ports)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_statistics(self) -> dict[str, Any]:
        return self.backend.statistics()

    def close(self) -> None:
        self.backend.close()


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class BlkbackActor(RayEndpoint, BlkbackShell):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        log = xlog.setup(host=host, component="blkback", log_dir=log_dir)
        super().__init__(host, host_clients(host, 0, dom0_secret, "blkback", self.deliver, log),
                         log)
