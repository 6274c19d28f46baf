"""One domain's pseudo-physical address space: which pfns hold a page (its p2m).

Why: a guest gives pages back (``XENMEM_decrease_reservation``, the balloon) and takes them
again (``XENMEM_populate_physmap``) by pfn, so the hypervisor must know, pfn by pfn, which
are populated: ``tot_pages`` alone cannot say whether pfn 1234 may be granted, foreign
mapped or given back. Xen keeps this in the p2m (and in the page list of the domain's
frames); here a pfn either holds its page of the domain's memory file (frame = pfn, the
file's page at ``pfn * 4096``) or is a hole, punched out of the file so the host gets the
memory back. The address space is what the toolstack set with ``XENMEM_set_memory_map``
(libxl: ``maxmem``), so the file covers ``maxmem`` while only ``memory`` is populated.

Pure: a ``bytearray`` of one byte per pfn (1: populated) up to the highest pfn ever
populated (the rest of the address space is holes, so a huge ``maxmem`` costs nothing until
it is used), grown in place (so a reference handed to the grant tables stays valid), and
the extent rules of ``xen/common/memory.c``
(``populate_physmap``, ``decrease_reservation``, ``guest_remove_page``), each call
stopping at the first extent it cannot do and returning how many it did.

Decisions:

* An extent is ``2**order`` pfns from a multiple of that size (Xen's PV guests pass
  aligned superpages; a misaligned one stops the call), wholly inside the address space.
* One frame per pfn: populating a pfn that holds a page stops the call (Xen would allocate
  another frame and orphan the first, counted in ``tot_pages`` until the domain dies).
* An extent of which any pfn is a hole, or (``keep``) is held by something else, stops the
  call before any of its pages is removed (Xen removes the pages before the bad one, then
  stops without counting the extent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

_HOLE, _PAGE = 0, 1


class P2M:
    """Populated pfns of one domain's ``nr_pfns`` (its address space); ``tot_pages`` is how
    many. ``mapped``: the toolstack set its memory map, so populating never grows it."""

    __slots__ = ("bits", "nr_pfns", "tot_pages", "mapped", "e820")

    def __init__(self) -> None:
        self.bits = bytearray()  # up to the highest pfn populated yet
        self.nr_pfns = 0
        self.tot_pages = 0
        self.mapped = False
        self.e820: list[dict[str, int]] = []

    def __contains__(self, pfn: object) -> bool:
        """Does ``pfn`` hold a page?"""
        return type(pfn) is int and 0 <= pfn < len(self.bits) and self.bits[pfn] == _PAGE

    def max_pfn(self) -> int:
        """The highest populated pfn, -1 if none (``domain_get_maximum_gpfn``)."""
        return self.bits.rfind(_PAGE)

    def grow(self, nr_pfns: int) -> None:
        """The address space is ``nr_pfns`` now (never less than it was); new pfns are holes."""
        self.nr_pfns = max(self.nr_pfns, nr_pfns)

    # -- extents (memory_op's reservation ops) --------------------------------------------

    def fits(self, gpfn: int, order: int) -> bool:
        """Is the extent of ``2**order`` pfns at ``gpfn`` aligned and inside the space?"""
        size = 1 << order
        return gpfn % size == 0 and gpfn + size <= self.nr_pfns

    def is_hole(self, gpfn: int, size: int) -> bool:
        return self.bits.find(_PAGE, gpfn, gpfn + size) < 0

    def is_populated(self, gpfn: int, size: int) -> bool:
        return gpfn + size <= len(self.bits) and self.bits.find(_HOLE, gpfn, gpfn + size) < 0

    def fill(self, gpfn: int, size: int) -> None:
        if gpfn + size > len(self.bits):
            self.bits.extend(bytes(gpfn + size - len(self.bits)))
        self.bits[gpfn:gpfn + size] = b"\x01" * size
        self.tot_pages += size

    def clear(self, gpfn: int, size: int) -> None:
        self.bits[gpfn:gpfn + size] = bytes(size)
        self.tot_pages -= size

    def populate(self, extents: Iterable[int], order: int,
                 room: Callable[[int], bool]) -> int:
        """``populate_physmap``: fill each extent in turn while it is aligned, inside, all
        holes, and ``room(size)`` says the domain and the host may have ``size`` more pages
        (it is charged when it says yes). Returns the extents done."""
        size, done = 1 << order, 0
        for gpfn in extents:
            if not (self.fits(gpfn, order) and self.is_hole(gpfn, size) and room(size)):
                break
            self.fill(gpfn, size)
            done += 1
        return done

    def decrease(self, extents: Iterable[int], order: int,
                 keep: Callable[[int, int], bool] = lambda gpfn, size: False,
                 freed: list[tuple[int, int]] | None = None) -> int:
        """``decrease_reservation``: empty each extent in turn while it is aligned, inside,
        all populated and not one ``keep(gpfn, size)`` holds; its ``(first pfn, count)``
        goes to ``freed``. Returns the extents done."""
        size, done = 1 << order, 0
        for gpfn in extents:
            if not (self.fits(gpfn, order) and self.is_populated(gpfn, size)) or \
                    keep(gpfn, size):
                break
            self.clear(gpfn, size)
            if freed is not None:
                freed.append((gpfn, size))
            done += 1
        return done

    # -- no extent list (the hypervisor picks: test hosts, Dom0's boot) -------------------

    def lowest_holes(self, nr: int) -> list[tuple[int, int]]:
        """Runs ``(first, count)`` of the lowest ``nr`` holes (fewer if there are not so
        many below the end of the space)."""
        runs: list[tuple[int, int]] = []
        pfn = 0
        while nr > 0:
            start = self.bits.find(_HOLE, pfn)
            start = max(pfn, len(self.bits)) if start < 0 else start
            if start >= self.nr_pfns:
                break
            end = self.bits.find(_PAGE, start)
            end = self.nr_pfns if end < 0 else end
            count = min(nr, end - start)
            runs.append((start, count))
            nr -= count
            pfn = start + count
        return runs

    def highest_pages(self, nr: int) -> list[tuple[int, int]]:
        """Runs ``(first, count)`` of the highest ``nr`` populated pfns, highest first."""
        runs: list[tuple[int, int]] = []
        end = len(self.bits)  # nothing is populated above
        while nr > 0:
            last = self.bits.rfind(_PAGE, 0, end)
            if last < 0:
                break
            below = self.bits.rfind(_HOLE, 0, last)
            count = min(nr, last - below)
            runs.append((last + 1 - count, count))
            nr -= count
            end = last + 1 - count
        return runs


def runs_of(extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ``(first, count)`` extents merged (the order kept where not adjacent)."""
    out: list[tuple[int, int]] = []
    for first, count in extents:
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + count)
        elif out and first + count == out[-1][0]:
            out[-1] = (first, out[-1][1] + count)
        else:
            out.append((first, count))
    return out
