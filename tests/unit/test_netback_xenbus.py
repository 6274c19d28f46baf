"""netback's control path (actors.netback.xenbus on actors/xenbus/) against real peers,
in-process.

Reference 9 (netif keys, features, the hotplug hold-back, request-rx-copy, ``rate``), 10
(life-cycle), 19.2 (hostile ring), 19.4/19.6 (restart and reconnect). Everything is the real
thing: the ``host`` fixture's hypervisor and xenstored shells, netback's own shell
(``NetbackShell``, as the Ray actor runs it, its timers on the ``clock`` fixture where time
matters) and, as each guest's NIC, ``actors.domain.netfront.Netfront`` over the guest's own
memory and grant table. Other hosts' netbacks are stand-in endpoints that collect what the
uplinks send them. The test pumps the one-way messages (upcalls, watch events) as mailboxes
would.
"""

import itertools

import pytest

from actors import memory
from actors.domain.netfront import Netfront
from actors.netback.actor import NetbackShell
from actors.netback.xenbus import FEATURES
from actors.runtime import THREADS
from actors.xenbus.frontend import PagePool
from protocols import netif
from protocols.evtchn import EvtchnStat
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall
from protocols.libxl_types import DomainConfig, RateLimit, VifSpec
from protocols.page import PAGE_SIZE
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE
from protocols.xenstore.paths import backend_path, frontend_path
from tests.inprocess import HOST, domain_endpoint

NETBACK = f"{HOST}/netback"
MEMORY_MIB = 4
NR_PAGES = (MEMORY_MIB << 20) // PAGE_SIZE  # each NIC grants 2 ring pages, 256 rx and TX_PAGES tx
TX_PAGES = 8
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental
BROADCAST = "ff:ff:ff:ff:ff:ff"
_guests = itertools.count(1)


def frame(dst: str, src: str, payload: bytes = b"hello") -> bytes:
    """A minimal Ethernet II frame (padded to 60 bytes, no FCS)."""
    raw = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + \
        ETHERTYPE + payload
    return raw.ljust(60, b"\0")


@pytest.fixture
def netback(host):
    """Start a (new) netback shell on Dom0's ``h1/netback`` connection, as after an actor
    restart (``runtime``: its threads and timers); none may fail to carry out an effect."""
    shells = []

    def start(runtime=THREADS) -> NetbackShell:
        shells.append(host.start(NETBACK, NetbackShell(HOST, host.clients(NETBACK), host.log,
                                                       runtime)))
        return shells[-1]

    yield start
    assert [s.backend.effect_errors for s in shells] == [0] * len(shells)


def peer(host, name: str) -> list[tuple]:
    """Another host's netback, as a stand-in: what our uplinks send it, as
    ``(from host, bridge, frames)``."""
    got: list[tuple] = []
    host.start(f"{name}/netback", {"frames": lambda *args: got.append(args)})
    return got


class Guest:
    """A PV domain whose NICs are the real netfront, one per ``device/vif/<devid>``."""

    def __init__(self, host, domid: int, secret: str) -> None:
        self.domid, endpoint = domid, domain_endpoint(domid)
        self.mapping = memory.Mapping(host.memory_path(domid))
        clients = host.clients(endpoint, domid, secret)
        self.hv, self.xs = clients.hv, clients.xs
        self.table = GrantTable(self.mapping.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        self.grefs = GrantRefAllocator(self.table.nr_entries)
        self.pages = PagePool(self.mapping.page, PFN_FIRST_FREE, NR_PAGES - PFN_FIRST_FREE)
        self.nics: dict[int, Netfront] = {}
        self.inbox: dict[int, list[bytes]] = {}
        host.start(endpoint, {"upcall": self.upcall, "xs_event": self.xs.on_event})

    def probe(self) -> None:
        for devid in sorted(int(d) for d in self.xs.directory("device/vif")):
            nic = Netfront(domid=self.domid, devid=devid, pages=self.pages, gnttab=self.table,
                           grefs=self.grefs, evtchn_alloc_unbound=self._alloc_unbound,
                           notify=self._notify, xs=self.xs, evtchn_close=self._close,
                           tx_pages=TX_PAGES)
            nic.probe()
            nic.on_receive = self.inbox.setdefault(devid, []).append
            self.nics[devid] = nic
            self.xs.watch(f"{nic.backend}/state", f"vif-{devid}",
                          lambda _p, _t, nic=nic: nic.on_backend_changed())

    def upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        for nic in self.nics.values():
            if nic.evtchn is not None and nic.evtchn in ports:
                nic.on_event()

    def mac(self, devid: int = 0) -> str:
        return self.nics[devid].mac

    def _alloc_unbound(self, remote_dom: int) -> int:
        return self.hv(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                       remote_dom=remote_dom)["port"]

    def _notify(self, port: int) -> None:
        self.hv.post(Hypercall.event_channel_op, EvtchnOp.send, port=port)

    def _close(self, port: int) -> None:
        self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)


