"""io/ring.h generic ring: xen-reference.md 7.1-7.3 and 19.2."""

import collections
import mmap
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocols.ring as ring
from protocols.errno import Errno, XenError
from protocols.ring import BackRing, FrontRing, RingOverflow, SharedRing, must_notify, ring_size

U32 = 2**32
REQ, RSP = 112, 16  # blkif slot and response sizes


def _pair(page_size: int = 4096, entry_size: int = REQ, start: int | None = None):
    """A front and a back end over one buffer; ``start`` re-attaches both to a live ring."""
    buf = bytearray(page_size)
    front, back = FrontRing(buf, entry_size, page_size), BackRing(buf, entry_size, page_size)
    front.init()
    back.init()
    if start is not None:
        s = front.sring
        s.req_prod = s.rsp_prod = start
        s.req_event = s.rsp_event = start + 1
        front.attach(start)
        back.attach(start)
    return buf, front, back


def _req(i: int, size: int = REQ) -> bytes:
    return i.to_bytes(8, "little").ljust(size, b"\x5a")


def _hdr(buf) -> tuple[int, ...]:
    return struct.unpack_from("<5I", buf, 0)


def test_ring_7_1_header_field_offsets():
    buf = bytearray(4096)
    s = SharedRing(buf)
    s.req_prod, s.req_event, s.rsp_prod, s.rsp_event, s.pvt = 11, 22, 33, 44, 55
    assert _hdr(buf) == (11, 22, 33, 44, 55)
    assert (ring.REQ_PROD, ring.REQ_EVENT, ring.RSP_PROD, ring.RSP_EVENT, ring.PVT) == (
        0, 1, 2, 3, 4)


def test_ring_7_1_index_fields_are_u32():
    s = SharedRing(bytearray(64))
    s.req_prod = U32 + 5
    assert s.req_prod == 5


def test_ring_7_1_shared_ring_init_values_and_zeroed_pad():
    buf = bytearray(b"\xff" * 4096)
    front = FrontRing(buf, REQ)
    front.init()
    assert _hdr(buf) == (0, 1, 0, 1, 0)  # req_prod, req_event, rsp_prod, rsp_event, pvt
    assert buf[16:64] == bytes(48)
    assert buf[64:] == b"\xff" * (4096 - 64)  # the slots are not touched
    assert (front.req_prod_pvt, front.rsp_cons, front.nr_ents) == (0, 0, 32)


def test_ring_7_1_only_the_frontend_initialises_the_shared_ring():
    buf = bytearray(4096)
    struct.pack_into("<5I", buf, 0, 7, 8, 9, 10, 11)
    back = BackRing(buf, REQ)
    back.init()
    assert _hdr(buf) == (7, 8, 9, 10, 11)
    assert (back.rsp_prod_pvt, back.req_cons) == (0, 0)


@pytest.mark.parametrize(("entry_size", "page_size", "expected"), [
    (112, 4096, 32),  # blkif: (4096 - 64) / 112 = 36 -> 32, not 36
    (12, 4096, 256),  # netif tx
    (8, 4096, 256),  # netif rx
    (112, 8192, 64),  # order-1 multi-page blkif ring
    (112, 16384, 128),  # order-2
])
def test_ring_7_1_ring_size_rounds_down_to_a_power_of_two(entry_size, page_size, expected):
    assert ring_size(entry_size, page_size) == expected
    assert FrontRing(bytearray(page_size), entry_size, page_size).nr_ents == expected


def test_ring_7_1_ring_size_rejects_entries_that_do_not_fit():
    with pytest.raises(ValueError):
        ring_size(4033)
    with pytest.raises(ValueError):
        FrontRing(bytearray(4095), REQ)  # buffer smaller than the page


def test_ring_7_1_slot_is_index_masked_with_wrapping_indices():
    start = U32 - 2
    buf, front, _ = _pair(start=start)
    for i in range(4):
        front.put_request(_req(i))
    assert front.req_prod_pvt == 2  # free-running, wrapped mod 2^32
    for i, idx in enumerate([U32 - 2, U32 - 1, 0, 1]):
        off = 64 + (idx & 31) * REQ
        assert buf[off:off + REQ] == _req(i)


