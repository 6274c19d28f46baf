"""netback's control path (actors.netback.xenbus) against real peers, in-process.

Reference 9 (netif keys, features, the hotplug hold-back, request-rx-copy), 10 (life-cycle),
19.2 (hostile ring), 19.4/19.6 (restart and reconnect). The peers are the real ones
(``tests.inprocess``): the hypervisor state machine, xenstored's server and, as each
guest's NIC, ``actors.domain.netfront.Netfront`` over the guest's own memory and grant
table. The test pumps the one-way messages (upcalls, watch events) as mailboxes would.
"""

import uuid

import pytest

from actors import memory
from actors.domain.blkfront import PagePool
from actors.domain.netfront import Netfront
from actors.netback.xenbus import FEATURES, Netback
from actors.toolstack.builder import add_device
from actors.toolstack.devices import VIF
from protocols import netif
from protocols.evtchn import EvtchnStat
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall
from protocols.libxl_types import VifSpec
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE
from tests.inprocess import HOST, InProcessHost, domain_endpoint

NETBACK = f"{HOST}/netback"
NR_PAGES = 1024  # each NIC grants 2 ring pages, 256 rx pages and TX_PAGES tx pages
TX_PAGES = 8
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental
BROADCAST = "ff:ff:ff:ff:ff:ff"


def frame(dst: str, src: str, payload: bytes = b"hello") -> bytes:
    """A minimal Ethernet II frame (padded to 60 bytes, no FCS)."""
    raw = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + \
        ETHERTYPE + payload
    return raw.ljust(60, b"\0")


