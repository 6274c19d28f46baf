"""The console driver (actors.domain.hvc) on its own (reference 7.4, 11.2; Linux hvc_xen.c).

The console page is a plain buffer and xenconsoled a stand-in for the one hypercall the driver
makes, ``EVTCHNOP_send`` on the console port: each kick records how far the guest had written
(``out_prod``) and, while it drains, empties the ring and signals back at once, as the real
daemon does on its upcall. The real daemon and the real kernel together are in
test_domain_kernel.py; here each timing (drain now, later, never, a lost signal) is chosen.
"""

import threading

import pytest
import structlog

from actors.domain import hvc as hvc_module
from actors.domain.hvc import HvcConsole
from actors.domain.rungate import Halted, RunGate
from protocols.console import OUT_SIZE, ConsoleInterface
from protocols.hypercall import EvtchnOp, Hypercall, ShutdownReason
from protocols.page import PAGE_SIZE
from tests.waits import wait_until

PORT = 2


class Xenconsoled:
    """The daemon's side of the console page, behind the guest's kicks."""

    def __init__(self, intf: ConsoleInterface) -> None:
        self.intf = intf
        self.hvc: HvcConsole | None = None
        self.kicks: list[int] = []  # out_prod at each kick
        self.out = bytearray()
        self.draining = True  # drain on each kick
        self.signalling = True  # and signal the guest back
        self.missing = 0  # kicks still to miss (it was not there)

    def __call__(self, op, sub, **args) -> None:
        assert (op, sub, args) == (Hypercall.event_channel_op, EvtchnOp.send, {"port": PORT})
        self.kicks.append(self.intf.out_ring.prod)
        if self.missing:
            self.missing -= 1
        elif self.draining:
            self.drain()

    def drain(self) -> None:
        self.out += self.intf.read_out()
        if self.signalling:
            self.hvc.interrupt()


def console(recheck_s: float = 60.0) -> tuple[HvcConsole, Xenconsoled, RunGate]:
    """A driver on a fresh page, its gate open and the test's thread its running vCPU."""
    intf = ConsoleInterface(memoryview(bytearray(PAGE_SIZE)))
    daemon = Xenconsoled(intf)
    gate = RunGate()
    gate.set_paused(False)
    gate.enter()
    daemon.hvc = HvcConsole(intf, PORT, daemon, gate, structlog.get_logger(),
                            recheck_s=recheck_s)
    return daemon.hvc, daemon, gate


def writer(hvc: HvcConsole, data: bytes) -> tuple[threading.Thread, list]:
    """A vCPU thread writing ``data``; the list gets "done" or the Halted that unwound it."""
    ended: list = []

    def run() -> None:
        try:
            hvc.write_console(data)
            ended.append("done")
        except Halted as e:
            ended.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ended


def test_hvc_11_2_kicks_xenconsoled_after_each_piece_of_a_write_larger_than_the_ring():
    hvc, daemon, _ = console()
    data = bytes(range(256)) * 19 + b"tail"  # 4868 bytes: two full rings and a rest
    hvc.write_console(data)
    assert daemon.kicks == [OUT_SIZE, 2 * OUT_SIZE, len(data)]
    assert daemon.out == data
    assert hvc.stats == {"console_bytes": len(data), "console_waits": 2, "console_dropped": 0}


def test_hvc_7_4_full_ring_blocks_the_writer_until_xenconsoled_signals_back():
    hvc, daemon, gate = console()
    daemon.draining = False
    data = b"y" * (OUT_SIZE + 100)
    thread, ended = writer(hvc, data)
    wait_until(lambda: hvc.stats["console_waits"] == 1 and gate.vcpu == "blocked", "a full ring")
    assert daemon.kicks == [OUT_SIZE] and hvc.intf.out_ring.space() == 0 and ended == []
    daemon.drain()  # xenconsoled gets round to it: drains, signals back
    thread.join(10)
    assert ended == ["done"] and daemon.kicks == [OUT_SIZE, len(data)]
    daemon.drain()
    assert daemon.out == data


def test_hvc_rekicks_a_xenconsoled_that_missed_the_kick_after_the_recheck_interval():
    hvc, daemon, _ = console(recheck_s=0.01)
    daemon.missing = 1  # restarted: it missed the first kick
    daemon.signalling = False  # and no signal back reaches the guest
    data = b"z" * (OUT_SIZE + 100)
    hvc.write_console(data)  # returns: the re-check found the ring drained
    assert daemon.kicks == [OUT_SIZE, OUT_SIZE, len(data)]  # the second is the re-kick
    assert daemon.out == data


def test_hvc_printk_writes_what_fits_counts_the_rest_dropped_and_never_blocks():
    hvc, daemon, _ = console()
    daemon.draining = False
    hvc.write_console(b"a" * (OUT_SIZE - 8))
    hvc.printk("x" * 20)  # 21 bytes with the newline: 8 fit
    hvc.printk("lost")  # a full ring: nothing fits, no kick
    assert daemon.kicks == [OUT_SIZE - 8, OUT_SIZE]
    daemon.drain()
    assert daemon.out == b"a" * (OUT_SIZE - 8) + b"x" * 8
    assert hvc.stats == {"console_bytes": OUT_SIZE, "console_waits": 0,
                         "console_dropped": 13 + 5}


def test_hvc_printk_gives_up_on_a_writer_holding_the_console(monkeypatch):
    monkeypatch.setattr(hvc_module, "PRINTK_LOCK_TIMEOUT_S", 0.01)
    hvc, daemon, gate = console()
    daemon.draining = False
    writer(hvc, b"w" * (OUT_SIZE + 1))
    wait_until(lambda: gate.vcpu == "blocked", "the writer to block")
    hvc.printk("late")  # returns: it does not wait for the stuck writer
    assert hvc.stats["console_dropped"] == 5
    gate.shut_down(ShutdownReason.poweroff)


def test_hvc_19_8_shutdown_unwinds_a_writer_waiting_for_space():
    hvc, daemon, gate = console()
    daemon.draining = False
    thread, ended = writer(hvc, b"v" * (OUT_SIZE + 1))
    wait_until(lambda: gate.vcpu == "blocked", "the writer to block")
    gate.shut_down(ShutdownReason.crash)
    thread.join(10)
    assert len(ended) == 1 and isinstance(ended[0], Halted)
    assert daemon.kicks == [OUT_SIZE]  # nothing more after the shutdown


@pytest.mark.parametrize("paused", [True, False])
def test_hvc_interrupt_wakes_the_writer_only_through_an_open_gate(paused):
    hvc, daemon, gate = console()
    daemon.draining = False
    thread, ended = writer(hvc, b"p" * (OUT_SIZE + 1))
    wait_until(lambda: gate.vcpu == "blocked", "the writer to block")
    if paused:
        gate.set_paused(True)
    daemon.drain()
    if paused:
        wait_until(lambda: gate.vcpu == "gated", "the writer at the gate")
        assert ended == [] and daemon.kicks == [OUT_SIZE]
        gate.set_paused(False)
    thread.join(10)
    assert ended == ["done"] and daemon.kicks == [OUT_SIZE, OUT_SIZE + 1]
