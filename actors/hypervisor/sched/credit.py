"""Xen's credit scheduler (credit1, ``xen/common/sched/credit.c``; reference 16.1).

Every ``tslice`` (30 ms) ``csched_acct`` shares ``credits_per_tslice`` (300) per pCPU among the
*active* domains by weight, capped by ``cap``; a running vCPU burns 10 credits per ms
(``burn_credits``, at every 10 ms ``csched_tick`` and every schedule). Credit sets the
priority: BOOST > UNDER > OVER > IDLE. Each pCPU has a run queue ordered by priority, FIFO
within one; a pCPU whose best local vCPU is OVER, or that would idle, steals a better one from
another pCPU (``csched_load_balance``), and a waking vCPU preempts a lower-priority one
(``__runq_tickle``). Names follow ``credit.c``.

Decisions:

* No SMT or NUMA: every pCPU is a core of its own on one socket and one node, so
  ``_csched_cpu_pick`` is "stay if the pCPU is idle, else the next idle pCPU" and load
  balancing walks one node.
* ``last_tickle_cpu`` is one variable, not one per pCPU (no call here runs "on" a pCPU).
* The load-balance rate limit starts expired (Xen starts it at boot time).
* ``csched_acct`` keeps its 30 ms period while the host idles without running: when the host
  has work again, the periods it missed are run then (each is a no-op once no domain is active).
* ``boost=False`` turns BOOST off, to measure what it buys.
"""

from __future__ import annotations

import dataclasses

from actors.hypervisor.sched.base import (MICROSECS, MILLISECS, SCHED_DEFAULT_RATELIMIT_US,
                                          SCHED_RATELIMIT_MIN_US, Dom, SchedCore, Unit,
                                          check_ratelimit, cycle)

XEN_SCHEDULER_CREDIT = 5
CSCHED_TICKS_PER_TSLICE = 3
CSCHED_DEFAULT_TSLICE_MS = 30
CSCHED_TSLICE_MIN_MS, CSCHED_TSLICE_MAX_MS = 1, 1000  # XEN_SYSCTL_CSCHED_TSLICE_*
CSCHED_CREDITS_PER_MSEC = 10
CSCHED_MIN_TIMER = SCHED_RATELIMIT_MIN_US * MICROSECS
CSCHED_LOAD_BALANCE_RATELIMIT = 1 * MILLISECS

CSCHED_PRI_TS_BOOST = 0  # time-share waking up
CSCHED_PRI_TS_UNDER = -1  # time-share with credits
CSCHED_PRI_TS_OVER = -2  # time-share without credits
CSCHED_PRI_IDLE = -64

ACCT = (0, "acct", 0)  # the master ticker


def _ticker(cpu: int) -> tuple:
    return (1, "tick", cpu)


@dataclasses.dataclass(eq=False)
class CschedDom(Dom):
    active_unit: list[CschedUnit] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class CschedUnit(Unit):
    pri: int = CSCHED_PRI_TS_UNDER
    credit: int = 0
    residual: int = 0
    start_time: int = 0  # while it is not running: an offset, as in csched_schedule
    active: bool = False  # on its domain's active_unit list: earns credit
    yielding: bool = False  # CSCHED_FLAG_UNIT_YIELD
    parked: bool = False  # CSCHED_FLAG_UNIT_PARKED
    csched_migrating: bool = False  # CSCHED_FLAG_UNIT_MIGRATING: no boost at the next wake


@dataclasses.dataclass
class CschedPcpu:
    runq: list[CschedUnit] = dataclasses.field(default_factory=list)
    runq_sort_last: int = 0
    last_load_balance: int | None = None


