"""blkfront (actors.domain.blkfront) against a blkback driven by hand: xen-reference.md 7 (ring),
8 (blkif), 10 (xenbus), 19.2, 19.4, 19.6.

The guest is a real domain of the ``host`` fixture: its memory file, its grant table where the
hypervisor reads it, its event channels and its xenstore connection; the toolstack's vbd
directories are written by Dom0 with libxl's permissions. The frontend gets exactly the
kernel's wiring (``EventChannels`` over the guest's hypercalls, recorded so a test can count
allocations and kicks). The backend is a minimal blkback in the test, driven step by step so
each test chooses when requests are taken and answered: it maps grants through the real
``GNTTABOP_map_grant_ref`` (the hypervisor sets and clears GTF_reading/GTF_writing) and
drives ``protocols.ring.BackRing`` over the very page the frontend granted.
"""

from __future__ import annotations

import os
import threading

import pytest

from actors.domain.blkfront import MAX_REQUEST_BYTES, Blkfront
from actors.memory import Mapping
from actors.xenbus.frontend import EventChannels, PagePool
from actors.xenbus.grant_map import GrantMaps
from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
                             BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, REQUEST_SIZE,
                             RING_SIZE, BlkifRequest, BlkifResponse, unpack_request)
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.gnttab import GTF, GrantRefAllocator, GrantTable
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE
from protocols.ring import BackRing
from protocols.xenbus import XenbusState
from protocols.xenstore.paths import backend_path, frontend_path
from tests.inprocess import domain_endpoint

VDEV = 51712
MEM_PAGES, DISK_SECTORS = 1024, 4096  # 4 MiB of guest memory, a 2 MiB disk
S = XenbusState


class Evtchn(EventChannels):
    """The kernel's event channels (real hypercalls), each call recorded."""

    def __init__(self, hypercall) -> None:
        super().__init__(hypercall)
        self.unbound: list[tuple[int, int]] = []  # (port, remote domid)
        self.kicks: list[int] = []
        self.closed: list[int] = []

    def alloc_unbound(self, remote_dom: int) -> int:
        port = super().alloc_unbound(remote_dom)
        self.unbound.append((port, remote_dom))
        return port

    def notify(self, port: int) -> None:
        self.kicks.append(port)
        super().notify(port)

    def close(self, port: int) -> None:
        self.closed.append(port)
        super().close(port)


class Backend:
    """A minimal blkback: xenbus keys, maps of the ring and data grants, the I/O on ``disk``."""

    def __init__(self, guest: Guest, persistent: bool = True, features: bool = True) -> None:
        self.guest, self.persistent = guest, persistent
        self.grants = GrantMaps(guest.host.xl, guest.domid)
        self.ring: BackRing | None = None
        self.seen: list = []  # every request decoded, in order
        self.mapped: dict[int, memoryview] = {}  # gref -> page, while mapped
        for key, value in (("feature-flush-cache", int(features)),
                           ("feature-discard", int(features)),
                           ("feature-persistent", int(persistent)), ("state", int(S.INIT_WAIT))):
            guest.be_xs.write(f"{guest.be}/{key}", str(value))

    def map(self, gref: int, write: bool) -> memoryview:
        """Map a granted page (once, while mapped), writable if the backend writes it or,
        as Linux's blkback does, if it is a persistent grant."""
        if gref not in self.mapped:
            self.mapped[gref] = self.grants.map(gref, readonly=not (write or self.persistent))
        return self.mapped[gref]

    def unmap(self, gref: int) -> None:
        self.grants.unmap(gref, self.mapped.pop(gref))

    def connect(self) -> None:
        xs, guest = self.guest.be_xs, self.guest
        self.ring_ref = int(xs.read_str(f"{guest.fe}/ring-ref"))
        self.port = int(xs.read_str(f"{guest.fe}/event-channel"))
        self.ring = BackRing(self.map(self.ring_ref, write=True), REQUEST_SIZE)
        self.ring.init()
        for key, value in (("sectors", DISK_SECTORS), ("info", 0), ("sector-size", 512),
                           ("state", int(S.CONNECTED))):
            xs.write(f"{guest.be}/{key}", str(value))

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
        disk = self.guest.disk
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
            self.answer(self.take())
            if not self.ring.final_check_for_requests():
                return

    def die(self) -> None:
        """The backend process is gone: Xen drops its maps; its state node says Closed."""
        for gref in list(self.mapped):
            self.unmap(gref)
        self.guest.be_xs.write(f"{self.guest.be}/state", str(int(S.CLOSED)))


