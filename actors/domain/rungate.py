"""The run gate: where a xenray guest's threads stop while Xen would not run its vCPUs.

Why: Xen deschedules a paused domain's vCPUs from outside (``vcpu_pause``, reference 12.2); a
Python thread cannot be stopped from outside, so pause is cooperative. Every kernel entry (each
GuestOS call, each xenwatch callback) is a scheduling point that passes this gate, as every
Linux task passes ``try_to_freeze()`` (``kernel/freezer.c``). The gate is shut while the
hypervisor has the vCPUs paused (creation leaves one pause, so it starts shut), while a
suspend is in progress, and for good once the domain has shut down: a shut-down domain stays
in existence, idle, until the toolstack destroys it (reference 19.8). At a shut-down gate
:class:`Halted` unwinds whoever stands there.

The gate is also the scheduler's dispatch (issue 14): the vCPU runs guest code only while it
holds a pCPU (``held``). The hypervisor's scheduler gives and takes pCPUs with one-way
``vcpu_run`` messages (:meth:`RunGate.set_run`); one taken away is given up at the vCPU's next
kernel entry, so the preemption granularity is the time between two kernel entries (every
GuestOS call, every ring request). Wherever the vCPU waits for something (its sleeps, its
device completions, its network stack) it blocks in the hypervisor first (``SCHEDOP_block``,
:meth:`RunGate.blocking`), and after the wait it needs a pCPU again: an upcall that arrived
meanwhile already woke it in the hypervisor; otherwise (a local timeout, a wake-up from
xenwatch) it sends itself Linux's reschedule IPI (an event channel bound with
``EVTCHNOP_bind_ipi``). Until the kernel has bound that port (:meth:`RunGate.attach`) the
vCPU never blocks in the hypervisor.

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
import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

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


PARKED = ("blocked", "gated", "runnable", "offline", "stopped")  # what a freeze accepts
IN_FLIGHT_S = 0.001  # how long a VcpuCondition that did not block waits before it checks again
LOST_UPCALL_S = 1.0  # an upcall Xen sent that has not landed after this is taken as lost
_current = threading.local()  # .gate, .vcpu: the RunGate and vCPU this thread is


class SchedPort(Protocol):
    """The kernel's hypercalls for the gate (so the gate imports no transport)."""

    def block(self, vcpu: int, events: int) -> dict[str, Any]: ...  # SCHEDOP_block
    def kick(self, vcpu: int) -> None: ...  # the reschedule IPI to that vCPU
    def set_timer(self, vcpu: int, deadline_ns: int) -> None: ...  # set_timer_op


@dataclasses.dataclass
class VcpuSlot:
    """One vCPU's view at the gate: ``state`` is offline, running, blocked, runnable
    (waiting for a pCPU), gated (waiting for the domain to run) or stopped; ``held``: it
    holds a pCPU (the scheduler's last word, ordered by ``run_seq``); ``upcalls`` taken."""

    state: str = "offline"
    held: bool = False
    run_seq: int = 0
    upcalls: int = 0
    blocks: int = 0
    waiting_on: threading.Condition | None = None  # a VcpuCondition it blocks on
    short_since: float | None = None  # since when Xen counts upcalls it has not seen


def current_gate() -> RunGate | None:
    """The gate of the vCPU this thread is, if it is one."""
    return getattr(_current, "gate", None)


def current_vcpu() -> int:
    """The vCPU this thread is (0 for any other thread that enters as a vCPU)."""
    return getattr(_current, "vcpu", 0)


class VcpuCondition(threading.Condition):
    """A condition whose waits on a vCPU thread block the vCPU in the hypervisor
    (:meth:`RunGate.blocking`). The block is made holding the lock (let go of it, and a
    notify before the wait would be lost); the lock is let go while the vCPU waits for a
    pCPU again after the wait, since the upcall that brings it may need the lock."""

    def wait(self, timeout: float | None = None) -> bool:
        gate = current_gate()
        if gate is None or gate.port is None:
            return super().wait(timeout)
        token = gate._block(wait_in_flight=False)
        if token is None:  # upcalls were in flight to it: let them land, with the lock let go
            return super().wait(IN_FLIGHT_S if timeout is None else min(timeout, IN_FLIGHT_S))
        slot = gate._slot()
        slot.waiting_on = self  # an upcall for the vCPU ends this wait: the caller checks
        try:                    # its condition and, still waiting, blocks again
            if slot.upcalls != token:
                return True
            return super().wait(timeout)
        finally:
            slot.waiting_on = None
            saved = self._release_save()
            try:
                gate._unblock(token)
            finally:
                self._acquire_restore(saved)


