"""Network init programs: ``ping`` (ICMP echo, as iputils' ping prints it), ``udpstream``
(a UDP sender or receiver measuring packets/s, Mbit/s and loss) and ``nethostile`` (a
misbehaving network driver, for fault injection). Each prints on the console
and publishes its result (``GuestOS.result``), then stays up answering ARP and ping.

Both run on the guest's own network stack (``actors.domain.netstack``) over netfront: the
domain's IP comes from its vif's ``ip=`` (``GuestOS.net()``).
"""

from __future__ import annotations

import statistics
import struct

from actors.guest.api import GuestOS, option
from protocols.netif import FATAL_SKB_SLOTS, NetifTxRequest, NetTxFlag

UDP_PORT = 5001  # iperf's default
_STREAM = struct.Struct("!Qd")  # sequence number, sender's clock (s)


def _nic(os: GuestOS):
    return os.net(option(os, "nic", 0, int))


def _target(os: GuestOS) -> str:
    words = [w for w in os.argv if "=" not in w]
    dst = os.options().get("dst") or (words[0] if words else None)
    if dst is None:
        raise ValueError("ping: usage: ping IP [count=N] [interval=S] [timeout=S]")
    return dst


def rtt_summary(rtts: list[float | None]) -> dict[str, float]:
    """iputils' statistics line: transmitted, received, loss and min/avg/max/mdev (ms)."""
    got = [r * 1000 for r in rtts if r is not None]
    out = {"transmitted": len(rtts), "received": len(got),
           "loss_pct": round(100.0 * (len(rtts) - len(got)) / len(rtts), 1) if rtts else 0.0}
    if got:
        out.update(rtt_ms_min=round(min(got), 3), rtt_ms_avg=round(statistics.fmean(got), 3),
                   rtt_ms_max=round(max(got), 3), rtt_ms_mdev=round(statistics.pstdev(got), 3))
    return out


def ping(os: GuestOS) -> None:
    """``ping IP [count=4] [interval=1] [timeout=1]``: one line per reply, then the summary."""
    dst = _target(os)
    count = option(os, "count", 4, int)
    interval = option(os, "interval", 1.0, float)
    timeout = option(os, "timeout", 1.0, float)
    net = _nic(os)
    os.print(f"PING {dst} ({dst}) 56(84) bytes of data.")
    rtts: list[float | None] = []
    t0 = os.clock()
    for seq in range(1, count + 1):
        rtt = net.ping(dst, count=1, interval=0.0, timeout=timeout)[0]
        rtts.append(rtt)
        if rtt is None:
            os.print(f"no answer from {dst}: icmp_seq={seq}")
        else:
            os.print(f"64 bytes from {dst}: icmp_seq={seq} ttl=64 time={rtt * 1000:.3f} ms")
        if seq < count:
            os.sleep(max(0.0, interval - (rtt or timeout)))
    summary = rtt_summary(rtts)
    os.print(f"--- {dst} ping statistics ---")
    os.print(f"{summary['transmitted']} packets transmitted, {summary['received']} received, "
             f"{summary['loss_pct']:g}% packet loss, time {(os.clock() - t0) * 1000:.0f}ms")
    if summary["received"]:
        os.print(f"rtt min/avg/max/mdev = {summary['rtt_ms_min']:.3f}/{summary['rtt_ms_avg']:.3f}"
                 f"/{summary['rtt_ms_max']:.3f}/{summary['rtt_ms_mdev']:.3f} ms")
    os.result({"init": "ping", "dst": dst, **summary})
    os.idle()


