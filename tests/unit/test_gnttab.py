"""Grant tables, protocols.gnttab and protocols.gnttab_ops: xen-reference.md 6.1, 6.2, 19.3."""

import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocols.errno import Errno, XenError
from protocols.evtchn import DOMID_SELF
from protocols.gnttab import (ENTRIES_PER_FRAME, GNTMAP, GNTST, GNTTAB_NR_RESERVED_ENTRIES, GTF,
                              GNTCOPY_dest_gref, GNTCOPY_source_gref, GnttabCopy, GnttabCopyPtr,
                              GnttabMapGrantRef, GnttabUnmapGrantRef, GrantEntryV1,
                              GrantRefAllocator, GrantTable)
from protocols.gnttab_ops import (MAPTRACK_PER_PAGE, ActiveGrants, CopyPlan, DomainGrants, Maptrack,
                                  copy_batch, grant_copy, granter_in_use, map_batch, map_grant_ref,
                                  release_mappings, unmap_batch, unmap_grant_ref)

GRANTER, BACKEND, OTHER = 5, 1, 2
NR_PAGES = 16
RW = GNTMAP.host_map
RO = GNTMAP.host_map | GNTMAP.readonly
DEV_RW = GNTMAP.device_map


class _Host:
    """Three domains, each with a one-frame grant table and 16 pages of memory."""

    def __init__(self, nr_pages: int = NR_PAGES) -> None:
        self.buf = {d: bytearray(4096) for d in (GRANTER, BACKEND, OTHER)}  # grant frames
        self.doms = {d: DomainGrants(GrantTable(b), ActiveGrants(nr_pages))
                     for d, b in self.buf.items()}
        self.maptrack = {d: Maptrack() for d in self.doms}
        self.mem = {d: bytearray(nr_pages * 4096) for d in self.doms}
        self.table = self.doms[GRANTER].table
        self.active = self.doms[GRANTER].active

    def map(self, ref: int, flags=RW, mapper: int = BACKEND, granter: int = GRANTER):
        g = self.doms[granter]
        return map_grant_ref(g.table, g.active, self.maptrack[mapper], granter=granter, ref=ref,
                             mapper=mapper, flags=flags)

    def unmap(self, handle: int, mapper: int = BACKEND, dev_bus_addr: int = 0):
        return unmap_grant_ref(self.doms.get, self.maptrack[mapper], handle=handle,
                               dev_bus_addr=dev_bus_addr)

    def memcpy(self, plan: CopyPlan) -> None:
        src = self.mem[plan.src_domid]
        dst = self.mem[plan.dst_domid]
        s = plan.src_frame * 4096 + plan.src_offset
        d = plan.dst_frame * 4096 + plan.dst_offset
        dst[d:d + plan.len] = src[s:s + plan.len]

    def copy(self, op: GnttabCopy, caller: int = BACKEND, memcpy=None) -> GNTST:
        return grant_copy(self.doms.get, caller=caller, op=op, memcpy=memcpy or self.memcpy)


def _flags(table: GrantTable, ref: int) -> int:
    return table.entry(ref).flags


def _status_bits(table: GrantTable, ref: int) -> int:
    return _flags(table, ref) & (GTF.reading | GTF.writing)


# -- 6.1: the v1 entry and the guest's side ---------------------------------------------------

def test_gnttab_6_1_entry_is_flags_domid_frame_in_8_bytes():
    e = GrantEntryV1(GTF.permit_access | GTF.readonly, 0x1234, 0xDEADBEEF)
    assert e.pack() == struct.pack("<HHI", 5, 0x1234, 0xDEADBEEF)
    assert GrantEntryV1.unpack(e.pack()) == e
    with pytest.raises(XenError):
        GrantEntryV1.unpack(b"\0" * 7)


def test_gnttab_6_1_grant_access_writes_entry_at_v1_offsets_512_per_frame():
    buf = bytearray(2 * 4096)
    table = GrantTable(buf)
    assert (table.nr_entries, table.nr_frames) == (2 * ENTRIES_PER_FRAME, 2)
    table.grant_access(513, BACKEND, 0x42, readonly=True)
    assert buf[513 * 8:514 * 8] == struct.pack("<HHI", GTF.permit_access | GTF.readonly,
                                               BACKEND, 0x42)
    assert table.entry(513) == GrantEntryV1(GTF.permit_access | GTF.readonly, BACKEND, 0x42)
    assert buf.count(0) == len(buf) - 3  # nothing else touched: bytes 5, 1 and 0x42
    with pytest.raises(XenError) as e:
        table.grant_access(1024, BACKEND, 1)
    assert e.value.errno == Errno.EINVAL
    with pytest.raises(ValueError):
        GrantTable(bytearray(100))


