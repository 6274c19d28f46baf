"""netback's data path: for each connected vif, the guest's tx ring to the bridge, the bridge to
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
xl.cfg's ``rate=`` holds tx packets on the ring until the credit (credit.py) refills.

Grants are persistent (a documented deviation: Linux grant-copies per packet): each gref
is mapped on first use through ``map_grant`` and kept until the connection ends; the
owner unmaps them (``GrantMaps.unmap_all``) after :meth:`NetbackVif.close`.

:class:`NetbackVifs` is the data path of every vif of the host (Linux ``struct xenvif``):
the vif's port on its bridge (``vif-bridge``), the rings served when Dom0's port fires or
the credit timer runs, frames from the bridge into the guest, and a word to the control
path when a frontend broke its rings. Timers go through the injected runtime. Frames a vif
sends reach the bridge while no lock of ours is held (the vif calls ``deliver`` outside its
own), so two vifs forwarding to each other never wait on each other.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from actors.hostnet.uplink import HostBridges
from actors.netback.credit import TxCredit
from actors.runtime import THREADS, Runtime, Timer
from actors.xenbus.backend_io import Key, RingBrokenFn
from actors.xenbus.grant_map import GrantMaps, Rings
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall
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


@dataclasses.dataclass(eq=False)
class Xenvif:
    """One vif's data path (Linux ``struct xenvif``): its bridge port, the rings serving it."""

    bridge: str
    name: str  # the bridge port: vif<domid>.<devid>
    vif: NetbackVif | None = None
    kick: Kick | None = None
    port: int | None = None  # Dom0's port of the connection
    conn: int = 0
    credit_timer: Timer | None = None  # pending while a rate holds tx back
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # closed rings, carrier drops


class NetbackVifs:
    """netback's data path for the host: the :class:`~actors.xenbus.backend_io.DataPath` of
    the vifs, on ``bridges``. ``hv`` is Dom0's hypercall client (the kicks); :meth:`upcall`
    is fed Dom0's ports; ``runtime`` runs the credit timers and reads the clock."""

    def __init__(self, hv: Any, bridges: HostBridges, runtime: Runtime = THREADS) -> None:
        self.hv, self.bridges, self.runtime = hv, bridges, runtime
        self.on_broken: RingBrokenFn | None = None
        self._vifs: dict[Key, Xenvif] = {}
        self._by_port: dict[int, Key] = {}

    def probe(self, key: Key, config: Any) -> dict[str, Any]:
        """``netback_probe``: nothing to open; the vif is known from now on."""
        if key not in self._vifs:
            self._vifs[key] = Xenvif(config.bridge, config.name)
        return {}

    def hotplug(self, key: Key, config: Any) -> None:
        """``vif-bridge online``: the vif joins its bridge (a port of that name left by an
        earlier device goes)."""
        bridge = self.bridges.bridge(config.bridge)
        bridge.remove_port(config.name)
        bridge.add_port(config.name, functools.partial(self._to_guest, key))

    def connect(self, key: Key, conn: int, rings: Rings, grants: GrantMaps, port: int,
                params: Any) -> None:
        xv = self._vifs[key]
        vif = NetbackVif(rings[0][1], rings[1][1], grants.map,
                         functools.partial(self.bridges.bridge(xv.bridge).receive, xv.name),
                         credit=TxCredit.parse(params.rate, self.runtime.monotonic),
                         reschedule=functools.partial(self._credit_timer, key))
        with xv.lock:
            xv.vif, xv.port, xv.conn = vif, port, conn
            xv.kick = functools.partial(self.hv.post, Hypercall.event_channel_op,
                                        EvtchnOp.send, port=port)
        self._by_port[port] = key

    def quiesce(self, key: Key) -> None:
        """netback disconnects on Closing instead."""

    def disconnect(self, key: Key) -> None:
        """``xenvif_disconnect_data``: the vif stops serving (its lock is not held while it
        closes: the vif calls the credit timer under its own)."""
        xv = self._vifs.get(key)
        if xv is None:
            return
        with xv.lock:
            vif, port, timer = xv.vif, xv.port, xv.credit_timer
            xv.vif = xv.kick = xv.port = xv.credit_timer = None
        if timer is not None:
            timer.cancel()
        if vif is not None:
            vif.close()
            with xv.lock:
                xv.past.update(vif.statistics())
        if port is not None and self._by_port.get(port) == key:
            del self._by_port[port]

    def remove(self, key: Key, config: Any) -> None:
        """``vif-bridge offline``: off its bridge."""
        self._vifs.pop(key, None)
        bridge = self.bridges.bridges.get(config.bridge)
        if bridge is not None:
            bridge.remove_port(config.name)

    def statistics(self, key: Key) -> Mapping[str, int]:
        xv = self._vifs.get(key)
        if xv is None:
            return {}
        with xv.lock:
            counts, vif = Counter(xv.past), xv.vif
        if vif is not None:
            counts.update(vif.statistics())
        return dict(counts)

    # -- serving -------------------------------------------------------------------------

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ports fired: each vif behind one fills newly posted rx buffers and takes
        its tx requests (the frames go to its bridge as they are read)."""
        for port in ports:
            key = self._by_port.get(port)
            xv = self._vifs.get(key) if key is not None else None
            if xv is not None and xv.port == port:
                self._serve(key, xv)

    def _serve(self, key: Key, xv: Xenvif) -> None:
        with xv.lock:
            vif, kick, conn = xv.vif, xv.kick, xv.conn
        if vif is not None:
            reason = vif.process_tx(kick)
            if reason:
                self._broken(key, xv, vif, conn, reason)

    def _credit_timer(self, key: Key, seconds: float) -> None:
        """``credit_timeout``: serve the vif again when its transmit credit refills (one
        timer at a time per vif)."""
        xv = self._vifs.get(key)
        if xv is None:
            return
        with xv.lock:
            if xv.credit_timer is None and xv.vif is not None:
                xv.credit_timer = self.runtime.call_later(seconds, self._credit_due, key,
                                                          xv.vif)

    def _credit_due(self, key: Key, vif: NetbackVif) -> None:
        xv = self._vifs.get(key)
        if xv is None:
            return
        with xv.lock:
            if xv.vif is not vif:
                return
            xv.credit_timer = None
        self._serve(key, xv)

    def _to_guest(self, key: Key, frame: bytes) -> None:
        """The bridge sends ``frame`` out of the vif's port: into the guest's rx ring."""
        xv = self._vifs.get(key)
        if xv is None:
            return
        with xv.lock:
            vif, kick, conn = xv.vif, xv.kick, xv.conn
            if vif is None:
                xv.past["carrier_dropped"] += 1
                return
        vif.transmit(frame, kick)
        if vif.disconnected:  # the frontend broke its rx ring
            self._broken(key, xv, vif, conn, vif.disconnected)

    def _broken(self, key: Key, xv: Xenvif, vif: NetbackVif, conn: int, reason: str) -> None:
        """``xenvif_fatal_tx_err``: tell the control path, unless ``vif`` was disconnected
        meanwhile."""
        if xv.vif is vif and self.on_broken is not None:
            self.on_broken(key, conn, reason)
