"""The vCPUs of one host's DomUs, between the domain table and the host's scheduler.

Why: Xen's scheduler sees a vCPU as runnable or not (``vcpu_runnable``: online, not blocked,
its domain neither paused nor shut down); everything that changes one of those (a pause,
``SCHEDOP_block``, an event that wakes a blocked vCPU, ``VCPUOP_down``, a timer) goes through
:meth:`Vcpus.refresh`, which tells the scheduler (:mod:`actors.hypervisor.sched`) the
difference (``vcpu_wake`` / ``vcpu_sleep_nosync``) and returns the :class:`Switch` es it made.
Pure: time is the ``now`` (ns) every call is given.

Decisions:

* A domain's vCPUs are known to the scheduler from ``createdomain`` but none runs before the
  toolstack has handed over the process that runs them (``setvcpucontext``): there is nothing
  to dispatch to before that.
* ``SCHEDOP_block`` checks "events pending" as Xen does atomically with
  ``evtchn_upcall_pending``: here the guest says how many upcalls it has taken, and a block
  with upcalls still in flight to it returns at once (the vCPU stays running).
* Dom0 is not scheduled: its processes are Ray actors and daemons that the host OS runs.
"""

from __future__ import annotations

import dataclasses
import heapq

from actors.hypervisor.sched import Scheduler, Switch
from protocols.errno import Errno, XenError
from protocols.hypercall import Runstate


@dataclasses.dataclass
class Vcpu:
    online: bool
    blocked: bool = False  # _VPF_blocked: SCHEDOP_block until an event
    awake: bool = False  # what the scheduler was last told: runnable (True) or not
    timer_ns: int | None = None  # the singleshot timer (set_timer_op), absolute ns
    poll_ns: int | None = None  # SCHEDOP_poll's own timeout (Xen's poll_timer)
    poll_ports: frozenset[int] = frozenset()  # SCHEDOP_poll in progress: the ports it waits on
    affinity: frozenset[int] | None = None  # hard affinity (None: every pCPU)
    delivered: int = 0  # upcalls sent to the domain's process for this vCPU


@dataclasses.dataclass
class DomainVcpus:
    vcpus: list[Vcpu]
    running: bool = False  # not paused, not shut down, its process handed over


