"""The guest's IPv4 stack (actors.domain.netstack): ARP, ICMP echo, UDP over whole frames.

Stacks sit on fake NICs joined by a hub "wire" that hands every frame (bytes) to every other
NIC, synchronously unless asked otherwise, and can drop frames. What goes over the wire is
parsed back with dpkt and checked field by field (checksums included).
"""

import itertools
import threading

import dpkt
import pytest

from actors.domain.netstack import PING_DATA, NetStack
from protocols.errno import Errno, XenError
from tests.netwire import IPS, MACS, Nic, Wire

BROADCAST = b"\xff" * 6


def _b(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if ":" in text else bytes(map(int, text.split(".")))


def _arps(wire: Wire) -> list[dpkt.arp.ARP]:
    return [e.data for e in wire.parsed() if e.type == dpkt.ethernet.ETH_TYPE_ARP]


def _echo(frame: bytes, type_: int = dpkt.icmp.ICMP_ECHO):
    """The ICMP echo in ``frame``, if it is one of ``type_``."""
    eth = dpkt.ethernet.Ethernet(frame)
    if eth.type == dpkt.ethernet.ETH_TYPE_IP and isinstance(eth.data.data, dpkt.icmp.ICMP) \
            and eth.data.data.type == type_:
        return eth.data.data.data
    return None


def test_netstack_arp_resolves_and_answers_requests_for_our_ip():
    wire = Wire()
    a, b, c = wire.stack(0), wire.stack(1), wire.stack(2)
    assert a.resolve(IPS[1]) == MACS[1]
    request, reply = _arps(wire)
    eth_request, eth_reply = wire.parsed()
    assert eth_request.dst == BROADCAST and eth_reply.dst == _b(MACS[0])  # reply is unicast
    assert (request.op, request.sha, request.spa, request.tha, request.tpa) == (
        dpkt.arp.ARP_OP_REQUEST, _b(MACS[0]), _b(IPS[0]), bytes(6), _b(IPS[1]))
    assert (reply.op, reply.sha, reply.spa, reply.tha, reply.tpa) == (
        dpkt.arp.ARP_OP_REPLY, _b(MACS[1]), _b(IPS[1]), _b(MACS[0]), _b(IPS[0]))
    assert (reply.hrd, reply.pro, reply.hln, reply.pln) == (1, 0x0800, 6, 4)
    assert a.arp_cache() == {IPS[1]: MACS[1]}
    assert b.arp_cache() == {IPS[0]: MACS[0]}  # the sender of a request for us
    assert c.arp_cache() == {}  # a request for someone else creates nothing (arp_accept=0)
    assert c.statistics()["arp_replies_tx"] == 0 and b.statistics()["arp_replies_tx"] == 1
    assert a.resolve(IPS[1]) == MACS[1] and len(wire.frames) == 2  # cached: no new request


def test_netstack_arp_retries_a_lost_request_then_gives_up_on_silence():
    lost = itertools.count()
    wire = Wire(drop=lambda f: f[12:14] == b"\x08\x06" and f[:6] == BROADCAST and next(lost) == 0)
    a, _ = wire.stack(0, arp_timeout=0.02), wire.stack(1)
    assert a.resolve(IPS[1]) == MACS[1]
    assert a.statistics()["arp_requests_tx"] == 2  # the first was lost
    assert a.resolve("10.0.0.99", timeout=0.01, retries=3) is None
    stats = a.statistics()
    assert stats["arp_requests_tx"] == 5 and stats["arp_failed"] == 1


def test_netstack_19_4_gratuitous_arp_format_and_who_learns_from_it():
    wire = Wire()
    a, b, c = wire.stack(0), wire.stack(1), wire.stack(2)
    assert a.resolve(IPS[1]) == MACS[1]
    moved = Nic(wire, MACS[3], IPS[1])  # IPS[1] now answers at another MAC (a new vif)
    wire.nics.append(moved)
    d = NetStack(moved)
    wire.frames.clear()
    moved.on_reconnect()  # netfront's hook after a backend reconnect
    (eth,) = wire.parsed()
    garp = eth.data
    assert eth.dst == BROADCAST and eth.src == _b(MACS[3]) and eth.type == 0x0806
    assert (garp.hrd, garp.pro, garp.hln, garp.pln, garp.op) == (1, 0x0800, 6, 4, 1)
    assert garp.sha == _b(MACS[3]) and garp.spa == garp.tpa == _b(IPS[1])
    assert garp.tha == bytes(6)
    assert a.arp_cache()[IPS[1]] == MACS[3]  # an existing entry is updated
    assert IPS[1] not in c.arp_cache()  # no entry is created
    assert b.statistics()["arp_replies_tx"] == 1  # only the first request: no GARP answers
    assert b.arp_cache() == {IPS[0]: MACS[0]}  # not an entry for its own address
    assert d.statistics()["arp_gratuitous_tx"] == 1
    assert wire.stack(2, ip=None).gratuitous_arp() is False  # no address, nothing to say


def test_netstack_ping_rtts_use_the_injected_clock_and_pace_with_sleep():
    wire = Wire()
    ticks = itertools.count(step=0.25)
    slept: list[float] = []
    a = wire.stack(0, clock=lambda: next(ticks), sleep=slept.append)
    b = wire.stack(1)
    assert a.ping(IPS[1], count=3, interval=0.5, timeout=1.0) == [0.25, 0.25, 0.25]
    assert len(slept) == 2 and all(0.0 < s <= 0.5 for s in slept)  # between sends only
    requests = [_echo(f) for f in wire.frames if _echo(f)]
    assert [r.seq for r in requests] == [1, 2, 3] and all(r.data == PING_DATA for r in requests)
    ips = [e.data for e in wire.parsed() if e.type == dpkt.ethernet.ETH_TYPE_IP]
    assert len(ips) == 6 and all(ip.ttl == 64 for ip in ips)
    for frame in wire.frames:
        if frame[12:14] == b"\x08\x00":
            ip = frame[14:]
            assert dpkt.in_cksum(ip[:20]) == 0  # IP header checksum valid
            assert dpkt.in_cksum(ip[20:]) == 0  # ICMP checksum valid
    assert b.statistics()["icmp_echo_replies_tx"] == 3
    assert a.statistics()["icmp_echo_replies_rx"] == 3


def test_netstack_ping_reports_loss_when_the_wire_drops():
    wire = Wire(drop=lambda f: (e := _echo(f)) is not None and e.seq == 2)
    a, _ = wire.stack(0), wire.stack(1)
    rtts = a.ping(IPS[1], count=3, interval=0.0, timeout=0.05)
    assert rtts[1] is None and all(r is not None and r >= 0 for r in (rtts[0], rtts[2]))
    assert a.ping("10.0.0.99", count=2, interval=0.0, timeout=0.02) == [None, None]
    with pytest.raises(XenError) as e:
        wire.stack(2, ip=None).ping(IPS[0], count=1)
    assert e.value.errno == Errno.EADDRNOTAVAIL


def test_netstack_udp_delivery_ports_and_checksums():
    wire = Wire()
    a, b = wire.stack(0, arp_timeout=0.01), wire.stack(1)
    sock = b.udp_bind(5000)
    assert a.udp_send(IPS[1], 4000, 5000, b"payload")
    assert sock.recv(0) == (IPS[0], 4000, b"payload")
    assert sock.recv(timeout=0.01) is None
    eth = wire.parsed()[-1]
    ip, udp = eth.data, eth.data.data
    assert (udp.sport, udp.dport, udp.ulen) == (4000, 5000, 15) and udp.sum != 0
    raw = wire.frames[-1][14:]
    assert dpkt.in_cksum(raw[:20]) == 0
    pseudo = ip.src + ip.dst + b"\x00\x11" + (15).to_bytes(2, "big")
    assert dpkt.in_cksum(pseudo + raw[20:]) == 0  # UDP checksum valid
    assert a.udp_send(IPS[1], 4000, 5001, b"nobody")  # no socket: dropped and counted
    assert b.statistics()["udp_no_port"] == 1
    with pytest.raises(XenError) as e:
        b.udp_bind(5000)
    assert e.value.errno == Errno.EADDRINUSE
    ephemeral = b.udp_bind(0)
    assert ephemeral.port >= 32768
    assert ephemeral.send(IPS[0], 7, b"x") and b.statistics()["udp_tx"] == 1
    sock.close()
    assert sock.recv(timeout=None) is None and b.udp_bind(5000).port == 5000
    with pytest.raises(XenError):
        a.udp_send(IPS[1], 1, 2, bytes(1473))  # over MTU - 28: no fragmentation
    assert not a.udp_send("10.0.0.99", 1, 2, b"x")  # no ARP answer


def test_netstack_drops_frames_not_for_our_mac_or_ip():
    wire = Wire()
    a, b, c = wire.stack(0), wire.stack(1), wire.stack(2)
    assert a.ping(IPS[1], count=1, timeout=0.5)[0] is not None
    stats = c.statistics()
    assert stats["rx_not_for_us"] == 3 and stats["tx_frames"] == 0  # ARP reply, echo, reply
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"x"))

    def ip_frame(dst_mac: bytes, dst_ip: str, **fields) -> bytes:
        ip = dpkt.ip.IP(src=_b(IPS[0]), dst=_b(dst_ip), p=1, data=echo, **fields)
        return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=_b(MACS[0]), type=0x0800, data=ip))

    before = b.statistics()
    b.receive(ip_frame(_b(MACS[1]), IPS[2]))  # our MAC, another IP
    b.receive(ip_frame(BROADCAST, IPS[1]))  # IP in a broadcast frame
    b.receive(ip_frame(_b(MACS[2]), IPS[1]))  # another MAC
    bad = bytearray(ip_frame(_b(MACS[1]), IPS[1]))
    bad[14 + 10] ^= 0xFF  # corrupt the header checksum
    b.receive(bytes(bad))
    b.receive(ip_frame(_b(MACS[1]), IPS[1], mf=1))  # a fragment (more fragments follow)
    b.receive(b"\x00" * 10)
    after = b.statistics()
    assert after["rx_not_for_us"] - before["rx_not_for_us"] == 3
    assert after["rx_bad_checksum"] == 1 and after["rx_fragments"] == 1
    assert after["rx_malformed"] == 1
    assert after["icmp_echo_replies_tx"] == before["icmp_echo_replies_tx"]  # none answered


