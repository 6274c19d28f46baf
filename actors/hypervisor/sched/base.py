"""What credit and credit2 share: Xen's scheduling core (``xen/common/sched/core.c``).

A scheduler here is a pure state machine in virtual time: every call is given ``now`` (ns) and
returns the :class:`Switch` es that change who runs on which pCPU. Nothing fires by itself: the
caller calls :meth:`SchedCore.tick` at :meth:`SchedCore.next_event`, and any call first runs
the timers that are due, so state is the same whichever call comes first.

The core keeps what ``core.c`` keeps: the vCPU's runstate (``vcpu_runstate_change``), its
hard affinity, ``v->processor``, ``curr_on_cpu``, the per-pCPU ``s_timer`` that ends a time
slice, and ``SCHEDULE_SOFTIRQ`` (a set of pCPUs whose ``schedule()`` is due; it runs before
the call returns). ``vcpu_wake`` / ``vcpu_sleep_nosync`` call the scheduler's ``wake`` /
``sleep`` hooks, ``schedule()`` its ``do_schedule`` and ``context_saved`` hooks, and a hard
affinity change is ``sched_unit_migrate_start`` / ``_finish`` as in Xen.

Decisions:

* One vCPU per ``sched_unit`` (no core scheduling), no cpupools, no soft affinity.
* A vCPU the scheduler parks for its cap stays ``RUNSTATE_runnable`` (Xen reports a paused
  vCPU as offline): it wants to run and is held back by the host, which is what a guest's
  steal time should show.
* A timer that comes due between two calls runs at the time of the later call, as a late
  timer does in Xen; timers that only matter while something runs are left out of
  :meth:`SchedCore.next_event` on an idle host, and catch up when the host next has work.
* The returned Switches are ordered so that applying them one by one never puts a vCPU on
  two pCPUs (a vCPU moving between pCPUs leaves its old one first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol

from protocols.hypercall import Runstate

VcpuKey = tuple[int, int]  # (domid, vcpu)

DEFAULT_WEIGHT = 256  # CSCHED_DEFAULT_WEIGHT, CSCHED2_DEFAULT_WEIGHT
WEIGHT_MIN, WEIGHT_MAX = 1, 65535  # libxl sched_credit{,2}_domain_set
CAP_MAX = 65535  # uint16_t in xen_domctl_sched_credit{,2}
SCHED_DEFAULT_RATELIMIT_US = 1000  # sched_ratelimit_us
SCHED_RATELIMIT_MIN_US, SCHED_RATELIMIT_MAX_US = 100, 500_000  # XEN_SYSCTL_SCHED_RATELIMIT_*

MICROSECS = 1_000
MILLISECS = 1_000_000

# Timer keys sort by (order, name, arg): at the same instant global accounting runs first, then
# the per-pCPU ticks, then the ends of time slices.
S_TIMER = "s_timer"


@dataclasses.dataclass(frozen=True)
class Switch:
    """What a pCPU does now: stop running ``prev`` (None: it was idle), run ``next`` (None:
    go idle)."""

    pcpu: int
    prev: VcpuKey | None
    next: VcpuKey | None


class Scheduler(Protocol):
    """The interface the hypervisor drives (see :class:`SchedCore`)."""

    name: str
    sched_id: int
    pcpus: int

    def add_domain(self, domid: int, *, weight: int = DEFAULT_WEIGHT, cap: int = 0) -> None: ...
    def remove_domain(self, domid: int, now: int) -> list[Switch]: ...
    def add_vcpu(self, domid: int, vcpu: int, now: int) -> None: ...
    def set_affinity(self, domid: int, vcpu: int, cpus: frozenset[int] | None,
                     now: int) -> list[Switch]: ...
    def wake(self, domid: int, vcpu: int, now: int) -> list[Switch]: ...
    def sleep(self, domid: int, vcpu: int, now: int, state: int = 2) -> list[Switch]: ...
    def yield_(self, domid: int, vcpu: int, now: int) -> list[Switch]: ...
    def tick(self, now: int) -> list[Switch]: ...
    def next_event(self, now: int) -> int | None: ...
    def get_params(self, domid: int) -> dict: ...
    def set_params(self, domid: int, now: int, *, weight: int | None = None,
                   cap: int | None = None) -> list[Switch]: ...
    def get_global(self) -> dict: ...
    def set_global(self, now: int, **kw: int) -> None: ...
    def runstate(self, domid: int, vcpu: int, now: int) -> dict: ...
    def where(self, domid: int, vcpu: int) -> int | None: ...
    def statistics(self) -> dict: ...


@dataclasses.dataclass(eq=False)
class Dom:
    """A domain's scheduling parameters (``csched_dom`` / ``csched2_dom``)."""

    domid: int
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    units: list[Unit] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class Unit:
    """One vCPU (``sched_unit``): runstate, affinity and the core's pause flags."""

    dom: Dom
    vcpu: int
    processor: int  # v->processor: where it runs, or last ran, or is queued
    state: int = Runstate.offline
    state_entry_time: int = 0
    time: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0, 0])
    want: bool = False  # online and not blocked: the guest's half of vcpu_runnable()
    down: int = Runstate.offline  # blocked or offline, when it does not want to run
    paused: bool = False  # parked by the scheduler for its domain's cap
    migrating: bool = False  # _VPF_migrating
    is_running: bool = False
    hard: frozenset[int] | None = None  # hard affinity; None: every pCPU

    @property
    def key(self) -> VcpuKey:
        return (self.dom.domid, self.vcpu)

    @property
    def runnable(self) -> bool:
        """``unit_runnable``: may be picked to run."""
        return self.want and not self.paused and not self.migrating


