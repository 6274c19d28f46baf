"""The PV guest kernel (actors.domain.kernel) in its real shell on an in-process host
(reference 11.5, 12, 19.8).

Every peer is real (``threaded_host``): the hypervisor's and xenstored's shells, the toolstack's
build steps, the domain's own :class:`DomainShell` and xenconsoled's :class:`ConsoleShell`,
whose log file is what a guest printed. One-way messages (upcalls, vCPU gates, watch events)
go through the host's mailbox thread, in order, as to an actor. The toolstack's side is the
small :class:`Xl` below; the fixture pauses every guest at the end, so no vCPU runs on.
"""

import contextlib
import dataclasses
import json
import pathlib
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest

from actors.blkback.actor import BlkbackShell
from actors.blkback.vbd import create_image
from actors.console.actor import ConsoleShell
from actors.domain.actor import DomainShell
from actors.domain.initmem import InitMemory
from actors.guest.blk import BLKVERIFY, verify_block
from actors.guest.blk import DONE as BLK_DONE
from actors.guest.inits import COUNTER, INITS
from actors.guest.memdirty import META as MEMDIRTY
from actors.memory import Mapping
from actors.netback.actor import NetbackShell
from actors.runtime import THREADS
from protocols.errno import XenError
from protocols.hypercall import Domctl, DomInfoFlag, Hypercall, ShutdownReason, dominf_shutdown_code
from protocols.libxl_types import DiskSpec, DomainConfig, VifSpec
from protocols.page import PAGE_SIZE
from protocols.pv_layout import PFN_START_INFO
from protocols.start_info import SIZE as START_INFO_SIZE
from protocols.start_info import StartInfo
from protocols.xenstore.paths import INIT_STATUS
from tests.inprocess import HOST, domain_endpoint

BLKBACK, NETBACK = f"{HOST}/blkback", f"{HOST}/netback"
XVDA = 51712

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

    def create(self, cmdline: str, *, control: str | None = None, runtime=THREADS,
               **config) -> "Guest":
        """Build, start the domain's shell and unpause; ``control`` is written to
        ``control/shutdown`` just before the unpause; ``config``: more DomainConfig fields."""
        cfg = DomainConfig(name=f"guest{len(self.guests)}", memory=8, maxmem=8,
                           cmdline=cmdline, **config)
        return self._start(cfg, control=control, runtime=runtime)

    def _start(self, cfg: DomainConfig, *, control: str | None = None, runtime=THREADS,
               resume: bool = False, resume_from: "Guest | None" = None,
               alter: Callable[[Mapping], None] | None = None) -> "Guest":
        built = self.host.build(cfg)
        endpoint = domain_endpoint(built.domid)
        shell = self.host.start(endpoint, DomainShell(
            built.domid, self.host.clients(endpoint, built.domid, built.secret),
            built.memory_path, self.host.log.bind(domid=built.domid), runtime,
            resume=resume or resume_from is not None))
        if resume_from is not None:  # as libxl: the domain's vCPUs exist, then the memory
            self._restore_memory(resume_from, built, alter)
        guest = Guest(self, built.domid, cfg, shell, built.memory_path)
        self.guests.append(guest)
        if control is not None:
            self.xs.write(f"/local/domain/{built.domid}/control/shutdown", control)
        self.domctl(Domctl.unpausedomain, built.domid)
        return guest

    def resume(self, old: "Guest", *, name: str | None = None, runtime=THREADS,
               alter: Callable[[Mapping], None] | None = None) -> "Guest":
        """What a restore does with a suspended guest, in-process: a new domain built from
        the same config (``name``: another name than the old one's), the old memory copied
        into it page for page (then ``alter``-ed: a test's damage), start_info's console port
        rewritten to the new domain's (Xen's ``process_start_info``), the shell built with
        ``resume=True``, unpaused."""
        assert old.shutdown_code() == ShutdownReason.suspend, "resume a suspended guest"
        cfg = old.cfg if name is None else dataclasses.replace(old.cfg, name=name)
        return self._start(cfg, runtime=runtime, resume_from=old, alter=alter)

    @staticmethod
    def _restore_memory(old: "Guest", built, alter) -> None:
        src, dst = Mapping(old.memory_path, readonly=True), Mapping(built.memory_path)
        try:
            dst.view[:] = src.view
            info = StartInfo.unpack(dst.page(PFN_START_INFO))
            dst.page(PFN_START_INFO)[:START_INFO_SIZE] = dataclasses.replace(
                info, console_evtchn=built.console_port).pack()
            if alter is not None:
                alter(dst)
        finally:
            src.close()
            dst.close()

    def domctl(self, op: Domctl, domid: int):
        return self.host.xl(Hypercall.domctl, op, domain=domid)

    def park(self) -> None:
        """Pause every guest for good (their vCPU threads are daemons)."""
        for guest in self.guests:
            self.domctl(Domctl.pausedomain, guest.domid)