def test_netstack_replies_arriving_on_another_thread_wake_the_waiters():
    wire = Wire(threaded=True)
    try:
        a, b = wire.stack(0), wire.stack(1)
        rtts = a.ping(IPS[1], count=3, interval=0.0, timeout=2.0)
        assert all(r is not None for r in rtts)
        sock = b.udp_bind(9)
        got: list = []
        reader = threading.Thread(target=lambda: got.append(sock.recv(timeout=5.0)))
        reader.start()
        assert a.udp_send(IPS[1], 9, 9, b"late")
        reader.join(timeout=5.0)
        assert got == [(IPS[0], 9, b"late")]
    finally:
        wire.stop()


def test_netstack_a_stale_entry_is_probed_unicast_and_the_reply_confirms_it():
    """Linux's NUD: a UDP sender's entry of its receiver, unconfirmed for 30 s, goes STALE;
    sending on it probes the cached MAC 5 s later, then every 1 s, until a reply confirms it.
    That reply is what keeps a one-way stream's receiver in the bridges' tables."""
    now = [0.0]
    lost = [False]
    wire = Wire(drop=lambda f: lost[0] and f[12:14] == b"\x08\x06" and f[:6] != BROADCAST)
    a, b = wire.stack(0, clock=lambda: now[0]), wire.stack(1)
    sock = b.udp_bind(5000)

    def send():
        assert a.udp_send(IPS[1], 4000, 5000, b"x") and sock.recv(0) is not None
        return [(e.dst, e.data) for e in wire.parsed()[-2:] if e.type == 0x0806]

    send()  # resolved by broadcast: confirmed at t=0
    n = len(_arps(wire))
    now[0] = 34.0
    assert send() == [] and len(_arps(wire)) == n, "within 30 + 5 s: no probe"
    now[0] = 36.0
    lost[0] = True  # the probe and its answer are lost
    send()
    probe = _arps(wire)[n]
    assert (wire.parsed()[-2].dst, probe.op, probe.tpa, probe.tha) == (
        _b(MACS[1]), dpkt.arp.ARP_OP_REQUEST, _b(IPS[1]), bytes(6)), "unicast, to the cached MAC"
    assert a.statistics()["arp_probes_tx"] == 1
    now[0] = 36.5
    send()
    assert a.statistics()["arp_probes_tx"] == 1, "1 s between probes"
    lost[0] = False
    now[0] = 37.0
    send()  # probed again, answered: confirmed at 37
    assert a.statistics()["arp_probes_tx"] == 2 and b.statistics()["arp_replies_tx"] == 2
    now[0] = 70.0
    send()
    assert a.statistics()["arp_probes_tx"] == 2, "confirmed 33 s ago: REACHABLE + DELAY"
    assert a.arp_cache() == {IPS[1]: MACS[1]}, "never dropped"
