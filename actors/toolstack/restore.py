"""Reading a save stream into a new domain (``xc_domain_restore``, ``libxl_stream_read.c``).

The receiver of a migration, and ``xl restore``, read the libxl stream v2 and the libxc
stream v3 inside it (:mod:`protocols.migration`), which refuses whatever a hostile or broken
stream gets wrong, and write each PAGE_DATA page into the new domain's memory, whose size the
configuration fixed (a pfn beyond it is refused). After a VERIFY record every page that
follows is compared with what memory holds instead of written (``verify_frames`` in
``xg_sr_restore.c``), and the mismatches are counted. The vCPU contexts and TSC information
are kept for the caller; the stream ends with libxl's END, and a stream that stops before it
is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NO_DATA = (0xD, 0xE, 0xF)  # BROKEN, XALLOC, XTAB: pfn types that carry no page

from actors.memory import Mapping
from protocols.errno import Errno, XenError
from protocols.migration.libxc import PageData, RecType
from protocols.migration.libxl import SaveStreamReader
from protocols.page import PAGE_SIZE


class DomainRestorer:
    """One restore into the ``nr_pages`` frames of ``memory_path``, of a domain with
    ``max_vcpus`` vCPUs."""

    def __init__(self, memory_path: str, nr_pages: int, max_vcpus: int) -> None:
        self.memory_path, self.nr_pages, self.max_vcpus = memory_path, nr_pages, max_vcpus

    def run(self, read: Callable[[], bytes]) -> dict[str, Any]:
        """Read chunks (``b""`` at the end) until the stream's end; what it carried besides
        memory: ``vcpus`` (id -> context bytes), ``tsc``, ``verify_mismatches`` (None unless
        the sender verified), ``pages`` written."""
        mapping = Mapping(self.memory_path, 0, self.nr_pages)
        pages = np.frombuffer(mapping.mm, dtype=np.uint8).reshape(self.nr_pages, PAGE_SIZE)
        reader = SaveStreamReader(p2m_size=self.nr_pages, max_vcpus=self.max_vcpus)
        out: dict[str, Any] = {"vcpus": {}, "tsc": None, "verify_mismatches": None,
                               "pages": 0}
        try:
            while not reader.done:
                chunk = read()
                if not chunk:
                    reader.close()  # raises: the stream stopped before its END
                for rec in reader.feed(chunk):
                    self._apply(rec, pages, out)
        finally:
            del pages
            mapping.close()
        return out

    def _apply(self, rec: Any, pages: np.ndarray, out: dict[str, Any]) -> None:
        if rec.layer != "libxc":
            return
        value = rec.value
        if isinstance(value, PageData):
            if len(set(value.pfns)) != len(value.pfns):
                raise XenError(Errno.EINVAL, "PAGE_DATA names a pfn twice")
            if any(t in NO_DATA for t in value.types):
                raise XenError(Errno.EINVAL, "PAGE_DATA of a page type a PV guest here has "
                                             "not (broken, unallocated or invalid)")
            pfns = np.asarray(value.pfns, dtype=np.int64)
            data = np.frombuffer(value.data, dtype=np.uint8).reshape(len(pfns), PAGE_SIZE)
            if out["verify_mismatches"] is None:
                pages[pfns] = data
                out["pages"] += len(pfns)
            else:
                out["verify_mismatches"] += int(np.count_nonzero(
                    (pages[pfns] != data).any(axis=1)))
        elif rec.type == RecType.VERIFY:
            out["verify_mismatches"] = 0
        elif rec.type == RecType.X86_PV_VCPU_BASIC:
            if value.vcpu_id in out["vcpus"]:
                raise XenError(Errno.EINVAL, f"vCPU {value.vcpu_id}'s context came twice")
            out["vcpus"][value.vcpu_id] = value.blob
        elif rec.type == RecType.X86_TSC_INFO:
            out["tsc"] = {"mode": value.mode, "khz": value.khz, "nsec": value.nsec,
                          "incarnation": value.incarnation}
