"""``memory_op`` (hypercall 12, reference 13): a domain's reservation, its memory map, and
Dom0's foreign maps, over the domain table's p2m (:mod:`.p2m`). Part of the hypervisor's
pure state machine (:mod:`.state` dispatches here); it returns the reply and the effects.

The reservation ops follow ``xen/common/memory.c`` ``do_memory_op``:

* ``populate_physmap`` / ``increase_reservation`` fill the extents named in
  ``extent_start`` (gpfns), each within ``max_pages`` and the host's free pages, and
  ``decrease_reservation`` empties them; the page goes back to the host (a
  :class:`~.effects.PunchMemory` of the memory file). They return the number of extents
  done, stopping at the first they cannot do.
* Every refusal is "0 extents done", never an errno, as Xen's ``do_memory_op`` returns
  ``start_extent`` for all of them: another domain's reservation from an unprivileged caller
  (``xsm_memory_adjust_reservation``), a domain that does not exist, ``nr_extents`` beyond
  what a continuation encodes, an ``extent_order`` above the caller's ``max_order`` (9 for a
  DomU, 18 for Dom0: ``memop-max-order``'s x86 defaults).
* A page the domain may not give back stops a decrease there: a grant-table frame (Xen's are
  its own pages, not the guest's: ``guest_remove_page`` fails), and a page another domain
  maps through a grant or a foreign map (Xen would keep the frame alive until the last
  mapping went; here the frame is the file's page, and punching it would take it from under
  the mapper).

Decisions:

* An empty ``extent_start`` to ``populate_physmap``/``increase_reservation`` places the
  pages at the domain's lowest holes (as ``increase_reservation`` with a null handle gives a
  PV guest pages it places itself); test hosts and Dom0's boot use it. An empty one to
  ``decrease_reservation`` does nothing (Xen reads the list, which faults at once).
* ``memory_map`` answers the map the toolstack set (``-ENOSYS`` if none: Linux then makes up
  one); ``set_memory_map`` is allowed on itself or, privileged, on another domain
  (``XSM_TARGET``), and sizes the memory file to the address space it defines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.hypervisor.domains import Domain, DomainTable
from actors.hypervisor.effects import Effect, PunchMemory, SizeMemory
from actors.hypervisor.grants import Grants
from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_SELF, MemoryOp, XenMapSpace
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES

MEMOP_EXTENT_SHIFT = 6  # xen/include/xen/hypercall.h: cmd[:6] is the start extent
MAX_NR_EXTENTS = 0xFFFFFFFF >> MEMOP_EXTENT_SHIFT  # "too large to encode a continuation"
DOMU_MAX_ORDER = 9  # CONFIG_DOMU_MAX_ORDER (x86: PAGETABLE_ORDER)
CTLDOM_MAX_ORDER = 18  # CONFIG_CTLDOM_MAX_ORDER = PAGEALLOC_MAX_ORDER (x86: 2 * 9)
_GNTTAB = range(GNTTAB_FIRST_PFN, GNTTAB_FIRST_PFN + NR_GNTTAB_FRAMES)

Result = tuple[Any, list[Effect]]
MarkDirty = Callable[[int, list[int], int], None]  # (domid, extents, order)


def memory_op(table: DomainTable, grants: Grants, foreign: dict[int, set[int]],
              memory_path: Callable[[int], str], mark_dirty: MarkDirty,
              dom: Domain, sub: int, a: dict) -> Result:
    """One ``memory_op`` of ``dom``; ``foreign``: the pfns of each domain Dom0 has mapped
    with ``add_to_physmap_batch`` (updated here); ``mark_dirty(domid, extents, order)``:
    ``paging_mark_dirty`` for the pfns a reservation change populates or empties (Xen's p2m
    marks an entry as it changes it), so a live save sends it again."""
    if sub in (MemoryOp.current_reservation, MemoryOp.maximum_reservation):
        target = _target(table, dom, a["domid"])
        pages = target.tot_pages if sub == MemoryOp.current_reservation else target.max_pages
        return (pages, None), []  # memory_op returns counts as its rc (13)
    if sub == MemoryOp.maximum_gpfn:  # a saver sizes its p2m with it (xc_domain_nr_gpfns)
        return (max(_target(table, dom, a["domid"]).p2m.max_pfn(), 0), None), []
    if sub in (MemoryOp.populate_physmap, MemoryOp.increase_reservation,
               MemoryOp.decrease_reservation):
        return _reservation(table, grants, foreign, memory_path, mark_dirty, dom, sub, a)
    if sub == MemoryOp.memory_map:
        if not dom.p2m.e820:
            raise XenError(Errno.ENOSYS, "no memory map was set for this domain")
        n = min(a["nr_entries"], len(dom.p2m.e820))
        return {"nr_entries": n, "map": dom.p2m.e820[:n]}, []
    if sub == MemoryOp.set_memory_map:
        target = _target(table, dom, a["domid"])
        nr_pfns = table.set_memory_map(target.domid, a["map"])
        grants.attach(target.domid, nr_pfns, target.p2m.bits)
        return 0, [SizeMemory(memory_path(target.domid), nr_pfns)]
    if sub == MemoryOp.add_to_physmap_batch:
        if not dom.privileged:
            raise XenError(Errno.EPERM, "privileged operation")
        if a["space"] != XenMapSpace.gmfn_foreign:
            raise XenError(Errno.EINVAL, "only XENMAPSPACE_gmfn_foreign is emulated")
        other = table.get(a["foreign_domid"])
        p2m = other.p2m
        # a hole has no page to map (p2m_add_foreign: get_page_from_gfn fails, -EINVAL)
        errs = [0 if i in p2m else -Errno.EINVAL for i in a["idxs"]]
        foreign.setdefault(other.domid, set()).update(i for i in a["idxs"] if i in p2m)
        return {"errs": errs, "path": memory_path(other.domid)}, []
    raise XenError(Errno.ENOSYS)


def _target(table: DomainTable, dom: Domain, domid: int) -> Domain:
    """``DOMID_SELF`` or the caller itself; another domain only for a privileged caller."""
    if domid in (DOMID_SELF, dom.domid):
        return dom
    if not dom.privileged:
        raise XenError(Errno.EPERM, "privileged operation")
    return table.get(domid)


def _reservation(table: DomainTable, grants: Grants, foreign: dict[int, set[int]],
                 memory_path: Callable[[int], str], mark_dirty: MarkDirty,
                 dom: Domain, sub: int, a: dict) -> Result:
    """``increase_reservation``, ``decrease_reservation``, ``populate_physmap``: the extents
    done as the rc; a refusal is 0 (module docstring)."""
    nothing: Result = (0, None), []
    order, nr = a["extent_order"], a["nr_extents"]
    if nr > MAX_NR_EXTENTS or order > (CTLDOM_MAX_ORDER if dom.privileged else DOMU_MAX_ORDER):
        return nothing
    if a["domid"] in (DOMID_SELF, dom.domid):
        target = dom
    elif not dom.privileged:
        return nothing  # xsm_memory_adjust_reservation: -EPERM, answered as 0 done
    else:
        target = table.domains.get(a["domid"])
        if target is None or target.dying:
            return nothing
    extents = a["extent_start"][:nr]  # a list shorter than nr_extents "faults" at its end
    p2m, path = target.p2m, memory_path(target.domid)
    if sub == MemoryOp.decrease_reservation:
        held = grants.pinned_frames(target.domid) | foreign.get(target.domid, set())

        def keep(gpfn: int, size: int) -> bool:
            return any(pfn in _GNTTAB or pfn in held for pfn in range(gpfn, gpfn + size))

        done, runs = table.decrease_extents(target.domid, extents, order, keep)
        mark_dirty(target.domid, extents[:done], order)
        return (done, None), [PunchMemory(path, tuple(runs))] if runs else []
    before = p2m.nr_pfns
    if a["extent_start"]:
        done = table.populate_extents(target.domid, extents, order)
        mark_dirty(target.domid, extents[:done], order)
    else:  # no list: the lowest holes (module docstring)
        done = table.populate(target.domid, nr << order) >> order
    if not done:
        return nothing
    grants.attach(target.domid, p2m.nr_pfns, p2m.bits)
    grew = p2m.nr_pfns > before
    return (done, None), [SizeMemory(path, p2m.nr_pfns)] if grew else []
