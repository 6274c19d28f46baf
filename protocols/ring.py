"""Xen's generic shared ring (``xen/include/public/io/ring.h``), byte-exact over any buffer.

One page (or ``2**order`` pages) shared by a frontend and a backend: a 64-byte header
``{req_prod, req_event, rsp_prod, rsp_event, pvt, __pad[44]}`` and then ``RING_SIZE`` slots,
each big enough for a request or a response; responses overwrite consumed request slots.
Indices are free-running u32: every comparison is a u32 subtraction, and masking happens only
when a slot is addressed (xen-reference.md 7.1-7.3, 19.2).

The peer runs in another process and reads the header while we write it, so each index is
read and written with one aligned 32-bit load or store through a cached ``cast("I")``
memoryview. ``struct.pack_into`` must never touch these fields: it zero-fills before it
writes, and the peer can see the zero.

Barriers. ``wmb``/``rmb`` are free on x86-64 (TSO keeps stores ordered with stores and loads
with loads), and CPython's opaque C calls stop the compiler reordering around them. The full
``mb`` that the push and the final check need (store our index, then load the peer's event
index) is a locked instruction: an uncontended ``threading.Lock`` round trip. Weaker memory
models (aarch64) would need real fences; xenray targets x86-64.

A misbehaving peer (indices that claim more than ``RING_SIZE`` entries) raises
:class:`RingOverflow`; the caller should stop servicing that ring, as blkback does.
"""

from __future__ import annotations

import dataclasses
import threading

from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE

HEADER_SIZE = 64  # req_prod, req_event, rsp_prod, rsp_event, pvt, __pad[44]
_U32 = 0xFFFFFFFF

# Positions of the header fields in the u32 view.
REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT, PVT = range(5)

_fence = threading.Lock()


def _mb() -> None:
    """``xen_mb()``: a locked instruction orders our store before the following load."""
    _fence.acquire()
    _fence.release()


def ring_size(entry_size: int, page_size: int = PAGE_SIZE) -> int:
    """``__RING_SIZE``: slots that fit after the 64-byte header, rounded down to a power of two."""
    if entry_size <= 0 or page_size <= HEADER_SIZE:
        raise ValueError("entry_size must be positive and the page larger than the header")
    n = (page_size - HEADER_SIZE) // entry_size
    if n == 0:
        raise ValueError(f"a {entry_size}-byte entry does not fit in a {page_size}-byte ring")
    return 1 << (n.bit_length() - 1)


def must_notify(old: int, new: int, event: int) -> bool:
    """``RING_PUSH_*_AND_CHECK_NOTIFY``: notify iff ``event`` lies in ``(old, new]`` mod 2^32."""
    return ((new - event) & _U32) < ((new - old) & _U32)


class RingOverflow(XenError):
    """The peer published an index claiming more than ``RING_SIZE`` entries: it is hostile."""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.EIO, detail)


def _byte_view(buf) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        raise ValueError("a ring needs a writable buffer")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _u32_field(i: int) -> property:
    def get(self: SharedRing) -> int:
        return self._idx[i]

    def put(self: SharedRing, value: int) -> None:
        self._idx[i] = value & _U32

    return property(get, put)


