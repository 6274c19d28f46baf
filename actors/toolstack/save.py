"""Writing a domain's save stream: libxl's stream v2 around libxc's stream v3 (``xc_domain_save``).

``tools/libs/light/libxl_stream_write.c`` writes the libxl header and a LIBXC_CONTEXT record;
then libxc (``tools/libs/guest/xg_sr_save.c``, ``xg_sr_save_x86_pv.c``) writes its own stream
inline, for x86 PV in this order (reference 15.1): the image and domain headers, X86_PV_INFO,
the CPUID and MSR policies, STATIC_DATA_END, X86_PV_P2M_FRAMES, PAGE_DATA records of at most
1024 pages, X86_TSC_INFO, SHARED_INFO, each online vCPU's context, END; libxl ends with its own
END. A live save (a migration) enables log-dirty mode and pre-copies (:mod:`.precopy`) before
it suspends the domain; a plain save suspends first. A debug save (``--debug``) sends VERIFY
after the last pass and every page again, for the receiver to compare.

The saver reads the guest's pages through Dom0's mapping of its memory file and asks the
hypervisor only for what Xen's toolstack asks it: the domain's extent (``XENMEM_maximum_gpfn``:
the p2m it sends covers pfns up to the highest populated, which a balloon may have put above
``memory``), each batch's page types (``XEN_DOMCTL_getpageframeinfo3``: a pfn with no frame,
one the balloon gave back, goes as XTAB with no data, ``write_batch``), log-dirty
(``XEN_DOMCTL_shadow_op``), the domain's state (``getdomaininfo``), its vCPUs' contexts and its
TSC information. It writes bytes to a sink and never knows whether they go to a file or to
another host.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from actors.memory import Mapping
from actors.toolstack.precopy import Round, SimplePolicy, send_memory_live
from protocols.errno import Errno, XenError
from protocols.hypercall import (PFINFO_LTAB_SHIFT, SHADOW_LOGDIRTY_FINAL, Domctl, DomInfoFlag,
                                 Hypercall, MemoryOp, ShadowOp, ShutdownReason, XenVersion,
                                 dominf_shutdown_code)
from protocols.migration import libxc, libxl
from protocols.page import PAGE_SIZE

MAX_BATCH_SIZE = libxc.MAX_BATCH_SIZE


@dataclasses.dataclass
class SaveReport:
    """What a save or migration cost (Clark's metrics): each pass, the bytes of the stream, and
    when the domain was suspended (``perf_counter`` time) so the caller can end the downtime."""

    rounds: list[Round]
    nr_pages: int
    bytes_sent: int = 0
    suspended_at: float = 0.0  # when the suspend was asked for
    guest_suspended_at: float = 0.0  # when the domain was seen shut down (suspend)

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": [r.as_dict() for r in self.rounds], "nr_pages": self.nr_pages,
                "bytes_sent": self.bytes_sent,
                "ram_bytes": self.nr_pages * PAGE_SIZE,
                "bytes_ratio": round(self.bytes_sent / (self.nr_pages * PAGE_SIZE), 3),
                "pages_sent": sum(r.pages_sent for r in self.rounds)}


def p2m_size(hv: Any, domid: int) -> int:
    """The pfns a save of ``domid`` covers: up to its highest populated one
    (``xc_domain_nr_gpfns``)."""
    return hv(Hypercall.memory_op, MemoryOp.maximum_gpfn, domid=domid) + 1


class DomainSaver:
    """One save of domain ``domid`` (its memory file ``memory_path``) to ``sink``; its p2m
    (``nr_pages`` pfns) is sized by :func:`p2m_size` when the save starts.

    ``suspend()`` is libxl's suspend callback: it asks the guest to suspend and returns once
    the domain is shut down with reason suspend (or raises). ``clock`` is what rounds are
    timed with."""

    def __init__(self, hv: Any, domid: int, memory_path: str,
                 sink: Callable[[bytes], None], suspend: Callable[[], None], *,
                 live: bool, policy: SimplePolicy | None = None, debug: bool = False,
                 ready: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        nr_pages = p2m_size(hv, domid)
        self.hv, self.domid, self.nr_pages = hv, domid, nr_pages
        self.sink, self.suspend = sink, suspend
        self.live, self.debug, self.ready = live, debug, ready
        self.policy = policy or SimplePolicy()
        self.clock = clock
        self._memory = Mapping(memory_path, 0, nr_pages, readonly=True)
        self._pages = np.frombuffer(self._memory.mm, dtype=np.uint8).reshape(nr_pages,
                                                                             PAGE_SIZE)
        self.report = SaveReport([], nr_pages)

    def close(self) -> None:
        del self._pages
        self._memory.close()

    # -- the stream ------------------------------------------------------------------------

    def run(self) -> SaveReport:
        """``xc_domain_save``'s ``save()`` inside libxl's stream; log-dirty is always turned
        off again."""
        self._emit(libxl.header())
        self._emit(libxl.libxc_context())
        self._emit(libxc.image_header())
        version = self.hv(Hypercall.xen_version, XenVersion.version)
        self._emit(libxc.domain_header(libxc.DHDR_TYPE_X86_PV, xen_major=version >> 16,
                                       xen_minor=version & 0xFFFF))
        self._static_data()
        try:
            if self.live:
                self._logdirty_on()
                self.report.rounds = send_memory_live(self.nr_pages, self.policy,
                                                      self._send_pages, self._clean,
                                                      self.clock)
                self._suspend_and_send_dirty()
            else:
                self.ready()
                self._suspend()
                t0 = self.clock()
                self._send_pages(range(self.nr_pages))
                self.report.rounds = [Round(0, self.nr_pages, 0, self.clock() - t0, live=False)]
            self._check_suspended()
            self._end_of_checkpoint()
            self._emit(libxc.end())
            self._emit(libxl.end())
        finally:
            if self.live:
                try:
                    self._shadow(ShadowOp.OFF)
                except XenError:
                    pass  # the domain went away, and its log-dirty mode with it
        return self.report

    def _emit(self, data: bytes | np.ndarray) -> None:
        self.report.bytes_sent += len(data)
        self.sink(data)

    def _static_data(self) -> None:
        """X86_PV_INFO, STATIC_DATA_END, then the p2m frames (``x86_pv_start_of_stream``).
        The CPUID and MSR policies are left out, as libxc leaves out empty ones: a xenray
        guest executes no CPUID. Nor does it keep a p2m in its memory (its pfns index its
        memory file directly), so the frames that would hold it are given as pfn 0."""
        self._emit(libxc.x86_pv_info())
        self._emit(libxc.static_data_end())
        end_pfn = self.nr_pages - 1
        self._emit(libxc.x86_pv_p2m_frames(end_pfn, [0] * libxc.p2m_frame_count(0, end_pfn)))

    def _send_pages(self, pfns: Sequence[int], rate_limit: float | None = None) -> None:
        """PAGE_DATA records of at most 1024 pages, each pfn with its type (a hole: XTAB, no
        data); ``rate_limit`` bytes/s (Clark's policy)."""
        pfns = np.asarray(pfns if not isinstance(pfns, range) else np.arange(
            pfns.start, pfns.stop), dtype=np.int64)
        t0 = self.clock()
        holes = self._holes()
        for i in range(0, len(pfns), MAX_BATCH_SIZE):
            batch = pfns[i:i + MAX_BATCH_SIZE]
            types = self._types(batch) if holes else None  # None: every pfn NOTAB
            self._emit(libxc.page_data_gather(self._pages, batch, types))
            if rate_limit:
                ahead = (i + len(batch)) * PAGE_SIZE / rate_limit - (self.clock() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    def _holes(self) -> bool:
        """Whether any pfn below the p2m's end has no page: only then is each batch's type
        asked, so a domain no balloon touched costs one ``XENMEM_current_reservation`` a
        round rather than a ``getpageframeinfo3`` a batch (the stream is the same). A pfn a
        balloon moves during a live round is dirty: a later round sends it again, and the
        last one, with the domain suspended, is exact."""
        return self.hv(Hypercall.memory_op, MemoryOp.current_reservation,
                       domid=self.domid) != self.nr_pages

    def _types(self, batch: np.ndarray) -> np.ndarray:
        """``xc_get_pfn_type_batch``: the batch's ``XEN_DOMCTL_PFINFO_*`` as PAGE_DATA types."""
        reply = self.hv(Hypercall.domctl, Domctl.getpageframeinfo3, domain=self.domid,
                        num=len(batch), array=batch.tolist())
        return np.asarray(reply["array"], dtype=np.uint64) >> PFINFO_LTAB_SHIFT

    # -- log-dirty (reference 15.3) ----------------------------------------------------------

    def _shadow(self, op: ShadowOp, mode: int = 0) -> dict[str, Any]:
        return self.hv(Hypercall.domctl, Domctl.shadow_op, domain=self.domid, op=int(op),
                       mode=mode, pages=self.nr_pages)

    def _logdirty_on(self) -> None:
        """``enable_logdirty``: on failure, OFF then ENABLE again (a previous save may have
        left it on)."""
        try:
            self._shadow(ShadowOp.ENABLE_LOGDIRTY)
        except XenError:
            self._shadow(ShadowOp.OFF)
            self._shadow(ShadowOp.ENABLE_LOGDIRTY)

    def _clean(self, mode: int = 0) -> list[int]:
        reply = self._shadow(ShadowOp.CLEAN, mode)
        bits = np.unpackbits(np.frombuffer(reply["dirty_bitmap"], dtype=np.uint8),
                             bitorder="little")[:self.nr_pages]
        return np.flatnonzero(bits).tolist()

    def _suspend_and_send_dirty(self) -> None:
        """Suspend, then the pages dirtied since the last CLEAN (``LOGDIRTY_FINAL``); in debug
        mode, VERIFY and every page again. The receiver is asked first whether it is ready
        for the last round (``ready()``), so the domain is not suspended while the
        destination is still being built."""
        self.ready()
        self._suspend()
        # its pages there were never logged; libxc aborts on a changed p2m as well
        # ("p2m generation count changed", x86_pv_check_vm_state_p2m_list)
        if p2m_size(self.hv, self.domid) > self.nr_pages:
            raise XenError(Errno.EAGAIN, "the guest populated pfns above the stream's p2m "
                                         "during the live rounds")
        t0 = self.clock()
        dirty = self._clean(SHADOW_LOGDIRTY_FINAL)
        if self.report.rounds:
            self.report.rounds[-1].pages_dirtied = len(dirty)
        self._send_pages(dirty)
        self.report.rounds.append(Round(len(self.report.rounds), len(dirty), 0,
                                        self.clock() - t0, live=False))
        if self.debug:
            self._emit(libxc.verify())
            self._send_pages(range(self.nr_pages))

    def _suspend(self) -> None:
        self.report.suspended_at = self.clock()
        self.suspend()
        self.report.guest_suspended_at = self.clock()

    def _check_suspended(self) -> None:
        """libxc fails a save whose domain is not shut down with reason suspend."""
        info = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=self.domid)
        flags = info["flags"]
        if not flags & DomInfoFlag.shutdown or \
                dominf_shutdown_code(flags) != ShutdownReason.suspend:
            raise XenError(Errno.EINVAL, "the domain is not suspended at the end of the save")

    def _end_of_checkpoint(self) -> None:
        """X86_TSC_INFO, SHARED_INFO, then each online vCPU's context
        (``x86_pv_end_of_checkpoint``)."""
        tsc = self.hv(Hypercall.domctl, Domctl.gettscinfo, domain=self.domid)
        self._emit(libxc.x86_tsc_info(tsc["tsc_mode"], tsc["gtsc_khz"], tsc["elapsed_nsec"],
                                      tsc["incarnation"]))
        self._emit(libxc.shared_info(bytes(PAGE_SIZE)))
        info = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=self.domid)
        for vcpu in range(info["max_vcpu_id"] + 1):
            ctxt = self.hv(Hypercall.domctl, Domctl.getvcpucontext, domain=self.domid,
                           vcpu=vcpu)["ctxt"]
            self._emit(libxc.x86_pv_vcpu_basic(vcpu, ctxt))
