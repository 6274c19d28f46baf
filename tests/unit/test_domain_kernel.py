"""The PV guest kernel (actors.domain.kernel) in its real shell on an in-process host
(reference 11.5, 12, 19.8).

Every peer is real (``threaded_host``): the hypervisor's and xenstored's shells, the toolstack's
build steps, the domain's own :class:`DomainShell` and xenconsoled's :class:`ConsoleShell`,
whose log file is what a guest printed. One-way messages (upcalls, vCPU gates, watch events)
go through the host's mailbox thread, in order, as to an actor. The toolstack's side is the
small :class:`Xl` below; the fixture pauses every guest at the end, so no vCPU runs on.
"""

import contextlib
import pathlib

import pytest

from actors.console.actor import ConsoleShell
from actors.domain.actor import DomainShell
from actors.guest.inits import INITS
from actors.runtime import THREADS
from protocols.hypercall import Domctl, DomInfoFlag, Hypercall, ShutdownReason, dominf_shutdown_code
from protocols.libxl_types import DomainConfig
from protocols.xenstore.paths import INIT_STATUS
from tests.inprocess import HOST, domain_endpoint

CONSOLED = f"{HOST}/xenconsoled"
FAST = "interval=0.02"  # a counter that prints 50 lines a second


class Xl:
    """The toolstack's part on the test's host: xenconsoled, and PV guests built, started in
    their shells and unpaused as ``xl create`` does."""

    def __init__(self, host, log_dir: pathlib.Path) -> None:
        self.host, self.log_dir = host, log_dir
        self.xs, self.until = host.xs, host.until
        self.consoled: ConsoleShell | None = None
        self.guests: list[Guest] = []

    def start_xenconsoled(self) -> None:
        self.consoled = self.host.start(CONSOLED, ConsoleShell(
            HOST, self.host.clients(CONSOLED), self.host.log, str(self.log_dir)))

    def create(self, cmdline: str, *, saved: dict | None = None, control: str | None = None,
               runtime=THREADS) -> "Guest":
        """Build, start the domain's shell and unpause; ``saved`` restores the kernel first,
        ``control`` is written to ``control/shutdown`` just before the unpause."""
        name = f"guest{len(self.guests)}"
        built = self.host.build(DomainConfig(name=name, memory=8, maxmem=8, cmdline=cmdline))
        endpoint = domain_endpoint(built.domid)
        shell = self.host.start(endpoint, DomainShell(
            built.domid, self.host.clients(endpoint, built.domid, built.secret),
            built.memory_path, self.host.log.bind(domid=built.domid), runtime))
        if saved is not None:
            shell.kernel.restore(saved)
        guest = Guest(self, built.domid, name, shell)
        self.guests.append(guest)
        if control is not None:
            self.xs.write(f"/local/domain/{built.domid}/control/shutdown", control)
        self.domctl(Domctl.unpausedomain, built.domid)
        return guest

    def domctl(self, op: Domctl, domid: int):
        return self.host.xl(Hypercall.domctl, op, domain=domid)

    def park(self) -> None:
        """Pause every guest for good (their vCPU threads are daemons)."""
        for guest in self.guests:
            self.domctl(Domctl.pausedomain, guest.domid)


