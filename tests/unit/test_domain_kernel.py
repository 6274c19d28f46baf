"""The PV guest kernel (actors.domain.kernel) on an in-process host (reference 11.5, 12, 19.8).

The kernel's peers are the real ones, behind a transport like the Ray one: the hypervisor
state machine (real msgpack hypercalls), xenstored's server (real xs_wire), the toolstack's
domain builder, and a console backend that binds the console port and drains the ring with
``read_out`` as xenconsoled does. Calls run at once in the caller's thread; one-way messages
(upcalls, vCPU gates, watch events) go through one mailbox thread, in order, as to an actor.
"""

import os
import queue
import threading
import time
import traceback

import msgpack
import pytest
import structlog

from actors import memory
from actors.domain.inits import INITS
from actors.domain.kernel import PVKernel
from actors.hypercall_client import Credential, HypercallClient
from actors.hypervisor.effects import Deliver, GateVcpus, ReleaseMemory, SizeMemory
from actors.hypervisor.state import Hypervisor
from actors.memory import Mapping
from actors.domain.layout import PFN_CONSOLE
from actors.toolstack.builder import build_pv_domain
from actors.xenstored.server import XenstoredServer
from actors.xs_client import XsClient
from cluster.xlcfg import parse_config
from protocols.console import ConsoleInterface
from protocols.hypercall import (DomInfoFlag, Domctl, EvtchnOp, Hypercall, ShutdownReason,
                                 dominf_shutdown_code)
from protocols.start_info import StartInfo

HOST = "h1"
HV, XENSTORED, XL, CONSOLED = "h1/hypervisor", "h1/xenstored", "h1/xl", "h1/xenconsoled"
FAST = "interval=0.02"  # a counter that prints 50 lines a second