def cycle(n: int, mask: Iterable[int]) -> int:
    """``cpumask_cycle``: the first pCPU after ``n`` in ``mask``, wrapping around."""
    mask = list(mask)
    return min((c for c in mask if c > n), default=min(mask))


def plan_switches(before: list[VcpuKey | None], after: list[VcpuKey | None]) -> list[Switch]:
    """The Switches from one assignment of pCPUs to the next, in an order that is safe to
    apply one at a time: a pCPU starts a vCPU only once its old pCPU has let it go; a cycle
    (two pCPUs swapping vCPUs) is broken by idling the lowest pCPU of it first."""
    pending = {p: (b, a) for p, (b, a) in enumerate(zip(before, after)) if b != a}
    on = {v: p for p, v in enumerate(before) if v is not None}
    out: list[Switch] = []
    while pending:
        ready = [p for p in sorted(pending) if pending[p][1] is None or pending[p][1] not in on]
        if ready:
            p = ready[0]
            b, a = pending.pop(p)
        else:
            p = min(p for p in pending if pending[p][0] is not None)
            b, a = pending[p][0], None
            pending[p] = (None, pending[p][1])
        if b is not None:
            del on[b]
        if a is not None:
            on[a] = p
        out.append(Switch(p, b, a))
    return out


class SchedCore:
    """The scheduling core; credit and credit2 fill in its hooks (Xen's ``sched_ops``).

    Callers use only the public methods; every one that changes state takes ``now`` (never
    decreasing) and returns the Switches it made. Hooks run inside those calls."""

    name: str
    sched_id: int

    def __init__(self, pcpus: int) -> None:
        if pcpus < 1:
            raise ValueError(f"a host needs at least one pCPU, not {pcpus}")
        self.pcpus = pcpus
        self.all_cpus = frozenset(range(pcpus))
        self.curr: list[Unit | None] = [None] * pcpus  # curr_on_cpu(); None: the idle vCPU
        self.doms: dict[int, Dom] = {}
        self.units: dict[VcpuKey, Unit] = {}
        self.timers: dict[tuple, int] = {}  # key -> absolute deadline (ns)
        self.softirq: set[int] = set()  # pCPUs with SCHEDULE_SOFTIRQ raised
        self.stats = {"schedules": 0, "context_switches": 0}
        self._now = 0
        self._wanting = 0  # units that want to run: next_event without a scan of them all

    # -- the interface --------------------------------------------------------------------

    def add_domain(self, domid: int, *, weight: int = DEFAULT_WEIGHT, cap: int = 0) -> None:
        """A new domain, before its vCPUs (``sched_init_domain``)."""
        if domid in self.doms:
            raise ValueError(f"domain {domid} is already scheduled")
        _check_weight(weight)
        if not 0 <= cap <= CAP_MAX:
            raise ValueError(f"cap {cap} out of range 0..{CAP_MAX}")
        dom = self.doms[domid] = self._alloc_dom(domid)
        self._dom_cntl(dom, self._now, weight, cap)

    def remove_domain(self, domid: int, now: int) -> list[Switch]:
        """The domain's vCPUs go offline, leave their pCPUs and the scheduler."""
        dom = self._dom(domid)

        def remove() -> None:
            for u in dom.units:
                self._set_want(u, False, Runstate.offline)
                self._vcpu_sleep(u, now)
            self._do_softirq(now)
            for u in dom.units:
                self._remove_unit(u, now)
                del self.units[u.key]
            self._free_dom(dom)
            del self.doms[domid]
        return self._call(now, remove)

    def add_vcpu(self, domid: int, vcpu: int, now: int) -> None:
        """A new vCPU, offline (``sched_init_vcpu``): vCPU 0 starts on pCPU 0, each next one
        on the pCPU after its predecessor's (``sched_select_initial_cpu``)."""
        dom = self._dom(domid)
        if (domid, vcpu) in self.units:
            raise ValueError(f"vCPU {vcpu} of domain {domid} is already scheduled")
        processor = cycle(dom.units[-1].processor, self.all_cpus) if dom.units else 0
        u = self._alloc_unit(dom, vcpu, processor)
        u.state_entry_time = now
        dom.units.append(u)
        self.units[u.key] = u
        self._insert_unit(u, now)

    def set_affinity(self, domid: int, vcpu: int, cpus: frozenset[int] | None,
                     now: int) -> list[Switch]:
        """Hard affinity (``vcpu_set_hard_affinity``); pCPUs this host lacks are ignored and
        a set with none of its pCPUs is a ValueError. The vCPU migrates as in Xen: it leaves
        its pCPU and wakes again where the scheduler picks."""
        u = self._unit(domid, vcpu)
        hard = None if cpus is None else frozenset(cpus) & self.all_cpus
        if hard is not None and not hard:
            raise ValueError(f"affinity {sorted(cpus or ())} has no pCPU of this host "
                             f"(0..{self.pcpus - 1})")

        def migrate() -> None:
            u.hard = None if hard == self.all_cpus else hard
            u.migrating = True  # sched_unit_migrate_start
            self._vcpu_sleep(u, now)
            if not u.is_running:
                self._migrate_finish(u, now)
        return self._call(now, migrate)

    def wake(self, domid: int, vcpu: int, now: int) -> list[Switch]:
        """Offline or blocked -> runnable (``vcpu_wake``)."""
        u = self._unit(domid, vcpu)

        def wake() -> None:
            if not u.want:
                self._set_want(u, True)
                self._vcpu_wake(u, now)
        return self._call(now, wake)

    def sleep(self, domid: int, vcpu: int, now: int, state: int = Runstate.blocked
              ) -> list[Switch]:
        """-> blocked (2) or offline (3), leaving its pCPU (``vcpu_sleep_nosync``)."""
        if state not in (Runstate.blocked, Runstate.offline):
            raise ValueError(f"a vCPU sleeps blocked (2) or offline (3), not {state}")
        u = self._unit(domid, vcpu)

        def sleep() -> None:
            self._set_want(u, False, state)
            self._vcpu_sleep(u, now)
        return self._call(now, sleep)

    def yield_(self, domid: int, vcpu: int, now: int) -> list[Switch]:
        """``SCHEDOP_yield`` (``vcpu_yield``); only a running vCPU can yield."""
        u = self._unit(domid, vcpu)

        def yield_() -> None:
            if u.is_running:
                self._unit_yield(u)
                self._raise_softirq(u.processor)
        return self._call(now, yield_)

    def tick(self, now: int) -> list[Switch]:
        """Run the timers due by ``now``."""
        return self._call(now)

    def next_event(self, now: int) -> int | None:
        """When :meth:`tick` must next run; None while no vCPU runs or wants to."""
        if not self._wanting and not any(self.curr):
            return None
        return min(self.timers.values(), default=None)

    def get_params(self, domid: int) -> dict:
        dom = self._dom(domid)
        return {"weight": dom.weight, "cap": dom.cap}

    def set_params(self, domid: int, now: int, *, weight: int | None = None,
                   cap: int | None = None) -> list[Switch]:
        """Weight and cap (``XEN_DOMCTL_SCHEDOP_putinfo``); None leaves one as it is. The
        ranges are libxl's: weight 1..65535, cap 0..100 per vCPU (0: no cap)."""
        dom = self._dom(domid)
        if weight is not None:
            _check_weight(weight)
        if cap is not None and not 0 <= cap <= min(CAP_MAX, 100 * len(dom.units)):
            raise ValueError(f"cap {cap} out of range 0..{min(CAP_MAX, 100 * len(dom.units))} "
                             f"for {len(dom.units)} vCPUs")
        return self._call(now, lambda: self._dom_cntl(dom, now, weight, cap))

    def runstate(self, domid: int, vcpu: int, now: int) -> dict:
        """``VCPUOP_get_runstate_info``: the current state's time counts up to ``now``."""
        u = self._unit(domid, vcpu)
        time = list(u.time)
        time[u.state] += max(0, now - u.state_entry_time)
        return {"state": int(u.state), "state_entry_time": u.state_entry_time, "time": time}

    def where(self, domid: int, vcpu: int) -> int | None:
        """The pCPU it runs on, or last ran or waits on (``v->processor``)."""
        return self._unit(domid, vcpu).processor

    def statistics(self) -> dict:
        return dict(self.stats)

    # -- hooks (sched_ops) ----------------------------------------------------------------

    def _alloc_dom(self, domid: int) -> Dom:
        raise NotImplementedError

    def _free_dom(self, dom: Dom) -> None:
        """The domain leaves (``free_domdata``)."""

    def _alloc_unit(self, dom: Dom, vcpu: int, processor: int) -> Unit:
        raise NotImplementedError

    def _insert_unit(self, u: Unit, now: int) -> None:
        raise NotImplementedError

    def _remove_unit(self, u: Unit, now: int) -> None:
        raise NotImplementedError

    def _unit_wake(self, u: Unit, now: int) -> None:
        raise NotImplementedError

    def _unit_sleep(self, u: Unit, now: int) -> None:
        raise NotImplementedError

    def _unit_yield(self, u: Unit) -> None:
        raise NotImplementedError

    def _pick_resource(self, u: Unit) -> int:
        raise NotImplementedError

    def _do_schedule(self, cpu: int, now: int) -> tuple[Unit | None, int | None]:
        """The next unit for ``cpu`` (None: idle) and how long it may run (None: until
        something tickles the pCPU)."""
        raise NotImplementedError

    def _context_saved(self, prev: Unit, now: int) -> None:
        """``prev`` has left its pCPU."""

    def _dom_cntl(self, dom: Dom, now: int, weight: int | None, cap: int | None) -> None:
        raise NotImplementedError

    def _fire(self, key: tuple, deadline: int, now: int) -> None:
        """A timer of the scheduler's own came due at ``deadline``; it runs at ``now``."""
        raise NotImplementedError

    # -- the core ---------------------------------------------------------------------------

    def _call(self, now: int, fn: Callable[[], None] | None = None) -> list[Switch]:
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now} ns")
        self._now = now
        before = [u.key if u else None for u in self.curr]
        self._expire(now)
        if fn is not None:
            fn()
            self._do_softirq(now)
        return plan_switches(before, [u.key if u else None for u in self.curr])

    def _expire(self, now: int) -> None:
        while True:
            due = [(when, key) for key, when in self.timers.items() if when <= now]
            if not due:
                return
            when, key = min(due)
            del self.timers[key]
            if key[1] == S_TIMER:
                self._raise_softirq(key[2])
            else:
                self._fire(key, when, now)
            self._do_softirq(now)

    def _set_timer(self, key: tuple, when: int | None) -> None:
        if when is None:
            self.timers.pop(key, None)
        else:
            self.timers[key] = when

    def _raise_softirq(self, cpu: int) -> None:
        self.softirq.add(cpu)

    def _do_softirq(self, now: int) -> None:
        while self.softirq:
            cpu = min(self.softirq)
            self.softirq.discard(cpu)
            self._schedule(cpu, now)

    def _schedule(self, cpu: int, now: int) -> None:
        """``schedule()``: ask the scheduler, switch, arm the pCPU's ``s_timer``."""
        self.stats["schedules"] += 1
        prev = self.curr[cpu]
        nxt, tslice = self._do_schedule(cpu, now)
        self._set_timer((2, S_TIMER, cpu), None if tslice is None else now + tslice)
        if nxt is prev:
            return
        self.stats["context_switches"] += 1
        self.curr[cpu] = nxt
        if nxt is not None:
            nxt.is_running, nxt.processor = True, cpu
            self._runstate_change(nxt, now)
        if prev is not None:
            prev.is_running = False
            self._runstate_change(prev, now)
            self._context_saved(prev, now)
            if prev.migrating:
                self._migrate_finish(prev, now)

    def _migrate_finish(self, u: Unit, now: int) -> None:
        """``sched_unit_migrate_finish``: place it anew and wake it there."""
        u.migrating = False
        u.processor = self._pick_resource(u)
        self._vcpu_wake(u, now)

    def _vcpu_wake(self, u: Unit, now: int) -> None:
        self._runstate_change(u, now)
        if u.runnable:
            self._unit_wake(u, now)

    def _vcpu_sleep(self, u: Unit, now: int) -> None:
        if not u.runnable:
            self._runstate_change(u, now)
            self._unit_sleep(u, now)

    def _runstate_change(self, u: Unit, now: int) -> None:
        """``vcpu_runstate_change`` to what the unit is now; as in Xen, a change that takes no
        time keeps the entry time."""
        new = Runstate.running if u.is_running else Runstate.runnable if u.want else u.down
        if new == u.state:
            return
        delta = now - u.state_entry_time
        if delta > 0:
            u.time[u.state] += delta
            u.state_entry_time = now
        u.state = new

    def _set_want(self, u: Unit, want: bool, down: int = Runstate.offline) -> None:
        self._wanting += int(want) - int(u.want)
        u.want = want
        if not want:
            u.down = down

    def _hard(self, u: Unit) -> frozenset[int]:
        return self.all_cpus if u.hard is None else u.hard

    def _dom(self, domid: int) -> Dom:
        try:
            return self.doms[domid]
        except KeyError:
            raise ValueError(f"domain {domid} is not scheduled here") from None

    def _unit(self, domid: int, vcpu: int) -> Unit:
        try:
            return self.units[(domid, vcpu)]
        except KeyError:
            raise ValueError(f"vCPU {vcpu} of domain {domid} is not scheduled here") from None


def check_ratelimit(ratelimit_us: int) -> None:
    """0 (off) or ``XEN_SYSCTL_SCHED_RATELIMIT_MIN..MAX``."""
    if ratelimit_us and not SCHED_RATELIMIT_MIN_US <= ratelimit_us <= SCHED_RATELIMIT_MAX_US:
        raise ValueError(f"ratelimit {ratelimit_us} us out of range "
                         f"{SCHED_RATELIMIT_MIN_US}..{SCHED_RATELIMIT_MAX_US} (0: off)")


def _check_weight(weight: int) -> None:
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise ValueError(f"weight {weight} out of range {WEIGHT_MIN}..{WEIGHT_MAX}")
