"""Network init programs: ``ping`` (ICMP echo, as iputils' ping prints it), ``udpstream``
(a UDP sender or receiver measuring packets/s, Mbit/s and loss) and ``nethostile`` (a
misbehaving network driver, for fault injection). Each prints on the console
and publishes its result (``GuestOS.result``), then stays up answering ARP and ping.

Both run on the guest's own network stack (``actors.domain.netstack``) over netfront: the
domain's IP comes from its vif's ``ip=`` (``GuestOS.net()``).

``ping`` and ``udpstream`` keep their progress in guest memory (``GuestOS.memory``), so a
migrated guest goes on where it was: ping with its next sequence number (the lost ones
counted as lost) and its statistics so far; the sender with its next datagram number and its
start time; the receiver with its counts, its highest number seen and its deadline. A
datagram the old domain had received but not yet handed to the program is lost with the old
process, and counted so. A finished program is not run again by a resume: it idles.

For a checker that holds losses against fault windows, both also say *when* they lost,
on the guest's clock (``os.clock``): ping lists each unanswered request with the time it was
sent; the receiver lists each gap in the numbering with the sender's clock on either side
(the datagrams in it were sent between those two times), telling duplicates and late
(reordered) datagrams apart with a bitmap of the numbers it has seen; the sender gives its
clock at the start and the end, for the datagrams after the last one that arrived.
"""

from __future__ import annotations

import math
import random
import statistics
import struct

import numpy as np

from actors.guest.api import GuestOS, option
from protocols.netif import FATAL_SKB_SLOTS, NetifTxRequest, NetTxFlag

UDP_PORT = 5001  # iperf's default
_STREAM = struct.Struct("!Qd")  # sequence number, sender's clock (s)
RECV_POLL_S = 0.05  # a receiver enters the kernel at least this often (a suspend waits that)
RUNNING, ENDED, DONE = 1, 2, 3  # a program's phase in its memory
PING = np.dtype([("phase", "<u8"), ("ident", "<u8"), ("seq", "<u8"), ("t0", "<f8")])
UDP_SEND = np.dtype([("phase", "<u8"), ("sent", "<u8"), ("t0", "<f8"), ("elapsed", "<f8")])
UDP_RECV = np.dtype([("phase", "<u8"), ("got", "<u8"), ("nbytes", "<u8"), ("highest", "<i8"),
                     ("first", "<f8"), ("last", "<f8"), ("deadline", "<f8")])
ARRIVALS = np.dtype([("dups", "<u8"), ("late", "<u8"), ("ngaps", "<u8"), ("highest_t", "<f8")])
GAP = np.dtype([("first", "<u8"), ("last", "<u8"), ("sent_from", "<f8"), ("sent_to", "<f8")])
SEEN_MAX = 1 << 20  # numbers the receiver's bitmap covers (128 KiB); past it, late = lost
GAPS_MAX = 256  # gaps kept; more are merged into the last one (its times stay true bounds)


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
    if count <= 0:
        raise ValueError(f"ping: count={count}: want 1 or more")
    net = _nic(os)
    st = os.memory("ping", 1, PING)[0]
    rtt_ms = os.memory("ping.rtt", count, np.float64)  # NaN: no answer
    sent_at = os.memory("ping.sent", count, np.float64)  # guest clock as each request left
    if st["phase"] == 0:
        t0 = os.clock()
        os.print(f"PING {dst} ({dst}) 56(84) bytes of data.")
        st["t0"], st["ident"], st["phase"] = t0, random.randrange(1, 0x10000), RUNNING
    while st["phase"] == RUNNING and st["seq"] < count:
        seq = int(st["seq"]) + 1
        sent_at[seq - 1] = os.clock()
        rtt = net.ping(dst, count=1, interval=0.0, timeout=timeout, ident=int(st["ident"]),
                       first_seq=seq)[0]
        if rtt is None:
            os.print(f"no answer from {dst}: icmp_seq={seq}")
        else:
            os.print(f"64 bytes from {dst}: icmp_seq={seq} ttl=64 time={rtt * 1000:.3f} ms")
        rtt_ms[seq - 1] = math.nan if rtt is None else rtt  # with the line, as one step
        st["seq"] = seq
        if seq < count:
            os.sleep(max(0.0, interval - (rtt or timeout)))
    if st["phase"] == RUNNING:
        summary = rtt_summary([None if math.isnan(r) else float(r) for r in rtt_ms])
        lines = [f"--- {dst} ping statistics ---",
                 f"{summary['transmitted']} packets transmitted, {summary['received']} "
                 f"received, {summary['loss_pct']:g}% packet loss, "
                 f"time {(os.clock() - float(st['t0'])) * 1000:.0f}ms"]
        if summary["received"]:
            lines.append(f"rtt min/avg/max/mdev = {summary['rtt_ms_min']:.3f}/"
                         f"{summary['rtt_ms_avg']:.3f}/{summary['rtt_ms_max']:.3f}/"
                         f"{summary['rtt_ms_mdev']:.3f} ms")
        unanswered = [[k + 1, round(float(sent_at[k]), 4)] for k in range(count)
                      if math.isnan(rtt_ms[k])]
        os.result({"init": "ping", "dst": dst, **summary, "timeout": timeout,
                   "unanswered": unanswered}, text="\n".join(lines))
        st["phase"] = DONE
    os.idle()


