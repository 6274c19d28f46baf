"""netback's vif data path (actors/netback/vif.py): a FrontRing pair in the test plays netfront
over the same tx and rx ring pages; its pool pages are bytearrays by gref; frames are dpkt's."""

import os
import socket
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.netback.credit import TxCredit
from actors.netback.vif import RX_QUEUE_MAX, NetbackVif
from protocols.errno import Errno, XenError
from protocols.netif import (FATAL_SKB_SLOTS, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
                             RX_RING_SIZE, RX_SLOT_SIZE, TX_RING_SIZE, TX_SLOT_SIZE, NetifExtraGso,
                             NetifExtraInfo, NetifExtraMcast, NetifExtraType, NetifRxRequest,
                             NetifRxResponse, NetifTxRequest, NetifTxResponse, NetRxFlag, NetTxFlag,
                             tx_slots)
from protocols.ring import HEADER_SIZE, REQ_PROD, FrontRing

TX_GREFS = range(100, 100 + TX_RING_SIZE)
RX_GREFS = range(400, 400 + RX_RING_SIZE)
MAC_A, MAC_B = bytes.fromhex("00163e000001"), bytes.fromhex("00163e000002")
MORE = int(NetTxFlag.more_data)


def udp_frame(payload: bytes = b"ping", sport: int = 4000, src=MAC_A, dst=MAC_B) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=7, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"),
                    p=dpkt.ip.IP_PROTO_UDP, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=dpkt.ethernet.ETH_TYPE_IP,
                                        data=ip))


class Guest:
    """netfront's side: tx and rx FrontRings, pool pages by gref, and the vif under test."""

    def __init__(self, grefs=(*TX_GREFS, *RX_GREFS)):
        self.tx_ring, self.rx_ring = bytearray(4096), bytearray(4096)
        self.tx = FrontRing(self.tx_ring, TX_SLOT_SIZE)
        self.rx = FrontRing(self.rx_ring, RX_SLOT_SIZE)
        self.tx.init()
        self.rx.init()
        self.pages = {g: bytearray(4096) for g in grefs}
        self.maps: list[tuple[int, bool]] = []
        self.delivered: list[bytes] = []
        self.kicks = 0
        self.vif = NetbackVif(memoryview(self.tx_ring), memoryview(self.rx_ring),
                              self.map_grant, self.delivered.append)

    def map_grant(self, gref, readonly):
        self.maps.append((gref, readonly))
        if gref not in self.pages:
            raise XenError(Errno.EINVAL, f"GNTST_bad_gntref {gref}")
        return memoryview(self.pages[gref])

    def kick(self):
        self.kicks += 1

    def process(self) -> str:
        return self.vif.process_tx(self.kick)

    def put(self, *items):
        for item in items:
            self.tx.put_request(item.pack())

    def queue_frame(self, frame: bytes, gref=TX_GREFS[0], id_=0, offset=0):
        self.pages[gref][offset:offset + len(frame)] = frame
        self.put(NetifTxRequest(gref, offset, 0, id_, len(frame)))

    def tx_responses(self) -> list[NetifTxResponse]:
        return [NetifTxResponse.unpack(s) for s in self.tx.get_responses(4)]

    def post_rx(self, n: int, start: int = 0, ids=None) -> bool:
        for k in range(start, start + n):
            id_ = k if ids is None else ids[k - start]
            self.rx.put_request(NetifRxRequest(id_, RX_GREFS[k % len(RX_GREFS)]).pack())
        return self.rx.push_requests()

    def rx_responses(self) -> list[NetifRxResponse]:
        return [NetifRxResponse.unpack(s) for s in self.rx.get_responses()]


