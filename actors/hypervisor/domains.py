"""The hypervisor's domain table: ids, pause counts, shutdown latching, life cycle.

Pure bookkeeping following ``xen/common/domain.c`` and ``domid.c`` (xen-reference.md 1,
12.2): domids are allocated upward from the last one handed out, wrapping to 1, never 0
twice in a row; a new domain starts with one controller pause; pauses are reference
counted (above 255 -EOVERFLOW, below 0 -EINVAL); only the first shutdown code sticks; a
destroyed domain reports ``dying`` only once it is dead, and lingers as a zombie while
other domains still map pages it granted.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import secrets
from collections.abc import Callable

from actors.hypervisor.p2m import P2M, runs_of
from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_ANY, DOMID_FIRST_RESERVED, DomInfoFlag, dominf_flags
from protocols.page import PAGE_SIZE

MAX_PAUSE_COUNT = 255
E820_RAM = 1  # xen/arch/x86/include/asm/e820.h
MAX_PFNS = 1 << 32  # the largest address space a domain may have here: 16 TiB
MAX_PAGES_FIELD = 0xFFFFFFFF  # struct domain's unsigned int max_pages


class Dying(enum.IntEnum):
    """``d->is_dying`` (``xen/include/xen/sched.h``)."""

    ALIVE = 0
    DYING = 1
    DEAD = 2




@dataclasses.dataclass
class Domain:
    """One domain's hypervisor-side state. Mutated only through :class:`DomainTable`."""

    domid: int
    secret: str
    handle: bytes = bytes(16)  # the toolstack's UUID
    hvm: bool = False
    privileged: bool = False
    max_vcpus: int = 1
    online_vcpus: int = 1
    max_pages: int = 0
    tot_pages: int = 0
    pause_count: int = 1  # creation leaves one controller pause (12.2)
    shutdown_code: int | None = None
    is_shutdown: bool = False
    dying: Dying = Dying.ALIVE
    p2m: P2M = dataclasses.field(default_factory=P2M, repr=False)  # its populated pfns

    @property
    def paused(self) -> bool:
        return self.pause_count > 0

    def info_flags(self, vcpus: tuple[bool, bool] | None = None) -> int:
        """``getdomaininfo`` flags, with the shutdown code in bits 16..23. ``vcpus``: the
        scheduler's (any vCPU running, every online vCPU blocked); None for a domain it does
        not run (Dom0: running)."""
        flags = DomInfoFlag(0)
        if self.dying is Dying.DEAD:
            flags |= DomInfoFlag.dying
        if self.hvm:
            flags |= DomInfoFlag.hvm_guest
        if self.is_shutdown:
            flags |= DomInfoFlag.shutdown
        if self.paused:
            flags |= DomInfoFlag.paused
        if self.online_vcpus > 0 and self.dying is Dying.ALIVE:
            # as Xen's getdomaininfo, from the vCPUs whatever the domain's pause: a paused
            # domain whose vCPUs had blocked shows b (pausing leaves _VPF_blocked alone)
            running, blocked = vcpus if vcpus is not None else (
                not self.paused and not self.is_shutdown, False)
            if running:
                flags |= DomInfoFlag.running
            if blocked:
                flags |= DomInfoFlag.blocked
        return dominf_flags(flags, self.shutdown_code or 0)


