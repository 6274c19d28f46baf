"""netfront and the kernel's vif driver: xen-reference.md 9 (netif), 10 (xenbus), 19.2, 19.4, 19.5.

The guest's memory is a bytearray holding a real grant table; the toolstack's vif keys come
from the real builder (``add_device``); xenstore, watches and event channels are the real ones
of the ``host`` fixture. The backend is a minimal netback driven by hand, registered as
``h1/netback`` (the real one's behaviour is test_netback_xenbus.py's; this one must also
answer as a hostile backend would): it maps grants through the guest's grant table (setting
GTF_reading/GTF_writing as Xen does) and drives ``protocols.ring.BackRing`` over the very
pages the frontend granted. The test pumps the one-way messages (watch events, upcalls) as
the actors' mailboxes would.
"""

import dpkt
import pytest

from actors.domain.netdev import NetDevices
from actors.toolstack.builder import device_ops
from actors.toolstack.devices import VIF
from actors.xenbus.frontend import PagePool
from cluster.xlcfg.vif import parse_vif_spec
from protocols.errno import XenError
from protocols.gnttab import GNTST, GTF, GrantRefAllocator, GrantTable
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.netif import (NETIF_RSP_ERROR, NETIF_RSP_OKAY, RX_RING_SIZE, RX_SLOT_SIZE,
                             TX_RING_SIZE, TX_SLOT_SIZE, NetifRxRequest, NetifRxResponse,
                             NetifTxRequest, NetifTxResponse, NetRxFlag, NetTxFlag)
from protocols.page import PAGE_SIZE
from protocols.ring import BackRing
from protocols.xenbus import XenbusState
from protocols.xenstore.paths import backend_path, domain_path, frontend_path
from tests.inprocess import HOST, domain_endpoint

S = XenbusState
NETBACK = f"{HOST}/netback"
MEM_PAGES = 2048  # the guest's memory: room for two vifs' rings and buffer pools
MAC0, MAC1, IP0 = "00:16:3e:0a:0b:0c", "00:16:3e:0a:0b:0d", "10.0.0.5"
PEER_MAC, PEER_IP = bytes.fromhex("00163e000099"), "10.0.0.9"


