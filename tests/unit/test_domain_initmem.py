"""What a guest keeps in its own memory across a migration (issue 11): the init-memory directory
(actors.domain.initmem) against the drivers' page pool (actors.xenbus.frontend.PagePool), and
the kernel data page (actors.domain.kdata). Memory is a bytearray of pages; a "resume" is a
new directory over a copy of the bytes, as a new domain gets them."""

import struct

import pytest

from actors.domain.initmem import MAX_REGIONS, NAME_MAX, InitMemory
from actors.domain.kdata import KernelData
from actors.xenbus.frontend import PagePool
from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from protocols.pv_layout import PFN_FIRST_FREE, PFN_INIT_MEMORY

NR_PAGES = 64


class Memory:
    """``nr_pages`` of guest memory, the kernel's pool over it (``headroom``) and the init's
    directory, formatted (a boot) or loaded from ``data`` (a resume)."""

    def __init__(self, data: bytes | None = None, nr_pages: int = NR_PAGES,
                 headroom: int = 0) -> None:
        self.buf = bytearray(data if data is not None else nr_pages * PAGE_SIZE)
        self.view = memoryview(self.buf)
        n = len(self.buf) // PAGE_SIZE
        self.pool = PagePool(self.page, PFN_FIRST_FREE, n - PFN_FIRST_FREE, headroom=headroom)
        self.initmem = InitMemory(self.pages, n, self.pool.reserve_above)
        if data is None:
            self.initmem.format()
        else:
            self.initmem.load()

    def page(self, pfn: int) -> memoryview:
        return self.pages(pfn, 1)

    def pages(self, pfn: int, count: int) -> memoryview:
        return self.view[pfn * PAGE_SIZE:(pfn + count) * PAGE_SIZE]

    def resume(self, **kw) -> "Memory":
        return Memory(bytes(self.buf), **kw)


def test_initmem_regions_come_from_the_top_of_memory_down_in_whole_pages():
    mem = Memory()
    a = mem.initmem.region("a", 100)
    b = mem.initmem.region("b", PAGE_SIZE + 1)
    assert len(a) == 100 and len(b) == PAGE_SIZE + 1
    assert mem.initmem.regions() == {"a": (NR_PAGES - 1, 1, 100),
                                     "b": (NR_PAGES - 3, 2, PAGE_SIZE + 1)}
    a[:3] = b"abc"
    assert mem.buf[(NR_PAGES - 1) * PAGE_SIZE:][:3] == b"abc"  # a's bytes are guest pages
    assert mem.pool.ceiling == NR_PAGES - 3


def test_initmem_the_same_name_gives_the_same_pages_and_a_resume_finds_them():
    mem = Memory()
    mem.initmem.region("state", 16)[:] = bytes(range(16))
    assert bytes(mem.initmem.region("state", 16)) == bytes(range(16))
    mem.initmem.region("other", 8)[:] = b"x" * 8
    again = mem.resume()
    assert again.initmem.regions() == mem.initmem.regions()
    assert bytes(again.initmem.region("state", 16)) == bytes(range(16))
    assert bytes(again.initmem.region("other", 8)) == b"x" * 8
    assert again.pool.ceiling == NR_PAGES - 2  # the drivers' pool stays below them
    again.initmem.region("new", 1)  # and a new region goes below the old ones
    assert again.initmem.regions()["new"][0] == NR_PAGES - 3


def test_initmem_a_new_region_is_zeroed_whatever_its_pages_held():
    mem = Memory()
    mem.buf[:] = b"\xff" * len(mem.buf)  # an old domain's driver pages, say
    mem.initmem.format()
    assert bytes(mem.initmem.region("fresh", 3 * PAGE_SIZE)) == bytes(3 * PAGE_SIZE)


@pytest.mark.parametrize("name, nbytes", [("", 8), ("x" * (NAME_MAX + 1), 8), ("a\0b", 8),
                                          ("ok", 0), ("ok", -1), (7, 8)])
def test_initmem_refuses_a_bad_name_or_size_with_einval(name, nbytes):
    with pytest.raises(XenError) as e:
        Memory().initmem.region(name, nbytes)
    assert e.value.errno == Errno.EINVAL


def test_initmem_asking_again_with_another_size_is_einval():
    mem = Memory()
    mem.initmem.region("s", 8)
    with pytest.raises(XenError) as e:
        mem.initmem.region("s", 16)
    assert e.value.errno == Errno.EINVAL and "has 8 bytes" in str(e.value)