def test_gnttab_6_1_allocator_never_hands_out_reserved_refs_and_is_lowest_free_first():
    alloc = GrantRefAllocator(12)
    refs = [alloc.alloc() for _ in range(4)]
    assert refs == [8, 9, 10, 11]
    assert all(r >= GNTTAB_NR_RESERVED_ENTRIES for r in refs)
    with pytest.raises(XenError) as e:
        alloc.alloc()
    assert e.value.errno == Errno.ENOSPC
    alloc.free(10)
    alloc.free(9)
    assert [alloc.alloc(), alloc.alloc()] == [9, 10]
    for bad in (0, 1, 7, 9 + 100):
        with pytest.raises(XenError):
            alloc.free(bad)


def test_gnttab_6_1_revoke_of_unused_entry_clears_it():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    assert h.table.end_access(8)
    assert h.table.entry(8).flags == 0
    assert h.map(8).status == GNTST.general_error  # GTF_invalid grants nothing


# -- 6.2: map ---------------------------------------------------------------------------------

def test_gnttab_6_2_map_returns_maptrack_handle_frame_and_bus_address():
    h = _Host()
    h.table.grant_access(8, BACKEND, 7)
    r = h.map(8)
    assert (r.status, r.handle, r.frame, r.dev_bus_addr) == (GNTST.okay, 0, 7, 7 << 12)
    assert h.map(8).handle == 1
    assert h.maptrack[BACKEND].entry(0).ref == 8


def test_gnttab_6_2_map_without_host_or_device_map_is_bad_gntref():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    assert h.map(8, flags=GNTMAP.readonly).status == GNTST.bad_gntref
    assert _status_bits(h.table, 8) == 0
    assert len(h.maptrack[BACKEND]) == 0


def test_gnttab_6_2_ref_beyond_table_is_bad_gntref_and_handle_is_not_leaked():
    h = _Host()
    assert h.map(ENTRIES_PER_FRAME).status == GNTST.bad_gntref
    assert len(h.maptrack[BACKEND]) == 0
    h.table.grant_access(8, BACKEND, 3)
    assert h.map(8).handle == 0  # the bad map's handle came back


def test_gnttab_6_2_first_pin_needs_permit_access_no_sub_page_and_mapper_domid():
    h = _Host()
    h.table.grant_access(8, OTHER, 3)
    assert h.map(8).status == GNTST.general_error
    h.table.grant_access(9, BACKEND, 3)
    struct.pack_into("<H", h.buf[GRANTER], 9 * 8, GTF.permit_access | GTF.sub_page)
    assert h.map(9).status == GNTST.general_error
    struct.pack_into("<H", h.buf[GRANTER], 9 * 8, GTF.accept_transfer)
    assert h.map(9).status == GNTST.general_error
    assert _status_bits(h.table, 8) == _status_bits(h.table, 9) == 0
    assert len(h.maptrack[BACKEND]) == 0 and len(h.active) == 0


def test_gnttab_19_3_domid_and_frame_are_checked_only_on_first_pin():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    assert h.map(8, RO).status == GNTST.okay
    struct.pack_into("<HI", h.buf[GRANTER], 8 * 8 + 2, OTHER, 9)  # the guest edits domid, frame
    second = h.map(8, RO)
    assert (second.status, second.frame) == (GNTST.okay, 3)  # the active entry's view
    assert h.map(8, RO, mapper=OTHER).status == GNTST.general_error  # active domid is BACKEND


def test_gnttab_6_2_map_sets_reading_and_writing_only_for_writable_maps():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    h.table.grant_access(9, BACKEND, 4)
    h.map(8, RO)
    h.map(9, RW)
    assert _status_bits(h.table, 8) == GTF.reading
    assert _status_bits(h.table, 9) == GTF.reading | GTF.writing