def create(host, *bridges: str, probe: bool = True, rate: RateLimit | None = None) -> Guest:
    """A domain with one vif per bridge named, built as the toolstack builds one (introduced,
    its vCPUs handed to this process); ``probe``: its NICs start their handshake."""
    n = next(_guests)
    built = host.build(DomainConfig(
        name=f"net{n}", memory=MEMORY_MIB, maxmem=MEMORY_MIB,
        vif=tuple(VifSpec(devid=devid, mac=f"00:16:3e:00:{n:02x}:{devid:02x}", bridge=bridge,
                          rate=rate) for devid, bridge in enumerate(bridges))))
    guest = Guest(host, built.domid, built.secret)
    if probe:
        guest.probe()
    return guest


def fe(domid: int, devid: int = 0) -> str:
    return frontend_path("vif", domid, devid)


def be(domid: int, devid: int = 0) -> str:
    return backend_path("vif", domid, devid)


def read(host, path: str) -> str:
    """A node's value, or NUL if it does not exist."""
    return host.xs.read_str(path, default="\0")


def states(host, guest: Guest, devid: int = 0) -> tuple[str, str]:
    return (read(host, f"{be(guest.domid, devid)}/state"),
            read(host, f"{fe(guest.domid, devid)}/state"))


def connected(host, *guests: Guest) -> None:
    host.until(lambda: all(states(host, g, d) == ("4", "4") for g in guests for d in g.nics),
               "both ends Connected")


def vif(back: NetbackShell, guest: Guest, devid: int = 0) -> dict | None:
    """The vif's row in netback's statistics (None once it is forgotten)."""
    return next((v for v in back.on_statistics()["vifs"]
                 if (v["domid"], v["devid"]) == (guest.domid, devid)), None)


def ports(back: NetbackShell, bridge: str, uplinks: bool = False) -> list[str]:
    """The ports of ``bridge``: its vifs' (sorted), or its uplinks'."""
    return sorted(p for p in back.bridges.bridges[bridge].ports()
                  if p.startswith("uplink:") == uplinks)


def test_netback_9_probe_publishes_features_runs_hotplug_and_goes_init_wait(host, netback):
    back = netback()
    guest = create(host, "xenbr0", "xenbr1", probe=False)
    be0, be1 = be(guest.domid, 0), be(guest.domid, 1)
    host.until(lambda: read(host, f"{be0}/state") == read(host, f"{be1}/state") == "2",
               "InitWait")
    for key, value in FEATURES.items():
        assert read(host, f"{be0}/{key}") == value, key
    assert read(host, f"{be0}/feature-rx-copy") == "1"
    assert read(host, f"{be0}/feature-rx-flip") == "0"
    for key in ("feature-split-event-channels", "multi-queue-max-queues", "feature-ctrl-ring",
                "feature-gso-tcpv4", "feature-gso-tcpv6", "feature-xdp-headroom"):
        assert read(host, f"{be0}/{key}") == "\0", key
    assert set(host.xs.directory(be0)) <= {*netif.TOOLSTACK_BACKEND_KEYS,
                                           *netif.BACKEND_FEATURE_KEYS}
    # vif-bridge: each vif is a port of the bridge its backend names, then hotplug-status.
    assert read(host, f"{be0}/hotplug-status") == read(host, f"{be1}/hotplug-status") == \
        "connected"
    assert ports(back, "xenbr0") == [f"vif{guest.domid}.0"]
    assert ports(back, "xenbr1") == [f"vif{guest.domid}.1"]