class Guest:
    """A PV domain whose NICs are the real netfront, one per ``device/vif/<devid>``."""

    def __init__(self, world: "World", domid: int, secret: str) -> None:
        self.domid, endpoint = domid, domain_endpoint(domid)
        self.mapping = memory.Mapping(world.host.memory_path(domid))
        clients = world.host.clients(endpoint, domid, secret)
        self.hv, self.xs = clients.hv, clients.xs
        self.table = GrantTable(self.mapping.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        self.grefs = GrantRefAllocator(self.table.nr_entries)
        self.pages = PagePool(self.mapping.page, PFN_FIRST_FREE, NR_PAGES - PFN_FIRST_FREE)
        self.nics: dict[int, Netfront] = {}
        self.inbox: dict[int, list[bytes]] = {}
        world.host.endpoints[endpoint] = {"upcall": self.upcall, "xs_event": self.xs.on_event}

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

    def upcall(self, domid: int, ports: list[int]) -> None:
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


class World:
    def __init__(self) -> None:
        self.host = InProcessHost(f"/dev/shm/xenray-test-netback-{uuid.uuid4().hex[:12]}")
        self.xs = self.host.xs
        self.backends: list[Netback] = []

    def start_netback(self) -> Netback:
        """A (new) netback on Dom0's ``h1/netback`` connection, as after an actor restart."""
        dom0 = self.host.clients(NETBACK)
        back = Netback(HOST, dom0.hv, dom0.xs)
        self.host.endpoints[NETBACK] = {"upcall": lambda d, ports: back.upcall(ports),
                                        "xs_event": dom0.xs.on_event}
        back.start()
        self.backends.append(back)
        return back

    def create(self, *bridges: str, probe: bool = True) -> Guest:
        """A domain with one vif per bridge named, as the toolstack builds one."""
        domid, secret = self.host.create_domain(NR_PAGES)

        def body(t: int) -> None:
            dom = f"/local/domain/{domid}"
            self.xs.write(dom, "", tx_id=t)
            self.xs.set_perms(dom, ["n0", f"r{domid}"], tx_id=t)
            for devid, bridge in enumerate(bridges):
                add_device(self.xs, t, domid, VIF, VifSpec(
                    devid=devid, mac=f"00:16:3e:00:{domid:02x}:{devid:02x}", bridge=bridge))

        self.xs.transact(body)
        self.host.introduce(domid, secret)
        guest = Guest(self, domid, secret)
        if probe:
            guest.probe()
        return guest

    @staticmethod
    def fe(domid: int, devid: int = 0) -> str:
        return f"/local/domain/{domid}/device/vif/{devid}"

    @staticmethod
    def be(domid: int, devid: int = 0) -> str:
        return f"/local/domain/0/backend/vif/{domid}/{devid}"

    def read(self, path: str) -> str | None:
        return self.xs.read_str(path, default="\0")

    def states(self, guest: Guest, devid: int = 0) -> tuple[str, str]:
        return (self.read(f"{self.be(guest.domid, devid)}/state"),
                self.read(f"{self.fe(guest.domid, devid)}/state"))

    def connected(self, *guests: Guest) -> None:
        self.host.until(lambda: all(self.states(g, d) == ("4", "4")
                                    for g in guests for d in g.nics), "both ends Connected")

    def close(self) -> None:
        for back in self.backends:
            back.close()
        self.host.close()


@pytest.fixture
def world():
    w = World()
    yield w
    w.close()


def _vif(back: Netback, guest: Guest, devid: int = 0) -> dict:
    return next(v for v in back.statistics()["vifs"]
                if (v["domid"], v["devid"]) == (guest.domid, devid))


def test_netback_9_probe_publishes_features_runs_hotplug_and_goes_init_wait(world):
    back = world.start_netback()
    guest = world.create("xenbr0", "xenbr1", probe=False)
    be0, be1 = world.be(guest.domid, 0), world.be(guest.domid, 1)
    world.host.until(lambda: world.read(f"{be0}/state") == world.read(f"{be1}/state") == "2",
                     "InitWait")
    for key, value in FEATURES.items():
        assert world.read(f"{be0}/{key}") == value, key
    assert world.read(f"{be0}/feature-rx-copy") == "1"
    assert world.read(f"{be0}/feature-rx-flip") == "0"
    for key in ("feature-split-event-channels", "multi-queue-max-queues", "feature-ctrl-ring",
                "feature-gso-tcpv4", "feature-gso-tcpv6", "feature-xdp-headroom"):
        assert world.read(f"{be0}/{key}") == "\0", key
    assert set(world.xs.directory(be0)) <= {*netif.TOOLSTACK_BACKEND_KEYS,
                                            *netif.BACKEND_FEATURE_KEYS}
    # vif-bridge: each vif is a port of the bridge its backend names, then hotplug-status.
    assert world.read(f"{be0}/hotplug-status") == world.read(f"{be1}/hotplug-status") == \
        "connected"
    assert back.bridges["xenbr0"].ports() == [f"vif{guest.domid}.0"]
    assert back.bridges["xenbr1"].ports() == [f"vif{guest.domid}.1"]


def test_netback_9_connected_is_held_back_until_hotplug_status_connected(world):
    back = world.start_netback()
    guest = world.create("xenbr0", probe=False)
    be = world.be(guest.domid)
    world.host.until(lambda: world.read(f"{be}/state") == "2", "InitWait")
    world.xs.write(f"{be}/hotplug-status", "")  # as if the script had not reported yet
    guest.probe()  # netfront publishes its rings and goes straight to Connected
    world.host.until(lambda: world.states(guest) == ("2", "4"), "frontend Connected")
    world.host.pump()
    assert world.read(f"{be}/state") == "2" and back.statistics()["connects"] == 0
    world.xs.write(f"{be}/hotplug-status", "connected")
    world.connected(guest)
    assert back.statistics()["connects"] == 1
    assert _vif(back, guest)["local_port"] is not None


def test_netback_9_frames_cross_the_bridge_between_vifs_and_not_to_other_bridges(world):
    back = world.start_netback()
    a, b = world.create("xenbr0"), world.create("xenbr0")
    c = world.create("xenbr1")
    world.connected(a, b, c)
    hello = frame(BROADCAST, a.mac(), b"who is there")
    assert a.nics[0].send(hello)
    world.host.until(lambda: b.inbox[0], "the broadcast at b")
    assert b.inbox[0] == [hello]
    reply = frame(a.mac(), b.mac(), b"b is here")
    assert b.nics[0].send(reply)
    world.host.until(lambda: a.inbox[0], "the unicast reply at a")
    assert a.inbox[0] == [reply]
    world.host.pump()
    assert c.inbox.get(0) == [] and b.inbox[0] == [hello]  # no flood of a known unicast
    fdb = back.bridges["xenbr0"].fdb()
    assert fdb == {a.mac(): f"vif{a.domid}.0", b.mac(): f"vif{b.domid}.0"}
    stats = _vif(back, a)
    assert (stats["tx_packets"], stats["rx_packets"]) == (1, 1)
    assert back.statistics()["bridges"]["xenbr0"]["fdb_entries"] == 2


def test_netback_9_frontend_without_request_rx_copy_is_refused_eopnotsupp(world):
    back = world.start_netback()
    guest = world.create("xenbr0", probe=False)
    be, fe = world.be(guest.domid), world.fe(guest.domid)
    world.host.until(lambda: world.read(f"{be}/state") == "2", "InitWait")
    for key, value in (("tx-ring-ref", "8"), ("rx-ring-ref", "9"), ("event-channel", "5"),
                       ("state", "4")):  # a frontend that only knows rx-flip
        guest.xs.write(f"{fe}/{key}", value)
    world.host.until(lambda: world.read(f"{be}/state") == "5", "Closing")
    error = world.read(f"{be}/error")
    assert "EOPNOTSUPP" in error and "request-rx-copy" in error
    stats = back.statistics()
    assert stats["errors"] == 1 and stats["connects"] == 0
    assert _vif(back, guest)["local_port"] is None


def test_netback_10_frontend_closing_disconnects_and_closed_closes(world):
    back = world.start_netback()
    guest = world.create("xenbr0")
    world.connected(guest)
    fe, be = world.fe(guest.domid), world.be(guest.domid)
    guest.xs.write(f"{fe}/state", "5")
    world.host.until(lambda: world.read(f"{be}/state") == "5", "backend Closing")
    assert _vif(back, guest)["local_port"] is None
    assert back.statistics()["disconnects"] == 1
    guest.xs.write(f"{fe}/state", "6")
    world.host.until(lambda: world.read(f"{be}/state") == "6", "backend Closed")
    assert back.bridges["xenbr0"].ports() == [f"vif{guest.domid}.0"]  # still plugged


def test_netback_10_unplug_and_removal_take_the_port_off_the_bridge(world):
    back = world.start_netback()
    guest = world.create("xenbr0", "xenbr0")
    world.connected(guest)
    be0, be1 = world.be(guest.domid, 0), world.be(guest.domid, 1)

    def unplug(t):  # libxl: online=0 and Closing in one transaction
        world.xs.write(f"{be0}/online", "0", tx_id=t)
        world.xs.write(f"{be0}/state", "5", tx_id=t)

    world.xs.transact(unplug)
    world.host.until(lambda: (guest.domid, 0) not in back.devices, "vif 0 unregistered")
    assert world.read(f"{be0}/state") == "6"
    assert back.bridges["xenbr0"].ports() == [f"vif{guest.domid}.1"]
    world.xs.rm(be0)
    world.xs.rm(be1)  # the toolstack removes a device without asking
    world.host.until(lambda: not back.devices, "vif 1 forgotten")
    assert back.bridges["xenbr0"].ports() == []
    assert world.read(f"{be0}/state") == "\0"  # nothing re-created


def test_netback_19_4_restarted_backend_recovers_and_frontends_reconnect(world):
    world.start_netback()
    a, b = world.create("xenbr0"), world.create("xenbr0")
    world.connected(a, b)
    old_port = world.backends[0].devices[(a.domid, 0)].local_port
    del world.host.endpoints[NETBACK]  # the actor dies: its upcalls go nowhere
    back = world.start_netback()  # Ray restarts it: same endpoint, same xenstore connection
    assert back.statistics()["recovered"] == 2
    world.connected(a, b)
    assert a.nics[0].statistics()["reconnects"] == 1
    status = world.host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=old_port)
    assert status["status"] == EvtchnStat.closed or old_port in {
        dev.local_port for dev in back.devices.values()}  # reused after the close
    assert sorted(back.bridges["xenbr0"].ports()) == sorted(
        [f"vif{a.domid}.0", f"vif{b.domid}.0"])
    hello = frame(b.mac(), a.mac(), b"after the restart")
    assert a.nics[0].send(hello)
    world.host.until(lambda: hello in b.inbox[0], "a frame over the new rings")


