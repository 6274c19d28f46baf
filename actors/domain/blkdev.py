"""The guest kernel's block driver: one :class:`Blkfront` per ``device/vbd/<devid>``.

Like Linux's xen-blkfront probe, it walks the domain's ``device/vbd`` directory at boot,
wires each frontend to the kernel's resources (the grant table in the guest's own memory,
free guest pages, event channels through hypercalls) and watches each backend's ``state``.
Init programs reach a disk by name through ``GuestOS.disk("xvda")``, as a :class:`GuestDisk`:
each request they make enters the kernel first, so it is a scheduling point where a paused or
suspending vCPU stops (a Linux task's I/O is a system call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.domain.blkfront import Blkfront
from actors.memory import Mapping
from actors.xenbus.frontend import FrontendDevices, PageAllocator, PagePool
from protocols.blkif import vdev_to_devid
from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE


class BlockDevices(FrontendDevices):
    """Every vbd of the domain. It builds the kernel's grant table (in the guest's own
    frames), gref allocator and free-page pool, which the other drivers share."""

    devicetype = "vbd"

    def __init__(self, memory: Mapping, nr_pages: int, hypercall: Callable[..., Any],
                 xs: Any, *, pages: PageAllocator | None = None) -> None:
        """``pages``: the kernel's page pool; by default every page from PFN_FIRST_FREE."""
        table = GrantTable(memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        if pages is None:
            pages = PagePool(memory.page, PFN_FIRST_FREE, nr_pages - PFN_FIRST_FREE)
        super().__init__(pages=pages, gnttab=table, grefs=GrantRefAllocator(table.nr_entries),
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


class GuestDisk:
    """A disk as an init program holds it: the :class:`Blkfront`, whose requests enter the
    kernel (``enter``, the run gate) before they are made. What it returns (a
    :class:`~actors.domain.blkfront.BlkRequest`, data) and every other attribute are the
    frontend's."""

    __slots__ = ("front", "_enter")

    def __init__(self, front: Blkfront, enter: Callable[[], None]) -> None:
        self.front, self._enter = front, enter

    def submit_read(self, sector: int, nbytes: int) -> Any:
        self._enter()
        return self.front.submit_read(sector, nbytes)

    def submit_write(self, sector: int, data: bytes) -> Any:
        self._enter()
        return self.front.submit_write(sector, data)

    def submit_flush(self) -> Any:
        self._enter()
        return self.front.submit_flush()

    def submit_discard(self, sector: int, nr_sectors: int) -> Any:
        self._enter()
        return self.front.submit_discard(sector, nr_sectors)

    def read(self, sector: int, nbytes: int, timeout: float | None = None) -> bytes:
        self._enter()
        return self.front.read(sector, nbytes, timeout)

    def write(self, sector: int, data: bytes, timeout: float | None = None) -> None:
        self._enter()
        self.front.write(sector, data, timeout)

    def flush(self, timeout: float | None = None) -> None:
        self._enter()
        self.front.flush(timeout)

    def discard(self, sector: int, nr_sectors: int, timeout: float | None = None) -> None:
        self._enter()
        self.front.discard(sector, nr_sectors, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.front, name)
