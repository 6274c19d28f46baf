"""The PV guest kernel of a xenray DomU: boot, the vCPU, and what an init program calls.

Why: DESIGN.md "Guests". A PV Linux domU boots from its start_info page
(``arch/x86/xen/enlighten_pv.c``: ``xen_start_kernel``), brings up xenbus and its drivers, then
runs ``init`` (``init/main.c``: ``kernel_init``). This kernel does the same, cut down to what an
init program (:mod:`actors.guest.api`) needs. Its parts, one module each:

* :mod:`.rungate`: the run gate every kernel entry passes (pause, suspend, shutdown);
* :mod:`.hvc`: the console driver (``drivers/tty/hvc/hvc_xen.c``) and printk;
* :mod:`.xenwatch`: the thread running xenstore watch callbacks (``xenbus_xs.c``);
* :mod:`.manage`: the PV control protocol on ``control/shutdown`` (``manage.c``), suspend
  included;
* :mod:`.blkdev`, :mod:`.netdev`: the block and network frontends, probed at boot;
* :mod:`.initmem`, :mod:`.kdata`: what lives in guest memory across a suspend (the init's
  memory regions, the guest clock).

The init runs on the vCPU thread, which the first unpause starts; threads come from the
:class:`~actors.runtime.Runtime` the shell hands in, and so does the guest's clock: seconds
since boot, running on while the domain is paused, carried across a suspend in the kernel
data page (it does not count the time the domain was suspended).

Suspend and resume (issue 11, reference 12.1, 15.3; Linux ``manage.c`` ``do_suspend``):

* ``control/shutdown`` = ``suspend``: :mod:`.manage` acks, freezes the init at a scheduling
  point, then calls :meth:`PVKernel._pre_suspend`: the frontends stop issuing and requests in
  flight get :data:`QUIESCE_TIMEOUT_S` to be answered; event-channel upcalls are then held
  pending (Linux suspends with interrupts off) and the guest clock goes to the kernel data
  page; then ``SCHEDOP_shutdown(suspend)``.
* Cancelled (the toolstack's ``resumedomain`` reopens the gate; Xen's call returns 1): the
  pending upcalls are delivered, the frontends issue what waited and everything runs on in
  place.
* Resumed in a new domain (the call returns 0 there): that is a new process, whose kernel is
  built with ``resume=True`` over memory the toolstack copied. Its first unpause does not boot:
  it takes the clock from the kernel data page and the init's regions from their directory,
  zeroes the grant table (old grants mean nothing here), re-reads ``~/domid`` and ``~/name``,
  re-registers the ``control/shutdown`` watch, uses the console port start_info now carries
  (the toolstack rewrote it), probes every device afresh on new rings, grants and ports
  (netfront then announces itself with a gratuitous ARP), writes ``running NAME`` to
  ``~/data/init`` and runs the init again with ``os.resumed`` True.

Decisions:

* Boot steps (identity, the shutdown watcher, the devices) each may fail and the kernel boots
  on, as Linux boots on without xenbus (deaf to ``control/shutdown``).
* Just before the init runs the kernel writes ``running NAME`` to ``~/data/init`` (the
  guest-writable area of reference 11.5; ``INIT_STATUS``), or ``panic: ...`` if there is no
  such init: the toolstack's create waits for it (``builder.wait_init``), and so may a
  restore.
* An init that raises crashes the domain after printing the exception's last traceback line
  and Linux's "Attempted to kill init!" panic; an unknown init panics as Linux does when
  ``init=`` cannot be run; an init that returns powers the domain off. A resume from memory
  without kernel data or with a corrupt init memory directory panics too.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from actors.domain.blkdev import BlockDevices, GuestDisk
from actors.domain.hvc import HvcConsole
from actors.domain.initmem import InitMemory
from actors.domain.kdata import BALLOON_OFFSET, KernelData
from actors.domain.manage import PVControl
from actors.domain.netdev import NetDevices
from actors.domain.rungate import GateChange, Halted, RunGate
from actors.domain.smp import Smp
from actors.domain.xenwatch import Xenwatch
from actors.guest.api import GuestOS, parse_init
from actors.guest import inits
from actors.memory import Mapping
from actors.runtime import THREADS, Runtime
from actors.xenbus.frontend import PagePool
from protocols.console import ConsoleInterface
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall, SchedOp, ShutdownReason, TimerOp, Virq
from protocols.page import PAGE_SIZE
from protocols.pv_layout import (GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_CONSOLE, PFN_FIRST_FREE,
                                 PFN_KERNEL_DATA, PFN_START_INFO)
from protocols.start_info import SIZE as START_INFO_SIZE
from protocols.start_info import StartInfo
from protocols.xenbus import XenbusState
from protocols.xenstore.paths import INIT_STATUS

if TYPE_CHECKING:
    from actors.domain.balloon import Balloon, SavedBalloon

NET_UP_TIMEOUT_S = 30.0  # how long GuestOS.net() waits for a vif's carrier
DEVICE_WAIT_S = 30.0  # xenbus_probe_frontend.c: how long boot waits for devices to connect
DEVICE_POLL_S = 0.005
QUIESCE_TIMEOUT_S = 1.0
CONSOLE_FLUSH_S = 0.5  # how long a suspend waits for xenconsoled to take the console's output  # how long a suspend waits for requests in flight to be answered
DRIVER_HEADROOM_PAGES = 128  # pages the init's memory leaves the drivers beyond what they use

_MESSAGES = {ShutdownReason.poweroff: "reboot: Power down",  # kernel/reboot.c
             ShutdownReason.reboot: "reboot: Restarting system"}


class XsLike(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` the kernel uses."""

    def read(self, path: str, tx_id: int = 0) -> bytes: ...
    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None: ...
    def watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None: ...
    def transact(self, body: Callable[[int], Any]) -> Any: ...
    def on_event(self, data: bytes) -> None: ...


