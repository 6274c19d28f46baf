"""The PV guest kernel (actors.domain.kernel) on an in-process host (reference 11.5, 12, 19.8).

The kernel's peers are the real ones (``tests.inprocess``): the hypervisor state machine
(real msgpack hypercalls), xenstored's server (real xs_wire), the toolstack's domain builder,
and a console backend that binds the console port and drains the ring with ``read_out`` as
xenconsoled does. Calls run at once in the caller's thread; one-way messages (upcalls, vCPU
gates, watch events) go through one mailbox thread, in order, as to an actor.
"""

import threading

import pytest
import structlog

from actors.domain.actor import DomainShell
from actors.domain.kernel import PVKernel
from actors.guest.inits import INITS
from actors.memory import Mapping
from cluster.xlcfg import parse_config
from protocols.console import ConsoleInterface
from protocols.hypercall import (Domctl, DomInfoFlag, EvtchnOp, Hypercall, ShutdownReason,
                                 dominf_shutdown_code)
from protocols.pv_layout import PFN_CONSOLE
from tests.inprocess import HOST, InProcessHost, domain_endpoint

CONSOLED = f"{HOST}/xenconsoled"
FAST = "interval=0.02"  # a counter that prints 50 lines a second


class World:
    """The toolstack's part on an in-process host: build, start and control PV guests."""

    def __init__(self, mem_prefix: str) -> None:
        self.host = InProcessHost(mem_prefix, threaded=True)
        self.xl, self.xs, self.until = self.host.xl, self.host.xs, self.host.until
        self.console = ConsoleBackend(self.host)
        self.guests: list[Guest] = []

    def create(self, extra: str, *, saved: dict | None = None,
               control: str | None = None) -> "Guest":
        """Build, introduce, start the kernel and unpause, as ``xl create`` does; ``control``
        is written to ``control/shutdown`` just before the unpause."""
        cfg, _ = parse_config(f'name = "guest{len(self.guests)}"\nmemory = 8\n'
                              f'extra = "{extra}"\n')
        built = self.host.build(cfg)
        domid, endpoint = built.domid, domain_endpoint(built.domid)
        shell = self.host.start(endpoint, DomainShell(
            domid, self.host.clients(endpoint, domid, built.secret), built.memory_path,
            structlog.get_logger().bind(domid=domid)))
        kernel = shell.kernel
        if saved is not None:
            kernel.restore(saved)
        self.console.attach(domid, built.console_port, built.memory_path)
        guest = Guest(self, domid, kernel)
        self.guests.append(guest)
        if control is not None:
            self.xs.write(f"/local/domain/{domid}/control/shutdown", control)
        self.domctl(Domctl.unpausedomain, domid)
        return guest

    def domctl(self, op: Domctl, domid: int):
        return self.xl(Hypercall.domctl, op, domain=domid)

    def stop(self) -> None:
        """Park every vCPU for good (their threads are daemons), then close the host, which
        reports mailbox errors."""
        for guest in self.guests:
            self.domctl(Domctl.pausedomain, guest.domid)
        self.host.close()


class ConsoleBackend:
    """xenconsoled's data path: bind each guest's console port, drain the ``out`` ring with
    ``read_out`` on every upcall (while ``auto_drain``), then signal the guest back."""

    def __init__(self, host: InProcessHost) -> None:
        self.hv = host.clients(CONSOLED).hv
        host.endpoints[CONSOLED] = {"upcall": self.upcall}
        self.lock = threading.Lock()
        self.auto_drain = True
        self.rings: dict[int, tuple[ConsoleInterface, int]] = {}  # domid -> (page, local port)
        self.by_port: dict[int, int] = {}
        self.out: dict[int, bytearray] = {}

    def attach(self, domid: int, port: int, memory_path: str) -> None:
        page = Mapping(memory_path, PFN_CONSOLE, 1).page(PFN_CONSOLE)
        with self.lock:
            self.out[domid] = bytearray()
        local = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                        remote_dom=domid, remote_port=port)["local_port"]
        with self.lock:
            self.rings[domid] = (ConsoleInterface(page), local)
            self.by_port[local] = domid

    def upcall(self, domid: int, ports: list[int]) -> None:
        if self.auto_drain:
            for port in ports:
                if port in self.by_port:
                    self.drain(self.by_port[port])

    def drain(self, domid: int) -> None:
        with self.lock:
            ring, local = self.rings[domid]
            data = ring.read_out()
            self.out[domid] += data
        if data:
            self.hv(Hypercall.event_channel_op, EvtchnOp.send, port=local)

    def text(self, domid: int) -> str:
        self.drain(domid)
        with self.lock:
            return self.out[domid].decode()