def test_gnttab_19_3_flags_drop_only_with_the_last_pin_read_and_write_mixed():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    ro1, rw, dev = h.map(8, RO), h.map(8, RW), h.map(8, DEV_RW)
    assert h.active.get(8).counters == (1, 1, 1, 0)
    assert _status_bits(h.table, 8) == GTF.reading | GTF.writing
    assert h.unmap(rw.handle).status == GNTST.okay
    assert _status_bits(h.table, 8) == GTF.reading | GTF.writing  # the device write pin
    assert h.unmap(dev.handle, dev_bus_addr=dev.dev_bus_addr).dirty
    assert _status_bits(h.table, 8) == GTF.reading
    r = h.unmap(ro1.handle)
    assert (r.status, r.domid, r.frame, r.dirty) == (GNTST.okay, GRANTER, 3, False)
    assert _status_bits(h.table, 8) == 0
    assert h.active.get(8) is None and not granter_in_use(h.active)


def test_gnttab_19_3_mapped_grant_cannot_be_revoked():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    m = h.map(8, RO)
    assert not h.table.end_access(8)
    assert h.table.entry(8).flags == GTF.permit_access | GTF.reading
    h.unmap(m.handle)
    assert h.table.end_access(8)
    assert h.table.entry(8).flags == 0


def test_gnttab_6_1_make_readonly_only_while_not_mapped_writable():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    m = h.map(8, RW)
    assert not h.table.make_readonly(8)
    h.unmap(m.handle)
    h.map(8, RO)
    assert h.table.make_readonly(8)
    assert h.table.entry(8).flags & GTF.readonly


def test_gnttab_19_3_writable_map_of_readonly_grant_fails():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3, readonly=True)
    assert h.map(8, RW).status == GNTST.general_error
    assert _status_bits(h.table, 8) == 0
    assert h.map(8, RO).status == GNTST.okay
    assert h.map(8, RW).status == GNTST.general_error  # also once pinned read-only
    assert _status_bits(h.table, 8) == GTF.reading
    assert h.active.get(8).counters == (0, 1, 0, 0)


def test_gnttab_6_2_granted_frame_outside_granter_memory_is_bad_page():
    h = _Host()
    h.table.grant_access(8, BACKEND, NR_PAGES)
    assert h.map(8).status == GNTST.bad_page
    assert _status_bits(h.table, 8) == 0 and len(h.active) == 0


def test_gnttab_6_2_pin_counters_refuse_overflow():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    assert all(h.map(8, RO).status == GNTST.okay for _ in range(128))
    assert h.map(8, RO).status == GNTST.general_error
    assert h.active.get(8).counters == (0, 128, 0, 0)
    assert h.map(8, RW).status == GNTST.general_error  # any counter at 128 blocks all


def test_gnttab_6_2_maptrack_exhausted_is_no_space():
    h = _Host()
    h.maptrack[BACKEND] = Maptrack(max_frames=1)
    for ref in range(8, 12):
        h.table.grant_access(ref, BACKEND, 3)
    handles = {h.map(8 + i % 4, RO).handle for i in range(MAPTRACK_PER_PAGE)}
    assert handles == set(range(MAPTRACK_PER_PAGE))
    assert h.map(8, RO).status == GNTST.no_space
    h.unmap(5)
    h.unmap(2)
    assert [h.map(8, RO).handle, h.map(8, RO).handle] == [5, 2]  # oldest freed first


class _Racing:
    """A u32 view whose ``{flags, domid}`` word the guest rewrites before the first ``n``
    re-reads, as a guest toggling GTF_PWT in a loop would."""

    def __init__(self, table: GrantTable, ref: int, n: int) -> None:
        self.u32, self.i, self.n, self.reads = table._u32, 2 * ref, n, 0

    def __getitem__(self, i: int) -> int:
        if i == self.i:
            self.reads += 1
            if 1 < self.reads <= self.n + 1:
                self.u32[i] ^= GTF.PWT
        return self.u32[i]


@pytest.mark.parametrize("races, status", [(4, GNTST.okay), (5, GNTST.general_error)])
def test_gnttab_6_2_unstable_entry_gives_up_after_5_cmpxchg_attempts(races, status):
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    real = h.table._u32
    h.table._u32 = _Racing(h.table, 8, races)
    try:
        assert h.map(8).status == status
    finally:
        h.table._u32 = real
    assert bool(_status_bits(h.table, 8)) == (status == GNTST.okay)