def test_netback_9_connected_is_held_back_until_hotplug_status_connected(host, netback):
    back = netback()
    guest = create(host, "xenbr0", probe=False)
    be0 = be(guest.domid)
    host.until(lambda: read(host, f"{be0}/state") == "2", "InitWait")
    host.xs.write(f"{be0}/hotplug-status", "")  # as if the script had not reported yet
    guest.probe()  # netfront publishes its rings and goes straight to Connected
    host.until(lambda: states(host, guest) == ("2", "4"), "frontend Connected")
    host.pump()
    assert read(host, f"{be0}/state") == "2" and back.on_statistics()["connects"] == 0
    host.xs.write(f"{be0}/hotplug-status", "connected")
    connected(host, guest)
    assert back.on_statistics()["connects"] == 1
    assert vif(back, guest)["local_port"] is not None


def test_netback_9_frames_cross_the_bridge_between_vifs_and_not_to_other_bridges(host, netback):
    back = netback()
    a, b = create(host, "xenbr0"), create(host, "xenbr0")
    c = create(host, "xenbr1")
    connected(host, a, b, c)
    hello = frame(BROADCAST, a.mac(), b"who is there")
    assert a.nics[0].send(hello)
    host.until(lambda: b.inbox[0], "the broadcast at b")
    assert b.inbox[0] == [hello]
    reply = frame(a.mac(), b.mac(), b"b is here")
    assert b.nics[0].send(reply)
    host.until(lambda: a.inbox[0], "the unicast reply at a")
    assert a.inbox[0] == [reply]
    host.pump()
    assert c.inbox.get(0) == [] and b.inbox[0] == [hello]  # no flood of a known unicast
    fdb = back.bridges.bridges["xenbr0"].fdb()
    assert fdb == {a.mac(): f"vif{a.domid}.0", b.mac(): f"vif{b.domid}.0"}
    stats = vif(back, a)
    assert (stats["tx_packets"], stats["rx_packets"]) == (1, 1)
    assert back.on_statistics()["bridges"]["xenbr0"]["fdb_entries"] == 2


def test_netback_9_frontend_without_request_rx_copy_is_refused_eopnotsupp(host, netback):
    back = netback()
    guest = create(host, "xenbr0", probe=False)
    be0, fe0 = be(guest.domid), fe(guest.domid)
    host.until(lambda: read(host, f"{be0}/state") == "2", "InitWait")
    for key, value in (("tx-ring-ref", "8"), ("rx-ring-ref", "9"), ("event-channel", "5"),
                       ("state", "4")):  # a frontend that only knows rx-flip
        guest.xs.write(f"{fe0}/{key}", value)
    host.until(lambda: read(host, f"{be0}/state") == "5", "Closing")
    error = read(host, f"{be0}/error")
    assert "EOPNOTSUPP" in error and "request-rx-copy" in error
    stats = back.on_statistics()
    assert stats["errors"] == 1 and stats["connects"] == 0
    assert vif(back, guest)["local_port"] is None


