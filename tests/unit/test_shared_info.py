"""Reference section 4 (xen.h ``struct shared_info``, ``event_2l.c``) and 19.1."""

import mmap
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.shared_info import (EVTCHN_2L_NR_CHANNELS, SHARED_INFO_SIZE, XEN_LEGACY_MAX_VCPUS,
                                   SetPending, SharedInfo)


def _page() -> tuple[bytearray, SharedInfo]:
    buf = bytearray(4096)
    return buf, SharedInfo(buf)


def _u64(buf, offset: int) -> int:
    return struct.unpack_from("<Q", buf, offset)[0]


def test_shared_info_4_sizes_match_xen_h():
    assert SHARED_INFO_SIZE == 3136
    assert EVTCHN_2L_NR_CHANNELS == 4096
    assert XEN_LEGACY_MAX_VCPUS == 32


def test_shared_info_4_set_pending_writes_xen_offsets():
    buf, si = _page()
    assert si.evtchn_2l_set_pending(3, 130) is SetPending.KICK
    assert _u64(buf, 2048 + 2 * 8) == 1 << 2  # evtchn_pending[2], bit 130 % 64
    assert _u64(buf, 3 * 64 + 8) == 1 << 2  # vcpu_info[3].evtchn_pending_sel, word 2
    assert buf[3 * 64] == 1  # vcpu_info[3].evtchn_upcall_pending
    si.mask(4095)
    assert _u64(buf, 2560 + 63 * 8) == 1 << 63  # evtchn_mask[63]
    si.set_upcall_mask(31, True)
    assert buf[31 * 64 + 1] == 1
    assert not any(buf[SHARED_INFO_SIZE:])


def test_shared_info_4_set_pending_coalesces_on_a_pending_port():
    buf, si = _page()
    si.evtchn_2l_set_pending(0, 5)
    before = bytes(buf)
    si.clear_upcall_pending(0)
    assert si.evtchn_2l_set_pending(0, 5) is SetPending.COALESCED
    assert si.upcall_pending(0) == 0  # step 1 stops: no selector, no upcall
    assert bytes(buf[2048:]) == before[2048:]


def test_shared_info_4_masked_port_gets_pending_but_no_selector_or_upcall():
    _, si = _page()
    si.mask(7)
    assert si.evtchn_2l_set_pending(0, 7) is SetPending.PENDING
    assert si.is_pending(7) and si.pending_sel(0) == 0 and si.upcall_pending(0) == 0


def test_shared_info_4_selector_already_set_means_no_second_kick():
    _, si = _page()
    assert si.evtchn_2l_set_pending(1, 1) is SetPending.KICK
    assert si.evtchn_2l_set_pending(1, 2) is SetPending.PENDING  # same selector word
    si.clear_upcall_pending(1)  # guest cleared the upcall but not yet the selector
    assert si.evtchn_2l_set_pending(1, 3) is SetPending.PENDING


def test_shared_info_4_upcall_already_pending_means_no_second_kick():
    _, si = _page()
    assert si.evtchn_2l_set_pending(0, 1) is SetPending.KICK
    assert si.evtchn_2l_set_pending(0, 64) is SetPending.PENDING  # new selector bit, same vCPU
    assert si.pending_sel(0) == 0b11


def test_shared_info_4_unmask_reraises_a_pending_port():
    _, si = _page()
    si.mask(9)
    si.evtchn_2l_set_pending(2, 9)
    assert si.evtchn_2l_unmask(2, 9) is True
    assert not si.is_masked(9) and si.pending_sel(2) == 1 and si.upcall_pending(2) == 1


def test_shared_info_4_unmask_of_an_unmasked_or_idle_port_raises_nothing():
    _, si = _page()
    si.evtchn_2l_set_pending(0, 9)
    si.guest_take_pending(0)
    si.evtchn_2l_set_pending(0, 9)  # pending, unmasked, upcall already raised
    si.clear_upcall_pending(0)
    assert si.evtchn_2l_unmask(0, 9) is False  # mask bit was clear: nothing to re-raise
    si.mask(10)
    assert si.evtchn_2l_unmask(0, 10) is False and not si.is_masked(10)  # not pending


def test_shared_info_4_unmask_kicks_only_when_the_selector_bit_is_new():
    _, si = _page()
    si.mask(2)
    si.evtchn_2l_set_pending(0, 2)
    assert si.evtchn_2l_set_pending(0, 3) is SetPending.KICK  # selector word 0 now set
    assert si.evtchn_2l_unmask(0, 2) is False
    assert not si.is_masked(2) and si.guest_take_pending(0) == [2, 3]