class Guest:
    """A guest with a blkfront for ``VDEV`` on ``host``, wired as its kernel wires it."""

    def __init__(self, host, max_in_flight: int = RING_SIZE) -> None:
        self.host = host
        self.domid, secret = host.create_domain(MEM_PAGES)
        self.fe = frontend_path("vbd", self.domid, VDEV)
        self.be = backend_path("vbd", self.domid, VDEV)
        self.be_xs = host.xs  # Dom0's: the toolstack's and the backend's
        self._write_vbd_directories()
        host.introduce(self.domid, secret)
        guest = host.clients(domain_endpoint(self.domid), self.domid, secret)
        self.memory = Mapping(host.memory_path(self.domid))
        self.gnttab = GrantTable(self.memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        self.evtchn = Evtchn(guest.hv)
        self.disk = bytearray(DISK_SECTORS * 512)
        self.fe_xs = guest.xs
        self.front = Blkfront(domid=self.domid, vdev=VDEV,
                              pages=PagePool(self.memory.page, PFN_FIRST_FREE,
                                             MEM_PAGES - PFN_FIRST_FREE),
                              gnttab=self.gnttab, grefs=GrantRefAllocator(self.gnttab.nr_entries),
                              evtchn_alloc_unbound=self.evtchn.alloc_unbound,
                              notify=self.evtchn.notify, evtchn_close=self.evtchn.close,
                              xs=self.fe_xs, max_in_flight=max_in_flight)
        self.front.probe()

    def _write_vbd_directories(self) -> None:
        """The toolstack's part: both directories, each side owning its own (libxl)."""
        xs, fe, be, domid = self.be_xs, self.fe, self.be, self.domid
        xs.mkdir(be)
        xs.set_perms(be, ["n0", f"r{domid}"])  # before the keys, which inherit it
        for path, value in ((f"{fe}/backend", be), (f"{fe}/backend-id", "0"),
                            (f"{fe}/state", "1"), (f"{be}/frontend", fe), (f"{be}/state", "1")):
            xs.write(path, value)
        for path in (fe, f"{fe}/backend", f"{fe}/backend-id", f"{fe}/state"):
            xs.set_perms(path, [f"n{domid}", "r0"])

    def page(self, pfn: int) -> memoryview:
        return self.memory.page(pfn)

    def fe_key(self, key: str) -> str:
        return self.be_xs.read_str(f"{self.fe}/{key}")

    def port_status(self, port: int) -> dict:
        return self.host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=self.domid,
                            port=port)

    def handshake(self, **backend_args) -> Backend:
        """8.4 through the state nodes: InitWait, Initialised, Connected, Connected."""
        backend = Backend(self, **backend_args)
        self.front.on_backend_changed()
        assert self.fe_key("state") == "3"
        backend.connect()
        self.front.on_backend_changed()
        assert self.fe_key("state") == "4"
        return backend

    def run(self, backend: Backend, reqs, rounds: int = 200) -> None:
        """Serve and take upcalls until every request is done (bounded, no sleeping)."""
        for _ in range(rounds):
            if all(r.done() for r in reqs):
                return
            backend.serve()
            self.front.on_event()
        raise AssertionError(f"{sum(not r.done() for r in reqs)} requests never completed")


@pytest.fixture
def guest(host):
    return Guest(host)


