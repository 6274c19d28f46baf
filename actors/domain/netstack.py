"""A small IPv4 stack for one guest NIC: ARP, ICMP echo and UDP, built and parsed with dpkt.

Why: guest workloads (ping, UDP streams) need a network above netfront, and the bridge and
its uplinks need the ARP traffic a real guest makes, gratuitous ARP included (Linux
``netdev_notify_peers`` after a backend reconnect, xen-reference.md 19.4). It behaves as a
Linux host on one Ethernet: ARP answers requests for our address, creates an entry for the
sender of a request for us or of an answer we asked for, and only refreshes entries it has
otherwise (``arp_accept`` = 0), and probes an entry gone stale by unicast, as Linux's NUD
does (:meth:`NetStack._due_probe`); it takes frames for our MAC, and broadcast ones for ARP only;
IPv4 datagrams must be for our address, with a valid header checksum and not fragmented
(there is no reassembly; MTU 1500 needs none). Echo replies go to the request's source MAC.
What it sends carries valid IP, ICMP and UDP checksums (dpkt fills zero ones in).

Threads: frames arrive on the NIC's upcall thread (``receive``); callers (an init program on
the vCPU thread) wait on one condition variable. No lock is held while a frame is sent, so a
NIC that delivers synchronously (a test wire) may re-enter :meth:`receive`.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import time
from collections.abc import Callable
from socket import inet_ntoa
from typing import Protocol

import dpkt

from actors.domain.rungate import VcpuCondition
from protocols.errno import Errno, XenError

ETH_BROADCAST = b"\xff" * 6
ETH_ZERO = bytes(6)
_ETH_ARP, _ETH_IP = b"\x08\x06", b"\x08\x00"
REACHABLE_S, DELAY_S, RETRANS_S = 30.0, 5.0, 1.0  # Linux's neigh defaults: base_reachable_time,
# delay_first_probe_time, retrans_time
ARP_OP_REQUEST, ARP_OP_REPLY = dpkt.arp.ARP_OP_REQUEST, dpkt.arp.ARP_OP_REPLY
IP_TTL = 64  # Linux ip_default_ttl
UDP_RCVQ_MAX = 256  # datagrams a socket queues before it drops (SO_RCVBUF, "RcvbufErrors")
EPHEMERAL_PORTS = range(32768, 61000)  # Linux ip_local_port_range
PING_DATA = bytes(range(56))  # ping's default 56 data bytes
_IP_MF_OFFSET = 0x3FFF  # the more-fragments bit and the fragment offset


class Nic(Protocol):
    """What the stack needs of a NIC (a :class:`actors.domain.netfront.Netfront`)."""

    mac: str | None
    ip: str | None
    mtu: int
    on_receive: Callable[[bytes], None] | None
    on_reconnect: Callable[[], None] | None

    def send(self, frame: bytes) -> bool: ...


def mac_bytes(mac: str | None) -> bytes:
    """``"00:16:3e:01:02:03"`` as 6 bytes; XenError(EINVAL) otherwise."""
    try:
        raw = bytes.fromhex((mac or "").replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise XenError(Errno.EINVAL, f"not a MAC address: {mac!r}")
    return raw


def ip_bytes(ip: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError:
        raise XenError(Errno.EINVAL, f"not an IPv4 address: {ip!r}") from None


class UdpSocket:
    """A bound UDP port: datagrams queue (at most UDP_RCVQ_MAX) until :meth:`recv`."""

    def __init__(self, stack: NetStack, port: int) -> None:
        self.stack, self.port = stack, port
        self.closed = False
        self._queue: collections.deque[tuple[str, int, bytes]] = collections.deque()

    def recv(self, timeout: float | None = None) -> tuple[str, int, bytes] | None:
        """The next datagram as (source IP, source port, payload); None after ``timeout``
        seconds (None: wait for ever) or once closed."""
        with self.stack._cv:
            self.stack._cv.wait_for(lambda: self._queue or self.closed, timeout)
            return self._queue.popleft() if self._queue else None

    def send(self, dst_ip: str, dst_port: int, payload: bytes) -> bool:
        return self.stack.udp_send(dst_ip, self.port, dst_port, payload)

    def close(self) -> None:
        self.stack._udp_unbind(self)


class NetStack:
    """IPv4 on ``nic``: its MAC, and ``ip`` (default the NIC's, ``<be>/ip``). It takes over
    the NIC's ``on_receive`` and ``on_reconnect``. ``clock`` stamps ping round trips (the
    guest's clock); ``sleep`` paces pings; waits for answers use real time."""

    def __init__(self, nic: Nic, *, ip: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 arp_timeout: float = 1.0, arp_retries: int = 3) -> None:
        self.nic = nic
        self._mac = mac_bytes(nic.mac)
        self._ip_override = ip
        self._ip_seen: tuple[str | None, bytes | None] = (None, None)
        self._clock, self._sleep = clock, sleep
        self.arp_timeout, self.arp_retries = arp_timeout, arp_retries  # Linux: 1 s, 3 probes
        # an RLock: stats may be counted while it is held; a vCPU waiting on it blocks in Xen
        self._cv = VcpuCondition()
        self._arp: dict[bytes, bytes] = {}  # IPv4 -> MAC
        self._confirmed: dict[bytes, float] = {}  # IPv4 -> when an ARP reply last came
        self._probed: dict[bytes, float] = {}  # IPv4 -> when a unicast probe last went
        self._resolving: set[bytes] = set()  # requests sent, no answer yet (INCOMPLETE)
        self._echo: dict[tuple[int, int], float | None] = {}  # (ident, seq) -> reply stamp
        self._udp: dict[int, UdpSocket] = {}
        self._ping_ids = itertools.count(1)
        self._ip_ids = itertools.count(1)
        self.stats = dict.fromkeys((
            "rx_frames tx_frames tx_busy rx_not_for_us rx_malformed rx_bad_checksum rx_unknown "
            "rx_fragments arp_requests_rx arp_replies_rx arp_requests_tx arp_replies_tx "
            "arp_gratuitous_tx arp_probes_tx arp_failed icmp_echo_requests_rx icmp_echo_replies_tx "
            "icmp_echo_requests_tx icmp_echo_replies_rx icmp_unexpected udp_rx udp_tx "
            "udp_no_port udp_rcvbuf_errors").split(), 0)
        nic.on_receive = self.receive
        nic.on_reconnect = self.gratuitous_arp

    @property
    def mac(self) -> str:
        return self._mac.hex(":")

    @property
    def ip(self) -> str | None:
        return self._ip_override or self.nic.ip

    def _my_ip(self) -> bytes | None:
        text = self.ip
        if text != self._ip_seen[0]:
            self._ip_seen = (text, ip_bytes(text) if text else None)
        return self._ip_seen[1]

    def _need_ip(self) -> bytes:
        me = self._my_ip()
        if me is None:
            raise XenError(Errno.EADDRNOTAVAIL, f"no IPv4 address on {self.mac}")
        return me

    def _count(self, key: str, n: int = 1) -> None:
        with self._cv:
            self.stats[key] += n

    def _send(self, frame: bytes) -> bool:
        ok = self.nic.send(frame)  # no lock held: the NIC may deliver at once
        self._count("tx_frames" if ok else "tx_busy")
        return ok

    # -- receive ---------------------------------------------------------------------------

    def receive(self, frame: bytes) -> None:
        """A frame from the NIC: ARP for us or broadcast, IPv4 for our MAC; the rest drops."""
        self._count("rx_frames")
        if len(frame) < 14:
            return self._count("rx_malformed")
        dst, ethertype = frame[:6], frame[12:14]
        if ethertype == _ETH_ARP and dst in (self._mac, ETH_BROADCAST):
            self._rx_arp(frame[14:])
        elif dst != self._mac:
            self._count("rx_not_for_us")
        elif ethertype == _ETH_IP:
            self._rx_ip(frame[14:], frame[6:12])
        else:
            self._count("rx_unknown")

    def _rx_arp(self, data: bytes) -> None:
        try:
            arp = dpkt.arp.ARP(data)
        except dpkt.Error:
            return self._count("rx_malformed")
        if (arp.hrd, arp.pro, arp.hln, arp.pln) != (dpkt.arp.ARP_HRD_ETH, dpkt.arp.ARP_PRO_IP,
                                                    6, 4) or arp.op not in (1, 2):
            return self._count("rx_malformed")
        me = self._my_ip()
        for_me = me is not None and arp.tpa == me
        with self._cv:
            self.stats["arp_requests_rx" if arp.op == ARP_OP_REQUEST else "arp_replies_rx"] += 1
            if arp.sha != self._mac and arp.spa not in (bytes(4), me) and (
                    for_me or arp.spa in self._arp or arp.spa in self._resolving):
                if arp.op == ARP_OP_REPLY:  # a reply confirms (REACHABLE)
                    self._confirmed[arp.spa] = self._clock()
                elif arp.spa not in self._arp:  # a request creates a STALE entry
                    self._confirmed[arp.spa] = self._clock() - REACHABLE_S
                self._arp[arp.spa] = arp.sha
                self._resolving.discard(arp.spa)
                self._cv.notify_all()
        if arp.op == ARP_OP_REQUEST and for_me and arp.spa != me:
            self._send_arp(ARP_OP_REPLY, arp.sha, arp.sha, arp.spa)
            self._count("arp_replies_tx")

    def _rx_ip(self, raw: bytes, src_mac: bytes) -> None:
        me = self._my_ip()
        hl = (raw[0] & 0x0F) * 4 if raw else 0
        total = int.from_bytes(raw[2:4], "big") if len(raw) >= 4 else 0
        if len(raw) < 20 or raw[0] >> 4 != 4 or hl < 20 or not hl <= total <= len(raw):
            return self._count("rx_malformed")
        if dpkt.in_cksum(raw[:hl]):
            return self._count("rx_bad_checksum")
        if me is None or raw[16:20] != me:
            return self._count("rx_not_for_us")
        if int.from_bytes(raw[6:8], "big") & _IP_MF_OFFSET:
            return self._count("rx_fragments")  # no reassembly
        try:
            ip = dpkt.ip.IP(raw[:total])
        except dpkt.Error:
            return self._count("rx_malformed")
        l4 = raw[hl:total]
        if ip.p == dpkt.ip.IP_PROTO_ICMP:
            self._rx_icmp(ip, l4, src_mac)
        elif ip.p == dpkt.ip.IP_PROTO_UDP:
            self._rx_udp(ip, l4)
        else:
            self._count("rx_unknown")

    def _rx_icmp(self, ip: dpkt.ip.IP, l4: bytes, src_mac: bytes) -> None:
        icmp = ip.data
        if not isinstance(icmp, dpkt.icmp.ICMP):
            return self._count("rx_malformed")
        if dpkt.in_cksum(l4):
            return self._count("rx_bad_checksum")
        echo = icmp.data
        if not isinstance(echo, dpkt.icmp.ICMP.Echo):
            return self._count("rx_unknown")  # only echo is served
        if icmp.type == dpkt.icmp.ICMP_ECHO:
            self._count("icmp_echo_requests_rx")
            reply = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHOREPLY, code=0, data=dpkt.icmp.ICMP.Echo(
                id=echo.id, seq=echo.seq, data=echo.data))
            if self._send(self._ip_frame(src_mac, ip.src, dpkt.ip.IP_PROTO_ICMP, reply)):
                self._count("icmp_echo_replies_tx")
        elif icmp.type == dpkt.icmp.ICMP_ECHOREPLY:
            now = self._clock()
            with self._cv:
                key = (echo.id, echo.seq)
                if key in self._echo and self._echo[key] is None:
                    self._echo[key] = now
                    self.stats["icmp_echo_replies_rx"] += 1
                    self._cv.notify_all()
                else:
                    self.stats["icmp_unexpected"] += 1  # late, duplicate or not ours

    def _rx_udp(self, ip: dpkt.ip.IP, l4: bytes) -> None:
        udp = ip.data
        if not isinstance(udp, dpkt.udp.UDP) or not 8 <= udp.ulen <= len(l4):
            return self._count("rx_malformed")
        if udp.sum and dpkt.in_cksum(ip.src + ip.dst + bytes((0, dpkt.ip.IP_PROTO_UDP))
                                     + udp.ulen.to_bytes(2, "big") + l4[:udp.ulen]):
            return self._count("rx_bad_checksum")
        with self._cv:
            sock = self._udp.get(udp.dport)
            if sock is None:
                self.stats["udp_no_port"] += 1
            elif len(sock._queue) >= UDP_RCVQ_MAX:
                self.stats["udp_rcvbuf_errors"] += 1
            else:
                sock._queue.append((inet_ntoa(ip.src), udp.sport, bytes(l4[8:udp.ulen])))
                self.stats["udp_rx"] += 1
                self._cv.notify_all()

    # -- ARP -------------------------------------------------------------------------------

    def _send_arp(self, op: int, eth_dst: bytes, tha: bytes, tpa: bytes) -> bool:
        me = self._need_ip()
        arp = dpkt.arp.ARP(op=op, sha=self._mac, spa=me, tha=tha, tpa=tpa)
        return self._send(bytes(dpkt.ethernet.Ethernet(dst=eth_dst, src=self._mac,
                                                       type=dpkt.ethernet.ETH_TYPE_ARP,
                                                       data=arp)))

    def gratuitous_arp(self) -> bool:
        """Announce our MAC for our IP (Linux ``inetdev_send_gratuitous_arp``): a broadcast
        ARP request with sender and target address both ours and a zero target MAC. False if
        there is no address or the NIC refused it."""
        me = self._my_ip()
        if me is None:
            return False
        sent = self._send_arp(ARP_OP_REQUEST, ETH_BROADCAST, ETH_ZERO, me)
        if sent:
            self._count("arp_gratuitous_tx")
        return sent

    def resolve(self, ip: str, timeout: float | None = None,
                retries: int | None = None) -> str | None:
        """The MAC of ``ip`` from the cache, else by broadcast ARP requests (``retries`` of
        them, ``timeout`` seconds apart); None if nobody answers."""
        mac = self._resolve(ip_bytes(ip), self.arp_retries if retries is None else retries,
                            self.arp_timeout if timeout is None else timeout)
        return mac.hex(":") if mac is not None else None

    def _resolve(self, dst: bytes, tries: int, per_try: float) -> bytes | None:
        self._need_ip()
        for _ in range(max(1, tries)):
            with self._cv:
                if dst in self._arp:
                    mac, probe = self._arp[dst], self._due_probe(dst)
                    break
                self._resolving.add(dst)
            if self._send_arp(ARP_OP_REQUEST, ETH_BROADCAST, ETH_ZERO, dst):
                self._count("arp_requests_tx")
            with self._cv:
                if self._cv.wait_for(lambda: dst in self._arp, per_try):
                    return self._arp[dst]
        else:
            with self._cv:
                self._resolving.discard(dst)
                self.stats["arp_failed"] += 1
            return None
        if probe and self._send_arp(ARP_OP_REQUEST, mac, ETH_ZERO, dst):
            self._count("arp_probes_tx")
        return mac

    def _due_probe(self, dst: bytes) -> bool:
        """Under the lock: is a unicast probe of ``dst``'s entry due? Linux's NUD: an entry
        not confirmed for ``REACHABLE_S`` is STALE; sending on it probes the cached MAC after
        ``DELAY_S``, every ``RETRANS_S`` until a reply confirms it (UDP confirms nothing
        else). The reply is what keeps a one-way stream's receiver in the bridges' tables:
        without it, its entry ages out after 300 s and the stream floods every port. An
        entry is never dropped for want of replies (a send never waits on a re-resolve)."""
        now = self._clock()
        if now - self._confirmed.get(dst, now) < REACHABLE_S + DELAY_S or \
                now - self._probed.get(dst, -RETRANS_S) < RETRANS_S:
            return False
        self._probed[dst] = now
        return True

    def arp_cache(self) -> dict[str, str]:
        with self._cv:
            return {inet_ntoa(ip): mac.hex(":") for ip, mac in self._arp.items()}

    # -- IP, ICMP, UDP ---------------------------------------------------------------------

    def _ip_frame(self, dst_mac: bytes, dst_ip: bytes, proto: int, l4: dpkt.Packet) -> bytes:
        """Ethernet + IPv4 around ``l4``; dpkt computes the zero checksums (IP, ICMP, UDP)."""
        ip = dpkt.ip.IP(src=self._need_ip(), dst=dst_ip, p=proto, ttl=IP_TTL,
                        id=next(self._ip_ids) & 0xFFFF, data=l4)
        return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=self._mac,
                                            type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    def ping(self, ip: str, count: int = 4, interval: float = 1.0,
             timeout: float = 1.0, *, ident: int | None = None,
             first_seq: int = 1) -> list[float | None]:
        """ICMP echo requests to ``ip``, ``interval`` seconds apart (from one send to the
        next); each waits at most ``timeout`` seconds for ARP and its reply. Returns each
        round trip in seconds of ``clock``, None for a lost one. ``ident`` (default: a new one
        per call) and ``first_seq`` let a caller number a long run's requests itself."""
        dst = ip_bytes(ip)
        if ident is None:
            ident = next(self._ping_ids)
        ident &= 0xFFFF
        rtts: list[float | None] = []
        for seq in range(first_seq, first_seq + count):  # ping's icmp_seq starts at 1
            started = time.monotonic()
            rtts.append(self._ping_once(dst, ident, seq, started + timeout))
            rest = interval - (time.monotonic() - started)
            if seq < first_seq + count - 1 and rest > 0:
                self._sleep(rest)
        return rtts

    def _ping_once(self, dst: bytes, ident: int, seq: int, deadline: float) -> float | None:
        mac = self._resolve(dst, 1, deadline - time.monotonic())
        if mac is None:
            return None
        key = (ident & 0xFFFF, seq & 0xFFFF)
        with self._cv:
            self._echo[key] = None
        request = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, code=0, data=dpkt.icmp.ICMP.Echo(
            id=key[0], seq=key[1], data=PING_DATA))
        frame = self._ip_frame(mac, dst, dpkt.ip.IP_PROTO_ICMP, request)
        sent_at = self._clock()
        if self._send(frame):
            self._count("icmp_echo_requests_tx")
        with self._cv:
            self._cv.wait_for(lambda: self._echo[key] is not None,
                              max(0.0, deadline - time.monotonic()))
            stamp = self._echo.pop(key)
        return None if stamp is None else stamp - sent_at

    def udp_bind(self, port: int = 0) -> UdpSocket:
        """A socket on ``port`` (0: a free ephemeral one); EADDRINUSE if taken."""
        with self._cv:
            if port == 0:
                port = next((p for p in EPHEMERAL_PORTS if p not in self._udp), 0)
                if not port:
                    raise XenError(Errno.EADDRINUSE, "no free ephemeral UDP port")
            elif not 0 < port <= 0xFFFF:
                raise XenError(Errno.EINVAL, f"UDP port {port}")
            elif port in self._udp:
                raise XenError(Errno.EADDRINUSE, f"UDP port {port} is bound")
            sock = self._udp[port] = UdpSocket(self, port)
            return sock

    def _udp_unbind(self, sock: UdpSocket) -> None:
        with self._cv:
            if self._udp.get(sock.port) is sock:
                del self._udp[sock.port]
            sock.closed = True
            self._cv.notify_all()

    def udp_send(self, dst_ip: str, src_port: int, dst_port: int, payload: bytes) -> bool:
        """One UDP datagram (no fragmentation: at most MTU - 28 bytes of payload). False if
        ``dst_ip`` does not answer ARP or the NIC has no room."""
        dst = ip_bytes(dst_ip)
        mtu = self.nic.mtu
        if len(payload) > mtu - 28:
            raise XenError(Errno.E2BIG, f"{len(payload)} bytes of UDP payload, MTU {mtu}")
        if not (0 <= src_port <= 0xFFFF and 0 < dst_port <= 0xFFFF):
            raise XenError(Errno.EINVAL, f"UDP ports {src_port} -> {dst_port}")
        mac = self._resolve(dst, self.arp_retries, self.arp_timeout)
        if mac is None:
            return False
        udp = dpkt.udp.UDP(sport=src_port, dport=dst_port, ulen=8 + len(payload),
                           data=bytes(payload))
        sent = self._send(self._ip_frame(mac, dst, dpkt.ip.IP_PROTO_UDP, udp))
        if sent:
            self._count("udp_tx")
        return sent

    def statistics(self) -> dict:
        with self._cv:
            return {**self.stats, "mac": self.mac, "ip": self.ip, "arp_entries": len(self._arp),
                    "udp_ports": sorted(self._udp)}