def test_netback_9_tx_frame_reaches_bridge_byte_for_byte():
    g = Guest()
    frames = [udp_frame(os.urandom(n), sport=n) for n in (0, 18, 1000, 1472)]
    for i, frame in enumerate(frames):
        g.queue_frame(frame, gref=TX_GREFS[i], id_=40 + i, offset=i * 8)
    g.tx.push_requests()
    assert g.process() == ""
    assert g.delivered == frames
    assert g.tx_responses() == [NetifTxResponse(40 + i, NETIF_RSP_OKAY) for i in range(4)]
    s = g.vif.statistics()
    assert (s["tx_packets"], s["tx_bytes"], s["tx_errors"]) == (4, sum(map(len, frames)), 0)
    assert dpkt.ethernet.Ethernet(g.delivered[2]).data.data.data == frames[2][42:]


def test_netback_9_tx_multi_slot_frame_and_extra_info_answered_null():
    """A 6000-byte frame over two pages, with a GSO extra: OKAY, NULL, OKAY (19.5)."""
    g = Guest()
    frame = udp_frame(os.urandom(6000 - 42))
    g.pages[100][:4096] = frame[:4096]
    g.pages[101][:len(frame) - 4096] = frame[4096:]
    gso = NetifExtraInfo(NetifExtraType.GSO, 0, NetifExtraGso(1448, 1))
    slots = tx_slots(len(frame), [100, 101], [7, 8], extras=[gso])
    g.tx.put_request(slots[0].pack())
    g.tx.put_request(slots[1].pack().ljust(TX_SLOT_SIZE, b"\0"))
    g.tx.put_request(slots[2].pack())
    g.tx.push_requests()
    assert g.process() == ""
    assert g.delivered == [frame]
    assert g.tx_responses() == [NetifTxResponse(7, NETIF_RSP_OKAY),
                                NetifTxResponse(0, NETIF_RSP_NULL),
                                NetifTxResponse(8, NETIF_RSP_OKAY)]


def test_netback_9_tx_multicast_extra_is_a_filter_update_not_a_frame():
    g = Guest()
    group = NetifExtraMcast(bytes.fromhex("01005e000001"))
    mcast = NetifExtraInfo(NetifExtraType.MCAST_ADD, 0, group)
    g.put(NetifTxRequest(100, 0, int(NetTxFlag.extra_info), 3, 0))
    g.tx.put_request(mcast.pack().ljust(TX_SLOT_SIZE, b"\0"))
    g.tx.push_requests()
    assert g.process() == ""
    assert g.delivered == []
    assert g.tx_responses() == [NetifTxResponse(3, NETIF_RSP_OKAY),
                                NetifTxResponse(0, NETIF_RSP_NULL)]


def _assert_dropped_then_ring_goes_on(g: Guest, bad_slots: int):
    good = udp_frame(b"after")
    g.queue_frame(good, gref=TX_GREFS[5], id_=99)
    g.tx.push_requests()
    assert g.process() == ""
    rsps = g.tx_responses()
    assert [r.status for r in rsps] == [NETIF_RSP_ERROR] * bad_slots + [NETIF_RSP_OKAY]
    assert rsps[-1].id == 99 and g.delivered == [good]
    assert g.vif.statistics()["tx_errors"] == 1


def test_netback_9_tx_runt_frame_answered_error():
    g = Guest()
    g.queue_frame(b"\x01" * 13, id_=1)
    _assert_dropped_then_ring_goes_on(g, 1)
    assert "runt" in g.vif.last_error


def test_netback_9_tx_total_over_0xffff_answered_error_on_every_slot():
    """A >64 KiB frame wraps the u16 total: a later fragment exceeds what remains."""
    g = Guest()
    g.put(NetifTxRequest(100, 0, MORE, 1, (70000 & 0xFFFF)),
          NetifTxRequest(101, 0, MORE, 2, 4096), NetifTxRequest(102, 0, 0, 3, 4096))
    _assert_dropped_then_ring_goes_on(g, 3)