class Guest:
    def __init__(self, world: World, domid: int, kernel: PVKernel) -> None:
        self.world, self.domid, self.kernel = world, domid, kernel

    def lines(self) -> list[str]:
        return self.world.console.text(self.domid).splitlines()

    def counts(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("counter ")]

    def shutdown_code(self) -> int | None:
        flags = self.world.domctl(Domctl.getdomaininfo, self.domid)["flags"]
        return dominf_shutdown_code(flags) if flags & DomInfoFlag.shutdown else None

    def control(self, node: str) -> bytes:
        return self.world.xs.read(f"/local/domain/{self.domid}/control/{node}")

    def wait_vcpu(self, state: str) -> None:
        self.world.until(lambda: self.kernel.statistics()["vcpu"] == state, f"vCPU {state}")

    def wait_counts(self, at_least: int) -> list[int]:
        def reached() -> bool:
            counts = self.counts()
            return bool(counts) and counts[-1] >= at_least

        self.world.until(reached, f"counter {at_least}")
        return self.counts()

    def wait_shutdown(self) -> int:
        self.world.until(lambda: self.shutdown_code() is not None, "the domain to shut down")
        return self.shutdown_code()


@pytest.fixture
def world(tmp_path):
    w = World(str(tmp_path / "mem"))
    yield w
    w.stop()


def test_boot_banner_and_counter_output_land_in_the_console_ring(world):
    guest = world.create(f"console=hvc0 init=counter {FAST}")
    counts = guest.wait_counts(3)
    assert counts[:3] == [1, 2, 3]
    lines = guest.lines()
    assert lines[0] == "Booting paravirtualized kernel on Xen (xenray)"
    assert lines[1] == f"Command line: console=hvc0 init=counter {FAST}"
    stats = guest.kernel.statistics()
    assert stats["init"] == "counter" and stats["domid"] == guest.domid
    assert stats["console_bytes"] >= len("\n".join(lines))


def test_11_5_boot_advertises_the_control_features_in_guest_owned_nodes(world):
    guest = world.create("init=idle")
    for feature in ("poweroff", "reboot", "suspend"):
        world.until(lambda f=feature: guest.control(f"feature-{f}") == b"1", feature)
        assert world.xs.get_perms(f"/local/domain/{guest.domid}/control/feature-{feature}") \
            == [f"n{guest.domid}"]


def test_12_2_a_stale_gate_message_overtaken_in_flight_is_ignored(world):
    guest = world.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    world.domctl(Domctl.pausedomain, guest.domid)  # the newest gate: paused
    guest.wait_vcpu("paused")
    guest.kernel.vcpu_gate(False, seq=1)  # an old "unpause" arriving late
    frozen = guest.counts()
    assert guest.kernel.statistics()["paused"] is True
    world.domctl(Domctl.unpausedomain, guest.domid)
    guest.wait_counts(frozen[-1] + 1)


def test_12_2_pause_gate_stops_progress_and_unpause_resumes_it(world):
    guest = world.create(f"init=counter {FAST}")
    guest.wait_counts(2)
    world.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    witness = world.create(f"init=counter {FAST}")  # time passes: a running guest counts
    witness.wait_counts(15)
    assert guest.counts() == frozen
    world.domctl(Domctl.unpausedomain, guest.domid)
    resumed = guest.wait_counts(frozen[-1] + 2)
    assert resumed == list(range(1, len(resumed) + 1))  # nothing lost or repeated


@pytest.mark.parametrize("command, reason, message", [
    ("poweroff", ShutdownReason.poweroff, "reboot: Power down"),
    ("halt", ShutdownReason.poweroff, "reboot: Power down"),
    ("reboot", ShutdownReason.reboot, "reboot: Restarting system"),
])
def test_12_3_control_shutdown_is_acked_with_empty_string_then_shutdown(world, command, reason,
                                                                         message):
    guest = world.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    world.until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    world.xs.write(f"/local/domain/{guest.domid}/control/shutdown", command)
    assert guest.wait_shutdown() == reason
    assert guest.control("shutdown") == b""
    guest.wait_vcpu("stopped")
    stats = guest.kernel.statistics()
    assert stats["state"] == "shutdown" and stats["shutdown_reason"] == reason.name
    assert message in guest.lines()