def test_netback_9_rate_holds_tx_on_the_ring_until_the_credit_timer(host, clock, netback):
    """xl.cfg ``rate=`` ("bytes,usec" in the backend's ``rate``): what is over the credit
    waits on the guest's tx ring, unanswered, until the credit timer (the ``clock``)."""
    back = netback(runtime=clock)
    a = create(host, "xenbr0", rate=RateLimit(2000, 50_000))  # 2000 bytes every 50 ms
    b = create(host, "xenbr0")
    connected(host, a, b)
    frames = [frame(b.mac(), a.mac(), bytes([i]) * 886) for i in range(5)]  # 900 bytes each
    for f in frames:
        assert a.nics[0].send(f)
    host.pump()
    assert b.inbox[0] == frames[:2] and clock.pending() == 1
    assert vif(back, a)["tx_held"] == 3
    clock.advance(0.049)
    host.pump()
    assert b.inbox[0] == frames[:2]
    clock.advance(0.002)  # the refill: the timer serves the ring again
    host.pump()
    assert b.inbox[0] == frames[:4]
    clock.advance(0.05)
    host.pump()
    assert b.inbox[0] == frames and clock.pending() == 0
    stats = vif(back, a)
    assert stats["credit_waits"] >= 2 and stats["tx_held"] == 0 and stats["tx_errors"] == 0


def test_netback_10_frontend_closing_disconnects_and_closed_closes(host, netback):
    back = netback()
    guest = create(host, "xenbr0")
    connected(host, guest)
    fe0, be0 = fe(guest.domid), be(guest.domid)
    guest.xs.write(f"{fe0}/state", "5")
    host.until(lambda: read(host, f"{be0}/state") == "5", "backend Closing")
    assert vif(back, guest)["local_port"] is None
    assert back.on_statistics()["disconnects"] == 1
    guest.xs.write(f"{fe0}/state", "6")
    host.until(lambda: read(host, f"{be0}/state") == "6", "backend Closed")
    assert ports(back, "xenbr0") == [f"vif{guest.domid}.0"]  # still plugged


def test_netback_10_unplug_and_removal_take_the_port_off_the_bridge(host, netback):
    back = netback()
    guest = create(host, "xenbr0", "xenbr0")
    connected(host, guest)
    be0, be1 = be(guest.domid, 0), be(guest.domid, 1)

    def unplug(t):  # libxl: online=0 and Closing in one transaction
        host.xs.write(f"{be0}/online", "0", tx_id=t)
        host.xs.write(f"{be0}/state", "5", tx_id=t)

    host.xs.transact(unplug)
    host.until(lambda: vif(back, guest, 0) is None, "vif 0 unregistered")
    assert read(host, f"{be0}/state") == "6"
    assert ports(back, "xenbr0") == [f"vif{guest.domid}.1"]
    host.xs.rm(be0)
    host.xs.rm(be1)  # the toolstack removes a device without asking
    host.until(lambda: not back.on_statistics()["vifs"], "vif 1 forgotten")
    assert ports(back, "xenbr0") == []
    assert read(host, f"{be0}/state") == "\0"  # nothing re-created


def test_netback_19_4_restarted_backend_recovers_and_frontends_reconnect(host, netback):
    old = netback()
    a, b = create(host, "xenbr0"), create(host, "xenbr0")
    connected(host, a, b)
    old_port = vif(old, a)["local_port"]
    del host.endpoints[NETBACK]  # the actor dies: its upcalls go nowhere
    back = netback()  # Ray restarts it: same endpoint, same xenstore connection
    assert back.on_statistics()["recovered"] == 2
    connected(host, a, b)
    assert a.nics[0].statistics()["reconnects"] == 1
    status = host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=old_port)
    assert status["status"] == EvtchnStat.closed or old_port in {
        v["local_port"] for v in back.on_statistics()["vifs"]}  # reused after the close
    assert ports(back, "xenbr0") == sorted([f"vif{a.domid}.0", f"vif{b.domid}.0"])
    hello = frame(b.mac(), a.mac(), b"after the restart")
    assert a.nics[0].send(hello)
    host.until(lambda: hello in b.inbox[0], "a frame over the new rings")