# -- 6.2: unmap -------------------------------------------------------------------------------

def test_gnttab_6_2_unmap_of_a_handle_never_issued_or_already_unmapped_is_bad_handle():
    h = _Host()
    assert h.unmap(0).status == GNTST.bad_handle
    assert h.unmap(10**9).status == GNTST.bad_handle
    h.table.grant_access(8, BACKEND, 3)
    m = h.map(8)
    assert h.unmap(m.handle).status == GNTST.okay
    assert h.unmap(m.handle).status == GNTST.bad_handle
    assert h.unmap(m.handle, mapper=OTHER).status == GNTST.bad_handle


def test_gnttab_6_2_unmap_checks_dev_bus_addr_and_releases_device_map_only_with_it():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    m = h.map(8, GNTMAP.device_map | GNTMAP.host_map)
    assert h.unmap(m.handle, dev_bus_addr=4 << 12).status == GNTST.bad_dev_addr
    assert h.active.get(8).counters == (1, 0, 1, 0)
    assert h.unmap(m.handle).status == GNTST.okay  # host part only
    assert h.active.get(8).counters == (0, 0, 1, 0)
    assert h.maptrack[BACKEND].entry(m.handle).flags == GNTMAP.device_map
    assert h.unmap(m.handle, dev_bus_addr=m.dev_bus_addr).status == GNTST.okay
    assert h.maptrack[BACKEND].entry(m.handle) is None and _status_bits(h.table, 8) == 0


def test_grant_table_c_unmap_common_checks_dev_bus_addr_only_for_a_device_map():
    """grant_table.c ``unmap_common``: ``op->dev_bus_addr && (flags & GNTMAP_device_map) &&
    op->dev_bus_addr != mfn_to_maddr(act->mfn)`` gives ``GNTST_bad_dev_addr`` (-6) and changes
    nothing; a host-only mapping ignores ``dev_bus_addr`` and is unmapped."""
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    dev = h.map(8, GNTMAP.device_map)
    r = h.unmap(dev.handle, dev_bus_addr=dev.dev_bus_addr + 4096)
    assert (r.status, int(r.status)) == (GNTST.bad_dev_addr, -6)
    assert h.active.get(8).counters == (0, 0, 1, 0)
    host = h.map(8, GNTMAP.host_map)
    r = h.unmap(host.handle, dev_bus_addr=0xdead000)
    assert (r.status, r.dirty) == (GNTST.okay, True)
    assert h.maptrack[BACKEND].entry(host.handle) is None
    assert h.active.get(8).counters == (0, 0, 1, 0)
    assert h.unmap(dev.handle, dev_bus_addr=dev.dev_bus_addr).status == GNTST.okay
    assert _status_bits(h.table, 8) == 0


# -- 6.2: batches -----------------------------------------------------------------------------

def test_gnttab_6_2_batch_reports_status_per_element():
    h = _Host()
    for ref in (8, 9):
        h.table.grant_access(ref, BACKEND, ref)
    ops = [GnttabMapGrantRef(0, RW, 8, GRANTER), GnttabMapGrantRef(0, RW, 4096, GRANTER),
           GnttabMapGrantRef(0, RO, 9, GRANTER), GnttabMapGrantRef(0, RW, 8, 77),
           GnttabMapGrantRef(0, GNTMAP.readonly, 8, 77)]
    res = map_batch(h.doms.get, h.maptrack[BACKEND], mapper=BACKEND, ops=ops)
    assert [r.status for r in res] == [GNTST.okay, GNTST.bad_gntref, GNTST.okay,
                                       GNTST.bad_domain, GNTST.bad_gntref]
    assert [r.frame for r in res if r.status == GNTST.okay] == [8, 9]
    unmaps = [GnttabUnmapGrantRef(0, 0, res[0].handle), GnttabUnmapGrantRef(0, 0, 99),
              GnttabUnmapGrantRef(0, 0, res[2].handle)]
    out = unmap_batch(h.doms.get, h.maptrack[BACKEND], ops=unmaps)
    assert [r.status for r in out] == [GNTST.okay, GNTST.bad_handle, GNTST.okay]
    assert _status_bits(h.table, 8) == _status_bits(h.table, 9) == 0