class Guest:
    """One guest, seen from Dom0: its shell's statistics, its console log, its domain info."""

    def __init__(self, xl: Xl, domid: int, name: str, shell: DomainShell) -> None:
        self.xl, self.domid, self.name, self.shell = xl, domid, name, shell
        self.kernel = shell.kernel

    def stats(self) -> dict:
        return self.xl.host.call(domain_endpoint(self.domid), "statistics")

    def output(self) -> bytes:
        path = pathlib.Path(self.xl.consoled.daemon.log_path(self.name))
        return path.read_bytes() if path.exists() else b""

    def lines(self) -> list[str]:
        return self.output().decode().splitlines()

    def counts(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("counter ")]

    def shutdown_code(self) -> int | None:
        flags = self.xl.domctl(Domctl.getdomaininfo, self.domid)["flags"]
        return dominf_shutdown_code(flags) if flags & DomInfoFlag.shutdown else None

    def control(self, node: str) -> bytes:
        return self.xl.xs.read(f"/local/domain/{self.domid}/control/{node}")

    def wait_vcpu(self, state: str) -> None:
        self.xl.until(lambda: self.stats()["vcpu"] == state, f"vCPU {state}")

    def wait_counts(self, at_least: int) -> list[int]:
        def reached() -> bool:
            counts = self.counts()
            return bool(counts) and counts[-1] >= at_least

        self.xl.until(reached, f"counter {at_least}")
        return self.counts()

    def wait_shutdown(self) -> int:
        self.xl.until(lambda: self.shutdown_code() is not None, "the domain to shut down")
        return self.shutdown_code()

    def wait_control_watch(self) -> None:
        self.xl.until(lambda: self.control("feature-poweroff") == b"1", "the control watch")


@contextlib.contextmanager
def toolstack(host, log_dir, *, xenconsoled: bool = True):
    xl = Xl(host, log_dir)
    if xenconsoled:
        xl.start_xenconsoled()
    try:
        yield xl
    finally:
        xl.park()


@pytest.fixture
def xl(threaded_host, tmp_path):
    with toolstack(threaded_host, tmp_path) as xl:
        yield xl


def test_boot_banner_and_counter_output_reach_xenconsoled(xl):
    guest = xl.create(f"console=hvc0 init=counter {FAST}")
    counts = guest.wait_counts(3)
    assert counts[:3] == [1, 2, 3]
    lines = guest.lines()
    assert lines[0] == "Booting paravirtualized kernel on Xen (xenray)"
    assert lines[1] == f"Command line: console=hvc0 init=counter {FAST}"
    stats = guest.stats()
    assert stats["init"] == "counter" and stats["domid"] == guest.domid
    assert stats["console_bytes"] >= len("\n".join(lines))


def test_11_5_boot_advertises_the_control_features_in_guest_owned_nodes(xl):
    guest = xl.create("init=idle")
    for feature in ("poweroff", "reboot", "suspend"):
        xl.until(lambda f=feature: guest.control(f"feature-{f}") == b"1", feature)
        assert xl.xs.get_perms(f"/local/domain/{guest.domid}/control/feature-{feature}") \
            == [f"n{guest.domid}"]


def test_11_5_data_init_says_running_before_the_init_program_runs(xl, monkeypatch):
    seen = []
    monkeypatch.setitem(INITS, "probe", lambda os: seen.append(
        xl.xs.read(f"/local/domain/{os.domid}/{INIT_STATUS}")))
    guest = xl.create("init=probe")
    assert guest.wait_shutdown() == ShutdownReason.poweroff  # it returned
    assert seen == [b"running probe"]


def test_11_5_data_init_says_panic_for_an_unknown_init(xl):
    guest = xl.create("init=no-such-program")
    assert guest.wait_shutdown() == ShutdownReason.crash
    assert xl.xs.read(f"/local/domain/{guest.domid}/{INIT_STATUS}") == \
        b"panic: Requested init no-such-program failed (error -2)."


def test_12_2_a_stale_gate_message_overtaken_in_flight_is_ignored(xl):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    xl.domctl(Domctl.pausedomain, guest.domid)  # the newest gate: paused
    guest.wait_vcpu("paused")
    guest.shell.deliver("vcpu_gate", False, 1)  # an old "unpause" arriving late
    frozen = guest.counts()
    assert guest.stats()["paused"] is True
    xl.domctl(Domctl.unpausedomain, guest.domid)
    guest.wait_counts(frozen[-1] + 1)


