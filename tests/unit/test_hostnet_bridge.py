"""Dom0's learning bridge (actors/hostnet/bridge.py): Linux net/bridge br_fdb.c and br_forward.c
semantics, with frames built by dpkt and a fake clock for ageing."""

import socket
import time

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.hostnet.bridge import Bridge
from tests.clock import ManualRuntime

MAC = {n: bytes.fromhex(f"00163e0000{n:02x}") for n in range(1, 8)}
BCAST = b"\xff" * 6


def frame(src: bytes, dst: bytes, payload: bytes = b"hello") -> bytes:
    udp = dpkt.udp.UDP(sport=1000, dport=2000, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"),
                    p=dpkt.ip.IP_PROTO_UDP, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=dpkt.ethernet.ETH_TYPE_IP,
                                        data=ip))


def arp_request(src: bytes) -> bytes:
    arp = dpkt.arp.ARP(sha=src, spa=socket.inet_aton("10.0.0.1"), tha=bytes(6),
                       tpa=socket.inet_aton("10.0.0.2"), op=dpkt.arp.ARP_OP_REQUEST)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=BCAST, type=dpkt.ethernet.ETH_TYPE_ARP,
                                        data=arp))


class Net:
    """A bridge with ports whose deliveries are recorded per port."""

    def __init__(self, *ports, ageing_s=300.0):
        self.clock = ManualRuntime()
        self.br = Bridge("xenbr0", clock=self.clock.monotonic, ageing_s=ageing_s)
        self.out: dict[str, list[bytes]] = {}
        for p in ports:
            self.add(p)

    def add(self, port):
        self.out[port] = []
        self.br.add_port(port, self.out[port].append)

    def send(self, port, f):
        """Clear the records, receive ``f`` on ``port``, return the ports it went out of."""
        for rec in self.out.values():
            rec.clear()
        self.br.receive(port, f)
        got = sorted(p for p, rec in self.out.items() if rec)
        assert all(rec == [f] for rec in self.out.values() if rec)  # once, unchanged
        return got


def test_bridge_br_fdb_learns_source_and_forwards_known_unicast_to_one_port():
    n = Net("vif1.0", "vif2.0", "vif3.0")
    assert n.send("vif1.0", arp_request(MAC[1])) == ["vif2.0", "vif3.0"]
    assert n.br.fdb() == {"00:16:3e:00:00:01": "vif1.0"}
    assert n.send("vif2.0", frame(MAC[2], MAC[1])) == ["vif1.0"]
    assert n.send("vif1.0", frame(MAC[1], MAC[2])) == ["vif2.0"]
    s = n.br.stats
    assert (s["received"], s["flooded"], s["forwarded"], s["learned"]) == (3, 1, 2, 2)