class Netback:
    """A minimal netback for vif ``devid``: xenbus keys and states, grant maps, the rings."""

    def __init__(self, w: "Guest", devid: int = 0) -> None:
        self.w, self.devid = w, devid
        self.be = backend_path("vif", w.domid, devid)
        self.fe = frontend_path("vif", w.domid, devid)
        self.hv, self.xs = w.hv0, w.xs0
        self.mapped: dict[int, memoryview] = {}
        self.tx: BackRing | None = None
        self.rx: BackRing | None = None
        self.port: int | None = None
        self.rx_pending: list[NetifRxRequest] = []  # consumed rx requests not yet answered

    def state(self, state: S) -> None:
        self.xs.write(f"{self.be}/state", str(int(state)))
        self.w.host.pump()

    def init_wait(self) -> None:
        for key in ("feature-rx-copy", "feature-sg"):
            self.xs.write(f"{self.be}/{key}", "1" if key == "feature-rx-copy" else "0")
        self.state(S.INIT_WAIT)

    def map(self, gref: int, readonly: bool) -> memoryview:
        """GNTTABOP_map_grant_ref for Dom0: pin the grant (first pin checks it), then the frame."""
        if gref not in self.mapped:
            status = self.w.gnttab.set_status(gref, 0, readonly, check_entry=True, mapflag=True)
            if status != GNTST.okay:
                raise XenError(22, f"gref {gref}: {status!r}")
            self.mapped[gref] = self.w.page(self.w.gnttab.frame(gref))
        return self.mapped[gref]

    def connect(self) -> None:
        """``connect_rings``: map both rings, bind the port, publish Connected."""
        fe = {k: int(self.xs.read_str(f"{self.fe}/{k}")) for k in (
            "tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy")}
        assert fe["request-rx-copy"] == 1
        self.tx = BackRing(self.map(fe["tx-ring-ref"], False), TX_SLOT_SIZE)
        self.rx = BackRing(self.map(fe["rx-ring-ref"], False), RX_SLOT_SIZE)
        self.tx.init()
        self.rx.init()
        self.port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                            remote_dom=self.w.domid, remote_port=fe["event-channel"])["local_port"]
        self.state(S.CONNECTED)

    def kick(self, needed: bool) -> None:
        if needed:
            self.hv(Hypercall.event_channel_op, EvtchnOp.send, port=self.port)
        self.w.host.pump()

    @staticmethod
    def _drain(ring: BackRing) -> list[bytes]:
        """Every request, then the final check that re-arms ``req_event`` (7.3)."""
        out = ring.get_requests()
        while ring.final_check_for_requests():
            out += ring.get_requests()
        return out

    def tx_requests(self) -> list[NetifTxRequest]:
        return [NetifTxRequest.unpack(raw) for raw in self._drain(self.tx)]

    def tx_frame(self, reqs: list[NetifTxRequest]) -> bytes:
        """The frame of one packet's slots (the first ``size`` is the total)."""
        total, out = reqs[0].size, b""
        for req in reqs:
            n = min(PAGE_SIZE - req.offset, total - len(out))
            out += bytes(self.map(req.gref, readonly=True)[req.offset:req.offset + n])
        return out

    def answer_tx(self, ids: list[int], status: int = NETIF_RSP_OKAY) -> None:
        for id_ in ids:
            self.tx.put_response(NetifTxResponse(id_, status).pack())
        self.kick(self.tx.push_responses())

    def rx_requests(self) -> list[NetifRxRequest]:
        """Consume the newly posted rx requests (kept for :meth:`deliver`)."""
        new = [NetifRxRequest.unpack(raw) for raw in self._drain(self.rx)]
        self.rx_pending += new
        return new

    def deliver(self, *frags: bytes, offset: int = 0, status: int | None = None) -> None:
        """Fill one rx request per fragment and answer each in its own slot (19.5)."""
        for i, frag in enumerate(frags):
            if not self.rx_pending:
                self.rx_requests()
            req = self.rx_pending.pop(0)
            self.map(req.gref, readonly=False)[offset:offset + len(frag)] = frag
            flags = NetRxFlag.data_validated | (NetRxFlag.more_data if i < len(frags) - 1 else 0)
            self.rx.put_response(NetifRxResponse(req.id, offset, int(flags),
                                                 len(frag) if status is None else status).pack())
        self.kick(self.rx.push_responses())

    def die(self, keep_mapped: int | None = None) -> None:
        """The backend is gone: its maps dropped (all but ``keep_mapped``), Closed."""
        for gref in list(self.mapped):
            if gref != keep_mapped:
                self.w.gnttab.clear_flags(gref, GTF.reading | GTF.writing)
        self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=self.port)
        self.state(S.CLOSED)