def test_gnttab_6_2_hypercall_structs_are_byte_exact():
    m = GnttabMapGrantRef(0x1122334455667788, 3, 9, 5, -3, 7, 0x42000)
    raw = m.pack()
    assert len(raw) == 32
    assert struct.unpack_from("<IIHhIQ", raw, 8) == (3, 9, 5, -3, 7, 0x42000)
    assert GnttabMapGrantRef.unpack(raw) == m
    u = GnttabUnmapGrantRef(0x1000, 0x2000, 4, -4)
    assert len(u.pack()) == 24 and struct.unpack_from("<Ih", u.pack(), 16) == (4, -4)
    assert GnttabUnmapGrantRef.unpack(u.pack()) == u
    c = GnttabCopy(GnttabCopyPtr(8, 5, 100), GnttabCopyPtr(0x123456789, DOMID_SELF, 200), 64,
                   GNTCOPY_source_gref, -10)
    raw = c.pack()
    assert len(raw) == 40
    assert struct.unpack_from("<QHH", raw, 16) == (0x123456789, DOMID_SELF, 200)
    assert struct.unpack_from("<HHh", raw, 32) == (64, 1, -10)
    assert GnttabCopy.unpack(raw) == c
    with pytest.raises(XenError):
        GnttabCopy.unpack(raw[:39])


# -- 6.2: copy --------------------------------------------------------------------------------

def _copy(src_ref: int, dst_frame: int, *, length: int = 16, src_off: int = 0,
          dst_off: int = 0) -> GnttabCopy:
    return GnttabCopy(GnttabCopyPtr(src_ref, GRANTER, src_off),
                      GnttabCopyPtr(dst_frame, DOMID_SELF, dst_off), length, GNTCOPY_source_gref)


def test_gnttab_6_2_copy_pins_only_for_its_duration_and_moves_the_bytes():
    h = _Host()
    h.mem[GRANTER][3 * 4096 + 10:3 * 4096 + 14] = b"xeny"
    h.table.grant_access(8, BACKEND, 3, readonly=True)
    seen = []

    def memcpy(plan):
        seen.append((plan, _status_bits(h.table, 8)))
        h.memcpy(plan)

    assert h.copy(_copy(8, 2, length=4, src_off=10, dst_off=20), memcpy=memcpy) == GNTST.okay
    assert seen == [(CopyPlan(GRANTER, 3, 10, BACKEND, 2, 20, 4), GTF.reading)]
    assert h.mem[BACKEND][2 * 4096 + 20:2 * 4096 + 24] == b"xeny"
    assert _status_bits(h.table, 8) == 0 and len(h.active) == 0


def test_gnttab_6_2_copy_into_a_grant_sets_writing_meanwhile():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    op = GnttabCopy(GnttabCopyPtr(1, DOMID_SELF, 0), GnttabCopyPtr(8, GRANTER, 0), 8,
                    GNTCOPY_dest_gref)
    bits = []
    assert h.copy(op, memcpy=lambda p: bits.append(_status_bits(h.table, 8))) == GNTST.okay
    assert bits == [GTF.reading | GTF.writing] and _status_bits(h.table, 8) == 0


def test_gnttab_6_2_copy_crossing_a_page_is_bad_copy_arg():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3)
    calls = []
    assert h.copy(_copy(8, 2, length=17, src_off=4080), memcpy=calls.append) == \
        GNTST.bad_copy_arg
    assert h.copy(_copy(8, 2, length=4096, dst_off=1), memcpy=calls.append) == \
        GNTST.bad_copy_arg
    assert h.copy(_copy(8, 2, length=4096), memcpy=calls.append) == GNTST.okay
    assert len(calls) == 1 and _status_bits(h.table, 8) == 0


def test_gnttab_6_2_copy_into_a_readonly_grant_is_general_error():
    h = _Host()
    h.table.grant_access(8, BACKEND, 3, readonly=True)
    op = GnttabCopy(GnttabCopyPtr(1, DOMID_SELF, 0), GnttabCopyPtr(8, GRANTER, 0), 8,
                    GNTCOPY_dest_gref)
    assert h.copy(op, memcpy=pytest.fail) == GNTST.general_error
    assert _status_bits(h.table, 8) == 0


