"""Memory (issue 14): each domain's p2m in the hypervisor, the reservation ops over it and
what hostile input gets, the guest's balloon driver deciding batches, the page pool never
handing out a ballooned pfn, and the toolstack's mem-set / mem-max as libxl does them.

The hypervisor is the real state machine driven with msgpack hypercalls (no Ray, no files:
effects are checked, not carried out); the balloon driver calls it through a client that
acts as the guest, or through a fake that refuses what a test wants refused."""

from __future__ import annotations

import struct

import pytest

from actors.domain.balloon import (BATCH, MAX_RETRY_COUNT, Balloon, GuestPages, SavedBalloon,
                                   State, memory_map_pfns)
from actors.domain import balloon as balloon_mod
from actors.domain.initmem import InitMemory
from actors.domain.kdata import BALLOON_OFFSET
from actors.hypervisor.effects import PunchMemory, SizeMemory
from actors.hypervisor.memops import DOMU_MAX_ORDER, MAX_NR_EXTENTS
from actors.hypervisor.p2m import P2M, runs_of
from actors.hypervisor.state import Hypervisor
from actors.toolstack import builder
from actors.xenbus.frontend import PagePool
from cluster.xlcfg.memsize import parse_mem_size_kb
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTST, GNTCOPY_dest_gref, GNTCOPY_source_gref, GrantTable
from protocols.hypercall import (DOMID_ANY, DOMID_SELF, Domctl, GnttabOp, Hypercall, MemoryOp,
                                 Sysctl, XenMapSpace, decode_result, encode_call)
from protocols.libxl_types import DomainConfig
from protocols.page import PAGE_SIZE, PAGES_PER_MIB
from protocols.pv_layout import GNTTAB_FIRST_PFN, PFN_FIRST_FREE

HOST_MIB = 64
MEMORY, MAXMEM = 8, 16  # MiB: the guests here


class Frames:
    """Domain memory as bytearrays (what the shell maps from /dev/shm)."""

    def __init__(self) -> None:
        self.bufs: dict[int, bytearray] = {}

    def __call__(self, domid: int, pfn: int, count: int) -> memoryview:
        buf = self.bufs.setdefault(domid, bytearray(MAXMEM * PAGES_PER_MIB * PAGE_SIZE))
        return memoryview(buf)[pfn * PAGE_SIZE:(pfn + count) * PAGE_SIZE]


class Caller:
    """Hypercalls as one domain: ``raw`` gives (rc, result), a call what the kernel's client
    gives (the result, else rc; XenError for a negative rc). ``effects``: the last call's."""

    def __init__(self, hv: Hypervisor, domid: int) -> None:
        self.hv, self.domid, self.effects = hv, domid, []

    def raw(self, op, subop, **args):
        dom = self.hv.table.domains[self.domid]
        reply, self.effects = self.hv.hypercall(self.domid, dom.secret, f"h1/d{self.domid}",
                                                encode_call(op, subop, args))
        res = decode_result(reply)
        return res.rc, res.result

    def __call__(self, op, subop, **args):
        rc, result = self.raw(op, subop, **args)
        if rc < 0:
            raise XenError(Errno(-rc), f"hypercall {op}/{subop}")
        return result if result is not None else rc

    def reservation(self, sub, extents, order=0, domid=DOMID_SELF, nr=None):
        return self.raw(Hypercall.memory_op, sub, extent_start=list(extents),
                        nr_extents=len(extents) if nr is None else nr, extent_order=order,
                        mem_flags=0, domid=domid)[0]


@pytest.fixture
def hv() -> Hypervisor:
    h = Hypervisor("h1", memory_mib=HOST_MIB, pcpus=2, mem_prefix="/dev/shm/test",
                   frames=Frames())
    h.boot_dom0(memory_mib=16)
    return h


def build(hv: Hypervisor, memory: int = MEMORY, maxmem: int = MAXMEM) -> int:
    """A domain as the toolstack builds it (``builder.populate``): max_mem of memory + 1 MiB,
    the memory map up to maxmem, pfns 0..memory populated in 2 MiB extents."""
    xl = Caller(hv, 0)
    created = xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                 handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                 max_grant_frames=-1, max_maptrack_frames=-1)
    cfg = DomainConfig(name="g", memory=memory, maxmem=maxmem)
    builder.populate(xl, created["domain"], cfg, "g")
    return created["domain"]


def tot_pages(hv: Hypervisor, domid: int) -> int:
    return Caller(hv, 0)(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)["tot_pages"]