class Guest:
    """A PV guest on ``host`` whose kernel network driver (``NetDevices``) runs over real
    xenstore and event channels; ``vifs`` are (mac, ip) pairs the toolstack adds. Dom0's
    ``h1/netback`` endpoint only counts its kicks: :class:`Netback` plays the backend."""

    def __init__(self, host, vifs=((MAC0, IP0),)) -> None:
        self.host = host
        dom0 = host.clients(NETBACK)
        self.hv0, self.xs0 = dom0.hv, dom0.xs
        host.start(NETBACK, {"upcall": self._backend_upcall, "xs_event": self.xs0.on_event})
        self.backend_kicks = 0
        self.domid, secret = self.host.create_domain(64)
        dom = domain_path(self.domid)

        def body(t: int) -> None:
            self.xs0.write(dom, "", tx_id=t)
            self.xs0.set_perms(dom, ["n0", f"r{self.domid}"], tx_id=t)
            for devid, (mac, ip) in enumerate(vifs):
                spec = f"mac={mac}" + (f",ip={ip}" if ip else "")
                self.xs0.pipeline(device_ops(self.domid, VIF, parse_vif_spec(spec, devid)),
                                  tx_id=t)

        self.xs0.transact(body)
        self.host.introduce(self.domid, secret)
        self.memory = memoryview(bytearray(MEM_PAGES * PAGE_SIZE))
        self.gnttab = GrantTable(self.memory[4 * PAGE_SIZE:12 * PAGE_SIZE])
        guest = self.host.clients(domain_endpoint(self.domid), self.domid, secret)
        hv, self.xs = guest.hv, guest.xs
        self.net = NetDevices(pages=PagePool(self.page, 16, MEM_PAGES - 16), gnttab=self.gnttab,
                              grefs=GrantRefAllocator(self.gnttab.nr_entries), hypercall=hv,
                              xs=self.xs)
        host.start(domain_endpoint(self.domid), {
            "upcall": lambda _d, ports, _v=0: self.net.upcall(ports), "xs_event": self.xs.on_event})
        self.devids = self.net.probe(self.domid, lambda path, token, handler: self.xs.watch(
            path, token, lambda _p, _t: handler()))
        self.host.pump()

    def _backend_upcall(self, _domid: int, _ports: list[int], _vcpu: int = 0) -> None:
        self.backend_kicks += 1

    def page(self, pfn: int) -> memoryview:
        return self.memory[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def fe(self, key: str, devid: int = 0) -> str | None:
        return self.xs0.read_str(f"{frontend_path('vif', self.domid, devid)}/{key}", "")

    def connected(self, devid: int = 0) -> Netback:
        """Both ends Connected; the gratuitous ARP the guest's stack then sends (Linux
        ``netdev_notify_peers``) is checked, answered and out of the way."""
        back = Netback(self, devid)
        back.init_wait()
        back.connect()
        front = self.net.vif(devid)
        if front.ip and front.on_reconnect == self.net.nic(devid).gratuitous_arp:
            (req,) = back.tx_requests()
            garp = dpkt.ethernet.Ethernet(back.tx_frame([req]))
            assert garp.dst == b"\xff" * 6 and garp.data.spa == garp.data.tpa
            back.answer_tx([req.id])
        return back


@pytest.fixture
def guest(host):
    """A guest with one vif (MAC0, IP0)."""
    return Guest(host)


def _frame(n: int, dst: bytes = bytes.fromhex("00163e0a0b0c"), seed: int = 1) -> bytes:
    return dst + PEER_MAC + b"\x88\xb5" + bytes((seed + i) & 0xFF for i in range(n - 14))


def test_netfront_9_handshake_writes_keys_and_goes_straight_to_connected(guest):
    front = guest.net.vif("eth0")
    assert (front.mac, front.ip, front.mtu) == (MAC0, IP0, 1500)  # fe mac, <be>/ip
    assert guest.fe("state") == "1" and front.evtchn is None
    back = Netback(guest)
    back.init_wait()
    assert guest.fe("state") == "4"  # Connected, skipping Initialised (xennet_connect)
    assert guest.fe("request-rx-copy") == "1" and guest.fe("feature-rx-notify") == "1"
    refs = [int(guest.fe(k)) for k in ("tx-ring-ref", "rx-ring-ref")]
    assert refs[0] != refs[1] and min(refs) >= 8  # refs 0..7 are reserved (19.3)
    for ref in refs:
        entry = guest.gnttab.entry(ref)
        assert entry.domid == 0 and entry.flags == GTF.permit_access  # writable, for Dom0
    tx_header = guest.page(guest.gnttab.entry(refs[0]).frame)[:16].cast("I").tolist()
    rx_header = guest.page(guest.gnttab.entry(refs[1]).frame)[:16].cast("I").tolist()
    assert tx_header == [0, 1, 0, 1]  # SHARED_RING_INIT
    assert rx_header[0] == RX_RING_SIZE  # every rx buffer posted before Connected
    assert int(guest.fe("event-channel")) == front.evtchn
    front.on_backend_changed()  # a spurious firing sets up nothing new
    assert [int(guest.fe(k)) for k in ("tx-ring-ref", "rx-ring-ref")] == refs
    back.connect()  # binding works: the port was left unbound for Dom0
    assert front.state == S.CONNECTED and guest.fe("state") == "4"


def test_netfront_9_rx_requests_posted_one_per_slot_with_writable_grants(guest):
    back = guest.connected()
    reqs = back.rx_requests()
    assert [r.id for r in reqs] == list(range(RX_RING_SIZE))  # id = slot index
    grefs = {r.gref for r in reqs}
    entries = [guest.gnttab.entry(r.gref) for r in reqs]
    assert len(grefs) == RX_RING_SIZE and len({e.frame for e in entries}) == RX_RING_SIZE
    assert all(e.domid == 0 and e.flags == GTF.permit_access for e in entries)
    assert guest.net.vif(0).statistics()["rx_posted"] == RX_RING_SIZE


def test_netfront_9_sent_frame_is_byte_exact_in_a_read_only_granted_page(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    kicks, before = guest.backend_kicks, front.statistics()
    frame = _frame(60)
    assert front.send(frame)
    guest.host.pump()
    assert guest.backend_kicks > kicks  # the backend was notified (req_event was due)
    (req,) = back.tx_requests()
    assert (req.offset, req.flags, req.size) == (0, 0, len(frame)) and req.id < TX_RING_SIZE
    entry = guest.gnttab.entry(req.gref)
    assert entry.domid == 0 and entry.flags & GTF.readonly  # Linux grants tx pages read-only
    assert back.tx_frame([req]) == frame
    assert guest.gnttab.set_status(req.gref, 0, False, check_entry=True,
                                   mapflag=True) != GNTST.okay  # no writable map of it
    assert front.statistics()["tx_in_flight"] == 1
    back.answer_tx([req.id])
    stats = front.statistics()
    assert stats["tx_in_flight"] == 0 and stats["tx_packets"] == before["tx_packets"] + 1
    assert stats["tx_bytes"] == before["tx_bytes"] + 60


def test_netfront_19_5_frame_over_a_page_uses_more_data_slots_with_total_size(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    frame = _frame(6000, seed=7)
    assert front.send(frame)
    first, second = back.tx_requests()
    assert first.size == 6000 and first.flags == NetTxFlag.more_data  # the total length
    assert (second.offset, second.size, second.flags) == (0, 6000 - PAGE_SIZE, 0)
    assert first.id != second.id and back.tx_frame([first, second]) == frame
    back.answer_tx([first.id, second.id])
    assert front.statistics()["tx_in_flight"] == 0


def test_netfront_9_send_refuses_when_disconnected_or_out_of_tx_pages(guest):
    front = guest.net.vif(0)
    assert not front.send(_frame(60))  # no ring yet
    with pytest.raises(XenError):
        front.send(b"short")
    back = guest.connected()
    assert all(front.send(_frame(60, seed=i)) for i in range(TX_RING_SIZE))
    assert not front.send(_frame(60))  # every tx page is in flight
    assert front.statistics()["tx_busy"] == 2
    back.answer_tx([r.id for r in back.tx_requests()])
    assert front.send(_frame(60)) and front.statistics()["tx_in_flight"] == 1


def test_netfront_19_5_rx_response_in_request_slot_delivers_frame_and_reposts(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    got: list[bytes] = []
    front.on_receive = got.append
    posted = back.rx_requests()
    frame = _frame(98)
    back.deliver(frame)
    assert got == [frame]
    back.deliver(frame[:40], frame[40:], offset=64)  # more_data fragments are joined
    assert got == [frame, frame]
    reposted = back.rx_requests()
    assert reposted == posted[:3]  # same slots, same ids, same persistent grants
    assert back.rx.sring.req_prod == RX_RING_SIZE + 3
    stats = front.statistics()
    assert (stats["rx_packets"], stats["rx_bytes"], stats["rx_posted"]) == (2, 196, RX_RING_SIZE)


def test_netfront_19_2_hostile_rx_responses_are_counted_not_raised(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    got: list[bytes] = []
    front.on_receive = got.append
    back.deliver(b"x" * 60, status=NETIF_RSP_ERROR)  # an error status
    back.deliver(b"x" * 96, offset=4000, status=200)  # overruns its page
    back.deliver(b"tiny")  # shorter than an Ethernet header
    back.deliver(*[b"y" * 14] * 19)  # more than XEN_NETIF_NR_SLOTS_MIN fragments
    assert got == [] and front.statistics()["rx_errors"] == 4
    good = _frame(64)
    back.deliver(good)
    stats = front.statistics()
    assert got == [good] and not stats["broken"] and stats["rx_posted"] == RX_RING_SIZE


def test_netfront_19_2_bad_tx_id_or_rsp_prod_overflow_disables_until_reconnect(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    assert front.send(_frame(60))
    (req,) = back.tx_requests()
    back.answer_tx([(req.id + 1) % TX_RING_SIZE])  # not in flight: "incorrect id"
    stats = front.statistics()
    assert stats["bad_responses"] == 1 and stats["broken"] and not front.send(_frame(60))
    back.die()  # the backend restarts; the new connection is sane again
    back = guest.connected()
    assert front.send(_frame(60)) and not front.statistics()["broken"]
    back.tx.sring.rsp_prod = back.tx.sring.rsp_prod + TX_RING_SIZE + 5  # hostile index
    back.kick(True)
    stats = front.statistics()
    assert stats["ring_errors"] == 1 and stats["broken"]


def test_netfront_19_4_backend_restart_reconnects_then_calls_on_reconnect(guest):
    front = guest.net.vif(0)
    calls: list[int] = []
    front.on_reconnect = lambda: calls.append(front.statistics()["reconnects"])
    back = guest.connected()
    assert calls == [0]  # netdev_notify_peers on the first Connected too
    assert front.send(_frame(60))
    old_port = front.evtchn
    (req,) = back.tx_requests()
    assert back.tx_frame([req])  # maps it; this grant stays mapped when the backend dies
    kept = req.gref
    back.die(keep_mapped=kept)
    assert guest.fe("state") == "1" and front.evtchn is None  # back to Initialising
    back = Netback(guest)  # the restarted backend answers Initialising with InitWait
    back.init_wait()
    assert guest.fe("state") == "4" and calls == [0]
    stats = front.statistics()
    assert stats["reconnects"] == 1 and stats["tx_dropped"] == 1 and stats["retired_grants"] == 1
    assert guest.gnttab.entry(kept).flags & GTF.reading  # never revoked while mapped
    assert front.evtchn is not None and old_port is not None
    back.connect()
    assert calls == [0, 1]  # and once the backend is Connected again
    front.on_backend_changed()  # a spurious firing does not announce again
    assert calls == [0, 1]
    got: list[bytes] = []
    front.on_receive = got.append
    frame = _frame(70)
    back.deliver(frame)
    assert got == [frame] and front.send(frame)
    (req,) = back.tx_requests()
    assert back.tx_frame([req]) == frame


def test_netfront_10_backend_closing_closes_the_frontend(guest):
    back = guest.connected()
    front = guest.net.vif(0)
    back.state(S.CLOSING)
    assert guest.fe("state") == "6" and front.state == S.CLOSED
    assert not front.send(_frame(60)) and front.evtchn is None


def test_netdev_10_probes_every_vif_and_routes_upcalls_by_port(host):
    w = Guest(host, vifs=((MAC0, IP0), (MAC1, None)))
    assert w.devids == [0, 1]
    eth0, eth1 = w.net.vif("eth0"), w.net.vif("eth1")
    assert (eth1.devid, eth1.mac, eth1.ip) == (1, MAC1, None)
    assert w.net.nic(1).mac == MAC1 and w.net.nic("eth0").ip == IP0
    with pytest.raises(XenError):
        w.net.vif("eth2")
    backs = [w.connected(0), w.connected(1)]
    assert eth0.evtchn != eth1.evtchn
    got: dict[int, list[bytes]] = {0: [], 1: []}
    eth0.on_receive, eth1.on_receive = got[0].append, got[1].append
    backs[1].deliver(_frame(60, dst=bytes.fromhex("00163e0a0b0d")))
    assert len(got[1]) == 1 and got[0] == []
    assert set(w.net.statistics()) == {0, 1}


def test_netdev_10_a_domain_without_vifs_probes_none(host):
    w = Guest(host, vifs=())
    assert w.devids == [] and w.net.statistics() == {}


def test_netfront_9_stack_answers_ping_through_the_rings(guest):
    """The guest's NetStack on netfront: an echo request in, an echo reply out."""
    back = guest.connected()
    icmp = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, data=dpkt.icmp.ICMP.Echo(id=7, seq=1,
                                                                            data=b"abc"))
    ip = dpkt.ip.IP(src=bytes((10, 0, 0, 9)), dst=bytes((10, 0, 0, 5)), p=1, data=icmp)
    back.deliver(bytes(dpkt.ethernet.Ethernet(dst=bytes.fromhex("00163e0a0b0c"), src=PEER_MAC,
                                              type=dpkt.ethernet.ETH_TYPE_IP, data=ip)))
    (req,) = back.tx_requests()
    reply = dpkt.ethernet.Ethernet(back.tx_frame([req]))
    assert reply.dst == PEER_MAC and reply.src == bytes.fromhex("00163e0a0b0c")
    assert reply.data.dst == bytes((10, 0, 0, 9))
    assert reply.data.data.type == dpkt.icmp.ICMP_ECHOREPLY
    assert reply.data.data.data.id == 7 and reply.data.data.data.data == b"abc"
    assert guest.net.nic(0).statistics()["icmp_echo_replies_tx"] == 1


def test_netfront_11_a_suspended_vif_sends_nothing_and_a_cancel_sends_again(guest):
    front = guest.net.vif(0)
    back = guest.connected()
    assert guest.net.suspend(0)  # nothing to wait for: frames in flight may be lost
    assert not front.send(_frame(60)) and back.tx_requests() == []
    assert front.statistics()["tx_busy"] == 1
    guest.net.suspend_cancel()
    assert front.send(_frame(60)) and len(back.tx_requests()) == 1
