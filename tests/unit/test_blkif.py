"""xen-reference.md 8 (blkif), 7.1 (ring size), 19.4 and 19.11: layouts, decoders, checks, vdevs."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import blkif
from protocols.blkif import (BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE,
                             BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE,
                             BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
                             BLKIF_RSP_OKAY, REQUEST_SIZE, RESPONSE_SIZE, RING_SIZE, BlkifOp,
                             BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect,
                             BlkifRequestSegment, BlkifResponse, devid_to_vdev,
                             pack_indirect_segments, pack_slot, peek_request, request_bytes,
                             segment_bytes, unpack_indirect_segments, unpack_request,
                             validate_request, vdev_to_devid)
from protocols.errno import Errno, XenError
from protocols.ring import ring_size

U8, U16, U32, U64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))
SEG = (BlkifRequestSegment(0x11111111, 1, 6), BlkifRequestSegment(0x22222222, 2, 5),
       BlkifRequestSegment(0x33333333, 3, 4))


def _rw(op=BLKIF_OP_READ, sector=0, segs=SEG, nr=None) -> BlkifRequest:
    return BlkifRequest(op, len(segs) if nr is None else nr, 51712, 7, sector, segs)


# -- 8.1 numbers, 8.2 layouts, 7.1 ring size -------------------------------------------------


def test_blkif_8_1_opcodes_status_and_info_bits():
    assert [int(op) for op in BlkifOp] == list(range(7))
    assert (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_RESERVED_1, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT) == tuple(range(7))
    assert (BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP) == (0, -1, -2)
    assert (blkif.VDISK_CDROM, blkif.VDISK_REMOVABLE, blkif.VDISK_READONLY) == (1, 2, 4)
    assert BLKIF_DISCARD_SECURE == 1 and blkif.SECTOR_SIZE == 512


def test_blkif_7_1_ring_size_is_32_not_36():
    assert (REQUEST_SIZE, RESPONSE_SIZE) == (112, 16)
    assert RING_SIZE == ring_size(max(REQUEST_SIZE, RESPONSE_SIZE)) == 32
    assert ring_size(REQUEST_SIZE, 2 * 4096) == 64 and ring_size(REQUEST_SIZE, 4 * 4096) == 128
    assert blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST == 11
    assert blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST == 8
    assert blkif.SEGMENTS_PER_INDIRECT_PAGE == 512


def test_blkif_8_2_request_offsets():
    req = BlkifRequest(BLKIF_OP_WRITE, 3, 0xBEEF, 0x1122334455667788, 0x0102030405060708, SEG)
    raw = req.pack()
    assert len(raw) == 112
    assert struct.unpack_from("<BBH", raw, 0) == (1, 3, 0xBEEF)
    assert raw[4:8] == bytes(4)
    assert struct.unpack_from("<Q", raw, 8)[0] == 0x1122334455667788
    assert struct.unpack_from("<Q", raw, 16)[0] == 0x0102030405060708
    for i, s in enumerate(SEG):
        off = 24 + 8 * i
        assert struct.unpack_from("<I", raw, off)[0] == s.gref
        assert (raw[off + 4], raw[off + 5]) == (s.first_sect, s.last_sect)
        assert raw[off + 6:off + 8] == bytes(2)
    assert raw[24 + 8 * 3:] == bytes(112 - 48)  # unused seg[] entries


def test_blkif_8_2_segment_is_8_bytes():
    raw = BlkifRequestSegment(0xA1B2C3D4, 2, 7).pack()
    assert raw == struct.pack("<IBBxx", 0xA1B2C3D4, 2, 7)
    assert BlkifRequestSegment.unpack(raw) == BlkifRequestSegment(0xA1B2C3D4, 2, 7)


def test_blkif_8_2_response_offsets():
    raw = BlkifResponse(0x1122334455667788, BLKIF_OP_DISCARD, -2).pack()
    assert len(raw) == 16
    assert struct.unpack_from("<Q", raw, 0)[0] == 0x1122334455667788
    assert raw[8] == 5 and raw[9] == 0
    assert struct.unpack_from("<h", raw, 10)[0] == -2
    assert raw[12:] == bytes(4)


def test_blkif_8_2_discard_offsets_and_slot_image():
    req = BlkifRequestDiscard(BLKIF_DISCARD_SECURE, 0xBEEF, 0x1122334455667788,
                              0x0102030405060708, 0x0A0B0C0D0E0F1011)
    raw = req.pack()
    assert len(raw) == 32
    assert struct.unpack_from("<BBH", raw, 0) == (5, 1, 0xBEEF)
    assert struct.unpack_from("<QQQ", raw, 8) == (0x1122334455667788, 0x0102030405060708,
                                                  0x0A0B0C0D0E0F1011)
    slot = pack_slot(req)
    assert len(slot) == 112 and slot[:32] == raw and slot[32:] == bytes(80)
    assert unpack_request(slot) == req == BlkifRequestDiscard.unpack(raw)


def test_blkif_8_2_indirect_offsets():
    req = BlkifRequestIndirect(BLKIF_OP_WRITE, 1025, 0x1122334455667788, 0x0102030405060708,
                               0xBEEF, (0xA0000001, 0xA0000002, 0xA0000003))
    raw = req.pack()
    assert len(raw) == 64
    assert struct.unpack_from("<BBH", raw, 0) == (6, 1, 1025)
    assert struct.unpack_from("<QQ", raw, 8) == (0x1122334455667788, 0x0102030405060708)
    assert struct.unpack_from("<H", raw, 24)[0] == 0xBEEF
    assert struct.unpack_from("<8I", raw, 28) == (0xA0000001, 0xA0000002, 0xA0000003, 0, 0, 0,
                                                  0, 0)
    assert unpack_request(pack_slot(req)) == req  # 1025 segments -> 3 pages in use


# -- round trips and hostile bytes ----------------------------------------------------------

segments = st.builds(BlkifRequestSegment, U32, U8, U8)
rw_requests = st.lists(segments, max_size=11).flatmap(lambda segs: st.builds(
    BlkifRequest, st.sampled_from([0, 1, 2, 3]), st.just(len(segs)), U16, U64, U64,
    st.just(tuple(segs))))
discards = st.builds(BlkifRequestDiscard, U8, U16, U64, U64, U64)
indirects = st.integers(0, blkif.BLKIF_MAX_INDIRECT_SEGMENTS).flatmap(lambda nr: st.builds(
    BlkifRequestIndirect, U8, st.just(nr), U64, U64, U16,
    st.lists(U32, min_size=blkif.indirect_pages(nr),
             max_size=blkif.indirect_pages(nr)).map(tuple)))


@given(st.one_of(rw_requests, discards, indirects))
def test_blkif_8_2_every_request_round_trips_through_a_slot(req):
    assert unpack_request(pack_slot(req)) == req
    assert type(req).unpack(req.pack()) == req
    assert peek_request(pack_slot(req)) == (req.operation, req.id)


@given(U64, U8, st.integers(-2**15, 2**15 - 1))
def test_blkif_8_2_response_round_trips(id_, op, status):
    rsp = BlkifResponse(id_, op, status)
    assert BlkifResponse.unpack(rsp.pack()) == rsp
    assert BlkifResponse.unpack(rsp.pack().ljust(112, b"\xff")) == rsp  # a whole ring slot


def _value_or_einval(decode, data):
    try:
        decode(data)
    except XenError as e:
        assert e.errno == Errno.EINVAL


@given(st.one_of(st.binary(max_size=130), st.binary(min_size=112, max_size=112)))
def test_blkif_8_2_decoders_on_arbitrary_bytes_give_value_or_einval(data):
    for decode in (unpack_request, BlkifRequest.unpack, BlkifRequestDiscard.unpack,
                   BlkifRequestIndirect.unpack, BlkifResponse.unpack,
                   BlkifRequestSegment.unpack, peek_request):
        _value_or_einval(decode, data)


@given(st.binary(min_size=112, max_size=112))
def test_blkif_8_2_decoded_slot_segments_are_at_most_eleven(data):
    try:
        req = unpack_request(data)
    except XenError:
        return
    if isinstance(req, BlkifRequest):
        assert len(req.segments) == min(req.nr_segments, 11)


@pytest.mark.parametrize("op", [BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER])
def test_blkif_8_2_over_eleven_segments_is_einval_but_answerable(op):
    slot = bytearray(_rw(op).pack())
    slot[1] = 12
    with pytest.raises(XenError) as e:
        unpack_request(bytes(slot))
    assert e.value.errno == Errno.EINVAL
    assert peek_request(bytes(slot)) == (op, 7)


@pytest.mark.parametrize("length", [0, 16, 111, 113])
def test_blkif_8_2_slot_of_wrong_length_is_einval(length):
    with pytest.raises(XenError) as e:
        unpack_request(bytes(length))
    assert e.value.errno == Errno.EINVAL


@pytest.mark.parametrize("op", [BLKIF_OP_RESERVED_1, 7, 200])
def test_blkif_8_1_unknown_op_decodes_raw_and_gets_eopnotsupp(op):
    slot = bytearray(_rw().pack())
    slot[0], slot[1] = op, 40  # nr_segments is meaningless for an unknown op
    req = unpack_request(bytes(slot))
    assert type(req) is BlkifRequest and req.operation == op and len(req.segments) == 11
    assert validate_request(req, 1 << 20, readonly=False).status == BLKIF_RSP_EOPNOTSUPP


def test_blkif_8_2_indirect_segments_live_in_indirect_pages():
    segs = tuple(BlkifRequestSegment(i, i % 8, 7) for i in range(600))
    pages = pack_indirect_segments(segs)
    assert len(pages) == 2 == blkif.indirect_pages(600) and all(len(p) == 4096 for p in pages)
    assert struct.unpack_from("<IBB", pages[1], 8 * (513 - 512)) == (513, 513 % 8, 7)
    assert unpack_indirect_segments(pages, 600) == segs
    with pytest.raises(XenError):
        unpack_indirect_segments(pages[:1], 600)


def test_blkif_8_2_segment_carries_inclusive_sectors():
    assert segment_bytes(BlkifRequestSegment(1, 0, 7)) == 4096
    assert segment_bytes(BlkifRequestSegment(1, 3, 3)) == 512
    assert request_bytes(SEG) == (6 + 4 + 2) * 512
    assert request_bytes([BlkifRequestSegment(1, 0, 7)] * 11) == 44 * 1024  # 8.2 maximum


# -- what the backend answers (8.1, 8.2, 19.11) ---------------------------------------------

DISK = 1000  # sectors


def _status(req, **kw) -> int:
    kw.setdefault("readonly", False)
    return validate_request(req, DISK, **kw).status


def test_blkif_8_2_valid_read_and_write_are_okay():
    assert validate_request(_rw(), DISK, readonly=False).ok
    assert _status(_rw(BLKIF_OP_WRITE, sector=DISK - 12)) == BLKIF_RSP_OKAY  # ends on the last


@pytest.mark.parametrize("seg", [BlkifRequestSegment(1, 5, 4), BlkifRequestSegment(1, 0, 8),
                                 BlkifRequestSegment(1, 9, 9)])
def test_blkif_8_2_segment_needs_first_le_last_le_7(seg):
    assert _status(_rw(segs=(seg,))) == BLKIF_RSP_ERROR


@pytest.mark.parametrize("op", [BLKIF_OP_READ, BLKIF_OP_WRITE])
def test_blkif_8_2_read_write_need_1_to_11_segments(op):
    assert _status(_rw(op, segs=())) == BLKIF_RSP_ERROR
    assert _status(_rw(op, segs=SEG, nr=12)) == BLKIF_RSP_ERROR


def test_blkif_8_2_flush_may_carry_no_segments_with_the_feature():
    flush = _rw(BLKIF_OP_FLUSH_DISKCACHE, segs=())
    assert _status(flush, feature_flush_cache=True) == BLKIF_RSP_OKAY
    assert _status(flush) == BLKIF_RSP_EOPNOTSUPP


def test_blkif_8_1_barrier_needs_feature_barrier():
    barrier = _rw(BLKIF_OP_WRITE_BARRIER, segs=())
    assert _status(barrier) == BLKIF_RSP_EOPNOTSUPP
    assert _status(barrier, feature_barrier=True) == BLKIF_RSP_OKAY


def test_blkif_8_3_range_must_end_within_sectors():
    assert _status(_rw(sector=DISK - 11)) == BLKIF_RSP_ERROR  # 12 sectors, one past the end
    assert _status(_rw(sector=2**64 - 1)) == BLKIF_RSP_ERROR  # no u64 wrap-around


@pytest.mark.parametrize("req", [
    _rw(BLKIF_OP_WRITE), _rw(BLKIF_OP_FLUSH_DISKCACHE, segs=()),
    BlkifRequestDiscard(0, 0, 1, 0, 8)])
def test_blkif_8_3_readonly_disk_refuses_every_write(req):
    features = dict(feature_flush_cache=True, feature_discard=True)
    assert _status(req, readonly=True, **features) == BLKIF_RSP_ERROR
    assert _status(req, readonly=False, **features) == BLKIF_RSP_OKAY
    assert _status(_rw(BLKIF_OP_READ), readonly=True) == BLKIF_RSP_OKAY


def test_blkif_19_11_sectors_stay_512_byte_units_but_align_to_sector_size():
    whole = _rw(sector=8, segs=(BlkifRequestSegment(1, 0, 7),))
    assert _status(whole, sector_size=4096) == BLKIF_RSP_OKAY
    assert _status(_rw(sector=8, segs=(BlkifRequestSegment(1, 0, 3),)),
                   sector_size=4096) == BLKIF_RSP_ERROR
    assert _status(_rw(sector=4, segs=(BlkifRequestSegment(1, 0, 7),)),
                   sector_size=4096) == BLKIF_RSP_ERROR


def test_blkif_8_1_discard_needs_feature_and_range():
    d = BlkifRequestDiscard(0, 0, 1, DISK - 10, 10)
    assert _status(d) == BLKIF_RSP_EOPNOTSUPP
    assert _status(d, feature_discard=True) == BLKIF_RSP_OKAY
    assert _status(BlkifRequestDiscard(0, 0, 1, DISK - 10, 11),
                   feature_discard=True) == BLKIF_RSP_ERROR
    secure = BlkifRequestDiscard(BLKIF_DISCARD_SECURE, 0, 1, 0, 8)
    assert _status(secure, feature_discard=True) == BLKIF_RSP_EOPNOTSUPP
    assert _status(secure, feature_discard=True, discard_secure=True) == BLKIF_RSP_OKAY


def test_blkif_8_2_indirect_needs_feature_count_and_segments():
    segs = tuple(BlkifRequestSegment(i, 0, 7) for i in range(20))
    req = BlkifRequestIndirect(BLKIF_OP_WRITE, 20, 1, 0, 0, (9,))
    assert _status(req, indirect_segments=segs) == BLKIF_RSP_EOPNOTSUPP
    ok = dict(max_indirect_segments=32, indirect_segments=segs)
    assert _status(req, **ok) == BLKIF_RSP_OKAY
    assert _status(req, max_indirect_segments=16, indirect_segments=segs) == BLKIF_RSP_ERROR
    assert _status(req, max_indirect_segments=32, indirect_segments=segs[:19]) == BLKIF_RSP_ERROR
    flush = BlkifRequestIndirect(BLKIF_OP_FLUSH_DISKCACHE, 20, 1, 0, 0, (9,))
    assert _status(flush, **ok) == BLKIF_RSP_ERROR  # indirect_op must be read or write
    assert _status(req, readonly=True, **ok) == BLKIF_RSP_ERROR
    assert _status(BlkifRequestIndirect(BLKIF_OP_READ, 20, 1, DISK - 159, 0, (9,)),
                   **ok) == BLKIF_RSP_ERROR  # 160 sectors from DISK - 159


# -- vdev numbers (8.3, docs/man/xen-vbd-interface.7.pandoc) --------------------------------

VDEVS = [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", 202 << 8 | 15 << 4 | 15),
    ("xvdq", 1 << 28 | 16 << 8), ("xvda16", 1 << 28 | 16), ("xvdz", 1 << 28 | 25 << 8),
    ("xvdaa", 1 << 28 | 26 << 8), ("xvdtq37", 1 << 28 | 536 << 8 | 37),
    ("sda", 2048), ("sdb3", 8 << 8 | 1 << 4 | 3), ("hda", 768), ("hdb", 3 << 8 | 1 << 6),
    ("hdc", 5632), ("hdc2", 22 << 8 | 2), ("hdd63", 22 << 8 | 1 << 6 | 63),
]


@pytest.mark.parametrize("vdev,devid", VDEVS)
def test_blkif_8_3_vdev_encoding(vdev, devid):
    assert vdev_to_devid(vdev) == devid
    assert devid_to_vdev(devid) == vdev


@pytest.mark.parametrize("vdev,devid", [("d0p0", 51712), ("d1p2", 51730),
                                        ("d536p37", 1 << 28 | 536 << 8 | 37),
                                        ("51712", 51712), ("0xca00", 51712), ("0145000", 51712)])
def test_blkif_8_3_vdev_man_page_dp_and_number_forms(vdev, devid):
    assert vdev_to_devid(vdev) == devid


@pytest.mark.parametrize("vdev", ["", "xvd", "xvda0", "xvda256", "xvd1", "hde", "hda64", "sdq",
                                  "sda16", "vda", "XVDA", "xvda-1", "d0", "d1048576p0",
                                  "0x80000000", "xvdbbbbbb"])
def test_blkif_8_3_bad_vdev_is_einval_naming_it(vdev):
    with pytest.raises(XenError) as e:
        vdev_to_devid(vdev)
    assert e.value.errno == Errno.EINVAL and repr(vdev) in e.value.detail


@pytest.mark.parametrize("devid", [2 << 28, -1, 3 << 8 | 0x80, 7 << 8, 1])
def test_blkif_8_3_reserved_devid_is_einval(devid):
    with pytest.raises(XenError) as e:
        devid_to_vdev(devid)
    assert e.value.errno == Errno.EINVAL


@given(st.integers(0, (1 << 20) - 1), st.integers(0, 255))
def test_blkif_8_3_xvd_names_round_trip(disk, part):
    devid = vdev_to_devid(f"d{disk}p{part}")
    assert vdev_to_devid(devid_to_vdev(devid)) == devid
    assert (devid >> 28 == 1) == (disk > 15 or part > 15)


# -- xenstore (8.3) -------------------------------------------------------------------------


def test_blkif_8_3_xenstore_keys_by_writer():
    assert blkif.BACKEND_CONNECT_KEYS == ("sectors", "info", "sector-size",
                                          "physical-sector-size")
    assert {"ring-ref", "event-channel", "protocol"} <= set(blkif.FRONTEND_KEYS)
    assert "virtual-device" in blkif.TOOLSTACK_FRONTEND_KEYS
    assert {"frontend", "frontend-id", "online", "state", "dev", "mode", "params"} <= set(
        blkif.TOOLSTACK_BACKEND_KEYS)
    # The backend never writes what the toolstack or the frontend owns, except the shared
    # feature-persistent (each side writes its own copy).
    backend = set(blkif.BACKEND_FEATURE_KEYS) | set(blkif.BACKEND_CONNECT_KEYS)
    assert backend.isdisjoint(blkif.TOOLSTACK_BACKEND_KEYS)
    assert backend & set(blkif.FRONTEND_KEYS) == {"feature-persistent"}
    assert (blkif.XEN_IO_PROTO_ABI_X86_64, blkif.XEN_IO_PROTO_ABI_X86_32,
            blkif.XEN_IO_PROTO_ABI_ARM) == ("x86_64-abi", "x86_32-abi", "arm-abi")