def free_pages(hv: Hypervisor) -> int:
    return Caller(hv, 0)(Hypercall.sysctl, Sysctl.physinfo)["free_pages"]


# -- the p2m -------------------------------------------------------------------------------

def test_p2m_extents_stop_at_the_first_bad_one():
    p2m = P2M()
    p2m.grow(64)
    room = lambda size: True  # noqa: E731
    assert p2m.populate([0, 1, 2], 0, room) == 3 and p2m.tot_pages == 3
    assert p2m.populate([3, 2, 4], 0, room) == 1  # 2 holds a page already
    assert p2m.populate([8, 12], 2, room) == 2 and p2m.tot_pages == 12
    assert p2m.populate([17], 2, room) == 0  # misaligned
    assert p2m.populate([64], 0, room) == 0 and p2m.populate([60, 64], 2, room) == 1
    freed: list = []
    assert p2m.decrease([1, 1], 0, freed=freed) == 1  # a duplicate finds a hole
    assert p2m.decrease([5], 0) == 0 and 1 not in p2m and 0 in p2m
    assert p2m.decrease([8], 2, keep=lambda g, s: g <= 9 < g + s) == 0
    assert p2m.decrease([8, 12], 2, freed=freed) == 2
    assert runs_of(freed) == [(1, 1), (8, 8)]
    assert p2m.lowest_holes(3) == [(1, 1), (4, 2)]
    assert p2m.highest_pages(5) == [(60, 4), (3, 1)]


def test_runs_of_merges_adjacent_extents_either_way():
    assert runs_of([(10, 1), (11, 1), (9, 1), (20, 2)]) == [(9, 3), (20, 2)]


# -- the builder's domain: address space maxmem, memory populated ----------------------------

def test_a_domain_covers_maxmem_pfns_with_memory_populated(hv):
    xl = Caller(hv, 0)
    free = free_pages(hv)
    d = build(hv)
    dom = hv.table.domains[d]
    assert dom.p2m.nr_pfns == MAXMEM * PAGES_PER_MIB and dom.p2m.mapped
    assert tot_pages(hv, d) == MEMORY * PAGES_PER_MIB == dom.p2m.tot_pages
    assert dom.max_pages == (MEMORY * 1024 + builder.LIBXL_MAXMEM_CONSTANT) // 4
    assert free_pages(hv) == free - MEMORY * PAGES_PER_MIB
    assert all(p in dom.p2m for p in range(MEMORY * PAGES_PER_MIB))
    assert MEMORY * PAGES_PER_MIB not in dom.p2m
    guest = Caller(hv, d)
    answer = guest(Hypercall.memory_op, MemoryOp.memory_map, nr_entries=8)
    assert answer == {"nr_entries": 1, "map": [{"addr": 0, "size": MAXMEM << 20, "type": 1}]}
    assert memory_map_pfns(guest) == MAXMEM * PAGES_PER_MIB
    # the set_memory_map sized the file to the whole address space
    rc, _ = xl.raw(Hypercall.memory_op, MemoryOp.set_memory_map, domid=d,
                   map=[{"addr": 0, "size": MAXMEM << 20, "type": 1}])
    assert rc == 0 and xl.effects == [SizeMemory("/dev/shm/test-d1", MAXMEM * PAGES_PER_MIB)]


def test_a_huge_maxmem_costs_nothing_and_short_memory_is_enomem_with_the_exact_count(hv):
    with pytest.raises(XenError) as e:
        build(hv, memory=100, maxmem=100_000)
    assert e.value.errno == Errno.ENOMEM
    assert "host has memory for 48 of the 100 MiB" in str(e.value)
    dom = max(hv.table.domains.values(), key=lambda d: d.domid)
    assert dom.p2m.nr_pfns == 100_000 * PAGES_PER_MIB
    assert len(dom.p2m.bits) == dom.p2m.tot_pages == 48 * PAGES_PER_MIB


