"""xen-reference.md 9 (netif), 7.1 (ring sizes) and 19.5: layouts, decoders, the tx chain."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import netif
from protocols.errno import Errno, XenError
from protocols.netif import (NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, RX_RING_SIZE,
                             TX_RING_SIZE, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_MAX_TX_SIZE,
                             XEN_NETIF_NR_SLOTS_MIN, NetifExtraGso, NetifExtraHash, NetifExtraInfo,
                             NetifExtraMcast, NetifExtraType, NetifRxRequest, NetifRxResponse,
                             NetifTxRequest, NetifTxResponse, NetRxFlag, NetTxFlag, tx_packet_chain,
                             tx_slots, tx_slots_needed)
from protocols.ring import ring_size

U8, U16, U32 = (st.integers(0, 2**b - 1) for b in (8, 16, 32))
S16 = st.integers(-2**15, 2**15 - 1)
MORE, EXTRA = int(NetTxFlag.more_data), int(NetTxFlag.extra_info)
GSO = NetifExtraInfo(NetifExtraType.GSO, 0, NetifExtraGso(1448, netif.XEN_NETIF_GSO_TYPE_TCPV4))


def _slot(item) -> bytes:
    """What a backend reads from a 12-byte tx slot after the frontend wrote ``item``."""
    return item.pack().ljust(12, b"\0")


def _tx(gref=1, offset=0, flags=0, id_=0, size=100) -> bytes:
    return _slot(NetifTxRequest(gref, offset, flags, id_, size))


# -- numbers and layouts --------------------------------------------------------------------


def test_netif_9_flags_and_status_codes():
    assert [(f.name, int(f)) for f in NetTxFlag] == [
        ("csum_blank", 1), ("data_validated", 2), ("more_data", 4), ("extra_info", 8)]
    assert [(f.name, int(f)) for f in NetRxFlag] == [
        ("data_validated", 1), ("csum_blank", 2), ("more_data", 4), ("extra_info", 8),
        ("gso_prefix", 16)]
    assert (NETIF_RSP_OKAY, NETIF_RSP_ERROR, netif.NETIF_RSP_DROPPED, NETIF_RSP_NULL) == (
        0, -1, -2, 1)
    assert (XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN) == (0xFFFF, 18)
    assert [int(t) for t in NetifExtraType] == [0, 1, 2, 3, 4] and XEN_NETIF_EXTRA_FLAG_MORE == 1


def test_netif_9_ring_sizes_are_256_and_128():
    assert TX_RING_SIZE == ring_size(12) == 256
    assert RX_RING_SIZE == ring_size(8) == 256
    assert netif.CTRL_RING_SIZE == 128


def test_netif_9_tx_request_offsets():
    raw = NetifTxRequest(0xA1B2C3D4, 0x0102, 0x0304, 0x0506, 0x0708).pack()
    assert len(raw) == 12
    assert struct.unpack_from("<I", raw, 0)[0] == 0xA1B2C3D4
    assert [struct.unpack_from("<H", raw, off)[0] for off in (4, 6, 8, 10)] == [
        0x0102, 0x0304, 0x0506, 0x0708]


def test_netif_9_tx_response_is_4_bytes_in_a_12_byte_slot():
    raw = NetifTxResponse(0xBEEF, -2).pack()
    assert len(raw) == 4 and struct.unpack("<Hh", raw) == (0xBEEF, -2)
    assert NetifTxResponse.unpack(raw.ljust(12, b"\xff")) == NetifTxResponse(0xBEEF, -2)


def test_netif_9_rx_request_offsets():
    raw = NetifRxRequest(0xBEEF, 0xA1B2C3D4).pack()
    assert len(raw) == 8
    assert struct.unpack_from("<H", raw, 0)[0] == 0xBEEF and raw[2:4] == bytes(2)
    assert struct.unpack_from("<I", raw, 4)[0] == 0xA1B2C3D4


def test_netif_9_rx_response_offsets_status_is_signed():
    raw = NetifRxResponse(0x0102, 0x0304, 0x0506, -1).pack()
    assert len(raw) == 8
    assert struct.unpack_from("<HHH", raw, 0) == (0x0102, 0x0304, 0x0506)
    assert struct.unpack_from("<h", raw, 6)[0] == -1


def test_netif_9_extra_info_gso_offsets():
    raw = NetifExtraInfo(1, 1, NetifExtraGso(0x0102, 2, 0x0304)).pack()
    assert len(raw) == 8
    assert (raw[0], raw[1]) == (1, 1)
    assert struct.unpack_from("<H", raw, 2)[0] == 0x0102
    assert (raw[4], raw[5]) == (2, 0)
    assert struct.unpack_from("<H", raw, 6)[0] == 0x0304


def test_netif_9_extra_info_mcast_and_hash_offsets():
    mac = bytes.fromhex("01005e0000fb")
    for t in (NetifExtraType.MCAST_ADD, NetifExtraType.MCAST_DEL):
        raw = NetifExtraInfo(t, 0, NetifExtraMcast(mac)).pack()
        assert raw[0] == t and raw[2:8] == mac
    raw = NetifExtraInfo(4, 0, NetifExtraHash(3, 1, 0xA1B2C3D4)).pack()
    assert (raw[0], raw[2], raw[3]) == (4, 3, 1)
    assert raw[4:8] == bytes.fromhex("d4c3b2a1")  # value[4], LSB first


def test_netif_9_unknown_extra_type_keeps_raw_payload():
    raw = bytes([9, 0]) + b"abcdef"
    extra = NetifExtraInfo.unpack(raw)
    assert extra.u == b"abcdef" and extra.pack() == raw
    assert NetifExtraInfo.unpack(raw + b"\xff" * 4) == extra  # a whole 12-byte tx slot


# -- round trips and hostile bytes ----------------------------------------------------------

extras = st.one_of(
    st.builds(NetifExtraInfo, st.just(1), U8, st.builds(NetifExtraGso, U16, U8, U16)),
    st.builds(NetifExtraInfo, st.sampled_from([2, 3]), U8,
              st.builds(NetifExtraMcast, st.binary(min_size=6, max_size=6))),
    st.builds(NetifExtraInfo, st.just(4), U8, st.builds(NetifExtraHash, U8, U8, U32)),
    st.builds(NetifExtraInfo, st.sampled_from([0, 5, 255]), U8,
              st.binary(min_size=6, max_size=6)))
wire_structs = st.one_of(
    st.builds(NetifTxRequest, U32, U16, U16, U16, U16), st.builds(NetifTxResponse, U16, S16),
    st.builds(NetifRxRequest, U16, U32), st.builds(NetifRxResponse, U16, U16, U16, S16), extras)


@given(wire_structs)
def test_netif_9_every_struct_round_trips(item):
    raw = item.pack()
    assert len(raw) == item.SIZE
    assert type(item).unpack(raw) == item


@given(st.binary(max_size=16))
def test_netif_9_decoders_on_arbitrary_bytes_give_value_or_einval(data):
    for cls in (NetifTxRequest, NetifTxResponse, NetifRxRequest, NetifRxResponse,
                NetifExtraInfo, NetifExtraGso, NetifExtraMcast, NetifExtraHash):
        try:
            cls.unpack(data)
        except XenError as e:
            assert e.errno == Errno.EINVAL


@given(st.lists(st.binary(min_size=12, max_size=12), min_size=1, max_size=30),
       st.integers(0, 29))
def test_netif_9_tx_chain_on_arbitrary_slots_gives_packet_or_einval(slots, start):
    try:
        packet = tx_packet_chain(slots, min(start, len(slots) - 1))
    except XenError as e:
        assert e.errno == Errno.EINVAL
        return
    assert 1 <= packet.nr_slots <= len(slots) and len(packet.responses()) == packet.nr_slots
    if packet.status == NETIF_RSP_OKAY:
        assert sum(packet.sizes) == packet.size <= XEN_NETIF_MAX_TX_SIZE


# -- the tx chain (9 "TX wire format", 19.5) ------------------------------------------------


def test_netif_9_first_slot_size_is_the_total_length():
    packet = tx_packet_chain([_tx(1, 0, MORE, 10, 3000), _tx(2, 0, MORE, 11, 1000),
                              _tx(3, 0, 0, 12, 500), _tx(99, 0, 0, 13, 60)])
    assert packet.status == NETIF_RSP_OKAY and packet.nr_slots == 3  # slot 3 is the next packet
    assert packet.size == 3000 and packet.sizes == (1500, 1000, 500)
    assert [r.id for r in packet.requests] == [10, 11, 12]


def test_netif_9_chain_ends_at_the_first_slot_without_more_data():
    packet = tx_packet_chain([_tx(size=60), _tx(size=70)])
    assert packet.nr_slots == 1 and packet.sizes == (60,)
    assert tx_packet_chain([_tx(size=60), _tx(size=70)], 1).sizes == (70,)


def test_netif_9_extra_info_slots_follow_the_first_request_and_get_null():
    mcast = NetifExtraInfo(NetifExtraType.MCAST_ADD, XEN_NETIF_EXTRA_FLAG_MORE,
                           NetifExtraMcast(bytes(6)))
    slots = [_tx(1, 0, EXTRA | MORE, 10, 1600), _slot(mcast), _slot(GSO),
             _tx(2, 0, 0, 11, 600)]
    packet = tx_packet_chain(slots)
    assert packet.extras == (mcast, GSO) and packet.nr_slots == 4
    assert packet.sizes == (1000, 600)
    assert [(r.id, r.status) for r in packet.responses()] == [
        (10, NETIF_RSP_OKAY), (0, NETIF_RSP_NULL), (0, NETIF_RSP_NULL), (11, NETIF_RSP_OKAY)]


@pytest.mark.parametrize("extra_type", [0, 5, 200])
def test_netif_9_invalid_extra_type_is_fatal(extra_type):
    bad = NetifExtraInfo(extra_type, 0, bytes(6))
    with pytest.raises(XenError) as e:
        tx_packet_chain([_tx(flags=EXTRA), _slot(bad)])
    assert e.value.errno == Errno.EINVAL


@pytest.mark.parametrize("slots", [
    [_tx(flags=MORE, size=200)],  # more_data on the last published slot
    [_tx(flags=EXTRA)],  # extra_info with no extra slot
    [_tx(flags=EXTRA), _slot(NetifExtraInfo(1, XEN_NETIF_EXTRA_FLAG_MORE,
                                            NetifExtraGso(1448, 1)))],  # EXTRA_FLAG_MORE
])
def test_netif_9_chain_past_the_published_slots_is_fatal(slots):
    with pytest.raises(XenError) as e:
        tx_packet_chain(slots)
    assert e.value.errno == Errno.EINVAL


def test_netif_9_later_fragment_over_the_remaining_total_drops_the_packet():
    slots = [_tx(1, 0, MORE, 10, 1000), _tx(2, 0, MORE, 11, 800), _tx(3, 0, 0, 12, 300)]
    packet = tx_packet_chain(slots)
    assert packet.status == NETIF_RSP_ERROR and packet.nr_slots == 3 and packet.sizes == ()
    assert [(r.id, r.status) for r in packet.responses()] == [
        (10, NETIF_RSP_ERROR), (11, NETIF_RSP_ERROR), (12, NETIF_RSP_ERROR)]


@pytest.mark.parametrize("slots", [
    [_tx(offset=4000, size=97)],  # a single fragment crossing its page
    [_tx(offset=3000, flags=MORE, size=1200), _tx(size=100)],  # first fragment is 1100 bytes
    [_tx(flags=MORE, size=5000), _tx(offset=100, size=4000)],  # a later one crossing
])
def test_netif_9_fragment_crossing_its_page_is_fatal(slots):
    with pytest.raises(XenError) as e:
        tx_packet_chain(slots)
    assert e.value.errno == Errno.EINVAL


def test_netif_9_first_fragment_may_end_exactly_at_the_page_end():
    assert tx_packet_chain([_tx(offset=3000, flags=MORE, size=1196), _tx(size=100)]).sizes == (
        1096, 100)


def _chain(n: int) -> list[bytes]:
    return [_tx(i, 0, MORE if i < n - 1 else 0, i, 10 * (n - i) if i == 0 else 10)
            for i in range(n)]


def test_netif_9_nr_slots_min_packets_are_accepted_longer_ones_dropped():
    ok = tx_packet_chain(_chain(XEN_NETIF_NR_SLOTS_MIN))
    assert ok.status == NETIF_RSP_OKAY and ok.nr_slots == 18
    dropped = tx_packet_chain(_chain(19))
    assert dropped.status == NETIF_RSP_ERROR and dropped.nr_slots == 19
    with pytest.raises(XenError):
        tx_packet_chain(_chain(21))  # over fatal_skb_slots (20): a malicious frontend


# -- the frontend's side: splitting a frame into slots --------------------------------------


def test_netif_9_tx_slots_layout():
    slots = tx_slots(9000, [1, 2, 3], [7, 8, 9], offset=100,
                     flags=NetTxFlag.csum_blank | NetTxFlag.more_data, extras=[GSO])
    first, extra, second, third = slots
    assert first == NetifTxRequest(1, 100, 1 | MORE | EXTRA, 7, 9000)
    assert extra == GSO
    assert second == NetifTxRequest(2, 0, MORE, 8, 4096)
    assert third == NetifTxRequest(3, 0, 0, 9, 9000 - 3996 - 4096)


def test_netif_9_tx_slots_limits():
    assert tx_slots_needed(0) == 1 and tx_slots_needed(4096) == 1 and tx_slots_needed(4097) == 2
    assert tx_slots_needed(XEN_NETIF_MAX_TX_SIZE, 4095) == 17 <= XEN_NETIF_NR_SLOTS_MIN
    with pytest.raises(XenError) as e:
        tx_slots(0x10000, list(range(17)), list(range(17)))
    assert e.value.errno == Errno.E2BIG
    with pytest.raises(XenError):
        tx_slots(5000, [1], [1])  # needs two grefs


@given(st.integers(0, XEN_NETIF_MAX_TX_SIZE), st.integers(0, 4095),
       st.lists(extras.filter(lambda e: 0 < e.type < 5), max_size=3))
def test_netif_9_tx_slots_read_back_as_the_same_packet(length, offset, extra_list):
    n = tx_slots_needed(length, offset)
    grefs, ids = list(range(100, 100 + n)), list(range(n))
    slots = tx_slots(length, grefs, ids, offset=offset, extras=extra_list)
    packet = tx_packet_chain([_slot(s) for s in slots])
    assert packet.status == NETIF_RSP_OKAY and packet.nr_slots == len(slots) == n + len(extra_list)
    assert packet.size == length == sum(packet.sizes)
    assert packet.sizes[0] == min(length, 4096 - offset)
    assert [r.gref for r in packet.requests] == grefs
    assert [e.u for e in packet.extras] == [e.u for e in extra_list]


# -- xenstore and addresses (9) -------------------------------------------------------------


def test_netif_9_xenstore_keys_and_defaults():
    assert netif.DEFAULT_MTU == 1500
    assert {"tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy"} <= set(
        netif.FRONTEND_KEYS)
    assert "hotplug-status" in netif.TOOLSTACK_BACKEND_KEYS
    assert {"feature-rx-copy", "feature-sg", "feature-split-event-channels"} <= set(
        netif.BACKEND_FEATURE_KEYS)
    assert netif.FRONTEND_SPLIT_EVTCHN_KEYS == ("event-channel-tx", "event-channel-rx")


def test_netif_9_mac_uses_xen_oui_and_clears_the_top_bit():
    assert netif.xen_mac(b"\xff\x01\x02") == "00:16:3e:7f:01:02"
    assert netif.xen_mac(b"\x12\x34\x56").startswith(netif.XEN_OUI + ":")