class Guest:
    """One guest, seen from Dom0: its shell's statistics, its console log, its domain info."""

    def __init__(self, xl: Xl, domid: int, cfg: DomainConfig, shell: DomainShell,
                 memory_path: str) -> None:
        self.xl, self.domid, self.cfg, self.shell = xl, domid, cfg, shell
        self.name, self.memory_path = cfg.name, memory_path
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

    def results(self) -> list[dict]:
        return [json.loads(line[len("RESULT "):]) for line in self.lines()
                if line.startswith("RESULT ")]

    def suspend(self) -> None:
        """``control/shutdown`` = ``suspend``, as libxl's save does, until the domain has shut
        down with reason suspend and xenconsoled has logged all it printed."""
        self.wait_control_watch()
        self.xl.xs.write(f"/local/domain/{self.domid}/control/shutdown", "suspend")
        assert self.wait_shutdown() == ShutdownReason.suspend
        self.xl.until(lambda: "PM: suspending" in self.lines(), "the console drained")

    def regions(self) -> dict[str, tuple[int, int, int]]:
        """The init memory directory, as the guest's memory holds it (Dom0's map of it);
        none before the kernel has booted."""
        def read(mapping: Mapping) -> dict[str, tuple[int, int, int]]:
            try:
                return _directory(mapping).regions()
            except XenError:
                return {}
        return self._with_memory(read)

    def region(self, name: str, dtype) -> np.ndarray:
        """A copy of the init's memory region ``name``, from the guest's memory."""
        def read(mapping: Mapping) -> np.ndarray:
            first, _, nbytes = _directory(mapping).regions()[name]
            return np.frombuffer(bytes(mapping.view[first * PAGE_SIZE:][:nbytes]), dtype)
        return self._with_memory(read)

    def _with_memory(self, fn):
        mapping = Mapping(self.memory_path, readonly=True)
        try:
            return fn(mapping)
        finally:
            mapping.close()


def _directory(mapping: Mapping) -> InitMemory:
    directory = InitMemory(mapping.pages, mapping.nr_pages)
    directory.load()
    return directory


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


# -- issue 11: suspend, and resume in place or in a new domain (reference 12.1, 15.3) ------------

def test_11_counter_resumed_in_a_new_domain_goes_on_with_the_next_number_twice_over(xl):
    """The new domain has the old one's name, so xenconsoled logs both in one file."""
    old = xl.create(f"init=counter {FAST}")
    old.wait_counts(3)
    old.suspend()
    last = old.counts()[-1]
    assert old.region("counter", COUNTER)[0]["count"] == last  # memory says what was printed
    new = xl.resume(old)
    counts = new.wait_counts(last + 3)
    assert counts == list(range(1, len(counts) + 1))  # no repeat, no gap
    lines = new.lines()
    i = lines.index("PM: suspending")
    assert lines[i + 1:i + 4] == ["xen:grant_table: Grant tables using version 1 layout",
                                  f"PM: resumed in domain {new.domid} ({new.name})",
                                  "Restarting tasks ... done."]
    stats = new.stats()
    assert (stats["resumed"], stats["suspends"], stats["domid"], stats["state"]) == \
        (True, 1, new.domid, "running")
    assert xl.xs.read(f"/local/domain/{new.domid}/{INIT_STATUS}") == b"running counter"
    new.suspend()  # its control/shutdown watch is set again: and once more
    last = new.counts()[-1]
    newer = xl.resume(new)
    counts = newer.wait_counts(last + 2)
    assert counts == list(range(1, len(counts) + 1))
    assert newer.stats()["suspends"] == 2


def test_11_init_memory_is_found_again_by_the_resumed_kernel(xl, monkeypatch):
    seen = []

    def probe(os):
        a, b = os.memory("a", 3, np.uint64), os.memory("b", 5000)
        if not os.resumed:
            a[:], b[:] = [1, 2, 3], 7
        seen.append((os.resumed, a.tolist(), int(b.sum())))
        os.idle()

    monkeypatch.setitem(INITS, "probe", probe)
    old = xl.create("init=probe")
    xl.until(lambda: len(seen) == 1, "the init")
    top = 8 * 256  # the domain's pages: regions come from the top down
    assert old.regions() == {"a": (top - 1, 1, 24), "b": (top - 3, 2, 5000)}
    old.suspend()
    new = xl.resume(old)
    xl.until(lambda: len(seen) == 2, "the resumed init")
    assert seen == [(False, [1, 2, 3], 35000), (True, [1, 2, 3], 35000)]
    assert new.regions() == old.regions()
    assert new.stats()["init_memory"] == {"a": 1, "b": 2}


