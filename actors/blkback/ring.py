"""blkback's data path for one connected vbd: the ring in, the image file, the ring out.

Linux ``drivers/block/xen-blkback/blkback.c`` ``__do_block_io_op`` / ``do_block_io_op``,
without threads or Ray: :meth:`BlkbackRing.process` consumes every published request
(copied out of the ring first, ``RING_COPY_REQUEST``), checks it with
:func:`protocols.blkif.validate_request` before touching the disk, does the I/O, answers in
the ring, pushes with the notify hold-off check, and does ``RING_FINAL_CHECK_FOR_REQUESTS``
before going idle so no request is stranded (xen-reference.md 7.2-7.3, 8.1-8.2, 19.2).

A request that cannot be decoded or fails validation is answered BLKIF_RSP_ERROR (or
EOPNOTSUPP) and only that request fails; a frontend whose ``req_prod`` overflows the ring is
hostile and the device is to be disconnected (``ProcessResult.disconnect``), as blkback
stops servicing it. Nothing is kept per request id between calls, so the duplicates a
reconnecting frontend re-issues (19.4) are just done again.

Injected faults (faults.py, ``disk_fault``): the ring asks the vbd's :class:`DiskFault`
about every valid request before any I/O and answers a failure BLKIF_RSP_ERROR, hands it the
old contents of what a write overwrites while a volatile cache is armed, and holds responses
back for an added latency: they wait, in order, in the ring and are answered when a timer of
:class:`BlkbackRings` says they are due, so the vbd's port is served on and other vbds never
wait for them.

Persistent grants (``feature-persistent``): each data gref is mapped once, read-write, and
kept, up to ``max_pgrants`` (Linux ``xen_blkif_max_pgrants`` = 1056); past that, grants are
mapped for the one request and unmapped after it, as Linux does. Without the feature a
write maps its pages read-only and a read maps them writable, per request.

:class:`BlkbackRings` is the data path of every vbd of the host (Linux ``struct xen_blkif``
and its ring thread): it opens each image when the device is probed (``xen_vbd_create``),
serves a connected ring when Dom0's port for it fires, and tells the control path when a
frontend broke its ring (xenbus.py and actors/xenbus/ decide what follows).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from actors.blkback.faults import DiskFault, DiskFaultSpec
from actors.blkback.vbd import Vbd
from actors.runtime import THREADS, Runtime, Timer
from actors.xenbus.backend_io import Key, RingBrokenFn
from actors.xenbus.grant_map import GrantMaps, Rings
from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
                             BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, REQUEST_SIZE, SECTOR_SIZE,
                             BlkifRequest, BlkifResponse, peek_request, request_bytes,
                             unpack_request, validate_request)
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.page import PAGE_SIZE
from protocols.ring import BackRing, RingOverflow

MAX_PGRANTS = 1056  # Linux xen-blkback xen_blkif_max_pgrants default

MapGrant = Callable[[int, bool], memoryview]  # (gref, readonly) -> the 4 KiB page; XenError if bad
UnmapGrant = Callable[[int, memoryview], None]  # (gref, page) -> None


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessResult:
    """What one :meth:`BlkbackRing.process` did.

    ``more``: requests may remain (the budget ran out before the final check); call again.
    ``disconnect``: non-empty when the frontend broke the ring protocol; stop servicing this
    device and tear it down.
    """

    more: bool
    handled: int
    disconnect: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class BlkbackStatistics:
    """Counters of one vbd ring, named after Linux blkback's sysfs ``statistics/``
    (``rd_req``, ``wr_req``, ``f_req``, ``ds_req``, ``rd_sect``, ``wr_sect``; there is no
    ``oo_req``: requests are served synchronously, so there is no pending pool to run out of).

    ``errors``: requests answered ERROR or EOPNOTSUPP. ``grants_mapped``: calls of
    ``map_grant``. ``persistent_hits``: segments served from the persistent-grant cache.
    """

    rd_req: int
    wr_req: int
    f_req: int
    ds_req: int
    rd_sect: int
    wr_sect: int
    errors: int
    grants_mapped: int
    persistent_hits: int
    persistent_grants: int
    notifies: int


class BlkbackRing:
    """The back end of one vbd's blkif ring over ``ring_page`` (a one-page ring).

    ``map_grant(gref, readonly)`` maps a frontend data page and raises XenError for a bad
    gref; ``unmap_grant(gref, page)`` (optional) releases a mapping. ``fault``: the vbd's
    injected fault, if any (the owner may swap it between calls); ``clock`` times the
    responses a latency holds back.
    """

    def __init__(self, ring_page: memoryview, vbd: Vbd, *, map_grant: MapGrant,
                 unmap_grant: UnmapGrant | None = None, feature_flush_cache: bool = True,
                 feature_discard: bool = True, feature_persistent: bool = False,
                 max_pgrants: int = MAX_PGRANTS, fault: DiskFault | None = None,
                 clock: Callable[[], float] = THREADS.monotonic) -> None:
        self.vbd = vbd
        self.fault = fault
        self._clock = clock
        self._held: collections.deque[tuple[float, bytes]] = collections.deque()  # (due, rsp)
        self.back = BackRing(ring_page, REQUEST_SIZE)
        self.back.init()
        self._map = map_grant
        self._unmap = unmap_grant
        self.feature_flush_cache = feature_flush_cache
        self.feature_discard = feature_discard
        self.feature_persistent = feature_persistent
        self.max_pgrants = max_pgrants
        self._pgrants: dict[int, memoryview] = {}
        self.disconnected = ""
        self.last_error = ""
        self._rd = self._wr = self._f = self._ds = self._rd_sect = self._wr_sect = 0
        self._errors = self._mapped = self._hits = self._notifies = 0

    # -- the loop ----------------------------------------------------------------------

    def process(self, kick: Callable[[], None], budget: int | None = None) -> ProcessResult:
        """Serve published requests until the ring is idle (after the final check) or
        ``budget`` requests were handled. Never raises for anything the frontend does.

        Each response is pushed as soon as it is made, and ``kick()`` (notify the frontend's
        event channel) runs the moment a push asks for it, as Linux's ``make_response`` does:
        a frontend that went idle starts on the first answers while the rest are served."""
        if self.disconnected:
            return ProcessResult(False, 0, self.disconnected)
        back, handle = self.back, self._handle
        handled = 0
        while True:
            try:
                slots = back.get_requests()
            except RingOverflow as e:
                self.disconnected = e.detail
                return ProcessResult(False, handled, self.disconnected)
            if slots:
                for slot in slots:
                    rsp = handle(slot)
                    fault = self.fault
                    if fault is not None and fault.delay:
                        self._held.append((self._clock() + fault.delay, rsp))
                    else:
                        self._respond(rsp, kick)
                handled += len(slots)
                if budget is not None and handled >= budget:
                    return ProcessResult(True, handled)
            elif not back.final_check_for_requests():
                return ProcessResult(False, handled)

    def _respond(self, rsp: bytes, kick: Callable[[], None]) -> None:
        back = self.back
        back.put_response(rsp)
        if back.push_responses():
            self._notifies += 1
            kick()

    def next_due(self) -> float | None:
        """When the first held response is due (``clock`` time); None if none is held."""
        return self._held[0][0] if self._held else None

    def release_due(self, kick: Callable[[], None]) -> None:
        """Answer the held responses that are due, in the order they were held (one never
        overtakes another, as in a disk's queue)."""
        now, held = self._clock(), self._held
        while held and held[0][0] <= now:
            self._respond(held.popleft()[1], kick)

    def fail_held(self, kick: Callable[[], None]) -> None:
        """Answer every held response BLKIF_RSP_ERROR now (the disk lost its power)."""
        while self._held:
            rsp = BlkifResponse.unpack(self._held.popleft()[1])
            self._respond(self._fail(rsp.id, rsp.operation, BLKIF_RSP_ERROR, "power cut"),
                          kick)

    def _handle(self, slot: bytes) -> bytes:
        """One copied-out request slot in, its 16-byte response out."""
        try:
            req = unpack_request(slot)
        except XenError as e:
            op, id_ = peek_request(slot)
            return self._fail(id_, op, BLKIF_RSP_ERROR, e.detail)
        verdict = validate_request(req, self.vbd.sectors, readonly=self.vbd.readonly,
                                   feature_flush_cache=self.feature_flush_cache,
                                   feature_discard=self.feature_discard)
        if not verdict.ok:
            return self._fail(req.id, req.operation, verdict.status, verdict.reason)
        op = req.operation
        fault = self.fault
        if fault is not None:
            nr_sectors = req.nr_sectors if op == BLKIF_OP_DISCARD else \
                request_bytes(req.segments) // SECTOR_SIZE
            errno = fault.check(op, req.sector_number, nr_sectors)
            if errno is not None:
                return self._fail(req.id, op, BLKIF_RSP_ERROR, f"injected {errno.name}")
        try:
            if op == BLKIF_OP_DISCARD:
                self._ds += 1
                self.vbd.discard(req.sector_number, req.nr_sectors)
            else:
                if op == BLKIF_OP_FLUSH_DISKCACHE:  # a preflush, then any data it carries
                    self._f += 1
                    if fault is None or fault.honours_flush():
                        self.vbd.flush()
                    if fault is not None:
                        fault.flushed()
                if req.segments:
                    self._rw(req, op == BLKIF_OP_READ)
        except (XenError, OSError) as e:
            return self._fail(req.id, op, BLKIF_RSP_ERROR, str(e))
        return BlkifResponse(req.id, op, BLKIF_RSP_OKAY).pack()

    def _fail(self, id_: int, op: int, status: int, reason: str) -> bytes:
        self._errors += 1
        self.last_error = reason
        return BlkifResponse(id_, op, status).pack()

    # -- I/O ---------------------------------------------------------------------------

    def _rw(self, req: BlkifRequest, read: bool) -> None:
        """READ into, or WRITE from, the granted pages: one ``preadv``/``pwritev``."""
        pages, transient = self._pages(req, readonly=not read)
        bufs = [page[s.first_sect * SECTOR_SIZE:(s.last_sect + 1) * SECTOR_SIZE]
                for page, s in zip(pages, req.segments)]
        try:
            want = sum(map(len, bufs))
            if read:
                self._rd += 1
                got = self.vbd.readv(req.sector_number, bufs)
                if got != want:
                    raise OSError(f"short read: {got} of {want} bytes")
                self._rd_sect += want // SECTOR_SIZE
            else:
                self._wr += 1
                fault = self.fault
                if fault is not None and fault.spec.volatile:
                    fault.record(req.sector_number, self.vbd.read(req.sector_number, want))
                self.vbd.writev(req.sector_number, bufs)
                self._wr_sect += want // SECTOR_SIZE
        finally:
            for b in bufs:
                b.release()
            self._release(transient)

    def _pages(self, req: BlkifRequest, readonly: bool
               ) -> tuple[list[memoryview], list[tuple[int, memoryview]]]:
        """The page of each segment, and the mappings to undo after the request."""
        pages: list[memoryview] = []
        transient: list[tuple[int, memoryview]] = []
        cache = self._pgrants if self.feature_persistent else None
        try:
            for seg in req.segments:
                gref = seg.gref
                if cache is not None:
                    page = cache.get(gref)
                    if page is not None:
                        self._hits += 1
                        pages.append(page)
                        continue
                    page = self._map_one(gref, False)  # persistent maps are read-write
                    if len(cache) < self.max_pgrants:
                        cache[gref] = page
                    else:
                        transient.append((gref, page))
                else:
                    page = self._map_one(gref, readonly)
                    transient.append((gref, page))
                pages.append(page)
        except BaseException:
            self._release(transient)
            raise
        return pages, transient

    def _map_one(self, gref: int, readonly: bool) -> memoryview:
        page = self._map(gref, readonly)
        self._mapped += 1
        if len(page) != PAGE_SIZE:
            raise XenError(Errno.EINVAL, f"gref {gref} mapped {len(page)} bytes, not a page")
        return page

    def _release(self, mappings: list[tuple[int, memoryview]]) -> None:
        if self._unmap is not None:
            for gref, page in mappings:
                self._unmap(gref, page)

    # -- life-cycle --------------------------------------------------------------------

    def statistics(self) -> BlkbackStatistics:
        return BlkbackStatistics(self._rd, self._wr, self._f, self._ds, self._rd_sect,
                                 self._wr_sect, self._errors, self._mapped, self._hits,
                                 len(self._pgrants), self._notifies)

    def close(self) -> None:
        """Disconnect: unmap every persistent grant and release the ring view; responses
        still held are never given (the frontend re-issues their requests on its next ring).
        The vbd stays open (a reconnect builds a new ring over it)."""
        self._held.clear()
        pgrants, self._pgrants = list(self._pgrants.items()), {}
        self._release(pgrants)
        self.back.release()


@dataclasses.dataclass(eq=False)
class Blkif:
    """One vbd's data path (Linux ``struct xen_blkif``): the image, the ring serving it, the
    fault injected into it (kept across reconnects) and the timer of its held responses."""

    vbd: Vbd
    ring: BlkbackRing | None = None
    port: int | None = None  # Dom0's port of the connection
    conn: int = 0
    closing: bool = False  # the frontend is Closing: no new requests are taken
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # counters of closed rings
    fault: DiskFault | None = None
    timer: Timer | None = None


class BlkbackRings:
    """blkback's data path for the host: the :class:`~actors.xenbus.backend_io.DataPath` of
    the vbds. ``hv`` is Dom0's hypercall client (the kicks); :meth:`upcall` is fed Dom0's
    ports; ``runtime`` gives the timers of held responses."""

    def __init__(self, hv: Any, runtime: Runtime = THREADS) -> None:
        self.hv = hv
        self.runtime = runtime
        self.on_broken: RingBrokenFn | None = None
        self._blkifs: dict[Key, Blkif] = {}
        self._by_port: dict[int, Key] = {}

    def probe(self, key: Key, config: Any) -> dict[str, int]:
        """``xen_vbd_create``: open the image as ``mode`` says; its size."""
        vbd = Vbd(config.params, readonly=config.readonly)
        old = self._blkifs.pop(key, None)
        if old is not None:
            old.vbd.close()
        self._blkifs[key] = Blkif(vbd)
        return {"sectors": vbd.sectors}

    def hotplug(self, key: Key, config: Any) -> None:
        """blkback's hotplug script only checked the image (``probe`` opened it)."""

    def connect(self, key: Key, conn: int, rings: Rings, grants: GrantMaps, port: int,
                params: Any) -> None:
        blkif = self._blkifs[key]
        with blkif.lock:
            ring = BlkbackRing(rings[0][1], blkif.vbd, map_grant=grants.map,
                               unmap_grant=grants.unmap, feature_discard=params.discard,
                               feature_persistent=params.persistent, fault=blkif.fault,
                               clock=self.runtime.monotonic)
            blkif.ring, blkif.port, blkif.conn, blkif.closing = ring, port, conn, False
        self._by_port[port] = key

    def quiesce(self, key: Key) -> None:
        blkif = self._blkifs.get(key)
        if blkif is not None:
            blkif.closing = True

    def disconnect(self, key: Key) -> None:
        """``xen_blkif_disconnect``: the ring stops serving (after a request in progress)."""
        blkif = self._blkifs.get(key)
        if blkif is None:
            return
        with blkif.lock:
            ring, port = blkif.ring, blkif.port
            blkif.ring = blkif.port = None
            self._disarm(blkif)
            if ring is not None:
                blkif.past.update(dataclasses.asdict(ring.statistics()))
                ring.close()
        if port is not None and self._by_port.get(port) == key:
            del self._by_port[port]

    def remove(self, key: Key, config: Any) -> None:
        blkif = self._blkifs.pop(key, None)
        if blkif is not None:
            with blkif.lock:
                self._disarm(blkif)
            blkif.vbd.close()

    def statistics(self, key: Key) -> Mapping[str, int]:
        """The ring's counters (closed rings' included) and the faults injected (replaced
        faults' included; ``fault_unflushed``: writes a power cut would drop now)."""
        blkif = self._blkifs.get(key)
        if blkif is None:
            return {}
        with blkif.lock:
            counts = Counter(blkif.past)
            if blkif.ring is not None:
                counts.update(dataclasses.asdict(blkif.ring.statistics()))
            if blkif.fault is not None:
                counts.update(blkif.fault.counters())
                counts["fault_unflushed"] = blkif.fault.unflushed
        return dict(counts)

    # -- injected faults ---------------------------------------------------------------

    def _blkif(self, key: Key) -> Blkif:
        blkif = self._blkifs.get(key)
        if blkif is None:
            raise XenError(Errno.ENODEV, f"no vbd {key[1]} of domain {key[0]} on this host")
        return blkif

    def set_fault(self, key: Key, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Arm ``spec`` (:class:`DiskFaultSpec`'s keys) on the vbd, in place of any fault it
        had: the disk's power comes back, and unflushed writes stay logged if the new fault
        keeps a volatile cache. Returns the spec as understood. EINVAL, ENODEV."""
        parsed = DiskFaultSpec.parse(spec)
        blkif = self._blkif(key)
        fault = DiskFault(parsed)
        with blkif.lock:
            if blkif.fault is not None:
                fault.adopt(blkif.fault)
                blkif.past.update(blkif.fault.counters())
            blkif.fault = fault
            if blkif.ring is not None:
                blkif.ring.fault = fault
        return parsed.as_dict()

    def clear_fault(self, key: Key) -> dict[str, int]:
        """Take the vbd's fault off (the power comes back; the cache's unflushed writes stay
        where they are): what it injected, {} if it had none. ENODEV."""
        blkif = self._blkif(key)
        with blkif.lock:
            fault, blkif.fault = blkif.fault, None
            if fault is None:
                return {}
            blkif.past.update(fault.counters())
            if blkif.ring is not None:
                blkif.ring.fault = None
        return fault.counters()

    def power_cut(self, key: Key) -> dict[str, int]:
        """Cut the vbd's power: every write since the last flush is rolled back in the image
        (which is then ``fdatasync``-ed), held responses and every later request fail.
        ``rolled_back``: writes undone; ``sectors``: what they covered. EINVAL without a
        volatile cache armed, ENODEV."""
        blkif = self._blkif(key)
        with blkif.lock:
            if blkif.fault is None or not blkif.fault.spec.volatile:
                raise XenError(Errno.EINVAL, "power_cut needs a volatile cache armed first "
                                             "(disk_fault volatile=true)")
            undo = blkif.fault.power_cut()
            for sector, old in undo:
                blkif.vbd.write(sector, old)
            blkif.vbd.flush()
            if blkif.ring is not None:
                blkif.ring.fail_held(self._kicker(blkif.port))
        return {"rolled_back": len(undo),
                "sectors": sum(len(old) for _, old in undo) // SECTOR_SIZE}

    def faults(self) -> list[dict[str, Any]]:
        """Every vbd with a fault armed: its spec, whether it has power, what it injected."""
        out = []
        for (domid, devid), blkif in sorted(self._blkifs.items()):
            with blkif.lock:
                fault = blkif.fault
                if fault is not None:
                    out.append({"domid": domid, "devid": devid, "spec": fault.spec.as_dict(),
                                "powered": fault.powered, "unflushed": fault.unflushed,
                                **fault.counters()})
        return out

    def _kicker(self, port: int | None) -> Callable[[], None]:
        return lambda: self.hv.post(Hypercall.event_channel_op, EvtchnOp.send, port=port)

    def _arm(self, key: Key, blkif: Blkif) -> None:
        """Start the timer of the first held response, if one is held and none runs. Lock
        held."""
        due = blkif.ring.next_due() if blkif.ring is not None else None
        if due is not None and blkif.timer is None:
            blkif.timer = self.runtime.call_later(due - self.runtime.monotonic(),
                                                  self._release, key, blkif.ring)

    def _disarm(self, blkif: Blkif) -> None:
        """Lock held."""
        if blkif.timer is not None:
            blkif.timer.cancel()
            blkif.timer = None

    def _release(self, key: Key, ring: BlkbackRing) -> None:
        """The timer: answer what is due on ``ring`` if it still serves the vbd, re-arm."""
        blkif = self._blkifs.get(key)
        if blkif is None:
            return
        with blkif.lock:
            if blkif.ring is not ring:
                return  # disconnected meanwhile: its timer was cancelled
            blkif.timer = None
            ring.release_due(self._kicker(blkif.port))
            self._arm(key, blkif)

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ports fired: serve each vbd behind one, kick its frontend if asked."""
        for port in ports:
            key = self._by_port.get(port)
            blkif = self._blkifs.get(key) if key is not None else None
            if blkif is None:
                continue
            with blkif.lock:
                ring, conn = blkif.ring, blkif.conn
                if ring is None or blkif.closing or blkif.port != port:
                    continue
                res = ring.process(kick=self._kicker(port))
                self._arm(key, blkif)
            if res.disconnect and self.on_broken is not None:
                self.on_broken(key, conn, res.disconnect)