def test_gnttab_6_2_copy_checks_domains_grants_and_local_frames():
    h = _Host()
    h.table.grant_access(8, OTHER, 3)
    h.table.grant_access(9, BACKEND, 3)
    local_not_self = GnttabCopy(GnttabCopyPtr(1, GRANTER, 0), GnttabCopyPtr(1, DOMID_SELF, 0),
                                8, 0)
    cases = [(local_not_self, GNTST.permission_denied),
             (GnttabCopy(GnttabCopyPtr(8, 77, 0), GnttabCopyPtr(1, DOMID_SELF, 0), 8, 1),
              GNTST.bad_domain),
             (_copy(8, 1), GNTST.general_error),  # granted to OTHER
             (_copy(4096, 1), GNTST.bad_gntref),
             (_copy(9, NR_PAGES), GNTST.bad_page),  # local dest beyond the caller's memory
             (_copy(9, 1), GNTST.okay)]
    assert copy_batch(h.doms.get, caller=BACKEND, ops=[c for c, _ in cases],
                      memcpy=h.memcpy) == [s for _, s in cases]
    assert _status_bits(h.table, 9) == 0 and len(h.active) == 0


# -- 6.2: domain death ------------------------------------------------------------------------

def test_gnttab_6_2_release_mappings_of_a_dying_mapper_clears_flags():
    h = _Host()
    for ref in (8, 9):
        h.table.grant_access(ref, BACKEND, ref)
    h.table.grant_access(10, OTHER, 10)
    h.map(8, RW), h.map(8, RO), h.map(9, GNTMAP.device_map | GNTMAP.host_map | GNTMAP.readonly)
    h.map(10, RO, mapper=OTHER)
    assert granter_in_use(h.active)
    released = release_mappings(h.doms.get, h.maptrack[BACKEND])
    assert sorted((r.frame, r.dirty) for r in released) == [(8, False), (8, True), (9, False)]
    assert len(h.maptrack[BACKEND]) == 0
    assert _status_bits(h.table, 8) == _status_bits(h.table, 9) == 0
    assert h.table.end_access(8) and h.table.end_access(9)
    assert granter_in_use(h.active)  # OTHER still maps ref 10: the granter would be a zombie
    assert _status_bits(h.table, 10) == GTF.reading


# -- property: random grant / map / unmap / copy / end_access --------------------------------

MAPPERS = (BACKEND, OTHER)
MAP_FLAGS = st.sampled_from([RW, RO, DEV_RW, GNTMAP.device_map | GNTMAP.readonly,
                             GNTMAP.device_map | GNTMAP.host_map, GNTMAP.readonly])


