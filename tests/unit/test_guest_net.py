"""The network init programs (actors.guest.net) on real network stacks joined by a
hub wire (tests/netwire.py): ping's lines and summary, udpstream's counts and loss, and their
published results. The same programs run in real guests in tests/integration/test_network.py.
"""

import json
import threading

import dpkt
import pytest

from actors.guest.api import GuestOS
from actors.guest.inits import find
from actors.guest.net import GAPS_MAX, Arrivals, rtt_summary
from tests.guestmem import GuestMemory
from tests.netwire import IPS, Wire


class Idle(Exception):
    """The program finished and went idle."""


class Kernel(GuestMemory):
    """A GuestKernel with virtual time (``sleep`` advances it at once) whose NIC 0 is
    ``stack``; going idle (sleeping an hour) ends the run. The stacks' own timeouts are real."""

    def __init__(self, stack) -> None:
        super().__init__()
        self.stack = stack
        self.lines: list[str] = []
        self.now = 0.0

    def console_write(self, data: bytes) -> None:
        self.lines += data.decode().splitlines()

    def sleep(self, seconds: float) -> None:
        if seconds >= 3600:
            raise Idle
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def net(self, nic):
        assert nic == 0
        return self.stack

    def result(self) -> dict:
        return json.loads(next(l for l in self.lines if l.startswith("RESULT "))[7:])


def run(kernel: Kernel, name: str, *argv: str) -> Kernel:
    with pytest.raises(Idle):
        find(name)(GuestOS(kernel, argv=argv, domid=1, name="vm"))
    return kernel


def test_ping_prints_each_reply_and_iputils_summary():
    wire = Wire(threaded=True)
    try:
        wire.stack(0)
        k = run(Kernel(wire.stack(1)), "ping", IPS[0], "count=3", "interval=0.01")
    finally:
        wire.stop()
    assert [l.split(" time=")[0] for l in k.lines if "bytes from" in l] == [
        f"64 bytes from {IPS[0]}: icmp_seq={i} ttl=64" for i in (1, 2, 3)]
    assert "3 packets transmitted, 3 received, 0% packet loss" in "\n".join(k.lines)
    r = k.result()
    assert (r["init"], r["dst"], r["transmitted"], r["received"]) == ("ping", IPS[0], 3, 3)


def test_ping_counts_loss_when_nobody_answers():
    wire = Wire()
    k = run(Kernel(wire.stack(1)), "ping", "10.9.9.9", "count=2", "interval=0", "timeout=0.05")
    assert k.result()["received"] == 0 and k.result()["loss_pct"] == 100.0
    assert "no answer from 10.9.9.9: icmp_seq=2" in k.lines


def test_ping_without_a_target_is_a_usage_error():
    wire = Wire()
    with pytest.raises(ValueError, match="usage"):
        find("ping")(GuestOS(Kernel(wire.stack(1)), argv=("count=1",), domid=1, name="vm"))


def test_udpstream_receiver_counts_what_the_sender_sent():
    wire = Wire(threaded=True)
    try:
        receiver = Kernel(wire.stack(0))
        sender = Kernel(wire.stack(1))
        t = threading.Thread(target=run, args=(receiver, "udpstream", "role=recv", "seconds=20"))
        t.start()
        run(sender, "udpstream", "role=send", f"dst={IPS[0]}", "size=200", "seconds=0.3",
            "rate=500")
        t.join(10)
    finally:
        wire.stop()
    sent, got = sender.result(), receiver.result()
    assert sent["packets"] > 50 and got["packets"] == sent["packets"]
    assert got["lost"] == 0 and got["bytes"] == 200 * sent["packets"]


def test_udpstream_bad_role_and_size_are_refused():
    wire = Wire()
    with pytest.raises(ValueError, match="role"):
        find("udpstream")(GuestOS(Kernel(wire.stack(1)), argv=("role=both",), domid=1,
                                   name="vm"))
    with pytest.raises(ValueError, match="size"):
        find("udpstream")(GuestOS(Kernel(wire.stack(1)), argv=("role=send", "dst=10.0.0.1",
                                                                "size=9000"),
                                   domid=1, name="vm"))


def test_rtt_summary_is_iputils_arithmetic():
    s = rtt_summary([0.001, None, 0.003])
    assert (s["transmitted"], s["received"], s["loss_pct"]) == (3, 2, 33.3)
    assert (s["rtt_ms_min"], s["rtt_ms_avg"], s["rtt_ms_max"], s["rtt_ms_mdev"]) == \
        (1.0, 2.0, 3.0, 1.0)
    assert rtt_summary([]) == {"transmitted": 0, "received": 0, "loss_pct": 0.0}


# --- across a migration: the programs go on from their memory ------------------------------------

class Frozen(Exception):
    """The vCPU was frozen at a kernel entry and the domain moved: this run is over."""


def freezing(kernel: Kernel, method: str, at: int) -> Kernel:
    """Make the ``at``-th call of ``kernel.method`` (a kernel entry) the one frozen."""
    real, calls = getattr(kernel, method), [0]

    def entry(*args):
        calls[0] += 1
        if calls[0] == at:
            raise Frozen
        return real(*args)

    setattr(kernel, method, entry)
    return kernel


def resumed(before: Kernel, stack) -> Kernel:
    """A new kernel on a copy of ``before``'s memory, as the resumed domain gets it."""
    kernel = Kernel(stack)
    GuestMemory.__init__(kernel, data=bytes(before.buf))
    return kernel