def test_ring_7_1_responses_overwrite_request_slots():
    buf, front, back = _pair()
    front.put_request(_req(7))
    front.push_requests()
    assert back.get_request() == _req(7)
    back.put_response(b"R" * RSP)
    assert buf[64:64 + RSP] == b"R" * RSP
    assert buf[64 + RSP:64 + REQ] == _req(7)[RSP:]  # the rest of the slot is left alone
    back.push_responses()
    assert front.get_response(RSP) == b"R" * RSP


def test_ring_7_1_attach_starts_private_indices_without_touching_the_header():
    buf, front, back = _pair()
    struct.pack_into("<4I", buf, 0, 9, 10, 9, 10)
    front.attach(9)
    back.attach(9)
    assert (front.req_prod_pvt, front.rsp_cons, back.rsp_prod_pvt, back.req_cons) == (9,) * 4
    assert _hdr(buf)[:4] == (9, 10, 9, 10)
    assert front.free_requests() == 32 and back.has_unconsumed_requests() == 0


def test_ring_7_2_free_requests_full_and_no_overwrite_of_outstanding_slots():
    buf, front, back = _pair()
    for i in range(32):
        assert front.free_requests() == 32 - i
        front.put_request(_req(i))
    assert front.full()
    snapshot = bytes(buf)
    with pytest.raises(XenError) as e:
        front.put_request(_req(99))
    assert e.value.errno == Errno.EAGAIN
    assert bytes(buf) == snapshot


def test_ring_7_2_getting_from_an_empty_ring_or_answering_nothing_is_refused():
    _, front, back = _pair()
    for call in (front.get_response, back.get_request, lambda: back.put_response(b"x")):
        with pytest.raises(XenError) as e:
            call()
        assert e.value.errno == Errno.EAGAIN
    assert front.get_responses() == [] and back.get_requests() == []


def test_ring_7_2_unconsumed_requests_is_capped_by_free_response_slots():
    _, front, back = _pair()
    for i in range(32):
        front.put_request(_req(i))
    front.push_requests()
    assert back.has_unconsumed_requests() == 32
    assert len(back.get_requests()) == 32
    front.sring.req_prod = 32 + 5  # hostile: 5 more requests than the ring holds
    assert back.has_unconsumed_requests() == 0  # min(5, 32 - (32 - 0))


def test_ring_7_2_hostile_frontend_req_prod_overflow_raises():
    _, front, back = _pair(start=U32 - 3)
    front.sring.req_prod = back.rsp_prod_pvt + 33  # RING_REQUEST_PROD_OVERFLOW
    for call in (back.get_request, back.get_requests):
        with pytest.raises(RingOverflow) as e:
            call()
        assert isinstance(e.value, XenError) and e.value.errno == Errno.EIO
    assert back.req_cons == U32 - 3  # nothing was consumed


def test_ring_7_2_frontend_moving_req_prod_backwards_is_hostile():
    _, front, back = _pair()
    for i in range(4):
        front.put_request(_req(i))
    front.push_requests()
    back.get_requests()
    back.put_response(b"r")
    front.sring.req_prod = 2  # behind req_cons = 4, still within rsp_prod_pvt + RING_SIZE
    with pytest.raises(RingOverflow):
        back.get_requests()


def test_ring_7_2_hostile_backend_rsp_prod_overflow_raises():
    _, front, back = _pair(start=U32 - 1)
    front.sring.rsp_prod = front.rsp_cons + 33  # RING_RESPONSE_PROD_OVERFLOW
    for call in (front.get_response, front.get_responses):
        with pytest.raises(RingOverflow) as e:
            call()
        assert e.value.errno == Errno.EIO


def test_ring_7_2_copy_request_is_private_from_later_peer_writes():
    buf, front, back = _pair()
    front.put_request(_req(1))
    front.push_requests()
    copy = back.get_request()
    buf[64:72] = b"\xee" * 8  # the frontend rewrites the slot after the copy
    assert copy == _req(1)


@pytest.mark.parametrize(("old", "new", "event", "notify"), [
    (0, 1, 1, True),  # first push after SHARED_RING_INIT
    (1, 3, 1, False),  # the consumer has not re-armed
    (0xFFFFFFFE, 0x00000001, 0xFFFFFFFF, True),  # wrap: (1 - 0xFFFFFFFF) = 2 < 3
    (5, 5, 6, False),  # nothing pushed
    (3, 5, 6, False),  # event beyond new
    (3, 5, 3, False),  # event == old is outside (old, new]
])
def test_ring_7_3_notify_iff_event_in_window(old, new, event, notify):
    assert must_notify(old, new, event) is notify