def test_11_an_init_asking_for_more_memory_than_the_domain_has_crashes_with_enomem(xl):
    guest = xl.create("init=memdirty wss=8")  # all of the domain's 8 MiB
    assert guest.wait_shutdown() == ShutdownReason.crash
    xl.until(lambda: any(line.startswith("protocols.errno.XenError: ENOMEM")
                         for line in guest.lines()), "the error")


def test_11_guest_clock_runs_on_while_paused_and_resumes_from_the_clock_at_suspend(xl, clock):
    """The kernel's clock is the runtime's (here the test's): guest seconds since boot; the
    time a domain spends suspended (saved, in transit) is not counted."""
    old = xl.create("init=idle", runtime=clock)
    old.wait_vcpu("blocked")  # booted, asleep in idle
    clock.advance(5)
    assert old.stats()["clock"] == 5.0
    xl.domctl(Domctl.pausedomain, old.domid)
    old.wait_vcpu("paused")
    clock.advance(3)
    assert old.stats()["clock"] == 8.0  # it ran on while paused
    xl.domctl(Domctl.unpausedomain, old.domid)
    old.suspend()
    clock.advance(100)  # suspended: in a file, or on its way to another host
    new = xl.resume(old, runtime=clock)
    new.wait_vcpu("blocked")
    assert new.stats()["clock"] == 8.0
    clock.advance(2)
    assert new.stats()["clock"] == 10.0


def test_11_a_resume_without_a_start_info_crashes(xl):
    old = xl.create("init=idle")
    old.suspend()

    def lose_start_info(mapping: Mapping) -> None:
        mapping.page(PFN_START_INFO)[:] = bytes(PAGE_SIZE)

    new = xl.resume(old, name="lost", alter=lose_start_info)
    assert new.wait_shutdown() == ShutdownReason.crash
    assert new.stats()["init"] is None  # it never got as far as its command line


def test_11_a_resume_from_memory_that_never_suspended_panics(xl):
    guest = xl._start(DomainConfig(name="fresh", memory=8, maxmem=8, cmdline="init=idle"),
                      resume=True)
    assert guest.wait_shutdown() == ShutdownReason.crash
    panic = ("Kernel panic - not syncing: cannot resume: no kernel data: this memory was "
             "never suspended")
    xl.until(lambda: panic in guest.lines(), "the panic")


# -- memdirty: its pages arrive intact, or the check says which did not ---------------------------

def test_11_memdirty_verifies_an_intact_copy_and_catches_a_corrupted_page(xl):
    old = xl.create("init=memdirty wss=0.5 verify=1")  # 128 pages, flat out
    xl.until(lambda: "memdirty" in old.regions() and
             old.region("memdirty", MEMDIRTY)[0]["dirtied"] > 300, "pages dirtied")
    old.suspend()
    dirtied = int(old.region("memdirty", MEMDIRTY)[0]["dirtied"])

    def corrupt(mapping: Mapping) -> None:
        first, _, _ = _directory(mapping).regions()["memdirty.pages"]
        mapping.page(first + 7)[100] ^= 0x40

    intact = xl.resume(old, name="intact")
    damaged = xl.resume(old, name="damaged", alter=corrupt)
    for guest, bad in ((intact, []), (damaged, [7])):
        result = xl.until(lambda g=guest: g.results(), "the check")[0]
        assert (result["bad_pages"], result["bad"]) == (bad, len(bad))
        assert result["resumed"] and result["dirtied"] == dirtied and result["pages"] == 128
    assert "memdirty: verify: 128 pages, 1 bad: pages 7" in damaged.lines()


# -- disks: quiesced at suspend, running on after a cancel, reconnected after a resume ----------

@pytest.fixture
def blkback(threaded_host):
    back = threaded_host.start(BLKBACK, BlkbackShell(HOST, threaded_host.clients(BLKBACK),
                                                     threaded_host.log))
    yield back
    assert back.backend.effect_errors == 0


def _blkverify_guest(xl, tmp_path, blocks: int):
    img = tmp_path / "disk.img"
    create_image(img, "8M")
    guest = xl.create(f"init=blkverify blocks={blocks} iodepth=8",
                      disk=(DiskSpec("xvda", XVDA, target=str(img)),))
    xl.until(lambda: "blkverify" in guest.regions() and
             guest.region("blkverify", BLKVERIFY)[0]["next"] >= 64, "blkverify under way",
             timeout=30)
    return guest, img


def _image_verifies(img, blocks: int) -> bool:
    data = img.read_bytes()
    return all(data[i * 4096:(i + 1) * 4096] == verify_block(1, i, 4096) for i in range(blocks))


