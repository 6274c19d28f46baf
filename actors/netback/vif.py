"""netback's data path for one connected vif: the guest's tx ring to the bridge, the bridge to
its rx ring (Linux ``drivers/net/xen-netback/netback.c`` and ``rx.c``, one queue).

tx (``xenvif_tx_build_gops``): every published slot is copied out of the ring, read as
packets with :func:`protocols.netif.tx_packet_chain`, checked, the frame copied out of the
granted pages, every slot answered (OKAY; NULL for extra-info slots; ERROR for all slots
of a bad packet) and pushed with the notify hold-off, then the good frames go to the bridge.
A bad packet (runt, a fragment longer than what remains of the total, a bad gref) is
dropped and counted (``xenvif_tx_err``); a ring overflow or a chain the frontend cannot
have meant (over FATAL_SKB_SLOTS, running past req_prod, a bad extra, a fragment crossing
its page) disables the vif (``xenvif_fatal_tx_err``): :attr:`NetbackVif.disconnected`.

rx (``xenvif_rx_action``): each frame takes the next posted rx request, is copied to offset 0
of its page and answered in the *same* slot (xen-reference.md 9, 19.5) with status = length;
with no request posted it waits in a bounded queue (RX_QUEUE_MAX, like a full qdisc: drop
and count), and the backend arms ``req_event`` so that posting more requests kicks it. One
event channel serves both rings, so :meth:`NetbackVif.process_tx` also serves that queue.

Grants are persistent (a documented deviation: Linux grant-copies per packet): each gref
is mapped on first use through ``map_grant`` and kept until the connection ends; the
owner unmaps them (``GrantMaps.unmap_all``) after :meth:`NetbackVif.close`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from protocols.errno import Errno, XenError
from protocols.netif import (FATAL_SKB_SLOTS, NETIF_RSP_ERROR, NETIF_RSP_OKAY, RX_SLOT_SIZE,
                             TX_SLOT_SIZE, NetifExtraType, NetifRxRequest, NetifRxResponse,
                             NetRxFlag, TxPacket, tx_packet_chain)
from protocols.page import PAGE_SIZE
from protocols.ring import BackRing, RingOverflow

ETH_HLEN = 14  # a frame shorter than its Ethernet header is a runt
RX_QUEUE_MAX = 256  # frames waiting for rx requests (the contracts' qdisc bound)
MAX_GRANTS = 1024  # grefs kept mapped per direction: a hostile frontend cannot map more

MapGrant = Callable[[int, bool], memoryview]  # (gref, readonly) -> its 4 KiB page; XenError
Kick = Callable[[], None]

_MCAST = frozenset((NetifExtraType.MCAST_ADD, NetifExtraType.MCAST_DEL))
_RX_FLAGS = int(NetRxFlag.data_validated)


class TxCredit:
    """The vif's transmit credit (Linux ``tx_credit_exceeded`` / ``tx_add_credit``), from
    the backend's ``rate`` node ("bytes,usec", libxl from xl.cfg's ``rate=``): the guest may
    send ``credit_bytes`` every ``credit_usec``. A packet over the credit waits, on the ring,
    for the next refill; one larger than a whole credit goes when the credit is full."""

    def __init__(self, credit_bytes: int, credit_usec: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if credit_bytes <= 0 or credit_usec <= 0:
            raise ValueError(f"rate {credit_bytes},{credit_usec}: both must be positive")
        self.credit_bytes, self.period = credit_bytes, credit_usec / 1e6
        self._clock = clock
        self.remaining = credit_bytes
        self.next_credit = clock() + self.period

    @classmethod
    def parse(cls, node: str | None, clock: Callable[[], float] = time.monotonic
              ) -> TxCredit | None:
        """From the ``rate`` node; None when absent, empty or unreadable (no limit)."""
        try:
            nbytes, usec = (int(x) for x in (node or "").split(","))
            return cls(nbytes, usec, clock)
        except ValueError:
            return None

    def take(self, size: int) -> float:
        """Charge ``size`` bytes and return 0.0, or return the seconds until the refill that
        will let them go (nothing charged)."""
        now = self._clock()
        if now >= self.next_credit:
            self.remaining = self.credit_bytes
            self.next_credit = now + self.period
        if size <= self.remaining or self.remaining == self.credit_bytes:
            self.remaining = max(0, self.remaining - size)
            return 0.0
        return self.next_credit - now


class NetbackVif:
    """The back end of one vif's tx and rx rings (each a one-page ring the caller mapped).

    ``deliver(frame)`` hands a good tx frame to the bridge; it is called without the lock
    held. ``kick()`` notifies the frontend's event channel and is called only when a push
    asks for it (``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``). Nothing the frontend writes
    makes a method raise.
    """

    def __init__(self, tx_page: memoryview, rx_page: memoryview, map_grant: MapGrant,
                 deliver: Callable[[bytes], None], *, credit: TxCredit | None = None,
                 reschedule: Callable[[float], None] | None = None) -> None:
        self._tx = BackRing(tx_page, TX_SLOT_SIZE)
        self._tx.init()
        self._rx = BackRing(rx_page, RX_SLOT_SIZE)
        self._rx.init()
        self._map = map_grant
        self._deliver = deliver
        self._tx_grants: dict[int, memoryview] = {}  # mapped read-only
        self._rx_grants: dict[int, memoryview] = {}  # mapped writable
        self._rxq: collections.deque[bytes] = collections.deque()
        self._credit = credit
        self._reschedule = reschedule  # (seconds): run process_tx again then (credit timer)
        self._held: list[bytes] = []  # slots copied out, waiting for transmit credit
        self._lock = threading.Lock()
        self.disconnected = ""  # why the vif stopped: the frontend broke the protocol
        self.last_error = ""
        self._tx_packets = self._tx_bytes = self._tx_errors = 0
        self._rx_packets = self._rx_bytes = self._rx_dropped = self._rx_errors = 0
        self._mapped = self._kicks = self._credit_waits = 0

    # -- tx: guest -> bridge -------------------------------------------------------------

    def process_tx(self, kick: Kick) -> str:
        """Serve the event: fill newly posted rx requests, then consume the tx ring until it
        is idle after the final check, delivering each batch's good frames as it goes.
        Returns "" or the reason the vif must be disconnected."""
        self.flush_rx(kick)
        while True:
            with self._lock:
                if self.disconnected:
                    return self.disconnected
                frames, idle = self._tx_batch(kick)
            for frame in frames:
                self._deliver(frame)
            if idle:
                return self.disconnected

    def _tx_batch(self, kick: Kick) -> tuple[list[bytes], bool]:
        """One pass over the published slots: (good frames, whether the ring went idle)."""
        tx = self._tx
        slots, self._held = self._held, []
        try:
            slots += tx.get_requests()
        except RingOverflow as e:
            return [], self._fatal(e.detail)
        if not slots:
            return [], not tx.final_check_for_requests()
        frames = []
        i, n = 0, len(slots)
        while i < n:
            try:
                pkt = tx_packet_chain(slots, i, fatal_slots=FATAL_SKB_SLOTS)
            except XenError as e:
                return frames, self._fatal(e.detail)
            if self._credit is not None and pkt.status == NETIF_RSP_OKAY and (
                    wait := self._credit.take(pkt.size)) > 0:
                self._held = slots[i:]  # unanswered: the guest's tx ring fills (backpressure)
                self._credit_waits += 1
                if self._reschedule is not None:
                    self._reschedule(wait)
                return frames, True
            i += pkt.nr_slots
            status, frame = self._tx_packet(pkt)
            for rsp in pkt.responses(status):
                tx.put_response(rsp.pack())
            if tx.push_responses():
                self._kick(kick)
            if frame is not None:
                frames.append(frame)
        return frames, False

    def _tx_packet(self, pkt: TxPacket) -> tuple[int, bytes | None]:
        """The status for every slot of ``pkt`` and its frame (None: nothing to deliver)."""
        if pkt.status != NETIF_RSP_OKAY:
            return self._tx_error(pkt.reason)
        if any(extra.type in _MCAST for extra in pkt.extras):
            # A multicast filter update, not a frame (xenvif_mcast_add/del); no filter is
            # kept: feature-multicast-control is not offered, so every group passes.
            return NETIF_RSP_OKAY, None
        if pkt.size < ETH_HLEN:
            return self._tx_error(f"runt frame of {pkt.size} bytes")
        try:
            parts = [self._page(r.gref, True)[r.offset:r.offset + size]
                     for r, size in zip(pkt.requests, pkt.sizes)]
        except (XenError, OSError) as e:
            return self._tx_error(str(e))
        frame = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
        self._tx_packets += 1
        self._tx_bytes += len(frame)
        return NETIF_RSP_OKAY, frame

    def _tx_error(self, reason: str) -> tuple[int, None]:
        self._tx_errors += 1
        self.last_error = reason
        return NETIF_RSP_ERROR, None

    # -- rx: bridge -> guest -------------------------------------------------------------

    def transmit(self, frame: bytes, kick: Kick) -> None:
        """Send ``frame`` to the guest: into the next posted rx request, else queue it.
        Dropped (and counted) when the queue is full, the frame is larger than a page (no
        rx scatter-gather), or the vif is disconnected."""
        with self._lock:
            if self.disconnected or len(frame) > PAGE_SIZE or len(self._rxq) >= RX_QUEUE_MAX:
                self._rx_dropped += 1
                return
            self._rxq.append(frame)
            self._flush_rx(kick)

    def flush_rx(self, kick: Kick) -> None:
        """Serve queued frames with rx requests the frontend has posted since."""
        with self._lock:
            if not self.disconnected:
                self._flush_rx(kick)

    def _flush_rx(self, kick: Kick) -> None:
        q, rx = self._rxq, self._rx
        while q:
            # Out of requests: arm req_event so the frontend's next post kicks us.
            if not rx.has_unconsumed_requests() and not rx.final_check_for_requests():
                return
            try:
                slot = rx.get_request()
            except RingOverflow as e:
                self._fatal(e.detail)
                return
            except XenError:  # req_prod went back to req_cons meanwhile: nothing posted
                return
            rx.put_response(self._rx_one(slot, q.popleft()))
            if rx.push_responses():
                self._kick(kick)

    def _rx_one(self, slot: bytes, frame: bytes) -> bytes:
        """Copy ``frame`` into the page of the rx request in ``slot``; its response."""
        req = NetifRxRequest.unpack(slot)
        try:
            self._page(req.gref, False)[:len(frame)] = frame
        except (XenError, OSError) as e:
            self._rx_errors += 1
            self.last_error = str(e)
            return NetifRxResponse(req.id, 0, 0, NETIF_RSP_ERROR).pack()
        self._rx_packets += 1
        self._rx_bytes += len(frame)
        return NetifRxResponse(req.id, 0, _RX_FLAGS, len(frame)).pack()

    # -- common --------------------------------------------------------------------------

    def _page(self, gref: int, readonly: bool) -> memoryview:
        """The frontend's page ``gref``, mapped on first use and kept (persistent grants)."""
        cache = self._tx_grants if readonly else self._rx_grants
        page = cache.get(gref)
        if page is None:
            if len(cache) >= MAX_GRANTS:
                raise XenError(Errno.ENOSPC, f"gref {gref}: {MAX_GRANTS} grants already mapped")
            page = self._map(gref, readonly)
            self._mapped += 1
            if page.nbytes != PAGE_SIZE:
                raise XenError(Errno.EINVAL, f"gref {gref} mapped {page.nbytes} bytes, not a page")
            cache[gref] = page
        return page

    def _kick(self, kick: Kick) -> None:
        self._kicks += 1
        kick()

    def _fatal(self, reason: str) -> bool:
        """``xenvif_fatal_tx_err``: stop servicing both rings; the owner disconnects."""
        self.disconnected = f"frontend broke the ring protocol: {reason}"
        self._rx_dropped += len(self._rxq)
        self._rxq.clear()
        return True

    def statistics(self) -> dict[str, int]:
        """Counters (tx = guest to bridge, rx = bridge to guest): tx_packets, tx_bytes,
        tx_errors (bad packets answered ERROR), rx_packets, rx_bytes, rx_dropped (queue full,
        oversize, disconnected), rx_errors (bad rx gref), grants_mapped (successful
        map_grant calls), kicks, rx_queued (frames waiting now), credit_waits (times the
        ``rate`` held tx back), tx_held (slots waiting for credit now)."""
        with self._lock:
            return {"tx_packets": self._tx_packets, "tx_bytes": self._tx_bytes,
                    "tx_errors": self._tx_errors, "rx_packets": self._rx_packets,
                    "rx_bytes": self._rx_bytes, "rx_dropped": self._rx_dropped,
                    "rx_errors": self._rx_errors, "grants_mapped": self._mapped,
                    "kicks": self._kicks, "rx_queued": len(self._rxq),
                    "credit_waits": self._credit_waits, "tx_held": len(self._held)}

    def close(self) -> None:
        """Disconnect: drop the queue and the grant cache, release the ring views. The pages
        themselves are unmapped by whoever mapped them."""
        with self._lock:
            self.disconnected = self.disconnected or "closed"
            self._rx_dropped += len(self._rxq)
            self._rxq.clear()
            self._tx_grants.clear()
            self._rx_grants.clear()
            self._tx.release()
            self._rx.release()