def test_netback_9_tx_bad_gref_answered_error_and_not_cached():
    g = Guest()
    g.put(NetifTxRequest(7777, 0, 0, 1, 60))
    _assert_dropped_then_ring_goes_on(g, 1)
    g.put(NetifTxRequest(7777, 0, 0, 2, 60))
    g.tx.push_requests()
    assert g.process() == "" and g.tx_responses() == [NetifTxResponse(2, NETIF_RSP_ERROR)]
    assert g.maps.count((7777, True)) == 2


def _assert_disconnected(g: Guest, reason: str):
    assert reason.startswith("frontend broke the ring protocol")
    assert g.vif.disconnected == reason
    assert g.process() == reason  # stays disconnected, never raises
    g.vif.transmit(udp_frame(), g.kick)
    assert g.vif.statistics()["rx_dropped"] >= 1


def test_netback_19_2_tx_fragment_crossing_its_page_disconnects():
    g = Guest()
    g.put(NetifTxRequest(100, 4000, 0, 1, 200))
    g.tx.push_requests()
    _assert_disconnected(g, g.process())
    assert g.delivered == []


def test_netback_9_tx_chain_over_fatal_skb_slots_disconnects():
    g = Guest()
    n = FATAL_SKB_SLOTS + 1
    g.put(*(NetifTxRequest(100, 0, MORE if k < n - 1 else 0, k, 60000 if k == 0 else 10)
            for k in range(n)))
    g.tx.push_requests()
    reason = g.process()
    _assert_disconnected(g, reason)
    assert str(FATAL_SKB_SLOTS) in reason


def test_netback_19_2_tx_req_prod_beyond_ring_disconnects():
    g = Guest()
    g.queue_frame(udp_frame())
    g.tx.push_requests()
    assert g.process() == ""
    g.tx.sring.req_prod = g.tx.sring.req_prod + TX_RING_SIZE + 1
    _assert_disconnected(g, g.process())


def test_netback_19_2_rx_req_prod_beyond_ring_disconnects():
    g = Guest()
    g.rx.sring.req_prod = RX_RING_SIZE + 5
    g.vif.transmit(udp_frame(), g.kick)
    _assert_disconnected(g, g.process())


def test_netback_19_5_rx_response_in_the_request_slot():
    g = Guest()
    ids = [(7919 * k) & 0xFFFF for k in range(RX_RING_SIZE)]  # ids unrelated to slots
    g.post_rx(RX_RING_SIZE, ids=ids)
    # Move the ring on by 200 so the slots wrap.
    for k in range(200):
        g.vif.transmit(udp_frame(b"x"), g.kick)
    assert len(g.rx_responses()) == 200
    g.post_rx(200, start=RX_RING_SIZE, ids=[ids[k % RX_RING_SIZE] ^ 0x5555 for k in range(200)])
    frames = [udp_frame(os.urandom(k * 5), sport=k) for k in range(100)]
    for f in frames:
        g.vif.transmit(f, g.kick)
    for k, f in enumerate(frames):
        idx = 200 + k  # the request and its response share index idx, slot idx % 256
        raw = g.rx_ring[HEADER_SIZE + (idx % RX_RING_SIZE) * RX_SLOT_SIZE:][:RX_SLOT_SIZE]
        rsp = NetifRxResponse.unpack(bytes(raw))
        want_id = ids[idx] if idx < RX_RING_SIZE else ids[idx % RX_RING_SIZE] ^ 0x5555
        assert rsp == NetifRxResponse(want_id, 0, int(NetRxFlag.data_validated), len(f))
        assert bytes(g.pages[RX_GREFS[idx % RX_RING_SIZE]][:len(f)]) == f
    assert g.rx_responses()[0].status == len(frames[0])
    s = g.vif.statistics()
    assert (s["rx_packets"], s["rx_dropped"], s["rx_errors"]) == (300, 0, 0)