class _SchedPort:
    """The vCPUs' scheduling hypercalls, for the run gate (:class:`rungate.SchedPort`):
    ``ipi`` holds each vCPU's reschedule IPI port."""

    def __init__(self, hypercall: Callable[..., Any]) -> None:
        self.hypercall = hypercall
        self.ipi: dict[int, int] = {}
        self.timer: dict[int, int] = {}

    def bind(self, vcpu: int) -> None:
        """``xen_setup_timer`` and ``xen_smp_intr_init`` for one vCPU: its VIRQ_TIMER and
        its reschedule IPI (XenError if the hypervisor refuses)."""
        self.timer[vcpu] = self.hypercall(Hypercall.event_channel_op, EvtchnOp.bind_virq,
                                          virq=Virq.TIMER, vcpu=vcpu)["port"]
        self.ipi[vcpu] = self.hypercall(Hypercall.event_channel_op, EvtchnOp.bind_ipi,
                                        vcpu=vcpu)["port"]

    def unbind(self, vcpu: int) -> None:
        """``xen_teardown_timer`` and ``xen_smp_intr_free``: a vCPU gone down."""
        for ports in (self.timer, self.ipi):
            if (port := ports.pop(vcpu, None)) is not None:
                self.hypercall(Hypercall.event_channel_op, EvtchnOp.close, port=port)

    def block(self, vcpu: int, events: int) -> dict[str, Any]:
        return self.hypercall(Hypercall.sched_op, SchedOp.block, vcpu=vcpu, events=events)

    def kick(self, vcpu: int) -> None:
        self.hypercall(Hypercall.event_channel_op, EvtchnOp.send, port=self.ipi[vcpu])

    def set_timer(self, vcpu: int, deadline_ns: int) -> None:
        self.hypercall(Hypercall.set_timer_op, TimerOp.set, vcpu=vcpu, timeout=deadline_ns)