def test_shared_info_4_clearing_the_mask_in_memory_loses_the_edge():
    _, si = _page()
    si.mask(12)
    si.evtchn_2l_set_pending(0, 12)
    si.clear_mask(12)
    assert si.is_pending(12) and si.upcall_pending(0) == 0 and si.pending_sel(0) == 0
    assert si.guest_take_pending(0) == []  # nothing points the guest at it


def test_shared_info_19_1_guest_clears_upcall_then_selector_then_pending():
    _, si = _page()
    for port in (3, 70, 71, 4000):
        si.evtchn_2l_set_pending(0, port)
    si.mask(71)
    assert si.guest_take_pending(0) == [3, 70, 4000]
    assert si.upcall_pending(0) == 0 and si.pending_sel(0) == 0
    assert si.pending_ports() == [71]  # masked: keeps its pending bit for the unmask
    assert si.evtchn_2l_unmask(0, 71) is True
    assert si.guest_take_pending(0) == [71]
    assert si.pending_ports() == []


def test_shared_info_19_1_an_event_after_the_take_raises_a_new_upcall():
    _, si = _page()
    si.evtchn_2l_set_pending(0, 3)
    assert si.guest_take_pending(0) == [3]
    assert si.evtchn_2l_set_pending(0, 3) is SetPending.KICK


def test_shared_info_4_ports_and_vcpus_outside_the_page_are_einval():
    _, si = _page()
    for bad in (-1, EVTCHN_2L_NR_CHANNELS):
        with pytest.raises(XenError) as e:
            si.evtchn_2l_set_pending(0, bad)
        assert e.value.errno == Errno.EINVAL
    with pytest.raises(XenError) as e:
        si.guest_take_pending(XEN_LEGACY_MAX_VCPUS)
    assert e.value.errno == Errno.EINVAL


def test_shared_info_4_needs_a_writable_page():
    with pytest.raises(ValueError):
        SharedInfo(bytearray(SHARED_INFO_SIZE - 1))
    with pytest.raises(ValueError):
        SharedInfo(bytes(4096))


def test_shared_info_4_works_over_a_mapped_page_seen_by_another_view():
    with mmap.mmap(-1, 4096) as m:
        si = SharedInfo(m)
        si.evtchn_2l_set_pending(0, 65)
        assert SharedInfo(m).is_pending(65) and m[0] == 1
        del si


def test_shared_info_4_wallclock_version_is_even_after_an_update():
    buf, si = _page()
    si.set_wallclock((1 << 32) + 7, 999)
    version, sec, nsec, sec_hi = struct.unpack_from("<IIII", buf, 3072)
    assert (version, sec, nsec, sec_hi) == (2, 7, 999, 1)
    assert si.wallclock() == ((1 << 32) + 7, 999)
    struct.pack_into("<I", buf, 3072, 3)  # an update in progress
    with pytest.raises(XenError) as e:
        si.wallclock()
    assert e.value.errno == Errno.EAGAIN


_ops = st.lists(st.tuples(st.sampled_from(["send", "mask", "unmask", "take"]),
                          st.integers(0, 3), st.sampled_from([0, 1, 63, 64, 200, 4095])),
                max_size=60)


@given(_ops)
def test_shared_info_19_1_no_event_is_lost_or_duplicated_without_in_memory_unmask(ops):
    """Using only Xen's set_pending/unmask and the guest's take, every 0->1 change of a pending
    bit is taken exactly once, and an unmasked pending port always has a kicked vCPU."""
    _, si = _page()
    raised: dict[int, int] = {}
    taken: dict[int, int] = {}
    for op, vcpu, port in ops:
        if op == "send":
            if si.evtchn_2l_set_pending(vcpu, port) is not SetPending.COALESCED:
                raised[port] = raised.get(port, 0) + 1
        elif op == "mask":
            si.mask(port)
        elif op == "unmask":
            si.evtchn_2l_unmask(vcpu, port)
        else:
            for p in si.guest_take_pending(vcpu):
                assert not si.is_masked(p)
                taken[p] = taken.get(p, 0) + 1
        for p in si.pending_ports():
            if not si.is_masked(p):
                assert any(si.pending_sel(v) >> (p // 64) & 1 and si.upcall_pending(v)
                           for v in range(4))
    for port in raised:
        si.evtchn_2l_unmask(0, port)
    for v in range(4):
        for p in si.guest_take_pending(v):
            taken[p] = taken.get(p, 0) + 1
    assert taken == raised
