"""The PV guest kernel of a xenray DomU (reference 11.5, 12, 19.8; DESIGN.md "Guests").

A PV Linux domU boots from its start_info page (``arch/x86/xen/enlighten_pv.c``), writes its
console into the shared console page and kicks the console event channel
(``drivers/tty/hvc/hvc_xen.c``), runs xenstore watch callbacks on one ``xenwatch`` thread
(``drivers/xen/xenbus/xenbus_xs.c``) and obeys the toolstack's PV control protocol on
``~/control/shutdown`` (``drivers/xen/manage.c``, reference 12.3). This kernel does the same,
cut down to what an init program (:mod:`actors.guest.api`) needs; the init runs on the
vCPU thread, started by the first unpause.

Pause is cooperative, since a Python thread cannot be descheduled from outside: every kernel
entry (each GuestOS call, each xenwatch callback) is a scheduling point that passes the *run
gate*. The gate is shut while the hypervisor has the vCPUs paused (``vcpu_gate``; creation
leaves one pause, so it starts shut), while a suspend is in progress, and for good once the
domain has shut down: a shut-down domain stays in existence, idle, until the toolstack
destroys it (19.8). Events still arrive while it is shut (upcalls, watch events) and are
handled when it opens, as a paused Xen domain finds them pending when it runs again.

Decisions:

* Commands on ``control/shutdown`` are Linux's: ``poweroff`` and ``halt`` (poweroff),
  ``reboot``, ``suspend``; each is acked by writing "" in the transaction that read it, and
  anything else is ignored and left unacked. Features written at boot: poweroff, reboot,
  suspend ("1" in the guest-owned ``control/feature-*`` nodes).
* Suspend goes as far as the hypervisor does today: freeze the init at its next kernel entry
  (Linux's freezer, 20 s), then ``SCHEDOP_shutdown(suspend)``. Xen returns from that call
  only on resume, 1 if the suspend was cancelled (``resumedomain``: the same domain runs on)
  and 0 in a new domain after a restore (12.1). Here the call returns at once, so the kernel
  treats the hypervisor reopening the gate as the return with 1 and carries on; a restore in
  a new domain is a new kernel built with :meth:`PVKernel.restore` (migration work).
* An init that raises crashes the domain after printing the exception's last traceback line
  and Linux's "Attempted to kill init!" panic; an unknown init panics as Linux does when
  ``init=`` cannot be run; an init that returns powers the domain off.
"""

from __future__ import annotations

import copy
import enum
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from actors.domain.blkdev import BlockDevices
from actors.domain.netdev import NetDevices
from actors.guest.api import GuestOS, parse_init
from actors.guest.inits import INITS
from actors.memory import Mapping
from protocols.console import ConsoleInterface
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall, SchedOp, ShutdownReason
from protocols.start_info import StartInfo
from protocols.xenstore.paths import INIT_STATUS

NET_UP_TIMEOUT_S = 30.0  # how long GuestOS.net() waits for a vif's carrier
CONSOLE_RECHECK_S = 0.25  # re-check a full console ring this often, upcall or not
PRINTK_LOCK_TIMEOUT_S = 1.0  # kernel messages give up rather than wait on a stuck writer
FREEZE_TIMEOUT_S = 20.0  # Linux freeze_timeout_msecs: a suspend fails if init will not stop
FEATURES = ("poweroff", "reboot", "suspend")
SHUTDOWN_TOKEN = "shutdown"

_MESSAGES = {ShutdownReason.poweroff: "reboot: Power down",
             ShutdownReason.reboot: "reboot: Restarting system"}


class Halted(BaseException):
    """Raised at a kernel entry once the domain has shut down: it unwinds the init program
    and the xenwatch thread (a BaseException, so an init's ``except Exception`` lets it by)."""


class KernelState(enum.Enum):
    CREATED = "created"  # built, never unpaused
    RUNNING = "running"
    SUSPENDING = "suspending"  # freezing the init before SHUTDOWN_suspend
    SUSPENDED = "suspended"  # SHUTDOWN_suspend issued: runs on if the hypervisor reopens the gate
    SHUTDOWN = "shutdown"  # poweroff, reboot or crash: stopped for good