def test_initmem_enomem_before_reaching_the_drivers_pages_and_their_headroom():
    mem = Memory(headroom=4)
    used = [mem.pool.alloc() for _ in range(10)]  # the drivers' pages: 16..25
    assert used == list(range(PFN_FIRST_FREE, PFN_FIRST_FREE + 10))
    room = NR_PAGES - (PFN_FIRST_FREE + 10 + 4)  # beyond what they use and their headroom
    with pytest.raises(XenError) as e:
        mem.initmem.region("big", (room + 1) * PAGE_SIZE)
    assert e.value.errno == Errno.ENOMEM
    assert mem.initmem.regions() == {}  # nothing taken
    mem.initmem.region("fits", room * PAGE_SIZE)
    for pfn in used:  # the pool still hands out what it has below the init's pages
        mem.pool.free(pfn)
    assert sorted(mem.pool.alloc() for _ in range(10 + 4)) == list(
        range(PFN_FIRST_FREE, PFN_FIRST_FREE + 14))
    with pytest.raises(XenError) as e:
        mem.pool.alloc()
    assert e.value.errno == Errno.ENOSPC


def test_initmem_directory_holds_at_most_max_regions():
    mem = Memory(nr_pages=MAX_REGIONS + PFN_FIRST_FREE + 1)
    for i in range(MAX_REGIONS):
        mem.initmem.region(f"r{i}", 1)
    with pytest.raises(XenError) as e:
        mem.initmem.region("one-more", 1)
    assert e.value.errno == Errno.ENOSPC
    assert len(mem.resume().initmem.regions()) == MAX_REGIONS


def _corrupt(buf: bytearray, offset: int, fmt: str, value) -> None:
    struct.pack_into(fmt, buf, PFN_INIT_MEMORY * PAGE_SIZE + offset, value)


@pytest.mark.parametrize("offset, fmt, value", [
    (0, "<8s", b"nothing!"),  # magic
    (8, "<I", 2),  # version
    (12, "<I", MAX_REGIONS + 1),  # count
    (16, "<Q", NR_PAGES + 1),  # floor above memory
    (24 + 40, "<Q", 3),  # an entry's first pfn below the floor
    (24 + 48, "<Q", 0),  # an entry of no pages
    (24 + 56, "<Q", 2 * PAGE_SIZE),  # more bytes than its pages
    (24, "<40s", b"\xff\xfe"),  # a name that is not UTF-8
])
def test_initmem_a_resume_refuses_a_directory_that_does_not_hold_together(offset, fmt, value):
    mem = Memory()
    mem.initmem.region("a", 8)
    mem.initmem.region("b", 8)
    _corrupt(mem.buf, offset, fmt, value)
    with pytest.raises(XenError) as e:
        mem.resume()
    assert e.value.errno == Errno.EINVAL


def test_initmem_a_resume_refuses_overlapping_or_duplicate_regions():
    mem = Memory()
    mem.initmem.region("a", 8)
    mem.initmem.region("b", 8)
    entry_b = 24 + 64
    _corrupt(mem.buf, entry_b + 40, "<Q", NR_PAGES - 1)  # b on a's page
    with pytest.raises(XenError):
        mem.resume()
    _corrupt(mem.buf, entry_b + 40, "<Q", NR_PAGES - 2)
    _corrupt(mem.buf, entry_b, "<40s", b"a")  # b named a
    with pytest.raises(XenError):
        mem.resume()


def test_initmem_a_fresh_domain_has_no_directory_to_resume_from():
    with pytest.raises(XenError) as e:
        Memory(data=bytes(NR_PAGES * PAGE_SIZE))
    assert e.value.errno == Errno.EINVAL


def test_kernel_data_round_trip_and_a_page_without_it_is_einval():
    page = memoryview(bytearray(PAGE_SIZE))
    with pytest.raises(XenError) as e:
        KernelData.read(page)
    assert e.value.errno == Errno.EINVAL
    KernelData(clock=12.5, suspends=3).write(page)
    assert KernelData.read(page) == KernelData(clock=12.5, suspends=3)
    struct.pack_into("<d", page, 16, float("nan"))
    with pytest.raises(XenError):
        KernelData.read(page)


def test_initmem_leaves_the_drivers_what_they_may_take_even_before_they_take_it():
    """The kernel sets ``keep`` from the frontends it probed (rings and buffers at most): a NIC
    that connects after the init took its memory still finds its pages."""
    mem = Memory()
    mem.pool.keep = 30
    with pytest.raises(XenError) as e:
        mem.initmem.region("big", (NR_PAGES - PFN_FIRST_FREE - 29) * PAGE_SIZE)
    assert e.value.errno == Errno.ENOMEM
    mem.initmem.region("fits", (NR_PAGES - PFN_FIRST_FREE - 30) * PAGE_SIZE)
    assert sorted(mem.pool.alloc() for _ in range(30))[-1] == PFN_FIRST_FREE + 29
