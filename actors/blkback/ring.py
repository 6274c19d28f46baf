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

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from actors.blkback.vbd import Vbd
from actors.xenbus.backend_io import Key, RingBrokenFn
from actors.xenbus.grant_map import GrantMaps, Rings
from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
                             BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, REQUEST_SIZE, SECTOR_SIZE,
                             BlkifRequest, BlkifResponse, peek_request, unpack_request,
                             validate_request)
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
    gref; ``unmap_grant(gref, page)`` (optional) releases a mapping.
    """

    def __init__(self, ring_page: memoryview, vbd: Vbd, *, map_grant: MapGrant,
                 unmap_grant: UnmapGrant | None = None, feature_flush_cache: bool = True,
                 feature_discard: bool = True, feature_persistent: bool = False,
                 max_pgrants: int = MAX_PGRANTS) -> None:
        self.vbd = vbd
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
                    back.put_response(handle(slot))
                    if back.push_responses():
                        self._notifies += 1
                        kick()
                handled += len(slots)
                if budget is not None and handled >= budget:
                    return ProcessResult(True, handled)
            elif not back.final_check_for_requests():
                return ProcessResult(False, handled)

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
        try:
            if op == BLKIF_OP_DISCARD:
                self._ds += 1
                self.vbd.discard(req.sector_number, req.nr_sectors)
            else:
                if op == BLKIF_OP_FLUSH_DISKCACHE:  # a preflush, then any data it carries
                    self._f += 1
                    self.vbd.flush()
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
        """Disconnect: unmap every persistent grant and release the ring view. The vbd stays
        open (a reconnect builds a new ring over it)."""
        pgrants, self._pgrants = list(self._pgrants.items()), {}
        self._release(pgrants)
        self.back.release()


@dataclasses.dataclass(eq=False)
class Blkif:
    """One vbd's data path (Linux ``struct xen_blkif``): the image, the ring serving it."""

    vbd: Vbd
    ring: BlkbackRing | None = None
    port: int | None = None  # Dom0's port of the connection
    conn: int = 0
    closing: bool = False  # the frontend is Closing: no new requests are taken
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # counters of closed rings


class BlkbackRings:
    """blkback's data path for the host: the :class:`~actors.xenbus.backend_io.DataPath` of
    the vbds. ``hv`` is Dom0's hypercall client (the kicks); :meth:`upcall` is fed Dom0's
    ports."""

    def __init__(self, hv: Any) -> None:
        self.hv = hv
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
        ring = BlkbackRing(rings[0][1], blkif.vbd, map_grant=grants.map,
                           unmap_grant=grants.unmap, feature_discard=params.discard,
                           feature_persistent=params.persistent)
        with blkif.lock:
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
            if ring is not None:
                blkif.past.update(dataclasses.asdict(ring.statistics()))
                ring.close()
        if port is not None and self._by_port.get(port) == key:
            del self._by_port[port]

    def remove(self, key: Key, config: Any) -> None:
        blkif = self._blkifs.pop(key, None)
        if blkif is not None:
            blkif.vbd.close()

    def statistics(self, key: Key) -> Mapping[str, int]:
        blkif = self._blkifs.get(key)
        if blkif is None:
            return {}
        with blkif.lock:
            counts = Counter(blkif.past)
            if blkif.ring is not None:
                counts.update(dataclasses.asdict(blkif.ring.statistics()))
        return dict(counts)

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
                res = ring.process(kick=lambda: self.hv.post(
                    Hypercall.event_channel_op, EvtchnOp.send, port=port))
            if res.disconnect and self.on_broken is not None:
                self.on_broken(key, conn, res.disconnect)