class XsLike(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` the kernel uses."""

    def read(self, path: str, tx_id: int = 0) -> bytes: ...
    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None: ...
    def watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None: ...
    def transact(self, body: Callable[[int], Any]) -> Any: ...
    def on_event(self, data: bytes) -> None: ...


class PVKernel:
    """One DomU's PV kernel.

    The domain's actor calls :meth:`vcpu_gate`, :meth:`upcall` and :meth:`xs_event` (from
    any thread; each returns at once), :meth:`statistics` and :meth:`save`; :meth:`restore`
    only before the first unpause. The init program reaches :meth:`console_write`,
    :meth:`sleep` and :meth:`clock` through its :class:`GuestOS`, on the vCPU thread only.
    ``hypercall`` is a :class:`actors.transport.hypercall_client.HypercallClient` (or alike).
    """

    def __init__(self, start_info: StartInfo, memory: Mapping, hypercall: Callable[..., Any],
                 xs: XsLike, log: Any) -> None:
        self.start_info = start_info
        self.memory = memory
        self.console = ConsoleInterface(memory.page(start_info.console_mfn))
        self.blk: BlockDevices | None = None
        self.net_devices: NetDevices | None = None
        self.hypercall = hypercall
        self.xs = xs
        self.log = log
        self.init_name, self.argv = parse_init(start_info.cmd_line)
        self.init_state: dict[str, Any] = {}
        self.domid: int | None = None
        self.name = ""
        self._cv = threading.Condition()
        self._state = KernelState.CREATED
        self._paused = True
        self._gate_seq = 0
        self._reason: ShutdownReason | None = None
        self._vcpu = "offline"  # offline, running, blocked, gated (waiting at the gate), stopped
        self._console_kicked = False
        self._console_lock = threading.Lock()
        self._watch_events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._watch_handlers: dict[str, Callable[[], None]] = {
            SHUTDOWN_TOKEN: self._control_shutdown}
        self._clock_base = 0.0
        self._boot_time: float | None = None
        self.stats = dict.fromkeys(("upcalls", "xs_events", "console_bytes", "console_waits",
                                    "console_dropped", "control_requests",
                                    "control_ignored"), 0)

    # -- entry points for the actor ---------------------------------------------------------

    def vcpu_gate(self, paused: bool, seq: int = 0) -> None:
        """The hypervisor stops (True) or restarts the vCPUs; the first restart boots.

        ``seq`` orders the one-way gate messages: one older than the last applied is stale
        (it was overtaken in flight) and ignored. 0 means unordered (tests driving it directly).
        """
        with self._cv:
            if seq and seq <= self._gate_seq:
                return
            self._gate_seq = max(self._gate_seq, seq)
            self._paused = paused
            boot = not paused and self._state is KernelState.CREATED
            resumed = not paused and self._state is KernelState.SUSPENDED
            if boot or resumed:
                self._state = KernelState.RUNNING
                self._reason = None
            self._cv.notify_all()
        if boot:
            threading.Thread(target=self._vcpu_main, name="vcpu0", daemon=True).start()
        elif resumed:
            self.log.info("suspend cancelled: resuming in the same domain")

    def upcall(self, domid: int, ports: list[int]) -> None:
        """Event-channel ports that fired (already dequeued by the hypervisor)."""
        with self._cv:
            self.stats["upcalls"] += 1
            if self.start_info.console_evtchn in ports:  # xenconsoled drained the ring
                self._console_kicked = True
                self._cv.notify_all()
        if self.blk is not None:
            self.blk.upcall(ports)
        if self.net_devices is not None:
            self.net_devices.upcall(ports)

    def xs_event(self, data: bytes) -> None:
        """xs_wire WATCH_EVENT messages pushed by xenstored."""
        self.xs.on_event(data)

    def statistics(self) -> dict[str, Any]:
        with self._cv:
            state, vcpu = self._state, self._vcpu
            if state is KernelState.SHUTDOWN:
                vcpu = "stopped"
            elif not self._runnable() and vcpu in ("blocked", "gated"):
                vcpu = "paused"
            return {**self.stats, "state": state.value, "vcpu": vcpu, "paused": self._paused,
                    "shutdown_reason": self._reason.name if self._reason is not None else None,
                    "domid": self.domid, "init": self.init_name,
                    "vbd": self.blk.statistics() if self.blk is not None else {},
                    "vif": self.net_devices.statistics() if self.net_devices else {}}

    def save(self) -> dict[str, Any]:
        """What a restored kernel needs to carry on: the init, its state, clock, console
        position (plain data). Consistent once the vCPU is parked (paused or suspended)."""
        with self._cv:
            return {"init": self.init_name, "argv": list(self.argv),
                    "state": copy.deepcopy(self.init_state), "clock": self._now(),
                    "console_bytes": self.stats["console_bytes"]}

    def restore(self, saved: dict[str, Any]) -> None:
        """Take over a saved kernel's init and state; only before the first unpause."""
        with self._cv:
            if self._state is not KernelState.CREATED:
                raise RuntimeError("a kernel can only be restored before it boots")
            self.init_name, self.argv = saved["init"], tuple(saved["argv"])
            self.init_state = copy.deepcopy(saved["state"])
            self._clock_base = float(saved["clock"])
            self.stats["console_bytes"] = saved["console_bytes"]

    # -- GuestKernel: what GuestOS calls, on the vCPU thread ------------------------------

    def console_write(self, data: bytes) -> None:
        """Put all of ``data`` in the console ring, kicking xenconsoled after each piece;
        on a full ring, block until it drains (its upcall, or a re-check)."""
        self._gate()
        view = memoryview(data)
        with self._console_lock:
            while view:
                n = self.console.write_out(view)
                view = view[n:]
                if n:
                    self.stats["console_bytes"] += n
                    self._notify_console()
                if view:
                    self._wait_console_space()

    def sleep(self, seconds: float) -> None:
        self._gate()
        with self._cv:
            deadline = time.monotonic() + max(0.0, seconds)
            self._vcpu = "blocked"
            while (left := deadline - time.monotonic()) > 0:
                if self._state is KernelState.SHUTDOWN:
                    raise Halted
                self._cv.wait(left)
        self._gate()

    def disk(self, name: str) -> Any:
        """The blkfront of a virtual disk, for the init program (vCPU thread)."""
        self._gate()
        if self.blk is None:
            raise XenError(Errno.ENODEV, f"no virtual disk {name}")
        return self.blk.disk(name)

    def net(self, nic: int | str) -> Any:
        """The network stack on a vif (devid, or "ethN"), for the init program (vCPU thread),
        once its carrier is up (or after ``NET_UP_TIMEOUT_S``: sends then fail)."""
        self._gate()
        if self.net_devices is None:
            raise XenError(Errno.ENODEV, f"no network interface {nic}")
        front = self.net_devices.vif(nic)
        deadline = self._now() + NET_UP_TIMEOUT_S
        while not front.carrier and self._now() < deadline:  # as init scripts wait for ifup
            self.sleep(0.02)
        return self.net_devices.nic(nic)

    def clock(self) -> float:
        self._gate()
        with self._cv:
            return self._now()

    # -- the run gate --------------------------------------------------------------------

    def _runnable(self) -> bool:
        return not self._paused and self._state is KernelState.RUNNING

    def _gate(self, vcpu: bool = True) -> None:
        """A scheduling point: return only while the domain may run; Halted once shut down."""
        if vcpu and self._vcpu == "running" and self._runnable():
            return  # the common case, without the lock: a pause is seen at the next entry
        with self._cv:
            while not self._runnable():
                if self._state is KernelState.SHUTDOWN:
                    raise Halted
                if vcpu:
                    self._vcpu = "gated"
                self._cv.wait()
            if vcpu:
                self._vcpu = "running"

    def _now(self) -> float:
        started = self._boot_time
        return self._clock_base + (time.monotonic() - started if started is not None else 0.0)

    # -- console ---------------------------------------------------------------------------

    def _notify_console(self) -> None:
        self.hypercall(Hypercall.event_channel_op, EvtchnOp.send,
                       port=self.start_info.console_evtchn)

    def _wait_console_space(self) -> None:
        """Block until xenconsoled signals back; after a quiet spell kick it again, in case
        it missed the last kick (restarted), then re-check the ring either way."""
        with self._cv:
            self.stats["console_waits"] += 1
            self._vcpu = "blocked"
            kicked = self._cv.wait_for(lambda: self._console_kicked or
                                       self._state is KernelState.SHUTDOWN, CONSOLE_RECHECK_S)
            self._console_kicked = False
        self._gate()
        if not kicked:
            self._notify_console()

    def _printk(self, text: str) -> None:
        """A kernel message: best effort, never waits for ring space or a stuck writer."""
        data = (text + "\n").encode()
        if not self._console_lock.acquire(timeout=PRINTK_LOCK_TIMEOUT_S):
            self.stats["console_dropped"] += len(data)
            return
        try:
            n = self.console.write_out(data)
            self.stats["console_bytes"] += n
            self.stats["console_dropped"] += len(data) - n
            if n:
                self._notify_console()
        except Exception:
            self.log.exception("console write failed", text=text)
        finally:
            self._console_lock.release()

    # -- the vCPU --------------------------------------------------------------------------

    def _vcpu_main(self) -> None:
        try:
            self._gate()
            self._boot()
            self._run_init()
        except Halted:
            pass
        finally:
            with self._cv:
                self._vcpu = "stopped"

    def _boot(self) -> None:
        si = self.start_info
        with self._cv:
            self._boot_time = time.monotonic()
        self._printk("Booting paravirtualized kernel on Xen (xenray)")
        self._printk(f"Command line: {si.cmd_line}")
        for step in (self._read_identity, self._setup_shutdown_watcher,
                     self._setup_devices):
            try:
                step()
            except Exception as e:  # Linux boots on without xenbus, deaf to control/shutdown
                self.log.exception("xenbus setup failed", step=step.__name__)
                self._printk(f"xenbus: {step.__name__.lstrip('_')} failed: {e}")
        self.log.info("booted", init=self.init_name, argv=self.argv, name=self.name)

    def _read_identity(self) -> None:
        """``~/domid`` and ``~/name`` (reference 11.5): start_info does not carry them."""
        self.domid = int(self.xs.read("domid"))
        self.name = self.xs.read("name").decode()

    def _setup_shutdown_watcher(self) -> None:
        """Watch ``control/shutdown``, then advertise the commands handled (manage.c)."""
        threading.Thread(target=self._xenwatch_main, name="xenwatch", daemon=True).start()
        self.xs.watch("control/shutdown", SHUTDOWN_TOKEN, self._queue_watch_event)
        for feature in FEATURES:
            try:
                self.xs.write(f"control/feature-{feature}", "1")
            except XenError as e:
                self.log.warning("cannot advertise feature", feature=feature, error=str(e))

    def _setup_devices(self) -> None:
        """xen-blkfront's and xen-netfront's probes: a frontend per ``device/vbd`` and
        ``device/vif`` entry (none is fine), sharing the kernel's grant table and free pages."""
        blk = BlockDevices(self.memory, self.start_info.nr_pages, self.hypercall, self.xs)
        self.blk = blk
        for devid in blk.probe(self.domid, self._watch):
            self._printk(f"blkfront: {devid}: probed")
        # clock: not the gated GuestOS clock, since replies are timed on the upcall thread
        net = NetDevices(pages=blk.pages, gnttab=blk.table, grefs=blk.grefs,
                         hypercall=self.hypercall, xs=self.xs, clock=self._now, sleep=self.sleep)
        self.net_devices = net
        for devid in net.probe(self.domid, self._watch):
            vif = net.vif(devid)
            self._printk(f"netfront: vif {devid}: mac {vif.mac}, ip {vif.ip or 'none'}")

    def _watch(self, path: str, token: str, handler: Callable[[], None]) -> None:
        """Register a watch whose callback runs on the xenwatch thread, behind the gate."""
        self._watch_handlers[token] = handler
        self.xs.watch(path, token, self._queue_watch_event)

    def _run_init(self) -> None:
        program = INITS.get(self.init_name)
        if program is None:
            panic = f"Requested init {self.init_name} failed (error -2)."
            self._init_status(f"panic: {panic}")
            self._printk(f"Kernel panic - not syncing: {panic}")
            self._shutdown(ShutdownReason.crash)
            return
        guest = GuestOS(self, argv=self.argv, domid=self.domid, name=self.name,
                        state=self.init_state)
        self._init_status(f"running {self.init_name}")
        try:
            program(guest)
        except Exception as e:
            self._printk(traceback.format_exception_only(e)[-1].rstrip("\n"))
            self._printk("Kernel panic - not syncing: Attempted to kill init!")
            self.log.warning("init raised", init=self.init_name, error=repr(e))
            self._shutdown(ShutdownReason.crash)
        else:
            self._printk(_MESSAGES[ShutdownReason.poweroff])
            self._shutdown(ShutdownReason.poweroff)

    def _init_status(self, status: str) -> None:
        """Tell the toolstack, which waits for it at create, whether init started
        (``~/data/init``: the guest-writable area of reference 11.5)."""
        try:
            self.xs.write(INIT_STATUS, status)
        except XenError as e:
            self.log.warning("cannot write the init status", error=str(e))

    # -- xenwatch: the PV control protocol (reference 12.3) --------------------------------

    def _queue_watch_event(self, path: str, token: str) -> None:
        with self._cv:
            self.stats["xs_events"] += 1
        self._watch_events.put((path, token))

    def _xenwatch_main(self) -> None:
        """Run watch callbacks one at a time, each only while the domain may run."""
        try:
            while True:
                path, token = self._watch_events.get()
                self._gate(vcpu=False)
                handler = self._watch_handlers.get(token)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception:
                    self.log.exception("watch callback failed", path=path, token=token)
        except Halted:
            pass

    def _control_shutdown(self) -> None:
        """``shutdown_handler``: read the command and ack it in one transaction, then act."""
        handlers = {"poweroff": self._poweroff, "halt": self._poweroff,
                    "reboot": self._reboot, "suspend": self._suspend}

        def read_and_ack(tx_id: int) -> str:
            try:
                command = self.xs.read("control/shutdown", tx_id=tx_id).decode("latin-1")
            except XenError:
                return ""  # read errors are ignored, as empty reads are
            if command in handlers:
                self.xs.write("control/shutdown", "", tx_id=tx_id)
            return command

        command = self.xs.transact(read_and_ack)
        if not command:
            return  # the watch firing on registration, or our own ack
        with self._cv:
            self.stats["control_requests"] += 1
            if command not in handlers:
                self.stats["control_ignored"] += 1
        if command not in handlers:
            self.log.info("ignoring shutdown request", command=command)
            return
        self.log.info("shutdown request", command=command)
        handlers[command]()

    def _poweroff(self) -> None:
        self._printk(_MESSAGES[ShutdownReason.poweroff])
        self._shutdown(ShutdownReason.poweroff)

    def _reboot(self) -> None:
        self._printk(_MESSAGES[ShutdownReason.reboot])
        self._shutdown(ShutdownReason.reboot)

    def _suspend(self) -> None:
        """``do_suspend``: freeze the init, then ``SCHEDOP_shutdown(suspend)`` (module doc)."""
        with self._cv:
            if self._state is not KernelState.RUNNING:
                return
            self._state = KernelState.SUSPENDING
            self._cv.notify_all()
            frozen = self._cv.wait_for(
                lambda: self._vcpu in ("blocked", "gated", "offline", "stopped"),
                FREEZE_TIMEOUT_S)
            self._state = KernelState.SUSPENDED if frozen else KernelState.RUNNING
            self._reason = ShutdownReason.suspend if frozen else None
            self._cv.notify_all()
        if not frozen:
            self._printk("PM: Freezing of tasks failed: suspend aborted")
            return
        self._printk("PM: suspending")
        try:
            self.hypercall(Hypercall.sched_op, SchedOp.shutdown,
                           reason=int(ShutdownReason.suspend))
        except Exception:
            self.log.exception("SCHEDOP_shutdown(suspend) failed")
            with self._cv:
                if self._state is KernelState.SUSPENDED:
                    self._state, self._reason = KernelState.RUNNING, None
                    self._cv.notify_all()
            return
        self.log.info("suspended")

    def _shutdown(self, reason: ShutdownReason) -> None:
        """Stop for good and tell Xen why (``SCHEDOP_shutdown``); the first reason sticks."""
        with self._cv:
            if self._state is KernelState.SHUTDOWN:
                return
            self._state = KernelState.SHUTDOWN
            self._reason = reason
            self._paused = True  # Xen pauses every vCPU in domain_shutdown (12.2)
            self._cv.notify_all()
        self.log.info("shutting down", reason=reason.name)
        try:
            self.hypercall(Hypercall.sched_op, SchedOp.shutdown, reason=int(reason))
        except Exception:
            self.log.exception("SCHEDOP_shutdown failed", reason=reason.name)
