"""The hypervisor's paging side for a save: log-dirty mode and the page types a saver asks
for. Part of its pure state machine (:mod:`.state`), a base of its
:class:`~.state.Hypervisor` as :mod:`.scheduling` is.

Why a module of its own: ``XEN_DOMCTL_shadow_op``'s log-dirty ops, ``paging_mark_dirty`` and
``XEN_DOMCTL_getpageframeinfo3`` are one concept, what a live save reads of a domain's memory
(``xen/arch/x86/mm/paging.c``, reference 15.3). A guest's own writes are logged by the
dirty-logging hardware its process handed over, reached through an injected
:class:`~actors.hypervisor.logdirty.DirtyLog` (called in place, as ``frames`` is); what the
hypervisor itself and other domains' grant mappings dirty, and the pfns a reservation change
populates or empties (Xen's p2m marks an entry as it changes it), is marked here
(:meth:`Paging.mark_dirty`, ``gnttab_mark_dirty``).

It uses the state machine's domain table, grants, foreign maps, ``dirtylog`` and
``_logdirty`` (the domains in log-dirty mode and the pfns marked in each).
"""

from __future__ import annotations

import hmac
from typing import Any

import numpy as np

from actors.hypervisor.domains import Domain, Dying
from protocols.errno import Errno, XenError
from protocols.hypercall import (PFINFO_BATCH, PFINFO_NOTAB, PFINFO_XTAB,
                                 SHADOW_LOGDIRTY_FINAL, ShadowMode, ShadowOp)


