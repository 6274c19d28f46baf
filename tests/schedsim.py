"""A discrete-event driver for the schedulers of :mod:`actors.hypervisor.sched`, in virtual
time, and the invariants every step must keep (:func:`check`).

vCPUs are hogs (always runnable) or I/O-bound (run ``run_ns`` of CPU, block ``block_ns``,
wake). The simulator steps from event to event: the scheduler's :meth:`next_event`, the end
of an I/O vCPU's burst, the end of its block. It applies each Switch to its own view of the
pCPUs, refusing one whose ``prev`` is not what that pCPU runs or whose ``next`` runs elsewhere,
and calls :func:`check` after every step.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable

from actors.hypervisor.sched import Scheduler, Switch, VcpuKey
from protocols.hypercall import Runstate


@dataclasses.dataclass(frozen=True)
class Load:
    run_ns: int | None = None  # CPU time per burst; None: never blocks (a hog)
    block_ns: int = 0


HOG = Load()


def check(sched: Scheduler, view: list[VcpuKey | None], blocked: Iterable[VcpuKey],
          added: dict[VcpuKey, int], now: int) -> None:
    """The invariants: no vCPU on two pCPUs (one slot per pCPU in ``view`` means no pCPU runs
    two); a vCPU is RUNSTATE_running exactly when it holds a pCPU, and the scheduler says which;
    its runstate times add up to the time since it was added; a blocked vCPU does not run."""
    placed = [k for k in view if k is not None]
    if len(placed) != len(set(placed)):
        raise AssertionError(f"a vCPU on two pCPUs at {now}: {view}")
    for k, t0 in added.items():
        rs = sched.runstate(*k, now)
        if (rs["state"] == Runstate.running) != (k in placed):
            raise AssertionError(f"{k} is {Runstate(rs['state']).name} at {now}, pCPUs {view}")
        if sum(rs["time"]) != now - t0:
            raise AssertionError(f"{k}'s runstate times {rs['time']} do not add up to "
                                 f"{now - t0} ns")
        if k in placed and sched.where(*k) != view.index(k):
            raise AssertionError(f"{k} runs on pCPU {view.index(k)}, the scheduler says "
                                 f"{sched.where(*k)}")
    for k in blocked:
        if k in placed or sched.runstate(*k, now)["state"] != Runstate.blocked:
            raise AssertionError(f"blocked {k} runs or is not blocked at {now}")


class Sim:
    def __init__(self, sched: Scheduler, *, start: int = 0) -> None:
        self.sched = sched
        self.t = start
        self.view: list[VcpuKey | None] = [None] * sched.pcpus
        self.loads: dict[VcpuKey, Load] = {}
        self.added: dict[VcpuKey, int] = {}
        self.blocked: dict[VcpuKey, int] = {}  # -> when it wakes
        self.left: dict[VcpuKey, int] = {}  # CPU time left in an I/O vCPU's burst
        self.run_since: dict[VcpuKey, int] = {}
        self.woke: dict[VcpuKey, int] = {}  # woken, not yet run: since when
        self.latency: dict[VcpuKey, list[int]] = {}
        self.ran_on: dict[VcpuKey, set[int]] = {}
        self.steps = 0
        self.checks: list[Callable[[Sim], None]] = []

    def domain(self, domid: int, *loads: Load, weight: int = 256, cap: int = 0,
               affinity: frozenset[int] | None = None) -> list[VcpuKey]:
        """A domain whose vCPUs (one per load) wake now."""
        self.sched.add_domain(domid, weight=weight, cap=cap)
        keys = []
        for i, load in enumerate(loads):
            k = (domid, i)
            self.sched.add_vcpu(domid, i, self.t)
            self.loads[k], self.added[k], self.latency[k], self.ran_on[k] = load, self.t, [], set()
            if affinity is not None:
                self.apply(self.sched.set_affinity(domid, i, affinity, self.t))
            if load.run_ns is not None:
                self.left[k] = load.run_ns
            keys.append(k)
        for k in keys:
            self.woke[k] = self.t
            self.apply(self.sched.wake(*k, self.t))
        self.check()
        return keys

    def apply(self, switches: list[Switch]) -> None:
        for sw in switches:
            if self.view[sw.pcpu] != sw.prev:
                raise AssertionError(f"{sw} but pCPU {sw.pcpu} runs {self.view[sw.pcpu]}")
            if sw.next is not None and sw.next in self.view:
                raise AssertionError(f"{sw} but {sw.next} runs on pCPU {self.view.index(sw.next)}")
            if sw.prev is not None:
                since = self.run_since.pop(sw.prev)
                if sw.prev in self.left:
                    self.left[sw.prev] -= self.t - since
            if sw.next is not None:
                self.run_since[sw.next] = self.t
                self.ran_on[sw.next].add(sw.pcpu)
                if sw.next in self.woke:
                    self.latency[sw.next].append(self.t - self.woke.pop(sw.next))
            self.view[sw.pcpu] = sw.next

    def check(self) -> None:
        check(self.sched, self.view, self.blocked, self.added, self.t)
        for extra in self.checks:
            extra(self)

    def _burst_ends(self) -> dict[VcpuKey, int]:
        return {k: since + self.left[k] for k, since in self.run_since.items() if k in self.left}

    def run(self, until: int) -> None:
        """Step from event to event up to ``until``."""
        while True:
            times = [*self._burst_ends().values(), *self.blocked.values()]
            event = self.sched.next_event(self.t)
            if event is not None:
                times.append(event)
            if not times or min(times) > until:
                self.t = until
                return
            self.t = max(self.t, min(times))
            self._step()

    def _step(self) -> None:
        t = self.t
        while ends := sorted(k for k, end in self._burst_ends().items() if end <= t):
            k = ends[0]
            self.apply(self.sched.sleep(*k, t))
            self.left[k] = self.loads[k].run_ns
            self.blocked[k] = t + self.loads[k].block_ns
        for k in sorted(k for k, when in self.blocked.items() if when <= t):
            del self.blocked[k]
            self.woke[k] = t
            self.apply(self.sched.wake(*k, t))
        event = self.sched.next_event(t)
        if event is not None and event <= t:
            self.apply(self.sched.tick(t))
        self.steps += 1
        self.check()

    def cpu(self, k: VcpuKey) -> int:
        """The CPU time the scheduler charged ``k`` (ns)."""
        return self.sched.runstate(*k, self.t)["time"][Runstate.running]

    def median_latency(self, k: VcpuKey) -> float:
        return statistics.median(self.latency[k])