def test_blkfront_8_4_handshake_writes_ring_keys_and_states(guest):
    backend = Backend(guest)
    assert guest.fe_key("state") == "1"
    guest.front.on_backend_state(S.INIT_WAIT)
    assert guest.fe_key("state") == "3" and guest.front.state == S.INITIALISED
    assert guest.fe_key("protocol") == "x86_64-abi"
    assert guest.fe_key("feature-persistent") == "1"
    ring_ref, port = int(guest.fe_key("ring-ref")), int(guest.fe_key("event-channel"))
    assert ring_ref >= 8  # refs 0..7 are reserved (19.3)
    assert guest.evtchn.unbound == [(port, 0)]  # an unbound port for the backend domain
    status = guest.port_status(port)
    assert (status["status"], status["unbound_dom"]) == (EvtchnStat.unbound, 0)
    entry = guest.gnttab.entry(ring_ref)
    assert entry.domid == 0 and entry.flags == GTF.permit_access
    assert entry.frame >= PFN_FIRST_FREE
    header = guest.page(entry.frame)[:16].cast("I").tolist()
    assert header == [0, 1, 0, 1]  # SHARED_RING_INIT: req_prod, req_event, rsp_prod, rsp_event
    guest.front.on_backend_state(S.INIT_WAIT)  # a spurious watch firing does nothing new
    assert int(guest.fe_key("ring-ref")) == ring_ref and len(guest.evtchn.unbound) == 1
    backend.connect()
    guest.front.on_backend_state(S.CONNECTED)
    assert guest.fe_key("state") == "4" and guest.front.info["sectors"] == DISK_SECTORS
    assert guest.front.info["feature-flush-cache"] == guest.front.info["feature-discard"] == 1


def test_blkfront_8_4_ring_keys_and_initialised_are_one_transaction(guest):
    Backend(guest)
    seen = []
    transact = guest.fe_xs.transact
    guest.fe_xs.transact = lambda body: transact(lambda tx: (body(tx), seen.append(
        {k: guest.be_xs.read_str(f"{guest.fe}/{k}", "-") for k in ("ring-ref", "state")}))[0])
    guest.front.on_backend_changed()
    assert seen == [{"ring-ref": "-", "state": "1"}]  # invisible until the commit
    assert guest.fe_key("state") == "3" and guest.fe_key("ring-ref") != "-"


@pytest.mark.parametrize("persistent", [True, False])
def test_blkfront_8_2_read_write_round_trip_multi_segment_and_split(guest, persistent):
    backend = guest.handshake(persistent=persistent)
    data = os.urandom(100 * 1024)  # 25 pages: 11 + 11 + 3 segments
    small = os.urandom(512)
    reqs = [guest.front.submit_write(8, data), guest.front.submit_write(1000, small)]
    guest.run(backend, reqs)
    assert [r.result() for r in reqs] == [None, None]
    assert guest.disk[8 * 512:8 * 512 + len(data)] == data
    assert guest.disk[1000 * 512:1001 * 512] == small
    writes = [r for r in backend.seen if r.operation == BLKIF_OP_WRITE]
    assert [r.nr_segments for r in writes] == [11, 11, 3, 1]
    assert [r.sector_number for r in writes] == [8, 8 + 88, 8 + 176, 1000]
    assert all(r.id < RING_SIZE for r in writes)
    write_grefs = {s.gref for r in writes for s in r.segments}

    reads = [guest.front.submit_read(8, len(data)), guest.front.submit_read(1000, 512)]
    guest.run(backend, reads)
    assert reads[0].result() == data and reads[1].result() == small
    read_grefs = {s.gref for r in backend.seen if r.operation == BLKIF_OP_READ
                  for s in r.segments}
    if persistent:  # the pool of granted pages is reused: no new gref
        assert read_grefs <= write_grefs
        # 25 + 1 pages in flight at once
        assert guest.front.statistics()["persistent_grants"] == 26
    else:  # every data grant was revoked on completion
        assert all(guest.gnttab.entry(g).flags == 0 for g in write_grefs | read_grefs)
    assert guest.front.statistics()["in_flight"] == 0


