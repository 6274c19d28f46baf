"""The guest's half of the PV control protocol: ``control/shutdown`` (reference 11.5, 12.3).

Linux ``drivers/xen/manage.c``: at boot ``setup_shutdown_watcher`` watches
``~/control/shutdown`` and advertises the commands it handles in the guest-owned
``control/feature-*`` nodes; ``shutdown_handler`` (on the xenwatch thread, :mod:`.xenwatch`)
reads the command the toolstack wrote and acks it by writing "" in the same transaction, then
acts on it. libxl (``libxl__domain_pvcontrol``) counts any other value as the ack and, for a
suspend, then waits for the domain to shut down with reason ``suspend``.

Decisions:

* Commands are Linux's: ``poweroff`` and ``halt`` (poweroff), ``reboot``, ``suspend``;
  anything else is ignored and left unacked. Features written at boot: poweroff, reboot,
  suspend ("1").
* Suspend (``do_suspend``): freeze the init at its next scheduling point
  (:meth:`~.rungate.RunGate.freeze`, Linux's freezer), then the kernel's ``pre_suspend``
  (quiesce the devices, interrupts off, save the clock: ``dpm_suspend_start`` and
  ``xen_arch_pre_suspend``), then ``SCHEDOP_shutdown(suspend)``. Xen returns from that call
  only on resume, 1 if the suspend was cancelled (``resumedomain``: the same domain runs on)
  and 0 in a new domain after a restore or migration (12.1, 15.3). Here the call returns at
  once, so the kernel treats the hypervisor reopening the gate as the return with 1 and
  carries on; the return with 0 is a new process, whose kernel is built with ``resume=True``
  (``actors.domain.kernel``). If ``pre_suspend`` or the call fails, ``suspend_failed`` undoes
  ``pre_suspend`` and the init is thawed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from actors.domain.rungate import FREEZE_TIMEOUT_S, RunGate
from actors.domain.xenwatch import Xenwatch
from protocols.errno import XenError
from protocols.hypercall import Hypercall, SchedOp, ShutdownReason

FEATURES = ("poweroff", "reboot", "suspend")
SHUTDOWN_TOKEN = "shutdown"
CONTROL_SHUTDOWN = "control/shutdown"


class XsControl(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` the control protocol uses."""

    def read(self, path: str, tx_id: int = 0) -> bytes: ...
    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None: ...
    def transact(self, body: Callable[[int], Any]) -> Any: ...


class PVControl:
    """One kernel's ``control/shutdown`` handling. The kernel hands it its ``printk``, its
    ``power_off(reason)`` (print Linux's last line, then ``SCHEDOP_shutdown``) and the gate;
    :meth:`setup_shutdown_watcher` once at boot; the rest runs on the xenwatch thread.
    ``stats`` counts ``control_requests`` (commands read) and ``control_ignored``."""

    def __init__(self, xs: XsControl, gate: RunGate, hypercall: Callable[..., Any],
                 printk: Callable[[str], None], power_off: Callable[[ShutdownReason], None],
                 log: Any, *, freeze_timeout_s: float = FREEZE_TIMEOUT_S,
                 pre_suspend: Callable[[], None] = lambda: None,
                 suspend_failed: Callable[[], None] = lambda: None) -> None:
        self.xs, self.gate, self.hypercall, self.log = xs, gate, hypercall, log
        self.printk, self.power_off = printk, power_off
        self.pre_suspend, self.suspend_failed = pre_suspend, suspend_failed
        self.freeze_timeout_s = freeze_timeout_s
        self.stats = dict.fromkeys(("control_requests", "control_ignored"), 0)
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[], None]] = {
            "poweroff": self.do_poweroff, "halt": self.do_poweroff,
            "reboot": self.do_reboot, "suspend": self.do_suspend}

    def setup_shutdown_watcher(self, xenwatch: Xenwatch) -> None:
        """Watch ``control/shutdown``, then advertise the commands handled."""
        xenwatch.register_watch(CONTROL_SHUTDOWN, SHUTDOWN_TOKEN, self.shutdown_handler)
        for feature in FEATURES:
            try:
                self.xs.write(f"control/feature-{feature}", "1")
            except XenError as e:
                self.log.warning("cannot advertise feature", feature=feature, error=str(e))

    def shutdown_handler(self) -> None:
        """Read the command and ack it in one transaction, then act."""
        handlers = self._handlers

        def read_and_ack(tx_id: int) -> str:
            try:
                command = self.xs.read(CONTROL_SHUTDOWN, tx_id=tx_id).decode("latin-1")
            except XenError:
                return ""  # read errors are ignored, as empty reads are
            if command in handlers:
                self.xs.write(CONTROL_SHUTDOWN, "", tx_id=tx_id)
            return command

        try:
            command = self.xs.transact(read_and_ack)
        except XenError as e:  # Linux returns when its transaction cannot start
            self.log.info("shutdown watch: xenstore refused the transaction", error=str(e))
            return
        if not command:
            return  # the watch firing on registration, or our own ack
        with self._lock:
            self.stats["control_requests"] += 1
            if command not in handlers:
                self.stats["control_ignored"] += 1
        if command not in handlers:
            self.log.info("ignoring shutdown request", command=command)
            return
        self.log.info("shutdown request", command=command)
        handlers[command]()

    def do_poweroff(self) -> None:
        self.power_off(ShutdownReason.poweroff)

    def do_reboot(self) -> None:
        self.power_off(ShutdownReason.reboot)

    def do_suspend(self) -> None:
        """Freeze the init, ``pre_suspend``, then ``SCHEDOP_shutdown(suspend)`` (module
        docstring)."""
        frozen = self.gate.freeze(self.freeze_timeout_s)
        if frozen is None:
            return  # not running (shut down meanwhile)
        if not frozen:
            self.printk("PM: Freezing of tasks failed: suspend aborted")
            return
        self.printk("PM: suspending")
        try:
            self.pre_suspend()
            self.hypercall(Hypercall.sched_op, SchedOp.shutdown,
                           reason=int(ShutdownReason.suspend))
        except Exception:
            self.log.exception("suspend failed")
            self.printk("PM: suspend failed: resuming")
            self.suspend_failed()
            self.gate.thaw()
            return
        self.log.info("suspended")