def test_ring_7_3_worked_example_through_the_rings():
    _, front, back = _pair()
    front.put_request(_req(0))
    assert front.push_requests() is True  # old 0, new 1, req_event 1
    front.put_request(_req(1))
    front.put_request(_req(2))
    assert front.push_requests() is False  # old 1, new 3, req_event still 1
    assert len(back.get_requests()) == 3
    assert back.final_check_for_requests() is False
    assert front.sring.req_event == 4
    front.put_request(_req(3))
    assert front.push_requests() is True


def test_ring_7_3_worked_wrap_example_through_the_rings():
    buf, front, back = _pair(start=0xFFFFFFFE)
    front.sring.req_event = 0xFFFFFFFF
    for i in range(3):
        front.put_request(_req(i))
    assert front.push_requests() is True
    assert front.sring.req_prod == 1
    assert [r[:8] for r in back.get_requests()] == [_req(i)[:8] for i in range(3)]


def test_ring_7_3_final_check_with_work_does_not_rearm():
    _, front, back = _pair()
    front.put_request(_req(0))
    front.push_requests()
    assert back.final_check_for_requests() is True
    assert front.sring.req_event == 1
    assert back.statistics().rearms == 0


def test_ring_7_3_final_check_sets_event_to_cons_plus_one():
    _, front, back = _pair(start=U32 - 1)
    assert front.final_check_for_responses() is False
    assert front.sring.rsp_event == 0  # rsp_cons + 1, wrapped
    assert back.final_check_for_requests() is False
    assert front.sring.req_event == 0


def test_ring_7_3_final_check_rechecks_after_the_barrier(monkeypatch):
    """A request pushed between setting req_event and the barrier must be seen by the re-check,
    or the backend sleeps on a request whose push decided not to notify (19.2 lost wakeup)."""
    _, front, back = _pair()
    front.put_request(_req(0))
    front.push_requests()
    back.get_requests()  # req_event is still 1: the next push will not notify
    real_mb = ring._mb

    def racing_mb():
        monkeypatch.setattr(ring, "_mb", real_mb)
        front.put_request(_req(1))
        assert front.push_requests() is True  # the event was already re-armed
        real_mb()

    monkeypatch.setattr(ring, "_mb", racing_mb)
    assert back.final_check_for_requests() is True
    assert back.get_request()[:8] == _req(1)[:8]


def test_ring_statistics_count_each_end():
    _, front, back = _pair()
    for i in range(3):
        front.put_request(_req(i))
    front.push_requests()
    back.get_requests()
    back.final_check_for_requests()
    back.put_response(b"a")
    back.push_responses()
    assert front.statistics() == ring.RingStatistics(
        produced=3, consumed=0, pushes=1, notifies=1, rearms=0)
    assert back.statistics() == ring.RingStatistics(
        produced=1, consumed=3, pushes=1, notifies=1, rearms=1)


def test_ring_works_over_a_multipage_mmap_and_releases_it():
    mm = mmap.mmap(-1, 16384)
    front, back = FrontRing(mm, REQ, 16384), BackRing(mm, REQ, 16384)
    front.init()
    for i in range(128):
        front.put_request(_req(i))
    assert front.full()
    front.push_requests()
    assert [r[:8] for r in back.get_requests(8)] == [_req(i)[:8] for i in range(128)]
    front.release()
    back.release()
    mm.close()  # would raise BufferError if a view were still exported
    assert mm.closed


# --- property test: a random schedule over one ring, indices starting near 2^32 -------------

_OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(1, 40)),
    st.tuples(st.just("push_req"), st.just(0)),
    st.tuples(st.just("consume"), st.integers(1, 40)),
    st.tuples(st.just("respond"), st.integers(1, 40)),
    st.tuples(st.just("push_rsp"), st.just(0)),
    st.tuples(st.just("get_rsp"), st.integers(1, 40)),
    st.tuples(st.just("back_final"), st.just(0)),
    st.tuples(st.just("front_final"), st.just(0)),
)


def _rsp(seq: int, size: int) -> bytes:
    return (seq ^ 0x5A5A5A5A).to_bytes(8, "little")[:size]