def test_netback_19_2_hostile_tx_ring_disconnects_that_vif_only(host, netback):
    back = netback()
    a, b = create(host, "xenbr0", "xenbr0"), create(host, "xenbr0")
    connected(host, a, b)
    bad = a.nics[0]
    tx_page = a.mapping.page(a.table.frame(int(read(host, f"{fe(a.domid)}/tx-ring-ref"))))
    req_prod = tx_page.cast("I")
    req_prod[0] = (req_prod[0] + 1000) & 0xFFFFFFFF  # far past RING_SIZE: overflow
    a.hv(Hypercall.event_channel_op, EvtchnOp.send, port=bad.evtchn)
    host.until(lambda: states(host, a, 0)[0] == "5" or states(host, a, 0) == ("6", "6"),
               "hostile vif Closing")
    assert back.on_statistics()["hostile"] == 1 and vif(back, a, 0)["local_port"] is None
    assert states(host, a, 1) == ("4", "4") and states(host, b) == ("4", "4")
    # The other vifs still switch frames; frames to the broken one are dropped.
    hello = frame(BROADCAST, b.mac(), b"still here")
    assert b.nics[0].send(hello)
    host.until(lambda: hello in a.inbox.get(1, []), "the broadcast at a's other vif")
    assert hello not in a.inbox.get(0, [])
    assert vif(back, a, 0)["carrier_dropped"] >= 1


def test_netback_uplinks_carry_frames_to_and_from_other_hosts(host, netback):
    back = netback()
    h2, h3 = peer(host, "h2"), peer(host, "h3")
    host.call(NETBACK, "set_peers", ["h1", "h2"])  # this host is not its own peer
    a = create(host, "xenbr0")
    connected(host, a)
    assert ports(back, "xenbr0", uplinks=True) == ["uplink:h2"]
    hello = frame(BROADCAST, a.mac(), b"anyone on h2?")
    assert a.nics[0].send(hello)
    host.until(lambda: h2, "the broadcast on the uplink")
    assert h2 == [("h1", "xenbr0", [hello])]
    remote = "00:16:3e:7f:00:01"
    reply = frame(a.mac(), remote, b"h2 here")
    host.call(NETBACK, "frames", "h2", "xenbr0", [reply])
    host.until(lambda: a.inbox[0], "the frame from h2 at a")
    assert a.inbox[0] == [reply]
    assert back.bridges.bridges["xenbr0"].fdb()[remote] == "uplink:h2"
    host.call(NETBACK, "frames", "h3", "xenbr0", [reply])  # no uplink to h3 here
    host.call(NETBACK, "frames", "h2", "xenbr9", [reply])  # no such bridge
    assert back.on_statistics()["uplink_dropped"] == 2
    # An uplink per peer on every bridge, also bridges made later.
    host.call(NETBACK, "set_peers", ["h2", "h3"])
    b = create(host, "xenbr1")
    connected(host, b)
    assert ports(back, "xenbr1", uplinks=True) == ["uplink:h2", "uplink:h3"]
    ping = frame(BROADCAST, b.mac(), b"xenbr1")
    assert b.nics[0].send(ping)
    host.until(lambda: len(h2) == 2 and h3, "the broadcast to both peers")
    assert h2[1] == h3[0] == ("h1", "xenbr1", [ping])
    host.call(NETBACK, "set_peers", ["h3"])
    assert ports(back, "xenbr0", uplinks=True) == ["uplink:h3"]
    assert host.call(NETBACK, "links")["h3"]["frames"] == 1


def test_netback_uplink_latency_holds_frames_until_the_link_delivers_them(
        host, clock, netback):
    """``set_link``'s latency (tc netem): a frame reaches the peer when the clock says its
    link delivered it, not before."""
    netback(runtime=clock)
    h2 = peer(host, "h2")
    host.call(NETBACK, "set_peers", ["h2"])
    host.call(NETBACK, "set_link", "h2", {"latency_s": 0.025})
    a = create(host, "xenbr0")
    connected(host, a)
    hello = frame(BROADCAST, a.mac(), b"over a slow link")
    assert a.nics[0].send(hello)
    host.pump()
    assert h2 == [] and host.call(NETBACK, "statistics")["uplinks"]["queued"] == 1
    clock.advance(0.020)
    host.pump()
    assert h2 == []
    clock.advance(0.010)
    host.until(lambda: h2, "the frame at h2")
    assert h2 == [("h1", "xenbr0", [hello])]
    row = host.call(NETBACK, "links")["h2"]
    assert (row["latency_s"], row["loss"], row["frames"], row["lost"]) == (0.025, 0.0, 1, 0)


