"""blkback's shell: the only blkback file that knows about Ray.

A xenbus backend shell (actors/xenbus/backend_shell.py: Dom0's credential on its own
endpoint ``<host>/blkback``, the shared core and executor, restart recovery) with blkback's
driver (xenbus.py) and, as the data path, ring.py's :class:`BlkbackRings`.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.blkback.ring import BlkbackRings
from actors.blkback.xenbus import BlkbackDriver
from actors.transport.clients import HostClients
from actors.transport.raycall import RayEndpoint
from actors.xenbus.backend_shell import BackendShell, backend_clients


class BlkbackShell(BackendShell):
    """blkback over Dom0's clients on endpoint ``<host>/blkback`` (the in-process test host
    runs this very class; :class:`BlkbackActor` is it as a Ray actor)."""

    component = "blkback"

    def __init__(self, host: str, clients: HostClients, log: Any) -> None:
        self.rings = BlkbackRings(clients.hv)
        super().__init__(clients, log, BlkbackDriver(), self.rings)
        self.start()


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class BlkbackActor(RayEndpoint, BlkbackShell):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        super().__init__(host, *backend_clients(host, dom0_secret, self.component,
                                                self.deliver, log_dir))
