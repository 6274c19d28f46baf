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

from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_ANY, DOMID_FIRST_RESERVED, DomInfoFlag, dominf_flags

MAX_PAUSE_COUNT = 255


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
    blocked: bool = False  # every online vCPU blocked (reported by the guest kernel)
    cpu_time_ns: int = 0

    @property
    def paused(self) -> bool:
        return self.pause_count > 0

    def info_flags(self) -> int:
        """``getdomaininfo`` flags, with the shutdown code in bits 16..23."""
        flags = DomInfoFlag(0)
        if self.dying is Dying.DEAD:
            flags |= DomInfoFlag.dying
        if self.hvm:
            flags |= DomInfoFlag.hvm_guest
        if self.is_shutdown:
            flags |= DomInfoFlag.shutdown
        if self.paused:
            flags |= DomInfoFlag.paused
        runnable = self.online_vcpus > 0 and not self.paused and not self.is_shutdown
        if runnable and self.dying is Dying.ALIVE:
            flags |= DomInfoFlag.blocked if self.blocked else DomInfoFlag.running
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
        """``XEN_DOMCTL_max_mem``: lowering below tot_pages is allowed (13)."""
        if max_pages < 0:
            raise XenError(Errno.EINVAL, "negative max_mem")
        self.get(domid).max_pages = max_pages

    def populate(self, domid: int, nr_pages: int) -> int:
        """Grow a domain by ``nr_pages`` within max_pages and the host budget; returns done."""
        dom = self.get(domid)
        room = min(dom.max_pages - dom.tot_pages, self.host_free_pages)
        done = max(0, min(nr_pages, room))
        dom.tot_pages += done
        self._allocated += done
        return done

    def decrease(self, domid: int, nr_pages: int) -> int:
        """Give back up to ``nr_pages`` of a domain's memory (``decrease_reservation``);
        returns the pages freed."""
        dom = self.get(domid)
        done = max(0, min(nr_pages, dom.tot_pages))
        dom.tot_pages -= done
        self._allocated -= done
        return done