class DomainTable:
    """All domains of one host and the host's memory budget, in pages.

    No per-domain operation looks at the other domains: the pages given out are a running
    total (Xen's ``total_pages`` against the heap), and a domid is searched for only from
    the last one handed out (``domids_probed`` counts the candidates looked at)."""

    def __init__(self, *, host_pages: int) -> None:
        self.host_pages = host_pages
        self.pressure_pages = 0  # taken by the host outside Xen (a memory-pressure fault)
        self.domains: dict[int, Domain] = {}
        self._last_domid = 0
        self._allocated = 0  # sum of every domain's tot_pages
        self.domids_probed = 0

    # -- creation and destruction -------------------------------------------------------

    def create(self, *, domid: int = DOMID_ANY, privileged: bool = False, hvm: bool = False,
               max_vcpus: int = 1, handle: bytes = bytes(16)) -> Domain:
        """``XEN_DOMCTL_createdomain``: a new domain, paused once."""
        if domid == DOMID_ANY:
            domid = self._alloc_domid()
        elif not 0 <= domid < DOMID_FIRST_RESERVED:
            raise XenError(Errno.EINVAL, f"domid {domid} is reserved")
        elif domid in self.domains:
            raise XenError(Errno.EEXIST, f"domid {domid} is in use")
        if not 1 <= max_vcpus <= 128:
            raise XenError(Errno.EINVAL, f"max_vcpus {max_vcpus}")
        dom = Domain(domid=domid, secret=secrets.token_hex(16), handle=handle, hvm=hvm,
                     privileged=privileged, max_vcpus=max_vcpus, online_vcpus=max_vcpus)
        self.domains[domid] = dom
        if domid != 0:
            self._last_domid = domid
        return dom

    def _alloc_domid(self) -> int:
        """``domid_alloc`` with DOMID_ANY: upward from last+1 through 0x7FEF, then from 1."""
        for domid in itertools.chain(range(self._last_domid + 1, DOMID_FIRST_RESERVED),
                                     range(1, self._last_domid + 1)):
            self.domids_probed += 1
            if domid not in self.domains:
                return domid
        raise XenError(Errno.ENOSPC, "no free domid")

    def get(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None or dom.dying is Dying.DEAD:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        return dom

    def kill(self, domid: int) -> Domain:
        """``domain_kill``: alive -> dying; the caller tears down, then calls :meth:`reap`."""
        dom = self.get(domid)
        if dom.domid == 0:
            raise XenError(Errno.EINVAL, "dom0 cannot be destroyed")
        dom.dying = Dying.DYING
        dom.pause_count = max(dom.pause_count, 1)
        return dom

    def reap(self, domid: int, *, zombie: bool) -> None:
        """Teardown done: the domain is dead; it stays listed only as a zombie."""
        dom = self.domains[domid]
        dom.dying = Dying.DEAD
        self._allocated -= dom.tot_pages
        dom.tot_pages = 0
        if not zombie:
            del self.domains[domid]

    # -- pause and shutdown ------------------------------------------------------------

    def pause(self, domid: int, *, caller: int) -> None:
        dom = self.get(domid)
        if domid == caller:
            raise XenError(Errno.EINVAL, "a domain cannot pause itself")
        if dom.pause_count >= MAX_PAUSE_COUNT:
            raise XenError(Errno.EOVERFLOW, "pause count overflow")
        dom.pause_count += 1

    def unpause(self, domid: int, *, caller: int) -> None:
        dom = self.get(domid)
        if domid == caller:
            raise XenError(Errno.EINVAL, "a domain cannot unpause itself")
        if dom.pause_count == 0:
            raise XenError(Errno.EINVAL, "domain is not paused")
        dom.pause_count -= 1

    def shutdown(self, domid: int, reason: int) -> bool:
        """``domain_shutdown``: latch the first code. Returns True if this call latched it."""
        dom = self.get(domid)
        if dom.shutdown_code is not None:
            return False
        dom.shutdown_code = reason
        dom.is_shutdown = True
        return True

    def resume(self, domid: int) -> None:
        """``XEN_DOMCTL_resumedomain``: clear the shutdown state and code."""
        dom = self.get(domid)
        dom.shutdown_code = None
        dom.is_shutdown = False

    # -- memory ------------------------------------------------------------------------

    @property
    def host_free_pages(self) -> int:
        return self.host_pages - self.pressure_pages - self._allocated

    def press(self, pages: int) -> int:
        """Memory pressure: the host takes up to ``pages`` of its free memory away from Xen
        (0 gives it all back), so allocations see -ENOMEM; returns the pages taken."""
        if pages < 0:
            raise XenError(Errno.EINVAL, "negative memory pressure")
        self.pressure_pages = 0
        self.pressure_pages = min(pages, self.host_free_pages)
        return self.pressure_pages

    def set_max_pages(self, domid: int, max_pages: int) -> None:
        """``XEN_DOMCTL_max_mem``: lowering below tot_pages is allowed (13): the domain then
        gets no page until it has given enough back. ``d->max_pages`` is an unsigned int:
        a larger value is clamped to it."""
        if max_pages < 0:
            raise XenError(Errno.EINVAL, "negative max_mem")
        self.get(domid).max_pages = min(max_pages, MAX_PAGES_FIELD)

    def set_memory_map(self, domid: int, e820: list[dict[str, int]]) -> int:
        """``XENMEM_set_memory_map``: the domain's e820 (libxl: one RAM entry up to maxmem,
        ``xc_domain_set_memmap_limit``). The end of its highest RAM entry is the domain's
        address space (:mod:`.p2m`), which only grows: a map ending below it is EINVAL (the
        guest maps its memory file, which cannot shrink under it), as is one beyond
        :data:`MAX_PFNS`. Returns the address space's pfns."""
        p2m = self.get(domid).p2m
        end = max((e["addr"] + e["size"] for e in e820 if e["type"] == E820_RAM),
                  default=0) // PAGE_SIZE
        if end > MAX_PFNS:
            raise XenError(Errno.EINVAL, f"a memory map of {end} pages: at most {MAX_PFNS}")
        if end < p2m.nr_pfns:
            raise XenError(Errno.EINVAL, f"a memory map of {end} pages below the {p2m.nr_pfns} "
                                         "the domain has")
        p2m.grow(end)
        p2m.mapped, p2m.e820 = True, [dict(e) for e in e820]
        return end

    def populate(self, domid: int, nr_pages: int) -> int:
        """Grow a domain by ``nr_pages`` within max_pages and the host budget, at its lowest
        holes (a domain whose memory map was never set grows its address space as needed);
        returns done."""
        dom = self.get(domid)
        p2m = dom.p2m
        want = max(0, min(nr_pages, dom.max_pages - dom.tot_pages, self.host_free_pages))
        runs = p2m.lowest_holes(want)
        short = want - sum(count for _, count in runs)
        if short and not p2m.mapped:
            runs.append((p2m.nr_pfns, short))
            p2m.grow(p2m.nr_pfns + short)
        for first, count in runs:
            p2m.fill(first, count)
        done = p2m.tot_pages - dom.tot_pages
        dom.tot_pages = p2m.tot_pages
        self._allocated += done
        return done

    def populate_extents(self, domid: int, extents: list[int], order: int) -> int:
        """``populate_physmap`` of these extents (:meth:`P2M.populate`), each within
        max_pages and the host budget (``assign_pages``: "Over-allocation"); the extents
        done."""
        dom = self.get(domid)

        def room(size: int) -> bool:
            if dom.max_pages - dom.tot_pages < size or self.host_free_pages < size:
                return False
            dom.tot_pages += size
            self._allocated += size
            return True

        return dom.p2m.populate(extents, order, room)

    def decrease_extents(self, domid: int, extents: list[int], order: int,
                         keep: Callable[[int, int], bool]) -> tuple[int, list[tuple[int, int]]]:
        """``decrease_reservation`` of these extents (:meth:`P2M.decrease`; ``keep`` names
        the pages the domain may not give back); the extents done and the ``(first pfn,
        count)`` runs freed, whose memory the host may take back."""
        dom = self.get(domid)
        freed: list[tuple[int, int]] = []
        done = dom.p2m.decrease(extents, order, keep, freed)
        pages = dom.tot_pages - dom.p2m.tot_pages
        dom.tot_pages = dom.p2m.tot_pages
        self._allocated -= pages
        return done, runs_of(freed)