class _Model:
    """Reference queues, and the notify formula computed independently of the ring."""

    def __init__(self, sring: SharedRing, entry_size: int) -> None:
        self.sring, self.size = sring, entry_size
        self.rsp_size = min(entry_size, 8)
        self.next_seq = 0
        self.unpushed_reqs, self.reqs = [], collections.deque()
        self.to_answer, self.unpushed_rsps, self.rsps = collections.deque(), [], collections.deque()
        self.answered = []
        self.back_asleep = self.front_asleep = False

    def push(self, do_push, prod: str, event: str, unpushed: list, published, asleep: bool,
             new: int) -> bool:
        old, ev = getattr(self.sring, prod), getattr(self.sring, event)
        notify = do_push()
        assert notify == ((new - ev) % U32 < (new - old) % U32)
        assert getattr(self.sring, prod) == new
        if asleep and new != old:
            assert notify, "lost wakeup: the consumer sleeps and was not notified"
        published.extend(unpushed)
        unpushed.clear()
        return asleep and not notify


@given(start_back=st.integers(0, 70), entry_size=st.sampled_from([112, 12, 8]),
       order=st.sampled_from([0, 1]), ops=st.lists(_OPS, max_size=80))
def test_ring_7_3_random_schedule_matches_a_reference_queue(start_back, entry_size, order, ops):
    page = 4096 << order
    _, front, back = _pair(page, entry_size, start=U32 - start_back)
    m = _Model(front.sring, entry_size)
    for op, k in ops:
        if op == "put":
            for _ in range(min(k, front.free_requests())):
                front.put_request(m.next_seq.to_bytes(4, "little").ljust(entry_size, b"q"))
                m.unpushed_reqs.append(m.next_seq)
                m.next_seq += 1
        elif op == "push_req":
            m.back_asleep = m.push(front.push_requests, "req_prod", "req_event", m.unpushed_reqs,
                                   m.reqs, m.back_asleep, front.req_prod_pvt)
        elif op == "consume":
            m.back_asleep = False
            assert back.has_unconsumed_requests() == len(m.reqs)
            got = back.get_requests() if k > 20 else [back.get_request(4)
                                                     for _ in range(min(k, len(m.reqs)))]
            for raw in got:
                seq = int.from_bytes(raw[:4], "little")
                assert seq == m.reqs.popleft()
                m.to_answer.append(seq)
        elif op == "respond":
            for _ in range(min(k, len(m.to_answer))):
                seq = m.to_answer.popleft()
                back.put_response(_rsp(seq, m.rsp_size))
                m.unpushed_rsps.append(seq)
        elif op == "push_rsp":
            m.front_asleep = m.push(back.push_responses, "rsp_prod", "rsp_event",
                                    m.unpushed_rsps, m.rsps, m.front_asleep, back.rsp_prod_pvt)
        elif op == "get_rsp":
            m.front_asleep = False
            assert front.has_unconsumed_responses() == len(m.rsps)
            for raw in front.get_responses(m.rsp_size) if k > 20 else [
                    front.get_response(m.rsp_size) for _ in range(min(k, len(m.rsps)))]:
                seq = m.rsps.popleft()
                assert raw == _rsp(seq, m.rsp_size)
                m.answered.append(seq)
        elif op == "back_final":
            work = back.final_check_for_requests()
            assert work == bool(m.reqs)
            if not work:
                assert front.sring.req_event == (back.req_cons + 1) % U32
            m.back_asleep = not work
        else:
            work = front.final_check_for_responses()
            assert work == bool(m.rsps)
            if not work:
                assert front.sring.rsp_event == (front.rsp_cons + 1) % U32
            m.front_asleep = not work
        assert front.free_requests() == front.nr_ents - (
            len(m.unpushed_reqs) + len(m.reqs) + len(m.to_answer) + len(m.unpushed_rsps)
            + len(m.rsps))
    # Drain: every request is answered exactly once, in order.
    front.push_requests()
    m.to_answer.extend(int.from_bytes(r[:4], "little") for r in back.get_requests())
    while m.to_answer:
        back.put_response(_rsp(m.to_answer.popleft(), m.rsp_size))
    back.push_responses()
    m.answered += [int.from_bytes(r, "little") ^ 0x5A5A5A5A
                   for r in front.get_responses(m.rsp_size)]
    assert m.answered == list(range(m.next_seq))