def test_bridge_br_forward_floods_unknown_unicast_broadcast_and_multicast():
    n = Net("a", "b", "c")
    n.send("a", frame(MAC[1], MAC[2]))
    for dst in (MAC[5], BCAST, bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")):
        assert n.send("b", frame(MAC[2], dst)) == ["a", "c"]
    # Multicast is flooded even if someone used that address as a (bogus) source.
    n.send("c", frame(bytes.fromhex("01005e000001"), MAC[1]))
    assert n.send("b", frame(MAC[2], bytes.fromhex("01005e000001"))) == ["a", "c"]


def test_bridge_br_forward_never_sends_back_out_of_the_ingress_port():
    n = Net("a", "b")
    n.send("a", frame(MAC[1], BCAST))
    n.send("a", frame(MAC[2], BCAST))  # both MACs behind port a (a hub behind it)
    assert n.send("a", frame(MAC[1], MAC[2])) == []
    assert n.br.stats["dropped_local"] == 1
    assert n.send("a", frame(MAC[1], BCAST)) == ["b"]


def test_bridge_br_handle_frame_drops_multicast_or_zero_source_and_runts():
    n = Net("a", "b")
    for bad in (frame(BCAST, MAC[2]), frame(bytes.fromhex("01005e000001"), MAC[2]),
                frame(bytes(6), MAC[2]), MAC[2] + MAC[1], b""):
        assert n.send("a", bad) == []
    assert n.br.fdb() == {}
    assert n.br.stats["dropped_invalid"] == 5


def test_bridge_br_fdb_update_moves_a_mac_to_the_port_it_was_last_seen_on():
    n = Net("a", "b", "c")
    n.send("a", frame(MAC[1], BCAST))
    n.send("b", frame(MAC[1], BCAST))  # the guest migrated behind port b
    assert n.br.fdb()["00:16:3e:00:00:01"] == "b"
    assert n.send("c", frame(MAC[3], MAC[1])) == ["b"]
    assert n.br.stats["moved"] == 1


def test_bridge_split_horizon_between_uplinks():
    n = Net("vif1.0", "uplink:hostB", "uplink:hostC")
    assert n.send("uplink:hostB", arp_request(MAC[4])) == ["vif1.0"]
    assert n.send("vif1.0", arp_request(MAC[1])) == ["uplink:hostB", "uplink:hostC"]
    # A known MAC behind another uplink is not reached through this host either.
    n.send("uplink:hostC", frame(MAC[5], BCAST))
    assert n.send("uplink:hostB", frame(MAC[4], MAC[5])) == []
    assert n.send("uplink:hostB", frame(MAC[4], MAC[1])) == ["vif1.0"]
    assert n.send("vif1.0", frame(MAC[1], MAC[5])) == ["uplink:hostC"]


def test_bridge_br_fdb_ageing_with_a_fake_clock():
    n = Net("a", "b", "c", ageing_s=300.0)
    n.send("a", frame(MAC[1], BCAST))
    n.clock.advance(299.0)
    assert n.send("b", frame(MAC[2], MAC[1])) == ["a"]
    n.send("a", frame(MAC[1], BCAST))  # refreshed at +299
    n.clock.advance(299.0)
    assert n.send("b", frame(MAC[2], MAC[1])) == ["a"]
    n.clock.advance(1.0)  # 300 s since MAC 1 was last seen: expired (updated + ageing <= now)
    assert n.send("c", frame(MAC[3], MAC[1])) == ["a", "b"]
    assert "00:16:3e:00:00:01" not in n.br.fdb()
    assert n.br.stats["aged"] >= 1
    n.clock.advance(300.0)
    assert n.br.fdb() == {}


def test_bridge_ageing_zero_is_a_hub():
    n = Net("a", "b", "c", ageing_s=0)
    n.send("a", frame(MAC[1], BCAST))
    assert n.send("b", frame(MAC[2], MAC[1])) == ["a", "c"]
    with pytest.raises(ValueError, match="ageing"):
        Bridge("x", ageing_s=-1)


def test_bridge_remove_port_forgets_its_macs():
    n = Net("a", "b", "c")
    n.send("a", frame(MAC[1], BCAST))
    n.send("b", frame(MAC[2], BCAST))
    n.br.remove_port("a")
    assert n.br.fdb() == {"00:16:3e:00:00:02": "b"}
    del n.out["a"]
    assert n.send("c", frame(MAC[3], MAC[1])) == ["b"]
    assert n.send("a", frame(MAC[1], MAC[3])) == []  # no longer a port
    assert n.br.stats["dropped_no_port"] == 1
    n.br.remove_port("a")  # idempotent
    n.add("a")
    assert n.br.ports() == ["b", "c", "a"]
    with pytest.raises(ValueError, match="already"):
        n.br.add_port("a", print)


def test_bridge_taps_see_every_frame_with_a_wall_clock_time():
    n = Net("a", "b")
    seen: list[tuple[float, bytes]] = []
    tap = n.br.add_tap(lambda ts, f: seen.append((ts, f)))
    before = time.time()
    frames = [frame(MAC[1], BCAST), frame(MAC[2], MAC[1]), frame(BCAST, MAC[1])]
    n.send("a", frames[0])
    n.send("b", frames[1])
    n.send("a", frames[2])  # dropped, but seen on the wire
    assert [f for _, f in seen] == frames
    assert all(before <= ts <= time.time() for ts, _ in seen)
    n.br.remove_tap(tap)
    n.send("a", frames[0])
    assert len(seen) == 3


def test_bridge_a_failing_port_does_not_stop_the_flood():
    n = Net("a", "c")

    def broken(_frame):
        raise RuntimeError("actor died")

    n.br.add_port("b", broken)
    assert n.send("a", frame(MAC[1], BCAST)) == ["c"]
    assert n.br.stats["callback_errors"] == 1


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "uplink:x", "uplink:y"]),
                          st.sampled_from(list(MAC.values()) + [BCAST]),
                          st.sampled_from(list(MAC.values()) + [BCAST]),
                          st.floats(0, 200)), max_size=40))
def test_bridge_invariants_no_hairpin_no_uplink_to_uplink(events):
    n = Net("a", "b", "uplink:x", "uplink:y", ageing_s=300.0)
    for port, src, dst, dt in events:
        n.clock.advance(dt)
        out = n.send(port, frame(src, dst))
        assert port not in out
        if port.startswith("uplink:"):
            assert not any(p.startswith("uplink:") for p in out)
        if src == BCAST:
            assert out == []
        else:
            assert n.br.fdb()[src.hex(":")] == port