def test_19_8_shut_down_domain_stays_idle_and_keeps_the_first_reason(world):
    guest = world.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    guest.wait_vcpu("stopped")
    events = guest.kernel.statistics()["xs_events"]
    world.domctl(Domctl.pausedomain, guest.domid)
    world.domctl(Domctl.unpausedomain, guest.domid)  # the gate stays shut: it is shut down
    world.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "reboot")
    world.until(lambda: guest.kernel.statistics()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"reboot"  # nobody home to ack it
    assert guest.shutdown_code() == ShutdownReason.poweroff
    assert world.domctl(Domctl.getdomaininfo, guest.domid)["domain"] == guest.domid
    assert guest.kernel.statistics()["vcpu"] == "stopped"


def test_12_3_command_written_before_boot_is_found_when_the_watch_is_set(world):
    guest = world.create(f"init=counter {FAST}", control="reboot")
    assert guest.wait_shutdown() == ShutdownReason.reboot
    assert guest.control("shutdown") == b""


def test_12_3_unknown_control_command_is_ignored_and_not_acked(world):
    guest = world.create(f"init=counter {FAST}")
    world.until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    world.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "explode")
    # >= 1: the watch's firing on registration may be handled after the write, and then
    # reads the same unknown command (Linux would log it twice too)
    world.until(lambda: guest.kernel.statistics()["control_ignored"] >= 1, "the command")
    assert guest.control("shutdown") == b"explode"
    assert guest.shutdown_code() is None
    last = guest.counts()[-1]
    guest.wait_counts(last + 1)  # still running


def test_12_3_paused_domain_acts_on_control_shutdown_only_once_unpaused(world):
    guest = world.create(f"init=counter {FAST}")
    world.until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    events = guest.kernel.statistics()["xs_events"]
    world.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    world.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "poweroff")
    world.until(lambda: guest.kernel.statistics()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"poweroff"  # a paused kernel runs no xenwatch
    assert guest.shutdown_code() is None
    world.domctl(Domctl.unpausedomain, guest.domid)
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    assert guest.control("shutdown") == b""


def test_12_3_suspend_is_acked_then_shutdown_suspend_and_resumedomain_carries_on(world):
    guest = world.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    world.until(lambda: guest.control("feature-suspend") == b"1", "the control watch")
    world.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "suspend")
    assert guest.wait_shutdown() == ShutdownReason.suspend
    assert guest.control("shutdown") == b""
    world.until(lambda: guest.kernel.statistics()["state"] == "suspended", "suspended")
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    world.domctl(Domctl.resumedomain, guest.domid)  # a cancelled suspend: SCHEDOP returns 1
    counts = guest.wait_counts(frozen[-1] + 2)
    assert counts == list(range(1, len(counts) + 1))
    assert guest.shutdown_code() is None
    assert guest.kernel.statistics()["state"] == "running"


def test_init_that_raises_crashes_the_domain_after_printing_the_error(world):
    guest = world.create("init=crash")
    assert guest.wait_shutdown() == ShutdownReason.crash
    lines = guest.lines()
    assert "RuntimeError: init=crash: crashing as asked" in lines
    assert lines[-1] == "Kernel panic - not syncing: Attempted to kill init!"
    assert guest.kernel.statistics()["shutdown_reason"] == "crash"


def test_init_with_a_bad_argument_crashes_with_the_reason_on_the_console(world):
    guest = world.create("init=counter start=five")
    assert guest.wait_shutdown() == ShutdownReason.crash
    assert "ValueError: start='five' is not a valid int" in guest.lines()


def test_unknown_init_panics_and_crashes(world):
    guest = world.create("init=no-such-program")
    assert guest.wait_shutdown() == ShutdownReason.crash
    assert guest.lines()[-1] == ("Kernel panic - not syncing: Requested init no-such-program "
                                 "failed (error -2).")


def test_init_that_returns_powers_the_domain_off(world):
    guest = world.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    assert guest.lines()[-1] == "reboot: Power down"


def test_console_full_ring_blocks_the_writer_until_xenconsoled_drains_it(world, monkeypatch):
    lines = [f"line {i:03d} " + "x" * 20 for i in range(300)]  # ~9 KiB: the ring holds 2 KiB

    def spew(os):
        for line in lines:
            os.print(line)

    monkeypatch.setitem(INITS, "spew", spew)
    world.console.auto_drain = False
    guest = world.create("init=spew")
    world.until(lambda: guest.kernel.statistics()["console_waits"] >= 1, "a full ring")
    assert world.console.rings[guest.domid][0].out_ring.space() == 0
    guest.wait_vcpu("blocked")
    world.console.auto_drain = True
    world.console.drain(guest.domid)  # xenconsoled gets round to it: drains and signals back
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    world.until(lambda: guest.lines()[-1] == "reboot: Power down", "the last line")
    assert guest.lines()[2:-1] == lines


def test_save_then_restore_carries_the_counter_on_in_a_new_domain(world):
    old = world.create(f"init=counter {FAST}")
    old.wait_counts(3)
    world.domctl(Domctl.pausedomain, old.domid)
    old.wait_vcpu("paused")
    saved = old.kernel.save()
    last = old.counts()[-1]
    assert saved["init"] == "counter" and saved["argv"] == [FAST]
    assert saved["state"] == {"count": last}
    assert saved["console_bytes"] == len(world.console.text(old.domid).encode())
    new = world.create("init=idle", saved=saved)  # the saved init wins over the command line
    counts = new.wait_counts(last + 2)
    assert counts[0] == last + 1
    assert new.kernel.clock() >= saved["clock"]
