"""The guest kernel's block driver: one :class:`Blkfront` per ``device/vbd/<devid>``.

Like Linux's xen-blkfront probe, it walks the domain's ``device/vbd`` directory at boot,
wires each frontend to the kernel's resources (the grant table in the guest's own memory,
free guest pages, event channels through hypercalls) and watches each backend's ``state``.
Init programs reach a disk by name through ``GuestOS.disk("xvda")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.domain.blkfront import Blkfront
from actors.memory import Mapping
from actors.xenbus.frontend import FrontendDevices, PagePool
from protocols.blkif import vdev_to_devid
from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE


class BlockDevices(FrontendDevices):
    """Every vbd of the domain. It builds the kernel's grant table (in the guest's own
    frames), gref allocator and free-page pool, which the other drivers share."""

    devicetype = "vbd"

    def __init__(self, memory: Mapping, nr_pages: int, hypercall: Callable[..., Any],
                 xs: Any) -> None:
        table = GrantTable(memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        super().__init__(pages=PagePool(memory.page, PFN_FIRST_FREE, nr_pages - PFN_FIRST_FREE),
                         gnttab=table, grefs=GrantRefAllocator(table.nr_entries),
                         hypercall=hypercall, xs=xs)
        self.fronts: dict[int, Blkfront] = {}

    def _new_front(self, domid: int, devid: int, **resources: Any) -> Blkfront:
        front = Blkfront(domid=domid, vdev=devid, **resources)
        front.probe()
        return front

    def disk(self, name: str) -> Blkfront:
        """The frontend of ``name`` ("xvda") or a devid number."""
        devid = vdev_to_devid(name) if isinstance(name, str) else int(name)
        front = self.fronts.get(devid)
        if front is None:
            raise XenError(Errno.ENODEV, f"no virtual disk {name}")
        return front

    def statistics(self) -> dict[int, dict]:
        return {devid: f.statistics() for devid, f in self.fronts.items()}