def test_memory_map_is_enosys_until_set_and_never_shrinks(hv):
    xl = Caller(hv, 0)
    d = xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
           handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
           max_grant_frames=-1, max_maptrack_frames=-1)["domain"]
    guest = Caller(hv, d)
    assert guest.raw(Hypercall.memory_op, MemoryOp.memory_map, nr_entries=4)[0] == -Errno.ENOSYS
    assert memory_map_pfns(guest) is None
    ram = [{"addr": 0, "size": 4 << 20, "type": 1}]
    assert guest.raw(Hypercall.memory_op, MemoryOp.set_memory_map, domid=DOMID_SELF,
                     map=ram)[0] == 0  # XSM_TARGET: a domain may set its own
    small = [{"addr": 0, "size": 1 << 20, "type": 1}]
    assert xl.raw(Hypercall.memory_op, MemoryOp.set_memory_map, domid=d,
                  map=small)[0] == -Errno.EINVAL
    huge = [{"addr": 0, "size": 1 << 50, "type": 1}]
    assert xl.raw(Hypercall.memory_op, MemoryOp.set_memory_map, domid=d,
                  map=huge)[0] == -Errno.EINVAL
    assert guest.raw(Hypercall.memory_op, MemoryOp.set_memory_map, domid=0,
                     map=ram)[0] == -Errno.EPERM


# -- decrease and populate by gpfn -----------------------------------------------------------

def test_decrease_then_populate_the_same_gpfns(hv):
    d = build(hv)
    guest = Caller(hv, d)
    before_tot, before_free = tot_pages(hv, d), free_pages(hv)
    gpfns = list(range(1000, 1512))
    assert guest.reservation(MemoryOp.decrease_reservation, gpfns) == 512
    assert guest.effects == [PunchMemory("/dev/shm/test-d1", ((1000, 512),))]
    assert tot_pages(hv, d) == before_tot - 512 and free_pages(hv) == before_free + 512
    assert guest(Hypercall.memory_op, MemoryOp.current_reservation,
                 domid=DOMID_SELF) == before_tot - 512
    assert guest.reservation(MemoryOp.populate_physmap, gpfns[::-1]) == 512
    assert guest.effects == []  # the file already covers them: holes read as zeros
    assert tot_pages(hv, d) == before_tot and free_pages(hv) == before_free


def test_populate_never_goes_above_max_pages(hv):
    d = build(hv)
    guest = Caller(hv, d)
    top = MEMORY * PAGES_PER_MIB
    room = hv.table.domains[d].max_pages - top  # LIBXL_MAXMEM_CONSTANT: 256 pages
    assert guest.reservation(MemoryOp.populate_physmap, range(top, top + 1024)) == room
    assert tot_pages(hv, d) == top + room
    # max_mem lowered below the allocation is allowed; then nothing more is given
    Caller(hv, 0)(Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=4 * 1024)
    assert hv.table.domains[d].max_pages == 1024 < tot_pages(hv, d)
    assert guest.reservation(MemoryOp.decrease_reservation, [1000]) == 1
    assert guest.reservation(MemoryOp.populate_physmap, [1000]) == 0
    Caller(hv, 0)(Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=1 << 60)
    assert hv.table.domains[d].max_pages == 0xFFFFFFFF  # an unsigned int in Xen


def test_populate_is_bounded_by_the_host_free_pages(hv):
    d = build(hv, memory=8, maxmem=64)
    Caller(hv, 0)(Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=64 * 1024)
    guest = Caller(hv, d)
    free = free_pages(hv)
    top = 8 * PAGES_PER_MIB
    assert guest.reservation(MemoryOp.populate_physmap, range(top, top + free + 10)) == free
    assert free_pages(hv) == 0


@pytest.mark.parametrize("what, extents, order, expect_done", [
    ("beyond the address space", [MAXMEM * PAGES_PER_MIB, 5], 0, 0),
    ("a hole", [MEMORY * PAGES_PER_MIB + 3], 0, 0),
    ("a duplicate", [700, 701, 700], 0, 2),
    ("a grant-table frame", [600, GNTTAB_FIRST_PFN], 0, 1),
    ("a misaligned extent", [513], 1, 0),
    ("an order above a DomU's max_order", [0], DOMU_MAX_ORDER + 1, 0),
])
def test_hostile_decrease_stops_at_the_first_bad_extent(hv, what, extents, order, expect_done):
    d = build(hv)
    guest = Caller(hv, d)
    before = tot_pages(hv, d)
    assert guest.reservation(MemoryOp.decrease_reservation, extents, order) == expect_done, what
    assert tot_pages(hv, d) == before - expect_done