def test_netback_19_2_hostile_tx_ring_disconnects_that_vif_only(world):
    back = world.start_netback()
    a, b = world.create("xenbr0", "xenbr0"), world.create("xenbr0")
    world.connected(a, b)
    bad = a.nics[0]
    tx_page = a.mapping.page(a.table.frame(int(world.read(f"{world.fe(a.domid)}/tx-ring-ref"))))
    req_prod = tx_page.cast("I")
    req_prod[0] = (req_prod[0] + 1000) & 0xFFFFFFFF  # far past RING_SIZE: overflow
    a.hv(Hypercall.event_channel_op, EvtchnOp.send, port=bad.evtchn)
    world.host.until(lambda: world.states(a, 0)[0] == "5" or world.states(a, 0) == ("6", "6"),
                     "hostile vif Closing")
    stats = back.statistics()
    assert stats["hostile"] == 1 and _vif(back, a, 0)["local_port"] is None
    assert world.states(a, 1) == ("4", "4") and world.states(b) == ("4", "4")
    # The other vifs still switch frames; frames to the broken one are dropped.
    hello = frame(BROADCAST, b.mac(), b"still here")
    assert b.nics[0].send(hello)
    world.host.until(lambda: hello in a.inbox.get(1, []), "the broadcast at a's other vif")
    assert hello not in a.inbox.get(0, [])
    assert _vif(back, a, 0)["carrier_dropped"] >= 1