def wait_until(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


class Host:
    """One emulated host in-process; also the transport (``call``/``send``/``forget``)."""

    def __init__(self, mem_prefix: str) -> None:
        self._maps: dict[str, Mapping] = {}
        self.hv = Hypervisor(HOST, memory_mib=64, pcpus=2, mem_prefix=mem_prefix,
                             frames=self._frames)
        self.dom0_secret = self.hv.boot_dom0(memory_mib=16).secret
        self.hv_lock = threading.Lock()
        self.xenstored = XenstoredServer()
        self._xs_conns: dict[tuple[int, str], int] = {}
        self._calling = threading.local()
        self.endpoints: dict[str, object] = {}
        self.errors: list[str] = []
        self.mailbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._deliver, daemon=True).start()
        self.xl = HypercallClient(self, HV, Credential(0, self.dom0_secret, XL))
        self.xs = XsClient(self, HOST, 0, self.dom0_secret, XL)
        self.console = ConsoleBackend(self)
        self.guests: list[Guest] = []

    # -- the transport ---------------------------------------------------------------------

    def call(self, dest, kind, *args, timeout=None):
        if (dest, kind) == (HV, "hypercall"):
            with self.hv_lock:
                reply, effects = self.hv.hypercall(*args)
                for e in effects:
                    self._carry_out(e)
            return reply
        assert (dest, kind) == (XENSTORED, "xs"), (dest, kind)
        domid, _secret, endpoint, data = args
        conn_id = self._xs_connection(domid, endpoint)
        self._calling.conn_id, self._calling.buf = conn_id, []
        try:
            assert self.xenstored.handle(conn_id, data)
            return b"".join(self._calling.buf)
        finally:
            self._calling.conn_id = None

    def send(self, dest, kind, *args):
        self.mailbox.put((dest, kind, args))

    def forget(self, dest):
        pass

    def _carry_out(self, effect) -> None:
        """What the hypervisor's Ray shell does with each effect."""
        if isinstance(effect, Deliver):
            self.send(effect.endpoint, "upcall", effect.domid, list(effect.ports))
        elif isinstance(effect, GateVcpus):
            self.send(effect.endpoint, "vcpu_gate", effect.paused, effect.seq)
        elif isinstance(effect, SizeMemory):
            memory.create(effect.path, effect.nr_pages)
        elif isinstance(effect, ReleaseMemory):
            memory.remove(effect.path)

    def _frames(self, domid: int, pfn: int, count: int) -> memoryview:
        """The hypervisor's view of a domain's pages, as its actor maps them."""
        path = self.hv.memory_path(domid)
        m = self._maps.get(path)
        if m is None or pfn + count > m.nr_pages:
            m = self._maps[path] = Mapping(path)
        return m.pages(pfn, count)

    def _xs_connection(self, domid: int, endpoint: str) -> int:
        """As xenstored's actor: replies to the call in progress go back with it, anything
        else is pushed to the connection's endpoint as ``xs_event``."""
        key = (domid, endpoint)
        if key not in self._xs_conns:
            holder: list[int] = []

            def send(data: bytes) -> None:
                if getattr(self._calling, "conn_id", None) == holder[0]:
                    self._calling.buf.append(data)
                else:
                    self.send(endpoint, "xs_event", data)

            holder.append(self.xenstored.open_connection(domid, domid == 0, send))
            self._xs_conns[key] = holder[0]
        return self._xs_conns[key]

    def _deliver(self) -> None:
        while True:
            dest, kind, args = self.mailbox.get()
            target = self.endpoints.get(dest)
            if target is None:
                continue
            try:
                getattr(target, kind)(*args)
            except Exception:
                self.errors.append(traceback.format_exc())

    # -- the toolstack's part --------------------------------------------------------------

    def create(self, extra: str, *, saved: dict | None = None,
               control: str | None = None) -> "Guest":
        """Build, introduce, start the kernel and unpause, as ``xl create`` does; ``control``
        is written to ``control/shutdown`` just before the unpause."""
        cfg, _ = parse_config(f'name = "guest{len(self.guests)}"\nmemory = 8\n'
                              f'extra = "{extra}"\n')
        built = build_pv_domain(self.xl, self.xs, cfg)
        domid, endpoint = built.domid, f"{HOST}/dom{built.domid}"
        self.xenstored.introduce_domain(domid)
        mapping = Mapping(built.memory_path)
        kernel = PVKernel(StartInfo.unpack(mapping.page(0)), mapping,
                          HypercallClient(self, HV, Credential(domid, built.secret, endpoint)),
                          XsClient(self, HOST, domid, built.secret, endpoint),
                          structlog.get_logger().bind(domid=domid))
        if saved is not None:
            kernel.restore(saved)
        self.endpoints[endpoint] = kernel
        self.console.attach(domid, built.console_port, built.memory_path)
        self.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
                ctxt=msgpack.packb({"pid": os.getpid(), "endpoint": endpoint}))
        guest = Guest(self, domid, kernel)
        self.guests.append(guest)
        if control is not None:
            self.xs.write(f"/local/domain/{domid}/control/shutdown", control)
        self.domctl(Domctl.unpausedomain, domid)
        return guest

    def domctl(self, op: Domctl, domid: int):
        return self.xl(Hypercall.domctl, op, domain=domid)

    def stop(self) -> None:
        """Park every vCPU for good (their threads are daemons) and report mailbox errors."""
        for guest in self.guests:
            self.domctl(Domctl.pausedomain, guest.domid)
        assert not self.errors, "\n".join(self.errors)


class ConsoleBackend:
    """xenconsoled's data path: bind each guest's console port, drain the ``out`` ring with
    ``read_out`` on every upcall (while ``auto_drain``), then signal the guest back."""

    def __init__(self, host: Host) -> None:
        self.hv = HypercallClient(host, HV, Credential(0, host.dom0_secret, CONSOLED))
        host.endpoints[CONSOLED] = self
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
    def __init__(self, host: Host, domid: int, kernel: PVKernel) -> None:
        self.host, self.domid, self.kernel = host, domid, kernel

    def lines(self) -> list[str]:
        return self.host.console.text(self.domid).splitlines()

    def counts(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("counter ")]

    def shutdown_code(self) -> int | None:
        flags = self.host.domctl(Domctl.getdomaininfo, self.domid)["flags"]
        return dominf_shutdown_code(flags) if flags & DomInfoFlag.shutdown else None

    def control(self, node: str) -> bytes:
        return self.host.xs.read(f"/local/domain/{self.domid}/control/{node}")

    def wait_vcpu(self, state: str) -> None:
        wait_until(lambda: self.kernel.statistics()["vcpu"] == state, f"vCPU {state}")

    def wait_counts(self, at_least: int) -> list[int]:
        def reached() -> bool:
            counts = self.counts()
            return bool(counts) and counts[-1] >= at_least

        wait_until(reached, f"counter {at_least}")
        return self.counts()

    def wait_shutdown(self) -> int:
        wait_until(lambda: self.shutdown_code() is not None, "the domain to shut down")
        return self.shutdown_code()


@pytest.fixture
def host(tmp_path):
    h = Host(str(tmp_path / "mem"))
    yield h
    h.stop()