def test_netback_9_rx_queue_bounded_then_served_when_requests_are_posted():
    g = Guest()
    frames = [udp_frame(struct.pack(">I", k)) for k in range(RX_QUEUE_MAX + 44)]
    for f in frames:
        g.vif.transmit(f, g.kick)
    s = g.vif.statistics()
    assert (s["rx_queued"], s["rx_dropped"], s["rx_packets"]) == (RX_QUEUE_MAX, 44, 0)
    # The backend armed req_event: posting rx requests must kick it (one evtchn, both rings).
    assert g.post_rx(RX_RING_SIZE) is True
    assert g.process() == ""
    got = g.rx_responses()
    assert [r.status for r in got] == [len(f) for f in frames[:RX_QUEUE_MAX]]
    assert [bytes(g.pages[RX_GREFS[r.id]][:r.status]) for r in got] == frames[:RX_QUEUE_MAX]
    assert g.vif.statistics()["rx_queued"] == 0


def test_netback_9_rx_bad_gref_and_oversize_frame():
    g = Guest()
    g.rx.put_request(NetifRxRequest(5, 4242).pack())
    g.rx.push_requests()
    g.vif.transmit(udp_frame(), g.kick)
    g.vif.transmit(b"\0" * 4097, g.kick)
    assert g.rx_responses() == [NetifRxResponse(5, 0, 0, NETIF_RSP_ERROR)]
    s = g.vif.statistics()
    assert (s["rx_errors"], s["rx_dropped"], s["rx_packets"]) == (1, 1, 0)


def test_netback_7_3_streamed_run_kicks_far_less_than_packets():
    """Hold-off both ways: the guest drains its rings only when kicked, the backend works only
    when kicked, the bridge echoes every frame back; kicks stay near one per batch."""
    g = Guest()
    g.post_rx(RX_RING_SIZE)
    total, batch, sent, echoed, seen, events = 4096, 64, 0, 0, 0, 0

    def backend_event():
        nonlocal events
        events += 1
        assert g.process() == ""

    def upcall():  # netfront: drain both rings, repost rx, final checks, again if needed
        while True:
            g.tx_responses()
            n = len(g.rx_responses())
            if n and g.post_rx(n, start=g.rx.req_prod_pvt):
                backend_event()
            more_tx = g.tx.final_check_for_responses()
            if not (g.rx.final_check_for_responses() or more_tx):
                return

    for _ in range(10 * total):  # a lost wakeup would stall the stream
        if sent == total and seen == g.kicks:
            break
        n = min(batch, g.tx.free_requests(), total - sent)
        for _ in range(n):
            g.queue_frame(udp_frame(struct.pack(">I", sent)), gref=TX_GREFS[sent % TX_RING_SIZE],
                          id_=sent % TX_RING_SIZE)
            sent += 1
        if n and g.tx.push_requests():
            backend_event()
        for f in g.delivered[echoed:]:
            g.vif.transmit(f, g.kick)
        echoed = len(g.delivered)
        if g.kicks > seen:
            seen = g.kicks
            upcall()
    assert len(g.delivered) == total
    assert [struct.unpack(">I", f[42:46])[0] for f in g.delivered] == list(range(total))
    s = g.vif.statistics()
    assert s["rx_packets"] + s["rx_queued"] == total and s["rx_dropped"] == 0
    assert s["kicks"] == g.kicks < total // 16
    assert events < total // 16


def test_netback_9_grants_mapped_once_per_gref():
    g = Guest()
    g.post_rx(RX_RING_SIZE)
    for k in range(600):
        g.queue_frame(udp_frame(), gref=TX_GREFS[k % 4], id_=k & 0xFF)
        if k % 100 == 99:
            g.tx.push_requests()
            g.process()
            g.tx_responses()
    for k in range(RX_RING_SIZE):
        g.vif.transmit(udp_frame(), g.kick)
    g.rx_responses()
    g.post_rx(RX_RING_SIZE, start=RX_RING_SIZE)
    for k in range(RX_RING_SIZE):
        g.vif.transmit(udp_frame(), g.kick)
    assert len(g.delivered) == 600
    assert sorted(g.maps) == sorted([(t, True) for t in TX_GREFS[:4]] +
                                    [(r, False) for r in RX_GREFS])
    assert g.vif.statistics()["grants_mapped"] == 4 + RX_RING_SIZE