class PVKernel:
    """One DomU's PV kernel; ``resume``: it continues a suspended guest whose memory this is
    (module docstring), rather than booting.

    The domain's shell calls :meth:`vcpu_gate`, :meth:`upcall` and :meth:`xs_event` (from
    any thread; each returns at once) and :meth:`statistics`. The init program reaches
    :meth:`console_write`, :meth:`sleep`, :meth:`clock`, :meth:`init_memory`, :meth:`disk` and
    :meth:`net` through its :class:`GuestOS`, on the vCPU thread only. ``hypercall`` is a
    :class:`actors.transport.hypercall_client.HypercallClient` (or alike).
    """

    def __init__(self, memory: Mapping, hypercall: Callable[..., Any], xs: XsLike, log: Any,
                 runtime: Runtime = THREADS, *, resume: bool = False) -> None:
        self.memory = memory
        self.hypercall = hypercall
        self.xs = xs
        self.log = log
        self.runtime = runtime
        self.resume = resume
        self.gate = RunGate()
        # the console's page and port, and all start_info says, are read at the first unpause
        self.start_info: StartInfo | None = None
        self.hvc = HvcConsole(ConsoleInterface(memory.page(PFN_CONSOLE)), None, hypercall,
                              self.gate, log)
        self.xenwatch = Xenwatch(xs, self.gate, runtime, log)
        self.sched_port = _SchedPort(hypercall)
        self.smp = Smp(self.gate, hypercall, xs, runtime, log, self.sched_port)
        self.control = PVControl(xs, self.gate, hypercall, self.hvc.printk, self.power_off, log,
                                 pre_suspend=self._pre_suspend,
                                 suspend_failed=self._suspend_cancel)
        self.pages: PagePool | None = None  # the drivers' free pages
        self.initmem: InitMemory | None = None  # the init's memory regions
        self.balloon: Balloon | None = None  # the balloon driver, once set up
        self._balloon_saved: SavedBalloon | None = None  # what a resumed balloon goes on from
        self.blk: BlockDevices | None = None
        self.net_devices: NetDevices | None = None
        self.init_name: str | None = None
        self.argv: tuple[str, ...] = ()
        self.domid: int | None = None
        self.name = ""
        self._clock_base = 0.0
        self._boot_time: float | None = None
        self._suspends = 0
        self._irqs_masked = False  # upcalls held pending (under gate.cv)
        self._pending_ports: set[int] = set()
        self._in_upcall = 0
        self.stats = {"upcalls": 0, "upcalls_held": 0}

    # -- entry points for the shell ---------------------------------------------------------

    def vcpu_gate(self, paused: bool, seq: int = 0) -> None:
        """The hypervisor stops (True) or restarts the vCPUs; the first restart boots (or
        resumes), a restart after SHUTDOWN_suspend is a cancelled suspend.

        ``seq`` orders the one-way gate messages: one older than the last applied is stale
        (it was overtaken in flight) and ignored. 0 means unordered (tests driving it directly).
        """
        change = self.gate.set_paused(paused, seq)
        if change is GateChange.BOOT:
            self.runtime.spawn(self._vcpu_main, name="vcpu0")
        elif change is GateChange.RESUMED:
            self.log.info("suspend cancelled: resuming in the same domain")
            self._suspend_cancel()

    def vcpu_run(self, vcpu: int, run: bool, seq: int = 0) -> None:
        """The scheduler gave vCPU ``vcpu`` a pCPU or took it away (:meth:`RunGate.set_run`)."""
        self.gate.set_run(run, seq, vcpu)

    def upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        """Event-channel ports that fired for ``vcpu`` (already dequeued by the hypervisor);
        held pending while a suspend has interrupts off."""
        self.gate.took_upcall(vcpu)  # VIRQ_TIMER and the reschedule IPI need nothing more
        with self.gate.cv:
            self.stats["upcalls"] += 1
            if self._irqs_masked:
                self.stats["upcalls_held"] += 1
                self._pending_ports.update(ports)
                return
            self._in_upcall += 1
        try:
            self._dispatch(ports)
        finally:
            with self.gate.cv:
                self._in_upcall -= 1
                if self._irqs_masked:
                    self.gate.cv.notify_all()

    def _dispatch(self, ports: Iterable[int]) -> None:
        ports = list(ports)
        if self.hvc.evtchn in ports:  # xenconsoled drained the ring
            self.hvc.interrupt()
        if self.blk is not None:
            self.blk.upcall(ports)
        if self.net_devices is not None:
            self.net_devices.upcall(ports)

    def xs_event(self, data: bytes) -> None:
        """xs_wire WATCH_EVENT messages pushed by xenstored."""
        self.xs.on_event(data)

    def statistics(self) -> dict[str, Any]:
        """The kernel's counters under ``gate.cv``, the devices' after it: a device's lock
        is taken before ``gate.cv`` (a vCPU blocking on its network stack's VcpuCondition,
        blkfront waking the gate), so asking a device under ``gate.cv`` could deadlock."""
        with self.gate.cv:
            stats = {**self.stats, **self.xenwatch.stats, **self.hvc.stats,
                     **self.control.stats, **self.gate.status(), "domid": self.domid,
                     "init": self.init_name, "clock": self._now(), "resumed": self.resume,
                     "suspends": self._suspends,
                     "init_memory": {} if self.initmem is None else {
                         name: pages for name, (_, pages, _) in self.initmem.regions().items()}}
            blk, net = self.blk, self.net_devices
        return {**stats, "vbd": blk.statistics() if blk is not None else {},
                "vif": net.statistics() if net else {}}

    # -- GuestKernel: what GuestOS calls, on the vCPU thread ------------------------------

    def console_write(self, data: bytes) -> None:
        """All of ``data`` into the console ring (:meth:`HvcConsole.write_console`)."""
        self.gate.enter()
        self.hvc.write_console(data)

    def sleep(self, seconds: float) -> None:
        self.gate.enter()
        monotonic = self.runtime.monotonic
        seconds = max(0.0, seconds)
        self.gate.schedule_timeout(monotonic() + seconds, monotonic,
                                   time.monotonic_ns() + int(seconds * 1e9))
        self.gate.enter()

    def init_memory(self, name: str, nbytes: int) -> memoryview:
        """Region ``name`` of the init's memory (:class:`InitMemory`), for the init program."""
        self.gate.enter()
        return self.initmem.region(name, nbytes)

    def disk(self, name: str) -> GuestDisk:
        """A virtual disk, for the init program (vCPU thread): its blkfront, every request
        a scheduling point."""
        self.gate.enter()
        if self.blk is None:
            raise XenError(Errno.ENODEV, f"no virtual disk {name}")
        return GuestDisk(self.blk.disk(name), self.gate.enter)

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

    def vcpus(self) -> list[int]:
        """The online vCPUs, for the init program."""
        self.gate.enter()
        return self.smp.vcpus()

    def on_each_vcpu(self, fn: Callable[[int], Any]) -> list[Any]:
        """``fn(n)`` on every online vCPU at once (:meth:`Smp.run_on_each`)."""
        self.gate.enter()
        return self.smp.run_on_each(fn)

    def _now(self) -> float:
        """Guest time: seconds since boot, from the suspended kernel's clock after a resume."""
        started = self._boot_time
        return self._clock_base + (self.runtime.monotonic() - started
                                   if started is not None else 0.0)

    # -- the vCPU: boot or resume, then init ----------------------------------------------

    def _vcpu_main(self) -> None:
        self.gate.on_vcpu_thread()
        try:
            self.gate.enter()
            self._setup_timer_and_ipi()
            if not self._start_kernel():
                return
            if self.resume:
                if not self._resume():
                    return
            else:
                self._boot()
            self._run_init()
        except Halted:
            pass
        finally:
            self.gate.vcpu_stopped()

    def _setup_timer_and_ipi(self) -> None:
        """vCPU 0's VIRQ_TIMER and reschedule IPI, after which the vCPUs block in the
        hypervisor when they wait (rungate). Without them it boots on, never blocking there."""
        try:
            self.sched_port.bind(0)
        except XenError as e:
            self.log.warning("no timer or IPI: the vCPU will not block in Xen", error=str(e))
            return
        self.gate.attach(self.sched_port)

    def _start_kernel(self) -> bool:
        """``xen_start_kernel``: read start_info (the toolstack wrote it, or a restore brought
        it and rewrote its console port) and set up the console, the drivers' page pool and
        the init's memory over the pages it gives. False (the domain crashed) if there is no
        start_info to boot from."""
        memory = self.memory
        try:
            si = StartInfo.unpack(bytes(memory.page(PFN_START_INFO)[:START_INFO_SIZE]))
            intf = ConsoleInterface(memory.page(si.console_mfn))
            nr_pages = min(si.nr_pages, self._mapped_pfns())
            pages = PagePool(memory.page, PFN_FIRST_FREE, max(0, nr_pages - PFN_FIRST_FREE),
                             headroom=DRIVER_HEADROOM_PAGES)
            initmem = InitMemory(memory.pages, nr_pages, pages.reserve_above)
        except (XenError, IndexError) as e:
            self.log.warning("no start_info to boot from", error=str(e))
            self._shutdown(ShutdownReason.crash)
            return False
        init_name, argv = parse_init(si.cmd_line)
        with self.gate.cv:
            self.start_info, self.pages, self.initmem = si, pages, initmem
            self.init_name, self.argv = init_name, argv
            self.hvc.intf, self.hvc.evtchn = intf, si.console_evtchn
        return True

    def _boot(self) -> None:
        si = self.start_info
        with self.gate.cv:
            self._boot_time = self.runtime.monotonic()
        self.hvc.printk("Booting paravirtualized kernel on Xen (xenray)")
        self.hvc.printk(f"Command line: {si.cmd_line}")
        self.initmem.format()
        self.xenwatch.start()  # xs_init: before any watch is registered
        self._xenbus_steps()
        self.log.info("booted", init=self.init_name, argv=self.argv, name=self.name)

    def _resume(self) -> bool:
        """Go on from a suspended guest's memory in this new domain (module docstring);
        False (the domain crashed) if the memory holds nothing to go on from."""
        try:
            saved = KernelData.read(self.memory.page(PFN_KERNEL_DATA))
            self.initmem.load()
        except XenError as e:
            self.hvc.printk(f"Kernel panic - not syncing: cannot resume: {e.detail or e}")
            self.log.warning("cannot resume", error=str(e))
            self._shutdown(ShutdownReason.crash)
            return False
        self._balloon_saved = self._resume_balloon()
        with self.gate.cv:
            self._clock_base, self._suspends = saved.clock, saved.suspends
            self._boot_time = self.runtime.monotonic()
        # gnttab_resume: the grants of the old domain mean nothing here
        self.memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES)[:] = bytes(
            NR_GNTTAB_FRAMES * PAGE_SIZE)
        self.hvc.printk("xen:grant_table: Grant tables using version 1 layout")
        self.xenwatch.start()
        self._xenbus_steps()
        self.hvc.printk(f"PM: resumed in domain {self.domid} ({self.name})")
        self.hvc.printk("Restarting tasks ... done.")
        self.log.info("resumed", init=self.init_name, name=self.name, clock=saved.clock,
                      suspends=saved.suspends)
        return True

    def _xenbus_steps(self) -> None:
        for step in (self._read_identity, self._setup_shutdown_watcher, self._setup_vcpus,
                     self._setup_devices, self._wait_for_devices, self._setup_balloon):
            try:
                step()
            except Exception as e:  # Linux boots on without xenbus, deaf to control/shutdown
                self.log.exception("xenbus setup failed", step=step.__name__)
                self.hvc.printk(f"xenbus: {step.__name__.lstrip('_')} failed: {e}")

    def _setup_balloon(self) -> None:
        """The balloon driver (:mod:`.balloon`), once the drivers have their pages: its
        thread, and its watch on ``memory/target``. ``self.balloon`` reports its counts."""
        from actors.domain import balloon

        self.balloon = balloon.start(self.hypercall, self.xs, self.xenwatch, self.gate,
                                     self.runtime, self.pages, self._nr_pages(),
                                     self._mapped_pfns(), self.log, saved=self._balloon_saved)

    def _resume_balloon(self) -> SavedBalloon | None:
        """The balloon driver's state at suspend (kernel data page), its pool block taken out
        of the pool again before the drivers allocate; None, the driver starting afresh from
        ``nr_pages``, if there is none or it is not one this guest can have."""
        from actors.domain.balloon import SavedBalloon, guest_max_pfn

        area = self.memory.page(PFN_KERNEL_DATA)[BALLOON_OFFSET:]
        nr_pages = self._nr_pages()
        try:
            saved = SavedBalloon.read(area, nr_pages,
                                      guest_max_pfn(self.hypercall, nr_pages, self._mapped_pfns()))
            if saved is not None:
                self.pages.balloon_resume(*saved.pool_block())
        except XenError as e:
            self.log.warning("balloon state not resumed: the driver starts from nr_pages",
                             error=str(e))
            return None
        return saved

    def _nr_pages(self) -> int:
        """start_info's ``nr_pages``, as far as this domain maps memory."""
        return min(self.start_info.nr_pages, self._mapped_pfns())

    def _mapped_pfns(self) -> int:
        return self.memory.first_frame + self.memory.nr_pages

    def _read_identity(self) -> None:
        """``~/domid`` and ``~/name`` (reference 11.5): start_info does not carry them."""
        self.domid = int(self.xs.read("domid"))
        self.name = self.xs.read("name").decode()

    def _setup_shutdown_watcher(self) -> None:
        self.control.setup_shutdown_watcher(self.xenwatch)

    def _setup_vcpus(self) -> None:
        """``smp_prepare_cpus`` and ``setup_cpu_watcher``: the vCPUs it may have, up as
        ``cpu/N/availability`` says (:mod:`.smp`); only once vCPU 0's IPI is bound."""
        if self.gate.port is None:
            return
        if (n := self.smp.probe()) > 1:
            self.hvc.printk(f"smpboot: Allowing {n} CPUs")
        self.smp.watch(self.xenwatch.register_watch)

    def _setup_devices(self) -> None:
        """xen-blkfront's and xen-netfront's probes: a frontend per ``device/vbd`` and
        ``device/vif`` entry (none is fine), sharing the kernel's grant table and free pages."""
        blk = BlockDevices(self.memory, self.start_info.nr_pages, self.hypercall, self.xs,
                           pages=self.pages)
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
        self.pages.keep = blk.pages_needed() + net.pages_needed()  # the init cannot take them

    def _wait_for_devices(self) -> None:
        """``wait_for_devices`` (``xenbus_probe_frontend.c``): before init runs, wait for
        every probed frontend to connect, at most :data:`DEVICE_WAIT_S`; one that does not
        is named ("Timeout connecting to device") and the boot goes on without it. An init
        therefore starts with its disks and NICs up, and a suspend never catches it waiting
        on a device that cannot connect while xenwatch runs the suspend."""
        fronts = [*(self.blk.fronts.values() if self.blk is not None else ()),
                  *(self.net_devices.fronts.values() if self.net_devices is not None else ())]
        deadline = self._now() + DEVICE_WAIT_S
        while any(f.state is not XenbusState.CONNECTED for f in fronts) and \
                self._now() < deadline:
            self.sleep(DEVICE_POLL_S)
        for f in fronts:
            if f.state is not XenbusState.CONNECTED:
                self.hvc.printk(f"XENBUS: Timeout connecting to device: {f.nodename} "
                                f"(local state {int(f.state)})")

    def _run_init(self) -> None:
        program = inits.find(self.init_name)
        if program is None:
            panic = f"Requested init {self.init_name} failed (error -2)."
            self._init_status(f"panic: {panic}")
            self.hvc.printk(f"Kernel panic - not syncing: {panic}")
            self._shutdown(ShutdownReason.crash)
            return
        guest = GuestOS(self, argv=self.argv, domid=self.domid, name=self.name,
                        resumed=self.resume)
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

    # -- suspend (the control protocol calls these on the xenwatch thread) -----------------

    def _pre_suspend(self) -> None:
        """The init is frozen: quiesce the frontends (``dpm_suspend_start``), hold upcalls
        pending (interrupts off), save the clock (``xen_arch_pre_suspend``). The console is
        flushed first, while its interrupt still comes (:meth:`HvcConsole.flush`)."""
        if not self.hvc.flush(CONSOLE_FLUSH_S):
            self.log.info("console output not yet taken at suspend")
        for devices in (self.blk, self.net_devices):
            if devices is not None and not devices.suspend(QUIESCE_TIMEOUT_S):
                self.log.warning("requests still in flight at suspend", type=devices.devicetype)
        with self.gate.cv:
            self._irqs_masked = True
            if not self.gate.cv.wait_for(lambda: self._in_upcall == 0, QUIESCE_TIMEOUT_S):
                self.log.warning("an upcall handler is still running at suspend")
            self._suspends += 1
            saved = KernelData(clock=self._now(), suspends=self._suspends)
        page = self.memory.page(PFN_KERNEL_DATA)
        saved.write(page)
        self._save_balloon(page[BALLOON_OFFSET:])

    def _save_balloon(self, area: memoryview) -> None:
        """The balloon driver's state, for the resumed kernel (``SavedBalloon``); none if it
        has no driver or the state does not fit, and a resumed driver starts afresh."""
        if self.balloon is None:
            area[:] = bytes(len(area))
        elif not self.balloon.saved().write(area):
            self.log.warning("the ballooned pfns do not fit in the kernel data page: the "
                             "resumed balloon driver will start from nr_pages",
                             ballooned=len(self.balloon.ballooned))

    def _suspend_cancel(self) -> None:
        """Run on in place after a suspend that did not happen or was cancelled: deliver the
        upcalls held, let the frontends issue again (``xenbus_dev_cancel``)."""
        with self.gate.cv:
            self._irqs_masked = False
            ports, self._pending_ports = self._pending_ports, set()
        for devices in (self.blk, self.net_devices):
            if devices is not None:
                devices.suspend_cancel()
        if ports:
            self._dispatch(sorted(ports))

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
