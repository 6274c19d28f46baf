"""Dom0 backends' grant mappings (blkback, netback): map a frontend's granted page, unmap it.

Xen's ``GNTTABOP_map_grant_ref`` answers with the granter's memory file and the frame; the
backend maps exactly that 4 KiB page (DESIGN.md "Memory"). ``GNTTABOP_unmap_grant_ref``
lets the granter end its grant again (while mapped, ``gnttab_end_foreign_access`` fails).
:func:`map_rings` and :func:`unmap_rings` are ``xenbus_map_ring_valloc`` (plus the
``bind_interdomain`` that goes with it) and ``xenbus_unmap_ring_vfree``.
"""

from __future__ import annotations

from typing import Any

from actors.memory import Mapping
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTMAP, GNTST
from protocols.hypercall import EvtchnOp, GnttabOp, Hypercall
from protocols.page import PAGE_SHIFT

Rings = tuple[tuple[int, memoryview], ...]  # (gref, page) of each mapped ring


class GrantMaps:
    """A backend's maps of one frontend domain's granted pages (one device's worth)."""

    def __init__(self, hv: Any, domid: int) -> None:
        self.hv, self.domid = hv, domid
        self._maps: dict[int, list[tuple[int, int, Mapping]]] = {}  # gref -> (handle, bus, map)

    def map(self, gref: int, readonly: bool) -> memoryview:
        flags = GNTMAP.host_map | (GNTMAP.readonly if readonly else 0)
        got = self.hv(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                      ops=[{"host_addr": 0, "flags": int(flags), "ref": gref, "dom": self.domid}])[0]
        if got["status"] != GNTST.okay:
            raise XenError(Errno.EINVAL, f"gref {gref} of domain {self.domid}: "
                                         f"GNTST {got['status']}")
        frame = got["dev_bus_addr"] >> PAGE_SHIFT
        try:
            mapping = Mapping(got["path"], frame, 1, readonly=readonly)
        except BaseException:
            self._unmap_handle(got["handle"], got["dev_bus_addr"])
            raise
        self._maps.setdefault(gref, []).append((got["handle"], got["dev_bus_addr"], mapping))
        return mapping.page(frame)

    def unmap(self, gref: int, page: memoryview) -> None:
        stack = self._maps.get(gref)
        if not stack:
            return
        handle, bus, mapping = stack.pop()
        if not stack:
            del self._maps[gref]
        page.release()
        mapping.close()
        self._unmap_handle(handle, bus)

    def _unmap_handle(self, handle: int, bus: int) -> None:
        try:
            self.hv(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
                    ops=[{"host_addr": 0, "dev_bus_addr": bus, "handle": handle}])
        except XenError:
            pass  # the granter is gone: Xen drops its mappings with it

    def unmap_all(self) -> None:
        for gref, stack in list(self._maps.items()):
            for handle, bus, mapping in stack:
                mapping.close()
                self._unmap_handle(handle, bus)
        self._maps.clear()


def map_rings(hv: Any, domid: int, grefs: tuple[int, ...], evtchn: int
              ) -> tuple[GrantMaps, Rings, int]:
    """Map ``domid``'s ring pages ``grefs`` writable and bind its port ``evtchn``, all or
    nothing (XenError, nothing held). Returns the maps, the rings and Dom0's port."""
    grants, rings = GrantMaps(hv, domid), []
    try:
        for gref in grefs:
            rings.append((gref, grants.map(gref, False)))
        port = hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain, remote_dom=domid,
                  remote_port=evtchn)["local_port"]
    except BaseException:
        unmap_rings(grants, tuple(rings))
        raise
    return grants, tuple(rings), port


def unmap_rings(grants: GrantMaps, rings: Rings) -> None:
    """Unmap the rings, and every grant their requests left mapped."""
    for gref, page in rings:
        grants.unmap(gref, page)
    grants.unmap_all()