def test_12_2_pause_gate_stops_progress_and_unpause_resumes_it(xl):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_counts(2)
    xl.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    witness = xl.create(f"init=counter {FAST}")  # time passes: a running guest counts
    witness.wait_counts(15)
    assert guest.counts() == frozen
    xl.domctl(Domctl.unpausedomain, guest.domid)
    resumed = guest.wait_counts(frozen[-1] + 2)
    assert resumed == list(range(1, len(resumed) + 1))  # nothing lost or repeated


@pytest.mark.parametrize("command, reason, message", [
    ("poweroff", ShutdownReason.poweroff, "reboot: Power down"),
    ("halt", ShutdownReason.poweroff, "reboot: Power down"),
    ("reboot", ShutdownReason.reboot, "reboot: Restarting system"),
])
def test_12_3_control_shutdown_is_acked_with_empty_string_then_shutdown(xl, command, reason,
                                                                         message):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    guest.wait_control_watch()
    xl.xs.write(f"/local/domain/{guest.domid}/control/shutdown", command)
    assert guest.wait_shutdown() == reason
    assert guest.control("shutdown") == b""
    guest.wait_vcpu("stopped")
    stats = guest.stats()
    assert stats["state"] == "shutdown" and stats["shutdown_reason"] == reason.name
    xl.until(lambda: message in guest.lines(), message)


def test_19_8_shut_down_domain_stays_idle_and_keeps_the_first_reason(xl):
    guest = xl.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    guest.wait_vcpu("stopped")
    events = guest.stats()["xs_events"]
    xl.domctl(Domctl.pausedomain, guest.domid)
    xl.domctl(Domctl.unpausedomain, guest.domid)  # the gate stays shut: it is shut down
    xl.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "reboot")
    xl.until(lambda: guest.stats()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"reboot"  # nobody home to ack it
    assert guest.shutdown_code() == ShutdownReason.poweroff
    assert xl.domctl(Domctl.getdomaininfo, guest.domid)["domain"] == guest.domid
    assert guest.stats()["vcpu"] == "stopped"


def test_12_3_command_written_before_boot_is_found_when_the_watch_is_set(xl):
    guest = xl.create(f"init=counter {FAST}", control="reboot")
    assert guest.wait_shutdown() == ShutdownReason.reboot
    assert guest.control("shutdown") == b""


def test_12_3_unknown_control_command_is_ignored_and_not_acked(xl):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_control_watch()
    xl.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "explode")
    # >= 1: the watch's firing on registration may be handled after the write, and then
    # reads the same unknown command (Linux would log it twice too)
    xl.until(lambda: guest.stats()["control_ignored"] >= 1, "the command")
    assert guest.control("shutdown") == b"explode"
    assert guest.shutdown_code() is None
    last = guest.wait_counts(1)[-1]
    guest.wait_counts(last + 1)  # still running


def test_12_3_paused_domain_acts_on_control_shutdown_only_once_unpaused(xl):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_control_watch()
    events = guest.stats()["xs_events"]
    xl.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    xl.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "poweroff")
    xl.until(lambda: guest.stats()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"poweroff"  # a paused kernel runs no xenwatch
    assert guest.shutdown_code() is None
    xl.domctl(Domctl.unpausedomain, guest.domid)
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    assert guest.control("shutdown") == b""


def test_12_3_suspend_is_acked_then_shutdown_suspend_and_resumedomain_carries_on(xl):
    guest = xl.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    xl.until(lambda: guest.control("feature-suspend") == b"1", "the control watch")
    xl.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "suspend")
    assert guest.wait_shutdown() == ShutdownReason.suspend
    assert guest.control("shutdown") == b""
    xl.until(lambda: guest.stats()["state"] == "suspended", "suspended")
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    xl.domctl(Domctl.resumedomain, guest.domid)  # a cancelled suspend: SCHEDOP returns 1
    counts = guest.wait_counts(frozen[-1] + 2)
    assert counts == list(range(1, len(counts) + 1))
    assert guest.shutdown_code() is None
    assert guest.stats()["state"] == "running"


