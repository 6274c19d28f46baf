"""blkfront's pure core: xen-reference.md 7 (ring), 8 (blkif), 10 (xenbus), 19.2, 19.4, 19.6.

Blkfront runs against a tiny in-test blkback built on ``protocols.ring.BackRing`` over the
same guest memory, which resolves grefs through the guest's grant table (setting and
clearing GTF_reading/GTF_writing as Xen would while it maps them), and a
``protocols.xenstore.store.Store`` behind an adapter with XsClient's method names.
"""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from actors.domain.blkfront import MAX_REQUEST_BYTES, Blkfront, PagePool
from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
                             BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, REQUEST_SIZE,
                             RING_SIZE, BlkifRequest, BlkifResponse, unpack_request)
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTST, GTF, GrantRefAllocator, GrantTable
from protocols.page import PAGE_SIZE
from protocols.ring import BackRing
from protocols.xenbus import XenbusState
from protocols.xenstore.perms import Conn
from protocols.xenstore.store import Store

DOMID, VDEV = 5, 51712
MEM_PAGES, DISK_SECTORS = 1024, 4096  # 4 MiB of guest memory, a 2 MiB disk
FE = f"/local/domain/{DOMID}/device/vbd/{VDEV}"
BE = f"/local/domain/0/backend/vbd/{DOMID}/{VDEV}"
DOM0, GUEST = Conn(1, 0, privileged=True), Conn(5, DOMID)
S = XenbusState


class Xs:
    """``Store`` with XsClient's method names, for one connection."""

    def __init__(self, store: Store, conn: Conn) -> None:
        self.store, self.conn = store, conn

    def read_str(self, path: str, default: str | None = None, tx_id: int = 0) -> str | None:
        try:
            return self.store.read(self.conn, tx_id, path).decode()
        except XenError as e:
            if e.errno == Errno.ENOENT and default is not None:
                return default
            raise

    def write(self, path: str, value, tx_id: int = 0) -> None:
        self.store.write(self.conn, tx_id, path, value.encode() if isinstance(value, str)
                         else bytes(value))

    def transact(self, body):
        for _ in range(10):
            tx_id = self.store.transaction_start(self.conn)
            try:
                result = body(tx_id)
            except BaseException:
                self.store.transaction_end(self.conn, tx_id, False)
                raise
            try:
                self.store.transaction_end(self.conn, tx_id, True)
                return result
            except XenError as e:
                if e.errno != Errno.EAGAIN:
                    raise
        raise XenError(Errno.EAGAIN, "conflicts")


class Backend:
    """A minimal blkback: maps the ring and data grants, does the I/O on ``disk``."""

    def __init__(self, world: World, persistent: bool = True, features: bool = True) -> None:
        self.w, self.persistent = world, persistent
        self.ring: BackRing | None = None
        self.seen: list = []  # every request decoded, in order
        self.mapped: dict[int, memoryview] = {}  # gref -> page, while pinned
        xs = world.be_xs
        for key, value in (("feature-flush-cache", int(features)),
                           ("feature-discard", int(features)),
                           ("feature-persistent", int(persistent)), ("state", int(S.INIT_WAIT))):
            xs.write(f"{BE}/{key}", str(value))

    def map(self, gref: int, write: bool) -> memoryview:
        """GNTTABOP_map_grant_ref for domain 0: pin the grant, then the granted frame."""
        if gref in self.mapped:
            return self.mapped[gref]
        status = self.w.gnttab.set_status(gref, 0, readonly=not write, check_entry=True,
                                          mapflag=True)
        if status != GNTST.okay:
            raise XenError(Errno.EPERM, f"gref {gref}: {status!r}")
        self.mapped[gref] = self.w.page(self.w.gnttab.frame(gref))
        return self.mapped[gref]

    def unmap(self, gref: int) -> None:
        self.mapped.pop(gref)
        self.w.gnttab.clear_flags(gref, GTF.reading | GTF.writing)

    def connect(self) -> None:
        xs = self.w.be_xs
        self.ring_ref = int(xs.read_str(f"{FE}/ring-ref"))
        self.port = int(xs.read_str(f"{FE}/event-channel"))
        self.ring = BackRing(self.map(self.ring_ref, write=True), REQUEST_SIZE)
        self.ring.init()
        for key, value in (("sectors", DISK_SECTORS), ("info", 0), ("sector-size", 512),
                           ("state", int(S.CONNECTED))):
            xs.write(f"{BE}/{key}", str(value))

    def take(self, limit: int | None = None) -> list:
        """Consume up to ``limit`` requests (copied out of the ring first)."""
        out = []
        while self.ring.has_unconsumed_requests() and (limit is None or len(out) < limit):
            out.append(unpack_request(self.ring.get_request()))
        self.seen += out
        return out

    def answer(self, reqs: list, push: bool = True) -> bool:
        for req in reqs:
            self.ring.put_response(BlkifResponse(req.id, req.operation, self.do(req)).pack())
        return push and self.ring.push_responses()

    def do(self, req) -> int:
        disk = self.w.disk
        if req.operation == BLKIF_OP_DISCARD:
            start = req.sector_number * 512
            disk[start:start + req.nr_sectors * 512] = bytes(req.nr_sectors * 512)
            return BLKIF_RSP_OKAY
        if req.operation == BLKIF_OP_FLUSH_DISKCACHE:
            return BLKIF_RSP_OKAY
        pos = req.sector_number * 512
        try:
            for seg in req.segments:
                page = self.map(seg.gref, write=req.operation == BLKIF_OP_READ)
                a, b = seg.first_sect * 512, (seg.last_sect + 1) * 512
                if req.operation == BLKIF_OP_READ:
                    page[a:b] = disk[pos:pos + b - a]
                else:
                    disk[pos:pos + b - a] = page[a:b]
                pos += b - a
        except XenError:
            return BLKIF_RSP_ERROR
        finally:
            if not self.persistent:
                for seg in req.segments:
                    if seg.gref in self.mapped:
                        self.unmap(seg.gref)
        return BLKIF_RSP_OKAY

    def serve(self) -> None:
        """One pass of blkback's loop: all requests, answered, final check (re-arm)."""
        while True:
            if self.answer(self.take()):
                self.w.backend_kicks += 1
            if not self.ring.final_check_for_requests():
                return

    def die(self) -> None:
        """The backend process is gone: Xen drops its maps; its state node says Closed."""
        for gref in list(self.mapped):
            self.unmap(gref)
        self.w.be_xs.write(f"{BE}/state", str(int(S.CLOSED)))


