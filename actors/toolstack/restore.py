"""Reading a save stream into a new domain (``xc_domain_restore``, ``libxl_stream_read.c``).

The receiver of a migration, and ``xl restore``, read the libxl stream v2 and the libxc
stream v3 inside it (:mod:`protocols.migration`), which refuses whatever a hostile or broken
stream gets wrong. The new domain's memory follows the stream, as libxc's restore builds it:
the X86_PV_P2M_FRAMES record sizes the p2m (no larger than the address space the
configuration gave the domain: a pfn beyond either is refused), and a PAGE_DATA pfn that
carries data is populated (``populate_pfns``: ``XENMEM_populate_physmap``, within the
domain's ``max_mem``, or ENOMEM) the first time it comes, then written. An XTAB pfn has no
page on the sender (a balloon gave it back): it stays a hole here, and one populated by an
earlier round is given back (``XENMEM_decrease_reservation``), so the new domain holds
exactly the source's pages. After a VERIFY record every page that follows is compared with
what memory holds instead of written (``verify_frames`` in ``xg_sr_restore.c``), and the
mismatches are counted. The vCPU contexts and TSC information are kept for the caller; the
stream ends with libxl's END, and a stream that stops before it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from actors.memory import Mapping
from actors.toolstack.builder import SUPERPAGE_ORDER
from protocols.errno import Errno, XenError
from protocols.hypercall import Hypercall, MemoryOp
from protocols.migration.libxc import PageData, PageType, RecType, page_types_have_data
from protocols.migration.libxl import SaveStreamReader
from protocols.page import PAGE_SIZE

SUPERPAGE = 1 << SUPERPAGE_ORDER


class DomainRestorer:
    """One restore into domain ``domid`` (its memory file ``memory_path``, an address space
    of ``max_pfns``) of a domain with ``max_vcpus`` vCPUs; ``populated``: pfns the toolstack
    populated before the stream (their pages are written, never populated again)."""

    def __init__(self, hv: Any, domid: int, memory_path: str, max_pfns: int, max_vcpus: int,
                 populated: Iterable[int] = ()) -> None:
        self.hv, self.domid = hv, domid
        self.memory_path, self.max_pfns, self.max_vcpus = memory_path, max_pfns, max_vcpus
        self._populated = np.zeros(max_pfns, dtype=bool)
        self._populated[list(populated)] = True
        self._mapping: Mapping | None = None
        self._pages: np.ndarray | None = None

    def run(self, read: Callable[[], bytes]) -> dict[str, Any]:
        """Read chunks (``b""`` at the end) until the stream's end; what it carried besides
        memory: ``vcpus`` (id -> context bytes), ``tsc``, ``verify_mismatches`` (None unless
        the sender verified), ``pages`` written, ``p2m_size`` (its pfns)."""
        reader = SaveStreamReader(p2m_size=self.max_pfns, max_vcpus=self.max_vcpus)
        out: dict[str, Any] = {"vcpus": {}, "tsc": None, "verify_mismatches": None,
                               "pages": 0, "p2m_size": 0}
        try:
            while not reader.done:
                chunk = read()
                if not chunk:
                    reader.close()  # raises: the stream stopped before its END
                for rec in reader.feed(chunk):
                    self._apply(rec, out)
        finally:
            self._pages = None
            if self._mapping is not None:
                self._mapping.close()
        return out

    def _apply(self, rec: Any, out: dict[str, Any]) -> None:
        if rec.layer != "libxc":
            return
        value = rec.value
        if isinstance(value, PageData):
            self._page_data(value, out)
        elif rec.type == RecType.X86_PV_P2M_FRAMES:
            out["p2m_size"] = value.end_pfn + 1
            self._mapping = Mapping(self.memory_path, 0, out["p2m_size"])
            self._pages = np.frombuffer(self._mapping.mm, dtype=np.uint8).reshape(
                out["p2m_size"], PAGE_SIZE)
        elif rec.type == RecType.VERIFY:
            out["verify_mismatches"] = 0
        elif rec.type == RecType.X86_PV_VCPU_BASIC:
            if value.vcpu_id in out["vcpus"]:
                raise XenError(Errno.EINVAL, f"vCPU {value.vcpu_id}'s context came twice")
            out["vcpus"][value.vcpu_id] = value.blob
        elif rec.type == RecType.X86_TSC_INFO:
            out["tsc"] = {"mode": value.mode, "khz": value.khz, "nsec": value.nsec,
                          "incarnation": value.incarnation}

    def _page_data(self, value: PageData, out: dict[str, Any]) -> None:
        """``process_page_data``: populate and write the pages with data; give back a
        populated pfn that now comes as XTAB."""
        if len(set(value.pfns)) != len(value.pfns):
            raise XenError(Errno.EINVAL, "PAGE_DATA names a pfn twice")
        if any(t in (PageType.BROKEN, PageType.XALLOC) for t in value.types):
            raise XenError(Errno.EINVAL, "PAGE_DATA of a page type a PV guest here has not "
                                         "(broken or unallocated)")
        pfns = np.asarray(value.pfns, dtype=np.int64)
        has_data = page_types_have_data(value.types)
        data = np.frombuffer(value.data, dtype=np.uint8).reshape(-1, PAGE_SIZE)
        with_data = pfns[has_data]
        if out["verify_mismatches"] is not None:
            out["verify_mismatches"] += int(np.count_nonzero(
                (self._pages[with_data] != data).any(axis=1)))
            return
        self._populate(with_data[~self._populated[with_data]])
        self._pages[with_data] = data
        out["pages"] += len(with_data)
        gone = pfns[~has_data]
        self._memory_op(MemoryOp.decrease_reservation, gone[self._populated[gone]])

    def _populate(self, pfns: np.ndarray) -> None:
        """``populate_pfns``: a whole aligned 2 MiB run of new pfns (a round 0 batch holds
        two) as one superpage extent, as libxc's PV ``meminit`` builds, the rest page by
        page: the same pages in 1/512 of the extents."""
        pfns = np.unique(pfns)
        heads = np.flatnonzero((pfns & (SUPERPAGE - 1)) == 0)
        heads = heads[heads + SUPERPAGE - 1 < len(pfns)]
        heads = heads[pfns[heads + SUPERPAGE - 1] == pfns[heads] + SUPERPAGE - 1]
        in_runs = np.zeros(len(pfns), dtype=bool)
        in_runs[(heads[:, None] + np.arange(SUPERPAGE)).ravel()] = True
        self._memory_op(MemoryOp.populate_physmap, pfns[heads], SUPERPAGE_ORDER)
        self._memory_op(MemoryOp.populate_physmap, pfns[~in_runs])

    def _memory_op(self, op: MemoryOp, extents: np.ndarray, order: int = 0) -> None:
        """Populate or give back these extents of ``2**order`` pages; ENOMEM (populate: the
        domain's ``max_mem`` or the host's memory is short) or EBUSY if Xen does not do
        them all."""
        if not len(extents):
            return
        done = self.hv(Hypercall.memory_op, op, extent_start=extents.tolist(),
                       nr_extents=len(extents), extent_order=order, mem_flags=0,
                       domid=self.domid)
        pfns = (extents[:done, None] + np.arange(1 << order)).ravel()
        self._populated[pfns] = op == MemoryOp.populate_physmap
        if done < len(extents) and op == MemoryOp.populate_physmap:
            raise XenError(Errno.ENOMEM, f"domain {self.domid} may not have the pages the "
                                         f"stream brings ({done} of {len(extents)} extents "
                                         f"of order {order} populated)")
        if done < len(extents):
            raise XenError(Errno.EBUSY, f"domain {self.domid} kept {len(extents) - done} "
                                        "pages the stream gave back")
