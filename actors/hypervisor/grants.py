"""The hypervisor's grant tables: ``grant_table_op`` over each domain's own memory.

Each domain's v1 grant table lives in its memory at pfns 4..11 (``GNTTAB_FIRST_PFN``,
``NR_GNTTAB_FRAMES`` of :mod:`protocols.pv_layout`; ``setup_table`` reports them, as Xen reports its grant frames), so the
granter writes entries with plain stores and the hypervisor reads them and sets
``GTF_reading``/``GTF_writing`` in place (``protocols.gnttab_ops`` has Xen's rules). A
successful map answers with the granter's memory file and the frame, which is all the mapper
needs to ``mmap`` exactly that page. A destroyed domain whose pages are still mapped stays a
zombie until the last mapping goes.

Log-dirty (``gnttab_mark_dirty``): the hypervisor writes the granter's memory through its own
mapping, which the granter's dirty logging does not see, so each operation reports the pages
it wrote to ``mark_dirty(domid, pfn)``: the grant-table frame of every entry whose flags it
may have changed, the destination of a copy, and the page of a writable mapping released.
:meth:`Grants.writable_frames` lists the pages mapped writable right now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocols import gnttab_ops as ops
from protocols.errno import Errno, XenError
from protocols.gnttab import (ENTRIES_PER_FRAME, GNTST, GNTCOPY_dest_gref,
                              GNTCOPY_source_gref, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef,
                              GnttabUnmapGrantRef, GrantTable)
from protocols.hypercall import DOMID_SELF, GnttabOp
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES

Frames = Callable[[int, int, int], memoryview]  # (domid, first pfn, count) -> its pages
MarkDirty = Callable[[int, int], None]  # (domid, pfn): the hypervisor dirtied this page


def table_frame(ref: int) -> int:
    """The pfn of the grant-table frame holding entry ``ref``."""
    return GNTTAB_FIRST_PFN + ref // ENTRIES_PER_FRAME


class Grants:
    def __init__(self, frames: Frames, memory_path: Callable[[int], str],
                 mark_dirty: MarkDirty = lambda domid, pfn: None) -> None:
        self._frames = frames
        self._memory_path = memory_path
        self._mark_dirty = mark_dirty
        self._doms: dict[int, ops.DomainGrants] = {}
        self._pages: dict[int, int] = {}
        self._p2m: dict[int, bytearray] = {}
        self._maptrack: dict[int, ops.Maptrack] = {}
        self._unmapped_granters: set[int] = set()  # since unmapped_granters() last asked

    def attach(self, domid: int, nr_pages: int, p2m: bytearray | None = None) -> None:
        """The domain's memory is ``nr_pages`` pfns, of which ``p2m`` (one byte per pfn, 0:
        a hole; None: none) says which hold a page; its table is the frames at
        GNTTAB_FIRST_PFN. A granted frame must be one of its pages."""
        self._pages[domid] = nr_pages
        if p2m is not None:
            self._p2m[domid] = p2m
        if domid in self._doms:
            self._doms[domid].active.nr_pages = nr_pages
            self._doms[domid].active.p2m = self._p2m.get(domid)

    def lookup(self, domid: int) -> ops.DomainGrants | None:
        """A domain's grant state, mapped on first use (its memory file exists by then)."""
        g = self._doms.get(domid)
        nr_pages = self._pages.get(domid, 0)
        if g is None and nr_pages >= GNTTAB_FIRST_PFN + NR_GNTTAB_FRAMES:
            table = GrantTable(self._frames(domid, GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
            g = self._doms[domid] = ops.DomainGrants(
                table, ops.ActiveGrants(nr_pages, self._p2m.get(domid)))
        return g

    def maptrack(self, domid: int) -> ops.Maptrack:
        return self._maptrack.setdefault(domid, ops.Maptrack())

    def in_use(self, domid: int) -> bool:
        g = self._doms.get(domid)
        return g is not None and ops.granter_in_use(g.active)

    def release(self, domid: int) -> None:
        """``gnttab_release_mappings`` of a dying domain, then forget its maptrack."""
        mt = self.maptrack(domid)
        entries = [mt.entry(h) for h in mt.handles()]
        self._unmapped(entries, ops.release_mappings(self.lookup, mt))
        self._maptrack.pop(domid, None)

    def mappings(self, mapper: int) -> list[tuple[int, int, int]]:
        """``(granter, gref, GNTMAP flags)`` of every mapping ``mapper`` holds (read-only)."""
        mt = self._maptrack.get(mapper)
        if mt is None:
            return []
        return [(e.domid, e.ref, e.flags) for e in map(mt.entry, mt.handles()) if e is not None]

    def writable_frames(self, granter: int) -> set[int]:
        """The granter's pages some domain has mapped writable now (a backend may write them
        at any moment, unseen: dirty in every log-dirty round while mapped)."""
        g = self._doms.get(granter)
        return set() if g is None else ops.write_pinned_frames(g.active)

    def pinned_frames(self, granter: int) -> set[int]:
        """The granter's pages some domain maps through a grant now, read-only or writable
        (a page it may not give back: the mapper would lose it under its feet)."""
        g = self._doms.get(granter)
        return set() if g is None else ops.pinned_frames(g.active)

    def unmapped_granters(self) -> set[int]:
        """The granters some mapping of which was released since the last call: only these
        can have stopped being in use (a zombie that may go now)."""
        granters, self._unmapped_granters = self._unmapped_granters, set()
        return granters

    def _mark_entry(self, domid: int, ref: int) -> None:
        """The hypervisor may have written entry ``ref`` of ``domid``'s table."""
        if domid in self._pages and 0 <= ref < NR_GNTTAB_FRAMES * ENTRIES_PER_FRAME:
            self._mark_dirty(domid, table_frame(ref))

    def _unmapped(self, entries: list, results: list[ops.UnmapResult]) -> None:
        """Mark what unmapping ``entries`` wrote: their table frames, and each page that was
        mapped writable (``gnttab_mark_dirty`` in ``unmap_common_complete``)."""
        for e, r in zip(entries, results):
            if r.status == GNTST.okay:
                self._unmapped_granters.add(r.domid)
                if e is not None:
                    self._mark_entry(e.domid, e.ref)
                if r.dirty:
                    self._mark_dirty(r.domid, r.frame)

    def forget(self, domid: int) -> None:
        self._pages.pop(domid, None)
        self._p2m.pop(domid, None)
        g = self._doms.pop(domid, None)
        if g is not None:
            g.table.release()

    # -- grant_table_op ----------------------------------------------------------------

    def op(self, caller: int, privileged: bool, sub: int, elems: list[dict[str, Any]]) -> list:
        """One batch: the hypercall returns 0 and every element carries its own status."""
        if sub == GnttabOp.map_grant_ref:
            reqs = [GnttabMapGrantRef(e["host_addr"], e["flags"], e["ref"], e["dom"])
                    for e in elems]
            results = ops.map_batch(self.lookup, self.maptrack(caller), mapper=caller, ops=reqs)
            for q in reqs:  # GTF_reading/GTF_writing set in its entry (or set and undone)
                self._mark_entry(q.dom, q.ref)
            return [{"status": int(r.status), "handle": r.handle, "dev_bus_addr": r.dev_bus_addr,
                     "path": self._memory_path(q.dom) if r.status == GNTST.okay else None}
                    for q, r in zip(reqs, results)]
        if sub == GnttabOp.unmap_grant_ref:
            reqs = [GnttabUnmapGrantRef(e["host_addr"], e["dev_bus_addr"], e["handle"])
                    for e in elems]
            mt = self.maptrack(caller)
            entries = [mt.entry(q.handle) for q in reqs]  # gone once unmapped
            results = ops.unmap_batch(self.lookup, mt, ops=reqs)
            self._unmapped(entries, results)
            return [{"status": int(r.status)} for r in results]
        if sub == GnttabOp.copy:
            reqs = [GnttabCopy(GnttabCopyPtr(**e["source"]), GnttabCopyPtr(**e["dest"]),
                               e["len"], e["flags"]) for e in elems]
            statuses = ops.copy_batch(self.lookup, caller=caller, ops=reqs, memcpy=self._memcpy)
            for q in reqs:  # a gref side's flags were set while pinned, then cleared
                for ptr, gref in ((q.source, GNTCOPY_source_gref), (q.dest, GNTCOPY_dest_gref)):
                    if q.flags & gref:
                        domid = caller if ptr.domid == DOMID_SELF else ptr.domid
                        self._mark_entry(domid, ptr.u & 0xFFFFFFFF)
            return [{"status": int(s)} for s in statuses]
        if sub in (GnttabOp.setup_table, GnttabOp.query_size):
            return [self._table_info(caller, privileged, sub, e) for e in elems]
        raise XenError(Errno.ENOSYS)

    def _table_info(self, caller: int, privileged: bool, sub: int, e: dict) -> dict:
        dom = caller if e["dom"] == DOMID_SELF else e["dom"]
        if dom != caller and not privileged:
            return {"status": int(GNTST.permission_denied)}
        if self.lookup(dom) is None:
            return {"status": int(GNTST.bad_domain)}
        if sub == GnttabOp.query_size:
            return {"status": 0, "nr_frames": NR_GNTTAB_FRAMES,
                    "max_nr_frames": NR_GNTTAB_FRAMES}
        if e["nr_frames"] > NR_GNTTAB_FRAMES:
            return {"status": int(GNTST.general_error)}
        return {"status": 0, "frame_list": list(range(GNTTAB_FIRST_PFN,
                                                      GNTTAB_FIRST_PFN + e["nr_frames"]))}

    def _memcpy(self, plan: ops.CopyPlan) -> None:
        src = self._frames(plan.src_domid, plan.src_frame, 1)
        dst = self._frames(plan.dst_domid, plan.dst_frame, 1)
        dst[plan.dst_offset:plan.dst_offset + plan.len] = \
            src[plan.src_offset:plan.src_offset + plan.len]
        self._mark_dirty(plan.dst_domid, plan.dst_frame)