class Paging:
    """The paging part of :class:`~.state.Hypervisor` (module docstring)."""

    def authorize_dirtylog(self, domid: int, secret: str, pid: int) -> int:
        """May process ``pid`` hand over the dirty logging of ``domid`` (``actors.uffd``)? 0,
        or -EPERM. Only a live DomU's own credential, and once the toolstack has named the
        vCPU process only that process; before, the handover waits for it (``claim``)."""
        dom = self.table.domains.get(domid)
        if dom is None or dom.dying is not Dying.ALIVE or dom.privileged or \
                not isinstance(secret, str) or not hmac.compare_digest(dom.secret, secret):
            return -Errno.EPERM
        if self.vcpu_pids.get(domid, pid) != pid:
            return -Errno.EPERM
        return 0

    def mark_dirty(self, domid: int, pfn: int) -> None:
        """``paging_mark_dirty``: the hypervisor (or a grant mapping) dirtied this page through
        a mapping the guest's own logging does not see. Nothing unless in log-dirty mode."""
        self.mark_extents_dirty(domid, [pfn], 0)

    def mark_extents_dirty(self, domid: int, extents: list[int], order: int) -> None:
        """``paging_mark_dirty`` for each pfn of these extents of ``2**order`` pages, which
        a reservation change populated or emptied (Xen's p2m marks an entry as it changes
        it): a live save sends each again, its new page or an XTAB for the hole."""
        marked = self._logdirty.get(domid)
        if marked is not None:
            size = 1 << order
            marked.update(pfn for gpfn in extents for pfn in range(gpfn, gpfn + size))

    @staticmethod
    def _getpageframeinfo3(target: Domain, num: int, gfns: list[int]) -> dict[str, list[int]]:
        """``XEN_DOMCTL_getpageframeinfo3``: each gfn's type, ``XEN_DOMCTL_PFINFO_XTAB`` for
        one with no frame (a hole). A PV guest's page tables here are not Xen's frames, so
        every populated page is NOTAB. More than 1024 gfns is -E2BIG; a shorter array than
        ``num`` faults at its end (-EFAULT)."""
        if num > PFINFO_BATCH:
            raise XenError(Errno.E2BIG, f"{num} gfns in one getpageframeinfo3")
        if len(gfns) < num:
            raise XenError(Errno.EFAULT, "the gfn array is shorter than num")
        p2m = target.p2m
        return {"array": [PFINFO_NOTAB if gfn in p2m else PFINFO_XTAB for gfn in gfns[:num]]}

    def _shadow_op(self, dom: Domain, target: Domain, a: dict) -> Any:
        """``paging_domctl``: ENABLE_LOGDIRTY (or ENABLE with LOG_DIRTY), OFF, CLEAN, PEEK.

        Xen's refusals: a paging op on itself or on a dying domain, ENABLE when already on,
        CLEAN/PEEK mode bits other than ``LOGDIRTY_FINAL``: -EINVAL. Shadow-paging ops
        (ENABLE_TEST, the allocation ops, ENABLE without LOG_DIRTY) are not emulated: -EINVAL.
        A domain whose process handed over no dirty logging: -EOPNOTSUPP. One deviation:
        CLEAN/PEEK when log-dirty is off is -EINVAL here, where Xen answers an all-clear
        bitmap; a saver that forgot ENABLE would otherwise miss every page silently."""
        d, op, mode = target.domid, a["op"], a["mode"]
        if target is dom:
            raise XenError(Errno.EINVAL, "a paging op on itself")
        if target.dying is not Dying.ALIVE:
            raise XenError(Errno.EINVAL, f"a paging op on dying domain {d}")
        if op == ShadowOp.ENABLE_LOGDIRTY or (op == ShadowOp.ENABLE
                                              and mode & ShadowMode.LOG_DIRTY):
            if d in self._logdirty:
                raise XenError(Errno.EINVAL, f"domain {d} is already in log-dirty mode")
            self.dirtylog.enable(d)  # -EOPNOTSUPP without the guest's descriptors
            self._logdirty[d] = set()
            return 0
        if op == ShadowOp.OFF:
            if self._logdirty.pop(d, None) is not None:
                self.dirtylog.disable(d)
            return 0
        if op in (ShadowOp.CLEAN, ShadowOp.PEEK):
            if mode & ~SHADOW_LOGDIRTY_FINAL:
                raise XenError(Errno.EINVAL, f"log-dirty mode {mode:#x}")
            if d not in self._logdirty:
                raise XenError(Errno.EINVAL, f"domain {d} is not in log-dirty mode")
            return self._log_dirty_op(target, a["pages"], clean=op == ShadowOp.CLEAN)
        raise XenError(Errno.EINVAL, f"shadow op {op} is not emulated")

    def _log_dirty_op(self, target: Domain, pages: int, *, clean: bool) -> dict[str, Any]:
        """``paging_log_dirty_op``: the bitmap of the first ``pages`` pfns (bit i of byte i//8,
        LSB first; ``pages`` comes back as the size returned, at most the domain's) and the
        stats since the last CLEAN; CLEAN starts a new round.

        Dirty = written by the guest's process (its write-protect faults: ``fault_count``),
        marked by the hypervisor since the last CLEAN (its writes to grant-table frames and
        ``gnttab_copy`` destinations, pages a backend unmapped after mapping them writable:
        ``gnttab_mark_dirty``), mapped writable through a grant right now (the backend may
        write at any time without the hypervisor seeing it), or mapped by Dom0 through
        ``add_to_physmap_batch`` (xenconsoled's console ring: Dom0 unmaps without telling the
        hypervisor, so such a page counts in every round while log-dirty is on; a handful of
        pages). ``LOGDIRTY_FINAL`` adds nothing: those are in every round already."""
        d, nr = target.domid, target.p2m.nr_pfns  # its address space: holes included
        written = self.dirtylog.scan(d, clean)
        bits = np.zeros(nr, dtype=bool)
        m = min(nr, len(written))
        bits[:m] = written[:m]
        fault_count = int(np.count_nonzero(bits))
        marked = self._logdirty[d]
        extra = [p for p in (*marked, *self.grants.writable_frames(d),
                             *self._foreign.get(d, ())) if 0 <= p < nr]
        bits[extra] = True
        dirty_count = int(np.count_nonzero(bits))
        if clean:
            marked.clear()
        n = min(pages, nr)
        return {"pages": n, "dirty_bitmap": np.packbits(bits[:n], bitorder="little").tobytes(),
                "stats": {"fault_count": min(fault_count, 0xFFFFFFFF),
                          "dirty_count": min(dirty_count, 0xFFFFFFFF)}}