def test_a_reservation_op_on_another_domain_or_too_big_is_0_done_and_changes_nothing(hv):
    d1, d2 = build(hv), build(hv)
    g1 = Caller(hv, d1)
    before = tot_pages(hv, d2), free_pages(hv)
    assert g1.reservation(MemoryOp.decrease_reservation, [100], domid=d2) == 0
    assert g1.reservation(MemoryOp.populate_physmap, [3000], domid=d2) == 0
    assert g1.reservation(MemoryOp.decrease_reservation, [100], nr=MAX_NR_EXTENTS + 1) == 0
    assert Caller(hv, 0).reservation(MemoryOp.decrease_reservation, [100], domid=999) == 0
    assert (tot_pages(hv, d2), free_pages(hv)) == before
    assert g1.effects == []
    # a list shorter than nr_extents "faults" at its end
    assert g1.reservation(MemoryOp.decrease_reservation, [100, 101], nr=5) == 2
    # no list: nothing to decrease
    assert g1.reservation(MemoryOp.decrease_reservation, [], nr=5) == 0
    # Dom0 may decrease another domain's memory (the toolstack's own)
    assert Caller(hv, 0).reservation(MemoryOp.decrease_reservation, [100], domid=d2) == 1


def test_a_page_another_domain_maps_cannot_be_given_back(hv):
    d = build(hv)
    guest = Caller(hv, d)
    table = GrantTable(hv.grants._frames(d, GNTTAB_FIRST_PFN, 8))
    table.grant_access(8, 0, 900, readonly=True)
    xl = Caller(hv, 0)
    [mapped] = xl(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                  ops=[{"host_addr": 0, "flags": 4 | 2, "ref": 8, "dom": d}])
    assert mapped["status"] == GNTST.okay
    assert guest.reservation(MemoryOp.decrease_reservation, [900]) == 0
    xl(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
       ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": mapped["handle"]}])
    assert guest.reservation(MemoryOp.decrease_reservation, [900]) == 1
    # Dom0's foreign map of a page (xenconsoled's console ring) holds it too
    xl(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
       space=XenMapSpace.gmfn_foreign, size=1, foreign_domid=d, idxs=[901], gpfns=[0])
    assert guest.reservation(MemoryOp.decrease_reservation, [901]) == 0


def test_a_ballooned_out_pfn_cannot_be_granted_or_foreign_mapped(hv):
    d = build(hv)
    guest = Caller(hv, d)
    assert guest.reservation(MemoryOp.decrease_reservation, [900]) == 1
    table = GrantTable(hv.grants._frames(d, GNTTAB_FIRST_PFN, 8))
    table.grant_access(8, 0, 900, readonly=False)
    table.grant_access(9, 0, 899, readonly=False)
    xl = Caller(hv, 0)
    results = xl(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                 ops=[{"host_addr": 0, "flags": 2, "ref": ref, "dom": d} for ref in (8, 9)])
    assert [r["status"] for r in results] == [GNTST.bad_page, GNTST.okay]
    answer = xl(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
                space=XenMapSpace.gmfn_foreign, size=2, foreign_domid=d, idxs=[900, 898],
                gpfns=[0, 1])
    assert answer["errs"] == [-Errno.EINVAL, 0]
    copy = xl(Hypercall.grant_table_op, GnttabOp.copy, ops=[{
        "source": {"u": 8, "domid": d, "offset": 0},
        "dest": {"u": 9, "domid": d, "offset": 0}, "len": 8,
        "flags": GNTCOPY_source_gref | GNTCOPY_dest_gref}])
    assert copy[0]["status"] == GNTST.bad_page
    # the guest's own copy from a hole of its own
    own = guest(Hypercall.grant_table_op, GnttabOp.copy, ops=[{
        "source": {"u": 900, "domid": DOMID_SELF, "offset": 0},
        "dest": {"u": 898, "domid": DOMID_SELF, "offset": 0}, "len": 8, "flags": 0}])
    assert own[0]["status"] == GNTST.bad_page


# -- the page pool and the init's memory around the balloon ----------------------------------

class GuestMemory:
    """A guest's pool and init memory over ``nr_pages`` of bytes (``headroom`` as the kernel)."""

    def __init__(self, nr_pages: int, headroom: int = 8) -> None:
        self.view = memoryview(bytearray(nr_pages * PAGE_SIZE))
        self.pool = PagePool(lambda pfn: self.pages(pfn, 1), PFN_FIRST_FREE,
                             nr_pages - PFN_FIRST_FREE, headroom=headroom)
        self.initmem = InitMemory(self.pages, nr_pages, self.pool.reserve_above)
        self.initmem.format()

    def pages(self, pfn: int, count: int) -> memoryview:
        return self.view[pfn * PAGE_SIZE:(pfn + count) * PAGE_SIZE]


def test_the_pool_and_the_init_memory_never_hand_out_a_ballooned_pfn():
    mem = GuestMemory(256)
    pool = mem.pool
    pool.keep = 4
    first = [pool.alloc() for _ in range(3)]
    mem.initmem.region("work", 64 * PAGE_SIZE)  # pfns 192..255
    taken = pool.balloon_take(1000)
    assert taken == list(range(16 + 3 + 8, 192))  # above the pool's headroom, below the init
    assert pool.balloon_room() == 0 and pool.ballooned == len(taken)
    with pytest.raises(XenError) as e:
        [pool.alloc() for _ in range(100)]
    assert e.value.errno == Errno.ENOSPC
    handed = set(first) | set(range(19, 27))
    assert not handed & set(taken)
    with pytest.raises(XenError) as e:
        mem.initmem.region("more", PAGE_SIZE)
    assert e.value.errno == Errno.ENOMEM
    with pytest.raises(XenError):
        pool.balloon_give(taken[:10])  # not the top of the block
    pool.balloon_give(taken[-10:])
    region = mem.initmem.region("more", 10 * PAGE_SIZE)
    assert len(region) == 10 * PAGE_SIZE and mem.initmem.floor == taken[-10]


# -- the balloon driver's decisions ----------------------------------------------------------

class Guest:
    """A booted guest of ``build``'s domain: its pool and init memory (a workload region),
    and its balloon over them, calling the hypervisor as the guest."""

    def __init__(self, hv: Hypervisor, d: int, work_pages: int = 256) -> None:
        self.hv, self.d = hv, d
        nr_pages = MEMORY * PAGES_PER_MIB
        self.mem = GuestMemory(nr_pages)
        self.mem.pool.keep = 16
        self.work = self.mem.initmem.region("work", work_pages * PAGE_SIZE)
        self.client = Caller(hv, d)
        mapped = memory_map_pfns(self.client)
        self.balloon = Balloon(self.client, GuestPages(self.mem.pool, nr_pages), nr_pages,
                               extra=range(nr_pages, mapped))

    def run(self, limit: int = 10_000) -> list[State]:
        states = []
        while self.balloon.credit() and len(states) < limit:
            states.append(self.balloon.step())
            if states[-1] is not State.DONE:
                break
        return states


def test_the_balloon_gives_pages_back_in_batches_and_takes_them_again(hv):
    d = build(hv)
    g = Guest(hv, d)
    free = free_pages(hv)
    nr = MEMORY * PAGES_PER_MIB
    target = 4 * PAGES_PER_MIB
    g.balloon.set_target(target)
    states = g.run()
    assert states == [State.DONE] * -(-(nr - target) // BATCH)
    assert tot_pages(hv, d) == target == g.balloon.current_pages
    assert free_pages(hv) == free + nr - target
    p2m = hv.table.domains[d].p2m
    ballooned = set(range(nr)) - {p for p in range(nr) if p in p2m}
    assert len(ballooned) == nr - target
    work = g.mem.initmem.regions()["work"]
    assert not ballooned & set(range(work[0], work[0] + work[1]))  # not the init's memory
    assert not ballooned & set(range(PFN_FIRST_FREE + 16))  # nor the kernel's, the drivers'
    stats = g.balloon.statistics()
    assert stats["current_kb"] == target * 4 and stats["target_kb"] == target * 4
    assert stats["ballooned_pages"] == (MAXMEM - MEMORY) * PAGES_PER_MIB + nr - target
    # and back: the same pfns, last ballooned first
    g.balloon.set_target(nr)
    assert set(g.run()) == {State.DONE}
    assert tot_pages(hv, d) == nr and free_pages(hv) == free
    assert g.mem.pool.ballooned == 0


def test_the_balloon_grows_into_maxmem_only_as_far_as_max_mem_lets_it(hv):
    d = build(hv)
    g = Guest(hv, d)
    nr, top = MEMORY * PAGES_PER_MIB, MAXMEM * PAGES_PER_MIB
    g.balloon.set_target(top)  # no mem-set raised max_mem: Xen gives the 1 MiB slack only
    states = g.run()
    assert states[-1] is State.EAGAIN and g.balloon.schedule_delay == 2
    assert tot_pages(hv, d) == hv.table.domains[d].max_pages == nr + PAGES_PER_MIB * 1
    Caller(hv, 0)(Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=MAXMEM * 1024 + 1024)
    assert g.run()[-1] is State.DONE and tot_pages(hv, d) == top
    # down again: the pfns above nr_pages go first, then the pool's
    g.balloon.set_target(nr - 512)
    g.run()
    assert tot_pages(hv, d) == nr - 512 and g.mem.pool.ballooned == 512


def test_populate_failures_back_off_then_give_up_until_the_target_changes():
    class Refusing:
        def __init__(self):
            self.calls = []

        def __call__(self, op, sub, **args):
            self.calls.append(sub)
            return 0 if sub == MemoryOp.populate_physmap else len(args["extent_start"])

    mem = GuestMemory(4096)
    xen = Refusing()
    b = Balloon(xen, GuestPages(mem.pool, 4096), 4096)
    b.set_target(4096 - 600)
    assert [b.step(), b.step()] == [State.DONE, State.DONE] and b.current_pages == 3496
    b.set_target(4096)
    delays = []
    for _ in range(MAX_RETRY_COUNT):
        state = b.step()
        delays.append((state, b.schedule_delay, b.timeout()))
    assert delays == [(State.EAGAIN, 2, 2.0), (State.EAGAIN, 4, 4.0), (State.EAGAIN, 8, 8.0),
                      (State.ECANCELED, 1, 3600.0)]
    assert b.statistics()["populate_short"] == 4 and b.current_pages == 3496


def test_the_balloon_gives_back_only_what_the_guest_does_not_use():
    class Xen:
        def __call__(self, op, sub, **args):
            return len(args["extent_start"])

    mem = GuestMemory(1024)
    mem.pool.keep = 16
    mem.initmem.region("work", 512 * PAGE_SIZE)
    b = Balloon(Xen(), GuestPages(mem.pool, 1024), 1024)
    spare = mem.pool.balloon_room()
    b.set_target(100)  # more than it has to spare
    states = [b.step() for _ in range(3)]
    assert b.current_pages == 1024 - spare and states[0] is State.DONE
    assert states[-1] is State.EAGAIN
    # a target above every page the guest has is cut down to what it has
    b.set_target(5000)
    while b.ballooned:
        b.step()
    assert b.step() is State.ECANCELED and b.target_pages == b.current_pages == 1024


def test_balloon_start_watches_memory_target_in_kib():
    class Xs:
        def __init__(self):
            self.nodes = {"memory/target": b"16384"}

        def read(self, path):
            return self.nodes[path]

    class Xenwatch:
        def register_watch(self, path, token, handler):
            self.path, self.handler = path, handler
            handler()  # fires once on registration

    class Runtime:
        def spawn(self, fn, *args, name):
            self.spawned = name  # the thread is not needed: the test steps the balloon

    class Xen:
        def __call__(self, op, sub, **args):
            if sub == MemoryOp.memory_map:
                return {"nr_entries": 1, "map": [{"addr": 0, "size": 32 << 20, "type": 1}]}
            return len(args["extent_start"])

    mem = GuestMemory(8 * PAGES_PER_MIB)
    xs, watch, runtime, lines = Xs(), Xenwatch(), Runtime(), []
    b = balloon_mod.start(Xen(), xs, watch, None, runtime, mem.pool, 8 * PAGES_PER_MIB,
                          32 * PAGES_PER_MIB, None, lines.append)
    assert watch.path == "memory/target" and runtime.spawned == "xen-balloon"
    assert lines == ["xen:balloon: Initialising balloon driver"]
    assert b.target_pages == 4096 and len(b.ballooned) == 24 * PAGES_PER_MIB
    xs.nodes["memory/target"] = b"4096"
    watch.handler()
    assert b.target_pages == 1024
    xs.nodes["memory/target"] = b"garbage"
    watch.handler()
    assert b.target_pages == 1024


# -- the balloon across a suspend: its state in the kernel data page ------------------------

def balloon_area() -> memoryview:
    return memoryview(bytearray(PAGE_SIZE))[BALLOON_OFFSET:]


def resumed(g: Guest, area: memoryview) -> Balloon:
    """The balloon of ``g`` resumed in a new kernel (fresh pool and init memory) from
    ``area``, as the kernel's resume path does."""
    nr = MEMORY * PAGES_PER_MIB
    g.mem = GuestMemory(nr)
    g.mem.pool.keep = 16
    g.mem.initmem.region("work", 256 * PAGE_SIZE)
    saved = SavedBalloon.read(area, nr, memory_map_pfns(g.client))
    g.mem.pool.balloon_resume(*saved.pool_block())
    g.balloon = Balloon.resumed(g.client, g.mem.pool, saved)
    return g.balloon


def test_a_resumed_balloon_goes_on_from_the_pfns_it_had_given_back(hv):
    d = build(hv)
    g = Guest(hv, d)
    nr, top = MEMORY * PAGES_PER_MIB, MAXMEM * PAGES_PER_MIB
    Caller(hv, 0)(Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=MAXMEM * 1024 + 1024)
    for target in (nr + 1024, nr - 300):  # pfns above nr_pages in use, then the pool's too
        g.balloon.set_target(target)
        assert set(g.run()) == {State.DONE}
    before = g.balloon.saved()
    area = balloon_area()
    assert before.write(area)
    assert struct.unpack_from("<II", area, 16) == (4, 0)  # four runs: compact
    b = resumed(g, area)
    assert b.saved() == before and g.mem.pool.ballooned == 300
    assert b.current_pages == b.target_pages == tot_pages(hv, d) == nr - 300
    # it follows the target from there: its pfns are the ones Xen has unpopulated
    for target in (nr + 100, nr - 500):
        b.set_target(target)
        assert set(g.run()) == {State.DONE} and tot_pages(hv, d) == target
        assert b.saved().write(area)
        b = resumed(g, area)  # and again, from pfns above nr_pages in use
    b.set_target(top)
    assert set(g.run()) == {State.DONE}
    assert tot_pages(hv, d) == b.current_pages == top and not b.ballooned
    assert g.mem.pool.ballooned == 0 and b.stats["populate_short"] == 0


def test_a_balloon_too_scattered_for_the_page_is_not_saved():
    area = balloon_area()
    SavedBalloon(2048, 2048, (), ()).write(area)
    scattered = tuple(range(4096, 8192, 2))
    assert not SavedBalloon(2048, 2048, scattered, ()).write(area)
    assert SavedBalloon.read(area, 2048, 8192) is None  # the resumed driver starts afresh


def _valid(area: memoryview) -> None:
    """A guest of 2048 pages, pfns to 4096: the top 1048 and 100 of the pool's ballooned,
    1000 above nr_pages populated. Runs: (4095, -1048), (600, 100); (2048, 1000)."""
    SavedBalloon(2048, 2048 - 100 + 1000, tuple(range(4095, 3047, -1)) + tuple(range(600, 700)),
                 tuple(range(2048, 3048))).write(area)


def _run(i: int, first: int, n: int):
    return lambda a: struct.pack_into("<Qq", a, 24 + 16 * i, first, n)


@pytest.mark.parametrize("corrupt", [
    lambda a: struct.pack_into("<I", a, 8, 1024),  # another nr_pages
    lambda a: struct.pack_into("<I", a, 12, 2049),  # current_pages not what its pfns say
    lambda a: struct.pack_into("<II", a, 16, 1000, 1000),  # more runs than the page holds
    _run(0, 4095, 0),  # an empty run
    _run(0, 4096, -1000),  # a pfn past the guest's memory
    _run(1, 3, 100),  # the kernel's own pages
    _run(1, 1 << 63, -(1 << 62)),  # huge
    _run(1, 3000, 100),  # pfns twice
    _run(1, 699, -100),  # the pool's block going down
    _run(2, 2047, 1000),  # a pfn below nr_pages as populated above it
    lambda a: struct.pack_into("<I", a, 20, 0),  # the populated run missing
], ids=["nr_pages", "current", "runs", "empty", "past-end", "low", "huge", "twice", "down",
        "populated-low", "missing"])
def test_a_garbage_balloon_state_is_einval(corrupt):
    area = balloon_area()
    _valid(area)
    assert SavedBalloon.read(area, 2048, 4096).current_pages == 2948
    corrupt(area)
    with pytest.raises(XenError) as e:
        SavedBalloon.read(area, 2048, 4096)
    assert e.value.errno == Errno.EINVAL


def test_random_balloon_state_is_einval_or_a_state_the_guest_can_have():
    import random

    rng = random.Random(14)
    for _ in range(300):
        area = balloon_area()
        _valid(area)
        for _ in range(rng.randrange(1, 8)):
            area[rng.randrange(8, 24 + 16 * 4)] = rng.randrange(256)
        try:
            saved = SavedBalloon.read(area, 2048, 4096)
        except XenError as e:
            assert e.errno == Errno.EINVAL
            continue
        assert set(saved.ballooned) | set(saved.populated) >= set(range(2048, 4096))


def test_a_resumed_pool_block_must_be_free_pool_pages():
    mem = GuestMemory(1024)
    mem.initmem.region("work", 512 * PAGE_SIZE)  # pfns 512..1023
    [mem.pool.alloc() for _ in range(10)]  # 16..25
    for lo, hi in ((20, 100), (400, 600)):
        with pytest.raises(XenError) as e:
            mem.pool.balloon_resume(lo, hi)
        assert e.value.errno == Errno.EINVAL
    mem.pool.balloon_resume(100, 500)
    assert mem.pool.ballooned == 400 and mem.pool.balloon_room() == 12  # 500..511
    mem.pool.balloon_give(range(450, 500))  # the driver gives back from the block's top
    assert mem.pool.ballooned == 350


# -- mem-set and mem-max (libxl_mem.c), and xl's sizes --------------------------------------

@pytest.mark.parametrize("text, kib", [
    ("128m", 131072), ("128M", 131072), ("512", 524288), (512, 524288), ("1g", 1 << 20),
    ("1t", 1 << 30), ("4096k", 4096), ("1048576b", 1024), ("1500b", 1), ("+8", 8192),
])
def test_parse_mem_size_kb_follows_xl(text, kib):
    assert parse_mem_size_kb(text) == kib


@pytest.mark.parametrize("text", ["", "m", "12q", "1.5g", "-5", "12 m", "12mb", -1, None, True])
def test_parse_mem_size_kb_refuses_what_is_no_size(text):
    with pytest.raises(ValueError, match="invalid memory size"):
        parse_mem_size_kb(text)


class FakeXs:
    """A xenstore with transactions that just run (the builder's functions are plain)."""

    def __init__(self, nodes):
        self.nodes = dict(nodes)

    def read_str(self, path, default=None, tx_id=0):
        if path in self.nodes:
            return self.nodes[path]
        if default is not None:
            return default
        raise XenError(Errno.ENOENT, path)

    def write(self, path, value, tx_id=0):
        self.nodes[path] = value

    def transact(self, body):
        return body(1)


class FakeHv:
    def __init__(self):
        self.calls = []

    def __call__(self, op, sub, **args):
        self.calls.append((sub, args))
        return 0


def test_mem_set_writes_the_target_and_raises_max_mem_as_libxl():
    xs = FakeXs({"/local/domain/3/memory/target": "524288",
                 "/local/domain/3/memory/static-max": "524288", "/local/domain/3/vm": "/vm/u"})
    hv = FakeHv()
    assert builder.set_memory_target(hv, xs, 3, 131072) == 131072
    assert hv.calls == [(Domctl.max_mem, {"domain": 3, "max_memkb": 131072 + 1024})]
    assert xs.nodes["/local/domain/3/memory/target"] == "131072"
    assert xs.nodes["/vm/u/memory"] == "128"
    with pytest.raises(XenError, match="memory_dynamic_max must be less than or equal"):
        builder.set_memory_target(hv, xs, 3, 524289)
    assert len(hv.calls) == 1


def test_mem_max_refuses_below_the_target_and_writes_static_max():
    xs = FakeXs({"/local/domain/3/memory/target": "131072",
                 "/local/domain/3/memory/static-max": "524288"})
    hv = FakeHv()
    with pytest.raises(XenError, match="memory_static_max must be greater"):
        builder.set_max_memory(hv, xs, 3, 65536)
    assert builder.set_max_memory(hv, xs, 3, 1 << 20) == 1 << 20
    assert hv.calls == [(Domctl.max_mem, {"domain": 3, "max_memkb": (1 << 20) + 1024})]
    assert xs.nodes["/local/domain/3/memory/static-max"] == str(1 << 20)


def test_the_balloon_thread_follows_the_target_only_while_the_domain_may_run():
    import threading

    from actors.domain.rungate import RunGate
    from protocols.hypercall import ShutdownReason
    from tests.waits import wait_until

    class Xen:
        def __call__(self, op, sub, **args):
            return len(args["extent_start"])

    mem = GuestMemory(4096)
    b = Balloon(Xen(), GuestPages(mem.pool, 4096), 4096)
    gate = RunGate()  # created paused: the balloon waits at the gate
    thread = threading.Thread(target=b.run, args=(gate,), daemon=True)
    thread.start()
    b.set_target(2048)
    gate.set_paused(False)
    wait_until(lambda: b.current_pages == 2048, "the balloon to reach its target")
    b.set_target(3000)
    wait_until(lambda: b.current_pages == 3000, "the balloon to come back up")
    gate.shut_down(ShutdownReason.poweroff)
    b.set_target(1000)  # wakes it: at the gate it finds the domain shut down, and ends
    thread.join(5)
    assert not thread.is_alive() and b.current_pages == 3000