class RunGate:
    """The kernel's run state, one lock and one condition for everything that waits on it.

    ``cv`` is public for the kernel's collaborators that block the vCPU on their own condition
    (:meth:`wait_event` runs under it, :meth:`wake` notifies it). ``slots`` are the vCPUs'
    own views (:class:`VcpuSlot`; ``vcpu``, ``held``, ``blocks`` and ``upcalls`` read vCPU 0's).
    The hypervisor's messages reach :meth:`set_paused` and :meth:`set_run`; a vCPU thread
    calls :meth:`enter`, :meth:`schedule_timeout`, :meth:`wait_event`; xenwatch calls
    :meth:`enter` with ``vcpu=False`` and, for a suspend, :meth:`freeze`/:meth:`thaw`;
    :meth:`shut_down` is final.
    """

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.state = KernelState.CREATED
        self.paused = True
        self.reason: ShutdownReason | None = None
        self.slots = [VcpuSlot()]
        self._seq = 0
        self._no_freeze = 0  # vCPUs in a no_freeze section
        self.port: SchedPort | None = None  # set by attach: vCPUs may block from then on

    @property
    def vcpu(self) -> str:
        return self.slots[0].state

    @vcpu.setter
    def vcpu(self, state: str) -> None:
        self.slots[0].state = state

    held = property(lambda self: self.slots[0].held)
    blocks = property(lambda self: self.slots[0].blocks)
    upcalls = property(lambda self: self.slots[0].upcalls)

    def add_vcpus(self, n: int) -> None:
        """The domain has ``n`` vCPUs (``cpu_possible``), each offline until it starts."""
        with self.cv:
            self.slots += [VcpuSlot() for _ in range(n - len(self.slots))]

    def attach(self, port: SchedPort) -> None:
        """The kernel can block its vCPUs in the hypervisor and wake them (IPIs bound)."""
        with self.cv:
            self.port = port

    def on_vcpu_thread(self, vcpu: int = 0) -> None:
        """The calling thread is this gate's vCPU ``vcpu`` (its waits block in Xen)."""
        _current.gate, _current.vcpu = self, vcpu

    def _slot(self) -> VcpuSlot:
        return self.slots[current_vcpu()]

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

    def set_run(self, run: bool, seq: int = 0, vcpu: int = 0) -> None:
        """The scheduler gave ``vcpu`` a pCPU (True) or took it away; a stale ``seq`` (its
        own register, apart from the pause's) is ignored."""
        with self.cv:
            if not 0 <= vcpu < len(self.slots):
                return
            slot = self.slots[vcpu]
            if seq and seq <= slot.run_seq:
                return
            slot.run_seq = max(slot.run_seq, seq)
            slot.held = run
            self.cv.notify_all()

    def took_upcall(self, vcpu: int = 0) -> None:
        """An upcall for ``vcpu`` reached the kernel: it woke the vCPU in Xen, so a vCPU
        blocked in a wait runs (Linux's idle loop takes the interrupt) and blocks again if
        its wait is not over. Wakes its waits: those on ``cv`` and a VcpuCondition's."""
        with self.cv:
            cond = None
            if 0 <= vcpu < len(self.slots):
                self.slots[vcpu].upcalls += 1
                cond = self.slots[vcpu].waiting_on
            self.cv.notify_all()
        if cond is not None:
            with cond:
                cond.notify_all()

    def runnable(self) -> bool:
        return not self.paused and self.state is KernelState.RUNNING

    # -- scheduling points -----------------------------------------------------------------

    def enter(self, vcpu: bool = True) -> None:
        """A scheduling point: return only while the domain may run; Halted once shut down.
        ``vcpu``: the caller is the vCPU (its state is tracked), not xenwatch."""
        slot = self._slot() if vcpu else None
        if slot is not None and slot.state == "running" and slot.held and self.runnable():
            return  # the common case, without the lock: a pause is seen at the next entry
        with self.cv:
            while not (self.runnable() or (slot and self._no_freeze and not self.paused
                                           and self.state is KernelState.SUSPENDING)) \
                    or (slot and not slot.held and self.port is not None):
                if self.state is KernelState.SHUTDOWN:
                    raise Halted
                if slot:
                    self._park(slot, "runnable" if self.runnable() and not slot.held
                               else "gated")
                self.cv.wait()
            if slot:
                slot.state = "running"

    def schedule_timeout(self, deadline: float, monotonic: Callable[[], float],
                         deadline_ns: int | None = None) -> None:
        """Block the vCPU until ``deadline`` on ``monotonic`` (Linux ``schedule_timeout``);
        the domain may be paused meanwhile. Halted if it shuts down. ``deadline_ns``: the
        same on the host's clock, for the hypervisor's timer (``set_timer_op``), whose
        VIRQ_TIMER wakes the vCPU."""
        if deadline_ns is not None and self.port is not None and \
                current_gate() is self:
            self.port.set_timer(current_vcpu(), deadline_ns)
        self._wait_blocked(lambda: deadline - monotonic() <= 0,
                           lambda: max(0.0, deadline - monotonic()))

    def wait_event(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block the vCPU until ``condition()`` (checked under ``cv``; whoever makes it true
        calls :meth:`wake`) or shutdown, at most ``timeout`` seconds (Linux
        ``wait_event_timeout``). True unless it timed out."""
        with self.cv:
            if condition():
                return True
        end = None if timeout is None else time.monotonic() + timeout
        ended = self._wait_blocked(
            lambda: condition() or self.state is KernelState.SHUTDOWN,
            lambda: None if end is None else max(0.0, end - time.monotonic()), shutdown_ok=True)
        with self.cv:
            return ended or condition()

    def _wait_blocked(self, done: Callable[[], bool], left: Callable[[], float | None],
                      shutdown_ok: bool = False) -> bool:
        """Wait on ``cv`` until ``done()`` (True) or no time is ``left`` (False), blocked in
        the hypervisor; an upcall meanwhile wakes the vCPU there, so it takes its pCPU and
        blocks again (Linux's idle loop) rather than waiting on as a running vCPU. Halted at
        a shutdown unless ``shutdown_ok`` (``done`` sees it then)."""
        can_block = self.port is not None and current_gate() is self
        while True:
            with self.blocking() as token, self.cv:
                slot = self._slot()
                self._park(slot, "blocked")
                while not done():
                    if self.state is KernelState.SHUTDOWN and not shutdown_ok:
                        raise Halted
                    if (wait := left()) is not None and wait <= 0:
                        return False
                    if can_block and (token is None or slot.upcalls != token):
                        break  # interrupted, or the block refused for upcalls that have
                        # landed now: run, then block again
                    self.cv.wait(wait)
                else:
                    return True

    @contextlib.contextmanager
    def blocking(self) -> Iterator[int | None]:
        """The vCPU waits inside: it gives its pCPU up (``SCHEDOP_block``) before and takes
        one again after (module docstring). Anywhere else, or before :meth:`attach`, it does
        nothing. The caller holds no lock the upcall path takes."""
        token = self._block()
        try:
            yield token
        finally:
            self._unblock(token)

    def _block(self, wait_in_flight: bool = True) -> int | None:
        """``SCHEDOP_block``: the upcall count it blocked at, or None if it did not block
        (upcalls were still in flight to it, which is what Xen's atomic "events pending?"
        check finds; with ``wait_in_flight`` it waits here for them to land, which only a
        caller holding no lock the upcall path takes may do)."""
        if self.port is None or current_gate() is not self:
            return None
        vcpu, slot = current_vcpu(), self._slot()
        with self.cv:
            events = slot.upcalls
        answer = self.port.block(vcpu, events)
        with self.cv:
            if not answer["blocked"]:
                landed = wait_in_flight and self.cv.wait_for(
                    lambda: slot.upcalls >= answer["events"], LOST_UPCALL_S)
                now = time.monotonic()
                if landed or slot.short_since is None:
                    slot.short_since = None if landed else now
                elif now - slot.short_since >= LOST_UPCALL_S:
                    # an upcall lost on its way (a pipe the hypervisor dropped): go on from
                    # Xen's count, or every block from now on would be refused
                    slot.upcalls = max(slot.upcalls, answer["events"])
                    slot.short_since = None
                return None
            slot.short_since = None
            slot.blocks += 1
            if slot.run_seq <= answer["seq"]:  # no newer word from the scheduler yet
                slot.run_seq, slot.held = answer["seq"], False
            self._park(slot, "blocked")
            return events

    def _unblock(self, events: int | None) -> None:
        """After a wait: take a pCPU again (an upcall since the block already woke the
        vCPU in the hypervisor; otherwise it kicks itself) and wait for it."""
        if events is None:
            return
        slot = self._slot()
        with self.cv:
            kick = not slot.held and slot.upcalls == events
        if kick:
            self.port.kick(current_vcpu())
        with self.cv:
            self._park(slot, "runnable")
            while not slot.held:
                if self.state is KernelState.SHUTDOWN:
                    raise Halted
                self.cv.wait()
            slot.state = "running"

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
            self._park(self._slot(), "stopped")

    def _park(self, slot: VcpuSlot, state: str) -> None:
        """A vCPU stops at a scheduling point; a freeze in progress hears of it. cv held."""
        slot.state = state
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
            frozen = self.cv.wait_for(
                lambda: all(s.state in PARKED for s in self.slots) and not self._no_freeze,
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
            elif not self.runnable() and vcpu in ("blocked", "gated", "runnable"):
                vcpu = "paused"
            return {"state": self.state.value, "vcpu": vcpu, "paused": self.paused,
                    "held": self.held, "blocks": sum(s.blocks for s in self.slots),
                    "vcpus": [s.state for s in self.slots],
                    "shutdown_reason": self.reason.name if self.reason is not None else None}