def udpstream(os: GuestOS) -> None:
    """``udpstream role=send dst=IP [port=5001] [size=1024] [seconds=5] [rate=0]`` or
    ``udpstream role=recv [port=5001] [seconds=10] [idle=2]``. The sender numbers its
    datagrams (``rate`` packets/s, 0 = as fast as the NIC takes them); the receiver counts
    them, and reports loss from the numbers it missed, after ``seconds`` or ``idle`` seconds
    without traffic. ``report=S`` prints ``udpstream ROLE: N packets so far`` every ``S``
    seconds (a scenario's progress)."""
    role = os.options().get("role", "recv")
    port = option(os, "port", UDP_PORT, int)
    if role == "send":
        dst = os.options().get("dst") or _target(os)
        size = option(os, "size", 1024, int)
        if not _STREAM.size <= size <= 1472:
            raise ValueError(f"size={size}: want {_STREAM.size}..1472 bytes (one Ethernet "
                             f"frame)")
        st = os.memory("udpstream", 1, UDP_SEND)[0]
        if st["phase"] in (0, RUNNING):
            _send(os, _nic(os), st, dst, port, size)
        summary = lambda: _send_summary(st, size)  # noqa: E731
    elif role == "recv":
        st = os.memory("udpstream", 1, UDP_RECV)[0]
        arrivals = Arrivals(os)
        if st["phase"] in (0, RUNNING):
            _receive(os, _nic(os), st, arrivals, port)
        summary = lambda: _recv_summary(st, arrivals)  # noqa: E731
    else:
        raise ValueError(f"udpstream: role={role!r}: want send or recv")
    if st["phase"] == ENDED:
        result = summary()
        os.result({"init": "udpstream", "role": role, **result},
                  text=f"udpstream {role}: {result['packets']} packets, "
                       f"{result['pps']:.0f} pkt/s, {result['mbit_s']:.2f} Mbit/s" +
                       (f", {result['lost']} lost ({result['loss_pct']:g}%)" if role == "recv"
                        else ""))
        st["phase"] = DONE
    os.idle()


class _Reporter:
    """``report=S``: the packets so far, every ``S`` seconds of guest time (0: never)."""

    def __init__(self, os: GuestOS, role: str, now: float) -> None:
        self.os, self.role = os, role
        self.every = option(os, "report", 0.0, float)
        self.next = now + self.every

    def at(self, now: float, packets: int) -> None:
        if self.every > 0 and now >= self.next:
            self.os.print(f"udpstream {self.role}: {packets} packets so far")
            self.next = now + self.every


def _send(os: GuestOS, net, st, dst: str, port: int, size: int) -> None:
    seconds = option(os, "seconds", 5.0, float)
    rate = option(os, "rate", 0.0, float)
    pad = bytes(size - _STREAM.size)
    now = os.clock()
    if st["phase"] == 0:
        st["t0"], st["sent"], st["phase"] = now, 0, RUNNING
    t0 = float(st["t0"])
    progress = _Reporter(os, "send", now)
    while now - t0 < seconds:
        progress.at(now, int(st["sent"]))
        sent = int(st["sent"])
        if net.udp_send(dst, port, port, _STREAM.pack(sent, now) + pad):
            st["sent"] = sent + 1  # no scheduling point since the send
        else:
            os.sleep(0.0005)  # the NIC's tx ring is full: let it drain
        now = os.clock()
        if rate > 0 and st["sent"] > rate * (now - t0):
            os.sleep(int(st["sent"]) / rate - (now - t0))
            now = os.clock()
    st["elapsed"], st["phase"] = now - t0, ENDED


def _send_summary(st, size: int) -> dict[str, float]:
    sent, elapsed = int(st["sent"]), max(float(st["elapsed"]), 1e-9)
    return {"packets": sent, "bytes": sent * size, "seconds": round(elapsed, 3),
            "pps": round(sent / elapsed, 1), "mbit_s": round(sent * size * 8 / elapsed / 1e6, 3),
            "t0": round(float(st["t0"]), 4), "t_end": round(float(st["t0"] + st["elapsed"]), 4)}


