"""The guest kernel's block driver: one :class:`Blkfront` per ``device/vbd/<devid>``.

Like Linux's xen-blkfront probe, it walks the domain's ``device/vbd`` directory at boot,
wires each frontend to the kernel's resources (the grant table in the guest's own memory,
free guest pages, event channels through hypercalls) and watches each backend's ``state``.
Init programs reach a disk by name through ``GuestOS.disk("xvda")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.domain.blkfront import Blkfront, PagePool
from actors.domain.layout import PFN_FIRST_FREE
from actors.hypervisor.grants import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES
from actors.memory import Mapping
from protocols.blkif import vdev_to_devid
from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall

WatchFn = Callable[[str, str, Callable[[], None]], None]  # (path, token, handler)


class BlockDevices:
    def __init__(self, memory: Mapping, nr_pages: int, hypercall: Callable[..., Any],
                 xs: Any) -> None:
        self.table = GrantTable(memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        self.grefs = GrantRefAllocator(self.table.nr_entries)
        self.pages = PagePool(memory.page, PFN_FIRST_FREE, nr_pages - PFN_FIRST_FREE)
        self.hypercall = hypercall
        self.xs = xs
        self.fronts: dict[int, Blkfront] = {}

    def probe(self, domid: int, watch: WatchFn) -> list[int]:
        """Create a frontend for every vbd the toolstack gave this domain; returns devids."""
        try:
            devids = [int(d) for d in self.xs.directory("device/vbd")]
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return []
            raise
        for devid in sorted(devids):
            front = Blkfront(domid=domid, vdev=devid, pages=self.pages, gnttab=self.table,
                             grefs=self.grefs, evtchn_alloc_unbound=self._alloc_unbound,
                             notify=self._notify, xs=self.xs, evtchn_close=self._close)
            front.probe()
            self.fronts[devid] = front
            watch(f"{front.backend}/state", f"vbd-{devid}", front.on_backend_changed)
        return sorted(devids)

    def upcall(self, ports: list[int]) -> None:
        for front in self.fronts.values():
            if front.evtchn is not None and front.evtchn in ports:
                front.on_event()

    def disk(self, name: str) -> Blkfront:
        """The frontend of ``name`` ("xvda") or a devid number."""
        devid = vdev_to_devid(name) if isinstance(name, str) else int(name)
        front = self.fronts.get(devid)
        if front is None:
            raise XenError(Errno.ENODEV, f"no virtual disk {name}")
        return front

    def statistics(self) -> dict[int, dict]:
        return {devid: f.statistics() for devid, f in self.fronts.items()}

    def _alloc_unbound(self, remote_dom: int) -> int:
        return self.hypercall(Hypercall.event_channel_op, EvtchnOp.alloc_unbound,
                              dom=DOMID_SELF, remote_dom=remote_dom)["port"]

    def _notify(self, port: int) -> None:
        self.hypercall.post(Hypercall.event_channel_op, EvtchnOp.send, port=port)

    def _close(self, port: int) -> None:
        self.hypercall(Hypercall.event_channel_op, EvtchnOp.close, port=port)
