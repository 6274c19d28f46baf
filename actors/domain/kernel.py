"""The PV guest kernel of a xenray DomU: boot, the vCPU, and what an init program calls.

Why: DESIGN.md "Guests". A PV Linux domU boots from its start_info page
(``arch/x86/xen/enlighten_pv.c``: ``xen_start_kernel``), brings up xenbus and its drivers, then
runs ``init`` (``init/main.c``: ``kernel_init``). This kernel does the same, cut down to what an
init program (:mod:`actors.guest.api`) needs. Its parts, one module each:

* :mod:`.rungate`: the run gate every kernel entry passes (pause, suspend, shutdown);
* :mod:`.hvc`: the console driver (``drivers/tty/hvc/hvc_xen.c``) and printk;
* :mod:`.xenwatch`: the thread running xenstore watch callbacks (``xenbus_xs.c``);
* :mod:`.manage`: the PV control protocol on ``control/shutdown`` (``manage.c``);
* :mod:`.blkdev`, :mod:`.netdev`: the block and network frontends, probed at boot.

The init runs on the vCPU thread, which the first unpause starts; threads come from the
:class:`~actors.runtime.Runtime` the shell hands in, and so does the guest's clock: seconds
since boot, carried over a save/restore, running on while the domain is paused.

Decisions:

* Boot steps (identity, the shutdown watcher, the devices) each may fail and the kernel boots
  on, as Linux boots on without xenbus (deaf to ``control/shutdown``).
* Just before the init runs the kernel writes ``running NAME`` to ``~/data/init`` (the
  guest-writable area of reference 11.5; ``INIT_STATUS``), or ``panic: ...`` if there is no
  such init: the toolstack's create waits for it (``builder.wait_init``).
* An init that raises crashes the domain after printing the exception's last traceback line
  and Linux's "Attempted to kill init!" panic; an unknown init panics as Linux does when
  ``init=`` cannot be run; an init that returns powers the domain off.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from actors.domain.blkdev import BlockDevices
from actors.domain.hvc import HvcConsole
from actors.domain.manage import PVControl
from actors.domain.netdev import NetDevices
from actors.domain.rungate import GateChange, Halted, KernelState, RunGate
from actors.domain.xenwatch import Xenwatch
from actors.guest.api import GuestOS, parse_init
from actors.guest.inits import INITS
from actors.memory import Mapping
from actors.runtime import THREADS, Runtime
from protocols.console import ConsoleInterface
from protocols.errno import Errno, XenError
from protocols.hypercall import Hypercall, SchedOp, ShutdownReason
from protocols.start_info import StartInfo
from protocols.xenstore.paths import INIT_STATUS

NET_UP_TIMEOUT_S = 30.0  # how long GuestOS.net() waits for a vif's carrier

_MESSAGES = {ShutdownReason.poweroff: "reboot: Power down",  # kernel/reboot.c
             ShutdownReason.reboot: "reboot: Restarting system"}


class XsLike(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` the kernel uses."""

    def read(self, path: str, tx_id: int = 0) -> bytes: ...
    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None: ...
    def watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None: ...
    def transact(self, body: Callable[[int], Any]) -> Any: ...
    def on_event(self, data: bytes) -> None: ...


