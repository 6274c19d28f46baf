"""The init program's memory: regions of the guest's own pages that a resumed kernel finds again.

Why: issue 11 ("What moves"). A migrated guest is a new process, and a Python thread's stack
cannot move, so an init program keeps whatever it must go on with in guest memory
(``GuestOS.memory``), which the toolstack copies page by page. A resumed kernel re-runs the
init, which asks for its regions by name again and gets the same pages, contents and all.

The directory is the page at ``PFN_INIT_MEMORY`` (``protocols.pv_layout``). Regions are whole
pages, taken from the top of memory down in the order the init asks for them; the drivers'
page pool grows from ``PFN_FIRST_FREE`` up, and its ceiling is lowered to the lowest region
(``PagePool.reserve_above``), so the two never overlap: a region that would reach the pool
is ENOMEM.

Directory layout, little-endian: ``magic[8]`` = ``xenray-m``, ``u32 version`` (1),
``u32 count``, ``u64 floor`` (the lowest pfn of any region, ``nr_pages`` if none); then
``count`` entries of 64 bytes: ``name[40]`` (UTF-8, NUL padded), ``u64 first_pfn``,
``u64 nr_pages``, ``u64 nbytes``.

Decisions:

* Asking again for a name returns its region; asking with another size is EINVAL (a program
  that changes its layout takes a new name). A new region is zeroed: its pages may have been
  a previous domain's driver pages.
* A fresh boot writes an empty directory (:meth:`InitMemory.format`); a resume reads and checks
  the one that arrived (:meth:`InitMemory.load`), and refuses one that does not hold together
  (EINVAL), as it would refuse any corrupt memory.
* Only the vCPU allocates; the call enters the kernel once and is not split by a suspend.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from protocols.pv_layout import PFN_FIRST_FREE, PFN_INIT_MEMORY

MAGIC = b"xenray-m"
VERSION = 1
NAME_MAX = 40  # bytes of UTF-8
_HEADER = struct.Struct("<8sIIQ")
_ENTRY = struct.Struct(f"<{NAME_MAX}sQQQ")
MAX_REGIONS = (PAGE_SIZE - _HEADER.size) // _ENTRY.size  # 63

Pages = Callable[[int, int], memoryview]  # (first pfn, count) -> those pages (Mapping.pages)


class InitMemory:
    """The directory of one guest's init memory over ``pages`` (its ``nr_pages`` pages);
    ``reserve(pfn)`` takes every page from ``pfn`` up away from the drivers' pool (ENOMEM if
    it cannot)."""

    def __init__(self, pages: Pages, nr_pages: int,
                 reserve: Callable[[int], None] = lambda pfn: None) -> None:
        self._pages, self.nr_pages, self._reserve = pages, nr_pages, reserve
        self._dir = pages(PFN_INIT_MEMORY, 1)
        self._lock = threading.Lock()
        self._regions: dict[str, tuple[int, int, int]] = {}  # name -> (first pfn, pages, bytes)
        self.floor = nr_pages

    def format(self) -> None:
        """A fresh boot: no region yet."""
        with self._lock:
            self._dir[:] = bytes(PAGE_SIZE)
            self._regions, self.floor = {}, self.nr_pages
            self._write_header()

    def load(self) -> None:
        """A resume: take the regions the directory lists and keep the pool below them;
        EINVAL if the directory is not one this kernel wrote."""
        with self._lock:
            magic, version, count, floor = _HEADER.unpack_from(self._dir)
            if magic != MAGIC or version != VERSION:
                raise XenError(Errno.EINVAL, "no init memory directory in this memory")
            if count > MAX_REGIONS or not PFN_FIRST_FREE <= floor <= self.nr_pages:
                raise XenError(Errno.EINVAL, f"init memory directory: {count} regions, "
                                             f"floor {floor} of {self.nr_pages} pages")
            regions: dict[str, tuple[int, int, int]] = {}
            taken: list[tuple[int, int]] = []
            for i in range(count):
                raw, first, npages, nbytes = _ENTRY.unpack_from(self._dir,
                                                                _HEADER.size + i * _ENTRY.size)
                name = _name(raw)
                if (name is None or name in regions or npages == 0
                        or not 0 < nbytes <= npages * PAGE_SIZE
                        or first < floor or first + npages > self.nr_pages
                        or any(first < end and start < first + npages for start, end in taken)):
                    raise XenError(Errno.EINVAL, f"init memory directory: entry {i} is corrupt")
                regions[name] = (first, npages, nbytes)
                taken.append((first, first + npages))
            self._reserve(floor)
            self._regions, self.floor = regions, floor

    def region(self, name: str, nbytes: int) -> memoryview:
        """The ``nbytes`` of region ``name``, made (zeroed, below the others) on first use.
        EINVAL for a bad name or size, or another size than the region has; ENOSPC if the
        directory is full; ENOMEM if it would reach the drivers' pages."""
        raw = name.encode() if isinstance(name, str) else b""
        if not raw or len(raw) > NAME_MAX or b"\0" in raw:
            raise XenError(Errno.EINVAL, f"init memory name {name!r}: 1..{NAME_MAX} bytes")
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise XenError(Errno.EINVAL, f"init memory {name!r}: {nbytes!r} bytes")
        with self._lock:
            found = self._regions.get(name)
            if found is not None:
                first, _, size = found
                if size != nbytes:
                    raise XenError(Errno.EINVAL, f"init memory {name!r} has {size} bytes, "
                                                 f"not {nbytes}")
                return self._pages(first, found[1])[:nbytes]
            if len(self._regions) >= MAX_REGIONS:
                raise XenError(Errno.ENOSPC, f"init memory: at most {MAX_REGIONS} regions")
            npages = -(-nbytes // PAGE_SIZE)
            first = self.floor - npages
            if first < PFN_FIRST_FREE:
                raise XenError(Errno.ENOMEM, f"init memory {name!r}: {npages} pages, "
                                             f"{self.floor - PFN_FIRST_FREE} left")
            self._reserve(first)  # ENOMEM if the drivers' pages reach that far
            view = self._pages(first, npages)
            view[:] = bytes(npages * PAGE_SIZE)
            _ENTRY.pack_into(self._dir, _HEADER.size + len(self._regions) * _ENTRY.size,
                             raw, first, npages, nbytes)
            self._regions[name] = (first, npages, nbytes)
            self.floor = first
            self._write_header()
            return view[:nbytes]

    def regions(self) -> dict[str, tuple[int, int, int]]:
        """``{name: (first pfn, pages, bytes)}``."""
        with self._lock:
            return dict(self._regions)

    def _write_header(self) -> None:
        _HEADER.pack_into(self._dir, 0, MAGIC, VERSION, len(self._regions), self.floor)


def _name(raw: bytes) -> str | None:
    text = raw.rstrip(b"\0")
    if not text or b"\0" in text:
        return None
    try:
        return text.decode()
    except UnicodeDecodeError:
        return None
