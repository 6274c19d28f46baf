"""blkback's shell: the only blkback file that knows about Ray.

A xenbus backend shell (actors/xenbus/backend_shell.py: Dom0's credential on its own
endpoint ``<host>/blkback``, the shared core and executor, restart recovery) with blkback's
driver (xenbus.py) and, as the data path, ring.py's :class:`BlkbackRings`.

Disk faults (faults.py) are injected per vbd, named as blkback names it: the frontend's
``domid`` and the ``devid`` (the encoded vdev, 51712 for xvda): ``disk_fault`` arms one,
``disk_fault_clear`` takes it off, ``power_cut`` empties a volatile cache, ``disk_faults``
lists them and ``statistics`` counts what they injected (``fault_*``). A fault lasts as long
as the vbd in this blkback: a restarted blkback, or a vbd probed anew, has none.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.blkback.ring import BlkbackRings
from actors.blkback.xenbus import BlkbackDriver
from actors.runtime import THREADS, Runtime
from actors.transport.clients import HostClients
from actors.transport.raycall import RayEndpoint
from actors.xenbus.backend_io import Key
from actors.xenbus.backend_shell import BackendShell, backend_clients
from protocols.errno import Errno, XenError


def _vbd(domid: Any, devid: Any) -> Key:
    if isinstance(domid, bool) or isinstance(devid, bool) or \
            not isinstance(domid, int) or not isinstance(devid, int):
        raise XenError(Errno.EINVAL, f"a vbd is (domid, devid), two integers, not "
                                     f"({domid!r:.20}, {devid!r:.20})")
    return domid, devid


class BlkbackShell(BackendShell):
    """blkback over Dom0's clients on endpoint ``<host>/blkback`` (the in-process test host
    runs this very class; :class:`BlkbackActor` is it as a Ray actor). ``runtime`` gives the
    timers of responses an injected latency holds back."""

    component = "blkback"

    def __init__(self, host: str, clients: HostClients, log: Any,
                 runtime: Runtime = THREADS) -> None:
        self.rings = BlkbackRings(clients.hv, runtime)
        super().__init__(clients, log, BlkbackDriver(), self.rings)
        self.start()

    # -- injected disk faults --------------------------------------------------------------

    def on_disk_fault(self, domid: int, devid: int, spec: dict[str, Any]) -> dict[str, Any]:
        """Arm ``spec`` on vbd ``devid`` of ``domid`` in place of any fault it had; returns
        the spec as understood (``BlkbackRings.set_fault``)."""
        armed = self.rings.set_fault(_vbd(domid, devid), spec)
        self.log.info("disk fault armed", domid=domid, devid=devid, spec=armed)
        return armed

    def on_disk_fault_clear(self, domid: int, devid: int) -> dict[str, int]:
        """Take the vbd's fault off; what it injected."""
        injected = self.rings.clear_fault(_vbd(domid, devid))
        self.log.info("disk fault cleared", domid=domid, devid=devid, **injected)
        return injected

    def on_power_cut(self, domid: int, devid: int) -> dict[str, int]:
        """Cut the vbd's power: unflushed writes rolled back (``{"rolled_back": n, ...}``)."""
        cut = self.rings.power_cut(_vbd(domid, devid))
        self.log.warning("power cut", domid=domid, devid=devid, **cut)
        return cut

    def on_disk_faults(self) -> list[dict[str, Any]]:
        """Every vbd with a fault armed, its spec and what it injected."""
        return self.rings.faults()


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class BlkbackActor(RayEndpoint, BlkbackShell):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        super().__init__(host, *backend_clients(host, dom0_secret, self.component,
                                                self.deliver, log_dir))