def test_boot_banner_and_counter_output_land_in_the_console_ring(host):
    guest = host.create(f"console=hvc0 init=counter {FAST}")
    counts = guest.wait_counts(3)
    assert counts[:3] == [1, 2, 3]
    lines = guest.lines()
    assert lines[0] == "Booting paravirtualized kernel on Xen (xenray)"
    assert lines[1] == f"Command line: console=hvc0 init=counter {FAST}"
    stats = guest.kernel.statistics()
    assert stats["init"] == "counter" and stats["domid"] == guest.domid
    assert stats["console_bytes"] >= len("\n".join(lines))


def test_11_5_boot_advertises_the_control_features_in_guest_owned_nodes(host):
    guest = host.create("init=idle")
    for feature in ("poweroff", "reboot", "suspend"):
        wait_until(lambda f=feature: guest.control(f"feature-{f}") == b"1", feature)
        assert host.xs.get_perms(f"/local/domain/{guest.domid}/control/feature-{feature}") \
            == [f"n{guest.domid}"]


def test_12_2_a_stale_gate_message_overtaken_in_flight_is_ignored(host):
    guest = host.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    host.domctl(Domctl.pausedomain, guest.domid)  # the newest gate: paused
    guest.wait_vcpu("paused")
    guest.kernel.vcpu_gate(False, seq=1)  # an old "unpause" arriving late
    frozen = guest.counts()
    assert guest.kernel.statistics()["paused"] is True
    host.domctl(Domctl.unpausedomain, guest.domid)
    guest.wait_counts(frozen[-1] + 1)


def test_12_2_pause_gate_stops_progress_and_unpause_resumes_it(host):
    guest = host.create(f"init=counter {FAST}")
    guest.wait_counts(2)
    host.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    witness = host.create(f"init=counter {FAST}")  # time passes: a running guest counts
    witness.wait_counts(15)
    assert guest.counts() == frozen
    host.domctl(Domctl.unpausedomain, guest.domid)
    resumed = guest.wait_counts(frozen[-1] + 2)
    assert resumed == list(range(1, len(resumed) + 1))  # nothing lost or repeated


@pytest.mark.parametrize("command, reason, message", [
    ("poweroff", ShutdownReason.poweroff, "reboot: Power down"),
    ("halt", ShutdownReason.poweroff, "reboot: Power down"),
    ("reboot", ShutdownReason.reboot, "reboot: Restarting system"),
])
def test_12_3_control_shutdown_is_acked_with_empty_string_then_shutdown(host, command, reason,
                                                                        message):
    guest = host.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    wait_until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    host.xs.write(f"/local/domain/{guest.domid}/control/shutdown", command)
    assert guest.wait_shutdown() == reason
    assert guest.control("shutdown") == b""
    guest.wait_vcpu("stopped")
    stats = guest.kernel.statistics()
    assert stats["state"] == "shutdown" and stats["shutdown_reason"] == reason.name
    assert message in guest.lines()


def test_19_8_shut_down_domain_stays_idle_and_keeps_the_first_reason(host):
    guest = host.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    guest.wait_vcpu("stopped")
    events = guest.kernel.statistics()["xs_events"]
    host.domctl(Domctl.pausedomain, guest.domid)
    host.domctl(Domctl.unpausedomain, guest.domid)  # the gate stays shut: it is shut down
    host.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "reboot")
    wait_until(lambda: guest.kernel.statistics()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"reboot"  # nobody home to ack it
    assert guest.shutdown_code() == ShutdownReason.poweroff
    assert host.domctl(Domctl.getdomaininfo, guest.domid)["domain"] == guest.domid
    assert guest.kernel.statistics()["vcpu"] == "stopped"


def test_12_3_command_written_before_boot_is_found_when_the_watch_is_set(host):
    guest = host.create(f"init=counter {FAST}", control="reboot")
    assert guest.wait_shutdown() == ShutdownReason.reboot
    assert guest.control("shutdown") == b""


def test_12_3_unknown_control_command_is_ignored_and_not_acked(host):
    guest = host.create(f"init=counter {FAST}")
    wait_until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    host.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "explode")
    wait_until(lambda: guest.kernel.statistics()["control_ignored"] == 1, "the command")
    assert guest.control("shutdown") == b"explode"
    assert guest.shutdown_code() is None
    last = guest.counts()[-1]
    guest.wait_counts(last + 1)  # still running