class Arrivals:
    """Which numbered datagrams came, in the receiver's memory: a bitmap of the numbers seen
    (a duplicate or a late one is told from a new one) and the gaps in the numbering as they
    opened, each with the sender's clock of the datagrams on either side."""

    def __init__(self, os: GuestOS) -> None:
        self.rec = os.memory("udpstream.arrivals", 1, ARRIVALS)[0]
        self.seen = os.memory("udpstream.seen", SEEN_MAX // 8, np.uint8)
        self.gaps = os.memory("udpstream.gaps", GAPS_MAX, GAP)

    def arrive(self, seq: int, sent: float, highest: int) -> None:
        """Datagram ``seq``, stamped ``sent`` by the sender, came; ``highest`` is the highest
        number seen before it (-1: none)."""
        rec = self.rec
        if seq < SEEN_MAX:
            byte, bit = seq >> 3, 1 << (seq & 7)
            if self.seen[byte] & bit:
                rec["dups"] += 1
                return
            self.seen[byte] |= bit
        if seq <= highest:
            rec["late"] += 1
            return
        if seq > highest + 1:
            n = int(rec["ngaps"])
            if n < GAPS_MAX:
                self.gaps[n] = (highest + 1, seq - 1, rec["highest_t"] if highest >= 0
                                else math.nan, sent)
                rec["ngaps"] = n + 1
            else:
                self.gaps[n - 1]["last"], self.gaps[n - 1]["sent_to"] = seq - 1, sent
        rec["highest_t"] = sent

    def report(self) -> dict:
        """``gaps``: ``[first, last, missing, sent_from, sent_to]`` for each gap still missing
        datagrams (``sent_from`` None: before the first that came); the counts."""
        seen = np.unpackbits(self.seen, bitorder="little")
        gaps = []
        for first, last, sent_from, sent_to in self.gaps[:int(self.rec["ngaps"])].tolist():
            missing = last - first + 1 - int(seen[first:min(last + 1, SEEN_MAX)].sum())
            if missing:
                gaps.append([first, last, missing,
                             None if math.isnan(sent_from) else round(sent_from, 4),
                             round(sent_to, 4)])
        return {"duplicates": int(self.rec["dups"]), "late": int(self.rec["late"]),
                "gaps": gaps, "last_sent": round(float(self.rec["highest_t"]), 4)}


def _receive(os: GuestOS, net, st, arrivals: Arrivals, port: int) -> None:
    seconds = option(os, "seconds", 10.0, float)
    idle = option(os, "idle", 2.0, float)
    sock = net.udp_bind(port)
    now = os.clock()
    if st["phase"] == 0:
        st["deadline"], st["highest"] = now + seconds, -1
        st["first"] = st["last"] = math.nan
        st["phase"] = RUNNING
    quiet = 0.0  # seconds without a datagram, as the socket's timeouts count them
    progress = _Reporter(os, "recv", now)
    while now < st["deadline"]:
        progress.at(now, int(st["got"]))
        msg = sock.recv(timeout=RECV_POLL_S)
        quiet = quiet + RECV_POLL_S if msg is None else 0.0
        if msg is not None and len(msg[2]) >= _STREAM.size:
            # counted before the next kernel entry, stamped with the last clock read (at most
            # RECV_POLL_S old): a suspend never falls between taking a datagram and counting it
            seq, sent = _STREAM.unpack_from(msg[2])
            arrivals.arrive(seq, sent, int(st["highest"]))
            if math.isnan(st["first"]):
                st["first"] = now
            st["last"] = now
            st["got"] += 1
            st["nbytes"] += len(msg[2])
            st["highest"] = max(int(st["highest"]), seq)
        now = os.clock()
        if quiet >= idle and not math.isnan(st["last"]):
            break  # the stream has ended
    sock.close()
    st["phase"] = ENDED


def _recv_summary(st, arrivals: Arrivals) -> dict[str, float]:
    got, nbytes = int(st["got"]), int(st["nbytes"])
    first, last = float(st["first"]), float(st["last"])
    elapsed = max(last - first, 1e-9) if got else 1e-9
    expected = int(st["highest"]) + 1
    report = arrivals.report()
    lost = max(0, expected - (got - report["duplicates"]))
    return {"packets": got, "bytes": nbytes, "seconds": round(elapsed, 3),
            "pps": round(got / elapsed, 1) if got > 1 else 0.0,
            "mbit_s": round(nbytes * 8 / elapsed / 1e6, 3) if got > 1 else 0.0,
            "lost": lost, "loss_pct": round(100.0 * lost / expected, 2) if expected else 0.0,
            "highest": expected - 1, **report}


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
