"""blkfront: the PV guest's half of a virtual block device (xen-reference.md 7, 8, 10, 19.4).

Pure and unit-testable: memory pages, the grant table, event channels and xenstore are
injected, so the kernel wires it to the real ones and tests to fakes. It follows Linux
``drivers/block/xen-blkfront.c``:

* Handshake (8.4): :class:`actors.xenbus.frontend.XenbusFrontend` runs it (the caller feeds
  the backend's ``state``); this module fills in the vbd's part. On InitWait the frontend
  allocates a ring page, runs ``SHARED_RING_INIT`` (only the frontend does), grants it, allocates
  an unbound evtchn and writes ``ring-ref``, ``event-channel``, ``protocol``,
  ``feature-persistent`` and ``state`` = Initialised in one transaction (``talk_to_blkback``);
  on Connected it reads the disk properties and features (``blkfront_connect``).
* The shadow table (``shadow[]``): RING_SIZE entries, the index is the request ``id``. A caller's
  I/O is split into ring requests of at most 11 page-sized segments (44 KiB); requests wait in a
  queue for a free shadow entry, so the ring never holds more than RING_SIZE.
* Data pages: with ``feature-persistent`` both sides agreed on, data pages stay granted and are
  reused (their gref never changes); without, each page is granted per request (read-only for
  writes) and revoked on completion.
* Reconnection (19.4, ``blkif_recover``): when the backend goes away the ring, its port and
  every grant are dropped; each request without a response is re-queued whole and re-issued on
  the new ring, with new grants and new ids, once the backend is Connected again. Responses
  left on the old ring are never read.
* Suspend (issue 11): :meth:`~XenbusFrontend.suspend` stops issuing (requests queue) and the
  kernel waits briefly for those in flight; a cancelled suspend issues what queued, on the same
  ring. A resume in a new domain is a new kernel and a new Blkfront: what was queued or
  unanswered in the old one is gone with its process, and the init program redoes its
  unacknowledged step (Linux keeps the shadow in kernel memory and re-issues it instead).

Threads: the init program submits and waits; the upcall path calls :meth:`on_event`; xenwatch
calls :meth:`on_backend_state`. One lock guards the state; xenstore calls and notifications are
made outside it.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any

from actors.domain.rungate import RunGate, current_gate
from actors.xenbus.frontend import Page, XenbusFrontend
from protocols.blkif import (BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
                             BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
                             BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, RESPONSE_SIZE,
                             RING_SIZE, SECTOR_SIZE, XEN_IO_PROTO_ABI_NATIVE, BlkifRequest,
                             BlkifRequestDiscard, BlkifRequestSegment, BlkifResponse)
from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from protocols.ring import HEADER_SIZE, FrontRing, RingOverflow
from protocols.xenbus import XenbusState

MAX_REQUEST_BYTES = BLKIF_MAX_SEGMENTS_PER_REQUEST * PAGE_SIZE  # 44 KiB per ring request

_COMPLETION = threading.Lock()  # hands a request's completion to its waiters (a Lock each:
# cheaper than a threading.Event per request, which is a Condition and two locks)


class BlkRequest:
    """One caller I/O (a future): done when all its ring requests have answered."""

    __slots__ = ("op", "sector", "nbytes", "data", "_parts", "_status", "_done", "_waiter",
                 "_gate")

    def __init__(self, op: int, sector: int, nbytes: int, data: bytes | None) -> None:
        self.op, self.sector, self.nbytes = op, sector, nbytes
        self.data = bytearray(nbytes) if op == BLKIF_OP_READ else data
        self._parts = 0
        self._status = BLKIF_RSP_OKAY
        self._done = False
        self._waiter: threading.Lock | None = None  # made only if someone waits before done
        self._gate: RunGate | None = None  # a vCPU waiting for it (blocked in the hypervisor)

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (or ``timeout`` seconds); True if done."""
        if self._done:
            return True
        gate = current_gate()
        if gate is not None and gate.port is not None:  # a vCPU: it blocks in Xen meanwhile
            with _COMPLETION:
                self._gate = gate
            gate.wait_event(lambda: self._done, None if timeout is None else timeout)
            return self._done
        with _COMPLETION:
            if self._done:
                return True
            if self._waiter is None:
                self._waiter = threading.Lock()
                self._waiter.acquire()
            waiter = self._waiter
        done = waiter.acquire(timeout=-1 if timeout is None else timeout)
        if done:
            waiter.release()  # and the next waiter, if any
            return True
        return self._done

    def result(self, timeout: float | None = None) -> bytes | None:
        """The data read (None for other ops). XenError: ETIMEDOUT, EOPNOTSUPP or EIO."""
        if not self.wait(timeout):
            raise XenError(Errno.ETIMEDOUT, f"op {self.op} at sector {self.sector} pending")
        if self._status == BLKIF_RSP_EOPNOTSUPP:
            raise XenError(Errno.EOPNOTSUPP, f"backend does not support op {self.op}")
        if self._status != BLKIF_RSP_OKAY:
            raise XenError(Errno.EIO, f"op {self.op} at sector {self.sector}: status "
                                      f"{self._status}")
        return bytes(self.data) if self.op == BLKIF_OP_READ else None

    def _part_done(self, status: int) -> None:
        if status != BLKIF_RSP_OKAY and self._status == BLKIF_RSP_OKAY:
            self._status = status
        self._parts -= 1
        if self._parts == 0:
            with _COMPLETION:
                self._done = True
                waiter, gate = self._waiter, self._gate
            if waiter is not None:
                waiter.release()
            if gate is not None:
                gate.wake()