class PVKernel:
    """One DomU's PV kernel.

    The domain's shell calls :meth:`vcpu_gate`, :meth:`upcall` and :meth:`xs_event` (from
    any thread; each returns at once), :meth:`statistics` and :meth:`save`; :meth:`restore`
    only before the first unpause. The init program reaches :meth:`console_write`,
    :meth:`sleep`, :meth:`clock`, :meth:`disk` and :meth:`net` through its :class:`GuestOS`,
    on the vCPU thread only. ``hypercall`` is a
    :class:`actors.transport.hypercall_client.HypercallClient` (or alike).
    """

    def __init__(self, start_info: StartInfo, memory: Mapping, hypercall: Callable[..., Any],
                 xs: XsLike, log: Any, runtime: Runtime = THREADS) -> None:
        self.start_info = start_info
        self.memory = memory
        self.hypercall = hypercall
        self.xs = xs
        self.log = log
        self.runtime = runtime
        self.gate = RunGate()
        self.hvc = HvcConsole(ConsoleInterface(memory.page(start_info.console_mfn)),
                              start_info.console_evtchn, hypercall, self.gate, log)
        self.xenwatch = Xenwatch(xs, self.gate, runtime, log)
        self.control = PVControl(xs, self.gate, hypercall, self.hvc.printk, self.power_off, log)
        self.blk: BlockDevices | None = None
        self.net_devices: NetDevices | None = None
        self.init_name, self.argv = parse_init(start_info.cmd_line)
        self.init_state: dict[str, Any] = {}
        self.domid: int | None = None
        self.name = ""
        self._clock_base = 0.0
        self._boot_time: float | None = None
        self.stats = {"upcalls": 0}

    # -- entry points for the shell ---------------------------------------------------------

    def vcpu_gate(self, paused: bool, seq: int = 0) -> None:
        """The hypervisor stops (True) or restarts the vCPUs; the first restart boots.

        ``seq`` orders the one-way gate messages: one older than the last applied is stale
        (it was overtaken in flight) and ignored. 0 means unordered (tests driving it directly).
        """
        change = self.gate.set_paused(paused, seq)
        if change is GateChange.BOOT:
            self.runtime.spawn(self._vcpu_main, name="vcpu0")
        elif change is GateChange.RESUMED:
            self.log.info("suspend cancelled: resuming in the same domain")

    def upcall(self, domid: int, ports: list[int]) -> None:
        """Event-channel ports that fired (already dequeued by the hypervisor)."""
        with self.gate.cv:
            self.stats["upcalls"] += 1
        if self.start_info.console_evtchn in ports:  # xenconsoled drained the ring
            self.hvc.interrupt()
        if self.blk is not None:
            self.blk.upcall(ports)
        if self.net_devices is not None:
            self.net_devices.upcall(ports)

    def xs_event(self, data: bytes) -> None:
        """xs_wire WATCH_EVENT messages pushed by xenstored."""
        self.xs.on_event(data)

    def statistics(self) -> dict[str, Any]:
        with self.gate.cv:
            return {**self.stats, **self.xenwatch.stats, **self.hvc.stats, **self.control.stats,
                    **self.gate.status(), "domid": self.domid, "init": self.init_name,
                    "vbd": self.blk.statistics() if self.blk is not None else {},
                    "vif": self.net_devices.statistics() if self.net_devices else {}}

    def save(self) -> dict[str, Any]:
        """What a restored kernel needs to carry on: the init, its state, clock, console
        position (plain data). Consistent once the vCPU is parked (paused or suspended)."""
        with self.gate.cv:
            return {"init": self.init_name, "argv": list(self.argv),
                    "state": copy.deepcopy(self.init_state), "clock": self._now(),
                    "console_bytes": self.hvc.stats["console_bytes"]}

    def restore(self, saved: dict[str, Any]) -> None:
        """Take over a saved kernel's init and state; only before the first unpause."""
        with self.gate.cv:
            if self.gate.state is not KernelState.CREATED:
                raise RuntimeError("a kernel can only be restored before it boots")
            self.init_name, self.argv = saved["init"], tuple(saved["argv"])
            self.init_state = copy.deepcopy(saved["state"])
            self._clock_base = float(saved["clock"])
            self.hvc.stats["console_bytes"] = saved["console_bytes"]

    # -- GuestKernel: what GuestOS calls, on the vCPU thread ------------------------------

    def console_write(self, data: bytes) -> None:
        """All of ``data`` into the console ring (:meth:`HvcConsole.write_console`)."""
        self.gate.enter()
        self.hvc.write_console(data)

    def sleep(self, seconds: float) -> None:
        self.gate.enter()
        monotonic = self.runtime.monotonic
        self.gate.schedule_timeout(monotonic() + max(0.0, seconds), monotonic)
        self.gate.enter()

    def disk(self, name: str) -> Any:
        """The blkfront of a virtual disk, for the init program (vCPU thread)."""
        self.gate.enter()
        if self.blk is None:
            raise XenError(Errno.ENODEV, f"no virtual disk {name}")
        return self.blk.disk(name)

    def net(self, nic: int | str) -> Any:
        """The network stack on a vif (devid, or "ethN"), for the init program (vCPU thread),
        once its carrier is up (or after ``NET_UP_TIMEOUT_S``: sends then fail)."""
        self.gate.enter()
        if self.net_devices is None:
            raise XenError(Errno.ENODEV, f"no network interface {nic}")
        front = self.net_devices.vif(nic)
        deadline = self._now() + NET_UP_TIMEOUT_S
        while not front.carrier and self._now() < deadline:  # as init scripts wait for ifup
            self.sleep(0.02)
        return self.net_devices.nic(nic)

    def clock(self) -> float:
        self.gate.enter()
        with self.gate.cv:
            return self._now()

    def _now(self) -> float:
        """Guest time: seconds since boot, from the saved clock after a restore."""
        started = self._boot_time
        return self._clock_base + (self.runtime.monotonic() - started
                                   if started is not None else 0.0)

    # -- the vCPU: boot, then init ------------------------------------------------------------

    def _vcpu_main(self) -> None:
        try:
            self.gate.enter()
            self._boot()
            self._run_init()
        except Halted:
            pass
        finally:
            self.gate.vcpu_stopped()

    def _boot(self) -> None:
        si = self.start_info
        with self.gate.cv:
            self._boot_time = self.runtime.monotonic()
        self.hvc.printk("Booting paravirtualized kernel on Xen (xenray)")
        self.hvc.printk(f"Command line: {si.cmd_line}")
        self.xenwatch.start()  # xs_init: before any watch is registered
        for step in (self._read_identity, self._setup_shutdown_watcher,
                     self._setup_devices):
            try:
                step()
            except Exception as e:  # Linux boots on without xenbus, deaf to control/shutdown
                self.log.exception("xenbus setup failed", step=step.__name__)
                self.hvc.printk(f"xenbus: {step.__name__.lstrip('_')} failed: {e}")
        self.log.info("booted", init=self.init_name, argv=self.argv, name=self.name)

    def _read_identity(self) -> None:
        """``~/domid`` and ``~/name`` (reference 11.5): start_info does not carry them."""
        self.domid = int(self.xs.read("domid"))
        self.name = self.xs.read("name").decode()

    def _setup_shutdown_watcher(self) -> None:
        self.control.setup_shutdown_watcher(self.xenwatch)

    def _setup_devices(self) -> None:
        """xen-blkfront's and xen-netfront's probes: a frontend per ``device/vbd`` and
        ``device/vif`` entry (none is fine), sharing the kernel's grant table and free pages."""
        blk = BlockDevices(self.memory, self.start_info.nr_pages, self.hypercall, self.xs)
        self.blk = blk
        for devid in blk.probe(self.domid, self.xenwatch.register_watch):
            self.hvc.printk(f"blkfront: {devid}: probed")
        # clock: not the gated GuestOS clock, since replies are timed on the upcall thread
        net = NetDevices(pages=blk.pages, gnttab=blk.table, grefs=blk.grefs,
                         hypercall=self.hypercall, xs=self.xs, clock=self._now, sleep=self.sleep)
        self.net_devices = net
        for devid in net.probe(self.domid, self.xenwatch.register_watch):
            vif = net.vif(devid)
            self.hvc.printk(f"netfront: vif {devid}: mac {vif.mac}, ip {vif.ip or 'none'}")

    def _run_init(self) -> None:
        program = INITS.get(self.init_name)
        if program is None:
            panic = f"Requested init {self.init_name} failed (error -2)."
            self._init_status(f"panic: {panic}")
            self.hvc.printk(f"Kernel panic - not syncing: {panic}")
            self._shutdown(ShutdownReason.crash)
            return
        guest = GuestOS(self, argv=self.argv, domid=self.domid, name=self.name,
                        state=self.init_state)
        self._init_status(f"running {self.init_name}")
        try:
            program(guest)
        except Exception as e:
            self.hvc.printk(traceback.format_exception_only(e)[-1].rstrip("\n"))
            self.hvc.printk("Kernel panic - not syncing: Attempted to kill init!")
            self.log.warning("init raised", init=self.init_name, error=repr(e))
            self._shutdown(ShutdownReason.crash)
        else:
            self.power_off(ShutdownReason.poweroff)

    def _init_status(self, status: str) -> None:
        """Tell the toolstack, which waits for it at create, whether init started."""
        try:
            self.xs.write(INIT_STATUS, status)
        except XenError as e:
            self.log.warning("cannot write the init status", error=str(e))

    # -- shutdown --------------------------------------------------------------------------

    def power_off(self, reason: ShutdownReason) -> None:
        """``kernel_power_off``/``kernel_restart``: Linux's last line, then shut down."""
        self.hvc.printk(_MESSAGES[reason])
        self._shutdown(reason)

    def _shutdown(self, reason: ShutdownReason) -> None:
        """Stop for good and tell Xen why (``SCHEDOP_shutdown``); the first reason sticks."""
        if not self.gate.shut_down(reason):
            return
        self.log.info("shutting down", reason=reason.name)
        try:
            self.hypercall(Hypercall.sched_op, SchedOp.shutdown, reason=int(reason))
        except Exception:
            self.log.exception("SCHEDOP_shutdown failed", reason=reason.name)
