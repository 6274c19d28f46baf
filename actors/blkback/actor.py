"""blkback's Ray shell: the only blkback file that knows about Ray.

It holds Dom0's credential with its own endpoint (``<host>/blkback``), so the ports it binds
raise their upcalls here, and its own xenstore connection, whose watch events are pushed
here as ``xs_event``. Restartable (DESIGN.md "Failure semantics"): Ray re-runs ``__init__``
after a crash, and :meth:`Blkback.start` recovers every device from xenstore; the frontends
reconnect (reference 19.4).
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.blkback.xenbus import Blkback
from actors.transport.clients import host_clients
from actors.transport.raycall import Endpoint


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class BlkbackActor(Endpoint):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        self.log = xlog.setup(host=host, component="blkback", log_dir=log_dir)
        dom0 = host_clients(host, 0, dom0_secret, "blkback", self.deliver, self.log)
        self.xs = dom0.xs
        self.blkback = Blkback(host, dom0.hv, self.xs, self.log)
        self.blkback.start()
        self.log.info("blkback up", devices=len(self.blkback.devices))

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        self.blkback.upcall(ports)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_statistics(self) -> dict[str, Any]:
        return self.blkback.statistics()