class _Part:
    """One ring request of a :class:`BlkRequest`: ``count`` bytes (or, for a discard,
    sectors) from ``sector``, at ``offset`` in the caller's data; ``pages`` while issued."""

    __slots__ = ("req", "sector", "offset", "count", "seq", "pages")

    def __init__(self, req: BlkRequest, sector: int, offset: int, count: int, seq: int) -> None:
        self.req, self.sector, self.offset, self.count, self.seq = req, sector, offset, count, seq
        self.pages: list[tuple[int, int, memoryview]] = []  # (gref, pfn, page)


class Blkfront(XenbusFrontend):
    """The frontend of vbd ``vdev`` of domain ``domid`` (``/local/domain/<domid>/device/vbd/
    <vdev>``). ``max_in_flight`` (<= RING_SIZE) bounds the shadow entries used: the queue depth."""

    devicetype = "vbd"
    counters = ("issued", "completed", "reissued", "spurious", "ring_errors")

    def __init__(self, *, vdev: int, max_in_flight: int = RING_SIZE, **xenbus: Any) -> None:
        """``xenbus``: :class:`XenbusFrontend`'s keywords (``domid``, ``pages``, ``xs``...)."""
        if not 0 < max_in_flight <= RING_SIZE:
            raise ValueError(f"max_in_flight must be 1..{RING_SIZE}")
        super().__init__(devid=vdev, **xenbus)
        self.vdev, self.handle = vdev, vdev & 0xFFFF
        self.info: dict[str, int] = {}  # sectors, info, sector-size, feature-* (blkfront_connect)
        self._ring: FrontRing | None = None
        self._ring_page: tuple[int, int] | None = None  # (gref, pfn)
        self._connected = False
        self._persistent = False
        self._free_pages: list[Page] = []  # gref -1: not granted
        self._shadow: list[_Part | None] = [None] * RING_SIZE
        self._max_in_flight = max_in_flight
        self._free_ids = list(range(max_in_flight - 1, -1, -1))
        self._queue: collections.deque[_Part] = collections.deque()
        self._seq = itertools.count()

    # -- xenbus (reference 8.4, 10, 19.6): the handshake is XenbusFrontend's ----------------

    def _talk_to_backend(self) -> None:
        """``talk_to_blkback``: ``setup_blkring`` then one transaction with the ring details
        and Initialised."""
        with self._lock:
            self.stats["reissued"] += self._drop_ring()  # SETUP_RING over an old ring
            gref, pfn, page = self._grant_page(readonly=False)
            ring = FrontRing(page, max(RESPONSE_SIZE, BlkifRequest.SIZE))
            ring.init()  # SHARED_RING_INIT + FRONT_RING_INIT
            self._reap_retired()  # after the new page is taken: the old one is not reused
            port = self._alloc_evtchn()
            self._ring, self._ring_page = ring, (gref, pfn)
        self._publish((("ring-ref", gref), ("event-channel", port),
                       ("protocol", XEN_IO_PROTO_ABI_NATIVE), ("feature-persistent", 1)),
                      XenbusState.INITIALISED)

    def _connect(self) -> None:
        """``blkfront_connect``: read the disk and features, then (re-)issue what waits."""
        be = self._xs.read_str
        info = {key: int(be(f"{self.backend}/{key}", default) or default)
                for key, default in (("sectors", "0"), ("info", "0"),
                                     ("sector-size", str(SECTOR_SIZE)),
                                     ("feature-flush-cache", "0"), ("feature-discard", "0"),
                                     ("feature-persistent", "0"))}
        with self._lock:
            self.info = info
            if not self._connected:
                self._persistent = info["feature-persistent"] == 1
                self._connected = True
            kick = self._issue_queued()
        self._kick(kick)

    def _drop_ring(self) -> int:
        """``blkif_free`` keeping the shadow: requests without a response go back to the head
        of the queue, in issue order, to be re-issued (``blkif_recover``); returns how many.
        Old grants are revoked at the next ring setup (:meth:`_reap_retired`). Lock held."""
        self._connected = False
        inflight = sorted((p for p in self._shadow if p is not None), key=lambda p: p.seq)
        for part in inflight:
            self._release_pages(part)
        self._queue.extendleft(reversed(inflight))
        self._shadow = [None] * RING_SIZE
        self._quiet.notify_all()
        self._free_ids = list(range(self._max_in_flight - 1, -1, -1))
        for gref, pfn, _ in self._free_pages:  # persistent grants end with the connection
            if gref >= 0:
                self._retired.append((gref, pfn))
            else:
                self._pages.free(pfn)
        self._free_pages.clear()
        if self._ring is not None:
            self._ring.release()
            self._retired.append(self._ring_page)
            self._ring = self._ring_page = None
        self._free_evtchn()
        return len(inflight)

    def _disconnect_backend(self, reconnect: bool) -> None:
        """The backend went away: keep what was in flight for the next ring (``reconnect``),
        or fail it all (Closing). Lock held."""
        requeued = self._drop_ring()
        if reconnect:
            self.stats["reissued"] += requeued
            return
        for part in self._queue:
            part.req._part_done(BLKIF_RSP_ERROR)
        self._queue.clear()

    # -- the data path ---------------------------------------------------------------------

    def submit_read(self, sector: int, nbytes: int) -> BlkRequest:
        return self._submit(BlkRequest(BLKIF_OP_READ, sector, nbytes, None))

    def submit_write(self, sector: int, data: bytes) -> BlkRequest:
        return self._submit(BlkRequest(BLKIF_OP_WRITE, sector, len(data), bytes(data)))

    def submit_flush(self) -> BlkRequest:
        return self._submit(BlkRequest(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, None))

    def submit_discard(self, sector: int, nr_sectors: int) -> BlkRequest:
        return self._submit(BlkRequest(BLKIF_OP_DISCARD, sector, nr_sectors, None))

    def read(self, sector: int, nbytes: int, timeout: float | None = None) -> bytes:
        return self.submit_read(sector, nbytes).result(timeout)

    def write(self, sector: int, data: bytes, timeout: float | None = None) -> None:
        self.submit_write(sector, data).result(timeout)

    def flush(self, timeout: float | None = None) -> None:
        self.submit_flush().result(timeout)

    def discard(self, sector: int, nr_sectors: int, timeout: float | None = None) -> None:
        self.submit_discard(sector, nr_sectors).result(timeout)

    def _submit(self, req: BlkRequest) -> BlkRequest:
        if req.sector < 0 or req.nbytes < 0 or (req.op in (BLKIF_OP_READ, BLKIF_OP_WRITE) and (
                req.nbytes == 0 or req.nbytes % SECTOR_SIZE)):
            raise XenError(Errno.EINVAL, f"I/O of {req.nbytes} at sector {req.sector}: "
                                         f"whole {SECTOR_SIZE}-byte sectors only")
        step = MAX_REQUEST_BYTES if req.op in (BLKIF_OP_READ, BLKIF_OP_WRITE) else 0
        with self._lock:
            if self.state == XenbusState.CLOSED:
                raise XenError(Errno.ENODEV, f"vbd {self.vdev} is closed")
            chunks = [(off, min(step, req.nbytes - off)) for off in range(0, req.nbytes, step)
                      ] if step else [(0, req.nbytes)]
            req._parts = len(chunks)
            for off, count in chunks:
                self._queue.append(_Part(req, req.sector + off // SECTOR_SIZE, off, count,
                                         next(self._seq)))
            kick = self._issue_queued()
        self._kick(kick)
        return req

    def _issue_queued(self) -> bool:
        """Put queued parts on the ring while shadow entries are free; push. Lock held.
        Returns True if the backend must be notified."""
        ring = self._ring
        if ring is None or not self._connected or self.suspended:
            return False
        put = 0
        while self._queue and self._free_ids:
            part = self._queue.popleft()
            slot = self._request_slot(part)
            if slot is None:
                continue
            ring.put_request(slot)
            put += 1
        self.stats["issued"] += put
        return put > 0 and ring.push_requests()

    def _request_slot(self, part: _Part) -> bytes | None:
        """Take a shadow id and build the ring request (``blkif_queue_rw_req``); a request
        for a feature the backend lacks completes at once with EOPNOTSUPP."""
        op = part.req.op
        feature = {BLKIF_OP_FLUSH_DISKCACHE: "feature-flush-cache",
                   BLKIF_OP_DISCARD: "feature-discard"}.get(op)
        if feature is not None and not self.info.get(feature):
            part.req._part_done(BLKIF_RSP_EOPNOTSUPP)
            return None
        id_ = self._free_ids.pop()
        self._shadow[id_] = part
        if op == BLKIF_OP_DISCARD:
            return BlkifRequestDiscard(0, self.handle, id_, part.sector, part.count).pack()
        segs = []
        data = part.req.data
        for off in range(0, part.count, PAGE_SIZE):
            n = min(PAGE_SIZE, part.count - off)
            gref, pfn, page = self._data_page(readonly=op == BLKIF_OP_WRITE)
            if op == BLKIF_OP_WRITE:
                page[:n] = data[part.offset + off:part.offset + off + n]
            part.pages.append((gref, pfn, page))
            segs.append(BlkifRequestSegment(gref, 0, n // SECTOR_SIZE - 1))
        return BlkifRequest(op, len(segs), self.handle, id_, part.sector, tuple(segs)).pack()

    def _data_page(self, readonly: bool) -> tuple[int, int, memoryview]:
        """A granted data page: a persistent one from the pool, or a fresh grant."""
        if self._free_pages:
            gref, pfn, page = self._free_pages.pop()
        else:
            pfn = self._pages.alloc()
            gref, page = -1, self._pages.page(pfn)
        if gref < 0:
            gref = self._grefs.alloc()
            self._gnttab.grant_access(gref, self.backend_id, pfn,
                                      readonly=readonly and not self._persistent)
        return gref, pfn, page

    def _release_pages(self, part: _Part) -> None:
        """Pages back to the pool; non-persistent grants are revoked (deferred if mapped)."""
        for gref, pfn, page in part.pages:
            if self._persistent and self._connected:
                self._free_pages.append((gref, pfn, page))
            elif self._end_access(gref):
                self._free_pages.append((-1, pfn, page))
            else:
                self._retired.append((gref, pfn))
        part.pages = []

    def on_event(self) -> None:
        """The upcall (``blkif_interrupt``): consume responses until the final check finds
        none, complete their requests, then issue what was waiting for a shadow entry."""
        with self._lock:
            ring = self._ring
            if ring is None:
                return
            try:
                while True:
                    for raw in ring.get_responses(RESPONSE_SIZE):
                        self._complete(BlkifResponse.unpack(raw))
                    if not ring.final_check_for_responses():
                        break
            except RingOverflow:
                self.stats["ring_errors"] += 1  # a hostile backend: wait for a reconnect
                return
            kick = self._issue_queued()
            self._quiet.notify_all()
        self._kick(kick)

    def _complete(self, rsp: BlkifResponse) -> None:
        part = self._shadow[rsp.id] if rsp.id < RING_SIZE else None
        if part is None or rsp.operation != part.req.op:
            self.stats["spurious"] += 1  # Linux: "response has incorrect id"
            return
        self._shadow[rsp.id] = None
        self._free_ids.append(rsp.id)
        req = part.req
        if req.op == BLKIF_OP_READ and rsp.status == BLKIF_RSP_OKAY:
            for i, (_, _, page) in enumerate(part.pages):
                off = part.offset + i * PAGE_SIZE
                n = min(PAGE_SIZE, part.offset + part.count - off)
                req.data[off:off + n] = page[:n]
        self._release_pages(part)
        self.stats["completed"] += 1
        req._part_done(rsp.status)

    # -- fault injection ---------------------------------------------------------------

    def misbehave(self, *, garbage: bytes = b"", overflow: int = 0) -> int:
        """Break the ring protocol on purpose, as a buggy or hostile driver would: for fault
        injection only (the ``blkhostile`` init; reference 19.2). With ``garbage``, write it
        over the request slots (as much as fits) and publish a whole ring of those requests;
        with ``overflow``, publish ``overflow`` rings' worth of requests more than the backend
        has answered, which no correct frontend can have in flight. Then notify the backend.

        This driver's own accounting is left as it was: the backend is expected to answer the
        garbage with errors or to disconnect the ring, and what follows is the usual
        reconnect or Closed. Only while connected (ENOTCONN); returns the ``req_prod``
        published."""
        with self._lock:
            ring, port = self._ring, self.evtchn
            if ring is None or port is None or not self._connected:
                raise XenError(Errno.ENOTCONN, f"vbd {self.vdev} is not connected")
            sring = ring.sring
            if garbage:
                slots = self._pages.page(self._ring_page[1])[HEADER_SIZE:]
                n = min(len(garbage), len(slots))
                slots[:n] = garbage[:n]
                sring.req_prod = sring.req_prod + RING_SIZE
            else:
                sring.req_prod = sring.rsp_prod + overflow * RING_SIZE
            req_prod = sring.req_prod
        self._notify(port)
        return req_prod

    def _in_flight(self) -> int:
        return sum(p is not None for p in self._shadow)

    @property
    def max_pages(self) -> int:
        """The ring, and a full request's data pages per shadow entry."""
        return 1 + self._max_in_flight * BLKIF_MAX_SEGMENTS_PER_REQUEST

    def _thaw(self) -> bool:
        return self._issue_queued()

    def _device_statistics(self) -> dict[str, Any]:
        return {"in_flight": self._in_flight(), "suspended": self.suspended,
                "queued": len(self._queue), "persistent": self._persistent,
                "persistent_grants": sum(g >= 0 for g, _, _ in self._free_pages)}