def test_netback_close_stops_the_data_path():
    g = Guest()
    g.vif.transmit(udp_frame(), g.kick)
    g.vif.close()
    assert g.vif.disconnected == "closed"
    assert g.process() == "closed"
    g.vif.transmit(udp_frame(), g.kick)
    assert g.vif.statistics()["rx_dropped"] == 2


@given(slots=st.lists(st.binary(min_size=TX_SLOT_SIZE, max_size=TX_SLOT_SIZE), max_size=40),
       req_prod=st.integers(0, 2**32 - 1) | st.none(), rx_prod=st.integers(0, 2**32 - 1))
def test_netback_19_2_any_bytes_in_the_rings_never_raise(slots, req_prod, rx_prod):
    g = Guest(grefs=(0, 1, 2, 0x01000000))
    for s in slots:
        g.tx.put_request(s)
    g.tx.push_requests()
    if req_prod is not None:
        g.tx.sring.req_prod = req_prod
    struct.pack_into("<I", g.rx_ring, REQ_PROD * 4, rx_prod)
    for k in range(4):
        g.vif.transmit(udp_frame(bytes(k)), g.kick)
    reason = g.process()
    assert isinstance(reason, str) and reason == g.vif.disconnected
    if not reason:  # every published slot was answered
        assert g.tx.sring.rsp_prod == g.tx.sring.req_prod
        assert len(g.tx_responses()) == g.tx.sring.req_prod
    s = g.vif.statistics()
    assert s["tx_packets"] == len(g.delivered)


def test_netback_rate_credit_refills_each_period_and_lets_a_big_packet_through_when_full(clock):
    credit = TxCredit(3000, 100_000, clock.monotonic)  # 3000 bytes every 100 ms
    assert credit.take(1000) == 0.0 and credit.take(2000) == 0.0
    assert credit.take(10) == pytest.approx(0.1)  # nothing left until the refill
    clock.advance(0.1)
    assert credit.take(5000) == 0.0, "bigger than a whole credit: goes when the credit is full"
    assert credit.take(1) == pytest.approx(0.1)
    assert TxCredit.parse("3000,100000", clock.monotonic).credit_bytes == 3000
    assert TxCredit.parse(None, clock.monotonic) is None
    assert TxCredit.parse("junk", clock.monotonic) is None
    with pytest.raises(ValueError):
        TxCredit(0, 100, clock.monotonic)


def test_netback_rate_holds_tx_on_the_ring_until_the_credit_timer(clock):
    """xl.cfg ``rate=``: frames over the credit stay unanswered on the guest's tx ring (it
    fills: backpressure, nothing dropped) and go when the credit timer runs process_tx."""
    g = Guest()
    frame = udp_frame(bytes(958))  # 1000 bytes
    g.vif = NetbackVif(memoryview(g.tx_ring), memoryview(g.rx_ring), g.map_grant,
                       g.delivered.append, credit=TxCredit(2500, 50_000, clock.monotonic),
                       reschedule=lambda seconds: clock.call_later(seconds, g.process))
    for i in range(5):
        g.queue_frame(frame, gref=TX_GREFS[i], id_=i)
    g.tx.push_requests()
    assert g.process() == ""
    assert len(g.delivered) == 2 and clock.pending() == 1
    assert [r.id for r in g.tx_responses()] == [0, 1]
    assert g.vif.statistics()["tx_held"] == 3
    clock.advance(0.049)
    assert len(g.delivered) == 2
    assert clock.advance(0.001) == 1  # the timer fires: two more
    assert len(g.delivered) == 4
    clock.advance(0.05)
    assert g.delivered == [frame] * 5 and clock.pending() == 0
    assert [r.id for r in g.tx_responses()] == [2, 3, 4]
    assert g.vif.statistics()["tx_held"] == 0 and g.vif.statistics()["credit_waits"] == 2