class SharedRing:
    """The shared header (``struct X_sring``) of a ring living in ``buf``.

    Each property is one aligned 32-bit load or store. Only the frontend calls :meth:`init`.
    """

    __slots__ = ("_idx", "_header")

    def __init__(self, buf) -> None:
        mv = _byte_view(buf)
        if len(mv) < HEADER_SIZE:
            raise ValueError(f"a ring header needs {HEADER_SIZE} bytes")
        self._header = mv[:HEADER_SIZE]
        self._idx = self._header.cast("I")

    def init(self) -> None:
        """``SHARED_RING_INIT``: ``req_prod = rsp_prod = 0``, events 1, ``pvt`` and pad zeroed."""
        idx = self._idx
        for i in range(PVT, HEADER_SIZE // 4):
            idx[i] = 0
        idx[REQ_PROD] = 0
        idx[RSP_PROD] = 0
        idx[REQ_EVENT] = 1
        idx[RSP_EVENT] = 1

    req_prod = _u32_field(REQ_PROD)
    req_event = _u32_field(REQ_EVENT)
    rsp_prod = _u32_field(RSP_PROD)
    rsp_event = _u32_field(RSP_EVENT)
    pvt = _u32_field(PVT)

    def release(self) -> None:
        """Release the buffer views (lets an ``mmap`` close)."""
        self._idx.release()
        self._header.release()


@dataclasses.dataclass(frozen=True, slots=True)
class RingStatistics:
    """Counters of one end. ``produced``/``consumed``: requests/responses on a FrontRing,
    responses/requests on a BackRing. ``rearms``: final checks that set the event index."""

    produced: int
    consumed: int
    pushes: int
    notifies: int
    rearms: int


class _RingEnd:
    """What both ends share: produce into ``_prod_pvt``, consume from ``_cons``, push with the
    notify check, and the two-step final check before sleeping. Subclasses name the fields."""

    # u32 positions: the index we publish, the event the peer set for it, and the event we
    # set for the peer's index.
    _PROD: int
    _PEER_EVENT: int
    _EVENT: int

    def __init__(self, buf, entry_size: int, page_size: int = PAGE_SIZE) -> None:
        mv = _byte_view(buf)
        if len(mv) < page_size:
            raise ValueError(f"the buffer has {len(mv)} bytes, the ring needs {page_size}")
        self.nr_ents = ring_size(entry_size, page_size)
        self.entry_size = entry_size
        self.sring = SharedRing(mv)
        self._idx = self.sring._idx
        self._mv = mv
        self._mask = self.nr_ents - 1
        self._prod_pvt = 0
        self._cons = 0
        self._produced = self._consumed = self._pushes = self._notifies = self._rearms = 0

    def attach(self, start: int) -> None:
        """``*_RING_ATTACH``: start the private indices at ``start`` (reconnect to a live ring)."""
        self._prod_pvt = self._cons = start & _U32

    def _put(self, data: bytes) -> None:
        if len(data) > self.entry_size:
            raise ValueError(f"{len(data)}-byte entry in a {self.entry_size}-byte slot")
        off = HEADER_SIZE + (self._prod_pvt & self._mask) * self.entry_size
        self._mv[off:off + len(data)] = data
        self._prod_pvt = (self._prod_pvt + 1) & _U32
        self._produced += 1

    def _push(self) -> bool:
        idx = self._idx
        old = idx[self._PROD]
        new = self._prod_pvt
        idx[self._PROD] = new  # wmb is implicit: x86 keeps the slot stores before this one
        _mb()
        self._pushes += 1
        if ((new - idx[self._PEER_EVENT]) & _U32) < ((new - old) & _U32):
            self._notifies += 1
            return True
        return False

    def _take(self, n: int, size: int | None) -> list[bytes]:
        """Copy ``n`` slots from ``_cons`` on out of the ring and advance ``_cons``."""
        esz = self.entry_size
        size = esz if size is None else size
        if not 0 < size <= esz:
            raise ValueError(f"cannot read {size} bytes from a {esz}-byte slot")
        mv, mask, cons = self._mv, self._mask, self._cons
        out = []
        for i in range(cons, cons + n):
            off = HEADER_SIZE + (i & mask) * esz
            out.append(mv[off:off + size].tobytes())
        self._cons = (cons + n) & _U32
        self._consumed += n
        return out

    def _available(self) -> int:
        raise NotImplementedError

    def _final_check(self) -> bool:
        if self._available():
            return True
        self._idx[self._EVENT] = (self._cons + 1) & _U32
        _mb()
        self._rearms += 1
        return bool(self._available())

    def statistics(self) -> RingStatistics:
        return RingStatistics(self._produced, self._consumed, self._pushes, self._notifies,
                              self._rearms)

    def release(self) -> None:
        """Release the buffer views (lets an ``mmap`` close); the ring is unusable after."""
        self.sring.release()
        self._mv.release()


class FrontRing(_RingEnd):
    """``struct X_front_ring``: the frontend's end. It produces requests, consumes responses.

    Only the frontend initialises the shared header (:meth:`init`); it never keeps more than
    ``nr_ents`` requests outstanding (:meth:`put_request` refuses).
    """

    _PROD, _PEER_EVENT, _EVENT = REQ_PROD, REQ_EVENT, RSP_EVENT

    @property
    def req_prod_pvt(self) -> int:
        return self._prod_pvt

    @property
    def rsp_cons(self) -> int:
        return self._cons

    def init(self) -> None:
        """``FRONT_RING_INIT``: ``SHARED_RING_INIT`` and private indices at 0."""
        self.sring.init()
        self.attach(0)

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``."""
        return self.nr_ents - ((self._prod_pvt - self._cons) & _U32)

    def full(self) -> bool:
        """``RING_FULL``."""
        return self.free_requests() == 0

    def put_request(self, data: bytes) -> None:
        """Write a request into slot ``req_prod_pvt`` and advance it (unpublished until push)."""
        if (self._prod_pvt - self._cons) & _U32 >= self.nr_ents:
            raise XenError(Errno.EAGAIN, "ring full: every slot holds an outstanding request")
        self._put(data)

    def push_requests(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish; True if the backend must be kicked."""
        return self._push()

    def has_unconsumed_responses(self) -> int:
        """``RING_HAS_UNCONSUMED_RESPONSES``: ``rsp_prod - rsp_cons``."""
        return (self._idx[RSP_PROD] - self._cons) & _U32

    _available = has_unconsumed_responses

    def _checked_responses(self) -> int:
        n = (self._idx[RSP_PROD] - self._cons) & _U32
        if n > self.nr_ents:  # RING_RESPONSE_PROD_OVERFLOW
            raise RingOverflow(f"backend rsp_prod is {n} ahead of rsp_cons {self._cons}, "
                               f"ring holds {self.nr_ents}")
        return n

    def get_response(self, size: int | None = None) -> bytes:
        """Copy the response at ``rsp_cons`` (``size`` bytes, default the whole slot), advance."""
        if not self._checked_responses():
            raise XenError(Errno.EAGAIN, "no unconsumed response")
        return self._take(1, size)[0]

    def get_responses(self, size: int | None = None) -> list[bytes]:
        """Copy every published response (``rsp_prod`` read once); [] if none."""
        return self._take(self._checked_responses(), size)

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: if idle, ``rsp_event = rsp_cons + 1``, re-check."""
        return self._final_check()


class BackRing(_RingEnd):
    """``struct X_back_ring``: the backend's end. It consumes requests, produces responses.

    It never writes the shared header on init. Requests are copied out before anyone looks at
    them (``RING_COPY_REQUEST``); a frontend whose ``req_prod`` is out of range is hostile.
    """

    _PROD, _PEER_EVENT, _EVENT = RSP_PROD, RSP_EVENT, REQ_EVENT

    @property
    def rsp_prod_pvt(self) -> int:
        return self._prod_pvt

    @property
    def req_cons(self) -> int:
        return self._cons

    def init(self) -> None:
        """``BACK_RING_INIT``: private indices at 0; the shared header is the frontend's."""
        self.attach(0)

    def has_unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS``: min(req_prod - req_cons, slots free for responses)."""
        unconsumed = (self._idx[REQ_PROD] - self._cons) & _U32
        room = self.nr_ents - ((self._cons - self._prod_pvt) & _U32)
        return min(unconsumed, room)

    _available = has_unconsumed_requests

    def _checked_requests(self) -> int:
        req_prod = self._idx[REQ_PROD]
        cons, n = self._cons, self.nr_ents
        unconsumed = (req_prod - cons) & _U32
        # RING_REQUEST_PROD_OVERFLOW; also a req_prod moved back behind req_cons.
        if (req_prod - self._prod_pvt) & _U32 > n or unconsumed > n:
            raise RingOverflow(f"frontend req_prod {req_prod} with req_cons {cons}, "
                               f"rsp_prod_pvt {self._prod_pvt}, ring holds {n}")
        return min(unconsumed, n - ((cons - self._prod_pvt) & _U32))

    def get_request(self, size: int | None = None) -> bytes:
        """``RING_COPY_REQUEST`` of slot ``req_cons`` (``size`` bytes, default the slot), advance."""
        if not self._checked_requests():
            raise XenError(Errno.EAGAIN, "no unconsumed request")
        return self._take(1, size)[0]

    def get_requests(self, size: int | None = None) -> list[bytes]:
        """Copy every consumable request (``req_prod`` read once), as blkback's loop; [] if none."""
        return self._take(self._checked_requests(), size)

    def put_response(self, data: bytes) -> None:
        """Write a response into slot ``rsp_prod_pvt`` (a consumed request's slot), advance."""
        if self._prod_pvt == self._cons:
            raise XenError(Errno.EAGAIN, "no consumed request left to answer")
        self._put(data)

    def push_responses(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish; True if the frontend must be kicked."""
        return self._push()

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: if idle, ``req_event = req_cons + 1``, re-check."""
        return self._final_check()