class GnttabMachine(RuleBasedStateMachine):
    """Invariants of 6.1/6.2/19.3 over random sequences, against a model of who maps what."""

    def __init__(self) -> None:
        super().__init__()
        self.h = _Host()
        self.alloc = GrantRefAllocator(32)
        self.granted: dict[int, tuple[int, bool, int]] = {}  # ref -> (grantee, readonly, frame)
        self.live: dict[tuple[int, int], tuple[int, int]] = {}  # (mapper, handle) -> ref, flags
        self.retired: list[tuple[int, int]] = []

    @precondition(lambda self: len(self.granted) < 32 - GNTTAB_NR_RESERVED_ENTRIES)
    @rule(mapper=st.sampled_from(MAPPERS), readonly=st.booleans(), frame=st.integers(1, 17))
    def grant(self, mapper, readonly, frame):
        ref = self.alloc.alloc()
        assert ref >= GNTTAB_NR_RESERVED_ENTRIES
        self.h.table.grant_access(ref, mapper, frame, readonly)
        self.granted[ref] = (mapper, readonly, frame)

    @precondition(lambda self: self.granted)
    @rule(data=st.data(), mapper=st.sampled_from(MAPPERS), flags=MAP_FLAGS)
    def map(self, data, mapper, flags):
        ref = data.draw(st.sampled_from(sorted(self.granted)))
        grantee, readonly, frame = self.granted[ref]
        r = self.h.map(ref, flags, mapper=mapper)
        writable = not flags & GNTMAP.readonly
        if not flags & (GNTMAP.host_map | GNTMAP.device_map):
            expected = GNTST.bad_gntref
        elif grantee != mapper or (writable and readonly):
            expected = GNTST.general_error
        elif frame >= NR_PAGES:
            expected = GNTST.bad_page
        else:
            expected = GNTST.okay
        assert r.status == expected
        if r.status == GNTST.okay:
            assert (mapper, r.handle) not in self.live  # handles unique while live
            assert r.frame == frame
            self.live[(mapper, r.handle)] = (ref, flags)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def unmap(self, data):
        mapper, handle = data.draw(st.sampled_from(sorted(self.live)))
        ref, flags = self.live.pop((mapper, handle))
        dev = self.h.active.get(ref).frame << 12 if flags & GNTMAP.device_map else 0
        r = self.h.unmap(handle, mapper=mapper, dev_bus_addr=dev)
        assert (r.status, r.dirty) == (GNTST.okay, not flags & GNTMAP.readonly)
        self.retired.append((mapper, handle))

    @precondition(lambda self: self.retired)
    @rule(data=st.data())
    def unmap_stale_handle(self, data):
        mapper, handle = data.draw(st.sampled_from(self.retired))
        if (mapper, handle) not in self.live:  # not reissued meanwhile
            assert self.h.unmap(handle, mapper=mapper).status == GNTST.bad_handle

    @precondition(lambda self: self.granted)
    @rule(data=st.data(), caller=st.sampled_from(MAPPERS), into=st.booleans())
    def copy(self, data, caller, into):
        ref = data.draw(st.sampled_from(sorted(self.granted)))
        grantee, readonly, frame = self.granted[ref]
        gref, local = GnttabCopyPtr(ref, GRANTER, 0), GnttabCopyPtr(0, DOMID_SELF, 0)
        op = (GnttabCopy(local, gref, 8, GNTCOPY_dest_gref) if into
              else GnttabCopy(gref, local, 8, GNTCOPY_source_gref))
        during = []
        status = self.h.copy(op, caller, memcpy=lambda p: during.append(self._bits(ref)))
        ok = grantee == caller and not (into and readonly) and frame < NR_PAGES
        assert (status == GNTST.okay) == ok
        if ok:
            assert during[0] & GTF.reading and bool(during[0] & GTF.writing) >= into

    @precondition(lambda self: self.granted)
    @rule(data=st.data())
    def end_access(self, data):
        ref = data.draw(st.sampled_from(sorted(self.granted)))
        pinned = self.h.active.get(ref) is not None
        assert self.h.table.end_access(ref) == (not pinned)
        if not pinned:
            del self.granted[ref]
            self.alloc.free(ref)

    def _bits(self, ref: int) -> int:
        return _status_bits(self.h.table, ref)

    @invariant()
    def flags_follow_pins(self):
        for ref in range(GNTTAB_NR_RESERVED_ENTRIES, 32):
            act = self.h.active.get(ref)
            pin = act.pin if act else 0
            write_pins = act.counters[0] + act.counters[2] if act else 0
            assert bool(self._bits(ref) & GTF.reading) == (pin > 0)
            assert bool(self._bits(ref) & GTF.writing) == (write_pins > 0)
            if ref not in self.granted:
                assert self.h.table.entry(ref).flags == 0 and pin == 0

    @invariant()
    def pins_count_live_mappings(self):
        for ref in self.granted:
            maps = [f for (r, f) in self.live.values() if r == ref]
            act = self.h.active.get(ref)
            expected = [0, 0, 0, 0]  # hstw, hstr, devw, devr
            for f in maps:
                ro = bool(f & GNTMAP.readonly)
                if f & GNTMAP.host_map:
                    expected[ro] += 1
                if f & GNTMAP.device_map:
                    expected[2 + ro] += 1
            assert (act.counters if act else (0, 0, 0, 0)) == tuple(expected)
        for mapper in MAPPERS:
            live = {h for (m, h) in self.live if m == mapper}
            assert set(self.h.maptrack[mapper].handles()) == live


GnttabMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
test_gnttab_6_2_19_3_random_grant_map_unmap_copy_keep_flags_and_pins_consistent = (
    GnttabMachine.TestCase)