def test_ping_resumed_goes_on_with_its_next_sequence_number_and_counts_them_all():
    wire = Wire(threaded=True)
    try:
        wire.stack(0)
        argv = (IPS[0], "count=6", "interval=0.01")
        before = freezing(Kernel(wire.stack(1)), "console_write", at=4)  # at seq 3's line
        with pytest.raises(Frozen):
            find("ping")(GuestOS(before, argv=argv, domid=1, name="vm"))
        after = run(resumed(before, wire.stack(2, ip=IPS[1])), "ping", *argv)
    finally:
        wire.stop()
    seqs = [int(l.split("icmp_seq=")[1].split()[0]) for l in before.lines + after.lines
            if "icmp_seq=" in l]
    assert seqs == [1, 2, 3, 4, 5, 6]  # seq 3's line was not printed before: once, after
    assert not any(l.startswith("PING") for l in after.lines)
    assert "6 packets transmitted, 6 received, 0% packet loss" in "\n".join(after.lines)
    assert after.result()["transmitted"] == 6


def test_udpstream_sender_resumed_numbers_on_and_the_receiver_counts_no_loss():
    wire = Wire(threaded=True)
    try:
        receiver = Kernel(wire.stack(0))
        t = threading.Thread(target=run, args=(receiver, "udpstream", "role=recv",
                                               "seconds=20", "idle=0.5"))
        t.start()
        argv = ("role=send", f"dst={IPS[0]}", "size=100", "seconds=0.2", "rate=1000")
        before = freezing(Kernel(wire.stack(1)), "clock", at=50)
        with pytest.raises(Frozen):
            find("udpstream")(GuestOS(before, argv=argv, domid=1, name="vm"))
        after = run(resumed(before, wire.stack(2, ip=IPS[1])), "udpstream", *argv)
        t.join(10)
    finally:
        wire.stop()
    sent, got = after.result(), receiver.result()
    assert sent["packets"] >= 50 and got["packets"] == sent["packets"]
    assert got["lost"] == 0


# --- when they lost: what a checker holds against fault windows -----------------------------------

def _echo_request_seq(frame: bytes) -> int | None:
    ip = dpkt.ethernet.Ethernet(frame).data
    if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP) and \
            ip.data.type == dpkt.icmp.ICMP_ECHO:
        return ip.data.data.seq
    return None


def test_ping_lists_each_unanswered_request_with_its_send_time():
    wire = Wire(drop=lambda f: _echo_request_seq(f) in (2, 3))
    wire.stack(0)
    k = run(Kernel(wire.stack(1)), "ping", IPS[0], "count=4", "interval=1", "timeout=0.05")
    r = k.result()
    assert r["received"] == 2 and r["timeout"] == 0.05
    assert [seq for seq, _ in r["unanswered"]] == [2, 3]
    sent = dict(r["unanswered"])  # on the guest's clock; this one does not count the timeouts
    assert (sent[2], sent[3] - sent[2]) == (pytest.approx(1.0, abs=0.05), pytest.approx(0.95))


def test_udpstream_arrivals_tell_gaps_duplicates_and_late_datagrams_apart():
    arrivals = Arrivals(GuestOS(Kernel(None), argv=(), domid=1, name="vm"))
    highest = -1
    for seq in (2, 3, 4, 7, 5, 7, 12, 3, 13):  # 0-1 never, 5 late, 7 and 3 twice
        arrivals.arrive(seq, 100.0 + seq, highest)
        highest = max(highest, seq)
    r = arrivals.report()
    assert (r["duplicates"], r["late"], r["last_sent"]) == (2, 1, 113.0)
    assert r["gaps"] == [[0, 1, 2, None, 102.0], [5, 6, 1, 104.0, 107.0],
                         [8, 11, 4, 107.0, 112.0]]


def test_udpstream_arrivals_merge_gaps_past_the_limit_into_true_bounds():
    arrivals = Arrivals(GuestOS(Kernel(None), argv=(), domid=1, name="vm"))
    highest = -1
    for seq in range(0, 2 * (GAPS_MAX + 10), 2):  # every odd one lost
        arrivals.arrive(seq, float(seq), highest)
        highest = seq
    gaps = arrivals.report()["gaps"]  # a datagram's send time is its number here
    assert len(gaps) == GAPS_MAX and sum(g[2] for g in gaps) == GAPS_MAX + 9
    assert gaps[0] == [1, 1, 1, 0.0, 2.0]
    last = 2 * (GAPS_MAX + 9)  # the last datagram sent
    assert gaps[-1] == [2 * GAPS_MAX - 1, last - 1, 10, 2 * GAPS_MAX - 2, float(last)]


def test_udpstream_receiver_counts_duplicates_apart_and_reports_the_gaps():
    dropped = []

    def drop(frame: bytes) -> bool:
        udp = dpkt.ethernet.Ethernet(frame).data.data
        if isinstance(udp, dpkt.udp.UDP) and int.from_bytes(udp.data[:8], "big") % 10 == 3:
            dropped.append(udp.data[:8])
            return True
        return False

    wire = Wire(drop=drop, threaded=True)
    try:
        receiver = Kernel(wire.stack(0))
        t = threading.Thread(target=run, args=(receiver, "udpstream", "role=recv",
                                               "seconds=20", "idle=0.5"))
        t.start()
        run(Kernel(wire.stack(1)), "udpstream", "role=send", f"dst={IPS[0]}", "size=100",
            "seconds=0.1", "rate=500")
        t.join(10)
    finally:
        wire.stop()
    got = receiver.result()
    assert got["lost"] == len(dropped) > 0 and got["duplicates"] == 0
    assert [g[0] for g in got["gaps"]] == [k for k in range(3, got["highest"], 10)]
    assert all(g[0] == g[1] and g[2] == 1 and g[3] < g[4] for g in got["gaps"])
