"""The run gate: where a xenray guest's threads stop while Xen would not run its vCPUs.

Why: Xen deschedules a paused domain's vCPUs from outside (``vcpu_pause``, reference 12.2); a
Python thread cannot be stopped from outside, so pause is cooperative. Every kernel entry (each
GuestOS call, each xenwatch callback) is a scheduling point that passes this gate, as every
Linux task passes ``try_to_freeze()`` (``kernel/freezer.c``). The gate is shut while the
hypervisor has the vCPUs paused (creation leaves one pause, so it starts shut), while a
suspend is in progress, and for good once the domain has shut down: a shut-down domain stays
in existence, idle, until the toolstack destroys it (reference 19.8). At a shut-down gate
:class:`Halted` unwinds whoever stands there.

It is its own module, below the kernel (:mod:`.kernel`), the console driver (:mod:`.hvc`) and
xenwatch (:mod:`.xenwatch`), because all three stop at it and none may import another's
owner.

Decisions:

* The hypervisor's gate messages are one-way and may overtake each other in flight: each
  carries a ``seq``, and one not newer than the last applied is stale and ignored (0: unordered,
  for tests driving the gate directly).
* ``freeze`` is Linux's ``freeze_processes``: the suspend waits until the vCPU is parked at a
  scheduling point or blocked (never in the middle of a kernel entry), at most the freezer's
  timeout, and otherwise gives up and lets it run on.
* A kernel entry that must finish once begun (a console write: the rest of its bytes are on
  the vCPU thread's stack, which does not move to a new domain) runs under
  :meth:`RunGate.no_freeze`: a freeze waits it out, and it passes the gate of a suspend
  in progress (not a pause). So an init program is only ever frozen before such a call or
  after it, never half way through.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Iterator

from protocols.hypercall import ShutdownReason

FREEZE_TIMEOUT_S = 20.0  # Linux freeze_timeout_msecs: a suspend fails if the vCPU will not park

class Halted(BaseException):
    """Raised at a scheduling point once the domain has shut down: it unwinds the init program
    and the xenwatch thread (a BaseException, so an init's ``except Exception`` lets it by)."""


class KernelState(enum.Enum):
    CREATED = "created"  # built, never unpaused
    RUNNING = "running"
    SUSPENDING = "suspending"  # freezing the init before SHUTDOWN_suspend
    SUSPENDED = "suspended"  # SHUTDOWN_suspend issued: runs on if the hypervisor reopens the gate
    SHUTDOWN = "shutdown"  # poweroff, reboot or crash: stopped for good


class GateChange(enum.Enum):
    """What a reopened gate means to the kernel (:meth:`RunGate.set_paused`)."""

    NONE = "none"
    BOOT = "boot"  # the first unpause: start the vCPU
    RESUMED = "resumed"  # reopened after SHUTDOWN_suspend: the suspend was cancelled (12.1)


PARKED = ("blocked", "gated", "offline", "stopped")  # vCPU states a freeze accepts


class RunGate:
    """The kernel's run state, one lock and one condition for everything that waits on it.

    ``cv`` is public for the kernel's collaborators that block the vCPU on their own condition
    (:meth:`wait_event` runs under it, :meth:`wake` notifies it). ``vcpu`` is the vCPU's own
    view: offline, running, blocked, gated (waiting here) or stopped. The hypervisor's messages
    reach :meth:`set_paused`; the vCPU thread calls :meth:`enter`, :meth:`schedule_timeout`,
    :meth:`wait_event`; xenwatch calls :meth:`enter` with ``vcpu=False`` and, for a suspend,
    :meth:`freeze`/:meth:`thaw`; :meth:`shut_down` is final.
    """

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.state = KernelState.CREATED
        self.paused = True
        self.reason: ShutdownReason | None = None
        self.vcpu = "offline"
        self._seq = 0
        self._no_freeze = 0  # the vCPU is in a no_freeze section

    # -- the hypervisor's side ---------------------------------------------------------------

    def set_paused(self, paused: bool, seq: int = 0) -> GateChange:
        """The hypervisor stops (True) or restarts the vCPUs; a stale ``seq`` is ignored."""
        with self.cv:
            if seq and seq <= self._seq:
                return GateChange.NONE
            self._seq = max(self._seq, seq)
            self.paused = paused
            change = GateChange.NONE
            if not paused and self.state is KernelState.CREATED:
                change = GateChange.BOOT
            elif not paused and self.state is KernelState.SUSPENDED:
                change = GateChange.RESUMED
            if change is not GateChange.NONE:
                self.state, self.reason = KernelState.RUNNING, None
            self.cv.notify_all()
            return change

    def runnable(self) -> bool:
        return not self.paused and self.state is KernelState.RUNNING

    # -- scheduling points -----------------------------------------------------------------

    def enter(self, vcpu: bool = True) -> None:
        """A scheduling point: return only while the domain may run; Halted once shut down.
        ``vcpu``: the caller is the vCPU (its state is tracked), not xenwatch."""
        if vcpu and self.vcpu == "running" and self.runnable():
            return  # the common case, without the lock: a pause is seen at the next entry
        with self.cv:
            while not (self.runnable() or (vcpu and self._no_freeze and not self.paused
                                           and self.state is KernelState.SUSPENDING)):
                if self.state is KernelState.SHUTDOWN:
                    raise Halted
                if vcpu:
                    self._park("gated")
                self.cv.wait()
            if vcpu:
                self.vcpu = "running"

    def schedule_timeout(self, deadline: float, monotonic: Callable[[], float]) -> None:
        """Block the vCPU until ``deadline`` on ``monotonic`` (Linux ``schedule_timeout``);
        the domain may be paused meanwhile. Halted if it shuts down."""
        with self.cv:
            self._park("blocked")
            while (left := deadline - monotonic()) > 0:
                if self.state is KernelState.SHUTDOWN:
                    raise Halted
                self.cv.wait(left)

    def wait_event(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block the vCPU until ``condition()`` (checked under ``cv``; whoever makes it true
        calls :meth:`wake`) or shutdown, at most ``timeout`` seconds (Linux
        ``wait_event_timeout``). True unless it timed out."""
        with self.cv:
            self._park("blocked")
            return self.cv.wait_for(
                lambda: condition() or self.state is KernelState.SHUTDOWN, timeout)

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()

    @contextlib.contextmanager
    def no_freeze(self) -> Iterator[None]:
        """A section of the vCPU that a freeze waits for (module docstring). vCPU only."""
        with self.cv:
            self._no_freeze += 1
        try:
            yield
        finally:
            with self.cv:
                self._no_freeze -= 1
                self.cv.notify_all()

    def vcpu_stopped(self) -> None:
        with self.cv:
            self._park("stopped")

    def _park(self, vcpu: str) -> None:
        """The vCPU stops at a scheduling point; a freeze in progress hears of it. cv held."""
        self.vcpu = vcpu
        if self.state is KernelState.SUSPENDING:
            self.cv.notify_all()

    # -- suspend and shutdown --------------------------------------------------------------

    def freeze(self, timeout: float = FREEZE_TIMEOUT_S) -> bool | None:
        """``freeze_processes`` for a suspend: shut the gate and wait up to ``timeout`` for
        the vCPU to park; True: frozen (SUSPENDED, reason suspend), False: it would not stop
        (RUNNING again), None: not running (shut down meanwhile), nothing done."""
        with self.cv:
            if self.state is not KernelState.RUNNING:
                return None
            self.state = KernelState.SUSPENDING
            self.cv.notify_all()
            frozen = self.cv.wait_for(lambda: self.vcpu in PARKED and not self._no_freeze,
                                      timeout)
            self.state = KernelState.SUSPENDED if frozen else KernelState.RUNNING
            self.reason = ShutdownReason.suspend if frozen else None
            self.cv.notify_all()
            return frozen

    def thaw(self) -> None:
        """The suspend hypercall failed: run on (if nothing else happened meanwhile)."""
        with self.cv:
            if self.state is KernelState.SUSPENDED:
                self.state, self.reason = KernelState.RUNNING, None
                self.cv.notify_all()

    def shut_down(self, reason: ShutdownReason) -> bool:
        """Shut the gate for good; the first reason sticks. True if this call did it."""
        with self.cv:
            if self.state is KernelState.SHUTDOWN:
                return False
            self.state, self.reason = KernelState.SHUTDOWN, reason
            self.paused = True  # Xen pauses every vCPU in domain_shutdown (12.2)
            self.cv.notify_all()
            return True

    def status(self) -> dict[str, object]:
        """The run state for ``statistics``: a parked vCPU of a paused domain is "paused"."""
        with self.cv:
            vcpu = self.vcpu
            if self.state is KernelState.SHUTDOWN:
                vcpu = "stopped"
            elif not self.runnable() and vcpu in ("blocked", "gated"):
                vcpu = "paused"
            return {"state": self.state.value, "vcpu": vcpu, "paused": self.paused,
                    "shutdown_reason": self.reason.name if self.reason is not None else None}