def test_netback_uplinks_carry_frames_to_and_from_other_hosts(world):
    back = world.start_netback()
    a = world.create("xenbr0")
    world.connected(a)
    to_h2: list[bytes] = []
    back.uplink("xenbr0", "h2", to_h2.append)
    hello = frame(BROADCAST, a.mac(), b"anyone on h2?")
    assert a.nics[0].send(hello)
    world.host.until(lambda: to_h2, "the broadcast on the uplink")
    assert to_h2 == [hello]
    remote = "00:16:3e:7f:00:01"
    reply = frame(a.mac(), remote, b"h2 here")
    back.from_uplink("xenbr0", "h2", [reply])
    world.host.until(lambda: a.inbox[0], "the frame from h2 at a")
    assert a.inbox[0] == [reply]
    assert back.bridges["xenbr0"].fdb()[remote] == "uplink:h2"
    back.from_uplink("xenbr0", "h3", [reply])  # no uplink to h3 here
    back.from_uplink("xenbr9", "h2", [reply])  # no such bridge
    assert back.statistics()["uplink_dropped"] == 2
    # set_peers: an uplink per peer on every bridge, also bridges made later.
    sent: list[tuple[str, str, bytes]] = []

    def send(host, bridge, f):
        sent.append((host, bridge, f))

    back.set_peers(send, ["h2", "h3"])
    b = world.create("xenbr1")
    world.connected(b)
    assert sorted(p for p in back.bridges["xenbr1"].ports() if p.startswith("uplink:")) == [
        "uplink:h2", "uplink:h3"]
    ping = frame(BROADCAST, b.mac(), b"xenbr1")
    assert b.nics[0].send(ping)
    world.host.until(lambda: len(sent) == 2, "the broadcast to both peers")
    assert sorted(sent) == [("h2", "xenbr1", ping), ("h3", "xenbr1", ping)]
    back.set_peers(send, ["h3"])
    assert [p for p in back.bridges["xenbr0"].ports() if p.startswith("uplink:")] == [
        "uplink:h3"]


def test_netback_capture_taps_a_bridge_with_a_bounded_buffer(world):
    back = world.start_netback()
    a = world.create("xenbr0")
    world.connected(a)
    back.uplink("xenbr0", "h2", lambda f: None)
    cap = back.capture_start("xenbr0", limit=2)
    frames = [frame(a.mac(), f"00:16:3e:7f:00:0{i}", bytes([i])) for i in range(1, 4)]
    back.from_uplink("xenbr0", "h2", frames)
    got = back.capture_read(cap)
    assert [f for _, f in got] == frames[1:]  # the oldest was dropped
    assert all(isinstance(ts, float) for ts, _ in got)
    assert back.statistics()["captures"][cap]["dropped"] == 1
    assert back.capture_read(cap) == []  # drained
    back.capture_stop(cap)
    back.from_uplink("xenbr0", "h2", frames[:1])
    assert cap not in back.statistics()["captures"]
