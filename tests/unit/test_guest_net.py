"""The network init programs (actors.guest.net) on real network stacks joined by a
hub wire (tests/netwire.py): ping's lines and summary, udpstream's counts and loss, and their
published results. The same programs run in real guests in tests/integration/test_network.py.
"""

import json
import threading

import pytest

from actors.guest.api import GuestOS
from actors.guest.inits import INITS
from actors.guest.net import rtt_summary
from tests.netwire import IPS, Wire


class Idle(Exception):
    """The program finished and went idle."""


class Kernel:
    """A GuestKernel with virtual time (``sleep`` advances it at once) whose NIC 0 is
    ``stack``; going idle (sleeping an hour) ends the run. The stacks' own timeouts are real."""

    def __init__(self, stack) -> None:
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
        INITS[name](GuestOS(kernel, argv=argv, domid=1, name="vm", state={}))
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
        INITS["ping"](GuestOS(Kernel(wire.stack(1)), argv=("count=1",), domid=1, name="vm",
                              state={}))


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
        INITS["udpstream"](GuestOS(Kernel(wire.stack(1)), argv=("role=both",), domid=1,
                                   name="vm", state={}))
    with pytest.raises(ValueError, match="size"):
        INITS["udpstream"](GuestOS(Kernel(wire.stack(1)), argv=("role=send", "dst=10.0.0.1",
                                                                "size=9000"),
                                   domid=1, name="vm", state={}))


def test_rtt_summary_is_iputils_arithmetic():
    s = rtt_summary([0.001, None, 0.003])
    assert (s["transmitted"], s["received"], s["loss_pct"]) == (3, 2, 33.3)
    assert (s["rtt_ms_min"], s["rtt_ms_avg"], s["rtt_ms_max"], s["rtt_ms_mdev"]) == \
        (1.0, 2.0, 3.0, 1.0)
    assert rtt_summary([]) == {"transmitted": 0, "received": 0, "loss_pct": 0.0}
