"""blkback's data path (actors/blkback/ring.py): a FrontRing in the test plays blkfront over
the same page; data pages come from a dict, or from the in-process hypervisor's grant map."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import memory
from actors.blkback.ring import BlkbackRing
from actors.blkback.vbd import Vbd, create_image
from actors.hypervisor.state import Hypervisor
from protocols.blkif import (BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE,
                             BLKIF_OP_READ, BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE,
                             BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
                             BLKIF_RSP_OKAY, REQUEST_SIZE, RESPONSE_SIZE, BlkifRequest,
                             BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
                             BlkifResponse)
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTMAP, GrantTable
from protocols.hypercall import (DOMID_ANY, Domctl, GnttabOp, Hypercall, MemoryOp, decode_result,
                                 encode_call)
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES
from protocols.ring import REQ_PROD, FrontRing

SECTORS = 2048  # a 1 MiB image
GREFS = range(8, 8 + 16)


class Rig:
    """An image, a ring page shared by a FrontRing and a BlkbackRing, and data pages by gref."""

    def __init__(self, tmp_path, *, readonly=False, persistent=True, **features):
        self.path = tmp_path / "disk.img"
        if not self.path.exists():
            create_image(self.path, SECTORS * 512)
        self.vbd = Vbd(self.path, readonly=readonly)
        self.page = bytearray(4096)
        self.front = FrontRing(self.page, REQUEST_SIZE)
        self.front.init()
        self.data = {g: bytearray(4096) for g in GREFS}
        self.maps = []
        self.back = BlkbackRing(memoryview(self.page), self.vbd, map_grant=self.map_grant,
                                feature_persistent=persistent, **features)
        self.kicks = 0

    def kick(self):
        self.kicks += 1

    def process(self, **kw):
        return self.back.process(self.kick, **kw)

    def map_grant(self, gref, readonly):
        self.maps.append((gref, readonly))
        if gref not in self.data:
            raise XenError(Errno.EINVAL, f"GNTST_bad_gntref {gref}")
        return memoryview(self.data[gref])

    def submit(self, *reqs):
        """Push ``reqs``, let blkback run, return the responses (in ring order)."""
        for r in reqs:
            self.front.put_request(r.pack())
        self.front.push_requests()
        result = self.process()
        assert not result.disconnect and not result.more
        assert result.handled == len(reqs)
        return [BlkifResponse.unpack(s) for s in self.front.get_responses(RESPONSE_SIZE)]

    def image(self):
        with open(self.path, "rb") as f:
            return f.read()


def rw(op, id_, sector, *segs):
    return BlkifRequest(op, len(segs), 0, id_, sector,
                        tuple(BlkifRequestSegment(g, a, b) for g, a, b in segs))


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_blkback_8_1_write_then_read_back_byte_for_byte(rig):
    rig.data[8][:] = os.urandom(4096)
    rig.data[9][:] = os.urandom(4096)
    written = bytes(rig.data[8][512:4096]) + bytes(rig.data[9][0:1024])
    assert rig.submit(rw(BLKIF_OP_WRITE, 7, 100, (8, 1, 7), (9, 0, 1))) == [
        BlkifResponse(7, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)]
    assert rig.image()[100 * 512:100 * 512 + len(written)] == written
    assert rig.image()[:100 * 512] == bytes(100 * 512)
    rig.data[10][:] = bytes(4096)
    rig.data[11][:] = bytes(4096)
    assert rig.submit(rw(BLKIF_OP_READ, 8, 100, (10, 0, 6), (11, 5, 6))) == [
        BlkifResponse(8, BLKIF_OP_READ, BLKIF_RSP_OKAY)]
    assert bytes(rig.data[10][:3584]) + bytes(rig.data[11][2560:3584]) == written
    assert rig.data[10][3584:] == bytes(512) and rig.data[11][:2560] == bytes(2560)
    s = rig.back.statistics()
    assert (s.rd_req, s.wr_req, s.rd_sect, s.wr_sect, s.errors) == (1, 1, 9, 9, 0)


def test_blkback_8_1_flush_and_discard(rig):
    rig.data[8][:] = b"\x5a" * 4096
    writes = [rw(BLKIF_OP_WRITE, i, i * 8, (8, 0, 7)) for i in range(8)]
    assert {r.status for r in rig.submit(*writes)} == {BLKIF_RSP_OKAY}
    assert rig.submit(BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 99, 0)) == [
        BlkifResponse(99, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY)]
    os.fsync(rig.vbd.fd)
    before = os.stat(rig.path).st_blocks
    assert rig.submit(BlkifRequestDiscard(0, 0, 5, 16, 32)) == [
        BlkifResponse(5, BLKIF_OP_DISCARD, BLKIF_RSP_OKAY)]
    img = rig.image()
    assert img[16 * 512:48 * 512] == bytes(32 * 512)
    assert img[:16 * 512] == img[48 * 512:64 * 512] == b"\x5a" * (16 * 512)
    if rig.vbd.punch_supported:
        assert os.stat(rig.path).st_blocks < before
    s = rig.back.statistics()
    assert (s.f_req, s.ds_req, s.wr_req) == (1, 1, 8)


INVALID = [
    ("bad_op", BlkifRequest(BLKIF_OP_RESERVED_1, 1, 0, 1, 0, (BlkifRequestSegment(8, 0, 7),)),
     BLKIF_RSP_EOPNOTSUPP),
    ("barrier_unadvertised", BlkifRequest(BLKIF_OP_WRITE_BARRIER, 0, 0, 1, 0),
     BLKIF_RSP_EOPNOTSUPP),
    ("indirect_unadvertised", BlkifRequestIndirect(BLKIF_OP_WRITE, 1, 1, 0, 0, (8,)),
     BLKIF_RSP_EOPNOTSUPP),
    ("secure_discard", BlkifRequestDiscard(BLKIF_DISCARD_SECURE, 0, 1, 0, 8),
     BLKIF_RSP_EOPNOTSUPP),
    ("nr_segments_0", rw(BLKIF_OP_WRITE, 1, 0), BLKIF_RSP_ERROR),
    ("first_after_last", rw(BLKIF_OP_WRITE, 1, 0, (8, 5, 4)), BLKIF_RSP_ERROR),
    ("last_sect_8", rw(BLKIF_OP_WRITE, 1, 0, (8, 0, 8)), BLKIF_RSP_ERROR),
    ("beyond_disk", rw(BLKIF_OP_WRITE, 1, SECTORS - 4, (8, 0, 7)), BLKIF_RSP_ERROR),
    ("discard_beyond_disk", BlkifRequestDiscard(0, 0, 1, SECTORS - 1, 2), BLKIF_RSP_ERROR),
    ("bad_gref", rw(BLKIF_OP_WRITE, 1, 0, (8, 0, 7), (4000, 0, 7)), BLKIF_RSP_ERROR),
]


@pytest.mark.parametrize("name,req,status", INVALID, ids=[i[0] for i in INVALID])
def test_blkback_8_1_invalid_request_is_refused_and_image_unchanged(rig, name, req, status):
    rig.data[8][:] = b"\xee" * 4096
    assert rig.submit(req) == [BlkifResponse(1, req.operation, status)]
    assert rig.image() == bytes(SECTORS * 512)
    assert rig.back.statistics().errors == 1 and rig.back.last_error


def test_blkback_8_2_nr_segments_12_is_undecodable_and_answered_error(rig):
    slot = bytearray(rw(BLKIF_OP_WRITE, 0x1122, 0, *[(8, 0, 7)] * 11).pack())
    slot[1] = 12
    rig.front.put_request(bytes(slot))
    rig.front.push_requests()
    assert rig.process().handled == 1
    assert BlkifResponse.unpack(rig.front.get_responses()[0]) == BlkifResponse(
        0x1122, BLKIF_OP_WRITE, BLKIF_RSP_ERROR)
    assert rig.image() == bytes(SECTORS * 512)


def test_blkback_8_1_write_on_read_only_vbd_is_error(tmp_path):
    create_image(tmp_path / "disk.img", SECTORS * 512)
    rig = Rig(tmp_path, readonly=True)
    rig.data[8][:] = b"\x01" * 4096
    got = rig.submit(rw(BLKIF_OP_WRITE, 1, 0, (8, 0, 7)), BlkifRequestDiscard(0, 0, 2, 0, 8),
                     BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 3, 0),
                     rw(BLKIF_OP_READ, 4, 0, (8, 0, 7)))
    assert [r.status for r in got] == [BLKIF_RSP_ERROR] * 3 + [BLKIF_RSP_OKAY]
    assert rig.image() == bytes(SECTORS * 512) and rig.data[8] == bytes(4096)


def test_blkback_19_2_ring_overflow_disconnects_that_device_only(tmp_path):
    rig = Rig(tmp_path)
    (tmp_path / "other").mkdir()
    other = Rig(tmp_path / "other")  # another vbd, another ring
    rig.front.sring.req_prod = rig.front.nr_ents + 1  # claims 33 requests in a 32-slot ring
    result = rig.process()
    assert result.disconnect and rig.kicks == 0
    assert rig.process().disconnect == result.disconnect  # stays disconnected
    other.data[8][:] = b"\x42" * 4096
    assert other.submit(rw(BLKIF_OP_WRITE, 1, 0, (8, 0, 7)))[0].status == BLKIF_RSP_OKAY


def test_blkback_19_2_final_check_rearms_and_catches_a_late_request(rig):
    rig.submit(rw(BLKIF_OP_READ, 1, 0, (8, 0, 7)))
    assert rig.front.sring.req_event == rig.back.back.req_cons + 1
    rig.front.put_request(rw(BLKIF_OP_READ, 2, 0, (8, 0, 7)).pack())
    assert rig.front.push_requests()  # the backend asked to be woken for exactly this one
    assert rig.process().handled == 1


def test_blkback_7_3_streamed_run_notifies_far_less_than_it_answers(rig):
    rig.front.final_check_for_responses()
    total = kicks_to_back = 0
    done = 0
    for i in range(2000):
        while not rig.front.full():
            rig.front.put_request(rw(BLKIF_OP_READ, total, (total % 200) * 8, (8, 0, 7)).pack())
            total += 1
        kicks_to_back += rig.front.push_requests()
        if i % 3 == 0 or not rig.front.free_requests():
            rig.process(budget=48)
        got = rig.front.get_responses(RESPONSE_SIZE)
        done += len(got)
        if not got:
            rig.front.final_check_for_responses()
    assert done > 10000
    assert rig.kicks * 8 < done and kicks_to_back * 8 < total


def test_blkback_persistent_grants_map_each_gref_once(rig):
    rig.data[8][:] = b"\x77" * 4096
    for n in range(50):
        reqs = [rw(BLKIF_OP_WRITE if n % 2 else BLKIF_OP_READ, i, i * 8, (8 + i, 0, 7))
                for i in range(16)]
        assert {r.status for r in rig.submit(*reqs)} == {BLKIF_RSP_OKAY}
    s = rig.back.statistics()
    assert sorted(g for g, _ in rig.maps) == list(GREFS)
    assert all(ro is False for _, ro in rig.maps)  # persistent maps are read-write
    assert s.grants_mapped == 16 and s.persistent_hits == 50 * 16 - 16
    assert s.persistent_grants == 16


def test_blkback_persistent_cache_is_bounded_and_overflow_is_mapped_per_request(tmp_path):
    rig = Rig(tmp_path, max_pgrants=4)
    unmapped = []
    rig.back._unmap = lambda gref, page: unmapped.append(gref)
    for _ in range(3):
        rig.submit(*[rw(BLKIF_OP_READ, i, 0, (8 + i, 0, 7)) for i in range(8)])
    assert rig.back.statistics().persistent_grants == 4
    assert sorted(set(unmapped)) == list(range(12, 16)) and len(unmapped) == 12
    rig.back.close()
    assert sorted(unmapped[12:]) == list(range(8, 12))


def test_blkback_without_persistent_grants_maps_per_request_with_least_access(tmp_path):
    rig = Rig(tmp_path, persistent=False)
    rig.submit(rw(BLKIF_OP_WRITE, 1, 0, (8, 0, 7)), rw(BLKIF_OP_READ, 2, 0, (9, 0, 7)))
    rig.submit(rw(BLKIF_OP_WRITE, 3, 0, (8, 0, 7)))
    assert rig.maps == [(8, True), (9, False), (8, True)]


def test_blkback_19_4_reissued_duplicate_write_is_harmless(rig):
    rig.data[8][:] = b"\x33" * 4096
    req = rw(BLKIF_OP_WRITE, 5, 40, (8, 0, 7))
    first = rig.submit(req)
    # a reconnected frontend re-issues it (same id) on a fresh ring over the same vbd
    rig2 = BlkbackRing(memoryview(rig.page), rig.vbd, map_grant=rig.map_grant)
    rig.front.init()
    rig.back = rig2
    assert rig.submit(req) == first == [BlkifResponse(5, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)]
    assert rig.image()[40 * 512:48 * 512] == b"\x33" * 4096


slots = st.binary(min_size=REQUEST_SIZE, max_size=REQUEST_SIZE)


@given(st.lists(slots, min_size=32, max_size=32), st.integers(0, 2**32 - 1),
       st.booleans())
def test_blkback_19_2_garbage_in_every_slot_never_raises(tmp_path_factory, garbage, req_prod,
                                                         sane_prod):
    rig = Rig(tmp_path_factory.mktemp("g"))
    rig.page[64:64 + 32 * REQUEST_SIZE] = b"".join(garbage)
    idx = memoryview(rig.page).cast("I")
    idx[REQ_PROD] = 32 if sane_prod else req_prod
    result = rig.process()
    if result.disconnect:
        assert req_prod > 32 and not sane_prod
    else:
        want = 32 if sane_prod else req_prod
        assert result.handled == want
        assert len(rig.front.get_responses(RESPONSE_SIZE)) == want
    assert rig.process().handled == 0


# -- the real grant path: the in-process hypervisor and /dev/shm-style memory files -------


class FileFrames:
    """The hypervisor's view of domain memory: real files, mapped like its actor does."""

    def __init__(self, prefix):
        self.prefix, self.maps = prefix, {}

    def __call__(self, domid, pfn, count):
        path = f"{self.prefix}-d{domid}"
        if path not in self.maps:
            self.maps[path] = memory.Mapping(path)
        return self.maps[path].pages(pfn, count)