class Vcpus:
    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.domains: dict[int, DomainVcpus] = {}
        # armed timers, earliest first, as (deadline, domid, vcpu, kind, the Vcpu itself),
        # kind "timer_ns" or "poll_ns"; an entry whose Vcpu is gone or has been re-armed
        # since is stale, dropped when it comes up (arming and expiring cost O(log n)) or
        # when stale ones outnumber the live
        self._timers: list[tuple[int, int, int, str, Vcpu]] = []
        self._armed_count = 0

    def add_domain(self, domid: int, max_vcpus: int, online: int, now: int, *,
                   weight: int = 256, cap: int = 0) -> None:
        self.sched.add_domain(domid, weight=weight, cap=cap)
        self.domains[domid] = DomainVcpus([Vcpu(online=i < online) for i in range(max_vcpus)])
        for i in range(max_vcpus):
            self.sched.add_vcpu(domid, i, now)

    def remove_domain(self, domid: int, now: int) -> list[Switch]:
        """The domain leaves (its timers' heap entries go stale: their Vcpus are gone)."""
        dv = self.domains.pop(domid, None)
        if dv is None:
            return []
        self._armed_count -= sum((v.timer_ns is not None) + (v.poll_ns is not None)
                                 for v in dv.vcpus)
        return self.sched.remove_domain(domid, now)

    def get(self, domid: int, vcpu: int) -> Vcpu:
        dv = self.domains.get(domid)
        if dv is None or not 0 <= vcpu < len(dv.vcpus):
            raise XenError(Errno.EINVAL, f"no vCPU {vcpu} in domain {domid}")
        return dv.vcpus[vcpu]

    def refresh(self, domid: int, now: int) -> list[Switch]:
        """Tell the scheduler which of the domain's vCPUs may run now (``vcpu_runnable``)."""
        dv = self.domains.get(domid)
        if dv is None:
            return []
        switches: list[Switch] = []
        for i, v in enumerate(dv.vcpus):
            want = dv.running and v.online and not v.blocked
            if want and not v.awake:
                switches += self.sched.wake(domid, i, now)
            elif not want and v.awake:
                state = Runstate.blocked if v.blocked and v.online else Runstate.offline
                switches += self.sched.sleep(domid, i, now, int(state))
            v.awake = want
        return switches

    def set_running(self, domid: int, running: bool, now: int) -> list[Switch]:
        """The domain may run (unpaused, alive, its process handed over) or not."""
        dv = self.domains.get(domid)
        if dv is None:
            return []
        dv.running = running
        return self.refresh(domid, now)

    def block(self, domid: int, vcpu: int, events: int, now: int) -> tuple[bool, list[Switch]]:
        """``SCHEDOP_block``: False (not blocked) if upcalls it has not taken are in flight."""
        v = self.get(domid, vcpu)
        if events < v.delivered:
            return False, []
        v.blocked = True
        return True, self.refresh(domid, now)

    def poll(self, domid: int, vcpu: int, ports: frozenset[int], timeout_ns: int,
             events: int, now: int) -> tuple[bool, list[Switch]]:
        """``SCHEDOP_poll``: block until an event on one of ``ports`` or ``timeout_ns``
        (absolute; 0: none)."""
        blocked, switches = self.block(domid, vcpu, events, now)
        if blocked:
            self.get(domid, vcpu).poll_ports = ports
            self._arm(domid, vcpu, "poll_ns", timeout_ns or None)
        return blocked, switches

    def wake(self, domid: int, vcpu: int, now: int) -> list[Switch]:
        """``vcpu_unblock``: an event (or its timer) for a blocked vCPU."""
        v = self.get(domid, vcpu)
        if not v.blocked:
            return []
        v.blocked, v.poll_ports = False, frozenset()
        self._arm(domid, vcpu, "poll_ns", None)
        return self.refresh(domid, now)

    def delivered(self, domid: int, vcpu: int, now: int) -> list[Switch]:
        """An upcall went to the domain's process: count it; it wakes the vCPU it is for,
        a poller too (``vcpu_mark_events_pending`` kicks, and ``vcpu_kick`` unblocks)."""
        dv = self.domains.get(domid)
        if dv is None or not 0 <= vcpu < len(dv.vcpus):
            return []
        dv.vcpus[vcpu].delivered += 1
        return self.wake(domid, vcpu, now)

    def check_pollers(self, domid: int, port: int, now: int) -> list[Switch]:
        """``evtchn_check_pollers``: ``port`` of the domain became pending (masked or not);
        a vCPU polling that one port wakes, and one polling several wakes on any port (Xen
        keeps only ``poll_evtchn`` -1 for those; the guest looks again)."""
        dv = self.domains.get(domid)
        if dv is None:
            return []
        switches: list[Switch] = []
        for i, v in enumerate(dv.vcpus):
            if v.poll_ports and (len(v.poll_ports) > 1 or port in v.poll_ports):
                switches += self.wake(domid, i, now)
        return switches

    def set_online(self, domid: int, vcpu: int, online: bool, now: int) -> list[Switch]:
        """``VCPUOP_up`` / ``VCPUOP_down``."""
        v = self.get(domid, vcpu)
        v.online = online
        return self.refresh(domid, now)

    def set_affinity(self, domid: int, vcpu: int, cpus: frozenset[int] | None,
                     now: int) -> list[Switch]:
        """Hard affinity (``vcpu-pin``); ValueError if it leaves no pCPU."""
        v = self.get(domid, vcpu)
        switches = self.sched.set_affinity(domid, vcpu, cpus, now)
        v.affinity = cpus
        return switches

    def set_timer(self, domid: int, vcpu: int, deadline_ns: int | None) -> None:
        """Arm (or with None or 0, cancel) the vCPU's one-shot timer."""
        self._arm(domid, vcpu, "timer_ns", deadline_ns or None)

    def _arm(self, domid: int, vcpu: int, kind: str, deadline_ns: int | None) -> None:
        v = self.get(domid, vcpu)
        self._armed_count += (deadline_ns is not None) - (getattr(v, kind) is not None)
        setattr(v, kind, deadline_ns)
        if deadline_ns is not None:
            heapq.heappush(self._timers, (deadline_ns, domid, vcpu, kind, v))
            if len(self._timers) > 2 * self._armed_count + 64:  # a guest re-arming at will
                self._timers = [e for e in self._timers if self._armed(e)]
                heapq.heapify(self._timers)

    def _armed(self, entry: tuple[int, int, int, str, Vcpu]) -> bool:
        when, domid, vcpu, kind, v = entry
        dv = self.domains.get(domid)
        return (dv is not None and vcpu < len(dv.vcpus) and dv.vcpus[vcpu] is v
                and getattr(v, kind) == when)

    def _first_timer(self) -> int | None:
        while self._timers and not self._armed(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def next_deadline(self, now: int) -> int | None:
        """When :meth:`expire` must next run: the scheduler's next event or a timer."""
        times = [t for t in (self._first_timer(), self.sched.next_event(now)) if t is not None]
        return min(times) if times else None

    def expire(self, now: int) -> tuple[list[tuple[int, int]], list[Switch]]:
        """Timers due (their vCPUs, for VIRQ_TIMER), and the scheduler's tick if due."""
        fired = []
        switches: list[Switch] = []
        while (first := self._first_timer()) is not None and first <= now:
            _, d, i, kind, v = heapq.heappop(self._timers)
            setattr(v, kind, None)
            self._armed_count -= 1
            if kind == "timer_ns":
                fired.append((d, i))
            else:  # a poll timed out
                switches += self.wake(d, i, now)
        event = self.sched.next_event(now)
        if event is not None and event <= now:
            switches += self.sched.tick(now)
        return fired, switches

    def flags(self, domid: int, now: int) -> tuple[bool, bool] | None:
        """(running, blocked) for getdomaininfo: any online vCPU running; every online vCPU
        blocked. None for a domain the scheduler does not run (Dom0)."""
        dv = self.domains.get(domid)
        if dv is None:
            return None
        online = [i for i, v in enumerate(dv.vcpus) if v.online]
        states = [self.sched.runstate(domid, i, now)["state"] for i in online]
        return (Runstate.running in states,
                bool(states) and all(s == Runstate.blocked for s in states))

    def online(self, domid: int) -> int | None:
        """How many of the domain's vCPUs are up (None: not scheduled here, Dom0)."""
        dv = self.domains.get(domid)
        return None if dv is None else sum(v.online for v in dv.vcpus)

    def cpu_time(self, domid: int, now: int) -> int:
        """The domain's CPU time: what its vCPUs ran (ns)."""
        dv = self.domains.get(domid)
        if dv is None:
            return 0
        return sum(self.sched.runstate(domid, i, now)["time"][Runstate.running]
                   for i in range(len(dv.vcpus)))
