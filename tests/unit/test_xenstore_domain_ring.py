"""protocols.xenstore.domain_ring against reference 11.2 (xenstore_domain_interface)."""

import struct

import pytest

from protocols.errno import Errno, XenError
from protocols.xenstore import domain_ring as dr
from protocols.xenstore.domain_ring import XenstoreDomainInterface
from protocols.xenstore.wire import XsDecoder, XsType, encode, make_request, parse_request, reply_ok


def _page() -> bytearray:
    return bytearray(4096)


def test_xs_ring_11_2_index_offsets_read_from_distinct_values():
    page = _page()
    struct.pack_into("<IIIIIIII", page, 2048, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88)
    intf = XenstoreDomainInterface(page)
    assert (intf.req.cons, intf.req.prod, intf.rsp.cons, intf.rsp.prod) == (0x11, 0x22, 0x33, 0x44)
    assert (intf.server_features, intf.connection, intf.error, intf.evtchn_port) == (
        0x55, 0x66, 0x77, 0x88)


def test_xs_ring_11_2_control_words_are_stored_at_2064_to_2076():
    page = _page()
    intf = XenstoreDomainInterface(page)
    intf.server_features = 0xA1
    intf.connection = 0xB2
    intf.error = 0xC3
    intf.evtchn_port = 0xD4
    assert struct.unpack_from("<IIII", page, 2064) == (0xA1, 0xB2, 0xC3, 0xD4)
    assert page[:2064] == bytes(2064) and page[2080:] == bytes(4096 - 2080)


def test_xs_ring_11_2_requests_go_to_req_at_0_and_replies_to_rsp_at_1024():
    page = _page()
    intf = XenstoreDomainInterface(page)
    assert intf.write_request(b"abc") == 3
    assert page[0:3] == b"abc" and struct.unpack_from("<II", page, 2048) == (0, 3)
    assert intf.read_request() == b"abc"
    assert struct.unpack_from("<I", page, 2048)[0] == 3
    assert intf.write_response(b"xy") == 2
    assert page[1024:1026] == b"xy" and struct.unpack_from("<II", page, 2056) == (0, 2)
    assert intf.read_response() == b"xy"
    assert struct.unpack_from("<I", page, 2056)[0] == 2


def test_xs_ring_11_2_xs_wire_stream_crosses_the_ring_with_indices_near_2_32():
    page = _page()
    guest, server = XenstoreDomainInterface(page), XenstoreDomainInterface(page)
    guest.req.reset(0xFFFFFFFF - 700)  # guests must not assume indices start at 0
    guest.rsp.reset(0xFFFFFFFF - 5)
    requests = [make_request(XsType.WRITE, f"data/k{i}", bytes([i]) * 900, req_id=i)
                for i in range(1, 4)]  # each larger than half the ring
    outbox = b"".join(map(encode, requests))
    decoder, replies, got = XsDecoder(), XsDecoder(), []
    while outbox or guest.req.available():
        outbox = outbox[guest.write_request(outbox):]
        for msg in decoder.feed(server.read_request(100)):
            req = parse_request(msg)
            got.append(req)
            assert server.write_response(encode(reply_ok(req))) == 19
    assert [r.args for r in got] == [parse_request(m).args for m in requests]
    assert [m.req_id for m in replies.feed(guest.read_response())] == [1, 2, 3]
    assert struct.unpack_from("<I", page, 2052)[0] < 4096  # req_prod wrapped past 2^32


def test_xs_ring_11_2_reset_rings_empties_both_queues():
    page = _page()
    intf = XenstoreDomainInterface(page)
    intf.req.reset(1000)
    intf.write_request(b"partial")
    intf.write_response(b"stale")
    intf.reset_rings()
    assert struct.unpack_from("<IIII", page, 2048) == (0, 0, 0, 0)
    assert intf.read_request() == b"" and intf.read_response() == b""


def test_xs_ring_11_2_hostile_indices_raise_eio():
    page = _page()
    struct.pack_into("<II", page, 2048, 5, 5 + 1025)
    with pytest.raises(XenError) as err:
        XenstoreDomainInterface(page).read_request()
    assert err.value.errno == Errno.EIO


def test_xs_ring_11_2_constants():
    assert dr.XENSTORE_RING_SIZE == 1024
    assert (dr.XENSTORE_SERVER_FEATURE_RECONNECTION, dr.XENSTORE_SERVER_FEATURE_ERROR,
            dr.XENSTORE_SERVER_FEATURE_WATCHDEPTH, dr.XENSTORE_SERVER_FEATURE_DOMID_ANY) == (
        1, 2, 4, 8)
    assert (dr.XENSTORE_CONNECTED, dr.XENSTORE_RECONNECT) == (0, 1)
    assert (dr.XENSTORE_ERROR_NONE, dr.XENSTORE_ERROR_COMM, dr.XENSTORE_ERROR_RINGIDX,
            dr.XENSTORE_ERROR_PROTO) == (0, 1, 2, 3)