def _hypercall(hv, caller, op, sub, **args):
    reply, _ = hv.hypercall(caller, hv.table.domains[caller].secret, f"h1/d{caller}",
                            encode_call(op, sub, args))
    res = decode_result(reply)
    assert res.rc >= 0, res
    return res.result


def test_blkback_6_2_data_pages_through_the_hypervisor_grant_map(tmp_path):
    prefix = str(tmp_path / "mem")
    hv = Hypervisor("h1", memory_mib=64, pcpus=2, mem_prefix=prefix, frames=FileFrames(prefix))
    hv.boot_dom0(memory_mib=16)
    dom = _hypercall(hv, 0, Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                     handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                     max_grant_frames=-1, max_maptrack_frames=-1)["domain"]
    _hypercall(hv, 0, Hypercall.domctl, Domctl.max_mem, domain=dom, max_memkb=8 * 1024)
    _hypercall(hv, 0, Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
               nr_extents=2048, extent_order=0, mem_flags=0, domid=dom)
    memory.create(hv.memory_path(dom), 2048)
    guest = memory.Mapping(hv.memory_path(dom))  # the guest's own view of its memory
    table = GrantTable(guest.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
    ring_frame, data_frames = 16, {8: 17, 9: 18}
    for gref, frame in data_frames.items():
        table.grant_access(gref, 0, frame)
    table.grant_access(10, 0, ring_frame)
    front = FrontRing(guest.page(ring_frame), REQUEST_SIZE)
    front.init()

    mappings = []

    def map_grant(gref, readonly):
        flags = GNTMAP.host_map | (GNTMAP.readonly if readonly else 0)
        got = _hypercall(hv, 0, Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                         ops=[{"host_addr": 0, "flags": int(flags), "ref": gref, "dom": dom}])[0]
        if got["status"] != 0:
            raise XenError(Errno.EINVAL, f"gref {gref}: GNTST {got['status']}")
        frame = got["dev_bus_addr"] >> 12
        m = memory.Mapping(got["path"], first_frame=frame, nr_pages=1)
        mappings.append(m)
        return m.page(frame)

    create_image(tmp_path / "disk.img", SECTORS * 512)
    vbd = Vbd(tmp_path / "disk.img", readonly=False)
    back = BlkbackRing(map_grant(10, False), vbd, map_grant=map_grant, feature_persistent=True)
    payload = os.urandom(4096)
    guest.page(17)[:] = payload
    front.put_request(rw(BLKIF_OP_WRITE, 1, 64, (8, 0, 7)).pack())
    front.put_request(rw(BLKIF_OP_READ, 2, 64, (9, 0, 7)).pack())
    front.put_request(rw(BLKIF_OP_READ, 3, 64, (4000, 0, 7)).pack())  # never granted
    front.push_requests()
    assert back.process(lambda: None).handled == 3
    got = [BlkifResponse.unpack(s) for s in front.get_responses(RESPONSE_SIZE)]
    assert [r.status for r in got] == [BLKIF_RSP_OKAY, BLKIF_RSP_OKAY, BLKIF_RSP_ERROR]
    assert bytes(guest.page(18)) == payload
    with open(tmp_path / "disk.img", "rb") as f:
        f.seek(64 * 512)
        assert f.read(4096) == payload
    guest.page(18)[:] = bytes(4096)
    front.put_request(rw(BLKIF_OP_READ, 4, 64, (9, 0, 7)).pack())
    front.push_requests()
    assert back.process(lambda: None).handled == 1
    assert BlkifResponse.unpack(front.get_responses()[0]).status == BLKIF_RSP_OKAY
    assert bytes(guest.page(18)) == payload
    s = back.statistics()
    assert (s.grants_mapped, s.persistent_hits) == (2, 1)  # grefs 8 and 9, each once
    back.close()
    vbd.close()