def test_blkfront_8_2_non_persistent_write_grants_are_read_only(guest):
    backend = guest.handshake(persistent=False)
    req = guest.front.submit_write(0, bytes(4096))
    flags = [guest.gnttab.entry(s.gref).flags for s in
             BlkifRequest.unpack(_slot(backend, 0)).segments]
    assert flags == [GTF.permit_access | GTF.readonly]
    guest.run(backend, [req])
    assert req.result() is None


def _slot(backend: Backend, i: int) -> bytes:
    page = backend.mapped[backend.ring_ref]
    return bytes(page[64 + i * REQUEST_SIZE:64 + (i + 1) * REQUEST_SIZE])


def test_blkfront_8_1_flush_and_discard_reach_backend_with_their_op(guest):
    backend = guest.handshake()
    guest.disk[:] = b"\xaa" * len(guest.disk)
    reqs = [guest.front.submit_flush(), guest.front.submit_discard(16, 24)]
    guest.run(backend, reqs)
    assert [r.result() for r in reqs] == [None, None]
    flush, discard = backend.seen
    assert (flush.operation, flush.nr_segments) == (BLKIF_OP_FLUSH_DISKCACHE, 0)
    assert (discard.operation, discard.sector_number, discard.nr_sectors) == (
        BLKIF_OP_DISCARD, 16, 24)
    assert guest.disk[16 * 512:40 * 512] == bytes(24 * 512)
    assert guest.disk[15 * 512:16 * 512] == b"\xaa" * 512 and guest.disk[40 * 512] == 0xAA


def test_blkfront_8_1_ops_without_backend_feature_fail_eopnotsupp_locally(guest):
    backend = guest.handshake(features=False)
    for req in (guest.front.submit_flush(), guest.front.submit_discard(0, 8)):
        with pytest.raises(XenError) as e:
            req.result(timeout=0)
        assert e.value.errno == Errno.EOPNOTSUPP
    backend.serve()
    assert backend.seen == []


def test_blkfront_8_2_bad_sizes_are_einval(guest):
    guest.handshake()
    front = guest.front
    for call in (lambda: front.submit_read(0, 100), lambda: front.submit_write(0, b""),
                 lambda: front.submit_read(-1, 512)):
        with pytest.raises(XenError) as e:
            call()
        assert e.value.errno == Errno.EINVAL


@pytest.mark.parametrize("depth", [RING_SIZE, 4])
def test_blkfront_7_2_queue_deeper_than_ring_waits_for_shadow_entries(host, depth):
    guest = Guest(host, max_in_flight=depth)
    backend = guest.handshake()
    blocks = [os.urandom(4096) for _ in range(100)]
    reqs = [guest.front.submit_write(8 * i, b) for i, b in enumerate(blocks)]
    stats = guest.front.statistics()
    assert (stats["in_flight"], stats["queued"]) == (depth, 100 - depth)
    assert backend.ring.has_unconsumed_requests() == depth  # never beyond the shadow
    for _ in range(200):
        if all(r.done() for r in reqs):
            break
        reqs_now = backend.take()
        assert len(reqs_now) <= depth
        backend.answer(reqs_now)
        backend.ring.final_check_for_requests()
        guest.front.on_event()
    assert all(r.result(timeout=0) is None for r in reqs)
    assert bytes(guest.disk[:100 * 4096]) == b"".join(blocks)
    assert guest.front.statistics()["issued"] == 100


def test_blkfront_7_3_notify_only_when_backend_rearmed(guest):
    backend = guest.handshake()
    port = int(guest.fe_key("event-channel"))
    first = guest.front.submit_write(0, bytes(512))
    assert guest.evtchn.kicks == [port]  # req_event starts at 1
    second = guest.front.submit_write(1, bytes(512))
    assert guest.evtchn.kicks == [port]  # the backend has not re-armed: no notify
    backend.answer(backend.take())
    assert not backend.ring.final_check_for_requests()  # re-arms req_event = req_cons + 1
    guest.front.on_event()
    assert first.done() and second.done()
    sring = backend.ring.sring
    assert sring.rsp_event == guest.front._ring.rsp_cons + 1  # frontend re-armed too (19.2)
    guest.front.submit_write(2, bytes(512))
    assert guest.evtchn.kicks == [port, port]
    assert guest.front.statistics()["notifies"] == 2