def test_netback_partition_and_link_fault_on_the_uplinks_survive_a_restart(host, netback):
    """``set_partition`` drops frames to and from the hosts it names (counted), a fault
    composes on the shaping and clearing it gives the shaping back; a restarted netback
    reads all of it back from xenstore."""
    netback()
    h2, h3 = peer(host, "h2"), peer(host, "h3")
    host.call(NETBACK, "set_peers", ["h2", "h3"])
    host.call(NETBACK, "set_link", "h2", {"latency_s": 0.001})
    host.call(NETBACK, "set_link_fault", "h2", {"latency_s": 0.002, "duplicate": 1.0})
    host.call(NETBACK, "set_partition", ["h3"])
    a = create(host, "xenbr0")
    connected(host, a)
    hello = frame(BROADCAST, a.mac(), b"who is there?")
    assert a.nics[0].send(hello)
    host.until(lambda: [f for _, _, frames in h2 for f in frames] == [hello] * 2,
               "both copies at h2")
    reply = frame(a.mac(), "00:16:3e:7f:00:03", b"h3 here")
    host.call(NETBACK, "frames", "h3", "xenbr0", [reply])
    host.call(NETBACK, "frames", "h2", "xenbr0", [reply])
    host.until(lambda: a.inbox[0], "h2's frame at a")
    assert a.inbox[0] == [reply] and h3 == []
    links = host.call(NETBACK, "links")
    assert (links["h2"]["latency_s"], links["h2"]["base"]["latency_s"]) == (0.003, 0.001)
    assert (links["h2"]["duplicated"], links["h2"]["frames"]) == (1, 2)
    assert links["h3"]["blocked"] and links["h3"]["partitioned"] == 2  # one each way
    with pytest.raises(ValueError, match="no uplink to h1, h9"):
        host.call(NETBACK, "set_partition", ["h1", "h9"])
    with pytest.raises(ValueError, match="not a link property"):
        host.call(NETBACK, "set_link_fault", "h2", {"delay": 1})
    with pytest.raises(ValueError, match="reordering needs a latency"):
        host.call(NETBACK, "set_link_fault", "h3", {"reorder": 0.5})
    netback()  # a restart: the same peers, links, fault and partition from xenstore
    links = host.call(NETBACK, "links")
    assert links["h2"]["fault"]["duplicate"] == 1.0 and links["h3"]["blocked"]
    host.call(NETBACK, "set_link_fault", "h2", None)
    host.call(NETBACK, "set_partition", [])
    links = host.call(NETBACK, "links")
    assert (links["h2"]["latency_s"], links["h2"]["fault"], links["h3"]["blocked"]) == \
        (0.001, None, False)


def test_netback_capture_taps_a_bridge_with_a_bounded_buffer(host, netback):
    back = netback()
    peer(host, "h2")
    host.call(NETBACK, "set_peers", ["h2"])
    a = create(host, "xenbr0")
    connected(host, a)
    cap = host.call(NETBACK, "capture_start", "xenbr0", 2)
    frames = [frame(a.mac(), f"00:16:3e:7f:00:0{i}", bytes([i])) for i in range(1, 4)]
    host.call(NETBACK, "frames", "h2", "xenbr0", frames)
    got = host.call(NETBACK, "capture_read", cap)
    assert [f for _, f in got] == frames[1:]  # the oldest was dropped
    assert all(isinstance(ts, float) for ts, _ in got)
    assert back.on_statistics()["captures"][cap]["dropped"] == 1
    assert host.call(NETBACK, "capture_read", cap) == []  # drained
    host.call(NETBACK, "capture_stop", cap)
    host.call(NETBACK, "frames", "h2", "xenbr0", frames[:1])
    assert cap not in back.on_statistics()["captures"]