def test_init_that_raises_crashes_the_domain_after_printing_the_error(xl):
    guest = xl.create("init=crash")
    assert guest.wait_shutdown() == ShutdownReason.crash
    panic = "Kernel panic - not syncing: Attempted to kill init!"
    xl.until(lambda: guest.lines()[-1:] == [panic], "the panic")
    assert "RuntimeError: init=crash: crashing as asked" in guest.lines()
    assert guest.stats()["shutdown_reason"] == "crash"


def test_init_with_a_bad_argument_crashes_with_the_reason_on_the_console(xl):
    guest = xl.create("init=counter start=five")
    assert guest.wait_shutdown() == ShutdownReason.crash
    xl.until(lambda: "ValueError: start='five' is not a valid int" in guest.lines(), "the error")


def test_unknown_init_panics_and_crashes(xl):
    guest = xl.create("init=no-such-program")
    assert guest.wait_shutdown() == ShutdownReason.crash
    panic = "Kernel panic - not syncing: Requested init no-such-program failed (error -2)."
    xl.until(lambda: guest.lines()[-1:] == [panic], "the panic")


def test_init_that_returns_powers_the_domain_off(xl):
    guest = xl.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    xl.until(lambda: guest.lines()[-1:] == ["reboot: Power down"], "the last line")


def test_console_full_ring_blocks_the_writer_until_xenconsoled_drains_it(threaded_host,
                                                                         tmp_path, monkeypatch):
    lines = [f"line {i:03d} " + "x" * 20 for i in range(300)]  # ~9 KiB: the ring holds 2 KiB

    def spew(os):
        for line in lines:
            os.print(line)

    monkeypatch.setitem(INITS, "spew", spew)
    with toolstack(threaded_host, tmp_path, xenconsoled=False) as xl:
        guest = xl.create("init=spew")  # nobody drains its console yet
        xl.until(lambda: guest.stats()["console_waits"] >= 1, "a full ring")
        assert guest.kernel.hvc.intf.out_ring.space() == 0
        guest.wait_vcpu("blocked")
        xl.start_xenconsoled()  # xenconsoled gets round to it: drains and signals back
        assert guest.wait_shutdown() == ShutdownReason.poweroff
        xl.until(lambda: guest.lines()[-1:] == ["reboot: Power down"], "the last line")
        assert guest.lines()[2:-1] == lines


def test_save_then_restore_carries_the_counter_on_in_a_new_domain(xl):
    old = xl.create(f"init=counter {FAST}")
    old.wait_counts(3)
    xl.domctl(Domctl.pausedomain, old.domid)
    old.wait_vcpu("paused")
    saved = old.shell.deliver("save")
    last = old.counts()[-1]
    assert saved["init"] == "counter" and saved["argv"] == [FAST]
    assert saved["state"] == {"count": last}
    xl.until(lambda: len(old.output()) == saved["console_bytes"], "every byte in the log")
    new = xl.create("init=idle", saved=saved)  # the saved init wins over the command line
    counts = new.wait_counts(last + 2)
    assert counts[0] == last + 1
    assert new.kernel.clock() >= saved["clock"]


def test_guest_clock_counts_from_boot_runs_on_while_paused_and_survives_restore(xl, clock):
    """The kernel's clock is the runtime's (here the test's): guest seconds since boot."""
    old = xl.create("init=idle", runtime=clock)
    old.wait_vcpu("blocked")  # booted, asleep in idle
    clock.advance(5)
    assert old.shell.deliver("save")["clock"] == 5.0
    xl.domctl(Domctl.pausedomain, old.domid)
    old.wait_vcpu("paused")
    clock.advance(3)
    saved = old.shell.deliver("save")
    assert saved["clock"] == 8.0  # it ran on while paused
    new = xl.create("init=idle", saved=saved, runtime=clock)
    new.wait_vcpu("blocked")
    clock.advance(2)
    assert new.shell.deliver("save")["clock"] == 10.0