def test_blkfront_7_3_final_check_catches_a_response_racing_the_rearm(guest):
    backend = guest.handshake()
    reqs = [guest.front.submit_write(i, bytes(512)) for i in range(2)]
    got = backend.take()
    backend.answer(got[:1])
    front_ring = guest.front._ring
    real_final = front_ring.final_check_for_responses

    def racing_final():  # the backend answers between the drain and the re-arm
        if got[1:]:
            backend.answer([got.pop()], push=True)
        return real_final()

    front_ring.final_check_for_responses = racing_final
    guest.front.on_event()
    assert all(r.done() for r in reqs)


def test_blkfront_19_4_reconnect_reissues_unanswered_requests_exactly_once(guest):
    old = guest.handshake()
    old_ref, old_port = int(guest.fe_key("ring-ref")), int(guest.fe_key("event-channel"))
    old_pfn = guest.gnttab.frame(old_ref)
    blocks = [bytes([i]) * 4096 for i in range(1, 11)]
    reqs = [guest.front.submit_write(8 * i, b) for i, b in enumerate(blocks)]
    reqs.append(guest.front.submit_flush())
    got = old.take()
    old.answer(got[:3])
    guest.front.on_event()
    assert [r.done() for r in reqs[:3]] == [True] * 3
    old.answer(got[3:6])  # answered on the old ring, but the upcall never comes
    old.die()
    guest.front.on_backend_changed()
    assert guest.fe_key("state") == "1" and guest.front.state == S.INITIALISING
    late = guest.front.submit_read(0, 8192)  # submitted while disconnected: waits
    guest.front.on_event()  # old responses are never read
    assert not any(r.done() for r in reqs[3:]) and not late.done()

    new = Backend(guest)
    guest.front.on_backend_changed()  # InitWait: a new ring
    new_ref, new_port = int(guest.fe_key("ring-ref")), int(guest.fe_key("event-channel"))
    assert new_ref != old_ref and guest.gnttab.frame(new_ref) != old_pfn
    assert guest.gnttab.entry(old_ref).flags == 0  # the old ring grant was revoked
    assert guest.evtchn.closed == [old_port]  # and its port closed (the number may come back)
    assert guest.evtchn.unbound[-1] == (new_port, 0) and guest.fe_key("state") == "3"
    assert guest.port_status(new_port)["status"] == EvtchnStat.unbound
    new.connect()
    guest.front.on_backend_changed()  # Connected: re-issue
    guest.run(new, reqs + [late])
    assert [r.result(timeout=0) for r in reqs] == [None] * 11
    assert late.result(timeout=0) == blocks[0] + blocks[1]
    reissued = [(r.operation, r.sector_number) for r in new.seen]
    assert reissued == [(BLKIF_OP_WRITE, 8 * i) for i in range(3, 10)] + [
        (BLKIF_OP_FLUSH_DISKCACHE, 0), (BLKIF_OP_READ, 0)]
    assert all(r.id < RING_SIZE for r in new.seen)
    stats = guest.front.statistics()
    assert stats["reissued"] == 8 and stats["reconnects"] == 1
    assert stats["completed"] == 3 + 9 and stats["spurious"] == 0  # once each
    assert stats["issued"] == 11 + 9 and stats["in_flight"] == 0
    assert bytes(guest.disk[:10 * 4096]) == b"".join(blocks)


def test_blkfront_19_4_grant_still_mapped_is_not_reused(guest):
    old = guest.handshake(persistent=False)
    old_ref = int(guest.fe_key("ring-ref"))
    old_pfn = guest.gnttab.frame(old_ref)
    guest.be_xs.write(f"{guest.be}/state", str(int(S.CLOSED)))  # gone, but its maps linger
    guest.front.on_backend_changed()
    guest.handshake()
    assert guest.gnttab.entry(old_ref).flags & GTF.reading  # never revoked under a mapping
    assert guest.gnttab.frame(int(guest.fe_key("ring-ref"))) != old_pfn
    assert old.mapped  # (still the old backend's)