def test_11_blkverify_suspended_mid_stream_resumes_in_a_new_domain_and_verifies(
        xl, blkback, tmp_path):
    old, img = _blkverify_guest(xl, tmp_path, blocks=1024)
    old.suspend()
    at_suspend = old.region("blkverify", BLKVERIFY)[0]
    assert at_suspend["phase"] != BLK_DONE, "the suspend came after the end: no test"
    assert old.stats()["vbd"][XVDA]["in_flight"] == 0  # quiesced
    new = xl.resume(old)
    [result] = xl.until(new.results, "the result", timeout=60)
    assert (result["verified"], result["bad"]) == (1024, [])
    assert _image_verifies(img, 1024)
    vbd = new.stats()["vbd"][XVDA]
    assert vbd["state"] == "CONNECTED" and vbd["issued"] < 2 * 1024 + 1  # not from scratch
    assert sum(line.startswith("blkverify: ") for line in new.lines()) == 1


def test_11_a_cancelled_suspend_runs_on_in_place_with_the_same_disk_ring(xl, blkback, tmp_path):
    guest, img = _blkverify_guest(xl, tmp_path, blocks=512)
    guest.suspend()
    assert guest.stats()["vbd"][XVDA]["suspended"] is True
    xl.domctl(Domctl.resumedomain, guest.domid)  # the stream broke: SCHEDOP returns 1
    [result] = xl.until(guest.results, "the result", timeout=60)
    assert (result["verified"], result["bad"]) == (512, [])
    assert _image_verifies(img, 512)
    stats = guest.stats()
    assert (stats["state"], stats["resumed"], stats["suspends"]) == ("running", False, 1)
    assert stats["vbd"][XVDA]["reconnects"] == 0 and stats["vbd"][XVDA]["suspended"] is False


# -- network: ping goes on, and the bridge learns where the MAC went -----------------------------

PINGER_MAC, TARGET_MAC = "00:16:3e:11:00:01", "00:16:3e:11:00:02"


@pytest.fixture
def netback(threaded_host):
    back = threaded_host.start(NETBACK, NetbackShell(HOST, threaded_host.clients(NETBACK),
                                                     threaded_host.log))
    yield back
    assert back.backend.effect_errors == 0


def test_11_ping_resumed_in_a_new_domain_keeps_its_sequence_and_the_bridge_relearns(
        xl, netback):
    xl.create("init=idle", vif=(VifSpec(devid=0, mac=TARGET_MAC, ip="10.0.0.1"),))
    old = xl.create("init=ping 10.0.0.1 count=30 interval=0.05 timeout=5",
                    vif=(VifSpec(devid=0, mac=PINGER_MAC, ip="10.0.0.2"),))
    xl.until(lambda: sum("icmp_seq=" in line for line in old.lines()) >= 5, "replies")
    old.suspend()
    new = xl.resume(old)
    [result] = xl.until(new.results, "the summary", timeout=60)
    seqs = [int(line.split("icmp_seq=")[1].split()[0]) for line in new.lines()
            if "icmp_seq=" in line]
    assert seqs == list(range(1, 31))  # one line each, none lost or repeated
    assert (result["transmitted"], result["received"]) == (30, 30)
    fdb = netback.bridges.bridges["xenbr0"].fdb()
    assert fdb[PINGER_MAC] == f"vif{new.domid}.0"  # moved to the new domain's port
    stack = new.stats()["vif"][0]["stack"]
    assert stack["arp_gratuitous_tx"] >= 1 and stack["mac"] == PINGER_MAC


def test_statistics_asks_the_devices_with_the_gate_let_go(xl, netback):
    """A vCPU blocking on its network stack holds the stack's lock and then takes gate.cv
    (VcpuCondition); statistics asking the stack under gate.cv deadlocked the domain (seen in
    CI: its statistics never answered). Here the stack's lock is held while statistics waits
    for it: gate.cv must be free meanwhile."""
    guest = xl.create("init=idle", vif=(VifSpec(devid=0, mac=TARGET_MAC, ip="10.0.0.1"),))
    xl.until(lambda: guest.kernel.net_devices and guest.kernel.net_devices.stacks, "its vif")
    stack, gate = guest.kernel.net_devices.stacks[0], guest.kernel.gate
    got = []
    with stack._cv:
        asking = threading.Thread(target=lambda: got.append(guest.kernel.statistics()))
        asking.start()
        xl.until(lambda: _waits_in(asking, "netstack.py", "statistics"),
                 "statistics to wait for the stack")
        free = gate.cv.acquire(timeout=1)
        if free:
            gate.cv.release()
    asking.join(timeout=10)
    assert free, "statistics held gate.cv while it waited for a device"
    assert got and got[0]["vif"][0]["stack"]["mac"] == TARGET_MAC


def _waits_in(thread: threading.Thread, filename: str, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_filename.endswith(filename) and frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