def test_12_3_paused_domain_acts_on_control_shutdown_only_once_unpaused(host):
    guest = host.create(f"init=counter {FAST}")
    wait_until(lambda: guest.control("feature-poweroff") == b"1", "the control watch")
    events = guest.kernel.statistics()["xs_events"]
    host.domctl(Domctl.pausedomain, guest.domid)
    guest.wait_vcpu("paused")
    host.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "poweroff")
    wait_until(lambda: guest.kernel.statistics()["xs_events"] > events, "the watch event")
    assert guest.control("shutdown") == b"poweroff"  # a paused kernel runs no xenwatch
    assert guest.shutdown_code() is None
    host.domctl(Domctl.unpausedomain, guest.domid)
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    assert guest.control("shutdown") == b""


def test_12_3_suspend_is_acked_then_shutdown_suspend_and_resumedomain_carries_on(host):
    guest = host.create(f"init=counter {FAST}")
    guest.wait_counts(1)
    wait_until(lambda: guest.control("feature-suspend") == b"1", "the control watch")
    host.xs.write(f"/local/domain/{guest.domid}/control/shutdown", "suspend")
    assert guest.wait_shutdown() == ShutdownReason.suspend
    assert guest.control("shutdown") == b""
    wait_until(lambda: guest.kernel.statistics()["state"] == "suspended", "suspended")
    guest.wait_vcpu("paused")
    frozen = guest.counts()
    host.domctl(Domctl.resumedomain, guest.domid)  # a cancelled suspend: SCHEDOP returns 1
    counts = guest.wait_counts(frozen[-1] + 2)
    assert counts == list(range(1, len(counts) + 1))
    assert guest.shutdown_code() is None
    assert guest.kernel.statistics()["state"] == "running"


def test_init_that_raises_crashes_the_domain_after_printing_the_error(host):
    guest = host.create("init=crash")
    assert guest.wait_shutdown() == ShutdownReason.crash
    lines = guest.lines()
    assert "RuntimeError: init=crash: crashing as asked" in lines
    assert lines[-1] == "Kernel panic - not syncing: Attempted to kill init!"
    assert guest.kernel.statistics()["shutdown_reason"] == "crash"


def test_init_with_a_bad_argument_crashes_with_the_reason_on_the_console(host):
    guest = host.create("init=counter start=five")
    assert guest.wait_shutdown() == ShutdownReason.crash
    assert "ValueError: start='five' is not a valid int" in guest.lines()


def test_unknown_init_panics_and_crashes(host):
    guest = host.create("init=no-such-program")
    assert guest.wait_shutdown() == ShutdownReason.crash
    assert guest.lines()[-1] == ("Kernel panic - not syncing: Requested init no-such-program "
                                 "failed (error -2).")


def test_init_that_returns_powers_the_domain_off(host):
    guest = host.create("init=poweroff")
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    assert guest.lines()[-1] == "reboot: Power down"


def test_console_full_ring_blocks_the_writer_until_xenconsoled_drains_it(host, monkeypatch):
    lines = [f"line {i:03d} " + "x" * 20 for i in range(300)]  # ~9 KiB: the ring holds 2 KiB

    def spew(os):
        for line in lines:
            os.print(line)

    monkeypatch.setitem(INITS, "spew", spew)
    host.console.auto_drain = False
    guest = host.create("init=spew")
    wait_until(lambda: guest.kernel.statistics()["console_waits"] >= 1, "a full ring")
    assert host.console.rings[guest.domid][0].out_ring.space() == 0
    guest.wait_vcpu("blocked")
    host.console.auto_drain = True
    host.console.drain(guest.domid)  # xenconsoled gets round to it: drains and signals back
    assert guest.wait_shutdown() == ShutdownReason.poweroff
    wait_until(lambda: guest.lines()[-1] == "reboot: Power down", "the last line")
    assert guest.lines()[2:-1] == lines


def test_save_then_restore_carries_the_counter_on_in_a_new_domain(host):
    old = host.create(f"init=counter {FAST}")
    old.wait_counts(3)
    host.domctl(Domctl.pausedomain, old.domid)
    old.wait_vcpu("paused")
    saved = old.kernel.save()
    last = old.counts()[-1]
    assert saved["init"] == "counter" and saved["argv"] == [FAST]
    assert saved["state"] == {"count": last}
    assert saved["console_bytes"] == len(host.console.text(old.domid).encode())
    new = host.create("init=idle", saved=saved)  # the saved init wins over the command line
    counts = new.wait_counts(last + 2)
    assert counts[0] == last + 1
    assert new.kernel.clock() >= saved["clock"]