class Credit(SchedCore):
    name = "credit"
    sched_id = XEN_SCHEDULER_CREDIT

    def __init__(self, pcpus: int, *, tslice_ms: int = CSCHED_DEFAULT_TSLICE_MS,
                 ratelimit_us: int = SCHED_DEFAULT_RATELIMIT_US, boost: bool = True) -> None:
        _check_global(tslice_ms, ratelimit_us)
        super().__init__(pcpus)
        self.boost = boost
        self.pc = [CschedPcpu() for _ in range(pcpus)]
        self.idlers = set(self.all_cpus)
        self.active_sdom: list[CschedDom] = []
        self.weight = 0  # of the active units
        self.credit_balance = 0
        self.runq_sort = 0
        self.balance_bias = 0
        self.last_tickle_cpu = 0
        self._set_tslice(tslice_ms)
        self.ratelimit = ratelimit_us * MICROSECS
        self.timers[ACCT] = self.tslice
        self.stats.update(acct=0, ticks=0, boosts=0, tickles=0, steals=0, migrations=0,
                          parks=0, unparks=0)

    def get_global(self) -> dict:
        return {"tslice_ms": self.tslice // MILLISECS, "ratelimit_us": self.ratelimit // MICROSECS}

    def set_global(self, now: int, *, tslice_ms: int | None = None,
                   ratelimit_us: int | None = None) -> None:
        """``csched_sys_cntl``: tslice 1..1000 ms, ratelimit 0 or 100..500000 us and no
        longer than the tslice. The next period and tick use the new values."""
        tslice_ms = self.tslice // MILLISECS if tslice_ms is None else tslice_ms
        ratelimit_us = self.ratelimit // MICROSECS if ratelimit_us is None else ratelimit_us
        _check_global(tslice_ms, ratelimit_us)
        self._set_tslice(tslice_ms)
        self.ratelimit = ratelimit_us * MICROSECS

    def _set_tslice(self, tslice_ms: int) -> None:
        """``__csched_set_tslice``."""
        self.tslice = tslice_ms * MILLISECS
        ticks = CSCHED_TICKS_PER_TSLICE if tslice_ms >= CSCHED_TICKS_PER_TSLICE else 1
        self.tick_period = tslice_ms * 1000 // ticks * MICROSECS  # tick_period_us
        self.credits_per_tslice = CSCHED_CREDITS_PER_MSEC * tslice_ms
        self.credit = self.credits_per_tslice * self.pcpus

    # -- domains and units ----------------------------------------------------------------

    def _alloc_dom(self, domid: int) -> Dom:
        return CschedDom(domid)

    def _alloc_unit(self, dom: Dom, vcpu: int, processor: int) -> Unit:
        return CschedUnit(dom, vcpu, processor)

    def _insert_unit(self, u: CschedUnit, now: int) -> None:
        u.processor = self._pick_resource(u)

    def _remove_unit(self, u: CschedUnit, now: int) -> None:
        u.parked = u.paused = False
        if u.active:
            self._acct_stop(u)

    def _dom_cntl(self, dom: CschedDom, now: int, weight: int | None, cap: int | None) -> None:
        """``csched_dom_cntl``: takes effect at the next accounting."""
        if weight is not None:
            self.weight += (weight - dom.weight) * len(dom.active_unit)
            dom.weight = weight
        if cap is not None:
            dom.cap = cap

    def _acct_start(self, u: CschedUnit) -> None:
        """``__csched_unit_acct_start``: it earns credit again."""
        dom = u.dom
        u.active = True
        dom.active_unit.insert(0, u)
        self.weight += dom.weight
        if dom not in self.active_sdom:
            self.active_sdom.insert(0, dom)

    def _acct_stop(self, u: CschedUnit) -> None:
        dom = u.dom
        u.active = False
        dom.active_unit.remove(u)
        self.weight -= dom.weight
        if not dom.active_unit:
            self.active_sdom.remove(dom)

    # -- run queues -----------------------------------------------------------------------

    def _runq_insert(self, u: CschedUnit) -> None:
        """``__runq_insert``: behind its priority; a yielder also behind one lower-priority
        vCPU, if one is queued and is not the last before the idle vCPU."""
        runq = self.pc[u.processor].runq
        i = next((i for i, s in enumerate(runq) if u.pri > s.pri), len(runq))
        if u.yielding and i < len(runq) and (i + 1 < len(runq) or self.curr[u.processor]):
            i += 1
        runq.insert(i, u)

    def _runq_remove(self, u: CschedUnit) -> None:
        self.pc[u.processor].runq.remove(u)
        u.yielding = False

    def _runq_sort(self, cpu: int) -> None:
        """``csched_runq_sort``: after an accounting, UNDERs move ahead of OVERs."""
        pc = self.pc[cpu]
        if pc.runq_sort_last == self.runq_sort:
            return
        pc.runq_sort_last = self.runq_sort
        pc.runq[:] = ([u for u in pc.runq if u.pri >= CSCHED_PRI_TS_UNDER]
                      + [u for u in pc.runq if u.pri < CSCHED_PRI_TS_UNDER])

    def _runq_tickle(self, new: CschedUnit) -> None:
        """``__runq_tickle``: an idle pCPU new may run on, else its own pCPU if new has the
        higher priority."""
        cpu = new.processor
        cur = self.curr[cpu]
        cur_pri = CSCHED_PRI_IDLE if cur is None else cur.pri
        idlers = self.idlers & self._hard(new)
        if cur_pri == CSCHED_PRI_IDLE or (not self.idlers and new.pri > cur_pri):
            target = cpu
        elif self.idlers and not idlers and new.pri > cur_pri:
            target = cpu
        elif idlers:
            target = self.last_tickle_cpu = cycle(self.last_tickle_cpu, idlers)
        else:
            return
        self.stats["tickles"] += 1
        self.idlers.discard(target)
        self._raise_softirq(target)

    # -- wake, sleep, yield ---------------------------------------------------------------

    def _unit_wake(self, u: CschedUnit, now: int) -> None:
        """``csched_unit_wake``: BOOST if it was blocked (not migrating, not unparked) while
        UNDER."""
        if self.curr[u.processor] is u or u in self.pc[u.processor].runq:
            return
        migrating, u.csched_migrating = u.csched_migrating, False
        if self.boost and not migrating and u.pri == CSCHED_PRI_TS_UNDER and not u.parked:
            u.pri = CSCHED_PRI_TS_BOOST
            self.stats["boosts"] += 1
        self._runq_insert(u)
        self._runq_tickle(u)

    def _unit_sleep(self, u: CschedUnit, now: int) -> None:
        if self.curr[u.processor] is u:
            self._raise_softirq(u.processor)
        elif u in self.pc[u.processor].runq:
            self._runq_remove(u)

    def _unit_yield(self, u: CschedUnit) -> None:
        u.yielding = True

    def _park(self, u: CschedUnit, now: int) -> None:
        """``sched_unit_pause_nosync`` of a capped-out unit."""
        u.parked = u.paused = True
        self.stats["parks"] += 1
        self._vcpu_sleep(u, now)

    def _unpark(self, u: CschedUnit, now: int) -> None:
        """Unpause before clearing PARKED, so that the wake does not boost."""
        u.paused = False
        self.stats["unparks"] += 1
        self._vcpu_wake(u, now)
        u.parked = False

    # -- placement ------------------------------------------------------------------------

    def _cpu_pick(self, u: CschedUnit) -> int:
        """``_csched_cpu_pick`` without SMT: its pCPU if idle (or if it is alone there), else
        the next idle pCPU of its affinity."""
        hard = self._hard(u)
        cpu = u.processor if u.processor in hard else cycle(u.processor, hard)
        idlers = set(self.idlers)
        if u.processor == cpu and not self.pc[cpu].runq:
            idlers.add(cpu)
        idlers &= hard
        if cpu not in idlers and idlers:
            cpu = cycle(cpu, idlers)
        return cpu

    def _pick_resource(self, u: CschedUnit) -> int:
        """``csched_res_pick``: a unit being placed is not boosted at its next wake."""
        u.csched_migrating = True
        return self._cpu_pick(u)

    # -- credit ---------------------------------------------------------------------------

    def _burn_credits(self, u: CschedUnit, now: int) -> None:
        """10 credits per ms run. As in Xen, a remainder is carried both in ``residual``
        and in ``start_time``."""
        delta = now - u.start_time
        if delta <= 0:
            return
        credits, u.residual = divmod(delta * CSCHED_CREDITS_PER_MSEC + u.residual, MILLISECS)
        u.credit -= credits
        u.start_time += credits * MILLISECS // CSCHED_CREDITS_PER_MSEC

    def _unit_acct(self, cpu: int, now: int) -> None:
        """``csched_unit_acct``: a tick found ``cur`` running."""
        u = self.curr[cpu]
        if u.pri == CSCHED_PRI_TS_BOOST:
            u.pri = CSCHED_PRI_TS_UNDER
        self._burn_credits(u, now)
        if not u.active:
            self._acct_start(u)
        elif self._cpu_pick(u) != cpu:
            self.stats["migrations"] += 1
            u.migrating = True
            self._raise_softirq(cpu)

    def _acct(self, now: int) -> bool:
        """``csched_acct``: one period's credit to the active units. False if there was
        none to give (no active domain)."""
        self.stats["acct"] += 1
        weight_total = self.weight
        credit_total = self.credit
        if self.credit_balance < 0:
            credit_total -= self.credit_balance
        if weight_total == 0:
            self.credit_balance = 0
            return False
        weight_left = weight_total
        credit_balance = 0
        credit_xtra = False
        credit_cap = 0
        cpt = self.credits_per_tslice
        for dom in list(self.active_sdom):
            n = len(dom.active_unit)
            weight_left -= dom.weight * n
            credit_peak = n * cpt
            if self.credit_balance < 0:
                credit_peak += (-self.credit_balance * dom.weight * n + weight_total - 1
                                ) // weight_total
            if dom.cap:
                credit_cap = (dom.cap * cpt + 99) // 100
                credit_peak = min(credit_peak, credit_cap)
                credit_cap = (credit_cap + n - 1) // n
            credit_fair = (credit_total * dom.weight * n + weight_total - 1) // weight_total
            if credit_fair < credit_peak:
                credit_xtra = True
            else:
                if weight_left:
                    # give the others a chance at the unused credits
                    credit_total += ((credit_fair - credit_peak) * weight_total
                                     + weight_left - 1) // weight_left
                if credit_xtra:
                    self.active_sdom.remove(dom)
                    self.active_sdom.insert(0, dom)
                credit_fair = credit_peak
            credit_fair = (credit_fair + n - 1) // n
            for u in list(dom.active_unit):
                u.credit += credit_fair
                if u.credit < 0:
                    u.pri = CSCHED_PRI_TS_OVER
                    if dom.cap and u.credit < -credit_cap and not u.parked:
                        self._park(u, now)
                    u.credit = max(u.credit, -cpt)
                else:
                    u.pri = CSCHED_PRI_TS_UNDER
                    if u.parked:
                        self._unpark(u, now)
                    if u.credit > cpt:
                        self._acct_stop(u)  # it stops earning, and starts again ahead
                        u.credit //= 2
                credit_balance += u.credit
        self.credit_balance = credit_balance
        self.runq_sort += 1
        return True

    def _fire(self, key: tuple, deadline: int, now: int) -> None:
        if key == ACCT:
            missed = (now - deadline) // self.tslice
            for _ in range(missed + 1):
                if not self._acct(now):
                    break
            self.timers[ACCT] = deadline + (missed + 1) * self.tslice
        else:
            self._tick(key[2], now)

    def _tick(self, cpu: int, now: int) -> None:
        """``csched_tick``: runs only while the pCPU runs a vCPU."""
        self.stats["ticks"] += 1
        if self.curr[cpu] is not None:
            self._unit_acct(cpu, now)
        self._runq_sort(cpu)
        self.timers[_ticker(cpu)] = now + self.tick_period

    # -- schedule -------------------------------------------------------------------------

    def _runq_steal(self, peer: int, cpu: int, pri: int) -> CschedUnit | None:
        """``csched_runq_steal``: the first queued unit of ``peer`` better than ``pri`` that
        may run on ``cpu`` and has not yielded."""
        if self.curr[peer] is None:
            return None
        for s in self.pc[peer].runq:
            if s.pri <= pri:
                break
            if not s.yielding and cpu in self._hard(s):
                self._runq_remove(s)
                s.processor = cpu
                return s
        return None

    def _load_balance(self, cpu: int, snext: CschedUnit | None) -> CschedUnit | None:
        """``csched_load_balance``: steal from the busy pCPUs, starting after the last one
        stolen from; failing that, ``snext`` (taken off the run queue)."""
        workers = sorted(self.all_cpus - self.idlers - {cpu})
        if workers:
            first = cycle(self.balance_bias, workers)
            start = workers.index(first)
            pri = CSCHED_PRI_IDLE if snext is None else snext.pri
            for peer in workers[start:] + workers[:start]:
                if len(self.pc[peer].runq) + (self.curr[peer] is not None) <= 1:
                    continue
                speer = self._runq_steal(peer, cpu, pri)
                if speer is not None:
                    self.balance_bias = peer
                    self.stats["steals"] += 1
                    return speer
        if snext is not None:
            self._runq_remove(snext)
        return snext

    def _do_schedule(self, cpu: int, now: int) -> tuple[Unit | None, int | None]:
        """``csched_schedule``."""
        pc = self.pc[cpu]
        scurr = self.curr[cpu]
        tslice = self.tslice
        if scurr is not None:
            runtime = max(0, now - scurr.state_entry_time)
            self._burn_credits(scurr, now)
            scurr.start_time -= now
            if (not scurr.yielding and self.ratelimit and scurr.runnable
                    and runtime < self.ratelimit):
                # not preempted before it has run for ratelimit
                scurr.start_time += now
                tslice = self.ratelimit - runtime
                if runtime < CSCHED_MIN_TIMER:
                    tslice = CSCHED_MIN_TIMER
                return scurr, tslice
            if scurr.runnable:
                self._runq_insert(scurr)
        snext = pc.runq[0] if pc.runq else None
        pri = CSCHED_PRI_IDLE if snext is None else snext.pri
        if pri <= CSCHED_PRI_TS_OVER and (
                pc.last_load_balance is None
                or now - pc.last_load_balance > CSCHED_LOAD_BALANCE_RATELIMIT):
            pc.last_load_balance = now
            snext = self._load_balance(cpu, snext)
        elif snext is not None:
            self._runq_remove(snext)
        if snext is None:
            self.idlers.add(cpu)
            if scurr is not None:
                self._set_timer(_ticker(cpu), None)  # the tick stops while idle
            return None, None
        self.idlers.discard(cpu)
        snext.start_time += now
        if scurr is None:
            self._set_timer(_ticker(cpu), now + self.tick_period - now % self.tick_period)
        return snext, tslice


def _check_global(tslice_ms: int, ratelimit_us: int) -> None:
    if not CSCHED_TSLICE_MIN_MS <= tslice_ms <= CSCHED_TSLICE_MAX_MS:
        raise ValueError(f"tslice {tslice_ms} ms out of range "
                         f"{CSCHED_TSLICE_MIN_MS}..{CSCHED_TSLICE_MAX_MS}")
    check_ratelimit(ratelimit_us)
    if ratelimit_us * MICROSECS > tslice_ms * MILLISECS:
        raise ValueError(f"ratelimit {ratelimit_us} us is longer than the tslice "
                         f"({tslice_ms} ms)")
