"""netfront: the PV guest's half of a virtual NIC (xen-reference.md 9, 10, 19.2, 19.5).

Pure and unit-testable like :mod:`actors.domain.blkfront`: pages, the grant table, event
channels and xenstore are injected. It follows Linux ``drivers/net/xen-netfront.c`` with one
queue, one event channel for both rings and no offloads (issue 5 contracts):

* Handshake (9, 10): on the backend's InitWait, ``talk_to_netback`` sets up both rings, posts
  the rx buffers and writes ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel``,
  ``request-rx-copy`` = 1, ``feature-rx-notify`` = 1 and ``state`` = Connected in one
  transaction: netfront skips Initialised (``xennet_connect``, then Connected).
* Buffers are granted once per connection ("persistent", a documented deviation from Linux's
  per-packet grants): a pool of tx pages (granted read-only, as Linux's tx grants) whose index
  is the tx request ``id``, and RX_RING_SIZE rx pages, page ``i`` posted in ring slot ``i``
  with ``id`` = ``i``. netback answers each rx request in its own slot (19.5), so the response
  at ring index ``k`` fills page ``k & mask`` whatever its ``id`` says (Linux ignores it too).
* Hostile backends (XSA-391 hardening): an rx response with a negative status or one
  overrunning its page drops that packet (``rx_errors``); a tx response with an id not in
  flight, or a ring whose ``rsp_prod`` runs more than RING_SIZE ahead, marks the device
  *broken* (Linux: "Disabled for further use") until the next connection. Nothing raises.
* Reconnection (19.4, 19.6): a backend that goes Closed (restart) makes the frontend drop
  both rings, the port and every grant and go back to Initialising; on the next InitWait it
  connects afresh. Frames in flight are lost, as Linux's ``xennet_release_tx_bufs``.
* Each time the backend reaches Connected (first connect, after a backend restart, on a
  migrated guest's new host) ``on_reconnect`` runs: Linux ``netdev_notify_peers``, for which
  the stack sends a gratuitous ARP so bridges and peers relearn where the MAC is.

Threads: the stack sends from the vCPU thread, the upcall path calls :meth:`on_event`,
xenwatch calls :meth:`on_backend_changed`. One lock guards the state; xenstore calls,
notifications and the callbacks run outside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.xenbus.frontend import Page, XenbusFrontend
from protocols.errno import Errno, XenError
from protocols.netif import (DEFAULT_MTU, NETIF_RSP_NULL, NETIF_RSP_OKAY, RX_RING_SIZE,
                             RX_SLOT_SIZE, TX_RING_SIZE, TX_SLOT_SIZE, XEN_NETIF_EXTRA_FLAG_MORE,
                             XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN, NetifRxRequest,
                             NetifRxResponse, NetifTxResponse, NetRxFlag, tx_slots, tx_slots_needed)
from protocols.page import PAGE_SIZE
from protocols.ring import FrontRing, RingOverflow
from protocols.xenbus import XenbusState

ETH_HLEN = 14  # the smallest frame anyone accepts: two MACs and the ethertype
RX_MAX_SLOTS = XEN_NETIF_NR_SLOTS_MIN  # fragments of one received packet (xennet_get_responses)
_RX_MASK = RX_RING_SIZE - 1
_MORE_DATA, _EXTRA_INFO = int(NetRxFlag.more_data), int(NetRxFlag.extra_info)


class Netfront(XenbusFrontend):
    """The frontend of vif ``devid`` of domain ``domid`` (``/local/domain/<domid>/device/vif/
    <devid>``). ``tx_pages`` (<= TX_RING_SIZE) is the tx pool: frames in flight at once."""

    devicetype = "vif"
    counters = ("tx_packets", "tx_bytes", "tx_errors", "tx_busy", "tx_dropped", "rx_packets",
                "rx_bytes", "rx_errors", "rx_dropped", "bad_responses", "ring_errors")

    def __init__(self, *, tx_pages: int = TX_RING_SIZE, **xenbus: Any) -> None:
        """``xenbus``: :class:`XenbusFrontend`'s keywords (``domid``, ``devid``, ``pages``...)."""
        if not 0 < tx_pages <= TX_RING_SIZE:
            raise ValueError(f"tx_pages must be 1..{TX_RING_SIZE}")
        super().__init__(**xenbus)
        self.mac: str | None = None
        self.ip: str | None = None
        self.mtu = DEFAULT_MTU
        self.on_receive: Callable[[bytes], None] | None = None  # a whole frame, upcall thread
        self.on_reconnect: Callable[[], None] | None = None  # the backend became Connected
        self._nr_tx = tx_pages
        self._tx: FrontRing | None = None
        self._rx: FrontRing | None = None
        self._owned: list[tuple[int, int]] = []  # (gref, pfn) of this connection's grants
        self._tx_pool: list[Page] = []  # by tx id
        self._rx_pool: list[Page] = []  # by rx slot
        self._tx_free: list[int] = []
        self._tx_inflight = bytearray(tx_pages)
        self._broken = False
        self._backend_connected = False
        self._reset_rx_packet()

    # -- xenbus (reference 9, 10, 19.6): the handshake is XenbusFrontend's ----------------

    def probe(self) -> None:
        """Find the backend, then read the toolstack's ``mac`` and ``mtu`` and the IP
        address it gave the vif (``<be>/ip``)."""
        super().probe()
        read = self._xs.read_str
        self.mac = (read(f"{self.nodename}/mac", "") or "").lower() or None
        self.mtu = int(read(f"{self.nodename}/mtu", "") or DEFAULT_MTU)
        self._read_ip()

    def _read_ip(self) -> None:
        """``<be>/ip`` is a space-separated list (libxl); the first address is ours."""
        words = (self._xs.read_str(f"{self.backend}/ip", "") or "").split()
        self.ip = words[0] if words else None

    def on_backend_state(self, backend: XenbusState) -> None:
        """``netback_changed``: the carrier drops with any backend state but Connected."""
        if backend != XenbusState.CONNECTED:
            self._backend_connected = False
        super().on_backend_state(backend)

    def _talk_to_backend(self) -> None:
        """``talk_to_netback``: ``setup_netfront`` + ``xennet_alloc_rx_buffers``, then one
        transaction with the ring details and Connected (``xennet_connect``)."""
        self._read_ip()
        with self._lock:
            self._disconnect_backend()  # SETUP_RING over an old ring
            self._reap_retired()
            try:
                tx_gref, _, tx_page = self._own_page(readonly=False)
                rx_gref, _, rx_page = self._own_page(readonly=False)
                self._tx_pool = [self._own_page(readonly=True) for _ in range(self._nr_tx)]
                self._rx_pool = [self._own_page(readonly=False) for _ in range(RX_RING_SIZE)]
                port = self._alloc_evtchn()
            except BaseException:
                self._disconnect_backend()  # out of pages or grefs: give back what was taken
                raise
            self._tx, self._rx = FrontRing(tx_page, TX_SLOT_SIZE), FrontRing(rx_page, RX_SLOT_SIZE)
            self._tx.init()  # SHARED_RING_INIT + FRONT_RING_INIT: only the frontend does
            self._rx.init()
            self._tx_free = list(range(self._nr_tx - 1, -1, -1))
            self._broken = False
            self._refill_rx()
        self._publish((("tx-ring-ref", tx_gref), ("rx-ring-ref", rx_gref),
                       ("event-channel", port), ("request-rx-copy", 1),
                       ("feature-rx-notify", 1)), XenbusState.CONNECTED)
        self._kick(True)  # a send on a port not yet bound is dropped (19.1): harmless

    @property
    def max_pages(self) -> int:
        """Both rings, the tx pool and a page per rx slot."""
        return 2 + self._nr_tx + RX_RING_SIZE

    @property
    def carrier(self) -> bool:
        """Frames can flow: the backend is Connected to this end's rings (Linux
        ``netif_carrier_ok``)."""
        return self._backend_connected and self.state == XenbusState.CONNECTED

    def _connect(self) -> None:
        """The backend reached Connected: kick it for what was posted before it mapped the
        rings, and tell the peers (``netdev_notify_peers``). Netfront is Connected already."""
        if self._backend_connected:
            return  # a spurious firing
        self._backend_connected = True
        self._kick(True)
        if self.on_reconnect is not None:
            self.on_reconnect()

    def _own_page(self, readonly: bool) -> Page:
        """A fresh zeroed page granted to the backend for this connection. Lock held."""
        page = self._grant_page(readonly)
        self._owned.append(page[:2])
        return page

    def _disconnect_backend(self, reconnect: bool = False) -> None:
        """``xennet_disconnect_backend``: forget both rings, the port and every buffer (frames
        in flight are lost, reconnecting or not); the grants are ended at the next setup
        (:meth:`_reap_retired`). Lock held."""
        for ring in (self._tx, self._rx):
            if ring is not None:
                ring.release()
        self._tx = self._rx = None
        self.stats["tx_dropped"] += sum(self._tx_inflight)
        self._tx_inflight[:] = bytes(self._nr_tx)
        self._tx_pool, self._rx_pool, self._tx_free = [], [], []
        self._retired += self._owned
        self._owned = []
        self._reset_rx_packet()
        self._free_evtchn()

    # -- the data path ---------------------------------------------------------------------

    def send(self, frame: bytes) -> bool:
        """``xennet_start_xmit``: copy ``frame`` (a whole Ethernet frame) into free tx pages
        and post it. False if not connected, broken, or no tx page is free (the caller drops
        or retries). XenError(EINVAL/E2BIG) for a frame no backend accepts."""
        n = len(frame)
        if n < ETH_HLEN or n > XEN_NETIF_MAX_TX_SIZE:
            raise XenError(Errno.EINVAL if n < ETH_HLEN else Errno.E2BIG,
                           f"a {n}-byte frame: {ETH_HLEN}..{XEN_NETIF_MAX_TX_SIZE} bytes")
        with self._lock:
            ring, free = self._tx, self._tx_free
            need = tx_slots_needed(n)
            if ring is None or self._broken or self.suspended or len(free) < need:
                self.stats["tx_busy"] += 1
                return False
            ids = [free.pop() for _ in range(need)]
            pool, grefs = self._tx_pool, []
            for k, id_ in enumerate(ids):
                gref, _, page = pool[id_]
                chunk = frame[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                page[:len(chunk)] = chunk
                self._tx_inflight[id_] = 1
                grefs.append(gref)
            for req in tx_slots(n, grefs, ids):
                ring.put_request(req.pack())
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += n
            kick = ring.push_requests()
        self._kick(kick)
        return True

    def on_event(self) -> None:
        """The upcall (``xennet_interrupt``): reclaim answered tx slots, take received
        frames, re-post the rx pages; then hand the frames to ``on_receive``."""
        with self._lock:
            tx, rx = self._tx, self._rx
            if tx is None or rx is None or self._broken:
                return
            try:
                self._tx_gc(tx)
                frames = self._rx_poll(rx)
            except RingOverflow:  # RING_RESPONSE_PROD_OVERFLOW: "Illegal number of responses"
                self.stats["ring_errors"] += 1
                self._broken = True
                return
            kick = self._refill_rx()
            receive = self.on_receive
            if receive is None:
                self.stats["rx_dropped"] += len(frames)
        self._kick(kick)
        if receive is not None:
            for frame in frames:
                receive(frame)

    def _tx_gc(self, tx: FrontRing) -> None:
        """``xennet_tx_buf_gc``: free the tx pages of every answered slot. Lock held."""
        inflight, free, nr = self._tx_inflight, self._tx_free, self._nr_tx
        while True:
            for raw in tx.get_responses(NetifTxResponse.SIZE):
                rsp = NetifTxResponse.unpack(raw)
                if rsp.status == NETIF_RSP_NULL:
                    continue  # an extra-info slot's answer
                if rsp.id >= nr or not inflight[rsp.id]:
                    self.stats["bad_responses"] += 1  # "Response has incorrect id"
                    self._broken = True
                    return
                inflight[rsp.id] = 0
                free.append(rsp.id)
                if rsp.status != NETIF_RSP_OKAY:
                    self.stats["tx_errors"] += 1
            if not tx.final_check_for_responses():
                return

    def _rx_poll(self, rx: FrontRing) -> list[bytes]:
        """``xennet_poll``: copy each packet out of the pages of its slots. Lock held."""
        frames: list[bytes] = []
        pool = self._rx_pool
        while True:
            cons = rx.rsp_cons
            for raw in rx.get_responses():
                slot = cons & _RX_MASK
                cons += 1
                if self._rx_extras:  # a netif_extra_info slot: u8 type, u8 flags, ...
                    self._rx_extras = bool(raw[1] & XEN_NETIF_EXTRA_FLAG_MORE)
                    continue
                rsp = NetifRxResponse.unpack(raw)
                self._rx_slots += 1
                if rsp.status < 0 or rsp.offset + rsp.status > PAGE_SIZE:
                    self._rx_bad = True  # "rx->offset: %u, size: %d"
                elif not self._rx_bad:
                    self._rx_frags.append(pool[slot][2][rsp.offset:rsp.offset + rsp.status]
                                          .tobytes())
                if rsp.flags & _EXTRA_INFO and self._rx_slots == 1:
                    self._rx_extras = True
                if rsp.flags & _MORE_DATA:
                    if self._rx_slots >= RX_MAX_SLOTS:
                        self._rx_bad = True  # "Too many slots"
                    continue
                self._end_rx_packet(frames)
            if not rx.final_check_for_responses():
                return frames

    def _end_rx_packet(self, frames: list[bytes]) -> None:
        frame = b"".join(self._rx_frags)
        if self._rx_bad or len(frame) < ETH_HLEN:
            self.stats["rx_errors"] += 1
        else:
            frames.append(frame)
            self.stats["rx_packets"] += 1
            self.stats["rx_bytes"] += len(frame)
        self._reset_rx_packet(extras=self._rx_extras)

    def _reset_rx_packet(self, extras: bool = False) -> None:
        self._rx_frags: list[bytes] = []
        self._rx_slots = 0
        self._rx_bad = False
        self._rx_extras = extras

    def _refill_rx(self) -> bool:
        """``xennet_alloc_rx_buffers``: post every free rx slot ``i`` with page ``i``; True if
        the backend must be notified (it asked with ``feature-rx-notify``). Lock held."""
        rx, pool = self._rx, self._rx_pool
        n = rx.free_requests()
        for _ in range(n):
            slot = rx.req_prod_pvt & _RX_MASK
            rx.put_request(NetifRxRequest(slot, pool[slot][0]).pack())
        return n > 0 and rx.push_requests()

    def _device_statistics(self) -> dict[str, Any]:
        rx = self._rx
        return {"mac": self.mac, "ip": self.ip, "broken": self._broken,
                "tx_in_flight": sum(self._tx_inflight),
                "rx_posted": 0 if rx is None else RX_RING_SIZE - rx.free_requests(),
                "grants": len(self._owned), "retired_grants": len(self._retired)}