class World:
    """A guest (memory, grant table, xenstore dirs) with a blkfront for ``VDEV``."""

    def __init__(self, max_in_flight: int = RING_SIZE) -> None:
        self.memory = bytearray(MEM_PAGES * PAGE_SIZE)
        self.mv = memoryview(self.memory)
        self.gnttab = GrantTable(self.mv[4 * PAGE_SIZE:12 * PAGE_SIZE])
        self.disk = bytearray(DISK_SECTORS * 512)
        self.store = Store()
        self.store.introduce_domain(DOM0, 0, DOMID)
        self.be_xs = Xs(self.store, DOM0)
        self.store.mkdir(DOM0, 0, BE)
        self.store.set_perms(DOM0, 0, BE, ["n0", f"r{DOMID}"])  # libxl's, before the keys
        for path, value in ((f"{FE}/backend", BE), (f"{FE}/backend-id", "0"),
                            (f"{FE}/state", "1"), (f"{BE}/frontend", FE), (f"{BE}/state", "1")):
            self.be_xs.write(path, value)
        self.store.set_perms(DOM0, 0, FE, [f"n{DOMID}", "r0"])
        for key in ("backend", "backend-id", "state"):
            self.store.set_perms(DOM0, 0, f"{FE}/{key}", [f"n{DOMID}", "r0"])
        self.fe_xs = Xs(self.store, GUEST)
        self.ports = itertools.count(3)
        self.unbound: list[tuple[int, int]] = []  # (port, remote domid)
        self.kicks: list[int] = []
        self.backend_kicks = 0
        self.front = Blkfront(domid=DOMID, vdev=VDEV,
                              pages=PagePool(self.page, 16, MEM_PAGES - 16),
                              gnttab=self.gnttab, grefs=GrantRefAllocator(self.gnttab.nr_entries),
                              evtchn_alloc_unbound=self._alloc_unbound, notify=self.kicks.append,
                              xs=self.fe_xs, max_in_flight=max_in_flight)
        self.front.probe()

    def page(self, pfn: int) -> memoryview:
        return self.mv[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def _alloc_unbound(self, remote_dom: int) -> int:
        port = next(self.ports)
        self.unbound.append((port, remote_dom))
        return port

    def fe(self, key: str) -> str:
        return self.be_xs.read_str(f"{FE}/{key}")

    def handshake(self, **backend_args) -> Backend:
        """8.4 through the state nodes: InitWait, Initialised, Connected, Connected."""
        backend = Backend(self, **backend_args)
        self.front.on_backend_changed()
        assert self.fe("state") == "3"
        backend.connect()
        self.front.on_backend_changed()
        assert self.fe("state") == "4"
        return backend

    def run(self, backend: Backend, reqs, rounds: int = 200) -> None:
        """Serve and take upcalls until every request is done (bounded, no sleeping)."""
        for _ in range(rounds):
            if all(r.done() for r in reqs):
                return
            backend.serve()
            self.front.on_event()
        raise AssertionError(f"{sum(not r.done() for r in reqs)} requests never completed")


def test_blkfront_8_4_handshake_writes_ring_keys_and_states():
    w = World()
    backend = Backend(w)
    assert w.fe("state") == "1"
    w.front.on_backend_state(S.INIT_WAIT)
    assert w.fe("state") == "3" and w.front.state == S.INITIALISED
    assert w.fe("protocol") == "x86_64-abi" and w.fe("feature-persistent") == "1"
    ring_ref, port = int(w.fe("ring-ref")), int(w.fe("event-channel"))
    assert ring_ref >= 8  # refs 0..7 are reserved (19.3)
    assert w.unbound == [(port, 0)]  # an unbound port for the backend domain
    entry = w.gnttab.entry(ring_ref)
    assert entry.domid == 0 and entry.flags == GTF.permit_access and entry.frame >= 16
    header = w.page(entry.frame)[:16].cast("I").tolist()
    assert header == [0, 1, 0, 1]  # SHARED_RING_INIT: req_prod, req_event, rsp_prod, rsp_event
    w.front.on_backend_state(S.INIT_WAIT)  # a spurious watch firing does nothing new
    assert int(w.fe("ring-ref")) == ring_ref and len(w.unbound) == 1
    backend.connect()
    w.front.on_backend_state(S.CONNECTED)
    assert w.fe("state") == "4" and w.front.info["sectors"] == DISK_SECTORS
    assert w.front.info["feature-flush-cache"] == w.front.info["feature-discard"] == 1


def test_blkfront_8_4_ring_keys_and_initialised_are_one_transaction():
    w = World()
    Backend(w)
    seen = []
    transact = w.fe_xs.transact
    w.fe_xs.transact = lambda body: transact(lambda tx: (body(tx), seen.append(
        {k: w.be_xs.read_str(f"{FE}/{k}", "-") for k in ("ring-ref", "state")}))[0])
    w.front.on_backend_changed()
    assert seen == [{"ring-ref": "-", "state": "1"}]  # invisible until the commit
    assert w.fe("state") == "3" and w.fe("ring-ref") != "-"


@pytest.mark.parametrize("persistent", [True, False])
def test_blkfront_8_2_read_write_round_trip_multi_segment_and_split(persistent):
    w = World()
    backend = w.handshake(persistent=persistent)
    data = os.urandom(100 * 1024)  # 25 pages: 11 + 11 + 3 segments
    small = os.urandom(512)
    reqs = [w.front.submit_write(8, data), w.front.submit_write(1000, small)]
    w.run(backend, reqs)
    assert [r.result() for r in reqs] == [None, None]
    assert w.disk[8 * 512:8 * 512 + len(data)] == data
    assert w.disk[1000 * 512:1001 * 512] == small
    writes = [r for r in backend.seen if r.operation == BLKIF_OP_WRITE]
    assert [r.nr_segments for r in writes] == [11, 11, 3, 1]
    assert [r.sector_number for r in writes] == [8, 8 + 88, 8 + 176, 1000]
    assert all(r.id < RING_SIZE for r in writes)
    write_grefs = {s.gref for r in writes for s in r.segments}

    reads = [w.front.submit_read(8, len(data)), w.front.submit_read(1000, 512)]
    w.run(backend, reads)
    assert reads[0].result() == data and reads[1].result() == small
    read_grefs = {s.gref for r in backend.seen if r.operation == BLKIF_OP_READ
                  for s in r.segments}
    if persistent:  # the pool of granted pages is reused: no new gref
        assert read_grefs <= write_grefs
        assert w.front.statistics()["persistent_grants"] == 26  # 25 + 1 pages in flight at once
    else:  # every data grant was revoked on completion
        assert all(w.gnttab.entry(g).flags == 0 for g in write_grefs | read_grefs)
    assert w.front.statistics()["in_flight"] == 0


def test_blkfront_8_2_non_persistent_write_grants_are_read_only():
    w = World()
    backend = w.handshake(persistent=False)
    req = w.front.submit_write(0, bytes(4096))
    flags = [w.gnttab.entry(s.gref).flags for s in
             BlkifRequest.unpack(_slot(backend, 0)).segments]
    assert flags == [GTF.permit_access | GTF.readonly]
    w.run(backend, [req])
    assert req.result() is None


def _slot(backend: Backend, i: int) -> bytes:
    page = backend.mapped[backend.ring_ref]
    return bytes(page[64 + i * REQUEST_SIZE:64 + (i + 1) * REQUEST_SIZE])


def test_blkfront_8_1_flush_and_discard_reach_backend_with_their_op():
    w = World()
    backend = w.handshake()
    w.disk[:] = b"\xaa" * len(w.disk)
    reqs = [w.front.submit_flush(), w.front.submit_discard(16, 24)]
    w.run(backend, reqs)
    assert [r.result() for r in reqs] == [None, None]
    flush, discard = backend.seen
    assert (flush.operation, flush.nr_segments) == (BLKIF_OP_FLUSH_DISKCACHE, 0)
    assert (discard.operation, discard.sector_number, discard.nr_sectors) == (
        BLKIF_OP_DISCARD, 16, 24)
    assert w.disk[16 * 512:40 * 512] == bytes(24 * 512)
    assert w.disk[15 * 512:16 * 512] == b"\xaa" * 512 and w.disk[40 * 512] == 0xAA


def test_blkfront_8_1_ops_without_backend_feature_fail_eopnotsupp_locally():
    w = World()
    backend = w.handshake(features=False)
    for req in (w.front.submit_flush(), w.front.submit_discard(0, 8)):
        with pytest.raises(XenError) as e:
            req.result(timeout=0)
        assert e.value.errno == Errno.EOPNOTSUPP
    backend.serve()
    assert backend.seen == []


def test_blkfront_8_2_bad_sizes_are_einval():
    w = World()
    w.handshake()
    for call in (lambda: w.front.submit_read(0, 100), lambda: w.front.submit_write(0, b""),
                 lambda: w.front.submit_read(-1, 512)):
        with pytest.raises(XenError) as e:
            call()
        assert e.value.errno == Errno.EINVAL


@pytest.mark.parametrize("depth", [RING_SIZE, 4])
def test_blkfront_7_2_queue_deeper_than_ring_waits_for_shadow_entries(depth):
    w = World(max_in_flight=depth)
    backend = w.handshake()
    blocks = [os.urandom(4096) for _ in range(100)]
    reqs = [w.front.submit_write(8 * i, b) for i, b in enumerate(blocks)]
    stats = w.front.statistics()
    assert (stats["in_flight"], stats["queued"]) == (depth, 100 - depth)
    assert backend.ring.has_unconsumed_requests() == depth  # never beyond the shadow
    for _ in range(200):
        if all(r.done() for r in reqs):
            break
        reqs_now = backend.take()
        assert len(reqs_now) <= depth
        backend.answer(reqs_now)
        backend.ring.final_check_for_requests()
        w.front.on_event()
    assert all(r.result(timeout=0) is None for r in reqs)
    assert bytes(w.disk[:100 * 4096]) == b"".join(blocks)
    assert w.front.statistics()["issued"] == 100


def test_blkfront_7_3_notify_only_when_backend_rearmed():
    w = World()
    backend = w.handshake()
    port = int(w.fe("event-channel"))
    first = w.front.submit_write(0, bytes(512))
    assert w.kicks == [port]  # req_event starts at 1
    second = w.front.submit_write(1, bytes(512))
    assert w.kicks == [port]  # the backend has not re-armed: no notify
    backend.answer(backend.take())
    assert not backend.ring.final_check_for_requests()  # re-arms req_event = req_cons + 1
    w.front.on_event()
    assert first.done() and second.done()
    sring = backend.ring.sring
    assert sring.rsp_event == w.front._ring.rsp_cons + 1  # frontend re-armed too (19.2)
    w.front.submit_write(2, bytes(512))
    assert w.kicks == [port, port]
    assert w.front.statistics()["notifies"] == 2


def test_blkfront_7_3_final_check_catches_a_response_racing_the_rearm():
    w = World()
    backend = w.handshake()
    reqs = [w.front.submit_write(i, bytes(512)) for i in range(2)]
    got = backend.take()
    backend.answer(got[:1])
    front_ring = w.front._ring
    real_final = front_ring.final_check_for_responses

    def racing_final():  # the backend answers between the drain and the re-arm
        if got[1:]:
            backend.answer([got.pop()], push=True)
        return real_final()

    front_ring.final_check_for_responses = racing_final
    w.front.on_event()
    assert all(r.done() for r in reqs)


def test_blkfront_19_4_reconnect_reissues_unanswered_requests_exactly_once():
    w = World()
    old = w.handshake()
    old_ref, old_port = int(w.fe("ring-ref")), int(w.fe("event-channel"))
    old_pfn = w.gnttab.frame(old_ref)
    blocks = [bytes([i]) * 4096 for i in range(1, 11)]
    reqs = [w.front.submit_write(8 * i, b) for i, b in enumerate(blocks)]
    reqs.append(w.front.submit_flush())
    got = old.take()
    old.answer(got[:3])
    w.front.on_event()
    assert [r.done() for r in reqs[:3]] == [True] * 3
    old.answer(got[3:6])  # answered on the old ring, but the upcall never comes
    old.die()
    w.front.on_backend_changed()
    assert w.fe("state") == "1" and w.front.state == S.INITIALISING
    late = w.front.submit_read(0, 8192)  # submitted while disconnected: waits
    w.front.on_event()  # old responses are never read
    assert not any(r.done() for r in reqs[3:]) and not late.done()

    new = Backend(w)
    w.front.on_backend_changed()  # InitWait: a new ring
    new_ref, new_port = int(w.fe("ring-ref")), int(w.fe("event-channel"))
    assert new_ref != old_ref and new_port != old_port and w.gnttab.frame(new_ref) != old_pfn
    assert w.gnttab.entry(old_ref).flags == 0  # the old ring grant was revoked
    assert w.unbound[-1] == (new_port, 0) and w.fe("state") == "3"
    new.connect()
    w.front.on_backend_changed()  # Connected: re-issue
    w.run(new, reqs + [late])
    assert [r.result(timeout=0) for r in reqs] == [None] * 11
    assert late.result(timeout=0) == blocks[0] + blocks[1]
    reissued = [(r.operation, r.sector_number) for r in new.seen]
    assert reissued == [(BLKIF_OP_WRITE, 8 * i) for i in range(3, 10)] + [
        (BLKIF_OP_FLUSH_DISKCACHE, 0), (BLKIF_OP_READ, 0)]
    assert all(r.id < RING_SIZE for r in new.seen)
    stats = w.front.statistics()
    assert stats["reissued"] == 8 and stats["reconnects"] == 1
    assert stats["completed"] == 3 + 9 and stats["spurious"] == 0  # once each
    assert stats["issued"] == 11 + 9 and stats["in_flight"] == 0
    assert bytes(w.disk[:10 * 4096]) == b"".join(blocks)


def test_blkfront_19_4_grant_still_mapped_is_not_reused():
    w = World()
    old = w.handshake(persistent=False)
    old_ref = int(w.fe("ring-ref"))
    old_pfn = w.gnttab.frame(old_ref)
    w.be_xs.write(f"{BE}/state", str(int(S.CLOSED)))  # gone, but its maps linger
    w.front.on_backend_changed()
    w.handshake()
    assert w.gnttab.entry(old_ref).flags & GTF.reading  # never revoked under a mapping
    assert w.gnttab.frame(int(w.fe("ring-ref"))) != old_pfn
    assert old.mapped  # (still the old backend's)


def test_blkfront_10_backend_closing_fails_outstanding_requests():
    w = World()
    w.handshake()
    req = w.front.submit_write(0, bytes(512))
    w.be_xs.write(f"{BE}/state", str(int(S.CLOSING)))
    w.front.on_backend_changed()
    assert w.fe("state") == "6"
    with pytest.raises(XenError) as e:
        req.result(timeout=0)
    assert e.value.errno == Errno.EIO
    with pytest.raises(XenError):
        w.front.submit_read(0, 512)


def test_blkfront_8_2_response_with_unknown_id_is_ignored():
    w = World()
    backend = w.handshake()
    req = w.front.submit_write(0, bytes(512))
    (got,) = backend.take()
    backend.ring.put_response(BlkifResponse(got.id + 1, BLKIF_OP_WRITE, 0).pack())
    backend.ring.push_responses()
    w.front.on_event()
    assert not req.done() and w.front.statistics()["spurious"] == 1
    assert MAX_REQUEST_BYTES == 11 * 4096


def test_blkfront_8_blocking_helpers_with_backend_and_upcalls_on_other_threads():
    w = World()
    backend = w.handshake()
    stop = threading.Event()

    def blkback_and_upcalls():
        while not stop.is_set():
            backend.serve()
            w.front.on_event()
            stop.wait(0.0005)

    t = threading.Thread(target=blkback_and_upcalls, daemon=True)
    t.start()
    try:
        data = os.urandom(64 * 1024)
        w.front.write(64, data, timeout=10)
        assert w.front.read(64, len(data), timeout=10) == data
        w.front.flush(timeout=10)
        w.front.discard(64, 8, timeout=10)
        assert w.front.read(64, 4096, timeout=10) == bytes(4096)
    finally:
        stop.set()
        t.join(10)
    assert w.front.statistics()["in_flight"] == 0