def udpstream(os: GuestOS) -> None:
    """``udpstream role=send dst=IP [port=5001] [size=1024] [seconds=5] [rate=0]`` or
    ``udpstream role=recv [port=5001] [seconds=10]``. The sender numbers its datagrams
    (``rate`` packets/s, 0 = as fast as the NIC takes them); the receiver counts them, and
    reports loss from the numbers it missed, after ``seconds`` or 2 s without traffic."""
    role = os.options().get("role", "recv")
    port = option(os, "port", UDP_PORT, int)
    net = _nic(os)
    if role == "send":
        result = _send(os, net, os.options().get("dst") or _target(os), port)
    elif role == "recv":
        result = _receive(os, net, port)
    else:
        raise ValueError(f"udpstream: role={role!r}: want send or recv")
    os.print(f"udpstream {role}: {result['packets']} packets, {result['pps']:.0f} pkt/s, "
             f"{result['mbit_s']:.2f} Mbit/s" +
             (f", {result['lost']} lost ({result['loss_pct']:g}%)" if role == "recv" else ""))
    os.result({"init": "udpstream", "role": role, **result})
    os.idle()


def _send(os: GuestOS, net, dst: str, port: int) -> dict[str, float]:
    size = option(os, "size", 1024, int)
    seconds = option(os, "seconds", 5.0, float)
    rate = option(os, "rate", 0.0, float)
    if not _STREAM.size <= size <= 1472:
        raise ValueError(f"size={size}: want {_STREAM.size}..1472 bytes (one Ethernet frame)")
    pad = bytes(size - _STREAM.size)
    sent = 0
    t0 = now = os.clock()
    while now - t0 < seconds:
        if net.udp_send(dst, port, port, _STREAM.pack(sent, now) + pad):
            sent += 1
        else:
            os.sleep(0.0005)  # the NIC's tx ring is full: let it drain
        now = os.clock()
        if rate > 0 and sent > rate * (now - t0):
            os.sleep(sent / rate - (now - t0))
            now = os.clock()
    elapsed = max(now - t0, 1e-9)
    return {"packets": sent, "bytes": sent * size, "seconds": round(elapsed, 3),
            "pps": round(sent / elapsed, 1), "mbit_s": round(sent * size * 8 / elapsed / 1e6, 3)}


def _receive(os: GuestOS, net, port: int) -> dict[str, float]:
    seconds = option(os, "seconds", 10.0, float)
    sock = net.udp_bind(port)
    got = nbytes = 0
    highest = -1
    first = last = None
    deadline = os.clock() + seconds
    while os.clock() < deadline:
        msg = sock.recv(timeout=2.0 if first is not None else min(2.0, seconds))
        if msg is None:
            if first is not None:
                break  # the stream has ended
            continue
        payload = msg[2]
        if len(payload) < _STREAM.size:
            continue
        seq, _ = _STREAM.unpack_from(payload)
        last = os.clock()
        first = first if first is not None else last
        got += 1
        nbytes += len(payload)
        highest = max(highest, seq)
    elapsed = max((last or 0) - (first or 0), 1e-9)
    expected = highest + 1
    lost = max(0, expected - got)
    return {"packets": got, "bytes": nbytes, "seconds": round(elapsed, 3),
            "pps": round(got / elapsed, 1) if got > 1 else 0.0,
            "mbit_s": round(nbytes * 8 / elapsed / 1e6, 3) if got > 1 else 0.0,
            "lost": lost, "loss_pct": round(100.0 * lost / expected, 2) if expected else 0.0}


def nethostile(os: GuestOS) -> None:
    """A misbehaving network driver: it reaches into its own tx ring (the guest's memory)
    and publishes ``mode=overflow`` (more requests than the ring holds, 19.2) or
    ``mode=chain`` (one packet chained over more slots than netback accepts), then kicks."""
    net = _nic(os)  # waits for the carrier
    front = net.nic  # the netfront under the stack
    ring = front._tx  # noqa: SLF001  (what a hostile guest does to its own page)
    if os.options().get("mode", "overflow") == "chain":
        for i in range(FATAL_SKB_SLOTS + 2):
            ring.put_request(NetifTxRequest(gref=front._tx_pool[i][0], offset=0,  # noqa: SLF001
                                            flags=int(NetTxFlag.more_data), id=i,
                                            size=2000).pack())
        ring.push_requests()
    else:
        ring.sring.req_prod = ring.sring.rsp_prod + 2 * ring.nr_ents
    front._kick(True)  # noqa: SLF001
    os.print(f"nethostile: published req_prod={ring.sring.req_prod} on {net.ip}")
    os.idle()