def test_blkfront_10_backend_closing_fails_outstanding_requests(guest):
    guest.handshake()
    req = guest.front.submit_write(0, bytes(512))
    guest.be_xs.write(f"{guest.be}/state", str(int(S.CLOSING)))
    guest.front.on_backend_changed()
    assert guest.fe_key("state") == "6"
    with pytest.raises(XenError) as e:
        req.result(timeout=0)
    assert e.value.errno == Errno.EIO
    with pytest.raises(XenError):
        guest.front.submit_read(0, 512)


def test_blkfront_8_2_response_with_unknown_id_is_ignored(guest):
    backend = guest.handshake()
    req = guest.front.submit_write(0, bytes(512))
    (got,) = backend.take()
    backend.ring.put_response(BlkifResponse(got.id + 1, BLKIF_OP_WRITE, 0).pack())
    backend.ring.push_responses()
    guest.front.on_event()
    assert not req.done() and guest.front.statistics()["spurious"] == 1
    assert MAX_REQUEST_BYTES == 11 * 4096


def test_blkfront_8_blocking_helpers_with_backend_and_upcalls_on_other_threads(guest):
    backend = guest.handshake()
    stop = threading.Event()

    def blkback_and_upcalls():
        while not stop.is_set():
            backend.serve()
            guest.front.on_event()
            stop.wait(0.0005)

    t = threading.Thread(target=blkback_and_upcalls, daemon=True)
    t.start()
    try:
        data = os.urandom(64 * 1024)
        guest.front.write(64, data, timeout=10)
        assert guest.front.read(64, len(data), timeout=10) == data
        guest.front.flush(timeout=10)
        guest.front.discard(64, 8, timeout=10)
        assert guest.front.read(64, 4096, timeout=10) == bytes(4096)
    finally:
        stop.set()
        t.join(10)
    assert guest.front.statistics()["in_flight"] == 0


# -- issue 11: suspend -------------------------------------------------------------------------

def test_blkfront_11_suspend_stops_issuing_waits_for_the_answers_and_a_cancel_issues_the_rest(
        guest):
    backend = guest.handshake()
    first = [guest.front.submit_write(8 * i, bytes(4096)) for i in range(3)]
    assert len(backend.take()) == 3  # on the ring, not yet answered
    guest.front.suspend()
    assert not guest.front.wait_quiet(0)  # three in flight
    later = [guest.front.submit_write(100 + 8 * i, bytes([i + 1]) * 4096) for i in range(2)]
    assert not backend.ring.has_unconsumed_requests()  # queued, not issued
    assert guest.front.statistics()["queued"] == 2 and guest.front.statistics()["suspended"]
    backend.answer(backend.seen[-3:])
    guest.front.on_event()  # the upcall path still takes the answers
    assert guest.front.wait_quiet(0) and all(r.done() for r in first)
    assert not backend.ring.has_unconsumed_requests()  # and still issues nothing
    ring_ref = guest.fe_key("ring-ref")
    guest.front.suspend_cancel()  # resumed in place: the same ring, port and grants
    assert backend.ring.has_unconsumed_requests() and guest.fe_key("ring-ref") == ring_ref
    guest.run(backend, later)
    assert guest.disk[100 * 512:101 * 512] == b"\x01" * 512
    stats = guest.front.statistics()
    assert (stats["suspended"], stats["queued"], stats["reconnects"]) == (False, 0, 0)


def test_blkfront_11_wait_quiet_wakes_when_the_last_answer_comes(guest):
    """The wait ends on the answer (the upcall path notifies), not on its timeout."""
    backend = guest.handshake()
    req = guest.front.submit_read(0, 512)
    backend.take()
    guest.front.suspend()
    quiet: list = []
    waiter = threading.Thread(target=lambda: quiet.append(guest.front.wait_quiet(3600)),
                              daemon=True)
    waiter.start()
    backend.answer(backend.seen[-1:])
    guest.front.on_event()
    waiter.join(30)
    assert quiet == [True] and req.done()
